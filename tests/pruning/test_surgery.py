"""Physical removal computes exactly what masking the same channels after BN computes."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from prunetune.exceptions import InvalidPlanError
from prunetune.models import create_model
from prunetune.pruning.groups import find_groups
from prunetune.pruning.plan import PruningPlan, make_plan
from prunetune.pruning.surgery import MaskHooks, apply_plan, channel_masks
from tests.conftest import randomize_bn


def _random_plan(groups, seed: int) -> PruningPlan:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    keep = {g.name: rng.randint(1, g.channels) for g in groups}
    return make_plan(groups, {g.name: torch.rand(g.channels, generator=gen) for g in groups}, keep)


def _masked_vs_physical(model, groups, plan, shape) -> float:
    """Max |masked − pruned| in float64, so deep nets' float32 round-off does not hide or fake errors."""
    model = copy.deepcopy(model).double()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        with MaskHooks(model, groups, channel_masks(plan)):
            masked = model(x)
        pruned = apply_plan(copy.deepcopy(model), plan, groups)
        return float((masked - pruned(x)).abs().max())


def test_option_a_streams_pruned_at_different_ratios() -> None:
    model = randomize_bn(create_model("resnet20"))
    groups = find_groups(model, (3, 32, 32))
    scores = {g.name: torch.rand(g.channels) for g in groups}
    keep = {"conv1": 5, "layer2.0.conv2": 27, "layer3.0.conv2": 11}  # one ratio per stage stream
    plan = make_plan(groups, scores, keep)
    assert _masked_vs_physical(model, groups, plan, (3, 32, 32)) < 1e-5
    pruned = apply_plan(copy.deepcopy(model), plan, groups)
    assert pruned.layer2[0].shortcut.in_channels == 5 and pruned.layer2[0].shortcut.out_channels == 27
    assert pruned.layer3[0].shortcut.in_channels == 27 and pruned.layer3[0].shortcut.out_channels == 11
    assert pruned.fc.in_features == 11


def test_mask_hooks_are_removed() -> None:
    model = create_model("tiny_convnet").eval()
    groups = find_groups(model, (3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    zero = {g.name: torch.zeros(g.channels) for g in groups}
    with MaskHooks(model, groups, zero):
        assert not torch.allclose(model(x), before)
    assert torch.allclose(model(x), before)


def test_plan_that_does_not_fit_is_rejected() -> None:
    groups = find_groups(create_model("resnet20"), (3, 32, 32))
    plan = _random_plan(groups, 0)
    other = create_model("resnet32")
    with pytest.raises(InvalidPlanError, match="does not have|channels"):
        apply_plan(other, PruningPlan(plan.kept | {"layer1.4.conv1": (0,)}, plan.channels | {"layer1.4.conv1": 99},
                                      plan.dense, plan.pruned, plan.input_shape))
    bad = PruningPlan({"conv1": (3, 1)}, {"conv1": 16}, plan.dense, plan.pruned, plan.input_shape)
    with pytest.raises(InvalidPlanError, match="sorted unique"):
        apply_plan(create_model("resnet20"), bad)
