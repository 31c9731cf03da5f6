"""Information criteria: information capacity and independence (Tang et al., arXiv 2303.03645)
and greedy conditional mutual information with matrix-based Rényi entropy (Vu-Van et al.,
arXiv 2411.18578).

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
    channel_major64,
    check_choice,
    check_float,
    check_int,
    correlation,
    no_data,
)
from prunetune.pruning.criteria.base import (
    ACTIVATION,
    LABELS,
    WEIGHT,
    FeatureBatch,
    check_weight,
    register,
)
from prunetune.pruning.criteria.renyi import JOINTS, SIGMA_RULES, cmi_greedy, conditioning_gram

SOURCES = ("filter", "feature")


def bin_counts(x: Tensor, lo: float, hi: float, bins: int) -> Tensor:
    """Per-row histogram of ``Tensor[C, m]`` over ``bins`` equal bins of ``[lo, hi]``.

    Values outside the range fall into the end bins. The bin index is computed in float64 and the
    counts are one ``scatter_add_`` along the rows (no loop over rows; exact up to 2**53 per bin).
    Returns ``Tensor[C, bins]`` float64.
    """
    c = x.shape[0]
    # floor then clamp to [0, bins − 1] = clamp then truncate (integer bounds, values ≥ 0 after it)
    idx = torch.sub(x.to(torch.float64), lo).mul_(bins / (hi - lo)).clamp_(0, bins - 1).long()
    one = torch.ones((), dtype=torch.float64, device=x.device).expand(idx.shape)
    counts = torch.zeros(c, bins, dtype=torch.float64, device=x.device)
    return counts.scatter_add_(1, idx, one)


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

    def update(self, batch: FeatureBatch) -> None:
        maps = as_maps(batch.activations, crit=self.name, channels=self.channels)
        x = channel_major64(batch, maps)  # C × (B·h·w), shared
        if self.range is None:
            lo_t, hi_t = torch.aminmax(x)
            lo, hi = float(lo_t), float(hi_t)
            width = hi - lo if hi > lo else max(abs(lo), 1.0)
            pad = self.margin * width if (hi > lo or self.margin > 0) else 0.5 * width
            self.range = (lo - pad, hi + pad)
        counts = bin_counts(x, *self.range, self.bins)
        self.counts = counts if self.counts is None else self.counts + counts

    def result(self) -> Tensor:
        if self.counts is None:
            raise no_data(self.name)
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
        mean_b = x.mean(dim=1)
        xc = x - mean_b[:, None]
        m2_b = xc @ xc.T
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


class _SampleAccumulator:
    """Keeps the first ``samples`` images' (pooled) maps and labels: a bounded sample set.

    With a cross-layer ``condition`` calibration links it to the neighbour group's first
    accumulator (:meth:`link`); the ranking is then conditioned on that group's kept channels.
    """

    def __init__(self, name: str, channels: int, p: Mapping[str, Any]) -> None:
        self.name, self.channels, self.p = name, channels, p
        self.maps: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.kept = 0
        self.neighbour: _SampleAccumulator | None = None
        self._result: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def update(self, batch: FeatureBatch) -> None:
        if batch.labels is None:
            raise ConfigError(
                f"criterion {self.name!r} needs batch.labels (class labels per image)"
            )
        take = min(self.p["samples"] - self.kept, batch.activations.shape[0])
        if take <= 0:
            return
        maps = as_maps(batch.activations[:take], crit=self.name, channels=self.channels)
        self.maps.append(pool_to(maps.to(torch.float64), self.p["max_spatial"]))
        self.labels.append(batch.labels[:take].detach().reshape(take, -1).squeeze(1))
        self.kept += take
        self._result = None

    def link(self, neighbour: _SampleAccumulator | None) -> None:
        """Condition on ``neighbour``'s kept channels (``None``: unconditioned)."""
        self.neighbour = neighbour
        self._result = None

    def sample_maps(self) -> Tensor:
        """``Tensor[n, C, h, w]`` float64: the kept (pooled) maps."""
        if not self.maps:
            raise no_data(self.name)
        return torch.cat(self.maps)

    def kept_channels(self) -> Tensor:
        """The first max(1, floor(C · ``condition_keep``)) channels of this accumulator's order."""
        k = max(1, math.floor(self.channels * self.p["condition_keep"] + 1e-9))
        return self._run()[1][:k]

    def _condition(self, n: int) -> Tensor | None:
        if self.neighbour is None:
            return None
        maps = self.neighbour.sample_maps()
        if maps.shape[0] != n:
            raise ConfigError(
                f"criterion {self.name!r}: the conditioning layer kept {maps.shape[0]} samples and "
                f"this one {n}; both must see the same calibration batches"
            )
        return conditioning_gram(
            maps, self.neighbour.kept_channels(), joint=self.p["condition_joint"],
            sigma_rule=self.p["sigma_rule"], gamma=self.p["gamma"],
        )

    def _run(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self._result is None:
            maps = self.sample_maps()
            labels = torch.cat([lab.to(maps.device) for lab in self.labels])
            ranking = cmi_greedy(
                maps,
                labels,
                alpha=self.p["alpha"],
                sigma_rule=self.p["sigma_rule"],
                gamma=self.p["gamma"],
                max_steps=self.p["max_steps"],
                stop_gain=self.p["stop_gain"],
                condition=self._condition(maps.shape[0]),
            )
            scores = torch.empty(self.channels, dtype=torch.float64)
            scores[ranking.order] = (
                self.channels - torch.arange(self.channels, dtype=torch.float64)
            ) / self.channels
            steps = torch.tensor(ranking.steps, dtype=torch.long)
            self._result = (scores.to(maps.device), ranking.order, ranking.values, steps)
        return self._result

    def result(self) -> Tensor:
        return self._run()[0]

    def extras(self) -> dict[str, Tensor]:
        _, order, values, steps = self._run()
        return {"cmi_values": values, "cmi_order": order, "cmi_steps": steps}


CONDITIONS = ("none", "previous", "next", "bidirectional")


@dataclass(frozen=True)
class Cmi(CheckedCriterion):
    """Greedy CMI ranking (Vu-Van et al., arXiv 2411.18578; reconstruction of criteria.md §5.4).

    At step t pick j* = argmax_{j∉S} I_α(Y; X_j | X_S) with matrix-based Rényi α-entropy
    (:mod:`prunetune.pruning.criteria.renyi`): X_j = channel j's flattened map per sample, Gaussian
    kernel with σ per channel by ``sigma_rule`` ("median" pairwise distance, or "silverman"
    s·n^(−1/(4+d)) with s the maps' standard deviation, see
    :func:`~prunetune.pruning.criteria.renyi.kernel_width`) scaled by ``gamma``; Y = delta kernel
    on the labels; X_S = Hadamard joint of the selected channels. score_j = (C − position_j)/C, so
    the first pick scores 1. Ties (CMIs equal up to rounding) go to the lower channel index.

    Not a pure running statistic: the accumulator keeps the first ``samples`` (256) images, each
    map average-pooled to at most ``max_spatial`` (64) pixels (``None``: no pooling), so memory is
    samples·C·max_spatial float64 values plus C·samples² for the Gram matrices, whatever the
    calibration size. ``max_steps`` (``None`` = all C) stops the greedy search early; the rest are
    then ordered by their last CMI. α (1.01), kernel width and n are unverified for the paper.
    ``extras()``: ``cmi_values`` (CMI in bits, selection order) and ``cmi_order`` (channel indices).

    Cross-layer forms (``condition``). The paper's abstract says it uses "several formulations of
    CMI to capture correlation among features across different layers" and prunes "in both
    forward and backward directions"; its method section was not available, so everything below
    is a reconstruction (criteria.md §5.4, forms (b) and (c); unverified):

    * ``"none"`` (default): form (a), the layer alone.
    * ``"previous"``: form (b), the forward sweep. A group's CMI is conditioned on T, the kept
      channels of the previous layer: j* = argmax I(Y; X_j | X_S, T). Groups are ranked from the
      first to the last, each on the already ranked previous one.
    * ``"next"``: form (c), the backward sweep, from the last group back, conditioned on the next
      layer's kept channels.
    * ``"bidirectional"``: both sweeps in parallel, meeting in the middle: the first half of the
      groups (model order) use ``"previous"``, the second half ``"next"``; all maps come from the
      unpruned network.

    The previous / next layer of a group and what has none (the stem, the last layer; with
    residual streams also a block's first conv for ``"next"``) are defined by
    :func:`prunetune.pruning.points.neighbour_groups`; a group without one, and a single layer
    scored with :func:`~prunetune.pruning.criteria.score`, is ranked unconditioned. T is the first
    max(1, floor(C' · ``condition_keep``)) channels (0.5) of the neighbour's own ranking, read at
    its first feature point, over the same samples. Its Gram matrix (``condition_joint``):

    * ``"hadamard"`` (default): the Hadamard joint of T's channels, the multivariate matrix-Rényi
      joint of criteria.md §5.3 that X_S uses too, so T acts as channels selected before the first
      step. A channel that duplicates one of T then ranks last.
    * ``"concat"``: one Gaussian Gram matrix of T's maps, each channel divided by its own kernel
      width, concatenated per sample (σ by ``sigma_rule`` on the concatenated vectors).

    NOTE: a Hadamard product of many Gaussian Gram matrices tends to I/n. On a ResNet-20 trained
    on digits (128 samples, ``condition: previous``, ``condition_keep: 0.5``), ``"hadamard"``
    left every CMI below 1e-3 bits in the groups conditioned on T of 16 or 32 channels, so their
    rankings rest on estimator noise, and first picks of 0.02 bits with T of 8 channels;
    ``"concat"`` kept first picks near 0.75 bits in every group, but conditions less sharply (a
    duplicate of one of T's channels no longer reliably ranks last). Use ``"concat"``, or a smaller
    ``condition_keep``, for wide layers.
    """

    def validate(self, params: Mapping[str, Any]) -> None:
        check_float(self.name, params, "alpha", low=0.0, low_open=True)
        check_choice(self.name, params, "sigma_rule", SIGMA_RULES)
        check_float(self.name, params, "gamma", low=0.0, low_open=True)
        check_int(self.name, params, "samples", minimum=2)
        check_int(self.name, params, "max_spatial", minimum=1, optional=True)
        check_int(self.name, params, "max_steps", minimum=1, optional=True)
        if params["stop_gain"] is not None:
            check_float(self.name, params, "stop_gain", low=0.0, high=1.0)
        check_choice(self.name, params, "condition", CONDITIONS)
        check_float(self.name, params, "condition_keep", low=0.0, high=1.0, low_open=True)
        check_choice(self.name, params, "condition_joint", JOINTS)

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({ACTIVATION, LABELS})

    def cross_layer(self, params: Mapping[str, Any], groups: list[str]) -> dict[str, str] | None:
        condition = self.params(params)["condition"]
        if condition == "none":
            return None
        if condition == "bidirectional":
            half = (len(groups) + 1) // 2
            return {g: "previous" if i < half else "next" for i, g in enumerate(groups)}
        return dict.fromkeys(groups, condition)

    def accumulator(self, channels: int, **params: Any) -> _SampleAccumulator:
        return _SampleAccumulator(self.name, channels, self.params(params))


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
register(
    Cmi(
        name="cmi",
        defaults={
            "alpha": 1.01,
            "sigma_rule": "median",
            "gamma": 1.0,
            "samples": 256,
            "max_spatial": 64,
            "max_steps": None,
            "stop_gain": None,
            "condition": "none",
            "condition_keep": 0.5,
            "condition_joint": "hadamard",
        },
        summary="CMI (arXiv 2411.18578): greedy argmax I(Y; X_j | X_S), matrix Renyi entropy",
    )
)
