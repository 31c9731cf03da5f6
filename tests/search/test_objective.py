"""The trial objective without Ray: metrics, reports, the recorded plan, export → prune replay."""

from __future__ import annotations

import math

import pytest
import yaml

from prunetune.recipes.pipeline import run_recipe
from prunetune.recipes.schema import Recipe
from prunetune.search import TrialError, check_finite, run_trial
from prunetune.spaces import RandomTrial


def test_run_trial_measures_the_pruned_network_on_val(shared) -> None:
    config, base, table, space = shared
    trial = space.define(RandomTrial(5))
    reports: list[dict] = []
    result = run_trial(trial, base, table, report=reports.append)
    m = result.metrics
    assert set(m) >= {"accuracy", "test_accuracy", "macs", "params", "macs_ratio", "params_ratio", "target_macs"}
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["test_accuracy"] <= 1
    assert m["macs"] == result.plan.pruned.macs  # counted on the network == analytic from the plan
    assert m["macs_ratio"] <= trial["target_macs"] + 1e-12 <= config.settings.macs_budget + 1e-12
    epochs = config.recipe.finetune.epochs
    assert len(result.history) == epochs and len(reports) == epochs - 1  # the last epoch is the final result
    assert reports[0]["epoch"] == 1 and reports[0]["final"] is False and reports[0]["macs"] == m["macs"]
    assert result.recipe.finetune.lr == pytest.approx(trial["finetune.lr"])
    final = result.report()
    assert final["final"] is True and final["plan"] == result.plan.to_dict()
    assert Recipe.from_dict(final["recipe"]) == result.recipe


def test_soft_schedule_records_the_final_plan(shared) -> None:
    config, base, table, space = shared
    trial = {**space.define(RandomTrial(2)), "schedule": "sfp"}
    result = run_trial(trial, base, table)
    assert result.recipe.schedule.name == "sfp"
    assert result.metrics["macs"] == result.plan.pruned.macs  # the plan the network was cut with


@pytest.mark.parametrize("metrics", [{"accuracy": math.nan, "macs": 1.0}, {"accuracy": 0.5}, {"accuracy": 0.5,
                                                                                             "macs": math.inf}])
def test_non_finite_objectives_fail_the_trial(metrics) -> None:
    with pytest.raises(TrialError, match="not a finite number"):
        check_finite(metrics)
    check_finite({"accuracy": 0.5, "macs": 10})


def test_exported_trial_replays_to_the_same_plan(shared, tmp_path) -> None:
    """search trial → MLflow → export → `prunetune prune`: same kept channels, same MACs."""
    pytest.importorskip("mlflow")
    from prunetune.tracking import SearchTracker, export_trial, load_search, resolve_tracking_uri

    config, base, table, space = shared
    trial = space.define(RandomTrial(11))
    result = run_trial(trial, base, table)
    uri = resolve_tracking_uri("mlflow.db", cwd=tmp_path)
    tracker = SearchTracker(uri, "replay")
    tracker.start_search(params={"macs_budget": 0.5}, metrics={}, tags={}, texts={})
    tracker.start_trial("t0", trial)
    tracker.finish_trial("t0", result.report())
    tracker.end_search("FINISHED")
    record, path = export_trial(load_search(uri, "replay"), tmp_path / "best.yaml")
    assert record.trial_id == "t0"
    exported = Recipe.from_yaml(path)
    assert exported.plan is not None
    assert exported.with_changes(plan=None) == result.recipe.with_changes(source=None)
    replay = run_recipe(exported, show_progress=False)
    assert replay.plan.kept == result.plan.kept
    assert replay.pruned["macs"] == result.metrics["macs"] and replay.pruned["params"] == result.metrics["params"]
    assert yaml.safe_load(path.read_text())["plan"]["pruned"]["macs"] == result.metrics["macs"]
