"""The search against real servers on 127.0.0.1: an `mlflow server` (sqlite backend, local artifact
root, artifacts through the server) and a Ray head started with `ray start --head`.

Each test starts its server as a child process in its own session, waits until it answers, and
ends it (and what is left of its process group) afterwards, whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from prunetune.cli import main  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.servers]

CONFIG = {
    "recipe": {"model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1},
               "data": {"name": "digits", "image_size": 8, "batch_size": 128},
               "calibration": {"size": 64, "batch_size": 64}, "pretrain": {"epochs": 2, "batch_size": 128},
               "finetune": {"epochs": 1, "lr": 0.05, "batch_size": 128}, "device": "cpu"},
    "space": {"ratios": "per_stage", "criteria": ["capacity", "l1"], "normalizers": ["rank"]},
    "screen": {"candidates": 8}, "trials": 3, "concurrency": 2, "macs_budget": 0.5,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env})


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's own process, which shuts its children down, then SIGKILL to whatever is
    left of its process group. Not SIGTERM to the whole group: the Ray head's GCS then ended first, and
    `ray start --block`, draining its node through the GCS, waited 30 s for it (2 s when it alone is
    asked)."""
    try:
        process.terminate()
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait(timeout=10)


def wait_until(ready, what: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come up in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def no_ray():
    ray.shutdown()  # the search must reach the server it is told to, not a Ray left running here
    yield
    ray.shutdown()


@pytest.fixture()
def mlflow_server(tmp_path):
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    server = start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                    "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                   log, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False
    try:
        wait_until(healthy, "mlflow server", server, log)
        yield url, tmp_path / "server-artifacts"
    finally:
        stop(server)


@pytest.fixture()
def ray_head(tmp_path, monkeypatch):
    """`ray start --head` on 127.0.0.1 with token authentication (as `ray start` turns it on once a token
    exists), in a short temp dir (Ray's socket paths have a length limit)."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ptray", dir="/tmp")
    log = tmp_path / "ray-head.log"
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}  # listen on 127.0.0.1 only
    head = start(["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                  "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
                  "--dashboard-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                  "--temp-dir", temp], log, **env)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def answers() -> bool:
        return "--block" in log.read_text() and socket.socket().connect_ex(("127.0.0.1", port)) == 0
    try:
        wait_until(answers, "ray head", head, log)
        yield f"127.0.0.1:{port}", head
    finally:
        stop(head)
        shutil.rmtree(temp, ignore_errors=True)


def _config(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **changes}))
    return path


def test_search_pareto_export_against_an_mlflow_server(tmp_path, capsys, no_ray, mlflow_server) -> None:
    url, artifacts = mlflow_server
    config = _config(tmp_path)
    common = ["--experiment", "tiny", "--tracking-uri", url]
    assert main(["search", "--config", str(config), "--storage-path", str(tmp_path / "runs"), "--format", "json",
                 *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "FINISHED" and summary["counts"] == {"FINISHED": 3}
    assert summary["study_storage"] == f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"  # no sqlite MLflow store
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    assert any(artifacts.rglob("plan.json")) and any(artifacts.rglob("front.html"))  # uploaded to the server

    assert main(["pareto", "--experiment", "tiny", "--tracking-uri", url, "--all", "--format", "json"]) == 0
    trials = json.loads(capsys.readouterr().out)["trials"]
    assert len(trials) == 3 and {t["label"] for t in trials} == {"t01", "t02", "t03"}
    best = tmp_path / "best.yaml"
    assert main(["export", *common, "--out", str(best), "--trial", "t02", "--format", "json"]) == 0
    picked = json.loads(capsys.readouterr().out)["trial"]
    assert picked["label"] == "t02" and yaml.safe_load(best.read_text())["threads"] == 1
    assert main(["prune", "--recipe", str(best), "--out", str(tmp_path / "pruned.pt"), "--format", "json"]) == 0
    replay = json.loads(capsys.readouterr().out)
    assert replay["pruned"]["macs"] == picked["macs"]
    assert replay["pruned"]["accuracy"] == picked["test_accuracy"]  # the trial's thread count, the same numbers


def test_search_on_a_ray_head_started_with_ray_start(tmp_path, capsys, no_ray, ray_head) -> None:
    address, head = ray_head
    config = _config(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["search", "--config", str(config), "--ray-address", address, "--tracking-uri", uri,
                 "--storage-path", str(tmp_path / "runs"), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "FINISHED" and summary["counts"] == {"FINISHED": 3}
    assert head.poll() is None  # the search disconnected; the cluster it did not start is still up
    assert not ray.is_initialized()
