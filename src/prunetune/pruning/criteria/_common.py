"""Shared helpers of the activation and information criteria: parameter checks, map shapes, ranks.

Nothing here is registered; the criterion modules (``activation``, ``information``) import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria._scratch import scratch
from prunetune.pruning.criteria.base import Criterion


@dataclass(frozen=True)
class CheckedCriterion(Criterion):
    """A :class:`Criterion` whose :meth:`resolve` also validates the parameter values.

    ``score()`` resolves parameters before anything else, so a bad value fails before any work.
    Subclasses override :meth:`validate`; :meth:`params` resolves and validates in one call (used
    by ``needs``, ``from_weight`` and ``accumulator``, which may receive partial parameters).
    """

    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        resolved = super().resolve(params)
        self.validate(resolved)
        return resolved

    def validate(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` naming the parameter if a value is out of range."""

    def params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`resolve` applied to possibly partial parameters."""
        return self.resolve(params)


def check_choice(crit: str, params: Mapping[str, Any], key: str, allowed: Sequence[str]) -> str:
    """Return ``params[key]`` if it is one of ``allowed``, else raise :class:`ConfigError`."""
    value = params[key]
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(
            f"criterion {crit!r}: parameter {key!r} must be one of "
            f"{', '.join(repr(a) for a in allowed)}, but got {key}={value!r}"
        )
    return value


def check_int(
    crit: str, params: Mapping[str, Any], key: str, *, minimum: int, optional: bool = False
) -> int | None:
    """Return ``params[key]`` as an int ``>= minimum`` (``None`` allowed if ``optional``)."""
    value = params[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if optional else ""
        raise ConfigError(
            f"criterion {crit!r}: parameter {key!r} must be an integer >= {minimum}{extra}, "
            f"but got {key}={value!r}"
        )
    return value


def check_float(
    crit: str,
    params: Mapping[str, Any],
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``params[key]`` as a finite float in ``[low, high]`` (``low`` excluded if ``low_open``)."""
    value = params[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        rule = " and ".join(r for r in (lo, hi) if r) or "finite"
        raise ConfigError(
            f"criterion {crit!r}: parameter {key!r} must be a finite number {rule}, "
            f"but got {key}={value!r}"
        )
    return float(value)


def as_maps(x: Tensor, *, crit: str, channels: int | None = None) -> Tensor:
    """View activations as ``Tensor[B, C, H, W]``; ``[B, C]`` becomes ``[B, C, 1, 1]``.

    A 3-D ``[B, C, L]`` tensor (1-D feature maps) becomes ``[B, C, 1, L]``. The tensor is detached
    and stays on its device and dtype.
    """
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(
            f"criterion {crit!r} needs feature maps as Tensor[B, C, H, W] or Tensor[B, C], "
            f"got {shape}"
        )
    x = x.detach()
    if x.dim() == 2:
        x = x[:, :, None, None]
    elif x.dim() == 3:
        x = x[:, :, None, :]
    if channels is not None and x.shape[1] != channels:
        raise ConfigError(
            f"criterion {crit!r} was set up for {channels} channels but got a batch of shape "
            f"{tuple(x.shape)} (dimension 1 is the channel dimension)"
        )
    return x


def flat64(x: Tensor) -> Tensor:
    """``Tensor[B, C, H, W]`` -> ``Tensor[B, C, H*W]`` float64 on the same device."""
    return x.reshape(x.shape[0], x.shape[1], -1).to(torch.float64)


_T = TypeVar("_T")
_MEMO_ATTR = "_prunetune_memo"


def memo(batch: Any, key: str, compute: Callable[[], _T]) -> _T:
    """``compute()`` once per calibration batch, shared by every accumulator that sees ``batch``.

    Calibration hands one :class:`~prunetune.pruning.criteria.base.FeatureBatch` to all the
    accumulators of a feature point, so work several criteria need (the float64 channel-major copy
    of the maps, the per-map std, the Gram matrix) is done once. The cache lives on the batch object
    and dies with it; it is dropped if ``batch.activations`` is replaced. ``key`` must name
    everything the value depends on besides the activations. Objects that take no attributes are
    served uncached.
    """
    src = batch.activations
    cache = getattr(batch, _MEMO_ATTR, None)
    if cache is None or cache.get("__src__") is not src:
        cache = {"__src__": src}
        try:
            setattr(batch, _MEMO_ATTR, cache)
        except (AttributeError, TypeError):
            return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def channel_major64(batch: Any, maps: Tensor) -> Tensor:
    """``Tensor[C, B*H*W]`` float64: channel c's maps of all images of the batch, concatenated.

    ``maps`` is ``as_maps(batch.activations)``. Equal to ``flat64(maps).transpose(0, 1)
    .reshape(C, -1)``, made in one cast-and-transpose copy and shared through :func:`memo`. In a
    calibration pass it is a scratch tensor (:mod:`~prunetune.pruning.criteria._scratch`): valid
    during the batch's updates only.
    """

    def compute() -> Tensor:
        b, c = maps.shape[0], maps.shape[1]
        out = scratch("channel_major64", (c, b, maps.shape[2:].numel()), torch.float64, maps.device)
        out.copy_(maps.reshape(b, c, -1).transpose(0, 1))
        return out.reshape(c, -1)

    return memo(batch, "channel_major64", compute)


def image_grams(batch: Any, maps: Tensor) -> Tensor:
    """``Tensor[B, C, C]`` float64: each image's Gram matrix M_n M_nᵀ of its C×(h·w) maps (shared).

    Read from the channel-major copy. CHIP's quadrature and Gram routes factorise them; their sum
    over the images is the C×C Gram matrix of the concatenated maps that ``sfs`` reads.
    """

    def compute() -> Tensor:
        b, c = maps.shape[0], maps.shape[1]
        m = channel_major64(batch, maps).reshape(c, b, -1).transpose(0, 1)  # B×C×hw view
        return m @ m.transpose(1, 2)

    return memo(batch, "image_grams", compute)


def channel_gram(batch: Any, maps: Tensor) -> Tensor:
    """``Tensor[C, C]`` float64: Σ_n M_n M_nᵀ = F Fᵀ, the second-moment matrix of the channels over
    the batch's pixels (F: :func:`channel_major64`), shared by ``sfs``, ``dfs_sfs`` and
    ``independence[feature]``.

    Where C ≤ h·w it is the sum of the per-image Gram matrices (:func:`image_grams`), which CHIP's
    quadrature factorises anyway and which then take no more memory than the maps themselves;
    otherwise (B·C² values would outgrow the maps) one product F Fᵀ.
    """

    def compute() -> Tensor:
        if maps.shape[1] <= maps.shape[2:].numel():
            return image_grams(batch, maps).sum(dim=0)
        f = channel_major64(batch, maps)
        return f @ f.T

    return memo(batch, "channel_gram", compute)


# On the CPU, elementwise work on large streamed tensors runs over blocks of rows of about this many
# bytes: a block's temporaries stay in cache and the allocator reuses them, where whole-tensor
# temporaries (16 MB per batch at a ResNet stage-1 point) would each be fresh pages from the OS.
BLOCK_BYTES = 1 << 21


def row_blocks(rows: int, row_bytes: int, device: torch.device, block_bytes: int | None = None) -> Iterator[slice]:
    """Slices of ``range(rows)`` of about ``block_bytes`` (default :data:`BLOCK_BYTES`) each on the
    CPU; one slice on other devices, where more kernels would cost more than the memory saved, and
    for rows over half a block."""
    # rows over half a block: one slice, as the whole tensor was taken before (blocks of one row would
    # save nothing, and a one-row reduction may be split across threads in another order)
    block = BLOCK_BYTES if block_bytes is None else block_bytes
    big = device.type != "cpu" or 2 * row_bytes > block
    step = rows if big else block // max(1, row_bytes)
    for start in range(0, rows, max(1, step)):
        yield slice(start, min(rows, start + step))


# population_std: a row whose mean square exceeds its variance by more than this factor takes the
# two-pass formula (the one-pass difference would lose more than about 1e-13 of the variance)
STD_CANCELLATION = 100.0


def population_std(x: Tensor, total: Tensor | None = None) -> Tensor:
    """Population std (``unbiased=False``) over the last dimension, in x's dtype.

    From each row's sum and sum of squares (two reductions, no temporaries): var = (Σx² − Σx·μ)/n.
    Its rounding error is a few eps of Σx²/n, so a row whose Σx²/n exceeds
    :data:`STD_CANCELLATION` times that variance (a near-constant row), or whose difference is not
    positive, takes the two-pass formula instead (:func:`two_pass_std`). Either way the result
    agrees with ``Tensor.std`` (a Welford pass, several times slower) to about 1e-13 relative (a
    few units in the last place on ResNet-56 maps); an all-zero row gives 0, and a constant row
    whose float64 sum is exact (any float32 data) exactly 0. A row's value does not depend on the
    other rows. ``total``: the rows' sums ``x.sum(dim=-1)`` if already taken (:func:`map_sums`).
    """
    n = x.shape[-1]
    if n == 0:
        return x.std(dim=-1, unbiased=False)
    flat = x.reshape(-1, n)
    total = flat.sum(dim=-1) if total is None else total.reshape(-1)
    squares = torch.linalg.vector_norm(flat, dim=-1).square_()
    var = (squares - total * (total / n)).div_(n)
    one_pass = ((var > 0) & (squares <= (STD_CANCELLATION * n) * var)) | (squares == 0)
    out = var.clamp_(min=0.0).sqrt_()
    rows = (~one_pass).nonzero()[:, 0]
    step = max(1, BLOCK_BYTES // max(1, n * x.element_size()))  # copies of at most a block at a time
    for part in rows.split(step):
        out[part] = two_pass_std(flat.index_select(0, part))
    return out.reshape(x.shape[:-1])


def two_pass_std(x: Tensor) -> Tensor:
    """Population std over the last dimension of ``Tensor[R, n]``: the mean first, then the norm of
    the deviations, over blocks of rows (:func:`row_blocks`: the deviations never take more than a
    block's memory; each row's value does not depend on the blocks)."""
    n = x.shape[-1]
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for rows in row_blocks(x.shape[0], n * x.element_size(), x.device):
        block = x[rows]
        dev = block - block.mean(dim=-1, keepdim=True)
        out[rows] = torch.linalg.vector_norm(dev, dim=-1)
    return out.div_(math.sqrt(n))


def map_sums(batch: Any, maps: Tensor) -> Tensor:
    """Σ over the h·w pixels of each map, ``Tensor[C, B]`` float64 (shared): the sums
    :func:`map_std` starts from, and the channel means of ``independence[feature]``."""

    def compute() -> Tensor:
        b, c = maps.shape[0], maps.shape[1]
        return channel_major64(batch, maps).reshape(c, b, -1).sum(dim=-1)

    return memo(batch, "map_sums", compute)


def map_std(batch: Any, maps: Tensor) -> Tensor:
    """Population std over the h·w pixels of each map, ``Tensor[B, C]`` float64 (shared).

    :func:`population_std` of each map's h·w values in float64, read from the channel-major copy,
    with the sums of :func:`map_sums`.
    """

    def compute() -> Tensor:
        b, c = maps.shape[0], maps.shape[1]
        rows = channel_major64(batch, maps).reshape(c, b, -1)
        return population_std(rows, map_sums(batch, maps)).T.contiguous()

    return memo(batch, "map_std", compute)


def no_data(crit: str) -> ConfigError:
    """The error raised when ``result()`` is called before any ``update()``."""
    return ConfigError(
        f"criterion {crit!r} received no calibration batches; call update(batch) at least once "
        "before result()"
    )


def scores_from_order(
    order: Iterable[int], channels: int, *, device: torch.device | None = None
) -> Tensor:
    """Turn a removal order (least important first) into scores ``(t + 1) / C``, in ``(0, 1]``."""
    order_t = torch.as_tensor(list(order), dtype=torch.long)
    if order_t.numel() != channels or torch.unique(order_t).numel() != channels:
        raise ValueError(
            f"order must be a permutation of {channels} channels, got {order_t.tolist()}"
        )
    scores = torch.empty(channels, dtype=torch.float64)
    scores[order_t] = torch.arange(1, channels + 1, dtype=torch.float64) / channels
    return scores if device is None else scores.to(device)


def correlation(cov: Tensor, second_moment: Tensor) -> Tensor:
    """Pearson correlation matrix from a covariance matrix ``Tensor[C, C]``.

    A row whose variance is zero, or negligible next to its second moment (relative 1e-20, i.e. a
    standard deviation below 1e-10 of the RMS value: a constant up to rounding), has correlation 0
    with every row, itself included, so no NaN appears.
    """
    var = torch.diagonal(cov).clamp(min=0.0)
    constant = var <= 1e-20 * second_moment.clamp(min=0.0)
    std = torch.where(constant, torch.ones_like(var), var.sqrt())
    rho = cov / (std[:, None] * std[None, :])
    rho = rho.masked_fill(constant[:, None] | constant[None, :], 0.0)
    return rho.clamp(-1.0, 1.0)
