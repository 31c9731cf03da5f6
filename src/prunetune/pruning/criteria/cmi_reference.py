"""The straightforward greedy CMI ranking, kept as the reference for tests and benchmarks.

:func:`cmi_ranking_reference` is the implementation :func:`prunetune.pruning.criteria.renyi.cmi_ranking`
replaced: every step evaluates I(Y; X_j | X_S) = S(X_j,S) + S(Y,S) − S(Y,X_j,S) − S(S) for every
remaining candidate with two full n×n eigenvalue problems per candidate (S(X_j,S) and S(Y,X_j,S)) and
two more per step (S(Y,S), S(S)), and runs all C steps. Its order and CMI values define what the fast
ranking must return (tests: ``tests/criteria/test_criteria_cmi_fast.py``; ResNet-56:
``benchmarks/scoring.py``). Slow: O(C²) eigenvalue problems of n×n per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria.matrix_entropy import (
    _check_alpha,
    _unit_trace,
    check_condition,
    first_max,
    gram_matrix,
    hadamard_joint,
    label_gram,
    normalize_gram,
    renyi_entropy,
)


def cmi_ranking_reference(
    maps: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.01,
    sigma_rule: str = "median",
    gamma: float = 1.0,
    max_steps: int | None = None,
    max_memory_mb: float = 1024.0,
    condition: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Greedy within-layer CMI ranking: j* = argmax_{j∉S} I_α(Y; X_j | X_S, T) at each step.

    X_j is channel j's flattened map per sample (Gaussian Gram matrix, σ per channel by
    ``sigma_rule``), Y the delta-kernel label Gram matrix, X_S the Hadamard joint of the selected
    channels (kept as a running product) and T the optional ``condition`` (the cross-layer forms of
    :class:`~prunetune.pruning.criteria.cmi.Cmi`; without it the first step is I(Y; X_j)).
    All candidates of one step are evaluated in one batched entropy call (chunked if the stack
    would exceed ``max_memory_mb``). Ties (values within :data:`TIE_TOLERANCE`) go to the lower
    channel index.

    Args:
        maps: ``Tensor[n, C, ...]`` activations of n samples.
        labels: ``Tensor[n]`` class labels.
        max_steps: stop selecting after this many steps; the channels left are appended ordered
            by their CMI at the last evaluated step (their ``values`` are those CMIs; ties again to
            the lower index).
        condition: a unit-trace PSD ``Tensor[n, n]`` (e.g. :func:`normalize_gram` of a Gram
            matrix) joined (Hadamard) to X_S from the first step on.

    Returns:
        ``(order, values)``: ``order`` LongTensor[C], most informative first; ``values[t]`` the
        CMI (bits) of ``order[t]`` when it was chosen.
    """
    alpha = _check_alpha(alpha)
    n, c = maps.shape[0], maps.shape[1]
    if labels.shape[0] != n:
        raise ConfigError(
            f"cmi needs one label per sample: {n} samples but {labels.shape[0]} labels"
        )
    x = maps.detach().reshape(n, c, -1).to(torch.float64).transpose(0, 1)  # C×n×d
    a_ch = normalize_gram(gram_matrix(x, sigma_rule=sigma_rule, gamma=gamma))  # C×n×n
    a_y = label_gram(labels.to(x.device))
    a_s = check_condition(condition, n, x.device)
    steps = c if max_steps is None else max(0, min(int(max_steps), c))
    chunk = max(1, int(max_memory_mb * 2**20) // (8 * n * n * 8))
    remaining = list(range(c))
    order: list[int] = []
    values: list[float] = []
    cmi = torch.empty(0)
    for _ in range(steps):
        cmi = _step_cmi(a_ch, remaining, a_s, a_y, alpha, chunk)
        best = first_max(cmi)
        j = remaining.pop(best)
        order.append(j)
        values.append(float(cmi[best]))
        cmi = torch.cat([cmi[:best], cmi[best + 1 :]])
        a_s = a_ch[j] if a_s is None else hadamard_joint(a_s, a_ch[j])
    if remaining:  # max_steps reached: the rest by their last CMI
        if not order:
            cmi = _step_cmi(a_ch, remaining, a_s, a_y, alpha, chunk)
        while remaining:
            best = first_max(cmi)
            order.append(remaining.pop(best))
            values.append(float(cmi[best]))
            cmi = torch.cat([cmi[:best], cmi[best + 1 :]])
    return torch.tensor(order, dtype=torch.long), torch.tensor(values, dtype=torch.float64)



def _step_cmi(
    a_ch: Tensor, remaining: list[int], a_s: Tensor | None, a_y: Tensor, alpha: float, chunk: int
) -> Tensor:
    """I(Y; X_j | X_S) for every remaining j -> CPU ``Tensor[len(remaining)]``.

    S(X_j,S) and S(Y,X_j,S) of a chunk of candidates go into one batched entropy call.
    """
    if a_s is None:
        const = renyi_entropy(a_y, alpha)  # I(Y;X_j) = S(X_j) + S(Y) − S(X_j,Y)
    else:
        const = renyi_entropy(hadamard_joint(a_y, a_s), alpha) - renyi_entropy(a_s, alpha)
    cand = torch.tensor(remaining, device=a_ch.device)
    out = []
    for i in range(0, len(remaining), chunk):
        joint = a_ch[cand[i : i + chunk]]
        if a_s is not None:
            joint = joint * a_s
        ent = renyi_entropy(_unit_trace(torch.cat([joint, joint * a_y])), alpha)
        out.append(ent[: len(joint)] - ent[len(joint) :] + const)
    return torch.cat(out).cpu()
