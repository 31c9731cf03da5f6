"""The budget by construction: every sampled config's plan fits its target, which fits the budget;
an impossible budget fails before any trial; trial config -> recipe."""

from __future__ import annotations

import re

import pytest
import torch

from prunetune.exceptions import BudgetInfeasibleError, ConfigError
from prunetune.models import create_model
from prunetune.pruning.allocation import KeepRule, smallest_fraction
from prunetune.pruning.groups import find_groups
from prunetune.pruning.macs import analytic_cost
from prunetune.pruning.strategies import STRATEGIES
from prunetune.recipes.schema import Recipe
from prunetune.spaces import RATIO_FLOOR, RandomTrial, SpaceSpec, build_space, target_range, trial_recipe

BASE = Recipe.from_dict({
    "model": {"name": "resnet20", "num_classes": 10, "in_channels": 1}, "data": "digits",
    "criterion": {"name": "random", "params": {"seed": 3}}, "allocation": {"ratio": 0.5},
    "schedule": {"name": "sfp", "criterion": "l1"}, "finetune": {"epochs": 1, "lr": 0.05}})


@pytest.fixture(scope="module")
def groups():
    return find_groups(create_model("resnet20", num_classes=10, in_channels=1), (1, 16, 16))


def _keep(recipe: Recipe, groups):
    a = recipe.allocation
    scores = {g.name: torch.rand(g.channels, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)}
    return STRATEGIES.get(a.strategy)(groups, rule=a.rule, ratio=a.ratio, ratios=a.ratios,
                                      default=a.default, macs_budget=a.macs_budget, params=a.params, scores=scores)


@pytest.mark.parametrize("preset", ["uniform", "per_stage", "per_group"])
@pytest.mark.parametrize("rule", [KeepRule(), KeepRule(min_keep=2, round_to=4)])
def test_every_sampled_plan_fits_its_target_and_the_budget(groups, preset: str, rule: KeepRule) -> None:
    budget = 0.4
    base = BASE.with_changes(allocation=BASE.allocation.__class__(ratio=0.5, min_keep=rule.min_keep,
                                                                  round_to=rule.round_to, max_ratio=rule.max_ratio))
    space = build_space(SpaceSpec(ratios=preset, ratio_range=(0.0, 0.9), min_fraction=1e-6), groups,
                        budget=budget, rule=rule)
    low, _ = target_range(SpaceSpec(min_fraction=1e-6), groups, budget, rule)
    assert low == pytest.approx(smallest_fraction(groups, rule), rel=1e-6)  # the floor, not 1e-6
    dense = analytic_cost(groups).macs
    for seed in range(60):
        config = space.define(RandomTrial(seed))
        if seed % 10 == 0:  # the extremes: every ratio 0 and the lowest target
            config = {**config, "target_macs": low, **{k: 0.0 for k in config if k.startswith("ratio.")}}
        keep = _keep(trial_recipe(base, config, groups), groups)
        fraction = analytic_cost(groups, keep).macs / dense
        assert fraction <= config["target_macs"] + 1e-12 <= budget + 1e-12


def test_impossible_budget_fails_naming_the_smallest_fraction(groups) -> None:
    floor = smallest_fraction(groups)
    with pytest.raises(BudgetInfeasibleError) as info:
        build_space(SpaceSpec(), groups, budget=floor / 2)
    reported = float(re.search(r"smallest reachable fraction (\d\.\d+)", str(info.value)).group(1))
    assert reported == pytest.approx(floor, abs=1e-4)
    assert "--macs-budget" in str(info.value)


def test_min_fraction_above_the_budget_is_an_error(groups) -> None:
    with pytest.raises(ConfigError, match="must not exceed the MACs budget"):
        build_space(SpaceSpec(min_fraction=0.8), groups, budget=0.5)


def test_trial_recipe_applies_every_sampled_part(groups) -> None:
    config = {"target_macs": 0.3, "allocation": "ratios", "ratios": "per_stage", "ratio.stage1": 0.0,
              "ratio.stage2": 0.5, "ratio.stage3": 0.7, "weight.random": 0.2, "weight.fpgm": 0.8,
              "normalizer": "zscore", "schedule": "hard", "finetune.lr": 0.02}
    recipe = trial_recipe(BASE, config, groups)
    assert recipe.criterion.weights == {"random": 0.2, "fpgm": 0.8} and recipe.criterion.normalizer == "zscore"
    assert recipe.criterion.params == {"random": {"seed": 3}}  # base params kept for criteria in the blend
    assert recipe.allocation.macs_budget == 0.3 and recipe.allocation.strategy == "ratios"
    assert recipe.allocation.ratios["conv1"] == RATIO_FLOOR  # 0 is floored so the target stays reachable
    assert recipe.allocation.ratios["layer2.1.conv1"] == 0.5 and recipe.allocation.ratios["layer3.0.conv2"] == 0.7
    assert recipe.schedule.name == "hard" and recipe.schedule.params == {}
    assert recipe.finetune.lr == 0.02 and recipe.finetune.epochs == 1
    assert (recipe.model, recipe.data, recipe.seed, recipe.pretrain) == (BASE.model, BASE.data, BASE.seed, BASE.pretrain)
    assert Recipe.from_dict(recipe.to_dict()) == recipe  # a valid recipe


def test_trial_recipe_keeps_base_schedule_params_and_weighs_all_zero_equally(groups) -> None:
    config = {"target_macs": 0.3, "ratios": "uniform", "weight.l1": 0.0, "weight.fpgm": 0.0, "schedule": "sfp"}
    recipe = trial_recipe(BASE, config, groups)
    assert recipe.schedule.params == {"criterion": "l1"}
    assert recipe.criterion.weights == {"l1": 1.0, "fpgm": 1.0}
    assert recipe.allocation.ratios == {}


def test_cutoff_allocation_builds_a_strategy_recipe(groups) -> None:
    recipe = trial_recipe(BASE, {"target_macs": 0.3, "allocation": "cmi_knee", "weight.l1": 1.0}, groups)
    assert recipe.allocation.strategy == "cmi_knee" and recipe.allocation.macs_budget == 0.3
    assert recipe.allocation.ratios == {}


@pytest.mark.parametrize("config, match", [
    ({"ratios": "uniform"}, "needs 'target_macs'"),
    ({"target_macs": 0.3, "ratios": "per_stage", "ratio.stage1": 0.1}, "needs 'ratio.stage2'"),
    ({"target_macs": 0.3, "ratios": "per_layer"}, "expected uniform, per_stage or per_group"),
    ({"target_macs": 0.3, "ratios": "per_group", **{f"ratio.{n}": 1.5 for n in ["conv1"]}}, "needs 'ratio."),
])
def test_trial_recipe_errors(groups, config, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        trial_recipe(BASE, config, groups)
