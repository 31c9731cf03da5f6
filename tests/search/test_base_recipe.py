"""A search's base recipe needs no allocation: the search's budget lives in its settings alone, each
trial sizes its own plan (and exports it), a prune recipe still needs one, and a search interrupted
while the budget was still injected into the base recipe (state version 1) resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunetune.exceptions import ConfigError
from prunetune.pruning.allocation import MacsBudget
from prunetune.recipes import pipeline
from prunetune.recipes.schema import Recipe
from prunetune.search import run_trial
from prunetune.search.resume import STATE_FILE, recorded_config, resume_state, write_state
from prunetune.spaces import RandomTrial, trial_recipe
from search.conftest import TINY_RECIPE

STATE_V1 = Path(__file__).parent / "data" / "state_v1_8c351a4.json"  # written by the code at 8c351a4
NO_ALLOCATION = "recipe needs 'allocation' (e.g. allocation: {ratio: 0.5}) unless it carries a 'plan'"


def test_the_base_recipe_has_no_allocation_and_each_trial_its_own(shared) -> None:
    config, base, table, space = shared
    assert config.recipe.allocation is None and "allocation" not in config.recipe.to_dict()
    assert "allocation" not in config.to_dict()["recipe"] and "allocation" not in config.identity()["recipe"]
    assert config.settings.budget == MacsBudget(0.5)
    trial = space.define(RandomTrial(3))
    result = run_trial(trial, base, table)
    a = result.recipe.allocation
    assert a is not None and a.macs_budget == trial["target_macs"] <= config.settings.macs_budget
    assert result.metrics["macs_ratio"] <= a.macs_budget + 1e-12
    assert a.rule == config.recipe.rule  # the default keep rule (max_ratio 0.8), as the injected allocation had
    replay = Recipe.from_dict(result.report()["recipe"])  # a complete prune recipe, read by the plain schema
    assert replay.allocation == a and replay == result.recipe


@pytest.mark.parametrize("given", [{"min_keep": 2, "max_ratio": 0.6},  # the keep rule alone
                                   {"macs_budget": 0.5, "min_keep": 2, "max_ratio": 0.6}])  # as before: accepted
def test_a_base_recipe_allocation_gives_the_search_its_keep_rule(make_config, given) -> None:
    config = make_config(recipe={**TINY_RECIPE, "allocation": given})
    assert (config.recipe.rule.min_keep, config.recipe.rule.max_ratio) == (2, 0.6)
    assert config.recipe.to_dict()["allocation"] == given
    from prunetune.search import make_space, probe_groups

    groups = probe_groups(config)
    trial = make_space(config, groups).define(RandomTrial(0))
    a = trial_recipe(config.recipe, trial, groups).allocation
    assert (a.min_keep, a.max_ratio, a.macs_budget) == (2, 0.6, trial["target_macs"])
    with pytest.raises(ConfigError, match="allocation needs one of"):  # a plain recipe must size its plan
        Recipe.from_dict({**TINY_RECIPE, "criterion": "l1", "allocation": {"min_keep": 2}})


def test_what_of_a_reused_recipe_the_trials_do_not_use_is_said(make_config, caplog) -> None:
    """A recipe file reused as the base recipe: its criterion and its budget were dropped without a word."""
    with caplog.at_level("WARNING", logger="prunetune"):
        make_config(recipe={**TINY_RECIPE, "criterion": "l1", "allocation": {"macs_budget": 0.3, "max_ratio": 0.7}})
    assert ("the base recipe's criterion (l1) is not what the trials use: they blend the space's criteria "
            "(capacity, l1); to search l1 alone, set space.criteria: [l1]") in caplog.text
    assert ("the base recipe's allocation macs_budget is not used: every trial gets its own allocation under the "
            "search's macs_budget and space.allocations; only min_keep, round_to, max_ratio apply there") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="prunetune"):  # what the trials use says nothing
        make_config(recipe={**TINY_RECIPE, "criterion": {"blend": {"l1": 1, "capacity": 2}},
                            "allocation": {"max_ratio": 0.7}})
        make_config(recipe={**TINY_RECIPE, "criterion": {"name": "capacity", "params": {"bins": 64}}})
        make_config(recipe=TINY_RECIPE)
    assert "base recipe" not in caplog.text, caplog.text


@pytest.mark.parametrize("criterion, fix", [
    ({"name": "chip", "params": {"max_memory_mb": 512.0}}, r"add 'chip' to space.criteria"),
    ({"blend": {"l1": 1}, "params": {"cmi": {"samples": 64}}},  # no cmi_* cut-off in the space reads it
     r"add 'cmi' to space.criteria or an allocation that reads it \(cmi_cumulative, cmi_knee, cmi_marginal\) to "
     "space.allocations"),
], ids=["not-in-space", "not-read"])
def test_base_recipe_params_of_a_criterion_the_search_does_not_use_are_an_error(make_config, criterion, fix) -> None:
    # the space scores capacity and l1 (ratios or global allocations): these params were dropped without a word
    name = criterion.get("name", "cmi")
    with pytest.raises(ConfigError, match=rf"^the base recipe gives criterion params for '{name}', which this search "
                                          rf"does not use \(it scores capacity, l1\); remove them or {fix}$"):
        make_config(recipe={**TINY_RECIPE, "criterion": criterion})
    used = make_config(recipe={**TINY_RECIPE, "criterion": {"name": "capacity", "params": {"bins": 64}}})
    assert used.recipe.criterion.params == {"capacity": {"bins": 64}}  # a criterion of the space: kept

def test_a_prune_recipe_without_allocation_is_the_same_error(tmp_path, capsys) -> None:
    recipe = {**TINY_RECIPE, "criterion": "l1"}
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict(recipe)
    assert str(info.value) == NO_ALLOCATION
    assert Recipe.from_dict(recipe, base=True).allocation is None  # only where a search builds it
    with pytest.raises(ConfigError, match="must not carry a 'plan'"):
        Recipe.from_dict({**recipe, "plan": "p.json"}, base=True)
    from prunetune.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["prune", "--recipe", str(path), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert NO_ALLOCATION in err and "Traceback" not in err


def test_a_base_recipe_alone_fails_before_any_work(make_config, monkeypatch) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("the dense model was prepared for a recipe that cannot run")

    monkeypatch.setattr(pipeline, "prepare", no_work)
    with pytest.raises(ConfigError, match="has no 'allocation'.*add allocation"):
        pipeline.run_recipe(make_config().recipe, show_progress=False)
    keep_rule_only = make_config(recipe={**TINY_RECIPE, "allocation": {"round_to": 2}}).recipe
    with pytest.raises(ConfigError, match="allocation needs one of"):
        pipeline.run_recipe(keep_rule_only, show_progress=False)


def _old_state(tmp_path: Path) -> dict:
    """The state file 8c351a4 wrote for ``make_config()`` (its paths moved to ``tmp_path``)."""
    return json.loads(STATE_V1.read_text().replace("/OLD-CWD", str(tmp_path)))


def test_a_search_interrupted_before_the_change_resumes_with_the_same_budget_only(make_config, tmp_path) -> None:
    config = make_config()
    state = _old_state(tmp_path)
    assert state["version"] == 1 and state["identity"]["recipe"]["allocation"] == {"macs_budget": 0.5}
    exp = config.settings.experiment_dir
    exp.mkdir(parents=True)
    (exp / STATE_FILE).write_text(json.dumps(state))
    assert resume_state(config, exp, None) == state
    for other, where in ((make_config(macs_budget=0.4), r"'recipe.allocation.macs_budget' \(0.5, now 0.4\)"),
                         (make_config(recipe={**TINY_RECIPE, "seed": 1}), r"'recipe.seed' \(0, now 1\)")):
        with pytest.raises(ConfigError, match="was started with another " + where):  # the key, not the recipe
            resume_state(other, exp, None)
    # with a budget given in the base recipe's own allocation, 8c351a4 recorded that allocation as is
    given = make_config(recipe={**TINY_RECIPE, "allocation": {"macs_budget": 0.5}})
    assert resume_state(given, exp, None) == state


def test_a_state_written_now_records_the_base_recipe_as_given(make_config, tmp_path) -> None:
    config = make_config()
    exp = config.settings.experiment_dir
    exp.mkdir(parents=True)
    write_state(exp, {"identity": config.identity(), "parent_run_id": "r", "study_name": "tiny", "finished": False})
    state = json.loads((exp / STATE_FILE).read_text())
    assert state["version"] == 3 and "allocation" not in state["identity"]["recipe"]
    assert resume_state(config, exp, None) == state
    old = _old_state(tmp_path)["identity"]
    now = state["identity"]["recipe"]  # what changed since 8c351a4: the allocation, and recalibrate_bn's default
    assert old["recipe"]["finetune"] == {**now["finetune"], "recalibrate_bn": False}
    assert {k: v for k, v in old["recipe"].items() if k not in ("allocation", "finetune")} == \
        {k: v for k, v in now.items() if k != "finetune"}
    assert {k: v for k, v in old.items() if k != "recipe"} == {k: v for k, v in state["identity"].items()
                                                               if k != "recipe"}
    with pytest.raises(ConfigError, match="was started with another 'macs_budget'"):
        resume_state(make_config(macs_budget=0.4), exp, None)



def test_a_search_started_before_recalibration_became_the_default_resumes_without_it(make_config, tmp_path) -> None:
    """States before version 3 were written when finetune.recalibrate_bn defaulted to false: such a
    search resumes, and its remaining trials fine-tune as its first ones did; a state written now
    records the value, and resuming it with another is an error."""
    config = make_config()
    assert config.recipe.finetune.recalibrate_bn is True  # the default now
    state = _old_state(tmp_path)
    exp = config.settings.experiment_dir
    exp.mkdir(parents=True)
    (exp / STATE_FILE).write_text(json.dumps(state))
    assert resume_state(config, exp, None) == state
    assert recorded_config(config, state).recipe.finetune.recalibrate_bn is False
    assert recorded_config(config, None) is config
    (exp / STATE_FILE).unlink()
    write_state(exp, {"identity": config.identity(), "parent_run_id": "r", "study_name": "tiny", "finished": False})
    now = json.loads((exp / STATE_FILE).read_text())
    assert recorded_config(config, now) is config
    off = make_config(recipe={**TINY_RECIPE, "finetune": {**TINY_RECIPE.get("finetune", {}), "recalibrate_bn": False}})
    with pytest.raises(ConfigError, match=r"another 'recipe.finetune.recalibrate_bn' \(true, now false\)"):
        resume_state(off, exp, None)
    # the old search finished after the change (its end writes a version-3 state recording false):
    # the same command again says it finished, not that the recipe changed
    (exp / STATE_FILE).unlink()
    write_state(exp, {"identity": recorded_config(config, state).identity(), "parent_run_id": "r",
                      "study_name": "tiny", "finished": True})
    with pytest.raises(ConfigError, match="already finished"):
        resume_state(config, exp, None)
    # asked again for more trials: the count is the one it ran (4), not the one asked now
    with pytest.raises(ConfigError, match=r"already finished \(4 trials\)"):
        resume_state(make_config(trials=7), exp, None)


def test_cmi_params_in_a_base_recipe_whose_own_allocation_reads_no_cmi(make_config) -> None:
    """A base recipe's allocation strategy is replaced by each trial's: its ``ratios`` must not
    refuse the ``cmi`` parameters a ``cmi_knee`` of the space reads (it did, at recipe parse)."""
    recipe = {**TINY_RECIPE, "allocation": {"ratio": 0.5},
              "criterion": {"blend": {"l1": 1}, "params": {"cmi": {"samples": 32}}}}
    config = make_config(recipe=recipe, space={"criteria": ["l1"], "allocations": ["ratios", "cmi_knee"]})
    assert config.recipe.criterion.params == {"cmi": {"samples": 32}}
    with pytest.raises(ConfigError, match="does not use"):  # without a reader in the space, still an error
        make_config(recipe=recipe, space={"criteria": ["l1"], "allocations": ["ratios"]})
