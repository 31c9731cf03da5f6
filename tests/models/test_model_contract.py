"""The model contract, over every registered model (the zoo included) and torchvision/timm models
where they import: analytic MACs/params equal the counted ones of the physically pruned network on
random plans, a budget projection holds when counted, and masking equals removal."""

from __future__ import annotations

import importlib

import pytest
import torch

from prunetune.models import create_model, list_models
from prunetune.testing import check_model

TORCHVISION = ("resnet18", "vgg11_bn", "densenet121", "mobilenet_v2", "efficientnet_b0")
TIMM = ("resnet18", "mobilenetv3_small_100", "convnext_atto")
# LayerNorm normalises across channels: removing a channel changes every other channel's output, so
# no mask equals removal there (MACs and the budget still hold: these models are counted).
CHANNEL_NORMALISED = {"convnext_atto"}


def _shape(name: str) -> tuple[int, int, int]:
    return (3, 16, 16) if name.startswith(("tiny", "zoo")) else (3, 32, 32)


check_contract = check_model  # prunetune.testing owns the contract (a plugin's model runs the same)


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
