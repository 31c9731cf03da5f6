"""A cheap accuracy proxy for a plan, before any fine-tuning: adaptive BN (EagleEye, ECCV 2020).

The dense model is pruned physically to the plan, its BN running statistics are re-estimated on a
few training batches (forward passes in train mode, no weight update), and the pruned network is
evaluated on the validation split. Stale BN statistics are what makes a freshly pruned network look
broken; with them re-estimated, the proxy ranks candidate plans close to how they rank after
fine-tuning, at the cost of a few forward passes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from prunetune.pruning.finetune import evaluate, recalibrate_bn
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.plan import PruningPlan
from prunetune.pruning.surgery import apply_plan


def bn_proxy(model: nn.Module, groups: ModelGroups, plan: PruningPlan, *,
             bn_batches: Iterable[tuple[Tensor, Tensor]], val_batches: Iterable[tuple[Tensor, Tensor]],
             max_bn_batches: int, device: str | torch.device = "cpu") -> float:
    """Validation accuracy of ``model`` (the dense network, left unchanged) pruned to ``plan`` after
    re-estimating BN statistics on at most ``max_bn_batches`` of ``bn_batches`` (0: the dense
    network's statistics, sliced: the stale-BN accuracy the proxy exists to avoid)."""
    pruned = apply_plan(copy.deepcopy(model), plan, groups)
    if max_bn_batches > 0:
        recalibrate_bn(pruned, bn_batches, max_batches=max_bn_batches, device=device)
    return evaluate(pruned, val_batches, device=device)
