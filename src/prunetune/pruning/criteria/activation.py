"""Feature-map criteria: HRank, CHIP, DFS, SFS, DFS+SFS and Taylor-FO-BN.

Each registers one :class:`Criterion` at import. All accumulators stream: they keep running sums
(float64, on the activations' device) and never the maps of earlier batches; peak memory grows
with the batch size and C², not with the number of calibration images. Activations arrive as
``Tensor[B, C, H, W]``; ``Tensor[B, C]`` is read as H = W = 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria._common import (
    CheckedCriterion,
    as_maps,
    channel_major64,
    check_choice,
    check_float,
    flat64,
    channel_gram,
    image_grams,
    map_std,
    no_data,
    population_std,
    scores_from_order,
)
from prunetune.pruning.criteria._linalg import batched_linalg
from prunetune.pruning.criteria._scratch import scratch
from prunetune.pruning.criteria.base import ACTIVATION, GRADIENT, LABELS, FeatureBatch, register
from prunetune.pruning.criteria.chip import ROUTES, chip_scores, pick_route
from prunetune.pruning.criteria.similarity import dfs_sfs_order, sfs_order


class _MeanAccumulator:
    """Running sum / count of a per-image (or per-minibatch) ``Tensor[C]`` statistic."""

    def __init__(self, name: str, channels: int) -> None:
        self.name = name
        self.channels = channels
        self.total: Tensor | None = None
        self.count = 0

    def _add(self, values: Tensor, count: int) -> None:
        values = values.to(torch.float64)
        self.total = values if self.total is None else self.total + values
        self.count += count

    def result(self) -> Tensor:
        if self.total is None or self.count == 0:
            raise no_data(self.name)
        return self.total / self.count

    def extras(self) -> dict[str, Tensor]:
        return {}


def _rank_dtype(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def matrix_ranks(maps: Tensor) -> Tensor:
    """``torch.linalg.matrix_rank`` of each h×w matrix of ``Tensor[N, h, w]`` (float32 or float64).

    float64 maps go to ``matrix_rank`` itself; float32 maps to :func:`gram_ranks`. The batch is split
    over torch's CPU threads (:func:`~prunetune.pruning.criteria._linalg.batched_linalg`).

    Returns:
        ``LongTensor[N]``.
    """
    if maps.dtype == torch.float64:
        return batched_linalg(torch.linalg.matrix_rank, maps)
    if maps.dtype != torch.float32:
        raise TypeError(f"matrix_ranks needs float32 or float64 maps, got {maps.dtype}")
    return gram_ranks(maps.to(torch.float64))


def gram_ranks(maps64: Tensor) -> Tensor:
    """float32 ``matrix_rank`` of ``Tensor[..., h, w]`` float32 values held in a float64 tensor.

    The rule of ``torch.linalg.matrix_rank`` in float32, σ_i > tol with tol = max(h, w) ·
    eps(float32) · σ_max, applied to λ = σ² of the float64 Gram matrix G of the smaller side
    (k×k, k = min(h, w)): rank = #{λ_i > τ}, τ = tol² = (max(h, w) · eps(float32))² · λ_max.
    Products of float32 values are exact in float64, and G's eigenvalues are accurate to about
    k · eps(float64) · λ_max, over 1000 times below τ, so a decision can differ from the float32
    SVD's only where that SVD's own rounding (about eps(float32) · σ_max) reaches across the
    threshold. A zero map has rank 0.

    Steps, each exact for this rule:

    1. **Full rank of the nonzero lines.** A zero row of the map is a zero row and column of G
       (G_ii = Σ x_ij², exactly 0 only for a zero row: float32 squares do not underflow in float64),
       so G's spectrum is that of the block G' of the nonzero rows plus zeros, with the same λ_max;
       zeros never count. Those diagonal entries are set to tr(G), which makes G block-diagonal
       with a positive block, and a Cholesky factorisation of G − τ'·I with
       τ' = 2 · (max(h, w) · eps(float32))² · tr(G) ≥ 2τ succeeds only if λ_min(G') > τ' − δ > τ
       (δ ≲ k(k+1) · eps(float64) · λ_max, the factorisation's backward error, at least 30 times
       below τ): then rank = the number of nonzero rows.
    2. **The other side.** The rank is at most the number of nonzero lines on either side. Maps
       with fewer nonzero lines on the other side (a ReLU'd map with zero columns) fail step 1;
       they get the same test on the other side's Gram matrix (same nonzero spectrum).
    3. The rest (rank below both counts, or near the threshold) get ``eigvalsh`` of G and the count.

    The Cholesky steps cost a fraction of an eigenvalue solve; on a ReLU'd ResNet-56 most maps of
    8×8 that step 1 alone left open are settled by the zero lines.

    Returns:
        ``LongTensor[...]``, the leading shape.
    """
    h, w = maps64.shape[-2:]
    lead = maps64.shape[:-2]
    maps64 = maps64.detach().reshape(lead.numel(), h, w)  # one batch dimension; no gradient
    return _gram_ranks(maps64, h, w).reshape(lead)


def _gram_ranks(maps64: Tensor, h: int, w: int) -> Tensor:
    coef = (max(h, w) * torch.finfo(torch.float32).eps) ** 2
    rows_first = h <= w
    gram = _side_gram(maps64, rows_first, tag="hrank_gram")
    k = gram.shape[-1]
    ranks = torch.full(gram.shape[:-2], k, dtype=torch.long, device=gram.device)
    if gram.numel() == 0:
        return ranks
    open_, lines, diag = _certify(gram, coef)
    ranks = torch.where(open_, ranks, lines)
    idx = open_.nonzero().squeeze(1)
    if idx.numel() == 0:
        return ranks
    # open maps with fewer nonzero lines on the other side (zero columns of a ReLU'd map): step 2
    x = maps64.index_select(0, idx)
    fewer = (x != 0).any(dim=-2 if rows_first else -1).sum(dim=-1) < lines[idx]
    if bool(fewer.any()):
        still, other, _ = _certify(_side_gram(x[fewer], not rows_first), coef)
        sub = idx[fewer]
        ranks[sub[~still]] = other[~still]
        idx = torch.cat([idx[~fewer], sub[still]])
    if idx.numel():
        open_gram = gram.index_select(0, idx)
        torch.diagonal(open_gram, dim1=-2, dim2=-1).copy_(diag.index_select(0, idx))  # G again
        lam = batched_linalg(torch.linalg.eigvalsh, open_gram)
        tol = coef * lam[..., -1:].clamp(min=0.0)
        ranks[idx] = (lam > tol).sum(dim=-1)
    return ranks


def _side_gram(x: Tensor, rows: bool, tag: str | None = None) -> Tensor:
    """x xᵀ (``rows``) or xᵀ x of each matrix of ``Tensor[N, h, w]``; into a scratch tensor
    (:mod:`~prunetune.pruning.criteria._scratch`) if ``tag`` is given."""
    a, b = (x, x.transpose(-1, -2)) if rows else (x.transpose(-1, -2), x)
    if tag is None:
        return a @ b
    k = a.shape[-2]
    return torch.matmul(a, b, out=scratch(tag, (*x.shape[:-2], k, k), x.dtype, x.device))


def _certify(gram: Tensor, coef: float) -> tuple[Tensor, Tensor, Tensor]:
    """Step 1 of :func:`gram_ranks` on the Gram matrices ``Tensor[N, k, k]``, whose diagonal it
    changes for the test and leaves changed (a strided pass over the diagonal costs as much as the
    test's own bookkeeping; only the maps that go on need it back). Returns the maps it did not
    certify (``BoolTensor[N]``), each map's number of nonzero lines (its rank where certified) and
    the original diagonal (``Tensor[N, k]``). All-zero maps count as certified; a map with a NaN does
    not, and reaches ``eigvalsh``, which raises as ``matrix_rank`` does."""
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)
    saved = diag.clone()
    live = saved != 0  # nonzero lines
    trace = saved.sum(dim=-1, keepdim=True)
    diag.copy_(torch.where(live, saved - (2.0 * coef) * trace, trace))
    info = batched_linalg(_cholesky_info, gram)
    return (info != 0) & (trace[:, 0] != 0), live.sum(dim=-1), saved


def _cholesky_info(x: Tensor) -> Tensor:
    return torch.linalg.cholesky_ex(x).info


class _HRankAccumulator(_MeanAccumulator):
    def update(self, batch: FeatureBatch) -> None:
        maps = _rank_dtype(as_maps(batch.activations, crit=self.name, channels=self.channels))
        b, c, h, w = maps.shape
        if maps.dtype == torch.float64:
            ranks = matrix_ranks(maps.reshape(b * c, h, w)).reshape(b, c)
        else:  # float32 (or promoted half): the shared float64 channel-major copy, row j·B + n
            x64 = channel_major64(batch, maps).reshape(c * b, h, w)
            ranks = gram_ranks(x64).reshape(c, b).T
        self._add(ranks.sum(dim=0), b)


@dataclass(frozen=True)
class HRank(CheckedCriterion):
    """HRank (Lin et al., CVPR 2020): r_j = (1/N) Σ_n rank(A_n[j]).

    The rank of each h×w map is ``torch.linalg.matrix_rank``'s with torch's default tolerance
    (σ_max · max(h, w) · eps) in the maps' own dtype (float32 activations use float32 eps, as the
    official code did; half precision is promoted to float32); ranks are summed in float64. For
    float32 maps the same rule is evaluated on the eigenvalues of the float64 Gram matrix
    (:func:`matrix_ranks`), which is faster than a float32 SVD and agrees with it.
    """

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({ACTIVATION})

    def accumulator(self, channels: int, **params: Any) -> _HRankAccumulator:
        self.params(params)
        return _HRankAccumulator(self.name, channels)


class _ChipAccumulator(_MeanAccumulator):
    def __init__(self, name: str, channels: int, route: str, max_memory_mb: float) -> None:
        super().__init__(name, channels)
        self.route = route
        self.max_memory_mb = max_memory_mb

    def update(self, batch: FeatureBatch) -> None:
        maps = as_maps(batch.activations, crit=self.name, channels=self.channels)
        b, c = maps.shape[0], maps.shape[1]
        # B×C×(h·w) float64 view of the shared channel-major copy (bmm reads it in place)
        m64 = channel_major64(batch, maps).reshape(c, b, -1).transpose(0, 1)
        route = pick_route(c, m64.shape[2], self.route)
        grams = image_grams(batch, maps) if route in ("quadrature", "gram") else None
        ci = chip_scores(m64, route=route, max_memory_mb=self.max_memory_mb, grams=grams)
        self._add(ci.sum(dim=0), b)


@dataclass(frozen=True)
class Chip(CheckedCriterion):
    """CHIP channel independence (Sui et al., NeurIPS 2021, arXiv 2110.13981).

    CI(j) = (1/N) Σ_n ( ‖M_n‖_* − ‖M_n^{(j)}‖_* ), M_n the c×hw maps of image n and M_n^{(j)} the
    same with row j zeroed; computed in float64, exact up to rounding, through the quadrature, Gram
    or sample-space route (see :mod:`prunetune.pruning.criteria.chip`). Parameters: ``route``
    (``"auto"``: quadrature when C ≤ h·w, else sample; ``"quadrature"``, ``"gram"``, ``"sample"``)
    and ``max_memory_mb`` (budget of the stacked eigenvalue problems per batch; beyond it they are
    chunked). The official 4-decimal float32 rounding is not
    reproduced.
    """

    def validate(self, params: Mapping[str, Any]) -> None:
        check_choice(self.name, params, "route", ROUTES)
        check_float(self.name, params, "max_memory_mb", low=0.0, low_open=True)

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({ACTIVATION})

    def accumulator(self, channels: int, **params: Any) -> _ChipAccumulator:
        p = self.params(params)
        return _ChipAccumulator(self.name, channels, p["route"], float(p["max_memory_mb"]))


def spatial_std(maps: Tensor) -> Tensor:
    """Population (``unbiased=False``) std over the h·w pixels of each map -> ``Tensor[B, C]``.

    float64 (:func:`~prunetune.pruning.criteria._common.population_std`: one pass, two for
    near-constant maps).
    """
    return population_std(flat64(maps))


class _DfsAccumulator(_MeanAccumulator):
    def update(self, batch: FeatureBatch) -> None:
        maps = as_maps(batch.activations, crit=self.name, channels=self.channels)
        self._add(map_std(batch, maps).sum(dim=0), maps.shape[0])


@dataclass(frozen=True)
class Dfs(CheckedCriterion):
    """DFS, diversity-aware selection (Li et al., arXiv 2005.12193): the M-std.

    M-std_j = (1/N) Σ_n std_{(u,v)} A_n[j, u, v], the spatial standard deviation of each map
    (population std, ``unbiased=False``) averaged over images. Low M-std = near-constant map.
    """

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({ACTIVATION})

    def accumulator(self, channels: int, **params: Any) -> _DfsAccumulator:
        self.params(params)
        return _DfsAccumulator(self.name, channels)


class _SfsAccumulator:
    """Running Gram matrix F Fᵀ of the raw maps (C×C) plus the M-std running sum."""

    def __init__(self, name: str, channels: int, dfs_fraction: float | None) -> None:
        self.name = name
        self.channels = channels
        self.dfs_fraction = dfs_fraction
        self.gram: Tensor | None = None
        self.mstd = _DfsAccumulator(name, channels)

    def update(self, batch: FeatureBatch) -> None:
        maps = as_maps(batch.activations, crit=self.name, channels=self.channels)
        self.mstd.update(batch)

        g = channel_gram(batch, maps)  # F Fᵀ (from CHIP's per-image Grams where C ≤ h·w)
        self.gram = g if self.gram is None else self.gram + g

    def cosine(self) -> Tensor:
        """Cosine similarity of the concatenated maps; zero-norm channels get 0 with everyone."""
        if self.gram is None:
            raise no_data(self.name)
        sq = torch.diagonal(self.gram).clamp(min=0.0)
        zero = sq <= 0.0
        norm = torch.where(zero, torch.ones_like(sq), sq.sqrt())
        cos = self.gram / (norm[:, None] * norm[None, :])
        return cos.masked_fill(zero[:, None] | zero[None, :], 0.0)

    def result(self) -> Tensor:
        cos, mstd = self.cosine(), self.mstd.result()
        if self.dfs_fraction is None:
            order = sfs_order(cos, mstd)
        else:
            order = dfs_sfs_order(cos, mstd, self.dfs_fraction)
        return scores_from_order(order, self.channels, device=cos.device)

    def extras(self) -> dict[str, Tensor]:
        return {"m_std": self.mstd.result()}


@dataclass(frozen=True)
class Sfs(CheckedCriterion):
    """SFS, similarity-aware selection (Li et al., arXiv 2005.12193), as a full ranking.

    f_j = channel j's maps concatenated over all calibration images; s_ij = ⟨f_i, f_j⟩ /
    (‖f_i‖‖f_j‖) from the accumulated C×C Gram matrix (signed cosine; a zero-norm channel has
    cosine 0 with everyone). Repeatedly take the most similar remaining pair and remove the member
    with the lower M-std (DFS statistic; equal M-std: the higher index goes), until one channel is
    left. Score = (removal step + 1) / C: the first removed scores 1/C, the survivor 1.
    Ties between pairs go to the lowest row index. ``extras()`` returns the M-std.
    """

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({ACTIVATION})

    def accumulator(self, channels: int, **params: Any) -> _SfsAccumulator:
        self.params(params)
        return _SfsAccumulator(self.name, channels, None)


@dataclass(frozen=True)
class DfsSfs(CheckedCriterion):
    """DFS then SFS (Li et al., arXiv 2005.12193), the papers' two-stage selection as one ranking.

    The floor(p_D·C) channels with the lowest M-std (p_D = ``dfs_fraction``, default 0.5,
    unverified) get the lowest scores, ordered by M-std (ties: higher index first). The survivors
    are ranked among themselves by the SFS rule (see :class:`Sfs`) and all score above the removed
    ones. Score = (position + 1) / C. p_D = 0 is plain SFS; p_D = 1 is the DFS order.
    """

    def validate(self, params: Mapping[str, Any]) -> None:
        check_float(self.name, params, "dfs_fraction", low=0.0, high=1.0)

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({ACTIVATION})

    def accumulator(self, channels: int, **params: Any) -> _SfsAccumulator:
        p = self.params(params)
        return _SfsAccumulator(self.name, channels, float(p["dfs_fraction"]))


class _TaylorAccumulator(_MeanAccumulator):
    def update(self, batch: FeatureBatch) -> None:
        if batch.gradients is None or batch.preactivations is None:
            missing = "gradients" if batch.gradients is None else "preactivations"
            raise ConfigError(
                f"criterion {self.name!r} needs batch.{missing} (the BN output z and dL/dz); "
                "run calibration with gradients enabled"
            )
        z = as_maps(batch.preactivations, crit=self.name, channels=self.channels)
        grad = as_maps(batch.gradients, crit=self.name, channels=self.channels)
        if grad.shape != z.shape:
            raise ConfigError(
                f"criterion {self.name!r}: gradients {tuple(grad.shape)} and preactivations "
                f"{tuple(z.shape)} must have the same shape"
            )
        gate = (flat64(z) * flat64(grad)).sum(dim=(0, 2))  # dL/dg_c for a unit gate after BN
        self._add(gate * gate, 1)


@dataclass(frozen=True)
class Taylor(CheckedCriterion):
    """Taylor-FO-BN (Molchanov et al., CVPR 2019, NVlabs method 22).

    A unit gate g_c after each BN has ∂L/∂g_c = Σ_{b,h,w} (∂L/∂z ⊙ z), z the BN output
    (``batch.preactivations``, ``batch.gradients`` = ∂L/∂z, L the mean cross-entropy of the
    minibatch). Per minibatch I_c = (∂L/∂g_c)²; the score is the mean of I_c over minibatches. So
    the score depends on how calibration splits the data into minibatches (the square is taken per
    minibatch, as in the official code); the official momentum across pruning steps is not part of
    a single scoring. Calibration reads Taylor at the BN outputs whatever ``calibration.point`` is.

    ``bn_mode``: ``"train"`` (default) runs the calibration batches with every BN layer in train
    mode, normalising by the minibatch's statistics, as the official criterion is accumulated
    during training; the BN running statistics are saved before and restored after, so the model
    is unchanged (other layers, e.g. dropout, stay in eval mode, and the weights are fixed: no
    optimiser steps between minibatches). ``"eval"`` uses the running statistics.
    """

    def validate(self, params: Mapping[str, Any]) -> None:
        check_choice(self.name, params, "bn_mode", ("train", "eval"))

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({ACTIVATION, GRADIENT, LABELS})

    def bn_mode(self, params: Mapping[str, Any]) -> str:
        return self.params(params)["bn_mode"]

    def batch_dependent(self, params: Mapping[str, Any]) -> bool:
        return True  # squares per minibatch; in train mode BN also normalises per minibatch

    def accumulator(self, channels: int, **params: Any) -> _TaylorAccumulator:
        self.params(params)
        return _TaylorAccumulator(self.name, channels)


register(HRank(name="hrank", summary="HRank (CVPR 2020): mean matrix rank of each feature map"))
register(
    Chip(
        name="chip",
        defaults={"route": "auto", "max_memory_mb": 1024.0},
        summary="CHIP (NeurIPS 2021): mean nuclear-norm drop when the channel's row is zeroed",
    )
)
register(Dfs(name="dfs", summary="DFS (arXiv 2005.12193): M-std, mean spatial std of the maps"))
register(
    Sfs(
        name="sfs",
        summary="SFS (arXiv 2005.12193): cosine-redundancy ranking, lower M-std removed first",
    )
)
register(
    DfsSfs(
        name="dfs_sfs",
        defaults={"dfs_fraction": 0.5},
        summary="DFS+SFS (arXiv 2005.12193): lowest M-std fraction first, then the SFS ranking",
    )
)
register(
    Taylor(
        name="taylor",
        defaults={"bn_mode": "train"},
        summary="Taylor-FO-BN (CVPR 2019): per-minibatch (sum of dL/dz * z)^2, averaged; BN in train mode",
    )
)
