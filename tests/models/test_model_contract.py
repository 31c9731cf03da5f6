"""The model contract, over every registered model (the zoo included) and torchvision/timm models
where they import: analytic MACs/params equal the counted ones of the physically pruned network on
random plans, a budget projection holds when counted, and masking equals removal."""

from __future__ import annotations

import copy
import importlib
import random

import pytest
import torch

from prunetune.models import create_model, list_models
from prunetune.pruning.allocation import keep_for_budget
from prunetune.pruning.groups import find_groups
from prunetune.pruning.macs import analytic_cost, count_cost
from prunetune.pruning.plan import make_plan
from prunetune.pruning.surgery import MaskHooks, apply_plan, channel_masks
from tests.conftest import randomize_bn

TORCHVISION = ("resnet18", "vgg11_bn", "densenet121", "mobilenet_v2", "efficientnet_b0")
TIMM = ("resnet18", "mobilenetv3_small_100", "convnext_atto")
# LayerNorm normalises across channels: removing a channel changes every other channel's output, so
# no mask equals removal there (MACs and the budget still hold: these models are counted).
CHANNEL_NORMALISED = {"convnext_atto"}


def _shape(name: str) -> tuple[int, int, int]:
    return (3, 16, 16) if name.startswith(("tiny", "zoo")) else (3, 32, 32)


def _random_plan(groups, seed: int):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    keep = {g.name: rng.randint(1, g.channels) for g in groups}
    return make_plan(groups, {g.name: torch.rand(g.channels, generator=gen) for g in groups}, keep)


def check_contract(factory, shape: tuple[int, ...], *, seeds: int = 2, masks: bool = True) -> None:
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


@pytest.mark.parametrize("name", list_models())
def test_registered_model_contract(name: str) -> None:
    check_contract(lambda: create_model(name), _shape(name), seeds=1 if name == "resnet110" else 2)


def _import_or_skip(module: str):
    """Import an optional model library; apply platform.md's torchvision fix on a CPU-only torch."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch raises RuntimeError
        if "torchvision::nms" not in str(exc):
            pytest.skip(f"{module} does not import: {type(exc).__name__}: {str(exc)[:120]}")
    lib = torch.library.Library("torchvision", "DEF")  # the two schemas its C++ extension failed to add
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"{module} does not import: {type(exc).__name__}: {str(exc)[:120]}")


_LIBS: list = []


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_model_contract(name: str) -> None:
    _import_or_skip("torchvision.models")
    check_contract(lambda: create_model(f"tv:{name}"), (3, 64, 64), seeds=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM)
def test_timm_model_contract(name: str) -> None:
    timm = _import_or_skip("timm")
    check_contract(lambda: timm.create_model(name, pretrained=False, num_classes=10), (3, 64, 64), seeds=1,
                   masks=name not in CHANNEL_NORMALISED)
