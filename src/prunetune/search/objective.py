"""The trial objective: config → recipe → plan → schedule + fine-tune → metrics. No Ray import.

:func:`run_trial` is what every search trial runs, in a Ray worker or directly (tests, replays).
The dense model, data and ScoreTable come in prepared (computed once on the driver); nothing here
scores the model again.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from prunetune.exceptions import PrunetuneError
from prunetune.recipes.pipeline import Base, splits_to, train_pruned
from prunetune.recipes.planning import build_plan
from prunetune.pruning.finetune import evaluate
from prunetune.pruning.budget_check import check_pruned_macs
from prunetune.pruning.plan import PruningPlan
from prunetune.pruning.scores import ScoreTable
from prunetune.recipes.schema import Recipe
from prunetune.spaces import trial_recipe

Report = Callable[[dict[str, Any]], None]
OBJECTIVES = ("accuracy", "macs")


class TrialError(PrunetuneError, RuntimeError):
    """A trial produced no usable result (an error, or a non-finite objective)."""


@dataclass(frozen=True)
class TrialResult:
    """What a finished trial measured.

    Attributes:
        metrics: ``accuracy`` (validation split, the search objective), ``test_accuracy``,
            ``macs``, ``params`` (counted on the pruned network), ``macs_ratio``, ``params_ratio``,
            ``target_macs``, ``work_s`` (seconds of plan + fine-tune + evaluation).
        history: per-epoch fine-tune metrics (epoch, loss, lr, accuracy on the validation split).
        plan: the final plan (a re-scoring schedule may keep other channels than the initial plan,
            never another count): the one to record and export.
        recipe: the trial's recipe (without plan).
    """

    metrics: dict[str, float]
    history: list[dict[str, float]]
    plan: PruningPlan
    recipe: Recipe

    def report(self) -> dict[str, Any]:
        """The final result for Ray and MLflow: metrics, curves, plan and recipe as plain data."""
        return {**self.metrics, "history": self.history, "plan": self.plan.to_dict(),
                "recipe": self.recipe.to_dict(), "final": True}


class EpochReporter:
    """A fine-tune callback that reports validation accuracy after every epoch but the last (the
    last one is the final result), so Ray's training iteration equals the epoch."""

    def __init__(self, report: Report, extra: Mapping[str, Any]) -> None:
        self.report, self.extra = report, dict(extra)

    def on_epoch_end(self, epoch: int, total: int, metrics: Mapping[str, float]) -> None:
        if epoch + 1 < total:
            self.report({**self.extra, "accuracy": metrics.get("accuracy", math.nan),
                         "loss": metrics.get("loss", math.nan), "epoch": epoch + 1, "final": False})


def run_trial(config: Mapping[str, Any], base: Base, table: ScoreTable, *, report: Report | None = None) -> TrialResult:
    """Run one trial config on the shared ``base`` and ``table``; see :class:`TrialResult`."""
    t0 = time.perf_counter()
    recipe = trial_recipe(base.recipe, config, base.groups)
    plan = build_plan(recipe, base, table)
    extra = {"macs": plan.pruned.macs, "macs_ratio": plan.macs_ratio}
    callbacks = [EpochReporter(report, extra)] if report is not None else []
    model, history, final = train_pruned(recipe, base, plan, callbacks=callbacks, show_progress=False)
    cost = check_pruned_macs(model, base.input_shape, final, macs_budget=recipe.sized().macs_budget,
                             dense_macs=int(base.dense["macs"]))  # above its target: the trial FAILS
    metrics = {
        "accuracy": evaluate(model, base.loader("val"), device=base.device),
        "test_accuracy": evaluate(model, base.loader("test"), device=base.device),
        "macs": float(cost.macs), "params": float(cost.params),
        "macs_ratio": cost.macs / base.dense["macs"], "params_ratio": cost.params / base.dense["params"],
        "target_macs": float(config.get("target_macs", math.nan)),
        "work_s": time.perf_counter() - t0,
    }
    return TrialResult(metrics, history, final, recipe)


def check_finite(metrics: Mapping[str, Any]) -> None:
    """Raise :class:`TrialError` unless both objectives are finite numbers."""
    for key in OBJECTIVES:
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TrialError(f"trial objective {key!r} is {value!r}, not a finite number; the trial is recorded as failed")


def base_to(base: Base, device: torch.device | str) -> Base:
    """``base`` with its model and in-memory data on ``device`` (CPU to ship it, the trial's device to run)."""
    device = torch.device(device)
    return dataclasses.replace(base, model=base.model.to(device), splits=splits_to(base.splits, device), device=device)
