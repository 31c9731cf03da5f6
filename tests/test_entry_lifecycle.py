"""Registered entries own their lifecycle: parse-time validation, their search space, their decoding,
and the contract suites of :mod:`prunetune.testing` iterate the registries (a plugin runs the same)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from prunetune.exceptions import ConfigError, UnknownNameError
from prunetune.models import create_model
from prunetune.pruning.groups import find_groups
from prunetune.pruning.schedules import SCHEDULES, EpochState, Floats, Schedule
from prunetune.pruning.strategies import STRATEGIES
from prunetune.recipes.schema import Recipe
from prunetune.search import parse_search_config
from prunetune.spaces.base import RandomTrial
from prunetune.spaces.presets import RATIO_SPACES, RatioPreset
from prunetune.spaces.spec import SpaceSpec, build_space
from prunetune.spaces.translate import trial_recipe
from prunetune.testing import check_all, check_ratio_preset, check_schedule

RECIPE = {"model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1}, "data": "digits", "criterion": "l1",
          "allocation": {"ratio": 0.1}}


@pytest.mark.parametrize(("schedule", "match"), [
    ({"name": "sfp", "hardfraction": 2}, r"'hardfraction'; its parameters: criterion, hard_fraction, pool"),
    ({"name": "sfp", "hard_fraction": 2}, r"hard_fraction must be a number in \[0, 1\], got 2"),
    ({"name": "iterative", "steps": 0}, r"steps must be an integer >= 1"),
    ({"name": "ghfp", "ramp": "linear"}, r"ramp must be one of \['cubic', 'cosine'\]"),
    ({"name": "ghfp", "alpha": "x"}, r"schedule 'ghfp': parameters \{'alpha': 'x'\} do not work"),
])
def test_bad_schedule_parameters_fail_when_the_recipe_is_read(schedule, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Recipe.from_dict({**RECIPE, "schedule": schedule})
    with pytest.raises(ConfigError, match=match):  # a search config reads its recipe the same way
        parse_search_config({"macs_budget": 0.5, "recipe": {**RECIPE, "schedule": schedule}})


def test_a_misspelt_parameter_gets_a_did_you_mean() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'hard_fraction'\?"):
        Recipe.from_dict({**RECIPE, "schedule": {"name": "sfp", "hardfraction": 0.5}})


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_contract(name: str) -> None:
    check_schedule(name)


@pytest.mark.parametrize("name", RATIO_SPACES.names())
def test_ratio_preset_contract(name: str) -> None:
    check_ratio_preset(name)


def test_check_all_covers_every_registry() -> None:
    checked = check_all()  # the strategy contract itself runs per budget and rule in test_allocation_strategies
    for kind, registry in (("schedule", SCHEDULES), ("ratios", RATIO_SPACES), ("strategy", STRATEGIES)):
        assert {f"{kind}:{name}" for name in registry.names()} <= set(checked)


def _linear(epoch: int, total: int, *, hard_fraction: float) -> EpochState:
    return EpochState(prune=1.0, hard=1.0 if epoch >= total - 1 else hard_fraction)


def test_a_new_schedule_is_one_entry_and_its_parameter_is_searched(monkeypatch) -> None:
    entry = Schedule("linear", _linear, {"hard_fraction": 0.5}, space={"hard_fraction": Floats(0.1, 0.9)})
    monkeypatch.setitem(SCHEDULES._items, "linear", entry)
    check_schedule("linear")
    groups = find_groups(create_model("tiny_resnet"), (3, 16, 16))
    space = build_space(SpaceSpec(schedules=("linear",)), groups, budget=0.6)
    config = space.define(RandomTrial(0))
    recipe = trial_recipe(Recipe.from_dict({**RECIPE, "model": {"name": "tiny_resnet"}}), config, groups)
    assert recipe.schedule.name == "linear" and 0.1 <= recipe.schedule.params["hard_fraction"] <= 0.9


def test_a_schedule_searching_an_undeclared_parameter_breaks_the_contract(monkeypatch) -> None:
    entry = Schedule("bad", _linear, {"hard_fraction": 0.5}, space={"hardness": Floats(0.1, 0.9)})
    monkeypatch.setitem(SCHEDULES._items, "bad", entry)
    with pytest.raises(AssertionError, match="'hardness', which is not one of its parameters"):
        check_schedule("bad")


def test_a_new_ratio_preset_is_one_entry(monkeypatch) -> None:
    groups = find_groups(create_model("tiny_resnet"), (3, 16, 16))
    halves = RatioPreset("halves", lambda gs: {g: "first" if i < len(gs.names) // 2 else "second"
                                              for i, g in enumerate(gs.names)})
    monkeypatch.setitem(RATIO_SPACES._items, "halves", halves)
    check_ratio_preset("halves", groups)
    config = build_space(SpaceSpec(ratios="halves", allocations=("ratios",)), groups, budget=0.6).define(RandomTrial(1))
    ratios = trial_recipe(Recipe.from_dict({**RECIPE, "model": {"name": "tiny_resnet"}}), config, groups).allocation.ratios
    assert set(ratios) == set(groups.names) and {"ratio.first", "ratio.second"} <= set(config)


def test_a_ratio_preset_that_misses_a_group_breaks_the_contract(monkeypatch) -> None:
    broken = RatioPreset("broken", lambda gs: {g: "only" for g in gs.names[:1]})
    monkeypatch.setitem(RATIO_SPACES._items, "broken", broken)
    with pytest.raises(KeyError):
        check_ratio_preset("broken")


def test_prunetune_testing_imports_without_pytest() -> None:
    code = ("import sys; import prunetune.testing; bad = [m for m in ('pytest', 'ray', 'optuna', 'mlflow') "
            "if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(("data", "match"), [
    ({"name": "digits", "imagesize": 16}, r"dataset 'digits' has no parameter 'imagesize'; its parameters are: image_size"),
    ("cifar1", r"unknown dataset 'cifar1'; did you mean 'cifar10'"),
])
def test_bad_dataset_names_and_parameters_fail_when_the_recipe_is_read(data, match) -> None:
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        Recipe.from_dict({**RECIPE, "data": data})


def test_an_unknown_registered_model_fails_when_the_recipe_is_read() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet2'; did you mean"):
        Recipe.from_dict({**RECIPE, "model": {"name": "resnet2"}})
    Recipe.from_dict({**RECIPE, "model": {"name": "tv:resnet18"}})  # resolved when built, not here
