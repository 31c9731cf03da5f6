"""Test-wide settings: a private score/dense-model cache per test session, no progress bars."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["PRUNETUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("prunetune-cache"))
    os.environ["PRUNETUNE_PROGRESS"] = "0"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics and affine parameters, so masking errors show."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 2 - 1)
    return model.eval()


def optimistic_channels(monkeypatch) -> None:
    """Break the analytic count on purpose: pruned convs look thinner than they are (dense stays right)."""
    from prunetune.pruning.geometry import LayerGeometry

    real = LayerGeometry.channels

    def channels(self, keep):
        out_c, in_c = real(self, keep)
        return max(1, out_c * out_c // self.out_channels), in_c

    monkeypatch.setattr(LayerGeometry, "channels", channels)
