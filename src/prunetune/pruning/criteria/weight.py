"""Weight criteria: scores from a layer's output-channel weights alone (no data)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria._common import CheckedCriterion, check_float, scores_from_order
from prunetune.pruning.criteria.base import WEIGHT, Criterion, check_weight, register


@dataclass(frozen=True)
class _WeightCriterion(Criterion):
    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({WEIGHT})


@dataclass(frozen=True)
class L1Norm(_WeightCriterion):
    """L1 norm of each filter, s_j = Σ|W[j]| (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017)."""

    def from_weight(self, weight: Tensor, **params: Any) -> Tensor:
        return check_weight(weight, self.name).abs().sum(dim=1)


@dataclass(frozen=True)
class L2Norm(_WeightCriterion):
    """L2 norm of each flattened filter, s_j = ‖w_j‖₂ (the SFP/ASFP/GHFP criterion)."""

    def from_weight(self, weight: Tensor, **params: Any) -> Tensor:
        return check_weight(weight, self.name).norm(dim=1)


def ascending_order(values: Tensor, candidates: Tensor | None = None) -> list[int]:
    """``candidates`` (default: all indices) by ascending value; equal values: the higher index first.

    Used as a removal order (least important first), so on a tie the lower index is kept longer.
    """
    idx = torch.arange(values.numel()) if candidates is None else candidates
    idx = idx.flip(0)  # descending index, then a stable sort by value
    return idx[torch.argsort(values[idx], stable=True)].tolist()


def distance_sums(w: Tensor) -> Tensor:
    """g(j) = Σ_k ‖w_j − w_k‖₂ over the rows of ``w`` (``Tensor[C, d]``)."""
    return torch.cdist(w.unsqueeze(0), w.unsqueeze(0)).squeeze(0).sum(dim=1)


def fpgm_mix_order(w: Tensor, norm_ratio: float) -> list[int]:
    """Removal order of FPGM-mix: the lowest-L2 filters by norm, then the rest by distance sum.

    The m = C − floor(C·(1 − norm_ratio)) lowest-norm filters come first (ascending norm); the
    others follow by ascending g(j) computed among themselves only, as in the official code.
    """
    c = w.shape[0]
    m = c - math.floor(c * (1.0 - norm_ratio) + 1e-9)
    by_norm = ascending_order(w.norm(dim=1))
    dropped, survivors = by_norm[:m], torch.tensor(sorted(by_norm[m:]), dtype=torch.long)
    sums = torch.zeros(c, dtype=w.dtype)
    if survivors.numel():
        sums[survivors] = distance_sums(w[survivors])
    return dropped + (ascending_order(sums, survivors) if survivors.numel() else [])


@dataclass(frozen=True)
class FPGM(CheckedCriterion):
    """Geometric-median distance (He et al., CVPR 2019), FPGM-only or FPGM-mix.

    ``norm_ratio = 0`` (default, FPGM-only): score = g(j) = Σ_k ‖w_j − w_k‖₂. Filters near the
    geometric median are the most replaceable, so a *small* sum means prune. Including k = j
    changes nothing (its distance is 0).

    ``norm_ratio = p > 0`` (FPGM-mix, criteria.md §6.3): a ranking such that keeping the top k
    reproduces the official ``get_filter_similar``: first drop the m = C − floor(C·(1 − p)) filters
    with the lowest L2 norm, then, among the rest, those with the smallest distance sum computed
    over the rest only. The official ``--rate_norm`` is 1 − p; its ``--rate_dist`` is the
    allocation's prune ratio minus p (e.g. FPGM-mix 40 % = ``norm_ratio: 0.1`` and a 0.4 ratio).
    Pruning fewer than m filters drops the lowest-norm ones only. Score = (t + 1)/C, t the
    position in that removal order (the first dropped scores 1/C); equal norms or sums: the
    higher index is dropped first.
    """

    def validate(self, params: Mapping[str, Any]) -> None:
        check_float(self.name, params, "norm_ratio", low=0.0, high=1.0)

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({WEIGHT})

    def from_weight(self, weight: Tensor, **params: Any) -> Tensor:
        p = self.params(params)
        w = check_weight(weight, self.name)
        if p["norm_ratio"] == 0:
            return distance_sums(w)
        order = fpgm_mix_order(w.cpu(), float(p["norm_ratio"]))
        return scores_from_order(order, w.shape[0], device=w.device)


@dataclass(frozen=True)
class BNScale(_WeightCriterion):
    """|γ_c| of the group's BN (Network Slimming, Liu et al., ICCV 2017); layers without BN use L1."""

    def weight_source(self, params: Mapping[str, Any]) -> str:
        return "bn"

    def from_weight(self, weight: Tensor, **params: Any) -> Tensor:
        w = check_weight(weight, self.name)
        return w.abs().sum(dim=1)


@dataclass(frozen=True)
class RandomScore(_WeightCriterion):
    """I.i.d. uniform scores, seeded by ``seed`` and the weight's shape (a baseline; NVlabs method 1)."""

    def from_weight(self, weight: Tensor, **params: Any) -> Tensor:
        seed = params["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"criterion 'random' needs an integer seed, got {seed!r}")
        w = check_weight(weight, self.name)
        digest = hashlib.sha256(f"{seed}:{tuple(weight.shape)}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return torch.rand(w.shape[0], generator=gen, dtype=torch.float64)


register(L1Norm("l1", summary="Σ|W_j| per filter (Li et al., ICLR 2017)"))
register(L2Norm("l2", summary="‖W_j‖₂ per filter (SFP, He et al., IJCAI 2018)"))
register(
    FPGM(
        "fpgm",
        defaults={"norm_ratio": 0.0},
        summary="Σ_k ‖W_j − W_k‖₂, distance to the geometric median; norm_ratio > 0: FPGM-mix "
        "(He et al., CVPR 2019)",
    )
)
register(BNScale("bn_scale", summary="|γ_j| of the following BN (Network Slimming, Liu et al., ICCV 2017)"))
register(RandomScore("random", defaults={"seed": 0}, summary="uniform random scores (baseline)"))
