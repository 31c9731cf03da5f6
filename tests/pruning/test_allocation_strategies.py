"""Every allocation strategy under a MACs budget: within budget, within [floor, C] per group, maximal.

Plus the projection's shape (keep fractions scaled, no starved group) and ``global`` on hand cases.
"""

from __future__ import annotations

import random

import pytest
import torch

from prunetune.exceptions import BudgetExceededError, BudgetInfeasibleError, ConfigError
from prunetune.models import create_model
from prunetune.pruning.allocation import KeepRule, keep_for_budget, keep_from_ratios, smallest_fraction
from prunetune.pruning.groups import find_groups
from prunetune.pruning.strategies import STRATEGIES
from prunetune.spaces import stage_of
from prunetune.testing.entries import check_keep, check_strategy, strategy_inputs


@pytest.fixture(scope="module")
def groups():
    return find_groups(create_model("resnet20", in_channels=1), (1, 16, 16))


def _inputs(groups, seed=0):
    return strategy_inputs(groups, seed)


def _assert_contract(groups, keep, budget, rule):
    check_keep(groups, keep, budget, rule)  # prunetune.testing: within budget, within [floor, C], maximal


@pytest.mark.parametrize("strategy", STRATEGIES.names())
@pytest.mark.parametrize("budget", [0.6, 0.35, 0.15])
@pytest.mark.parametrize("rule", [KeepRule(max_ratio=0.8), KeepRule(min_keep=2, round_to=4, max_ratio=0.9)],
                         ids=["max0.8", "round4"])
def test_every_strategy_meets_the_budget_with_a_maximal_plan(groups, strategy, budget, rule) -> None:
    # prunetune.testing: the strategy's plan within budget, within [floor, C], maximal (check_keep)
    check_strategy(strategy, groups, budgets=(budget,), rules=(rule,))


def test_random_shapes_never_starve_a_group(groups) -> None:
    """Sampled per-stage shapes at targets across the range: nothing below (1 − max_ratio)·C, all maximal."""
    rng = random.Random(0)
    rule = KeepRule(max_ratio=0.8)
    stage = stage_of(groups)
    low = smallest_fraction(groups, rule)
    for _ in range(60):
        shape = {s: max(0.01, rng.uniform(0.0, 0.8)) for s in set(stage.values())}
        budget = rng.uniform(low * 1.001, 0.6)
        keep = keep_for_budget(groups, budget, relative={g: shape[s] for g, s in stage.items()}, rule=rule)
        _assert_contract(groups, keep, budget, rule)


def test_projection_scales_keep_fractions_in_the_sampled_shape(groups) -> None:
    """The issue's case: stage ratios 0.16/0.64/0.77 at 17.8% used to keep 11/16, 2/32, 3/64."""
    stage = stage_of(groups)
    ratios = {"stage1": 0.16, "stage2": 0.64, "stage3": 0.77}
    keep = keep_for_budget(groups, 0.178, relative={g: ratios[s] for g, s in stage.items()}, rule=KeepRule(max_ratio=0.8))
    frac = {s: [keep[g] / groups[g].channels for g, st in stage.items() if st == s] for s in ratios}
    assert min(frac["stage2"]) >= 0.2 and min(frac["stage3"]) >= 0.2
    assert min(frac["stage1"]) > max(frac["stage2"]) > 0  # the shape holds: stage 1 is cut least
    uniform = keep_for_budget(groups, 0.4, rule=KeepRule())
    assert len({round(k / groups[g].channels, 1) for g, k in uniform.items()}) <= 2  # one keep fraction


def test_max_ratio_bounds_explicit_ratios(groups) -> None:
    with pytest.raises(ConfigError, match="max_ratio"):
        keep_from_ratios(groups, {}, default=0.9, rule=KeepRule(max_ratio=0.8))
    assert smallest_fraction(groups, KeepRule(max_ratio=0.5)) > smallest_fraction(groups, KeepRule(max_ratio=0.9))
    with pytest.raises(BudgetInfeasibleError, match="max_ratio"):
        keep_for_budget(groups, 0.05, rule=KeepRule(max_ratio=0.5))


def test_global_keeps_the_best_normalised_channels_across_groups(groups) -> None:
    """Scores of one group dominate every other's after normalisation: it stays whole while budget allows."""
    scores = {g.name: torch.ones(g.channels) for g in groups}
    first = groups.groups[1].name
    scores[first] = torch.tensor([1.0] * (groups[first].channels - 1) + [1e-3])  # one weak channel
    rule = KeepRule(max_ratio=0.8)
    keep = STRATEGIES.get("global")(groups, rule=rule, macs_budget=0.5, scores=scores,
                                    params={"normalizer": "none"})
    _assert_contract(groups, keep, 0.5, rule)
    assert keep[first] < groups[first].channels or all(keep[g.name] == g.channels for g in groups)
    by_ratio = STRATEGIES.get("global")(groups, rule=rule, ratio=0.5, scores=scores, params={"normalizer": "max"})
    assert abs(sum(by_ratio.values()) - sum(g.channels for g in groups) / 2) <= 1
    with pytest.raises(ConfigError, match="normalizer"):
        STRATEGIES.get("global")(groups, rule=rule, macs_budget=0.5, scores=scores, params={"normaliser": "x"})


def test_global_prunes_more_where_scores_are_lower(groups) -> None:
    names = groups.names
    weak, strong = names[2], names[3]
    scores = {n: torch.rand(groups[n].channels, generator=torch.Generator().manual_seed(i)) + 1
              for i, n in enumerate(names)}
    scores[weak] = scores[weak] * 0.01 + torch.linspace(0, 0.5, groups[weak].channels)  # spread, low values
    keep = STRATEGIES.get("global")(groups, rule=KeepRule(max_ratio=0.8), macs_budget=0.5, scores=scores,
                                    params={"normalizer": "none"})
    assert keep[weak] / groups[weak].channels < keep[strong] / groups[strong].channels


def test_a_search_budget_exactly_at_the_floor_is_accepted(groups) -> None:
    from prunetune.spaces import SpaceSpec, target_range

    rule = KeepRule(max_ratio=0.8)
    floor = smallest_fraction(groups, rule)
    low, high = target_range(SpaceSpec(), groups, floor, rule)
    assert high == floor and low <= high


def _recipe(allocation):
    from prunetune.recipes.schema import Recipe

    return Recipe.from_dict({"model": {"name": "resnet20", "in_channels": 1}, "data": "digits", "criterion": "l1",
                             "allocation": allocation})


def test_a_carried_plan_above_the_recipe_budget_fails_before_any_training(groups) -> None:
    """An inline plan that keeps every channel under macs_budget 0.5 was counted only after the dense
    training, and the error blamed the analytic count."""
    from prunetune.pruning.plan import PruningPlan
    from prunetune.recipes.planning import check_allocation
    from prunetune.recipes.schema import Recipe

    def recipe(keep):
        from prunetune.pruning.macs import Cost

        plan = PruningPlan(kept={n: tuple(range(keep(groups[n].channels))) for n in groups.names},
                           channels={n: groups[n].channels for n in groups.names}, dense=Cost(1, 1),
                           pruned=Cost(1, 1), input_shape=tuple(groups.input_shape)).to_dict()
        return Recipe.from_dict({"model": {"name": "resnet20", "in_channels": 1}, "data": "digits", "criterion": "l1",
                                 "allocation": {"macs_budget": 0.5}, "plan": plan})

    with pytest.raises(BudgetExceededError, match="the recipe's plan keeps 1.0000 of the dense MACs"):
        check_allocation(recipe(lambda c: c), groups)
    check_allocation(recipe(lambda c: c // 2), groups)  # about a quarter of the MACs: within


def test_a_budget_that_relative_zeros_make_unreachable_fails_before_any_training(groups) -> None:
    """A relative ratio of 0 keeps a group whole under a budget: the feasibility check knows it."""
    from prunetune.recipes.planning import check_allocation

    with pytest.raises(BudgetInfeasibleError, match="kept whole by a relative ratio of 0") as err:
        check_allocation(_recipe({"macs_budget": 0.3, "ratios": {n: 0.0 for n in groups.names}}), groups)
    assert "raise allocation.max_ratio" not in str(err.value)
    check_allocation(_recipe({"macs_budget": 0.3, "ratios": {groups.names[0]: 0.0}, "default": 0.5}), groups)


@pytest.mark.parametrize(("allocation", "match"), [
    ({"strategy": "global", "macs_budget": 0.3, "normalizer": "bogus"}, "bogus"),
    ({"macs_budget": 0.3, "normalizer": "rank"}, "'ratios' takes no parameter 'normalizer'"),
    ({"strategy": "cmi_knee", "macs_budget": 0.3, "rho": 0.9}, "'cmi_knee' takes no parameter 'rho'; its parameters: scale"),
])
def test_strategy_parameters_are_checked_when_the_recipe_is_read(allocation, match) -> None:
    from prunetune.exceptions import PrunetuneError

    with pytest.raises(PrunetuneError, match=match):
        _recipe(allocation)


def test_a_plugin_strategys_declared_parameters_are_read_from_a_recipe(monkeypatch) -> None:
    """A strategy's register(params=...) were checked against the recipe's allocation, but the section
    admitted only the built-in strategies' keys: 'unknown key' for the plugin's own parameter. (The
    pipeline hands ``allocation.params`` to the strategy as ``params``.)"""
    from prunetune.pruning.strategies.base import Strategy

    def tempered(groups, *, rule, macs_budget=None, **_):
        return keep_for_budget(groups, macs_budget, rule=rule)

    monkeypatch.setitem(STRATEGIES._items, "tempered", Strategy("tempered", tempered, params=("temperature",)))
    recipe = _recipe({"strategy": "tempered", "macs_budget": 0.5, "temperature": 2.5})
    assert recipe.allocation.params == {"temperature": 2.5}
    assert recipe.allocation.to_dict()["temperature"] == 2.5  # an exported recipe keeps it
    with pytest.raises(ConfigError, match="'ratios' takes no parameter 'temperature'; its parameters: none"):
        _recipe({"macs_budget": 0.5, "temperature": 2.5})
    monkeypatch.delitem(STRATEGIES._items, "tempered")  # a replay without the plugin: the strategy is unknown
    from prunetune.exceptions import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"^unknown allocation strategy 'tempered'.*A plugin's allocation strategy\?"):
        _recipe({"strategy": "tempered", "macs_budget": 0.5, "temperature": 2.5})
