"""The model contract: analytic MACs/params equal the counted ones of the physically pruned network on
random plans, a budget projection holds when counted, and masking equals removal."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import torch

from prunetune.pruning.allocation import keep_for_budget
from prunetune.pruning.groups import find_groups
from prunetune.pruning.macs import analytic_cost, count_cost
from prunetune.pruning.plan import make_plan
from prunetune.pruning.surgery import MaskHooks, apply_plan, channel_masks


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics and affine parameters, so masking errors show."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 2 - 1)
    return model.eval()


def _random_plan(groups, seed: int):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    keep = {g.name: rng.randint(1, g.channels) for g in groups}
    return make_plan(groups, {g.name: torch.rand(g.channels, generator=gen) for g in groups}, keep)


def check_model(factory: Callable[[], torch.nn.Module], shape: tuple[int, ...], *, seeds: int = 2,
                masks: bool = True) -> None:
    """Everything a model must satisfy to be pruned under a budget (see module doc)."""
    model = randomize_bn(factory())
    groups = find_groups(model, shape)
    assert len(groups) > 0
    assert analytic_cost(groups) == count_cost(model, shape)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for seed in range(seeds):
        plan = _random_plan(groups, seed)
        pruned = apply_plan(copy.deepcopy(model), plan, groups)
        assert count_cost(pruned, shape) == plan.pruned == analytic_cost(groups, plan.keep_counts)
        if not masks:
            continue
        double = copy.deepcopy(model).double()
        with torch.no_grad():
            with MaskHooks(double, groups, channel_masks(plan)):
                masked = double(x)
            removed = pruned.double()(x)
        scale = float(masked.abs().max()) or 1.0
        assert float((masked - removed).abs().max()) <= 1e-6 * max(1.0, scale)
    keep = keep_for_budget(groups, 0.5)
    plan = make_plan(groups, {g.name: torch.arange(g.channels, 0, -1.0) for g in groups}, keep)
    dense = count_cost(model, shape).macs
    assert count_cost(apply_plan(copy.deepcopy(model), plan, groups), shape).macs <= 0.5 * dense
