"""Fine-tuning and evaluation: SGD with momentum, cosine schedule with linear warm-up, weight decay,
optional label smoothing; mixed precision and channels-last on CUDA; top-1 accuracy.

Callbacks let schedules (soft/hard masks) and the search (per-epoch reports) hook into the loop
without the loop knowing about them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunetune._modes import modes_kept
from prunetune._numbers import is_finite_number
from prunetune._text import short
from prunetune.exceptions import ConfigError, DivergedError
from prunetune.pruning.progress import progress, progress_enabled

log = logging.getLogger("prunetune")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tune settings (the recipe's ``finetune`` section)."""

    epochs: int = 2
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    batch_size: int = 128
    amp: bool = True  # mixed precision, CUDA only: bfloat16 where the GPU has it, else float16 + loss scaling
    channels_last: bool = True  # CUDA only
    recalibrate_bn: bool = True  # one-shot schedules: re-estimate BN statistics after pruning, before fine-tuning
    recalibrate_batches: int = 20

    def __post_init__(self) -> None:
        checks = [
            ("epochs", _int(self.epochs) and self.epochs >= 0, "an integer >= 0"),
            ("lr", is_finite_number(self.lr) and self.lr > 0, "a number > 0"),
            ("momentum", is_finite_number(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", is_finite_number(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            ("warmup_epochs", is_finite_number(self.warmup_epochs) and self.warmup_epochs >= 0, "a number >= 0"),
            ("label_smoothing", is_finite_number(self.label_smoothing) and 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("batch_size", _int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            ("recalibrate_batches", _int(self.recalibrate_batches) and self.recalibrate_batches >= 1,
             "an integer >= 1"),
            *((flag, isinstance(getattr(self, flag), bool), "true or false")
              for flag in ("nesterov", "amp", "channels_last", "recalibrate_bn")),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(f"finetune.{name} must be {want}, got {short(getattr(self, name))}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class Callback(Protocol):
    """Optional hooks, called in this order: ``on_train_start``, then per epoch ``on_epoch_start``,
    per step ``after_step`` (after ``optimizer.step()``), ``on_epoch_end`` (after evaluation)."""

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...
    def on_epoch_start(self, epoch: int, total: int) -> None: ...
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...
    def on_epoch_end(self, epoch: int, total: int, metrics: dict[str, float]) -> None: ...


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up to ``base_lr`` then cosine decay to 0 (a pure function of the step)."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))


def _call(callbacks: Sequence[Any], method: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, method, None)
        if fn is not None:
            fn(*args)


def finetune(
    model: nn.Module,
    train_batches: Iterable[tuple[Tensor, Tensor]],
    config: FinetuneConfig,
    *,
    device: str | torch.device = "cpu",
    eval_batches: Iterable[tuple[Tensor, Tensor]] | None = None,
    callbacks: Sequence[Any] = (),
    show_progress: bool = True,
    section: str = "finetune",
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.epochs`` epochs; return per-epoch metrics (loss, lr, accuracy).
    ``section``: the recipe section ``config`` came from, named in the error if the loss diverges."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    model.to(device)
    if cuda and config.channels_last:
        model.to(memory_format=torch.channels_last)
    decay, no_decay = _param_groups(model)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
    )
    steps_per_epoch = max(1, len(train_batches)) if hasattr(train_batches, "__len__") else 1
    total_steps = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    amp_dtype = autocast_dtype(device) if config.amp else None
    # float16 needs loss scaling, whose step checks for infinities on the host every step; bfloat16
    # has float32's range and needs none, so where the GPU has it a step makes no host sync for it
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    history: list[dict[str, float]] = []
    _call(callbacks, "on_train_start", model, optimizer)
    step = 0
    for epoch in range(config.epochs):
        _call(callbacks, "on_epoch_start", epoch, config.epochs)
        model.train()
        # summed on the device: no host sync per step (the same float64 arithmetic as a Python float)
        loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
        for x, y in progress(train_batches, desc=f"epoch {epoch + 1}/{config.epochs}", enabled=show_progress):
            x, y = _to(x, device, cuda and config.channels_last), y.to(device, non_blocking=True)
            lr = lr_at(step, total_steps, warmup, config.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = model(x)
                if not isinstance(out, torch.Tensor):  # e.g. (logits, aux) of an Inception net in train mode
                    raise ConfigError(f"the model returns a {type(out).__name__} in train mode; fine-tuning needs "
                                      "the logits as one Tensor (turn auxiliary outputs off, e.g. aux_logits=False)")
                loss = F.cross_entropy(out, y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            _call(callbacks, "after_step", model, optimizer)
            loss_sum += loss.detach().double() * y.shape[0]
            seen += y.shape[0]
            step += 1
        metrics = {"epoch": epoch + 1, "loss": float(loss_sum) / max(1, seen),
                   "lr": lr_at(step - 1, total_steps, warmup, config.lr)}
        if not math.isfinite(metrics["loss"]):
            raise DivergedError(f"{section} loss became {metrics['loss']} at epoch {epoch + 1}; lower {section}.lr")
        if eval_batches is not None:
            metrics["accuracy"] = evaluate(model, eval_batches, device=device, amp=config.amp)
        _call(callbacks, "on_epoch_end", epoch, config.epochs, metrics)
        history.append(metrics)
        if show_progress and not progress_enabled():  # no bar (a log file, a pipe): one line per epoch
            acc = f", val acc {metrics['accuracy']:.4f}" if "accuracy" in metrics else ""
            log.info("%s epoch %d/%d: loss %.4f%s", section, epoch + 1, config.epochs, metrics["loss"], acc)
    return history


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision type of a fine-tune on ``device``: bfloat16 on a CUDA GPU with native
    bfloat16 (compute capability 8.0 and later: Ampere, Hopper), float16 on older ones (where
    ``torch.cuda.is_bf16_supported()`` would also say yes, through slow emulation), None (full
    precision) elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def _param_groups(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """Weight decay on conv/linear weights only, not on biases or BN parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    return decay, no_decay


def _to(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, device: str | torch.device = "cpu",
             amp: bool = False) -> float:
    """Top-1 accuracy in [0, 1], in full precision unless ``amp`` (then in the fine-tune's mixed
    precision on ``device``, :func:`autocast_dtype`; none on CPU)."""
    correct = 0

    def count(logits: Tensor, y: Tensor) -> None:
        nonlocal correct
        correct += int((logits.argmax(1) == y).sum())

    total = eval_pass(model, batches, count, device=device, amp=amp)
    return correct / total


@torch.no_grad()
def eval_pass(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], on_batch: Any, *,
              device: str | torch.device = "cpu", amp: bool = False) -> int:
    """``on_batch(logits, labels)`` for every batch, ``model`` in eval mode without gradients (its modes
    put back after), in full precision unless ``amp`` (as :func:`evaluate`); returns the number of
    samples, and refuses an empty set."""
    device = torch.device(device)
    amp_dtype = autocast_dtype(device) if amp else None
    total = 0
    with modes_kept(model):
        model.eval()
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(x)
            on_batch(logits, y)
            total += int(y.shape[0])
    if total == 0:
        raise ConfigError("evaluation set is empty")
    return total


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, max_batches: int = 20,
                   device: str | torch.device = "cpu") -> None:
    """Re-estimate BN running statistics with forward passes in train mode (no weight updates)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    try:
        with modes_kept(model):
            model.train()
            for i, (x, _y) in enumerate(batches):
                if i >= max_batches:
                    break
                model(x.to(device))
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
