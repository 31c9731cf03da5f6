"""The Ray side without a Ray cluster: Optuna hears only final results; sampler/scheduler choice."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("ray.tune")
optuna = pytest.importorskip("optuna")

from prunetune.search.config import AshaSpec  # noqa: E402
from prunetune.search.optuna_bridge import FinalOnlySearch  # noqa: E402
from prunetune.search.ray_parts import METRICS, MODES, make_sampler, make_scheduler  # noqa: E402
from prunetune.spaces import SearchSpace  # noqa: E402
from prunetune.spaces.presets import TargetFraction  # noqa: E402

STATE = optuna.trial.TrialState


def _searcher() -> FinalOnlySearch:
    space = SearchSpace((("target", TargetFraction(0.1, 0.5)),))
    return FinalOnlySearch(space=space.for_ray, metric=METRICS, mode=MODES, sampler=make_sampler("tpe", seed=0, trials=8))


def test_only_final_results_reach_optuna_as_complete() -> None:
    searcher = _searcher()
    for i in range(5):
        config = searcher.suggest(f"t{i}")
        assert 0.1 <= config["target_macs"] <= 0.5
    searcher.on_trial_complete("t0", {"accuracy": 0.9, "macs": 10.0, "final": True})
    searcher.on_trial_complete("t1", {"accuracy": 0.5, "macs": 10.0, "final": False})  # stopped by ASHA
    searcher.on_trial_complete("t2", None, error=True)
    searcher.on_trial_complete("t3", {"accuracy": math.nan, "macs": 10.0, "final": True})
    searcher.on_trial_complete("t4", {"accuracy": 0.8, "macs": 5.0, "final": True})
    searcher.on_trial_complete("t4", {"accuracy": 0.1, "macs": 1.0, "final": True})  # a repeat is ignored
    states = [t.state for t in searcher.study.get_trials()]
    assert states == [STATE.COMPLETE, STATE.PRUNED, STATE.FAIL, STATE.FAIL, STATE.COMPLETE]
    assert searcher.study.get_trials()[4].values == [0.8, 5.0]


def test_samplers_and_schedulers() -> None:
    assert isinstance(make_sampler("nsga2", seed=1, trials=64), optuna.samplers.NSGAIISampler)
    tpe = make_sampler("tpe", seed=1, trials=12)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    assert isinstance(make_scheduler(None, 3), FIFOScheduler)
    asha = make_scheduler(AshaSpec(grace_period=5, reduction_factor=3), 3)
    assert isinstance(asha, ASHAScheduler) and asha._max_t == 3 and asha._reduction_factor == 3


def test_a_screening_worker_imports_no_ray_tune() -> None:
    """The screening actors' module loads without Ray Tune, Optuna or MLflow: each screening worker imports
    it to build its actor, and Ray Tune alone took about 1.4 s of that start-up on a 2-core machine."""
    import subprocess
    import sys

    code = ("import sys, prunetune.search.ray_screening as m; m.Screener, m.RayPool; "
            "bad = [n for n in ('ray.tune', 'optuna', 'mlflow') if n in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
