"""Matrix-based Rényi α-entropy (Giraldo, Rao & Príncipe, arXiv 1211.2459; multivariate form: Yu et
al., arXiv 1808.07912): kernel widths, Gram matrices, entropies and (conditional) mutual information, and the Gram matrix of
a set of channels the cross-layer CMI conditions on.

For a variable observed on n samples:

1. Gram matrix K_ab = κ(x_a, x_b) with an infinitely divisible kernel (Gaussian by default).
2. Normalised: A_ab = K_ab / (n·√(K_aa K_bb)), so tr(A) = 1.
3. S_α(A) = 1/(1−α) · log₂ Σ_i λ_i(A)^α (bits). α = 1 is the Shannon limit −Σ λ log₂ λ; α = 2 is
   −log₂ ‖A‖_F², computed without an eigendecomposition.
4. Joint entropy: S_α(A_1, …, A_k) = S_α(A_1 ∘ … ∘ A_k / tr(A_1 ∘ … ∘ A_k)) (Hadamard product).
5. I(X;Y) = S(X) + S(Y) − S(X,Y); I(X;Y|Z) = S(X,Z) + S(Y,Z) − S(X,Y,Z) − S(Z).

Note the identities I(X;X) = S(X) and I(Y;X|X) = 0 hold exactly only for kernels whose Gram matrix
is idempotent under the Hadamard product (the delta kernel of :func:`label_gram`); with a Gaussian
kernel K∘K is the Gram matrix of a narrower kernel, so S(X,X) ≠ S(X) in general.

Every function takes batched matrices (leading dimensions are batch dimensions). The greedy CMI
ranking built on these lives in :mod:`prunetune.pruning.criteria.renyi`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError

SIGMA_RULES = ("median", "silverman")
KERNELS = ("gaussian", "laplacian")


def _check_alpha(alpha: float) -> float:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not alpha > 0
        or not math.isfinite(alpha)
    ):
        raise ConfigError(f"parameter 'alpha' must be a finite number > 0, but got alpha={alpha!r}")
    return float(alpha)


def _sq_distances(x: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances of ``Tensor[..., n, d]`` -> ``Tensor[..., n, n]``."""
    sq = (x * x).sum(dim=-1)
    d2 = sq[..., :, None] + sq[..., None, :] - 2.0 * (x @ x.transpose(-1, -2))
    d2 = d2.clamp(min=0.0)
    d2.diagonal(dim1=-2, dim2=-1).zero_()
    return d2


def data_std(x: Tensor) -> Tensor:
    """√(Σ_k var(x_·k)) of ``Tensor[..., n, d]`` -> ``Tensor[...]``; 1 where it is 0 (or n = 1).

    The unbiased variance of each of the d dimensions over the n samples, summed: the mean squared
    distance to the sample mean, times n/(n−1).
    """
    n = x.shape[-2]
    if n < 2:
        return x.new_ones(x.shape[:-2])
    dev = x - x.mean(dim=-2, keepdim=True)
    std = ((dev * dev).sum(dim=(-2, -1)) / (n - 1)).sqrt()
    return torch.where(std > 0, std, torch.ones_like(std))


def kernel_width(
    x: Tensor, *, sigma_rule: str = "median", gamma: float = 1.0, d2: Tensor | None = None
) -> Tensor:
    """Kernel width σ for each batch element of ``Tensor[..., n, d]`` -> ``Tensor[...]``.

    * ``"median"``: σ = γ · median of the pairwise distances ‖x_a − x_b‖ (a < b), per batch element.
      If that median is 0 (more than half the samples coincide), the mean of the nonzero distances
      is used; if every distance is 0, σ = 1 (the Gram matrix is then all ones whatever σ).
    * ``"silverman"``: σ = γ · s · n^(−1/(4+d)) (Silverman's rule in the form of Yu et al.,
      arXiv 1808.07912, criteria.md §5.3), with s the data's standard deviation: the root of the
      total variance, s = √(Σ_k var(x_·k)) over the d dimensions (unbiased variance over the n
      samples), which is the one-dimensional std when d = 1. σ scales with the data, so the Gram
      matrix, and any ranking built on it, does not change when the maps are scaled. If every
      sample is the same (s = 0), σ = 1 (the Gram matrix is all ones whatever σ).

      NOTE: the total, not the per-dimension, std: the squared distance between two samples grows
      like d · s_k², and a per-dimension width (e.g. s_k · (4/(3n))^(1/5) / √2, the 1-D rule
      applied per pixel) leaves every off-diagonal entry below 1e-10 on 64-pixel ReLU maps of a
      trained ResNet-20 (every S(X_j) = log₂ n, so every channel ties). With the total std the
      same maps give off-diagonal means near 0.35, close to the median rule's 0.6.
    """
    if sigma_rule not in SIGMA_RULES:
        raise ConfigError(
            f"parameter 'sigma_rule' must be one of {', '.join(map(repr, SIGMA_RULES))}, "
            f"but got sigma_rule={sigma_rule!r}"
        )
    n, d = x.shape[-2], x.shape[-1]
    if sigma_rule == "silverman":
        return gamma * data_std(x) * n ** (-1.0 / (4 + d))
    d2 = _sq_distances(x) if d2 is None else d2
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    dist = d2[..., iu[0], iu[1]].sqrt()  # [..., n(n−1)/2]
    if dist.shape[-1] == 0:
        return x.new_ones(x.shape[:-2])
    med = dist.median(dim=-1).values
    nonzero = (dist > 0).sum(dim=-1)
    mean_nz = dist.sum(dim=-1) / nonzero.clamp(min=1)
    sigma = torch.where(med > 0, med, torch.where(nonzero > 0, mean_nz, torch.ones_like(med)))
    return gamma * sigma


def gram_matrix(
    x: Tensor,
    *,
    sigma: float | Tensor | None = None,
    kernel: str = "gaussian",
    sigma_rule: str = "median",
    gamma: float = 1.0,
) -> Tensor:
    """Kernel Gram matrix of ``Tensor[..., n, d]`` samples -> ``Tensor[..., n, n]`` float64.

    Args:
        x: n samples of dimension d (leading dimensions are batch dimensions).
        sigma: kernel width; ``None`` picks it per batch element with ``sigma_rule`` and ``gamma``
            (see :func:`kernel_width`; the default is the median pairwise distance).
        kernel: ``"gaussian"`` exp(−‖a−b‖²/(2σ²)) or ``"laplacian"`` exp(−‖a−b‖/σ).
    """
    if kernel not in KERNELS:
        raise ConfigError(
            f"parameter 'kernel' must be one of {', '.join(map(repr, KERNELS))}, "
            f"but got kernel={kernel!r}"
        )
    x = x.to(torch.float64)
    d2 = _sq_distances(x)
    if sigma is None:
        sig = kernel_width(x, sigma_rule=sigma_rule, gamma=gamma, d2=d2)
    else:
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if not bool((sig > 0).all()):
            raise ConfigError(f"parameter 'sigma' must be > 0, but got sigma={sigma!r}")
    sig = sig[..., None, None] if sig.dim() else sig
    if kernel == "gaussian":
        return torch.exp(-d2 / (2.0 * sig * sig))
    return torch.exp(-d2.sqrt() / sig)


def normalize_gram(k: Tensor) -> Tensor:
    """A_ab = K_ab / (n·√(K_aa K_bb)): unit trace (``Tensor[..., n, n]``)."""
    n = k.shape[-1]
    diag = torch.diagonal(k, dim1=-2, dim2=-1).clamp(min=torch.finfo(k.dtype).tiny).sqrt()
    return k / (n * diag[..., :, None] * diag[..., None, :])


def unit_trace(a: Tensor) -> Tensor:
    """``a / tr(a)`` for each matrix of ``Tensor[..., n, n]``."""
    tr = torch.diagonal(a, dim1=-2, dim2=-1).sum(dim=-1)
    return a / tr[..., None, None]


_unit_trace = unit_trace


def renyi_entropy(a: Tensor, alpha: float) -> Tensor:
    """S_α(A) in bits for unit-trace PSD ``Tensor[..., n, n]`` -> ``Tensor[...]``.

    α = 2 uses −log₂ ‖A‖_F² (no eigendecomposition); α = 1 the Shannon form −Σ λ log₂ λ; any other
    α > 0 uses ``eigvalsh`` with negative eigenvalues (rounding) clamped to 0.
    """
    alpha = _check_alpha(alpha)
    a = a.to(torch.float64)
    if alpha == 2.0:
        return -torch.log2((a * a).sum(dim=(-2, -1)))
    return entropy_of_eigenvalues(torch.linalg.eigvalsh(a), alpha)


def entropy_of_eigenvalues(lam: Tensor, alpha: float) -> Tensor:
    """S_α in bits from the eigenvalues ``Tensor[..., n]`` of unit-trace PSD matrices.

    Negative eigenvalues (rounding) count as 0; the formula of :func:`renyi_entropy` (α = 1: the
    Shannon form; otherwise log₂ Σ λ^α / (1 − α)). Padding a spectrum with zeros leaves it unchanged.
    """
    lam = lam.clamp(min=0.0)
    if alpha == 1.0:
        return -torch.special.xlogy(lam, lam).sum(dim=-1) / math.log(2.0)
    return torch.log2((lam**alpha).sum(dim=-1)) / (1.0 - alpha)


def hadamard_joint(*mats: Tensor) -> Tensor:
    """The unit-trace Hadamard product A_1 ∘ … ∘ A_k / tr(A_1 ∘ … ∘ A_k) (broadcasting)."""
    if not mats:
        raise ValueError("hadamard_joint needs at least one matrix")
    out = mats[0]
    for m in mats[1:]:
        out = out * m
    return _unit_trace(out)


def joint_entropy(*mats: Tensor, alpha: float) -> Tensor:
    """S_α(A_1, …, A_k) of the renormalised Hadamard product."""
    return renyi_entropy(hadamard_joint(*mats), alpha)


def mutual_information(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """I_α(A;B) = S(A) + S(B) − S(A,B)."""
    return renyi_entropy(a, alpha) + renyi_entropy(b, alpha) - joint_entropy(a, b, alpha=alpha)


def conditional_mutual_information(x: Tensor, y: Tensor, z: Tensor | None, alpha: float) -> Tensor:
    """I_α(X;Y|Z) = S(X,Z) + S(Y,Z) − S(X,Y,Z) − S(Z); ``z=None`` gives I_α(X;Y)."""
    if z is None:
        return mutual_information(x, y, alpha)
    return (
        joint_entropy(x, z, alpha=alpha)
        + joint_entropy(y, z, alpha=alpha)
        - joint_entropy(x, y, z, alpha=alpha)
        - renyi_entropy(z, alpha)
    )


def label_gram(labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Normalised delta-kernel Gram matrix of class labels: K_ab = 1[y_a = y_b], A = K / n.

    Args:
        labels: ``Tensor[n]`` integer class labels (or ``Tensor[n, k]`` one-hot rows).
        num_classes: if given, labels must lie in ``[0, num_classes)``.
    """
    if labels.dim() == 2:
        labels = labels.argmax(dim=1)
    if labels.dim() != 1:
        raise ConfigError(
            f"labels must be Tensor[n] (or one-hot Tensor[n, k]), got shape {tuple(labels.shape)}"
        )
    if (
        num_classes is not None
        and labels.numel()
        and (labels.min() < 0 or labels.max() >= num_classes)
    ):
        raise ConfigError(
            f"labels must lie in [0, {num_classes}), "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    k = (labels[:, None] == labels[None, :]).to(torch.float64)
    return normalize_gram(k)


TIE_TOLERANCE = 1e-10
"""CMI values (bits) closer than ``TIE_TOLERANCE · max(1, |best|)`` to the best are a tie.

Candidates with identical maps get identical CMIs mathematically, but a batched ``eigvalsh`` can
differ in the last bits between batch positions (about 1e-15 here), so an exact comparison would
break ties by rounding noise instead of by index.
"""


def first_max(values: Tensor) -> int:
    """Index of the first value within the tie tolerance of the maximum (ties: the lowest index)."""
    best = float(values.max())
    tol = TIE_TOLERANCE * max(1.0, abs(best))
    return int(torch.nonzero(values >= best - tol)[0])


def check_condition(condition: Tensor | None, n: int, device: torch.device) -> Tensor | None:
    """A cross-layer condition as a unit-trace float64 ``Tensor[n, n]`` on ``device`` (or ``None``)."""
    if condition is None:
        return None
    if condition.shape != (n, n):
        raise ConfigError(
            f"cmi condition must be a unit-trace Tensor[{n}, {n}] (one row per sample), "
            f"got shape {tuple(condition.shape)}"
        )
    return unit_trace(condition.to(device, torch.float64))


JOINTS = ("hadamard", "concat")


def conditioning_gram(
    maps: Tensor,
    channels: Tensor | list[int],
    *,
    joint: str = "hadamard",
    sigma_rule: str = "median",
    gamma: float = 1.0,
) -> Tensor:
    """Unit-trace Gram matrix ``Tensor[n, n]`` of a set of channels T, the cross-layer condition.

    Args:
        maps: ``Tensor[n, C, ...]`` maps of the conditioning layer.
        channels: the channels of T (e.g. that layer's kept channels).
        joint: ``"hadamard"``: the Hadamard joint of the channels' own Gram matrices, as X_S in
            :func:`~prunetune.pruning.criteria.renyi.cmi_ranking`; ``"concat"``: one Gaussian Gram matrix of the channels' maps,
            each divided by its own kernel width (``sigma_rule``, without ``gamma``), concatenated
            per sample, with σ by ``sigma_rule`` and ``gamma`` on the concatenated vectors.
    """
    if joint not in JOINTS:
        raise ConfigError(
            f"parameter 'condition_joint' must be one of {', '.join(map(repr, JOINTS))}, "
            f"but got condition_joint={joint!r}"
        )
    n = maps.shape[0]
    idx = torch.as_tensor(channels, dtype=torch.long, device=maps.device)
    x = maps.detach().reshape(n, maps.shape[1], -1).to(torch.float64)[:, idx]  # n×k×d
    if joint == "concat":
        width = kernel_width(x.transpose(0, 1), sigma_rule=sigma_rule)  # k: each channel's own σ
        scaled = (x / width[None, :, None]).reshape(n, -1)
        return normalize_gram(gram_matrix(scaled, sigma_rule=sigma_rule, gamma=gamma))
    per = normalize_gram(gram_matrix(x.transpose(0, 1), sigma_rule=sigma_rule, gamma=gamma))
    return hadamard_joint(*per.unbind(0))
