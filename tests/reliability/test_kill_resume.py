"""kill -9 of a real search driver mid-search, then the same command: exactly the missing trials run.

The driver is the ``prunetune search`` command in its own process (and session, so whatever it
started can be cleaned up). While it runs, a second search on the same experiment is a one-line
error. After the kill, MLflow holds finished trials and runs left RUNNING; the same command again
finishes the search with exactly ``trials`` distinct FINISHED trial runs and none RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

pytest.importorskip("ray")
pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from prunetune.tracking.tracker import LABEL_TAG, PARENT_TAG, ROLE_TAG, TRIAL_TAG  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]
TRIALS = 4

CONFIG = {
    "recipe": {"model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1},
               "data": {"name": "digits", "image_size": 8, "batch_size": 128},
               "calibration": {"size": 64, "batch_size": 64}, "pretrain": {"epochs": 2, "batch_size": 128},
               "finetune": {"epochs": 10, "lr": 0.05, "batch_size": 128}, "device": "cpu"},  # 2-3 s a trial
    "space": {"ratios": "per_stage", "criteria": ["capacity", "l1"], "normalizers": ["rank"], "lr": [0.01, 0.1]},
    "screen": {"candidates": 8}, "trials": TRIALS, "concurrency": 1, "macs_budget": 0.5, "experiment": "killed",
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", PRUNETUNE_PROGRESS="0")
    return env


def _runs(uri: str) -> tuple[list, list]:
    """(search runs, trial runs) in the store, or empty lists while it does not exist yet."""
    from prunetune.tracking.store import client

    try:
        c = client(uri)
        exp = c.get_experiment_by_name("killed")
        if exp is None:
            return [], []
        runs = c.search_runs([exp.experiment_id], max_results=1000)
    except Exception:  # noqa: BLE001 - the driver is creating the store right now
        return [], []
    return ([r for r in runs if r.data.tags.get(ROLE_TAG) == "search"],
            [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"])


def _wait(predicate, what: str, driver: subprocess.Popen, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if driver.poll() is not None:
            raise AssertionError(f"the driver ended (rc {driver.returncode}) before {what}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_then_the_same_command_runs_exactly_the_missing_trials(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(CONFIG))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "prunetune", "search", "--config", "s.yaml"]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        lock = tmp_path / "prunetune-runs" / "killed" / "prunetune.lock"
        _wait(lock.exists, "the experiment lock", driver)
        second = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "search 'killed' is already running" in lines[0] and f"pid {driver.pid}" in lines[0]

        state = tmp_path / "prunetune-runs" / "killed" / "prunetune-search.json"
        _wait(state.exists, "the search run (MLflow's schema is made)", driver)  # never race its creation

        def mid_search() -> bool:
            trials = _runs(uri)[1]
            statuses = [r.info.status for r in trials]
            return "FINISHED" in statuses and "RUNNING" in statuses
        _wait(mid_search, "a finished and a running trial", driver)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        _kill_group(driver)
        log.close()
    parents, before = _runs(uri)
    stale = {r.data.tags[TRIAL_TAG] for r in before if r.info.status == "RUNNING"}
    done_before = {r.data.tags[TRIAL_TAG] for r in before if r.info.status == "FINISHED"}
    assert stale and done_before and len(done_before) < TRIALS and parents[0].info.status == "RUNNING"

    again = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
                           start_new_session=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "carries no checksums" in again.stderr  # the kill left no seal: ownership checked, said so
    parents, after = _runs(uri)
    by_status: dict[str, list[str]] = {}
    for r in after:
        assert r.data.tags[PARENT_TAG] == parents[0].info.run_id
        by_status.setdefault(r.info.status, []).append(r.data.tags[TRIAL_TAG])
    finished = by_status["FINISHED"]
    assert len(finished) == TRIALS and len(set(finished)) == TRIALS  # exactly the trials, none twice
    assert done_before <= set(finished) and not by_status.get("RUNNING")
    assert stale <= set(by_status["KILLED"]) and set(by_status) <= {"FINISHED", "KILLED"}
    labels = [r.data.tags[LABEL_TAG] for r in after]
    assert len(set(labels)) == len(after)  # trial numbers continue, never reused
    assert parents[0].info.status == "FINISHED" and len(parents) == 1


def _kill_group(process: subprocess.Popen) -> None:
    """Whatever the killed driver left in its session (its local Ray), ended by the group id."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
