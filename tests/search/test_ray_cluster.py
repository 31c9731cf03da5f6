"""Ray set-up errors fail fast, before anything is trained or tracked: ``ray_address`` and per-trial resources.

Connecting to a real cluster (``ray start --head``) was checked by hand: see the closing notes.
"""

from __future__ import annotations

import socket

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from prunetune.exceptions import ConfigError  # noqa: E402
from prunetune.search import run_search  # noqa: E402
from prunetune.search import runner  # noqa: E402
from prunetune.search.ray_parts import unmet_resources  # noqa: E402
from prunetune.search.config import ray_address_parts  # noqa: E402


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["nonsense", "host:", ":6379", "10.0.0.1:99999", "10.0.0.1:port", 6379])
def test_malformed_addresses_are_config_errors(make_config, address) -> None:
    with pytest.raises(ConfigError, match=f"ray_address must be .* got {address!r}"):
        make_config(ray_address=address)


@pytest.mark.parametrize("address, parts", [("auto", None), ("local", None), ("ray://head:10001", None),
                                            ("10.0.0.1:6379", ("10.0.0.1", 6379)), ("[::1]:6379", ("::1", 6379))])
def test_accepted_addresses(make_config, address, parts) -> None:
    assert make_config(ray_address=address).settings.ray_address == address
    assert ray_address_parts(address) == parts


def test_unreachable_address_fails_before_training_or_tracking(make_config, tmp_path, monkeypatch) -> None:
    port = closed_port()
    config = make_config(ray_address=f"127.0.0.1:{port}")

    def no_training(*args, **kwargs):
        raise AssertionError("prepare ran before Ray was reached")

    monkeypatch.setattr(runner, "prepare", no_training)
    with pytest.raises(ConfigError, match=rf"no Ray cluster answers at ray_address='127.0.0.1:{port}'.*ray start --head"):
        run_search(config, show_progress=False)
    assert not config.settings.experiment_dir.exists()  # no resume state to trip over next time
    assert not (tmp_path / "mlflow.db").exists()


def test_reachable_address_passes_the_check() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        runner.check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=5.0)


@pytest.mark.parametrize("address, hint", [("auto", False), ("HOSTPORT", True)])
def test_ray_connection_errors_become_config_errors(monkeypatch, address, hint) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        if address == "HOSTPORT":
            address = f"127.0.0.1:{server.getsockname()[1]}"

        def refuse(**kwargs):
            raise ConnectionError("Could not find any running Ray instance.")

        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", refuse)
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        with pytest.raises(ConfigError) as err:
            runner._init_ray(address)
    message = str(err.value)
    assert f"ray_address={address!r}" in message and "Could not find any running Ray instance" in message
    assert "ray start --head" in message
    assert ("RAY_AUTH_MODE=token" in message) == hint


def test_unmet_resources_names_what_is_missing() -> None:
    assert unmet_resources(1, 0.5, {"CPU": 2.0, "GPU": 1.0}) is None  # a fraction of one GPU fits
    assert unmet_resources(2, 0, {"CPU": 2.0}) is None
    assert unmet_resources(3, 0, {"CPU": 2.0}) == "cpus_per_trial=3 but the cluster has 2 CPUs in all"
    both = unmet_resources(4, 1, {"CPU": 2.0}, "this machine")
    assert both == ("cpus_per_trial=4 but this machine has 2 CPUs in all; "
                    "gpus_per_trial=1 but this machine has 0 GPUs in all")


def test_impossible_trial_resources_fail_before_a_local_ray_or_training(make_config, tmp_path, monkeypatch) -> None:
    config = make_config(cpus_per_trial=10**6)

    def no_training(*args, **kwargs):
        raise AssertionError("prepare ran before the resources were checked")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_training)
    monkeypatch.setattr(runner, "prepare", no_training)
    with pytest.raises(ConfigError, match=r"no trial could ever start: cpus_per_trial=1e\+06 but this machine has"):
        run_search(config, show_progress=False)
    assert not (tmp_path / "mlflow.db").exists()
