"""CHIP channel independence, exact and fast (Sui et al., NeurIPS 2021, arXiv 2110.13981).

For one image, M ∈ R^{c×hw} holds the flattened maps of the c channels (row j = channel j), and
M^{(j)} is M with row j set to zero. The channel independence of channel j is

    CI(j) = ‖M‖_* − ‖M^{(j)}‖_*            (‖·‖_* = nuclear norm, the sum of singular values)

The official code takes c + 1 SVDs of c×hw matrices per image. Three reformulations are used
here instead (float64 throughout; criteria.md §4.4):

* **quadrature** (the default when c ≤ hw): one eigendecomposition G = M Mᵀ = U Λ Uᵀ per image,
  then every CI(j) at once from

      CI(j) = (2/π) ∫_0^∞ φ_j(t²) dt,   φ_j(s) = Σ_i w_ji λ_i/(λ_i + s)² / Σ_i w_ji/(λ_i + s),

  w_ji = U_ji². This is exact: with μ the eigenvalues of G_{−j,−j}, √λ = (2/π)∫_0^∞ λ/(λ + t²) dt,
  and Σ_i λ_i/(λ_i+s) − Σ_k μ_k/(μ_k+s) = 1 − s·[(G+s)⁻²]_jj/[(G+s)⁻¹]_jj (Schur complement of
  the deleted row) = φ_j(s). With t = e^u the integrand is a sum of (√λ/2)·sech(u − ½ ln λ) terms,
  which the trapezoid rule in u integrates with error below 4·e^(−π²/h) of their mass (h = 0.3:
  2e-14). Per image, λ is scaled to λ_max = 1 and the nodes run over u ∈ [−28, 6.5] (116 nodes).
  Below the first node φ has nearly settled to its value at s = 0; the rest of the grid there is
  added as φ(s_0)·Σ_k h·e^(u_0 − kh), and φ ≤ 1 bounds what that misses by e^(−28) = 7e-13. Above
  the last node the sum is added in closed form from the asymptotic series
  φ_j(s) = m1/s + (m1² − 2·m2)/s² + O(s⁻³), m_k = Σ_i w_ji λ_i^k. In all the CIs agree with the
  SVD definition to about 3e-13 of the image's largest CI on well-conditioned maps (ResNet-56 maps
  and the test suite's hard cases); on ill-conditioned ones (singular values down to 1e-7 of the
  largest) squaring into G costs about 1e-8, with either grid; φ ≥ 0 sums
  positive terms, so there is no cancellation, and CI(j) ≥ 0 up to the tail term. Cost per image:
  one c×c ``eigh`` and one (c×c)·(c×2·116) product, instead of c eigenvalue problems. (The grid was
  h = 1/4 over [−37, 8], 181 nodes, until the products were found to cost two thirds of the ``eigh``.)

  Most images need far fewer nodes. φ_j(s) = Σ_i λ_i/(λ_i+s) − Σ_k μ_k/(μ_k+s) means that any
  approximation √y ≈ M·y + Σ_k a_k·y/(y + b_k) gives CI(j) ≈ M·G_jj + Σ_k a_k·φ_j(b_k), with the
  approximation's error on each λ_i and μ_k. Zolotarev's rational approximation
  (:mod:`~prunetune.pruning.criteria.sqrt_rational`) holds a relative error of 3e-14 on [10^(−L), 1]
  with about 4L + 5 poles, so an image whose λ and μ all lie in {0} ∪ [10^(−L), 1] takes those
  poles as its nodes: at ResNet-56's points L = 2 at 16 channels (13 nodes), 3-4 at 32 (16-20) and
  mostly 6-10 at 64 (27-43). :func:`rational_levels` finds each image's L from its own spectrum (the
  μ need no solve: interlacing bounds them, see there); an image no level up to
  ``sqrt_rational.MAX_LEVEL`` covers takes the trapezoid grid. The approximation's error, 3e-14 of
  each √λ and √μ, grows with the channels as 3e-14·(Σ√λ + Σ√μ): against the SVD definition about
  4e-13 of the image's largest CI on random 64-channel maps, where the trapezoid grid gives about
  1.2e-13 (both far below what squaring into G costs on ill-conditioned maps). From its spectrum
  on, an image's value never depends on the other images of its batch.

* **gram** (cheap when c ≤ hw): G = M Mᵀ (c×c), ‖M‖_* = Σ√λ(G). Zeroing row j of M deletes row and
  column j of G, so ‖M^{(j)}‖_* = Σ√λ(G_{−j,−j}). All B·c principal submatrices of a batch go into
  one batched ``eigvalsh`` call.
* **sample** (cheap when c > hw, the default there): S = MᵀM (hw×hw), and M^{(j)ᵀ}M^{(j)} = S − m_j m_jᵀ, so
  ‖M^{(j)}‖_* = Σ√λ(S − m_j m_jᵀ); again one batched ``eigvalsh`` over B·c matrices of hw×hw.

Negative eigenvalues, and eigenvalues below k·eps·λ_max (the rounding noise of an exact zero, as in
``matrix_rank``'s default tolerance), are set to 0 before the square root: without this, a route
used outside its regime (rank-deficient Gram matrix) is off by about 1e-8 per zero eigenvalue
(the quadrature route zeroes them by the same rule, in Λ). The stacked matrices take B·c·k²·8 bytes
(k = c − 1 or hw); when that would exceed ``max_memory_mb`` the stack is processed in chunks of
(image, channel) pairs (of images for the quadrature route), so the peak stays bounded whatever the
batch size. On CPU the batched eigenvalue calls are split across torch's threads, and the quadrature's
work over its nodes runs over blocks of images that fit in cache (``NODE_BLOCK_BYTES``).

:func:`chip_scores_svd` is the official per-image definition (c + 1 nuclear norms through SVD), kept
as the reference for tests and benchmarks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import Tensor

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria._common import row_blocks
from prunetune.pruning.criteria._linalg import batched_linalg
from prunetune.pruning.criteria._scratch import scratch
from prunetune.pruning.criteria.sqrt_rational import MAX_LEVEL, sqrt_rational

ROUTES = ("auto", "quadrature", "gram", "sample")

# quadrature route: trapezoid step in u = ln t and node range, for λ scaled to λ_max = 1
_QUAD_STEP = 0.3
_QUAD_LOW = -28.0
_QUAD_HIGH = 6.5

# quadrature route on the CPU: the node work runs over blocks of images of about this many bytes
# (their [q | r], sums and weights stay in cache: 64 channels, 128 images, 45 -> 33 ms a batch)
NODE_BLOCK_BYTES = 1 << 23

# rational_levels: a channel's share of weight on the zero eigenvalues up to this counts as 0
ZERO_WEIGHT = 1e-26
# _exact_zero_rows: eigenvector rounding up to this (a weight) is set to its exact value where the
# image's zero eigenvalues are those of its zero rows
STRAY_WEIGHT = 1e-8

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
    """Resolve ``route``: ``"auto"`` is ``"quadrature"`` if ``channels <= spatial``, else ``"sample"``."""
    if route not in ROUTES:
        raise ConfigError(
            f"chip: parameter 'route' must be one of {', '.join(map(repr, ROUTES))}, "
            f"but got route={route!r}"
        )
    if route == "auto":
        return "quadrature" if channels <= spatial else "sample"
    return route


def chip_scores(
    maps: Tensor, *, route: str = "auto", max_memory_mb: float = 1024.0, grams: Tensor | None = None
) -> Tensor:
    """Per-image CHIP channel independence.

    Args:
        maps: ``Tensor[B, C, H, W]`` (or ``[B, C]``, read as H = W = 1), any device.
        route: ``"quadrature"``, ``"gram"``, ``"sample"`` or ``"auto"`` (see the module
            docstring); all exact up to rounding.
        max_memory_mb: budget for the stacked eigenvalue problems; beyond it they are chunked.
        grams: the per-image Gram matrices M_n M_nᵀ (``Tensor[B, C, C]`` float64) if already
            computed (calibration shares them with ``sfs``); the quadrature and gram routes use
            them instead of forming their own.

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
    if route == "quadrature":
        return _chip_quadrature(m, max_memory_mb, grams)
    if route == "gram":
        g = m @ m.transpose(1, 2) if grams is None else grams  # B×c×c
        full = _sqrt_sum(batched_linalg(torch.linalg.eigvalsh, g))
        keep = _leave_one_out_index(c, m.device)  # c×(c−1)
        size = c - 1
    else:
        g = m.transpose(1, 2) @ m  # B×hw×hw
        full = _sqrt_sum(batched_linalg(torch.linalg.eigvalsh, g))
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
        reduced[start : start + chunk] = _sqrt_sum(batched_linalg(torch.linalg.eigvalsh, stack))
    return full[:, None] - reduced.reshape(b, c)


def _quadrature_nodes(device: torch.device) -> tuple[Tensor, Tensor, float]:
    """Nodes s = e^(2u), trapezoid weights h·e^u, and the last node u_max."""
    count = _trapezoid_count()
    u = _QUAD_LOW + _QUAD_STEP * torch.arange(count, dtype=torch.float64, device=device)
    return torch.exp(2.0 * u), _QUAD_STEP * torch.exp(u), float(u[-1])


_RATIONAL_NODES: dict[tuple[int, torch.device], tuple[float, Tensor, Tensor]] = {}


def _rational_nodes(level: int, device: torch.device) -> tuple[float, Tensor, Tensor]:
    """M, weights a_k and nodes b_k of :func:`~.sqrt_rational.sqrt_rational` at ``level``, on ``device``."""
    key = (level, device)
    if key not in _RATIONAL_NODES:
        m, a, b = sqrt_rational(level)
        _RATIONAL_NODES[key] = (m, torch.tensor(a, dtype=torch.float64, device=device),
                                torch.tensor(b, dtype=torch.float64, device=device))
    return _RATIONAL_NODES[key]


def _chip_quadrature(m: Tensor, max_memory_mb: float, grams: Tensor | None = None) -> Tensor:
    """The quadrature route (module docstring) for ``Tensor[B, c, n]`` float64 -> ``Tensor[B, c]``."""
    b, c, _ = m.shape
    nodes = _trapezoid_count()  # the most any image takes
    per_image = 8 * (3 * c * c + 5 * c * nodes + c * m.shape[2])
    chunk = max(1, int(max_memory_mb * 2**20) // per_image)
    out = torch.empty(b, c, dtype=torch.float64, device=m.device)
    for start in range(0, b, chunk):
        mm = m[start : start + chunk]
        g = mm @ mm.transpose(1, 2) if grams is None else grams[start : start + chunk]
        lam, vec = batched_linalg(torch.linalg.eigh, g)
        lam, scale, nonzero = _unit_spectrum(lam)
        # w[n, j, i] = U_ji², rows sum to 1; no subnormals in the products
        w = torch.mul(vec, vec, out=scratch("chip_weights", vec.shape, vec.dtype, vec.device))
        nnf.threshold_(w, 1e-150, 0.0)
        share = _exact_zero_rows(lam, w, torch.diagonal(g, dim1=1, dim2=2) == 0)
        level = rational_levels(lam, w, nonzero, share)
        out[start : start + lam.shape[0]] = torch.where(nonzero, _spectral_ci(lam, w, level) * scale.sqrt(), 0.0)
    return out


def _unit_spectrum(lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each image's eigenvalues (ascending) scaled to λ_max = 1, rounding noise of a zero set to 0;
    the scale λ_max (1 for a zero image) and whether the image is nonzero (``[B, 1]`` each)."""
    eps = torch.finfo(torch.float64).eps
    lam_max = lam[:, -1:].clamp(min=0.0)
    nonzero = lam_max > 0
    scale = torch.where(nonzero, lam_max, 1.0)
    lam = lam / scale
    return torch.where(lam > lam.shape[1] * eps, lam, 0.0), scale, nonzero


def _zero_shares(lam: Tensor, w: Tensor) -> Tensor:
    """Each channel's share of weight on the zero eigenvalues, Σ_{λ_i = 0} w_ji / Σ_i w_ji: ``[B, c]``.

    Only the images with zero eigenvalues take the sums, each row over all its c columns (so an
    image's shares never depend on the others in its batch); an image without any has shares of
    exactly 0. Most images have none (on ResNet-56's maps none at 16 and 32 channels, a fifth at 64,
    with at most 4); a batched product over every image took 3× as long.
    """
    zero = lam == 0
    share = torch.zeros(w.shape[:2], dtype=w.dtype, device=w.device)
    idx = zero.any(dim=1).nonzero()[:, 0]
    if idx.numel():
        some = w.index_select(0, idx)
        share[idx] = (some * zero.index_select(0, idx)[:, None, :].to(w.dtype)).sum(dim=-1) / some.sum(dim=-1)
    return share


def _exact_zero_rows(lam: Tensor, w: Tensor, zero_rows: Tensor) -> Tensor:
    """Set the eigenvector rounding of exact zero rows of M to its exact value, 0, in ``w`` (in place);
    return the channels' zero shares (:func:`_zero_shares`) of the result.

    A zero row j of M (``zero_rows``: G_jj = 0, exact) is a zero row and column of G: e_j is an
    eigenvector for 0, and the rest of the spectrum is that of the other rows. Where an image has
    as many zero eigenvalues as zero rows (``lam`` as from :func:`_unit_spectrum`), the weights of the
    zero rows on the nonzero eigenvalues, and of the other rows on the zero ones, are exactly 0; the
    computed eigenvectors carry rounding there, about (eps/λ⁺)² and up to 1e-25 on ResNet-56's maps,
    which would otherwise stand for a spurious tiny eigenvalue of G_{−j,−j} (:func:`rational_levels`).
    Images where some row has more than :data:`STRAY_WEIGHT` there keep their ``w``.
    """
    share = _zero_shares(lam, w)
    zero = lam == 0
    z = zero.sum(dim=1)
    stray = torch.where(zero_rows, 1.0 - share, share).amax(dim=1)
    fix = (z > 0) & (z == zero_rows.sum(dim=1)) & (stray <= STRAY_WEIGHT)
    if bool(fix.any()):
        idx = fix.nonzero()[:, 0]
        rows = zero_rows.index_select(0, idx)
        off = rows[:, :, None] != zero.index_select(0, idx)[:, None, :]
        w[idx] = w.index_select(0, idx).masked_fill_(off, 0.0)
        share[idx] = rows.to(share.dtype)
    return share


def rational_levels(lam: Tensor, w: Tensor, nonzero: Tensor, share: Tensor | None = None) -> Tensor:
    """Per image, the smallest level L for which :func:`~.sqrt_rational.sqrt_rational` covers every
    eigenvalue that CI(j) of any channel j involves; ``sqrt_rational.MAX_LEVEL + 1`` where none does.

    ``lam``: ``[B, c]`` ascending, scaled to λ_max = 1 with zeros set to 0 (:func:`_unit_spectrum`);
    ``w``: ``[B, c, c]``, w[n, j, i] = U_ji²; ``share``: :func:`_zero_shares` if already computed. The
    nonzero λ are at least λ⁺ (the smallest nonzero one), and so are the eigenvalues μ of every
    G_{−j,−j} by interlacing, with one exception where G has z > 0 zero eigenvalues: z − 1 of the μ
    are exactly 0, and one, μ*, solves W_j/μ = Σ_{λ_i > 0} w_ji/(λ_i − μ) in (0, λ⁺), with
    W_j = Σ_{λ_i = 0} w_ji / Σ_i w_ji. From that equation W_j·λ⁺ ≤ μ* ≤ W_j/(1 − W_j). A channel with
    W_j ≤ :data:`ZERO_WEIGHT` has √μ* ≤ 1.5e-13, which the approximation (0 ≤ r(y) ≤ √y below its
    interval) misses by at most that, as the trapezoid grid's closed-form head may (4.4e-13); the
    other channels need the interval to reach down to W_j·λ⁺. Zero images get level 1 (their CI is
    0 whatever the nodes).
    """
    c = lam.shape[1]
    z = (lam == 0).sum(dim=1, keepdim=True)
    smallest = lam.gather(1, z.clamp(max=c - 1))[:, 0]
    share = _zero_shares(lam, w) if share is None else share
    factor = torch.where(share > ZERO_WEIGHT, (1.0 - 1e-6) * share, 1.0).amin(dim=1).clamp(max=1.0)
    level = torch.ceil(-torch.log10(smallest * factor)).clamp(min=1.0, max=MAX_LEVEL + 1.0)
    return torch.where(nonzero[:, 0], level, 1.0).long()


def _spectral_ci(lam: Tensor, w: Tensor, level: Tensor) -> Tensor:
    """CI of each channel for spectra scaled to λ_max = 1 (``level``: :func:`rational_levels`):
    ``Tensor[B, c]``.

    Each level's images take its rational approximation, those past ``MAX_LEVEL`` the trapezoid
    rule; an image's value depends on that image alone. The node work runs per level, over blocks of
    images that fit in cache on the CPU (``NODE_BLOCK_BYTES``).
    """
    b, c = lam.shape
    w = w.contiguous()  # one layout for every block: a product's rounding depends on it
    counts = torch.bincount(level, minlength=MAX_LEVEL + 2).tolist()
    order = None if max(counts) == b else torch.argsort(level, stable=True)  # one level: as they are
    if order is not None:
        lam = lam.index_select(0, order)
        w = torch.index_select(w, 0, order, out=scratch("chip_weights_sorted", w.shape, w.dtype, w.device))
    ci = torch.empty_like(lam)
    first = 0
    for lev, count in enumerate(counts):
        if count == 0:
            continue
        nodes = _trapezoid_count() if lev > MAX_LEVEL else len(sqrt_rational(lev)[2])
        node_bytes = 8 * (4 * c * nodes + 2 * c * c)  # per image: [q | r], their sums, w
        for rows in row_blocks(count, node_bytes, lam.device, NODE_BLOCK_BYTES):
            at = slice(first + rows.start, first + rows.stop)
            if lev > MAX_LEVEL:
                ci[at] = _trapezoid_sums(lam[at], w[at])
            else:
                ci[at] = _rational_sums(lam[at], w[at], lev)
        first += count
    return ci if order is None else torch.empty_like(ci).index_copy_(0, order, ci)


def _trapezoid_count() -> int:
    return int(round((_QUAD_HIGH - _QUAD_LOW) / _QUAD_STEP)) + 1


def _node_phi(lam: Tensor, w: Tensor, s: Tensor) -> Tensor:
    """φ_j(s) = Σ_i w_ji λ_i/(λ_i + s)² / Σ_i w_ji/(λ_i + s) at each node s: ``Tensor[b, c, nodes]``."""
    nodes = s.numel()
    # [λ_i/(λ_i + s)² | 1/(λ_i + s)] side by side: both sums over i in one product
    qr = torch.empty(*lam.shape, 2 * nodes, dtype=lam.dtype, device=lam.device)
    q, r = qr[..., :nodes], qr[..., nodes:]
    torch.add(lam[:, :, None], s, out=r).reciprocal_()
    torch.mul(r, r, out=q).mul_(lam[:, :, None])
    sums = w @ qr
    return sums[..., :nodes].div_(sums[..., nodes:])


def _rational_sums(lam: Tensor, w: Tensor, level: int) -> Tensor:
    """CI for λ_max = 1 from √y ≈ M·y + Σ_k a_k·y/(y + b_k) (``sqrt_rational(level)``): ``Tensor[b, c]``.

    Σ_i r(λ_i) − Σ_k r(μ_k) = M·(Σλ − Σμ) + Σ_k a_k·φ_j(b_k), and Σλ − Σμ = G_jj = Σ_i w_ji λ_i.
    """
    m, a, b = _rational_nodes(level, lam.device)
    phi = _node_phi(lam, w, b)
    # sums along the last dimension, not matrix-vector products: those sum in an order that
    # depends on how many rows they get, and an image's value must not depend on its batch
    return (phi * a).sum(dim=-1) + m * (w * lam[:, None, :]).sum(dim=-1)


def _trapezoid_sums(lam: Tensor, w: Tensor) -> Tensor:
    """CI for λ_max = 1 by the trapezoid rule in u = ln t, with its closed-form ends: ``Tensor[b, c]``."""
    s, weight, u_max = _quadrature_nodes(lam.device)
    h = _QUAD_STEP
    # closed-form trapezoid sums of the tail terms m1·e^(−u) and (m1² − 2·m2)·e^(−3u) past u_max
    tail1 = h * math.exp(-u_max) / math.expm1(h)
    tail3 = h * math.exp(-3.0 * u_max) / math.expm1(3.0 * h)
    # the nodes below the first, where φ has settled to its value at s → 0: φ(s_0)·Σ_k h·e^(u_0 − k·h)
    head = h * math.exp(_QUAD_LOW) / math.expm1(h)
    phi = _node_phi(lam, w, s)
    m1 = (w * lam[:, None, :]).sum(dim=-1)  # as in _rational_sums: row by row
    m2 = (w * (lam * lam)[:, None, :]).sum(dim=-1)
    ci = (phi * weight).sum(dim=-1) + head * phi[:, :, 0] + tail1 * m1 + tail3 * (m1 * m1 - 2.0 * m2)
    return ci * (2.0 / math.pi)


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
