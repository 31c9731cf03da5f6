"""Each schedule and each allocation strategy runs end to end on digits (tiny model, two epochs)."""

from __future__ import annotations

import pytest

from prunetune.recipes.pipeline import prepare, run_recipe
from prunetune.pruning.macs import count_cost
from prunetune.pruning.schedules import SCHEDULES
from prunetune.recipes.schema import Recipe

BASE = {
    "model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1},
    "data": {"name": "digits", "image_size": 8},
    "criterion": "l2",
    "allocation": {"macs_budget": 0.6},
    "finetune": {"epochs": 2, "lr": 0.05, "batch_size": 128},
    "pretrain": {"epochs": 2, "lr": 0.1},
    "calibration": {"size": 96, "batch_size": 48},
}


@pytest.fixture(scope="module")
def base():
    return prepare(Recipe.from_dict(BASE), show_progress=False)


def _check(result, budget: float) -> None:
    assert result.pruned["macs"] <= budget * result.dense["macs"]
    assert count_cost(result.model, result.plan.input_shape).macs == result.plan.pruned.macs == result.pruned["macs"]
    assert 0.0 <= result.pruned["accuracy"] <= 1.0 and len(result.history) == 2


@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_each_schedule_end_to_end(base, schedule) -> None:
    recipe = Recipe.from_dict({**BASE, "schedule": {"name": schedule, **({"steps": 2} if schedule == "iterative" else {})}})
    _check(run_recipe(recipe, base=base, show_progress=False), 0.6)


@pytest.mark.parametrize("strategy", ["cmi_cumulative", "cmi_marginal", "cmi_knee"])
def test_each_cutoff_strategy_end_to_end(base, strategy) -> None:
    recipe = Recipe.from_dict({**BASE, "allocation": {"strategy": strategy, "macs_budget": 0.6},
                               "schedule": {"name": "ghfp", "ramp": "cosine"}})
    result = run_recipe(recipe, base=base, show_progress=False)
    _check(result, 0.6)
    assert result.plan.meta["allocation"]["strategy"] == strategy


def test_cutoff_without_budget_uses_its_parameter(base) -> None:
    loose = run_recipe(Recipe.from_dict({**BASE, "allocation": {"strategy": "cmi_cumulative", "rho": 0.99}}),
                       base=base, show_progress=False)
    tight = run_recipe(Recipe.from_dict({**BASE, "allocation": {"strategy": "cmi_cumulative", "rho": 0.3}}),
                       base=base, show_progress=False)
    assert tight.pruned["macs"] < loose.pruned["macs"]


@pytest.mark.parametrize("criterion, normalizer", [("taylor", "mean"), ("bn_scale", "none"), ("l1", "mean")])
def test_global_ranking_end_to_end(base, criterion, normalizer) -> None:
    """Taylor and Network Slimming rank globally: one threshold across groups, to the MACs budget."""
    recipe = Recipe.from_dict({**BASE, "criterion": criterion,
                               "allocation": {"strategy": "global", "macs_budget": 0.6, "normalizer": normalizer}})
    result = run_recipe(recipe, base=base, show_progress=False)
    _check(result, 0.6)
    assert result.plan.meta["allocation"] == {"strategy": "global", "macs_budget": 0.6, "normalizer": normalizer}
