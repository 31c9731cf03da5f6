"""The fine-tune's mixed-precision type: bfloat16 where the GPU has it (no loss scaling, so no
host sync per step for it), float16 with loss scaling on older GPUs, full precision on the CPU."""

from __future__ import annotations

import importlib

import pytest
import torch

ft = importlib.import_module("prunetune.pruning.finetune")  # the package re-exports the function


def test_cpu_trains_in_full_precision() -> None:
    assert ft.autocast_dtype(torch.device("cpu")) is None


@pytest.mark.parametrize(("capability", "expected"), [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16),
                                                      ((7, 5), torch.float16), ((7, 0), torch.float16)])
def test_cuda_takes_bfloat16_where_the_gpu_has_it_natively(capability, expected, monkeypatch) -> None:
    """Hopper and Ampere: bfloat16; Turing and Volta (bfloat16 only emulated there): float16."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    assert ft.autocast_dtype(torch.device("cuda", 1)) is expected
    assert asked == [torch.device("cuda", 1)]  # the fine-tune's own device, not the current one


def test_loss_scaling_only_for_float16(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scaler the loop builds is enabled exactly when the autocast type is float16."""
    made: list[bool] = []

    class Scaler:
        def __init__(self, device: str, enabled: bool) -> None:
            made.append(enabled)
            raise RuntimeError("stop here")

    monkeypatch.setattr(torch.amp, "GradScaler", Scaler)
    model = torch.nn.Linear(2, 2)
    for dtype, enabled in ((torch.bfloat16, False), (torch.float16, True), (None, False)):
        monkeypatch.setattr(ft, "autocast_dtype", lambda device, d=dtype: d)
        with pytest.raises(RuntimeError, match="stop here"):
            ft.finetune(model, [], ft.FinetuneConfig(epochs=1), show_progress=False)
    assert made == [False, True, False]


def test_evaluation_is_full_precision_unless_amp(monkeypatch: pytest.MonkeyPatch) -> None:
    """``evaluate`` autocasts only when asked (the fine-tune passes its ``amp``), in the fine-tune's
    type; the accuracies a recipe and a search report are taken in full precision."""
    seen: list[torch.dtype] = []
    model = torch.nn.Linear(4, 3)
    model.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    monkeypatch.setattr(ft, "autocast_dtype", lambda device: torch.bfloat16)  # as on a GPU with bfloat16
    ft.evaluate(model, batches)
    ft.evaluate(model, batches, amp=True)
    assert seen == [torch.float32, torch.bfloat16]
    asked: list[bool] = []
    monkeypatch.setattr(ft, "evaluate", lambda *a, amp=False, **k: asked.append(amp) or 0.5)
    for amp in (False, True):
        ft.finetune(model, batches, ft.FinetuneConfig(epochs=1, amp=amp), eval_batches=batches,
                    show_progress=False)
    assert asked == [False, True]


def test_a_model_with_auxiliary_outputs_in_train_mode_is_one_line() -> None:
    """An Inception-style net returns (logits, aux) in train mode only, past the eval-mode check before
    training: the first loss was a TypeError traceback."""
    from torch import nn

    from prunetune.exceptions import ConfigError
    from prunetune.pruning.finetune import FinetuneConfig, finetune

    class Aux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            logits = self.head(x)
            return (logits, logits) if self.training else logits

    batches = [(torch.randn(2, 4), torch.tensor([0, 2]))]
    with pytest.raises(ConfigError, match=r"^the model returns a tuple in train mode; fine-tuning needs the logits"):
        finetune(Aux(), batches, FinetuneConfig(epochs=1))


def test_without_a_bar_each_epoch_is_one_log_line(caplog) -> None:
    """A prune whose stderr is a file or a pipe (no progress bar) said nothing for the whole fine-tune."""
    import logging

    from torch import nn

    from prunetune.pruning.finetune import FinetuneConfig, finetune

    batches = [(torch.randn(4, 4), torch.tensor([0, 2, 1, 0]))]
    caplog.set_level(logging.INFO, logger="prunetune")
    finetune(nn.Linear(4, 3), batches, FinetuneConfig(epochs=2), eval_batches=batches)  # PRUNETUNE_PROGRESS=0 here
    lines = [r.getMessage() for r in caplog.records if r.name == "prunetune"]
    assert [line.split(":")[0] for line in lines] == ["finetune epoch 1/2", "finetune epoch 2/2"]
    assert "val acc" in lines[0]
    caplog.clear()
    finetune(nn.Linear(4, 3), batches, FinetuneConfig(epochs=1), show_progress=False)  # a search's trial: silent
    assert not [r for r in caplog.records if r.name == "prunetune"]
