"""Measured latency of a dense and a pruned network, next to their MACs and params.

Latency is the median of repeated timed forward passes (:class:`torch.utils.benchmark.Timer`,
``blocked_autorange``) after a warm-up, on a fixed number of threads, in eval mode without
autograd. Numbers depend on the machine and on what else runs on it; compare ratios measured in
one run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils import benchmark

from prunetune.deployment.fold import fold_batchnorm
from prunetune.exceptions import ConfigError
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.macs import Cost, count_cost
from prunetune.pruning.plan import PruningPlan
from prunetune.pruning.surgery import apply_plan


@dataclass(frozen=True)
class Timing:
    """One model at one batch size."""

    model: str
    batch: int
    threads: int
    macs: int
    params: int
    median_ms: float
    iqr_ms: float
    runs: int

    def as_dict(self) -> dict:
        return asdict(self)


CLOCKS = ("wall", "cpu")


def measure(model: nn.Module, input_shape: tuple[int, ...], *, batch: int, threads: int,
            min_run_time: float = 1.0, warmup: int = 3, label: str = "model", clock: str = "wall") -> Timing:
    """Time ``model`` on a random batch: ``warmup`` untimed passes, then ``blocked_autorange``.

    ``clock="cpu"`` times the CPU the calling thread spends (``time.thread_time``) instead of wall
    time: on a machine shared with other work it leaves out the time spent waiting for a core.
    It needs ``threads=1`` (with more, the work of the other threads would be missed).
    """
    if batch < 1 or threads < 1:
        raise ConfigError(f"batch and threads must be >= 1, got batch={batch}, threads={threads}")
    if clock not in CLOCKS or (clock == "cpu" and threads != 1):
        raise ConfigError(f"clock must be 'wall', or 'cpu' with one thread; got clock={clock!r}, threads={threads}")
    model = model.eval()
    param = next(model.parameters(), None)  # None: a frozen TorchScript module holds constants only
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0)).to(  # the caller's stream stays
        device=param.device if param is not None else "cpu", dtype=param.dtype if param is not None else torch.float32)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads,
                                    timer=time.thread_time if clock == "cpu" else time.perf_counter)
            m = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        torch.set_num_threads(previous)
    cost = count_cost(model, input_shape) if param is not None else Cost(0, 0)
    return Timing(label, batch, threads, cost.macs, cost.params, m.median * 1e3, m.iqr * 1e3, len(m.times))


def compare(models: dict[str, nn.Module], input_shape: tuple[int, ...], *, batches: Sequence[int] = (1, 64),
            threads: int | None = None, fold_bn: bool = True, min_run_time: float = 1.0,
            clock: str = "wall") -> list[Timing]:
    """Time every model at every batch size (interleaved per batch, so drift hits all alike)."""
    threads = threads or torch.get_num_threads()
    if fold_bn:
        models = {name: fold_batchnorm(m, input_shape)[0] for name, m in models.items()}
    rows = []
    for batch in batches:
        for name, model in models.items():
            rows.append(measure(model, input_shape, batch=batch, threads=threads, min_run_time=min_run_time,
                                label=name, clock=clock))
    return rows


def speedups(rows: Sequence[Timing], *, base: str = "dense") -> dict[tuple[str, int], float]:
    """``(model, batch) -> base latency / model latency`` for every non-base row."""
    ref = {r.batch: r.median_ms for r in rows if r.model == base}
    return {(r.model, r.batch): ref[r.batch] / r.median_ms for r in rows if r.model != base and r.batch in ref}


def plan_latency(dense: nn.Module, plan: PruningPlan, *, threads: int, batch: int = 1,
                 min_run_time: float = 0.3, groups: ModelGroups | None = None) -> float:
    """Median latency (ms) of the network ``plan`` cuts from ``dense`` (BN folded), on ``threads``
    (``groups``: ``dense``'s, when the caller has them; found again otherwise)."""
    pruned = apply_plan(copy.deepcopy(dense).cpu().eval(), plan, groups)
    folded, _ = fold_batchnorm(pruned, plan.input_shape)
    return measure(folded, plan.input_shape, batch=batch, threads=threads, min_run_time=min_run_time,
                   warmup=2, label="pruned").median_ms
