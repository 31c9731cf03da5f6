"""The model contract: analytic MACs/params equal the counted ones of the physically pruned network on
random plans, a budget projection holds when counted, and masking equals removal.

Masking is compared with removal output by output (a model may return nested tuples, lists and
dicts of tensors), with layers that normalise across channels (``nn.LayerNorm``, a GroupNorm of
one group) taken as the identity in both networks: removing a channel there changes the statistics
of the others, so no mask equals removal (README, "Masking ≠ removal"), and the rest of the graph is
what can be checked, as :func:`~prunetune.pruning.groups.find_groups`' removal probe does."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import torch

from prunetune.exceptions import ConfigError
from prunetune.pruning.allocation import keep_for_budget, smallest_fraction
from prunetune.pruning.groups import find_groups
from prunetune.pruning.macs import analytic_cost, count_cost
from prunetune.pruning.plan import make_plan
from prunetune.pruning.outputs import output_leaves, output_paths
from prunetune.pruning.removal_probe import channel_local_norms
from prunetune.pruning.surgery import MaskHooks, apply_plan, channel_masks
from prunetune.testing.entries import ensure


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


def check_model(factory: Callable[[], torch.nn.Module] | torch.nn.Module, shape: tuple[int, ...], *,
                seeds: int = 2, masks: bool = True) -> None:
    """Everything a model must satisfy to be pruned under a budget (see module doc). ``factory``
    builds the model; a module given instead is checked on a deep copy (it is left as it is)."""
    if isinstance(factory, torch.nn.Module):
        model = copy.deepcopy(factory)
    elif callable(factory):
        model = factory()
    else:
        raise ConfigError(f"check_model needs a model factory (or a torch.nn.Module), got {type(factory).__name__}")
    ensure(isinstance(model, torch.nn.Module),
           f"check_model: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    name = type(model).__name__
    model = randomize_bn(model)
    groups = find_groups(model, shape)
    ensure(len(groups) > 0, f"model {name}: no prunable channel groups at input shape {tuple(shape)}")
    analytic, counted = analytic_cost(groups), count_cost(model, shape)
    ensure(analytic == counted, f"model {name}: analytic cost {analytic} differs from the counted {counted}")
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for seed in range(seeds):
        plan = _random_plan(groups, seed)
        pruned = apply_plan(copy.deepcopy(model), plan, groups)
        counted, analytic = count_cost(pruned, shape), analytic_cost(groups, plan.keep_counts)
        ensure(counted == plan.pruned == analytic, f"model {name}, random plan {seed}: the pruned network counts "
               f"{counted}, its plan says {plan.pruned}, the analytic cost is {analytic}")
        if not masks:
            continue
        double, pruned = copy.deepcopy(model).double(), pruned.double()
        with torch.no_grad(), channel_local_norms(double), channel_local_norms(pruned):
            with MaskHooks(double, groups, channel_masks(plan)):
                masked = double(x)
            removed = pruned(x)
        wanted, got_leaves = output_paths(masked), output_leaves(removed)
        ensure(len(wanted) == len(got_leaves) and all(
            not isinstance(w, torch.Tensor) or (isinstance(g, torch.Tensor) and g.shape == w.shape)
            for (_, w), g in zip(wanted, got_leaves)),
            f"model {name}, random plan {seed}: masking and removal give outputs of other structures or shapes")
        for (where, want), got in zip(wanted, got_leaves):
            if not isinstance(want, torch.Tensor) or not want.is_floating_point():
                ensure(type(want) is type(got) and (torch.equal(want, got) if isinstance(want, torch.Tensor)
                                                    else want == got),
                       f"model {name}, random plan {seed}: masking and removal differ at {where}")
                continue
            scale = float(want.abs().max()) if want.numel() else 0.0
            error = float((want - got).abs().max()) if want.numel() else 0.0
            ensure(error <= 1e-6 * max(1.0, scale), f"model {name}, random plan {seed}: masking and removal differ "
                   f"by {error:.3g} at {where} (values up to {scale:.3g})")
    budget = max(0.5, (1.0 + smallest_fraction(groups)) / 2)  # 0.5, or halfway to dense where 0.5 is out of reach
    keep = keep_for_budget(groups, budget)
    plan = make_plan(groups, {g.name: torch.arange(g.channels, 0, -1.0) for g in groups}, keep)
    dense = count_cost(model, shape).macs
    macs = count_cost(apply_plan(copy.deepcopy(model), plan, groups), shape).macs
    ensure(macs <= budget * dense, f"model {name}: the plan for a MACs budget of {budget:.4g} counts {macs} MACs, "
           f"above {budget:.4g} × {dense}")
