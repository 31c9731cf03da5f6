"""Resuming unpickles Ray's state from the storage path: a state that is not the one the search wrote
(changed, added or removed files; files of another user or writable by everybody) is refused before
Ray reads it, and a crafted ``tuner.pkl`` runs nothing."""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import pytest

from prunetune.exceptions import UntrustedStateError
from prunetune.search import trust
from reliability_helpers import TINY_RECIPE


class _Marker:
    """Unpickling this creates ``path`` (what a planted pickle could do, harmlessly)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_seal_and_check_without_ray(tmp_path) -> None:
    exp = tmp_path / "exp"
    (exp / "trial_0").mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"state")
    (exp / "trial_0" / "error.pkl").write_bytes(b"err")
    (exp / "state.json").write_text(json.dumps({"version": 1}))
    trust.seal_state(exp, "state.json")
    state = json.loads((exp / "state.json").read_text())
    assert set(state[trust.SEAL_KEY]) == {"tuner.pkl", "trial_0/error.pkl"}
    trust.check(exp, state, state_file="state.json")  # unchanged: fine
    (exp / "tuner.pkl").write_bytes(b"other")
    with pytest.raises(UntrustedStateError, match="'tuner.pkl' changed"):
        trust.check(exp, state, state_file="state.json")
    (exp / "tuner.pkl").write_bytes(b"state")
    (exp / "searcher-state-x.pkl").write_bytes(b"new")
    with pytest.raises(UntrustedStateError, match="'searcher-state-x.pkl' appeared"):
        trust.check(exp, state, state_file="state.json")
    (exp / "searcher-state-x.pkl").unlink()
    (exp / "trial_0" / "error.pkl").unlink()
    with pytest.raises(UntrustedStateError, match="'trial_0/error.pkl' was removed"):
        trust.check(exp, state, state_file="state.json")
    (exp / "trial_0" / "error.pkl").write_bytes(b"err")
    (exp / "tuner.pkl").chmod(0o666)
    with pytest.raises(UntrustedStateError, match="writable by every user"):
        trust.check(exp, state, state_file="state.json")
    (exp / "tuner.pkl").chmod(0o644)
    trust.check_and_unseal(exp, "state.json")
    assert trust.SEAL_KEY not in json.loads((exp / "state.json").read_text())


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_a_file_of_another_user_is_refused(tmp_path) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "tuner.pkl").write_bytes(b"state")
    os.chown(exp / "tuner.pkl", 12345, 12345)
    with pytest.raises(UntrustedStateError, match="belongs to uid 12345"):
        trust.check(exp, {}, state_file="state.json")


@pytest.mark.ray
@pytest.mark.slow
def test_resume_refuses_a_changed_state_and_runs_no_planted_pickle(tmp_path, monkeypatch) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("optuna")
    pytest.importorskip("mlflow")
    from ray import tune

    from prunetune.search import parse_search_config, run_search
    from prunetune.search.runner import STATE_FILE

    class InterruptAfter(tune.Callback):
        def __init__(self, marker: str) -> None:
            self.marker = marker

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            if not os.path.exists(self.marker):
                Path(self.marker).touch()
                os.kill(os.getpid(), signal.SIGINT)

    recipe = {k: v for k, v in copy.deepcopy(TINY_RECIPE).items() if k not in ("criterion", "allocation")}
    config = parse_search_config({"recipe": recipe, "space": {"ratios": "uniform", "criteria": ["l1"]},
                                  "macs_budget": 0.5, "trials": 3, "concurrency": 1, "experiment": "t"},
                                 cwd=tmp_path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        first = run_search(config, objective=_plan_only, show_progress=False,
                           callbacks=[InterruptAfter(str(tmp_path / "interrupted"))])
        assert first.interrupted
        exp = config.settings.experiment_dir
        state = json.loads((exp / STATE_FILE).read_text())
        assert "tuner.pkl" in state[trust.SEAL_KEY]
        original = (exp / "tuner.pkl").read_bytes()
        marker = tmp_path / "MARKER-tuner"
        (exp / "tuner.pkl").write_bytes(pickle.dumps(_Marker(str(marker))))
        with pytest.raises(UntrustedStateError, match="'tuner.pkl' changed after the search stopped"):
            run_search(config, objective=_plan_only, show_progress=False)
        assert not marker.exists()
        (exp / "tuner.pkl").write_bytes(original)
        second = run_search(config, objective=_plan_only, show_progress=False)
        assert second.resumed and second.status == "FINISHED" and second.counts.get("FINISHED") == 3
    finally:
        ray.shutdown()


def _plan_only(config, base, table, *, report=None):
    """A trial without fine-tuning (milliseconds)."""
    from prunetune.recipes.planning import build_plan
    from prunetune.search import TrialResult
    from prunetune.spaces import trial_recipe

    time.sleep(0.5)
    recipe = trial_recipe(base.recipe, config, base.groups)
    plan = build_plan(recipe, base, table)
    metrics = {"accuracy": 0.5 + config["target_macs"] / 2, "macs": float(plan.pruned.macs),
               "params": float(plan.pruned.params), "macs_ratio": plan.macs_ratio, "target_macs": config["target_macs"]}
    return TrialResult(metrics, [], plan, recipe)
