"""A strategy's plan above the recipe's MACs budget is refused when the plan is made, before any
training: it was found only by the count after the fine-tune, with an error that blamed the analytic
MACs count and asked to report the model."""

from __future__ import annotations

import pytest

from prunetune.exceptions import BudgetExceededError
from prunetune.pruning.allocation import keep_for_budget
from prunetune.pruning.strategies import STRATEGIES
from prunetune.pruning.strategies.base import Strategy
from prunetune.recipes.planning import build_plan
from prunetune.recipes.schema import Recipe


def test_a_strategy_over_its_budget_is_refused_when_the_plan_is_made(shared, monkeypatch) -> None:
    config, base, table, _space = shared

    def generous(groups, *, rule, macs_budget=None, **_):
        return keep_for_budget(groups, min(1.0, macs_budget * 1.3), rule=rule)  # 30% over the budget

    monkeypatch.setitem(STRATEGIES._items, "generous", Strategy("generous", generous))
    def recipe(allocation):
        return Recipe.from_dict({**config.recipe.to_dict(), "criterion": "l1", "allocation": allocation})

    with pytest.raises(BudgetExceededError, match=r"^allocation strategy 'generous' keeps 0\.6\d* of the dense MACs, "
                                                  r"above allocation\.macs_budget 0\.5; a strategy must stay within"):
        build_plan(recipe({"strategy": "generous", "macs_budget": 0.5}), base, table)
    assert build_plan(recipe({"macs_budget": 0.5}), base, table).macs_ratio <= 0.5


def test_a_search_naming_a_plugin_entry_is_refused_before_any_work(make_config, tmp_path) -> None:
    """The trials' Ray workers import prunetune, not the plugin: every candidate and trial failed on the
    unknown name, after the data, the scoring and Ray's start."""
    from dataclasses import dataclass

    from prunetune.exceptions import ConfigError
    from prunetune.pruning.criteria import CRITERIA, WEIGHT, Criterion, register
    from prunetune.search import run_search

    @dataclass(frozen=True)
    class Mine(Criterion):
        def needs(self, params):
            return frozenset({WEIGHT})

        def from_weight(self, weight, **params):
            return weight.detach().reshape(weight.shape[0], -1).abs().sum(1).double()

    register(Mine("mine_for_the_worker_test"))
    try:
        assert CRITERIA.plugins() == {"mine_for_the_worker_test": __name__}
        config = make_config(space={"ratios": "uniform", "criteria": ["l1", "mine_for_the_worker_test"]})
        with pytest.raises(ConfigError, match=r"^criterion 'mine_for_the_worker_test' is registered by "
                                              rf"'{__name__}' in this process only; a search's trials run in Ray"):
            run_search(config, show_progress=False)
        assert not (tmp_path / "mlflow.db").exists()
    finally:
        CRITERIA._items.pop("mine_for_the_worker_test", None)
        CRITERIA._plugins.pop("mine_for_the_worker_test", None)


def test_a_strategy_that_ignores_round_to_is_refused_and_fails_its_contract(shared, monkeypatch) -> None:
    """The recipe's round_to was dropped without a word, and check_strategy passed such a strategy."""
    from prunetune.exceptions import ConfigError
    from prunetune.pruning.allocation import KeepRule
    from prunetune.testing import check_strategy

    config, base, table, _space = shared

    def unrounded(groups, *, rule, macs_budget=None, **_):
        return keep_for_budget(groups, macs_budget, rule=KeepRule(min_keep=rule.min_keep, max_ratio=rule.max_ratio))

    monkeypatch.setitem(STRATEGIES._items, "unrounded", Strategy("unrounded", unrounded))
    recipe = Recipe.from_dict({**config.recipe.to_dict(), "criterion": "l1",
                               "allocation": {"strategy": "unrounded", "macs_budget": 0.5, "round_to": 4}})
    with pytest.raises(ConfigError, match=r"^allocation strategy 'unrounded' keeps \d+ of the \d+ channels of '.*', "
                                          r"which the keep rule \(min_keep 1, round_to 4, max_ratio 0\.8\) does not"):
        build_plan(recipe, base, table)
    with pytest.raises(AssertionError, match=r"not a count the keep rule allows \(round_to=4"):
        check_strategy("unrounded")
