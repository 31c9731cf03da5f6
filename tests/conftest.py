"""Test-wide settings: a private score/dense-model cache per test session, no progress bars."""

from __future__ import annotations

import os

import pytest
import torch

from prunetune.testing.models import randomize_bn  # noqa: F401  shared by the tests (prunetune.testing owns it)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["PRUNETUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("prunetune-cache"))
    os.environ["PRUNETUNE_PROGRESS"] = "0"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def optimistic_channels(monkeypatch) -> None:
    """Break the analytic count on purpose: pruned convs look thinner than they are (dense stays right)."""
    from prunetune.pruning.geometry import LayerGeometry

    real = LayerGeometry.channels

    def channels(self, keep):
        out_c, in_c = real(self, keep)
        return max(1, out_c * out_c // self.out_channels), in_c

    monkeypatch.setattr(LayerGeometry, "channels", channels)
