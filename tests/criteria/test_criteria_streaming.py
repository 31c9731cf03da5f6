"""Streaming: two batches give the same statistics as one batch of all images."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import prunetune.pruning.criteria.activation  # registers the activation criteria
import prunetune.pruning.criteria.information  # noqa: F401  (registers the criteria)
from prunetune.pruning.criteria.base import FeatureBatch, get_criterion


def _maps(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(10, 6, 4, 4, generator=g, dtype=torch.float64))


def _run(name: str, batches: list[torch.Tensor], **params: Any) -> torch.Tensor:
    acc = get_criterion(name).accumulator(batches[0].shape[1], **params)
    for b in batches:
        acc.update(FeatureBatch(activations=b, preactivations=b))
    return acc.result()


CASES = [
    ("hrank", {}),
    ("chip", {}),
    ("chip", {"route": "sample"}),
    ("dfs", {}),
    ("sfs", {}),
    ("dfs_sfs", {}),
    ("independence", {"source": "feature"}),
]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_two_halves_equal_one_batch(name: str, params: dict[str, Any]) -> None:
    x = _maps()
    whole = _run(name, [x], **params)
    halves = _run(name, [x[:4], x[4:]], **params)
    torch.testing.assert_close(halves, whole, atol=1e-10, rtol=0)


def test_capacity_feature_two_halves_equal_one_batch() -> None:
    x = _maps()
    x[0, 0, 0, 0] = 5.0  # the first half holds the layer's max (min is 0 from the ReLU) ...
    x[1:] = x[1:].clamp(max=4.0)  # ... so the first batch fixes the same range as the whole set
    whole = _run("capacity", [x], source="feature", bins=16)
    halves = _run("capacity", [x[:4], x[4:]], source="feature", bins=16)
    torch.testing.assert_close(halves, whole, atol=1e-10, rtol=0)


def test_capacity_feature_clamps_later_values_into_the_end_bins() -> None:
    first = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    first[..., 1] = 1.0  # range [0, 1] widened by 0.5 each side: [-0.5, 1.5]
    later = torch.full((1, 1, 1, 2), 100.0, dtype=torch.float64)
    acc = get_criterion("capacity").accumulator(1, source="feature", bins=4)
    acc.update(FeatureBatch(activations=first))
    acc.update(FeatureBatch(activations=later))
    assert acc.counts[0].tolist() == [0.0, 1.0, 0.0, 3.0]  # 0 -> [0, 0.5); 1 and 100 -> last bin


def test_taylor_streams_the_mean_of_per_minibatch_scores() -> None:
    # Taylor squares the gate gradient per minibatch (criteria.md §6.5), so two batches give the
    # mean of the two single-batch scores, not the score of their union
    g = torch.Generator().manual_seed(1)
    z = torch.randn(10, 6, 4, 4, generator=g, dtype=torch.float64)
    grad = torch.randn(10, 6, 4, 4, generator=g, dtype=torch.float64)
    crit = get_criterion("taylor")

    def run(parts: list[slice]) -> torch.Tensor:
        acc = crit.accumulator(6)
        for p in parts:
            acc.update(
                FeatureBatch(activations=z[p].relu(), preactivations=z[p], gradients=grad[p])
            )
        return acc.result()

    a, b = run([slice(0, 4)]), run([slice(4, 10)])
    torch.testing.assert_close(run([slice(0, 4), slice(4, 10)]), (a + b) / 2, atol=1e-10, rtol=0)
    gate = (z * grad).sum(dim=(0, 2, 3))
    torch.testing.assert_close(run([slice(0, 10)]), gate**2, atol=1e-10, rtol=0)


def test_accumulators_keep_no_raw_maps() -> None:
    x = torch.relu(torch.randn(10, 6, 8, 8, dtype=torch.float64))  # 3840 values > any statistic
    for name, params in [*CASES, ("capacity", {"source": "feature"})]:
        acc = get_criterion(name).accumulator(6, **params)
        acc.update(FeatureBatch(activations=x))
        for value in vars(acc).values():
            if isinstance(value, torch.Tensor):
                assert value.numel() <= 6 * 256, (name, tuple(value.shape))


def test_result_before_update_is_a_clear_error() -> None:
    from prunetune.exceptions import ConfigError

    for name in ("hrank", "chip", "dfs", "sfs", "taylor", "cmi"):
        with pytest.raises(ConfigError, match="no calibration batches"):
            get_criterion(name).accumulator(3).result()
