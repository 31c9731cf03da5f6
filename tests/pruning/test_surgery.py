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


class _InstanceNormNet(torch.nn.Module):
    """Conv → InstanceNorm (with and without γ/β) → ReLU, twice; a per-channel norm like BN."""

    def __init__(self) -> None:
        super().__init__()
        norm = torch.nn.InstanceNorm2d
        self.a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), norm(8, affine=True), torch.nn.ReLU())
        self.b = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), norm(8), torch.nn.ReLU())
        self.fc = torch.nn.Linear(8, 10)
        with torch.no_grad():  # a β that leaks if the mask sits before the norm
            self.a[1].bias.uniform_(-1, 1)
            self.a[1].weight.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


def test_instance_norm_is_masked_after_it_like_bn() -> None:
    # the mask sat on the conv, before the norm: a masked channel's InstanceNorm output was its β,
    # which the removed network does not have
    torch.manual_seed(0)
    model = _InstanceNormNet().eval()
    groups = find_groups(model, (3, 8, 8))
    assert groups["a.0"].norms == ("a.1",) and "a.1" in groups["a.0"].mask_points
    assert not groups.counted  # per-channel γ/β: covered by the analytic count
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups}, {"a.0": 3, "b.0": 5})
    assert _masked_vs_physical(model, groups, plan, (3, 8, 8)) < 1e-6
    from prunetune.testing import check_model
    check_model(lambda: _InstanceNormNet(), (3, 8, 8))
