"""MacsBudget: one validated value for the MACs budget, one range check, one feasibility check."""

from __future__ import annotations

import pytest

from prunetune.exceptions import BudgetInfeasibleError, ConfigError
from prunetune.models import create_model
from prunetune.pruning.allocation import KeepRule, MacsBudget, check_budget, smallest_fraction
from prunetune.pruning.groups import find_groups
from prunetune.recipes.schema import Recipe
from prunetune.search import parse_search_config
from prunetune.spaces import SpaceSpec, build_space, space_target_range, target_range


@pytest.fixture(scope="module")
def groups():
    return find_groups(create_model("tiny_resnet"), (3, 16, 16))


@pytest.mark.parametrize("value", [0, -0.1, 1.5, True, "0.5", None, float("nan")])
def test_a_budget_outside_0_1_fails_naming_where_it_came_from(value) -> None:
    with pytest.raises(ConfigError, match=r"^allocation.macs_budget must be a fraction of dense MACs in \(0, 1\]"):
        MacsBudget(value, "allocation.macs_budget")
    with pytest.raises(ConfigError, match=r"^macs_budget must be a fraction"):
        check_budget(value)


def test_the_same_check_runs_for_recipes_and_search_configs() -> None:
    recipe = {"model": {"name": "tiny_resnet"}, "data": "synthetic", "criterion": "l1"}
    with pytest.raises(ConfigError, match=r"allocation.macs_budget must be a fraction of dense MACs in \(0, 1\], got 2"):
        Recipe.from_dict({**recipe, "allocation": {"macs_budget": 2}})
    with pytest.raises(ConfigError, match=r"^macs_budget must be a fraction of dense MACs in \(0, 1\], got 2"):
        parse_search_config({"macs_budget": 2, "recipe": recipe})
    settings = parse_search_config({"macs_budget": 0.4, "recipe": recipe}).settings
    assert settings.budget == MacsBudget(0.4)
    assert Recipe.from_dict({**recipe, "allocation": {"macs_budget": 0.3}}).allocation.budget == MacsBudget(0.3)
    assert Recipe.from_dict({**recipe, "allocation": {"ratio": 0.3}}).allocation.budget is None


def test_target_and_reachable(groups) -> None:
    budget = MacsBudget(0.5)
    assert budget.target(1000) == 500.0
    rule = KeepRule(max_ratio=0.8)
    assert budget.reachable(groups, rule) == smallest_fraction(groups, rule)
    with pytest.raises(BudgetInfeasibleError, match=r"raise --macs-budget to at least .* \(or raise allocation.max_ratio\)"):
        MacsBudget(0.01).reachable(groups, rule, flag="--macs-budget")
    # with max_ratio already 1 only min_keep and round_to can move the floor (it said "raise max_ratio")
    with pytest.raises(BudgetInfeasibleError, match=r"\(or lower allocation.min_keep or round_to\)"):
        MacsBudget(0.01).reachable(groups, KeepRule(min_keep=4, max_ratio=1.0), flag="--macs-budget")


def test_the_space_carries_its_range(groups) -> None:
    spec = SpaceSpec()
    space = build_space(spec, groups, budget=MacsBudget(0.6))
    assert space_target_range(space) == target_range(spec, groups, 0.6) == (0.15, 0.6)
