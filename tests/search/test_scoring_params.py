"""A criterion only the allocation strategy reads (``cmi`` for ``cmi_knee``) is scored with the same
parameters by a search and by the recipe of one of its trials run on its own.

The search scored it with the base recipe's ``cmi`` parameters (:func:`space_criteria`), but a
trial's recipe dropped them (only the blend's criteria kept their parameters), so
:func:`recipe_criteria` of that recipe (``prunetune prune`` / ``score`` without the plan) scored
``cmi`` with its defaults: another curve, possibly another knee. Both now go through
:func:`prunetune.pruning.strategies.scoring_params`, and the trial's recipe carries the parameters.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from prunetune.exceptions import ConfigError
from prunetune.recipes.planning import recipe_criteria
from prunetune.recipes.schema import Recipe
from prunetune.search import parse_search_config, probe_groups
from prunetune.spaces import RandomTrial, build_space, space_criteria
from prunetune.spaces.translate import trial_recipe
from search.conftest import TINY_RECIPE

SPACE = {"ratios": "uniform", "criteria": ["l1"], "normalizers": ["rank"], "allocations": ["cmi_knee"]}


def _search_and_trial(tmp_path, criterion: Any, space: dict | None = None):
    recipe = {**copy.deepcopy(TINY_RECIPE), "criterion": criterion}
    config = parse_search_config({"recipe": recipe, "space": space or SPACE, "macs_budget": 0.5}, cwd=tmp_path)
    groups = probe_groups(config)
    space_ = build_space(config.space, groups, budget=0.5)
    trial = trial_recipe(config.recipe, space_.define(RandomTrial(0)), groups)
    assert trial.sized().strategy == "cmi_knee"
    # what the search scores (runner: space_criteria with the base recipe's parameters) and what the
    # trial's recipe scores on its own
    return space_criteria(config.space, config.recipe.criterion.params), recipe_criteria(trial), trial


# the base recipe gives cmi parameters through a blend that names cmi (the only way before), or
# without blending cmi at all
@pytest.mark.parametrize("criterion", [
    {"blend": {"l1": 1, "cmi": 1}, "params": {"cmi": {"samples": 64}}},
    {"blend": {"l1": 1, "cmi": 1}, "params": {"cmi": {"alpha": 2.0, "max_spatial": 16}}},
    {"blend": {"l1": 1, "cmi": 1}, "params": {"cmi": {"condition": "previous"}}},  # refuses stop_at_knee
    {"blend": {"l1": 1, "cmi": 1}, "params": {"cmi": {"stop_at_knee": False}}},
    {"blend": {"l1": 1}, "params": {"cmi": {"samples": 64}}},
    "l1",
], ids=["samples", "alpha", "condition", "no-knee-stop", "cmi-not-blended", "no-cmi-params"])
def test_a_trials_recipe_scores_cmi_with_the_search_parameters(tmp_path, criterion) -> None:
    searched, replayed, trial = _search_and_trial(tmp_path, criterion)
    assert replayed == searched
    own = (criterion.get("params", {}).get("cmi", {}) if isinstance(criterion, dict) else {})
    assert {k: searched["cmi"][k] for k in own} == own  # the base recipe's parameters, not the defaults
    knee_stop = not own or set(own) <= {"samples", "alpha", "max_spatial"}
    assert searched["cmi"]["stop_at_knee"] is knee_stop  # set by the pipeline where cmi_knee allows it
    assert Recipe.from_dict(trial.to_dict()) == trial  # the exported form carries them


def test_the_scores_are_the_same_too(tmp_path) -> None:
    """Scored apart (no cache), the search's table and the trial's recipe give the same cmi extras."""
    from prunetune.recipes.pipeline import prepare, score_table

    criterion = {"blend": {"l1": 1, "cmi": 1}, "params": {"cmi": {"samples": 32, "max_spatial": 4}}}
    searched, replayed, trial = _search_and_trial(tmp_path, criterion)
    trial = trial.with_changes(calibration=dataclasses.replace(trial.calibration, use_cache=False))
    base = prepare(trial, show_progress=False)
    a = score_table(base, searched, show_progress=False)
    b = score_table(base, replayed, show_progress=False)
    assert a.fingerprint == b.fingerprint
    for group, values in a.extras["cmi"].items():
        for key, value in values.items():
            assert b.extras["cmi"][group][key].tolist() == value.tolist(), (group, key)


def test_a_recipe_may_give_parameters_of_the_criterion_its_strategy_reads(tmp_path) -> None:
    def recipe(strategy: str) -> Recipe:
        return Recipe.from_dict({**copy.deepcopy(TINY_RECIPE), "criterion": {"blend": {"l1": 1},
                                 "params": {"cmi": {"samples": 64}}},
                                 "allocation": {"strategy": strategy, "macs_budget": 0.5}})

    knee = recipe("cmi_knee")
    assert recipe_criteria(knee)["cmi"]["samples"] == 64 and recipe_criteria(knee)["cmi"]["stop_at_knee"] is True
    with pytest.raises(ConfigError, match=r"parameters given for 'cmi', which is not in the blend \['l1'\] and not "
                                          r"read by allocation strategy 'ratios'"):
        recipe("ratios")
    with pytest.raises(ConfigError, match=r"parameters given for 'fpgm', which is not in the blend \['l1'\] and no "
                                          "allocation strategy reads"):
        Recipe.from_dict({**copy.deepcopy(TINY_RECIPE), "criterion": {"blend": {"l1": 1}, "params": {"fpgm": {}}},
                          "allocation": {"macs_budget": 0.5}})
