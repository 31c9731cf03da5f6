"""CHIP channel independence, exact and fast (Sui et al., NeurIPS 2021, arXiv 2110.13981).

For one image, M ∈ R^{c×hw} holds the flattened maps of the c channels (row j = channel j), and
M^{(j)} is M with row j set to zero. The channel independence of channel j is

    CI(j) = ‖M‖_* − ‖M^{(j)}‖_*            (‖·‖_* = nuclear norm, the sum of singular values)

The official code takes c + 1 SVDs of c×hw matrices per image. Two exact reformulations are used
here instead (float64 throughout; criteria.md §4.4):

* **gram** (cheap when c ≤ hw): G = M Mᵀ (c×c), ‖M‖_* = Σ√λ(G). Zeroing row j of M deletes row and
  column j of G, so ‖M^{(j)}‖_* = Σ√λ(G_{−j,−j}). All B·c principal submatrices of a batch go into
  one batched ``eigvalsh`` call.
* **sample** (cheap when c > hw): S = MᵀM (hw×hw), and M^{(j)ᵀ}M^{(j)} = S − m_j m_jᵀ, so
  ‖M^{(j)}‖_* = Σ√λ(S − m_j m_jᵀ); again one batched ``eigvalsh`` over B·c matrices of hw×hw.

Negative eigenvalues, and eigenvalues below k·eps·λ_max (the rounding noise of an exact zero, as in
``matrix_rank``'s default tolerance), are set to 0 before the square root: without this, a route
used outside its regime (rank-deficient Gram matrix) is off by about 1e-8 per zero eigenvalue.
The stacked matrices take B·c·k²·8 bytes (k = c − 1 or hw); when that would exceed
``max_memory_mb`` the stack is processed in chunks of (image, channel) pairs, so the peak stays
bounded whatever the batch size.

:func:`chip_scores_svd` is the official per-image definition (c + 1 nuclear norms through SVD), kept
as the reference for tests and benchmarks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError

ROUTES = ("auto", "gram", "sample")

# eigvalsh needs workspace beyond its input; budget this many input-sized copies per matrix
_WORKSPACE_FACTOR = 4


def _as_bc_n(maps: Tensor) -> Tensor:
    """``Tensor[B, C, H, W]`` (or ``[B, C]``) -> float64 ``Tensor[B, C, H*W]``, same device."""
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 3, 4):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ConfigError(f"chip needs maps as Tensor[B, C, H, W] or Tensor[B, C], got {shape}")
    maps = maps.detach()
    return maps.reshape(maps.shape[0], maps.shape[1], -1).to(torch.float64)


def _sqrt_sum(eigvals: Tensor) -> Tensor:
    """Σ√λ over the last dimension; λ below k·eps·λ_max (noise of a zero eigenvalue) counts as 0."""
    if eigvals.shape[-1] == 0:
        return eigvals.sum(dim=-1)
    tol = eigvals.amax(dim=-1, keepdim=True).clamp(min=0.0) * (
        eigvals.shape[-1] * torch.finfo(eigvals.dtype).eps
    )
    return torch.where(eigvals > tol, eigvals, 0.0).sqrt().sum(dim=-1)


def pick_route(channels: int, spatial: int, route: str = "auto") -> str:
    """Resolve ``route``: ``"auto"`` is ``"gram"`` if ``channels <= spatial``, else ``"sample"``."""
    if route not in ROUTES:
        raise ConfigError(
            f"chip: parameter 'route' must be one of {', '.join(map(repr, ROUTES))}, "
            f"but got route={route!r}"
        )
    if route == "auto":
        return "gram" if channels <= spatial else "sample"
    return route


def chip_scores(maps: Tensor, *, route: str = "auto", max_memory_mb: float = 1024.0) -> Tensor:
    """Per-image CHIP channel independence.

    Args:
        maps: ``Tensor[B, C, H, W]`` (or ``[B, C]``, read as H = W = 1), any device.
        route: ``"gram"``, ``"sample"`` or ``"auto"`` (see the module docstring); all exact.
        max_memory_mb: budget for the stacked eigenvalue problems; beyond it they are chunked.

    Returns:
        ``Tensor[B, C]`` float64 on the maps' device: CI_n(j) = ‖M_n‖_* − ‖M_n^{(j)}‖_*.
    """
    m = _as_bc_n(maps)
    b, c, n = m.shape
    if b == 0:
        return m.new_zeros(0, c)
    if c == 1:  # the only row removed leaves the zero matrix
        return m.norm(dim=-1)
    route = pick_route(c, n, route)
    if route == "gram":
        g = m @ m.transpose(1, 2)  # B×c×c
        full = _sqrt_sum(torch.linalg.eigvalsh(g))
        keep = _leave_one_out_index(c, m.device)  # c×(c−1)
        size = c - 1
    else:
        g = m.transpose(1, 2) @ m  # B×hw×hw
        full = _sqrt_sum(torch.linalg.eigvalsh(g))
        keep = None
        size = n
    per_matrix = _WORKSPACE_FACTOR * size * size * 8
    chunk = max(1, int(max_memory_mb * 2**20) // per_matrix)
    pairs = torch.arange(b * c, device=m.device)
    reduced = torch.empty(b * c, dtype=torch.float64, device=m.device)
    for start in range(0, b * c, chunk):
        p = pairs[start : start + chunk]
        img, row = p // c, p % c
        if keep is not None:
            idx = keep[row]
            stack = g[img[:, None, None], idx[:, :, None], idx[:, None, :]]
        else:
            v = m[img, row]  # P×hw
            stack = g[img] - v[:, :, None] * v[:, None, :]
        reduced[start : start + chunk] = _sqrt_sum(torch.linalg.eigvalsh(stack))
    return full[:, None] - reduced.reshape(b, c)


def _leave_one_out_index(c: int, device: torch.device) -> Tensor:
    """``LongTensor[c, c−1]``: row j lists every index but j, in order."""
    idx = torch.arange(c, device=device).expand(c, c)
    mask = ~torch.eye(c, dtype=torch.bool, device=device)
    return idx[mask].reshape(c, c - 1)


def chip_scores_svd(maps: Tensor) -> Tensor:
    """Reference CHIP: the official per-image definition with c + 1 SVD nuclear norms per image.

    Slow (O(B·c²·hw·min(c, hw))); for tests and benchmarks only.

    Args:
        maps: ``Tensor[B, C, H, W]`` (or ``[B, C]``).

    Returns:
        ``Tensor[B, C]`` float64.
    """
    m = _as_bc_n(maps)
    b, c, _ = m.shape
    out = m.new_empty(b, c)
    eye = torch.eye(c, dtype=torch.bool, device=m.device)
    for i in range(b):
        full = torch.linalg.matrix_norm(m[i], ord="nuc")
        zeroed = m[i].expand(c, -1, -1).masked_fill(eye[:, :, None], 0.0)  # c×c×hw, row j zeroed
        out[i] = full - torch.linalg.matrix_norm(zeroed, ord="nuc")
    return out
