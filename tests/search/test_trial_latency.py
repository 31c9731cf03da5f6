"""``latency: true``: a trial also reports the measured batch-1 latency of its pruned network."""

from __future__ import annotations

import pytest

from prunetune.exceptions import ConfigError
from prunetune.search import ray_parts, run_trial
from prunetune.spaces import RandomTrial


def test_trial_reports_latency_when_asked(shared, monkeypatch) -> None:
    config, base, table, space = shared
    reports: list[dict] = []
    monkeypatch.setattr(ray_parts.tune, "report", reports.append)
    trial = space.define(RandomTrial(1))
    ray_parts.trainable(trial, base=base, table=table, objective=run_trial, threads=1, latency=True)
    final = reports[-1]
    assert final["final"] is True and final["latency_ms"] > 0
    reports.clear()
    ray_parts.trainable(trial, base=base, table=table, objective=run_trial, threads=1)
    assert "latency_ms" not in reports[-1]


def test_latency_setting_is_checked(make_config) -> None:
    assert make_config(latency=True).settings.latency is True
    assert make_config().settings.latency is False
    with pytest.raises(ConfigError, match="latency must be true or false"):
        make_config(latency="yes")
