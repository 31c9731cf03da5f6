"""A cheap proxy for how well a plan will fine-tune, before any fine-tuning: adaptive BN (EagleEye,
ECCV 2020), read as a likelihood.

The dense model is pruned physically to the plan, its BN running statistics are re-estimated on a
few training batches (forward passes in train mode, no weight update), and the pruned network is
evaluated on the validation split. Stale BN statistics are what makes a freshly pruned network look
broken; with them re-estimated, the proxy ranks candidate plans close to how they rank after
fine-tuning, at the cost of a few forward passes.

What ranks plans is the **likelihood** exp(−mean cross-entropy), the geometric mean of the
probability the pruned network gives each image's label; the accuracy is kept for people to read.
Right after pruning a network is often wrong with little confidence: accuracy sees a right or wrong
answer per image (a few hundred validation images tie many plans), the likelihood how far each
answer is from right. Across six settings it ranked plans of one cost closer to their fine-tuned
test accuracy in five (benchmarks/README.md "proxy").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from prunetune.pruning.finetune import eval_pass, recalibrate_bn
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.plan import PruningPlan
from prunetune.pruning.surgery import apply_plan


class Proxy(NamedTuple):
    """A plan's proxy: ``likelihood`` (what ranks plans, in (0, 1]) and ``accuracy`` (in [0, 1])."""

    likelihood: float
    accuracy: float


def bn_proxy(model: nn.Module, groups: ModelGroups, plan: PruningPlan, *,
             bn_batches: Iterable[tuple[Tensor, Tensor]], val_batches: Iterable[tuple[Tensor, Tensor]],
             max_bn_batches: int, device: str | torch.device = "cpu") -> Proxy:
    """The proxy of ``model`` (the dense network, left unchanged) pruned to ``plan``, after
    re-estimating BN statistics on at most ``max_bn_batches`` of ``bn_batches`` (0: the dense
    network's statistics, sliced: the stale-BN network the proxy exists to avoid)."""
    pruned = apply_plan(copy.deepcopy(model), plan, groups)
    if max_bn_batches > 0:
        recalibrate_bn(pruned, bn_batches, max_batches=max_bn_batches, device=device)
    return likelihood_and_accuracy(pruned, val_batches, device=device)


def likelihood_and_accuracy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *,
                            device: str | torch.device = "cpu") -> Proxy:
    """exp(−mean cross-entropy) and top-1 accuracy of ``model`` on ``batches``, in eval mode, float32."""
    nll, correct = 0.0, 0

    def add(logits: Tensor, y: Tensor) -> None:
        nonlocal nll, correct
        nll += float(nnf.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())

    total = eval_pass(model, batches, add, device=device)
    return Proxy(math.exp(-nll / total), correct / total)
