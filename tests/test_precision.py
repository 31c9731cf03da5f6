"""Full float32 where prunetune compares or scores: no TF32 while the calibration pass, the removal
probe or deploy's check runs; the caller's settings, set through either of torch's APIs, come back
after each, also after an error."""

from __future__ import annotations

import pytest
import torch

from prunetune._precision import full_float32
from prunetune.deployment import deploy
from prunetune.models import create_model
from prunetune.pruning.calibration import calibrate
from prunetune.pruning.criteria import get_criterion
from prunetune.pruning import removal_probe, tp_bridge
from prunetune.pruning.groups import find_groups

NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")
FULL = ("ieee", "ieee") if NEW_API else (False, False)


def precision() -> tuple:
    if NEW_API:
        return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture(params=["new", "legacy"] if NEW_API else ["legacy"])
def tf32_on(request):
    """TF32 on as a user sets it (through ``fp32_precision`` since torch 2.9, after which reading the
    older ``allow_tf32`` flags raises, or through those flags), put back as it was after the test."""
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    if request.param == "new":
        backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
        kept = [b.fp32_precision for b in backends]
        for b in backends:
            b.fp32_precision = "tf32"
    else:
        kept = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield precision()
    if request.param == "new":
        for b, value in zip(backends, kept):
            b.fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = kept


def _seen_in_forwards(model: torch.nn.Module) -> list:
    seen: list = []
    model.conv1.register_forward_hook(lambda *_: seen.append(precision()))
    return seen


def test_the_block_turns_tf32_off_and_restores_it(tf32_on) -> None:
    with full_float32():
        assert precision() == FULL
    assert precision() == tf32_on != FULL
    with pytest.raises(KeyError), full_float32():
        raise KeyError("x")
    assert precision() == tf32_on


def test_the_removal_probe_runs_in_full_float32(tf32_on) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    groups = find_groups(model, (1, 16, 16))
    seen = _seen_in_forwards(model)
    assert removal_probe.unfaithful_groups(model, tp_bridge.example_for(model, (1, 16, 16)), list(groups)) == {}
    assert seen and set(seen) == {FULL}
    assert precision() == tf32_on


def test_deploy_writes_and_checks_in_full_float32(tf32_on, tmp_path) -> None:
    model = create_model("tiny_resnet", num_classes=10, in_channels=1)
    seen = _seen_in_forwards(model)
    result = deploy(model, "torchscript", tmp_path / "m.pt", input_shape=(1, 8, 8))
    assert result.rel_diff <= 1e-4 and seen and set(seen) == {FULL}
    assert precision() == tf32_on


@pytest.mark.parametrize("name", ["dfs", "taylor"])
def test_the_calibration_pass_runs_in_full_float32(tf32_on, name) -> None:
    """Its forward passes (taylor's backward runs inside the same pass) see no TF32."""
    model = create_model("tiny_resnet", num_classes=10, in_channels=3)
    groups = find_groups(model, (3, 16, 16))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    seen = _seen_in_forwards(model)
    calibrate(model, groups, {name: get_criterion(name).resolve({})}, [(x[:16], y[:16]), (x[16:], y[16:])],
              show_progress=False)
    assert seen and set(seen) == {FULL}
    assert precision() == tf32_on

    def failing():
        yield x[:8], y[:8]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        calibrate(model, groups, {name: get_criterion(name).resolve({})}, failing(), show_progress=False)
    assert precision() == tf32_on
