"""Matrix-based Rényi α-entropy and the greedy CMI channel ranking.

The entropy primitives (kernel widths, Gram matrices, S_α, joint entropies, (conditional) mutual
information, the cross-layer condition's Gram matrix) live in
:mod:`prunetune.pruning.criteria.matrix_entropy` and are re-exported here.

The CMI pruning paper (Vu-Van et al., arXiv 2411.18578) is only verified at abstract level; the
greedy rule in :func:`cmi_ranking` is the reconstruction of criteria.md §5.4 (form (a): same layer,
label as target): at each step j* = argmax_{j∉S} I_α(Y; X_j | X_S, T) with

    I(Y; X_j | X_S) = S(X_j,S) + S(Y,S) − S(Y,X_j,S) − S(S).

How it is computed (the same order and CMI values as the straightforward implementation,
:func:`~prunetune.pruning.criteria.cmi_reference.cmi_ranking_reference`, up to rounding):

* **Label blocks.** The label Gram matrix is the delta kernel, so S(Y,X_j,S) is the entropy of the
  joint J_j = X_S ∘ X_j with every entry between two samples of different classes set to 0: a
  block-diagonal matrix (after sorting the samples by class) whose spectrum is the union of its
  class blocks' spectra. Those come from eigenvalue problems of the class sizes (about n/k each)
  instead of one n×n problem. Exact; used for α ≥ 1 (α ≠ 2); for α < 1, where the rounding noise of
  zero eigenvalues is raised to the power α, and for α = 2 (Frobenius norms, no eigenvalues), the
  full matrices as before.
* **Shared terms once.** S(S) and S(Y,S) of step t + 1 are S(X_j*,S) and S(Y,X_j*,S) of the channel
  picked at step t, already computed; the running Hadamard joint is updated once per step.
* **Threads and LAPACK.** The batch of a step's eigenvalue problems is split across torch's CPU
  threads (:func:`~prunetune.pruning.criteria._common.batched_linalg`). From 192 samples on (the
  default keeps 256), the CPU solves go to numpy's LAPACK, whose tridiagonal reduction is faster
  there than torch's (``_common.NUMPY_EIGVALSH_MIN_SIZE``); the eigenvalues agree to rounding. On a
  GPU the batched call runs there.
* **Provable vanishing.** Once the off-diagonal part of the running joint is so small that every
  CMI of every later step is provably below :data:`VANISH_BOUND` bits (:func:`vanishing_bound`; the
  Hadamard product only shrinks off-diagonal entries, so this holds from then on), every later step
  is a tie and the straightforward greedy would append the rest in increasing index order: the
  ranking does exactly that, with values 0, and records where it stopped.

float32 eigenvalues are not used: on the digits ResNet-32 layers the float32 error of S(X_j,S)
(about 1e-6 bits) is close to the gaps between the best candidates of the later steps, so a float32
screen with a safe margin sends most candidates back to float64 and saves little (benchmarks/README.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria._common import batched_linalg, eigvalsh_here, split_across_threads
from prunetune.pruning.knee import knee_settled
from prunetune.pruning.criteria.matrix_entropy import (  # noqa: F401  re-exported
    JOINTS,
    KERNELS,
    SIGMA_RULES,
    TIE_TOLERANCE,
    _check_alpha,
    check_condition,
    conditional_mutual_information,
    conditioning_gram,
    data_std,
    entropy_of_eigenvalues,
    first_max,
    gram_matrix,
    hadamard_joint,
    joint_entropy,
    kernel_width,
    label_gram,
    mutual_information,
    normalize_gram,
    renyi_entropy,
    unit_trace,
)

VANISH_BOUND = 1e-12
"""Bits: the greedy stops once every later CMI is provably within this of 0 (far inside the tie
tolerance, :data:`TIE_TOLERANCE`, so every later step would be a tie)."""

KNEE_SLACK = 1e-9
"""Bits: how far below 0 a later CMI may lie for the knee stop to stay exact (:func:`cmi_greedy`)."""

STOPS = ("complete", "vanished", "knee", "max_steps", "stop_gain")


@dataclass(frozen=True)
class CmiRanking:
    """The result of :func:`cmi_greedy`.

    Attributes:
        order: LongTensor[C], most informative first.
        values: float64 Tensor[C], the CMI (bits) of ``order[t]``; after ``steps`` see ``stop``.
        steps: how many channels the greedy argmax placed before it stopped.
        stop: ``"complete"`` (all C), ``"vanished"`` (the rest provably tie: increasing index,
            values 0, exactly what the full greedy returns up to :data:`VANISH_BOUND`),
            ``"knee"`` (the knee of the curve was settled, :func:`cmi_greedy`'s ``stop_at_knee``: the
            rest ordered by their CMI at the last evaluated step, each valued at an equal share of
            the information left, so the values sum to the full greedy's),
            ``"max_steps"`` or ``"stop_gain"`` (the rest ordered by their CMI at the last evaluated
            step, values those CMIs; not the full greedy's order).
    """

    order: Tensor
    values: Tensor
    steps: int
    stop: str


def cmi_ranking(
    maps: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.01,
    sigma_rule: str = "median",
    gamma: float = 1.0,
    max_steps: int | None = None,
    stop_gain: float | None = None,
    max_memory_mb: float = 1024.0,
    condition: Tensor | None = None,
    stop_at_knee: bool = False,
) -> tuple[Tensor, Tensor]:
    """Greedy within-layer CMI ranking: ``(order, values)`` of :func:`cmi_greedy`."""
    result = cmi_greedy(
        maps, labels, alpha=alpha, sigma_rule=sigma_rule, gamma=gamma, max_steps=max_steps,
        stop_gain=stop_gain, max_memory_mb=max_memory_mb, condition=condition, stop_at_knee=stop_at_knee,
    )
    return result.order, result.values


def cmi_greedy(
    maps: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.01,
    sigma_rule: str = "median",
    gamma: float = 1.0,
    max_steps: int | None = None,
    stop_gain: float | None = None,
    max_memory_mb: float = 1024.0,
    condition: Tensor | None = None,
    stop_at_knee: bool = False,
) -> CmiRanking:
    """Greedy within-layer CMI ranking: j* = argmax_{j∉S} I_α(Y; X_j | X_S, T) at each step.

    X_j is channel j's flattened map per sample (Gaussian Gram matrix, σ per channel by
    ``sigma_rule``), Y the delta-kernel label Gram matrix, X_S the Hadamard joint of the selected
    channels (kept as a running product) and T the optional ``condition`` (the cross-layer forms of
    :class:`~prunetune.pruning.criteria.cmi.Cmi`; without it the first step is I(Y; X_j)).
    All candidates of one step are evaluated in one batched call (chunked if the stack would exceed
    ``max_memory_mb``). Ties (values within :data:`TIE_TOLERANCE`) go to the lower channel index.
    See the module docstring for how this equals the straightforward greedy.

    Args:
        maps: ``Tensor[n, C, ...]`` activations of n samples.
        labels: ``Tensor[n]`` class labels.
        max_steps: stop selecting after this many steps; the channels left are appended ordered
            by their CMI at the last evaluated step (their ``values`` are those CMIs; ties again to
            the lower index).
        stop_gain: stop once a step's best CMI falls below ``stop_gain`` times the first pick's
            (the conditional gain "has vanished"); the channels left, that step's best included,
            are appended as with ``max_steps``. ``None`` (default): no such stop. An approximation
            of the full greedy's tail, never of its prefix.
        condition: a unit-trace PSD ``Tensor[n, n]`` (e.g. :func:`normalize_gram` of a Gram
            matrix) joined (Hadamard) to X_S from the first step on.
        stop_at_knee: stop as soon as the knee of the CMI curve (the ``cmi_knee`` cut-off,
            :func:`prunetune.pruning.knee.knee_keep`) is settled: every curve the full greedy could
            still produce has the same knee. What is known then: the values so far, and the sum of
            all later ones, H(Y|X_S) − H(Y|X_all) (the values telescope; one more eigenvalue
            problem, for the joint of all channels), each at least −:data:`KNEE_SLACK`
            (:func:`~prunetune.pruning.knee.knee_settled`). So ``cmi_knee`` keeps the same counts
            at every scale as after the full greedy, provided no later CMI is below −1e-9 bits. At
            α = 1 none is below 0: the added channel's Gram matrix acts as a unital channel that
            commutes with the label blocks, and relative entropy only falls under it; at other α
            this is measured, not proved (benchmarks/README.md, "CMI"). The order after the stop is
            not the full greedy's; use it for the knee only. Several layers read as one mean curve
            (a group's feature points) stop together: :func:`greedy_run` and :func:`finish_runs`.
    """
    run = greedy_run(
        maps, labels, alpha=alpha, sigma_rule=sigma_rule, gamma=gamma, max_steps=max_steps, stop_gain=stop_gain,
        max_memory_mb=max_memory_mb, condition=condition, stop_at_knee=stop_at_knee,
    )
    finish_runs([run])
    return run.result


def greedy_run(
    maps: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.01,
    sigma_rule: str = "median",
    gamma: float = 1.0,
    max_steps: int | None = None,
    stop_gain: float | None = None,
    max_memory_mb: float = 1024.0,
    condition: Tensor | None = None,
    stop_at_knee: bool = False,
) -> GreedyRun:
    """:func:`cmi_greedy`'s greedy, set up and not yet run (:func:`finish_runs` runs it)."""
    alpha = _check_alpha(alpha)
    n, c = maps.shape[0], maps.shape[1]
    if labels.shape[0] != n:
        raise ConfigError(f"cmi needs one label per sample: {n} samples but {labels.shape[0]} labels")
    if stop_gain is not None and (
        isinstance(stop_gain, bool) or not isinstance(stop_gain, (int, float)) or not 0.0 <= stop_gain <= 1.0
    ):
        raise ConfigError(f"parameter 'stop_gain' must be in [0, 1] or None, but got stop_gain={stop_gain!r}")
    if stop_at_knee and (stop_gain is not None or max_steps is not None):
        raise ConfigError("stop_at_knee settles the knee of the full greedy's curve; it cannot be combined with "
                          "stop_gain or max_steps, which change that curve")
    x = maps.detach().reshape(n, c, -1).to(torch.float64).transpose(0, 1)  # C×n×d
    a_ch = normalize_gram(gram_matrix(x, sigma_rule=sigma_rule, gamma=gamma))  # C×n×n
    ev = _Evaluator(a_ch, labels.to(x.device), alpha, max_memory_mb)
    steps = c if max_steps is None else max(0, min(int(max_steps), c))
    cond = check_condition(condition, n, x.device)
    return GreedyRun(ev, cond, steps, stop_gain, _information_left(ev, cond) if stop_at_knee else None)


def _information_left(ev: _Evaluator, condition: Tensor | None) -> float:
    """H(Y | X_all) = S(Y, all) − S(all): what the label keeps after every channel (and the condition)."""
    a_all = hadamard_joint(*ev.a_ch.unbind(0)) if condition is None else hadamard_joint(condition, *ev.a_ch.unbind(0))
    return float(ev.const(a_all))


def finish_runs(runs: list[GreedyRun]) -> None:
    """Run every greedy to its end: those with the knee stop together, until the knee of their mean
    curve is settled (:func:`settle_knees`), the others alone."""
    knee = [r for r in runs if r.knee_floor is not None]
    if knee:
        settle_knees(knee)
    for run in runs:
        while run.result is None:
            run.advance()


def settle_knees(runs: list[GreedyRun]) -> None:
    """Advance ``runs`` (one layer each, the same channel count) a step at a time until the knee of
    their mean curve is settled, then stop them all there (``stop="knee"``).

    The mean curve is what a group of several feature points reads (``calibration._reduce``
    averages the curves position by position), and a single run's curve is its own mean. After t
    steps of every run still going, its first t values are known, and the sum of the rest is the
    mean of each run's :meth:`GreedyRun.left`; :func:`~prunetune.pruning.knee.knee_settled` says
    when every completion has one knee. Each stopped run then gives its unplaced channels equal
    shares of what it has left, so the mean curve stored is one of those completions.
    """
    total = runs[0].ev.a_ch.shape[0]
    while True:
        live = [r for r in runs if r.result is None]
        if not live:
            return
        t = len(live[0].order)  # every live run has taken the same number of steps
        if t >= 2:
            prefix = torch.stack([torch.tensor(r.curve()[:t], dtype=torch.float64) for r in runs]).mean(0)
            left = sum(r.left(t) for r in runs) / len(runs)
            if knee_settled(prefix, left, total, KNEE_SLACK) is not None:
                for r in live:
                    r.stop_here()
                return
        for r in live:
            r.advance()


class GreedyRun:
    """One layer's greedy (:func:`cmi_greedy`), a step at a time; ``result`` once it is over.

    ``knee_floor`` (H(Y|X_all), set with ``stop_at_knee``) lets :func:`settle_knees` stop it.
    """

    def __init__(self, ev: _Evaluator, a_s: Tensor | None, steps: int, stop_gain: float | None,
                 knee_floor: float | None = None) -> None:
        self.ev, self.a_s, self.steps, self.stop_gain, self.knee_floor = ev, a_s, steps, stop_gain, knee_floor
        self.remaining = list(range(ev.a_ch.shape[0]))
        self.order: list[int] = []
        self.values: list[float] = []
        self.const = ev.const(a_s)
        self.cmi = torch.empty(0, dtype=torch.float64)
        self.stop = "complete" if steps == len(self.remaining) else "max_steps"
        self.result: CmiRanking | None = None

    def curve(self) -> list[float]:
        """The values placed so far (all of them once the run is over)."""
        return self.result.values.tolist() if self.result is not None else self.values

    def left(self, t: int) -> float:
        """The sum of the values from position ``t`` on: known once the run is over; while it runs
        (``t`` steps taken) H(Y|X_S) − H(Y|X_all), since the values telescope."""
        if self.result is not None:
            return float(self.result.values[t:].sum())
        return float(self.const) - float(self.knee_floor)

    def advance(self) -> None:
        """One greedy step; the run is over (``result`` set) after the last, or at an early stop."""
        if self.result is not None:
            return
        if len(self.order) >= self.steps or not self.remaining:
            self.result = self._finish()
            return
        ev = self.ev
        cmi, s_full, s_y = ev.step(self.remaining, self.a_s, self.const)
        best = first_max(cmi)
        values = self.values
        if self.stop_gain is not None and values and values[0] > 0 and float(cmi[best]) < self.stop_gain * values[0]:
            self.stop, self.cmi = "stop_gain", cmi
            self.result = self._finish()
            return
        j = self.remaining.pop(best)
        self.order.append(j)
        values.append(float(cmi[best]))
        self.cmi = torch.cat([cmi[:best], cmi[best + 1 :]])
        self.a_s = ev.a_ch[j] if self.a_s is None else hadamard_joint(self.a_s, ev.a_ch[j])
        self.const = ev.next_const(self.a_s, s_full[best], s_y[best])
        if self.remaining and len(self.order) < self.steps and vanished(self.a_s, ev.alpha):
            taken = len(self.order)
            self.order += self.remaining
            values += [0.0] * len(self.remaining)
            self.remaining = []
            self.result = _result(self.order, values, taken, "vanished")
        elif not self.remaining or len(self.order) >= self.steps:
            self.result = self._finish()

    def stop_here(self) -> None:
        """The knee stop: the rest by their CMI at this step (ties to the lower index), each valued at
        an equal share of :meth:`left`, so the values still sum to the full greedy's."""
        taken = len(self.order)
        share = self.left(taken) / len(self.remaining)
        while self.remaining:
            best = first_max(self.cmi)
            self.order.append(self.remaining.pop(best))
            self.values.append(share)
            self.cmi = torch.cat([self.cmi[:best], self.cmi[best + 1 :]])
        self.result = _result(self.order, self.values, taken, "knee")

    def _finish(self) -> CmiRanking:
        """All steps taken, or max_steps / stop_gain: the rest by their CMI at the last evaluated step."""
        taken = len(self.order)
        if self.remaining:
            if not self.order:
                self.cmi = self.ev.step(self.remaining, self.a_s, self.const)[0]
            while self.remaining:
                best = first_max(self.cmi)
                self.order.append(self.remaining.pop(best))
                self.values.append(float(self.cmi[best]))
                self.cmi = torch.cat([self.cmi[:best], self.cmi[best + 1 :]])
        return _result(self.order, self.values, taken, self.stop)


def _result(order: list[int], values: list[float], steps: int, stop: str) -> CmiRanking:
    return CmiRanking(torch.tensor(order, dtype=torch.long), torch.tensor(values, dtype=torch.float64),
                      steps, "complete" if steps == len(order) else stop)


class _Evaluator:
    """One layer's greedy state: channel Gram matrices, label blocks and the entropy routines."""

    def __init__(self, a_ch: Tensor, labels: Tensor, alpha: float, max_memory_mb: float) -> None:
        n = a_ch.shape[-1]
        self.a_ch, self.alpha = a_ch, alpha
        self.a_y = label_gram(labels)
        self.blocks = class_blocks(labels) if alpha >= 1.0 and alpha != 2.0 else None
        self.chunk = max(1, int(max_memory_mb * 2**20) // (8 * n * n * 8))
        self.min_chunk = max(1, (64 * 32**3) // max(1, n) ** 3)  # split even a few large problems
        if alpha == 2.0:  # Frobenius norms: Σ_ab (X_S ∘ X_j)² is one product with X_j² for every j
            self.sq = (a_ch * a_ch).reshape(a_ch.shape[0], n * n)
            self.diag = torch.diagonal(a_ch, dim1=-2, dim2=-1)

    def entropy(self, a: Tensor) -> Tensor:
        """S_α of unit-trace ``Tensor[B, n, n]`` (the batch split across threads)."""
        if self.alpha == 2.0:
            return renyi_entropy(a, 2.0)
        lam = batched_linalg(torch.linalg.eigvalsh, a, min_chunk=self.min_chunk)
        return entropy_of_eigenvalues(lam, self.alpha)

    def label_entropy(self, a: Tensor) -> Tensor:
        """S_α(Y, A) of unit-trace ``Tensor[B, n, n]``: the spectra of A's class blocks."""
        lam = self._block_spectra(a, lambda x: batched_linalg(torch.linalg.eigvalsh, x))
        return entropy_of_eigenvalues(lam, self.alpha)

    def _block_spectra(self, a: Tensor, solve: Callable[[Tensor], Tensor]) -> Tensor:
        """``Tensor[B, n]``: the eigenvalues of ``a``'s class blocks, each size's blocks in one ``solve``."""
        lams = []
        for idx in self.blocks:  # LongTensor[k, m]: k classes of m samples
            k, m = idx.shape
            lams.append(solve(a[:, idx[:, :, None], idx[:, None, :]].reshape(-1, m, m)).reshape(a.shape[0], k * m))
        return torch.cat(lams, dim=1)

    def _spectra(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """The eigenvalues of ``Tensor[B, n, n]`` and of its class blocks, on this thread: what
        :meth:`entropy` and :meth:`label_entropy` solve, by the same routines, for one chunk of a
        step's candidates (one split across threads and one wait per step instead of one per call)."""
        return eigvalsh_here(a), self._block_spectra(a, eigvalsh_here)

    def const(self, a_s: Tensor | None) -> Tensor:
        """S(Y,S) − S(S) (S(Y) when S is empty): the part of a step's CMI shared by all candidates."""
        if a_s is None:
            return renyi_entropy(self.a_y, self.alpha)
        if self.blocks is None:
            return renyi_entropy(hadamard_joint(self.a_y, a_s), self.alpha) - renyi_entropy(a_s, self.alpha)
        return self.label_entropy(a_s[None])[0] - self.entropy(a_s[None])[0]

    def next_const(self, a_s: Tensor, s_full: Tensor, s_y: Tensor) -> Tensor:
        """The next step's shared term: S(Y,S) and S(S) are the picked candidate's own two terms."""
        return self.const(a_s) if self.blocks is None else s_y - s_full

    def step(self, remaining: list[int], a_s: Tensor | None, const: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(CPU CMIs, S(X_j,S), S(Y,X_j,S)) of every remaining candidate j."""
        cand = torch.tensor(remaining, device=self.a_ch.device)
        if self.alpha == 2.0:
            return self._frobenius_step(cand, a_s, const)
        full, lab = [], []
        for i in range(0, len(remaining), self.chunk):
            joint = self.a_ch.index_select(0, cand[i : i + self.chunk])  # a copy: multiplied in place
            if a_s is not None:
                joint.mul_(a_s)
            if self.blocks is None:  # the straightforward form (α < 1, α = 2)
                ent = self.entropy(unit_trace(torch.cat([joint, joint * self.a_y])))
                full.append(ent[: len(joint)])
                lab.append(ent[len(joint) :])
            else:  # unit trace through the eigenvalues: λ(J / tr J) = λ(J) / tr J
                trace = torch.diagonal(joint, dim1=-2, dim2=-1).sum(-1)[:, None]
                lam, lam_y = split_across_threads(self._spectra, joint, min_chunk=self.min_chunk)
                full.append(entropy_of_eigenvalues(lam / trace, self.alpha))
                lab.append(entropy_of_eigenvalues(lam_y / trace, self.alpha))
        s_full, s_y = torch.cat(full), torch.cat(lab)
        return (s_full - s_y + const).cpu(), s_full, s_y


    def _frobenius_step(self, cand: Tensor, a_s: Tensor | None, const: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """α = 2: S = −log₂ ‖J‖_F² with J = X_S ∘ X_j / tr, for every candidate through two
        matrix–vector products with the squared Gram matrices (no n×n joint per candidate)."""
        n = self.a_ch.shape[-1]
        if a_s is None:
            a_s = torch.full((n, n), 1.0, dtype=torch.float64, device=self.a_ch.device)
        w = a_s * a_s
        wy = w * (self.a_y > 0)  # the label blocks: pairs of one class
        sq = self.sq[cand]
        tr = self.diag[cand] @ torch.diagonal(a_s)
        tr2 = tr * tr
        s_full = -torch.log2((sq @ w.reshape(-1)) / tr2)
        s_y = -torch.log2((sq @ wy.reshape(-1)) / tr2)
        return (s_full - s_y + const).cpu(), s_full, s_y


def class_blocks(labels: Tensor) -> list[Tensor]:
    """Sample indices per class, grouped by class size: ``[LongTensor[k, m], …]`` (k classes of m)."""
    if labels.dim() == 2:
        labels = labels.argmax(dim=1)
    _, inverse = torch.unique(labels, return_inverse=True)
    members = [torch.nonzero(inverse == c).flatten() for c in range(int(inverse.max()) + 1)]
    by_size: dict[int, list[Tensor]] = {}
    for idx in members:
        by_size.setdefault(idx.numel(), []).append(idx)
    return [torch.stack(group) for _, group in sorted(by_size.items())]


def vanishing_bound(e: float, n: int, alpha: float) -> float:
    """Bound on |S_α(M) − log₂ n| for unit-trace M = I/n + E, E off-diagonal, ‖E‖_F ≤ e.

    With x_i = n·μ_i (μ the eigenvalues of E: Σ μ = 0, Σ μ² ≤ e², |μ| ≤ e) and ρ = n·e ≤ 1/2,
    Taylor's theorem gives Σ (1 + x_i)^α = n + R, |R| ≤ α|α−1|/2 · B · Σ x_i², B = max over
    |ξ| ≤ 1/2 of (1 + ξ)^(α−2); so |S_α − log₂ n| = |log₂(1 + R/n)| / |1 − α| ≤ 2·K·n·e²/ln 2 with
    K = α·B/2 while |R/n| ≤ 1/2 (the α = 1 limit is covered by the same bound). Returns ``inf``
    outside that range.
    """
    if n * e > 0.5:
        return math.inf
    k = alpha * max(0.5 ** (alpha - 2.0), 1.5 ** (alpha - 2.0)) / 2.0
    if abs(alpha - 1.0) * k * n * e * e > 0.5:
        return math.inf
    return 2.0 * k * n * e * e / math.log(2.0)


def vanished(a_s: Tensor, alpha: float) -> bool:
    """Whether every CMI of every later greedy step is provably within :data:`VANISH_BOUND` of 0.

    Needs the running joint's diagonal to be 1/n (true for joints of :func:`normalize_gram`
    matrices). Every matrix a later step takes an entropy of (X_S ∘ X_j, its label blocks, X_S and
    its label blocks, renormalised) keeps that diagonal and has off-diagonal entries no larger in
    magnitude than X_S's (kernel entries lie in [0, 1]), so each entropy is within
    :func:`vanishing_bound` of log₂ n, and a CMI (two entropies minus two) within twice that.
    """
    n = a_s.shape[-1]
    diag = torch.diagonal(a_s)
    if n < 2 or float((diag * n - 1.0).abs().max()) > 1e-12:
        return False
    e = float(torch.linalg.matrix_norm(a_s - torch.diag_embed(diag)))
    return 2.0 * vanishing_bound(e, n, alpha) <= VANISH_BOUND
