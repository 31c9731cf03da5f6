"""Budgets hold or fail loudly: counted fallback where the analytic count cannot see a layer, and the
counted check after a prune."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from prunetune.exceptions import BudgetExceededError
from prunetune.models import create_model
from prunetune.recipes.pipeline import run_recipe
from prunetune.pruning import counting
from prunetune.pruning.allocation import keep_for_budget
from prunetune.pruning.budget_check import check_pruned_macs
from prunetune.pruning.groups import find_groups
from prunetune.pruning.macs import analytic_cost, count_cost
from prunetune.pruning.plan import make_plan
from prunetune.pruning.surgery import apply_plan
from prunetune.recipes.schema import Recipe
from tests.conftest import optimistic_channels

SHAPE = (3, 16, 16)


def test_a_layer_the_geometry_cannot_model_is_counted_and_marked(caplog) -> None:
    model = create_model("zoo_transposed")
    groups = find_groups(model, SHAPE)
    assert groups.counted and "ConvTranspose2d" in groups.counted[0]
    assert [g.analytic for g in groups] == [True, False, True]  # enc2 feeds the transposed conv
    counting._ANNOUNCED.clear()
    with caplog.at_level(logging.WARNING, logger="prunetune"):
        keep = keep_for_budget(groups, 0.5)
        analytic_cost(groups, {n: max(1, k - 1) for n, k in keep.items()})
    said = [r.getMessage() for r in caplog.records if "counted on pruned copies" in r.getMessage()]
    assert len(said) == 1 and "s per plan" in said[0]  # once, with the cost of one count
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups}, keep)
    pruned = apply_plan(copy.deepcopy(model), plan, groups)
    assert count_cost(pruned, SHAPE) == plan.pruned and plan.pruned.macs <= 0.5 * count_cost(model, SHAPE).macs


def test_counted_check_passes_within_rounding_and_fails_above() -> None:
    model = create_model("zoo_vgg").eval()
    groups = find_groups(model, SHAPE)
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups}, keep_for_budget(groups, 0.5))
    pruned = apply_plan(copy.deepcopy(model), plan, groups)
    dense = count_cost(model, SHAPE).macs
    macs = count_cost(pruned, SHAPE).macs
    assert check_pruned_macs(pruned, SHAPE, plan, macs_budget=0.5, dense_macs=dense).macs == macs
    assert check_pruned_macs(pruned, SHAPE, plan, macs_budget=macs / dense / 1.004, dense_macs=dense).macs == macs
    with pytest.raises(BudgetExceededError, match=r"above its target .*budget 0.3"):
        check_pruned_macs(pruned, SHAPE, plan, macs_budget=0.3, dense_macs=dense)
    with pytest.raises(BudgetExceededError, match="plan's own count"):  # no budget: the plan's promise
        check_pruned_macs(model, SHAPE, plan, macs_budget=None, dense_macs=dense)


RECIPE = {
    "model": {"name": "zoo_transposed", "num_classes": 10, "in_channels": 1},
    "data": {"name": "digits", "image_size": 8},
    "criterion": "l1",
    "allocation": {"macs_budget": 0.5},
    "finetune": {"epochs": 1, "lr": 0.05, "batch_size": 128},
    "pretrain": {"epochs": 1, "lr": 0.1},
}


def test_prune_holds_the_budget_on_a_counted_model() -> None:
    result = run_recipe(Recipe.from_dict(RECIPE), show_progress=False)
    assert result.pruned["macs"] == result.plan.pruned.macs <= 0.5 * result.dense["macs"]


def test_prune_above_its_budget_is_an_error(monkeypatch) -> None:
    recipe = Recipe.from_dict({**RECIPE, "model": {"name": "zoo_vgg", "num_classes": 10, "in_channels": 1}})
    optimistic_channels(monkeypatch)
    with pytest.raises(BudgetExceededError, match="above its target"):
        run_recipe(recipe, show_progress=False)
