"""Information capacity, information independence and the cmi criterion."""

from __future__ import annotations

import math

import pytest
import torch

import prunetune.pruning.criteria.information  # noqa: F401  (registers the criteria)
from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria.base import (
    ACTIVATION,
    LABELS,
    WEIGHT,
    FeatureBatch,
    get_criterion,
    score,
)
from prunetune.pruning.criteria.information import pool_to


def test_capacity_filter_constant_is_zero_and_spread_is_highest() -> None:
    w = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    w[0] = 0.5  # constant filter
    w[1] = torch.linspace(-1.0, 1.0, 16).reshape(1, 4, 4)  # 16 distinct bins: log2(16) bits
    w[2] = torch.tensor([-1.0, 1.0]).repeat(8).reshape(1, 4, 4)  # two values: 1 bit
    out = score("capacity", weight=w)
    torch.testing.assert_close(
        out, torch.tensor([0.0, 4.0, 1.0], dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert int(out.argmax()) == 1


def test_capacity_filter_uses_the_layer_range() -> None:
    # the same 4 values are 4 bins wide in a narrow layer but fall in one bin of a wide layer
    w = torch.tensor([[0.0, 0.01, 0.02, 0.03], [0.0, 0.0, 0.0, 1000.0]], dtype=torch.float64)
    out = score("capacity", weight=w, bins=4)
    assert out[0].item() == pytest.approx(0.0)
    assert out[1].item() == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert score("capacity", weight=torch.ones(4, 3)).tolist() == [0.0] * 4


def test_capacity_feature_entropy() -> None:
    maps = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    maps[:, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # 4 distinct values in 4 bins
    maps[:, 1] = 0.0
    out = score("capacity", feature_maps=maps, source="feature", bins=4, range_margin=0.0)
    torch.testing.assert_close(
        out, torch.tensor([2.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("first_batch", [True, False])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_capacity_feature_names_non_finite_maps(first_batch: bool, bad: float) -> None:
    # score() refuses such maps before any work; calibration's accumulators see the model's own
    # maps unchecked, and a NaN's bin index used to fail as "index ... is out of bounds"
    acc = get_criterion("capacity").accumulator(2, source="feature")
    good = torch.rand(4, 2, 3, 3)
    broken = good.clone()
    broken[1, 0, 2, 2] = bad
    if not first_batch:
        acc.update(FeatureBatch(good))
    if bad == math.inf and not first_batch:  # outside the range fixed by the first batch: the end bin
        acc.update(FeatureBatch(broken))
        assert acc.result().shape == (2,)
        return
    with pytest.raises(ConfigError, match=r"criterion 'capacity': the feature maps hold NaN or inf"):
        acc.update(FeatureBatch(broken))


@pytest.mark.parametrize("bad_at", [(1, 0, 2, 2), (0, 1, 0, 0)])
def test_capacity_feature_names_a_later_nan_on_devices_whose_scatter_counts_it(monkeypatch, bad_at) -> None:
    # CUDA's conversion gives a NaN bin 0, so its scatter does not raise as the CPU's does: the
    # accumulator's own flag (no host sync) refuses the maps when the scores are read. The CPU plays
    # such a device here.
    from prunetune.pruning.criteria import information

    monkeypatch.setattr(information, "SCATTER_RAISES_ON", frozenset())
    acc = get_criterion("capacity").accumulator(2, source="feature")
    good = torch.rand(4, 2, 3, 3)
    broken = good.clone()
    broken[bad_at] = math.nan
    acc.update(FeatureBatch(good))
    acc.update(FeatureBatch(broken))  # counted (clamped into range), not raised
    acc.update(FeatureBatch(good))
    with pytest.raises(ConfigError, match=r"criterion 'capacity': the feature maps hold NaN or inf"):
        acc.result()
    clean = get_criterion("capacity").accumulator(2, source="feature")
    cpu = get_criterion("capacity").accumulator(2, source="feature")
    for batch in (good, good * 0.5, good + 2.0):  # the last one past the range: the end bins
        clean.update(FeatureBatch(batch))
    monkeypatch.setattr(information, "SCATTER_RAISES_ON", frozenset({"cpu"}))
    for batch in (good, good * 0.5, good + 2.0):
        cpu.update(FeatureBatch(batch))
    assert torch.equal(clean.result(), cpu.result())  # without NaN: the same counts either way


def test_independence_filter_duplicate_pair_scores_lower() -> None:
    w = torch.tensor(
        [[1.0, -1.0, 0.0, 0.0], [2.0, -2.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]], dtype=torch.float64
    )
    out = score("independence", weight=w)
    torch.testing.assert_close(
        out, torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_independence_constant_rows_and_single_channel() -> None:
    w = torch.tensor([[3.0, 3.0, 3.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=torch.float64)
    out = score("independence", weight=w)
    torch.testing.assert_close(
        out, torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert score("independence", weight=torch.randn(1, 5)).tolist() == [1.0]
    maps = torch.ones(4, 3, 2, 2)
    assert score("independence", feature_maps=maps, source="feature").tolist() == [1.0] * 3


def test_independence_feature_matches_a_direct_correlation() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    maps[:, 3] = -2.0 * maps[:, 0] + 1.0
    f = maps.transpose(0, 1).reshape(4, -1)
    rho = torch.corrcoef(f).abs().fill_diagonal_(0.0)
    expected = 1.0 - rho.sum(1) / 3
    torch.testing.assert_close(
        score("independence", feature_maps=maps, source="feature"), expected, atol=1e-12, rtol=0
    )


def test_needs_follow_the_source() -> None:
    assert get_criterion("capacity").needs({"source": "filter"}) == frozenset({WEIGHT})
    assert get_criterion("capacity").needs({"source": "feature"}) == frozenset({ACTIVATION})
    assert get_criterion("independence").needs({}) == frozenset({WEIGHT})
    assert get_criterion("cmi").needs({}) == frozenset({ACTIVATION, LABELS})


def test_cmi_criterion_scores_selection_order_and_extras() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (48,), generator=g)
    maps = torch.relu(torch.randn(48, 5, 4, 4, generator=g, dtype=torch.float64))
    maps[:, 2] = y[:, None, None].to(torch.float64)
    crit = get_criterion("cmi")
    acc = crit.accumulator(5, samples=40)
    for part in (slice(0, 20), slice(20, 48)):
        acc.update(FeatureBatch(activations=maps[part], labels=y[part]))
    assert acc.kept == 40  # the sample set is bounded by `samples`
    scores, extras = acc.result(), acc.extras()
    assert int(scores.argmax()) == 2 and scores.max() == 1.0
    order = extras["cmi_order"]
    assert int(order[0]) == 2 and sorted(order.tolist()) == list(range(5))
    torch.testing.assert_close(
        scores[order], torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2], dtype=torch.float64)
    )
    assert extras["cmi_values"].shape == (5,)
    assert int(score("cmi", feature_maps=maps, labels=y).argmax()) == 2


def test_pool_to_bounds_the_map_size() -> None:
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    pooled = pool_to(x, 64)
    assert pooled.shape == (2, 3, 8, 8)
    torch.testing.assert_close(pooled[0, 0, 0, 0], x[0, 0, :4, :4].mean())
    assert pool_to(x[..., :7, :7], 64).shape == (2, 3, 7, 7)
    assert pool_to(x[..., :14, :14], 64).shape == (2, 3, 7, 7)
    assert pool_to(x, None).shape == x.shape
