"""Ray set-up errors fail fast, before anything is trained or tracked: addresses and per-trial resources.

Connecting to real clusters (``ray start --head``, with and without token authentication) was
checked by hand; no test here starts a Ray.
"""

from __future__ import annotations

import socket

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from prunetune.exceptions import ConfigError  # noqa: E402
from prunetune.search import cluster, run_search, runner  # noqa: E402
from prunetune.search.config import ray_address_parts  # noqa: E402


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def listening_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture()
def no_training(monkeypatch):
    """Loading the data and model (the search's first step, ``load_inputs``; ``prepare`` before the
    runner built groups → space itself) fails the test: the error under test must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("prepare ran before the Ray set-up was checked")

    monkeypatch.setattr(runner, "load_inputs", refuse)


@pytest.mark.parametrize("address", ["nonsense", "host:", ":6379", "10.0.0.1:99999", "10.0.0.1:port", 6379, "",
                                     "::1:6379", "[::1:6379", "[::1]6379", "ray://", "ray://:10001", "a b:6379"])
def test_malformed_addresses_are_config_errors(make_config, address) -> None:
    with pytest.raises(ConfigError, match=r"ray_address must be .* got " + repr(address).replace("[", r"\[")):
        make_config(ray_address=address)


@pytest.mark.parametrize("address, parts", [
    ("auto", None), ("local", None), ("10.0.0.1:6379", ("10.0.0.1", 6379)), ("head-node:6379", ("head-node", 6379)),
    ("[::1]:6379", ("::1", 6379)), ("ray://head:10002", ("head", 10002)), ("ray://head", ("head", 10001)),
    ("ray://[fe80::1]", ("fe80::1", 10001)),
])
def test_accepted_addresses(make_config, address, parts) -> None:
    assert make_config(ray_address=address).settings.ray_address == address
    assert ray_address_parts(address) == parts


def test_the_cluster_comes_from_ray_address_then_RAY_ADDRESS(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.Cluster.of(None).named is None
    assert cluster.Cluster.of("local").named is None
    assert cluster.Cluster.of("auto") == cluster.Cluster("auto", "auto", "ray_address")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster.Cluster.of(None) == cluster.Cluster(None, "10.0.0.1:6379", "RAY_ADDRESS")
    assert cluster.Cluster.of("local").named is None  # 'local' always starts a new Ray


@pytest.mark.parametrize("via_env", [False, True])
def test_unreachable_address_fails_before_training_or_tracking(make_config, tmp_path, monkeypatch, no_training,
                                                               via_env) -> None:
    address = f"127.0.0.1:{closed_port()}"
    if via_env:
        monkeypatch.setenv("RAY_ADDRESS", address)
        config, what = make_config(), "RAY_ADDRESS"
    else:
        config, what = make_config(ray_address=address), "ray_address"
    with pytest.raises(ConfigError, match=rf"no Ray cluster answers at {what}='{address}'.*ray start --head"):
        run_search(config, show_progress=False)
    assert not config.settings.experiment_dir.exists()  # no resume state to trip over next time
    assert not (tmp_path / "mlflow.db").exists()


def test_malformed_RAY_ADDRESS_is_named(make_config, monkeypatch, no_training) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "head node")
    with pytest.raises(ConfigError, match="RAY_ADDRESS must be .* got 'head node'"):
        run_search(make_config(), show_progress=False)


def test_reachable_addresses_pass_the_check(listening_port) -> None:
    cluster.check_reachable(f"127.0.0.1:{listening_port}", timeout_s=5.0)
    cluster.check_reachable(f"ray://127.0.0.1:{listening_port}", timeout_s=5.0)
    cluster.check_reachable("auto")  # left to Ray


@pytest.mark.parametrize("address, hint", [("auto", False), ("HOSTPORT", True), (None, False)])
def test_ray_connection_errors_become_config_errors(monkeypatch, listening_port, address, hint) -> None:
    if address == "HOSTPORT":
        address = f"127.0.0.1:{listening_port}"

    def refuse(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError) as err:
        cluster.connect(cluster.Cluster.of(address))
    message = str(err.value)
    assert "Could not find any running Ray instance" in message
    if address is None:  # a local start that failed: nothing about a setting the user never gave
        assert "could not start a local Ray" in message and "ray stop" in message
        assert "ray_address=" not in message
    else:
        assert f"ray_address={address!r}" in message and "ray start --head" in message
    assert ("RAY_AUTH_MODE=token" in message) == hint


@pytest.mark.parametrize("address", [None, "auto"])
def test_an_interrupt_inside_ray_init_stops_what_it_started(monkeypatch, address) -> None:
    """A Ctrl-C or SIGTERM (``Terminated``) during ``ray.init``, the seconds a local Ray takes to start:
    the search never learned that Ray was started, so its processes were left running."""
    from prunetune._signals import Terminated

    calls: list[str] = []

    def interrupted(**kwargs):
        calls.append("init")
        raise Terminated("terminated by signal 15")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", interrupted)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(Terminated):
        cluster.connect(cluster.Cluster.of(address))
    assert calls == ["init", "shutdown"]


def test_unmet_resources_names_what_is_missing() -> None:
    assert cluster.unmet_resources(1, 0.5, {"CPU": 2.0, "GPU": 1.0}) is None  # a fraction of one GPU fits
    assert cluster.unmet_resources(2, 0, {"CPU": 2.0}) is None
    assert cluster.unmet_resources(3, 0, {"CPU": 2.0}) == "cpus_per_trial=3 but the cluster has 2 CPUs in all"
    both = cluster.unmet_resources(4, 1, {"CPU": 2.0}, "this machine")
    assert both == ("cpus_per_trial=4 but this machine has 2 CPUs in all; "
                    "gpus_per_trial=1 but this machine has 0 GPUs in all")


def test_impossible_trial_resources_fail_before_a_local_ray_or_training(make_config, tmp_path, monkeypatch,
                                                                        no_training) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("a Ray was started"))
    with pytest.raises(ConfigError, match=r"no trial could ever start: cpus_per_trial=1e\+06 but this machine has"):
        run_search(make_config(cpus_per_trial=10**6), show_progress=False)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_named_cluster_short_of_resources_is_a_warning(monkeypatch, caplog) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    cluster.check_resources(cluster.Cluster.of("auto"), 1, 1)  # an autoscaler may add a GPU node
    assert "gpus_per_trial=1 but the Ray cluster has 0 GPUs in all" in caplog.text
    with pytest.raises(ConfigError, match="gpus_per_trial=1 but the Ray cluster has 0 GPUs"):
        cluster.check_resources(cluster.Cluster.of("local"), 1, 1)
