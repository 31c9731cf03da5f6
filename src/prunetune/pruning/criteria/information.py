"""Information criteria: information capacity and independence (Tang et al., arXiv 2303.03645).
The greedy conditional mutual information criterion (``cmi``) is in
:mod:`prunetune.pruning.criteria.cmi`.

Paper 1 is verified at abstract level only; the estimators below follow criteria.md §1.3 and every
unverified choice is a parameter with the documented default. Entropies are in bits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria._common import (
    CheckedCriterion,
    as_maps,
    channel_gram,
    channel_major64,
    check_choice,
    check_float,
    check_int,
    correlation,
    map_sums,
    no_data,
    row_blocks,
)
from prunetune.pruning.criteria import _common
from prunetune.pruning.criteria._scratch import scratch
from prunetune.pruning.criteria.base import ACTIVATION, WEIGHT, FeatureBatch, check_weight, register

SOURCES = ("filter", "feature")


# bin_counts: a row of fewer values than this is counted in int32 (exact below 2**31; the scatter
# into int32 counts took half the time of int64 on the project machine)
INT32_COUNTS_BELOW = 2**31

# devices whose ``scatter_add_`` raises on an index out of range, as a NaN's bin index is there (the
# CPU converts NaN to the most negative integer). Elsewhere that is no error to rely on: CUDA's
# conversion rules give NaN an index in range (0), and an index out of range would stop the device
# with an assert, so there the indices are clamped and :class:`_HistogramAccumulator` looks for NaN
# itself, with a flag kept on the device (no host sync per batch).
SCATTER_RAISES_ON = frozenset({"cpu"})


def bin_counts(x: Tensor, lo: float, hi: float, bins: int) -> Tensor:
    """Per-row histogram of ``Tensor[C, m]`` over ``bins`` equal bins of ``[lo, hi]``.

    Values outside the range fall into the end bins. The bin index is floor((x − lo) · s) with
    s = bins/(hi − lo) rounded first, all in float64, and the counts are one ``scatter_add_`` along
    the rows per block of rows (no loop over single rows;
    :func:`~prunetune.pruning.criteria._common.row_blocks` keeps the index temporaries in cache; on
    the CPU one pair of them, from :func:`.scratch`, serves every block and, in a calibration pass,
    the next points of the same shape; rows too long for a block take fresh ones, freed on return).
    The counts are integers, int32 where a row has fewer than :data:`INT32_COUNTS_BELOW` values
    (exact; the scatter is most of the cost, and into int32 it took half the time of int64), and
    are returned as ``Tensor[C, bins]`` float64.
    """
    c, m = x.shape[0], x.shape[-1]
    scale = bins / (hi - lo)
    kind = torch.int32 if m < INT32_COUNTS_BELOW else torch.int64
    counts = torch.zeros(c, bins, dtype=kind, device=x.device)
    one = torch.ones((), dtype=kind, device=x.device)
    pos = idx = None
    for rows in row_blocks(c, 8 * m, x.device):
        block = x[rows].to(torch.float64)  # float64 arithmetic (the package's callers pass float64 already)
        if pos is None or pos.shape[0] < block.shape[0]:  # the first block is the largest
            # a block of streamed rows is kept for the next call; one whole-tensor block is not (it
            # would sit beside the pass's other scratch tensors until the pass ends)
            buffer = scratch if 8 * block.numel() <= _common.BLOCK_BYTES else _fresh
            pos = buffer("bin_counts_pos", block.shape, torch.float64, x.device)
            idx = buffer("bin_counts_idx", block.shape, torch.int64, x.device)
        at, where = pos[: block.shape[0]], idx[: block.shape[0]]
        # floor then clamp to [0, bins − 1] = clamp then truncate (integer bounds, values ≥ 0 after it)
        torch.sub(block, lo, out=at).mul_(scale).clamp_(0, bins - 1)
        where.copy_(at)
        if x.device.type not in SCATTER_RAISES_ON:
            where.clamp_(0, bins - 1)
        counts[rows].scatter_add_(1, where, one.expand(where.shape))
    return counts.to(torch.float64)


def _fresh(_tag: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


def entropy_bits(counts: Tensor) -> Tensor:
    """Shannon entropy (bits) of each row of a count matrix ``Tensor[C, bins]``."""
    total = counts.sum(dim=1, keepdim=True).clamp(min=1.0)
    p = counts / total
    return -torch.special.xlogy(p, p).sum(dim=1) / math.log(2.0)


def independence_from_correlation(rho: Tensor) -> Tensor:
    """II_j = 1 − mean_{k≠j} |ρ_jk| from a correlation matrix ``Tensor[C, C]``; ones if C = 1."""
    c = rho.shape[0]
    if c == 1:
        return torch.ones(1, dtype=torch.float64, device=rho.device)
    off = rho.abs().fill_diagonal_(0.0)
    return 1.0 - off.sum(dim=1) / (c - 1)


class _HistogramAccumulator:
    """Per-channel activation histograms over a range fixed by the first batch."""

    def __init__(self, name: str, channels: int, bins: int, margin: float) -> None:
        self.name, self.channels, self.bins, self.margin = name, channels, bins, margin
        self.range: tuple[float, float] | None = None
        self.counts: Tensor | None = None
        self.nan: Tensor | None = None  # whether a batch after the first held NaN (devices that count it)

    def update(self, batch: FeatureBatch) -> None:
        maps = as_maps(batch.activations, crit=self.name, channels=self.channels)
        x = channel_major64(batch, maps)  # C × (B·h·w), shared
        if self.range is None:
            # the same extremes (up to the sign of a zero, which bins alike) from the maps themselves:
            # float64 holds every float exactly, and float32 maps are half the bytes of the copy
            lo_t, hi_t = torch.aminmax(maps if maps.is_floating_point() else x)
            lo, hi = float(lo_t), float(hi_t)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise self._non_finite()
            width = hi - lo if hi > lo else max(abs(lo), 1.0)
            pad = self.margin * width if (hi > lo or self.margin > 0) else 0.5 * width
            self.range = (lo - pad, hi + pad)
        if x.device.type not in SCATTER_RAISES_ON:  # a device-side flag: checked once, in result()
            seen = torch.isnan(x).any()
            self.nan = seen if self.nan is None else self.nan.logical_or_(seen)
        try:
            counts = bin_counts(x, *self.range, self.bins)
        except RuntimeError as err:  # a NaN's bin index is out of range; no pass over the maps before
            if not bool(torch.isfinite(x).all()):
                raise self._non_finite() from err
            raise
        self.counts = counts if self.counts is None else self.counts + counts

    def _non_finite(self) -> ConfigError:
        return ConfigError(
            f"criterion {self.name!r}: the feature maps hold NaN or inf, so they have no histogram; "
            "the model's activations overflow or its calibration images hold such values: check both"
        )

    def result(self) -> Tensor:
        if self.counts is None:
            raise no_data(self.name)
        if self.nan is not None and bool(self.nan):
            raise self._non_finite()
        return entropy_bits(self.counts)

    def extras(self) -> dict[str, Tensor]:
        return {}


@dataclass(frozen=True)
class Capacity(CheckedCriterion):
    """Information capacity (Tang et al., arXiv 2303.03645): IC_j = −Σ_b q_b log₂ q_b.

    ``source="filter"`` (default, data-free): q is the histogram of filter j's weights over
    ``bins`` (256) equal bins spanning the *layer-wide* [min, max], so filters of one layer are
    comparable (estimator, bin count and scope unverified, criteria.md §1.3). A constant layer
    scores 0 everywhere.

    ``source="feature"``: q is the histogram of channel j's activations over all calibration
    images. Streaming needs a fixed range: the first batch's layer-wide [min, max] widened on each
    side by ``range_margin`` (0.5) × its span (a constant first batch uses max(|value|, 1) as the
    span); later values outside it are clamped into the end bins.
    """

    def validate(self, params: Mapping[str, Any]) -> None:
        check_choice(self.name, params, "source", SOURCES)
        check_int(self.name, params, "bins", minimum=2)
        check_float(self.name, params, "range_margin", low=0.0)

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({WEIGHT} if self.params(params)["source"] == "filter" else {ACTIVATION})

    def from_weight(self, weight: Tensor, **params: Any) -> Tensor:
        p = self.params(params)
        w = check_weight(weight, self.name)
        lo, hi = float(w.min()), float(w.max())
        if not hi > lo:
            return torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
        return entropy_bits(bin_counts(w, lo, hi, p["bins"]))

    def accumulator(self, channels: int, **params: Any) -> _HistogramAccumulator:
        p = self.params(params)
        if p["source"] != "feature":
            raise ConfigError(
                f"criterion {self.name!r} scores from feature maps only with source='feature'"
            )
        return _HistogramAccumulator(self.name, channels, p["bins"], float(p["range_margin"]))


# The batch co-moment is Σxxᵀ − m·μμᵀ unless a channel's mean is this large next to its spread
# (Σx_i² > CANCELLATION · m2_ii): then the difference would cancel to rounding noise, and the
# centred product is taken instead.
CANCELLATION = 1e3


def _co_moment(batch: FeatureBatch, maps: Tensor, x: Tensor, mean: Tensor) -> Tensor:
    """Σ_k (x_k − μ)(x_k − μ)ᵀ over the batch's m pixels (``x``: C×m, ``mean``: μ), float64.

    From the shared second-moment matrix Σxxᵀ (:func:`~prunetune.pruning.criteria._common.channel_gram`,
    which ``sfs`` and CHIP's Gram matrices also give), as Σxxᵀ − m·μμᵀ: no centred copy of the maps
    and no second C×C×m product. Its rounding error is about eps·(Σx_i² Σx_j²)^½ per entry, so where
    some channel has Σx_i² > :data:`CANCELLATION` · m2_ii (a near-constant channel; m2_ii < 0 is
    rounding of a constant one) the centred product is computed instead: the correlations then stay
    within about 1e3·eps·(a few) of the centred product's everywhere, and a constant channel still
    gets a co-moment of exactly 0.
    """
    m = x.shape[1]
    gram = channel_gram(batch, maps)
    m2 = gram - torch.outer(mean, mean).mul_(m)
    var, second = torch.diagonal(m2), torch.diagonal(gram)
    if bool(((var < 0) | (second > CANCELLATION * var)).any()):
        xc = x - mean[:, None]
        return xc @ xc.T
    return m2


class _CovarianceAccumulator:
    """Streaming mean and co-moment (Chan et al. pairwise merge, float64) of the channels."""

    def __init__(self, name: str, channels: int) -> None:
        self.name, self.channels = name, channels
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, batch: FeatureBatch) -> None:
        maps = as_maps(batch.activations, crit=self.name, channels=self.channels)
        x = channel_major64(batch, maps)  # C × m, shared
        m = x.shape[1]
        if m == 0:
            return
        mean_b = map_sums(batch, maps).sum(dim=1).div_(m)  # shared with the M-std's sums
        m2_b = _co_moment(batch, maps, x, mean_b)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = m, mean_b, m2_b
            return
        n = self.n + m
        delta = mean_b - self.mean
        self.m2 = self.m2 + m2_b + torch.outer(delta, delta) * (self.n * m / n)
        self.mean = self.mean + delta * (m / n)
        self.n = n

    def result(self) -> Tensor:
        if self.mean is None or self.m2 is None:
            raise no_data(self.name)
        cov = self.m2 / self.n
        rho = correlation(cov, torch.diagonal(cov) + self.mean**2)
        return independence_from_correlation(rho)

    def extras(self) -> dict[str, Tensor]:
        return {}


@dataclass(frozen=True)
class Independence(CheckedCriterion):
    """Information independence (Tang et al., arXiv 2303.03645): II_j = 1 − mean_{k≠j} |ρ_jk|.

    ρ is the Pearson correlation (form unverified, criteria.md §1.3) between ``source="filter"``
    (default, data-free) the flattened filters w_j (rows of the C×d weight), or ``source="feature"``
    channel j's activations flattened over all calibration images (streamed as running mean and
    co-moment matrix, float64). A constant row has correlation 0 with every other row; C = 1
    gives 1.
    """

    def validate(self, params: Mapping[str, Any]) -> None:
        check_choice(self.name, params, "source", SOURCES)

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({WEIGHT} if self.params(params)["source"] == "filter" else {ACTIVATION})

    def from_weight(self, weight: Tensor, **params: Any) -> Tensor:
        self.params(params)
        w = check_weight(weight, self.name)
        wc = w - w.mean(dim=1, keepdim=True)
        cov = wc @ wc.T / w.shape[1]
        return independence_from_correlation(correlation(cov, (w * w).mean(dim=1)))

    def accumulator(self, channels: int, **params: Any) -> _CovarianceAccumulator:
        p = self.params(params)
        if p["source"] != "feature":
            raise ConfigError(
                f"criterion {self.name!r} scores from feature maps only with source='feature'"
            )
        return _CovarianceAccumulator(self.name, channels)


def pool_to(maps: Tensor, max_spatial: int | None) -> Tensor:
    """Average-pool ``Tensor[B, C, H, W]`` so that each map has at most ``max_spatial`` pixels.

    Uses the smallest integer factor s with ceil(H/s)·ceil(W/s) ≤ max_spatial (adaptive average
    pooling to that size); maps already small enough (or ``max_spatial=None``) are unchanged.
    """
    h, w = maps.shape[-2:]
    if max_spatial is None or h * w <= max_spatial:
        return maps
    s = 1
    while math.ceil(h / s) * math.ceil(w / s) > max_spatial:
        s += 1
    return nnf.adaptive_avg_pool2d(maps, (math.ceil(h / s), math.ceil(w / s)))




register(
    Capacity(
        name="capacity",
        defaults={"source": "filter", "bins": 256, "range_margin": 0.5},
        summary="information capacity (arXiv 2303.03645): histogram entropy of a filter's weights",
    )
)
register(
    Independence(
        name="independence",
        defaults={"source": "filter"},
        summary="information independence (arXiv 2303.03645): 1 - mean |Pearson correlation|",
    )
)
