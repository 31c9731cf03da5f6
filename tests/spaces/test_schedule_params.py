"""Schedule parameters are sampled conditionally and replay into the trial recipe."""

from __future__ import annotations

import pytest

from prunetune.models import create_model
from prunetune.pruning.groups import find_groups
from prunetune.pruning.schedules import SCHEDULES
from prunetune.recipes.schema import Recipe
from prunetune.spaces.base import RandomTrial
from prunetune.spaces.spec import SpaceSpec, build_space
from prunetune.spaces.translate import trial_recipe

BASE = Recipe.from_dict({"model": {"name": "tiny_resnet"}, "data": {"name": "synthetic"},
                         "criterion": "l1", "allocation": {"ratio": 0.1}})


@pytest.mark.parametrize("seed", range(12))
def test_sampled_schedule_parameters_are_valid_and_replayed(seed) -> None:
    groups = find_groups(create_model("tiny_resnet"), (3, 16, 16))
    spec = SpaceSpec(schedules=("hard", "sfp", "asfp", "ghfp", "iterative"))
    space = build_space(spec, groups, budget=0.6)
    config = space.define(RandomTrial(seed))
    recipe = trial_recipe(BASE, config, groups)
    name = recipe.schedule.name
    expected = {"hard": set(), "sfp": {"hard_fraction"}, "asfp": {"hard_fraction"},
                "ghfp": {"ramp", "base", "alpha"}, "iterative": {"steps"}}[name]
    assert set(recipe.schedule.params) == expected
    SCHEDULES.get(name).resolve(recipe.schedule.params)  # valid for the schedule: raises otherwise
    other = [k for k in config if k.startswith("schedule.") and not k.startswith(f"schedule.{name}.")]
    assert not other  # only the chosen schedule's branch was sampled
