"""Searches on a local Ray (2 CPUs): failures do not stop a search, interrupt + resume, statuses.

The injected objectives skip fine-tuning (plan only) so the trials take milliseconds; the real
objective runs end to end in tests/cli/test_cli_search_e2e.py.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from ray import tune  # noqa: E402

from prunetune.exceptions import ConfigError  # noqa: E402
from prunetune.recipes.planning import build_plan  # noqa: E402
from prunetune.search import TrialResult, run_search  # noqa: E402
from prunetune.spaces import trial_recipe  # noqa: E402
from prunetune.tracking.store import client  # noqa: E402
from prunetune.tracking.tracker import PARENT_TAG, TRIAL_TAG  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules


# the tiny search runs one trial at a time (search/conftest.py); these tests need two side by side
TWO_AT_A_TIME = {"concurrency": 2, "cpus_per_trial": 1}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def plan_only(config, base, table, *, report=None, sleep: float = 0.0) -> TrialResult:
    """A trial without fine-tuning: accuracy is a made-up function of the target."""
    time.sleep(sleep)
    recipe = trial_recipe(base.recipe, config, base.groups)
    plan = build_plan(recipe, base, table)
    metrics = {"accuracy": 0.5 + config["target_macs"] / 2, "macs": float(plan.pruned.macs),
               "params": float(plan.pruned.params), "macs_ratio": plan.macs_ratio, "target_macs": config["target_macs"]}
    return TrialResult(metrics, [], plan, recipe)


def flaky(config, base, table, *, report=None, counter: str = "") -> TrialResult:
    """The first trial to start raises, the second reports NaN, the others are fine."""
    slot = _claim(Path(counter))
    if slot == 0:
        raise RuntimeError("injected failure")
    result = plan_only(config, base, table)
    if slot == 1:
        return TrialResult({**result.metrics, "accuracy": math.nan}, [], result.plan, result.recipe)
    return result


def _claim(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(1000):
        try:
            os.close(os.open(folder / str(slot), os.O_CREAT | os.O_EXCL))
            return slot
        except FileExistsError:
            continue
    raise RuntimeError("no slot")


class InterruptAfter(tune.Callback):
    """Send ourselves SIGINT (as Ctrl-C would) after ``n`` finished trials, once (a marker file)."""

    def __init__(self, n: int, marker: str) -> None:
        self.n, self.marker, self.seen = n, marker, 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.seen += 1
        if self.seen >= self.n and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGINT)


def _children(outcome) -> list:
    c = client(outcome.tracking_uri)
    experiment = c.get_experiment_by_name(outcome.experiment).experiment_id
    return c.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")


def test_failing_and_nan_trials_do_not_stop_the_search(make_config, tmp_path) -> None:
    config = make_config(trials=4, **TWO_AT_A_TIME)  # a failure beside a running trial
    outcome = run_search(config, objective=functools.partial(flaky, counter=str(tmp_path / "slots")),
                         show_progress=False)
    assert outcome.status == "FINISHED" and not outcome.interrupted
    assert outcome.counts == {"FINISHED": 2, "FAILED": 2}
    runs = _children(outcome)
    failed = " | ".join(r.data.tags.get("prunetune.error", "") for r in runs if r.info.status == "FAILED")
    assert "RuntimeError: injected failure" in failed and "'accuracy' is nan, not a finite number" in failed
    parent = client(outcome.tracking_uri).get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_failed"] == 2
    assert parent.data.params["macs_budget"] == "0.5" and "dense_accuracy" in parent.data.metrics
    assert {"prepare_s", "score_s", "ray_start_s"} <= set(parent.data.metrics)  # scoring timed apart from Ray
    for run in runs:
        if run.info.status == "FINISHED":
            assert run.data.metrics["macs_ratio"] <= float(run.data.params["target_macs"]) + 1e-12 <= 0.5 + 1e-12


def broken(config, base, table, *, report=None) -> TrialResult:
    raise RuntimeError("injected failure in every trial")


def test_a_search_whose_every_trial_failed_ends_failed_not_finished(make_config) -> None:
    config = make_config(trials=3, **TWO_AT_A_TIME)  # a failed trial's actor is not reused
    outcome = run_search(config, objective=broken, show_progress=False)
    assert outcome.status == "FAILED" and outcome.failed and not outcome.interrupted
    assert outcome.counts == {"FAILED": 3}
    assert outcome.error == "RuntimeError: injected failure in every trial"
    parent = client(outcome.tracking_uri).get_run(outcome.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.metrics["trials_failed"] == 3
    # a rerun would resume a search with nothing left to run: it says why and what to do
    with pytest.raises(ConfigError, match="ended without a finished trial .*another --experiment"):
        run_search(config, objective=plan_only, show_progress=False)


def test_interrupted_search_resumes_without_losing_or_repeating_trials(make_config, tmp_path) -> None:
    config = make_config(trials=6, **TWO_AT_A_TIME)  # trials of 1 s, two at a time
    objective = functools.partial(plan_only, sleep=1.0)
    first = run_search(config, objective=objective, show_progress=False,
                       callbacks=[InterruptAfter(2, str(tmp_path / "interrupted"))])
    assert first.interrupted and first.status == "KILLED"
    done_first = {r.data.tags[TRIAL_TAG] for r in _children(first) if r.info.status == "FINISHED"}
    assert 2 <= len(done_first) < 6
    with pytest.raises(ConfigError, match="another 'trials'"):
        run_search(make_config(trials=8, **TWO_AT_A_TIME), objective=objective, show_progress=False)
    earlier_best = max(r.data.metrics["accuracy"] for r in _children(first)
                       if r.info.status == "FINISHED" and r.data.metrics["macs_ratio"] <= 0.5 + 1e-9)
    events = []
    second = run_search(config, objective=objective, show_progress=False, progress=events.append)
    assert second.resumed and second.status == "FINISHED" and second.parent_run_id == first.parent_run_id
    # the resumed run's best accuracy counts the first run's trials from its start
    assert next(e for e in events if e.phase == "trials").best_accuracy == pytest.approx(earlier_best)
    finished = [r.data.tags[TRIAL_TAG] for r in _children(second) if r.info.status == "FINISHED"]
    assert len(finished) == 6 and len(set(finished)) == 6  # all trials, none twice
    assert done_first <= set(finished)
    assert set(second.counts) <= {"FINISHED", "KILLED"}
    with pytest.raises(ConfigError, match="already finished"):
        run_search(config, objective=objective, show_progress=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_search(make_config(trials=6, **TWO_AT_A_TIME, experiment="other"), resume=True,
                   objective=objective, show_progress=False)


class InterruptAtLastStart(tune.Callback):
    """SIGINT (as Ctrl-C) once the last of ``n`` trials has started, once (a marker file)."""

    def __init__(self, n: int, marker: str) -> None:
        self.n, self.marker, self.started = n, marker, 0

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started += 1
        if self.started == self.n and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGINT)


def test_a_search_interrupted_in_its_last_trial_is_not_finished_and_resumes(make_config, tmp_path) -> None:
    """Tune ends the running trial as TERMINATED on Ctrl-C: with every trial started, the search was
    sealed as finished, exit status 0, and its last trial could never be run."""
    config = make_config(trials=3, concurrency=1)
    objective = functools.partial(plan_only, sleep=2.0)
    first = run_search(config, objective=objective, show_progress=False,
                       callbacks=[InterruptAtLastStart(3, str(tmp_path / "interrupted"))])
    assert first.interrupted and first.status == "KILLED" and first.counts.get("FINISHED") == 2
    second = run_search(config, objective=objective, show_progress=False)
    assert second.resumed and second.status == "FINISHED" and second.counts.get("FINISHED") == 3


def test_a_search_whose_time_budget_runs_out_in_a_trial_is_finished(make_config) -> None:
    """Tune ends the running trial as it does on Ctrl-C: the time budget must not read as an interrupt.

    The budget holds one or two trials of 6 s for a trial start-up from 0.5 to 10 s (a loaded 2-core
    machine took more than 6 s, so 10 s for trials of 4 s left none finished)."""
    config = make_config(trials=4, concurrency=1, time_budget_s=16)
    outcome = run_search(config, objective=functools.partial(plan_only, sleep=6.0), show_progress=False)
    assert outcome.status == "FINISHED" and not outcome.interrupted
    assert outcome.counts.get("KILLED") == 1 and 1 <= outcome.counts.get("FINISHED", 0) <= 2


def test_a_trial_the_running_ray_cannot_hold_is_an_error_before_tracking(make_config, tmp_path) -> None:
    # the module's Ray has 2 CPUs; the time budget ends the search should the check be missing
    config = make_config(cpus_per_trial=3, time_budget_s=20)
    with pytest.raises(ConfigError, match="cpus_per_trial=3 but the Ray cluster has 2 CPUs in all"):
        run_search(config, show_progress=False)
    assert not (tmp_path / "mlflow.db").exists()


class LoadStudy(tune.Callback):
    """Open the fine-tune study from its storage URL, as optuna-dashboard would, while trials finish."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name, self.seen = url, name, []

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        import optuna

        study = optuna.load_study(study_name=self.name, storage=self.url)
        self.seen.append(sum(t.state.name == "COMPLETE" for t in study.trials))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def screened(local_ray, tmp_path_factory):
    """``(config, outcome, watch, log lines)`` of one search on the default path (screening 10 candidates,
    4 trials), which the screening and study tests below both read: one search instead of two."""
    from search.conftest import tiny_config

    config = tiny_config(tmp_path_factory.mktemp("screened"), trials=4, screen={"candidates": 10, "bn_batches": 2})
    watch, lines, logger = LoadStudy(config.settings.study_url, "tiny"), _Lines(), logging.getLogger("prunetune")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    try:
        outcome = run_search(config, objective=plan_only, show_progress=False, callbacks=[watch])
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    return config, outcome, watch, lines.lines


def test_screening_picks_the_fine_tuned_trials_and_logs_their_proxies(screened) -> None:
    config, outcome, _, _ = screened
    assert outcome.status == "FINISHED" and outcome.counts == {"FINISHED": 4}
    from prunetune.search.screening import ScreenOutcome

    pool = ScreenOutcome.from_json((outcome.experiment_dir / "screening.json").read_text())
    assert len(pool.candidates) == 10 and len(pool.selected) == 4
    assert any(c.source == "hand" for c in pool.candidates)
    mlflow_client = client(outcome.tracking_uri)
    parent = mlflow_client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["screen_candidates"] == 10 and parent.data.metrics["screen_selected"] == 4
    assert "proxy_rank_correlation" in parent.data.metrics
    assert "screening.csv" in {a.path for a in mlflow_client.list_artifacts(outcome.parent_run_id)}
    runs = _children(outcome)
    for metric, field in (("proxy_likelihood", "proxy"), ("proxy_accuracy", "proxy_accuracy")):
        assert sorted(r.data.metrics[metric] for r in runs) == sorted(getattr(c, field) for c in pool.selected)
    targets = sorted(c.params["target_macs"] for c in pool.selected)
    assert sorted(float(r.data.params["target_macs"]) for r in runs) == pytest.approx(targets)
    for run in runs:  # the recipe's lr (train_params: recipe), never a plan over its target
        assert float(run.data.params["finetune.lr"]) == config.recipe.finetune.lr
        assert run.data.metrics["macs_ratio"] <= float(run.data.params["target_macs"]) + 1e-12


def test_screen_false_samples_every_trial_directly(make_config) -> None:
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    outcome = run_search(make_config(trials=3, screen=False), objective=plan_only, show_progress=False)
    assert outcome.status == "FINISHED" and outcome.counts == {"FINISHED": 3}
    # Tune's fit left its stop handler in place: the caller's next Ctrl-C was logged and lost
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)) == before
    assert not (outcome.experiment_dir / "screening.json").exists()
    parent = client(outcome.tracking_uri).get_run(outcome.parent_run_id)
    assert not any(k.startswith("screen") for k in parent.data.metrics)
    assert not any(k.startswith("proxy") for r in _children(outcome) for k in r.data.metrics)


class _SigintSeen(tune.Callback):
    """Records the driver's SIGINT handler at every step of the fit."""

    def __init__(self) -> None:
        self.seen: list = []

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.seen.append(signal.getsignal(signal.SIGINT))


def test_a_search_started_with_sigint_ignored_keeps_it_ignored_during_the_fit(make_config) -> None:
    """``nohup`` or ``cmd &`` in a script: Tune's fit installed its stop handler anyway, so the background
    search ended at the first Ctrl-C given to the shell in front of it."""
    seen = _SigintSeen()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        outcome = run_search(make_config(trials=2, screen=False), objective=plan_only, callbacks=[seen],
                             show_progress=False)
        assert outcome.status == "FINISHED"
        assert seen.seen and set(seen.seen) == {signal.SIG_IGN}
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ  # set only while inside the fit
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_search_interrupted_in_screening_is_sealed_and_resumes_without_a_warning(make_config, monkeypatch,
                                                                                    caplog) -> None:
    """A Ctrl-C in screening left the search state without checksums: the resume called it an unclean
    stop ("e.g. kill -9")."""
    import json

    from prunetune.search import screen_phase
    from prunetune.search.resume import STATE_FILE
    from prunetune.search.trust import SEAL_KEY

    config = make_config(trials=2, screen={"candidates": 4, "bn_batches": 1})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(screen_phase, "run_screening", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_search(config, objective=plan_only, show_progress=False)
    state = json.loads((config.settings.experiment_dir / STATE_FILE).read_text())
    assert SEAL_KEY in state
    with caplog.at_level("WARNING", logger="prunetune"):
        outcome = run_search(config, objective=plan_only, show_progress=False)
    assert outcome.status == "FINISHED" and outcome.counts == {"FINISHED": 2}
    assert not any("carries no checksums" in r.getMessage() for r in caplog.records)


def test_screening_never_starts_more_actors_than_the_cluster_can_place(make_config) -> None:
    """The module's Ray has 2 CPUs: concurrency 3 at 1 CPU each screens with 2 actors (a third would
    never be placed, and its chunk would be waited for forever); the trials queue as Tune queues them."""
    from prunetune.search.ray_screening import placeable

    assert placeable(3, 1, 0) == 2 and placeable(3, 2, 0) == 1 and placeable(1, 0.5, 0) == 1
    config = make_config(trials=3, concurrency=3, cpus_per_trial=1, screen={"candidates": 6, "bn_batches": 1})
    done: list = []
    worker = threading.Thread(target=lambda: done.append(run_search(config, objective=plan_only,
                                                                    show_progress=False)), daemon=True)
    worker.start()
    worker.join(timeout=240)  # a hang fails the test instead of stopping the suite
    assert done and done[0].status == "FINISHED" and done[0].counts == {"FINISHED": 3}


def test_fine_tuned_trials_are_exactly_the_screened_plans(make_config) -> None:
    """Fewer selectable candidates than trials: exactly those are fine-tuned (with a warning), none
    twice and none unscreened."""
    config = make_config(trials=4, space={"criteria": ["capacity", "l1"], "allocations": ["global"]},
                         screen={"candidates": 2, "bn_batches": 1})
    outcome = run_search(config, objective=plan_only, show_progress=False)
    runs = _children(outcome)
    keys = [tuple(sorted((k, v) for k, v in r.data.params.items() if k.startswith(("target", "weight")))) for r in runs]
    assert outcome.status == "FINISHED" and len(keys) == 2 and len(set(keys)) == 2
    assert all("proxy_accuracy" in r.data.metrics for r in runs)


def test_the_study_is_in_its_storage_while_and_after_the_search(screened) -> None:
    import optuna

    config, outcome, watch, lines = screened
    url = config.settings.study_url
    assert any(f"optuna-dashboard {url}" in line for line in lines) and outcome.study_storage == url
    assert outcome.study_name == "tiny" and watch.seen == [1, 2, 3, 4]
    study = optuna.load_study(study_name="tiny", storage=url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    runs = {r.data.tags[TRIAL_TAG]: r for r in _children(outcome)}
    assert {t.user_attrs["ray_trial_id"] for t in complete} == set(runs)  # each Optuna trial knows its run
    for t in complete:
        assert t.values[0] == runs[t.user_attrs["ray_trial_id"]].data.metrics["accuracy"]
    parent = client(outcome.tracking_uri).get_run(outcome.parent_run_id)
    assert parent.data.tags["prunetune.optuna_study"] == "tiny" and parent.data.tags["prunetune.optuna_storage"] == url
