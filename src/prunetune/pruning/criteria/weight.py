"""Weight criteria: scores from a layer's output-channel weights alone (no data)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError
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


@dataclass(frozen=True)
class FPGM(_WeightCriterion):
    """Geometric-median distance, g(j) = Σ_k ‖w_j − w_k‖₂ (He et al., CVPR 2019).

    Filters near the geometric median are the most replaceable, so a *small* sum means prune; the
    score is the sum itself. Including k = j changes nothing (its distance is 0).
    """

    def from_weight(self, weight: Tensor, **params: Any) -> Tensor:
        w = check_weight(weight, self.name)
        return torch.cdist(w.unsqueeze(0), w.unsqueeze(0)).squeeze(0).sum(dim=1)


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
register(FPGM("fpgm", summary="Σ_k ‖W_j − W_k‖₂, distance to the geometric median (He et al., CVPR 2019)"))
register(BNScale("bn_scale", summary="|γ_j| of the following BN (Network Slimming, Liu et al., ICCV 2017)"))
register(RandomScore("random", defaults={"seed": 0}, summary="uniform random scores (baseline)"))
