"""Full float32 where prunetune compares or scores on CUDA: no TF32 while the calibration pass, the
removal probe or deploy's check runs; the caller's settings, set through either of torch's APIs, come
back after each, also after an error. On this CPU machine the tests pretend the device is CUDA
(the settings are torch's own Python-level switches, and are left alone on a real CPU run)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import prunetune._precision as precision_module
from prunetune._precision import full_float32
from prunetune.deployment import deploy
from prunetune.models import create_model
from prunetune.pruning.calibration import calibrate
from prunetune.pruning.criteria import get_criterion
from prunetune.pruning import removal_probe, tp_bridge
from prunetune.pruning.groups import find_groups

NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def tf32_off() -> bool:
    """Whether CUDA matrix products and cuDNN convolutions run in full float32 now: through the newer
    API, ``ieee``, or a convolution's ``none`` (the older flag decides) with that flag off."""
    if not NEW_API:
        return not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    conv, above = torch.backends.cudnn.conv.fp32_precision, (torch.backends.cudnn, torch.backends)
    inherited = conv == "none" and all(level.fp32_precision != "tf32" for level in above)
    return torch.backends.cuda.matmul.fp32_precision == "ieee" and (
        conv == "ieee" or (inherited and torch.backends.cudnn.allow_tf32 is False))


def precision() -> tuple:
    """Every TF32 setting torch has, to compare before and after."""
    if NEW_API:
        levels = (torch.backends, torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.cudnn.conv,
                  torch.backends.cudnn.rnn)
        return tuple(level.fp32_precision for level in levels)
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture(params=["new", "legacy"] if NEW_API else ["legacy"])
def tf32_on(request, monkeypatch):
    """TF32 on as a user sets it: through ``fp32_precision`` per backend since torch 2.9 (after which
    reading the older ``allow_tf32`` flags raises) or through the older flags; put back after the test."""
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    if request.param == "new":
        backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
        kept = [b.fp32_precision for b in backends]
        for b in backends:
            b.fp32_precision = "tf32"
    else:
        kept = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    monkeypatch.setattr(precision_module, "_cuda", lambda device: True)  # every device counts as CUDA here
    yield precision()
    if request.param == "new":
        for b, value in zip(backends, kept):
            b.fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = kept


def _seen_in_forwards(model: torch.nn.Module, batch: int = 2) -> list:
    """Whether TF32 was off, in each forward on at least ``batch`` inputs (cost counting and tracing
    run one input first, outside the blocks: their values are not used), not counting traces."""
    seen: list = []

    def hook(_module, inputs, _output) -> None:
        if not torch.jit.is_tracing() and inputs[0].shape[0] >= batch:
            seen.append(tf32_off())
    model.conv1.register_forward_hook(hook)
    return seen


def test_the_block_turns_tf32_off_and_restores_it(tf32_on) -> None:
    with full_float32("cuda"):
        assert tf32_off()
    assert precision() == tf32_on
    with pytest.raises(KeyError), full_float32("cuda"):
        raise KeyError("x")
    assert precision() == tf32_on


@pytest.mark.skipif(not NEW_API, reason="torch before 2.9 has no fp32_precision")
def test_tf32_set_for_everything_is_off_in_the_block_too() -> None:
    """``torch.backends.fp32_precision = "tf32"`` reaches a convolution whose own setting is ``none``,
    which is what the older flag writes: the block sets it to ``ieee``. In a fresh interpreter: putting
    that global setting back leaves torch unable to read its older flags for the rest of a process."""
    code = """
import torch
import prunetune._precision as p
p._cuda = lambda device: True
torch.backends.fp32_precision = "tf32"
levels = (torch.backends, torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.cudnn.conv)
before = [b.fp32_precision for b in levels]
with p.full_float32("cuda"):
    inside = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
print(inside == ("ieee", "ieee"), [b.fp32_precision for b in levels] == before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]


def test_on_the_cpu_the_settings_are_left_alone() -> None:
    before = precision()
    with full_float32("cpu"):
        assert precision() == before


def test_the_removal_probe_runs_in_full_float32(tf32_on) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    groups = find_groups(model, (1, 16, 16))
    seen = _seen_in_forwards(model)
    assert removal_probe.unfaithful_groups(model, tp_bridge.example_for(model, (1, 16, 16)), list(groups)) == {}
    assert seen and set(seen) == {True}
    assert precision() == tf32_on


def test_deploy_writes_and_checks_in_full_float32(tf32_on, tmp_path) -> None:
    model = create_model("tiny_resnet", num_classes=10, in_channels=1)
    seen = _seen_in_forwards(model)
    result = deploy(model, "torchscript", tmp_path / "m.pt", input_shape=(1, 8, 8))
    assert result.rel_diff <= 1e-4 and seen and set(seen) == {True}
    assert precision() == tf32_on


@pytest.mark.parametrize("name", ["dfs", "taylor"])
def test_the_calibration_pass_runs_in_full_float32(tf32_on, name) -> None:
    """Its forward passes (taylor's backward runs inside the same pass) see no TF32."""
    model = create_model("tiny_resnet", num_classes=10, in_channels=3)
    groups = find_groups(model, (3, 16, 16))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    seen = _seen_in_forwards(model, batch=8)  # the calibration batches
    calibrate(model, groups, {name: get_criterion(name).resolve({})}, [(x[:16], y[:16]), (x[16:], y[16:])],
              show_progress=False)
    assert seen and set(seen) == {True}
    assert precision() == tf32_on

    def failing():
        yield x[:8], y[:8]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        calibrate(model, groups, {name: get_criterion(name).resolve({})}, failing(), show_progress=False)
    assert precision() == tf32_on
