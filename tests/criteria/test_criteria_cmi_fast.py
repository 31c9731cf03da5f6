"""The fast greedy CMI ranking against the straightforward one (``cmi_reference``): same order, same
values, also when it stops early; its stopping rules and the bound behind the vanishing stop."""

from __future__ import annotations

import math

import pytest
import torch

from prunetune.exceptions import ConfigError
from prunetune.models import create_model
from prunetune.pruning.calibration import calibrate
from prunetune.pruning.groups import find_groups
from prunetune.pruning.criteria import FeatureBatch, get_criterion
from prunetune.pruning.criteria.cmi_reference import cmi_ranking_reference
from prunetune.pruning.knee import knee_keep
from prunetune.pruning.criteria.cmi_steps import VANISH_BOUND, class_blocks, vanished, vanishing_bound
from prunetune.pruning.criteria.renyi import (
    finish_runs,
    greedy_run,
    cmi_greedy,
    cmi_ranking,
    conditioning_gram,
    renyi_entropy,
)

ALPHAS = [1.01, 2.0, 1.0, 0.5, 3.0]


def _case(seed: int, n: int = 40, c: int = 7, classes: int = 4, spatial: int = 3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    maps = torch.relu(torch.randn(n, c, spatial, spatial, generator=g, dtype=torch.float64))
    maps[:, c // 2] += 0.7 * y[:, None, None].to(torch.float64)  # one informative channel
    maps[:, c - 1] = maps[:, 0] + 0.05 * torch.randn(n, spatial, spatial, generator=g, dtype=torch.float64)
    return maps, y


def _assert_same(fast, ref, atol=1e-9) -> None:
    assert fast[0].tolist() == ref[0].tolist()
    torch.testing.assert_close(fast[1], ref[1], rtol=0, atol=atol)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_greedy_equals_the_reference(alpha: float, seed: int) -> None:
    maps, y = _case(seed)
    for kwargs in ({}, {"sigma_rule": "silverman", "gamma": 1.5}, {"max_steps": 3}, {"max_steps": 0}):
        fast = cmi_ranking(maps, y, alpha=alpha, **kwargs)
        _assert_same(fast, cmi_ranking_reference(maps, y, alpha=alpha, **kwargs))


def test_fast_greedy_equals_the_reference_at_the_criterions_sample_count() -> None:
    """256 samples, as the criterion keeps by default: the 256×256 problems go to numpy's LAPACK
    (``_linalg.NUMPY_EIGVALSH_MIN_SIZE``), the reference's to torch's; same order, same values."""
    maps, y = _case(5, n=256, c=5, classes=10, spatial=2)
    _assert_same(cmi_ranking(maps, y), cmi_ranking_reference(maps, y))


@pytest.mark.parametrize("alpha", [1.01, 2.0])
def test_fast_greedy_equals_the_reference_with_a_condition_and_one_hot_labels(alpha: float) -> None:
    maps, y = _case(3, c=6)
    prev, _ = _case(4, c=5)
    for joint in ("hadamard", "concat"):
        cond = conditioning_gram(prev, [0, 2], joint=joint)
        fast = cmi_ranking(maps, y, alpha=alpha, condition=cond)
        _assert_same(fast, cmi_ranking_reference(maps, y, alpha=alpha, condition=cond))
    one_hot = torch.nn.functional.one_hot(y, 4)
    _assert_same(cmi_ranking(maps, one_hot, alpha=alpha), cmi_ranking_reference(maps, y, alpha=alpha))


@pytest.mark.parametrize("alpha", [1.01, 2.0, 1.0])
def test_identical_and_near_identical_channels_tie_as_in_the_reference(alpha: float) -> None:
    g = torch.Generator().manual_seed(5)
    for trial in range(6):
        maps, y = _case(10 + trial, n=30, c=6)
        i, j = sorted(torch.randperm(6, generator=g)[:2].tolist())
        maps[:, j] = maps[:, i] * (1.0 + 1e-12 * trial)  # trial 0: an exact copy
        fast = cmi_ranking(maps, y, alpha=alpha)
        _assert_same(fast, cmi_ranking_reference(maps, y, alpha=alpha))
        assert fast[0].tolist().index(i) < fast[0].tolist().index(j)


def _vanishing_case(seed: int):
    """Narrow kernels (gamma 0.5) on noise: the running joint reaches I/n within the layer."""
    g = torch.Generator().manual_seed(seed)
    n, c = 24, 16
    y = torch.randint(0, 3, (n,), generator=g)
    maps = torch.randn(n, c, 2, 2, generator=g, dtype=torch.float64)
    maps[:, 5] += 3.0 * y[:, None, None]
    return maps, y


@pytest.mark.parametrize("alpha", [1.01, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_vanishing_stop_returns_the_full_greedys_answer(alpha: float, seed: int) -> None:
    maps, y = _vanishing_case(seed)
    result = cmi_greedy(maps, y, alpha=alpha, gamma=0.5)
    assert result.stop == "vanished" and result.steps < 16
    order, values = cmi_ranking_reference(maps, y, alpha=alpha, gamma=0.5)
    assert result.order.tolist() == order.tolist()
    torch.testing.assert_close(result.values[: result.steps], values[: result.steps], rtol=0, atol=1e-9)
    # the tail: increasing channel index, values 0 where the full greedy has rounding noise
    tail = result.order[result.steps :].tolist()
    assert tail == sorted(tail) and bool((result.values[result.steps :] == 0).all())
    assert float(values[result.steps :].abs().max()) < 1e-10
    # a wider kernel does not vanish: the full greedy runs to the end
    assert cmi_greedy(maps, y, alpha=alpha, gamma=0.7).stop == "complete"


@pytest.mark.parametrize("alpha", [1.01, 2.0])
def test_stop_gain_keeps_the_full_greedys_prefix_and_orders_the_rest_by_their_last_cmi(alpha: float) -> None:
    maps, y = _case(7, n=48, c=9)
    full = cmi_greedy(maps, y, alpha=alpha)
    v = full.values
    ratio = float(v[3] / v[0]) * 1.001  # at the latest, the 4th pick falls below the ratio
    stop = next(t for t in range(1, 9) if v[t] < ratio * v[0])  # the curve need not decrease
    part = cmi_greedy(maps, y, alpha=alpha, stop_gain=ratio)
    assert part.stop == "stop_gain" and part.steps == stop
    assert part.order[:stop].tolist() == full.order[:stop].tolist()
    torch.testing.assert_close(part.values[:stop], v[:stop], rtol=0, atol=1e-12)
    # the tail is what max_steps = steps + 1 leaves: that step's CMIs, in decreasing order
    capped = cmi_greedy(maps, y, alpha=alpha, max_steps=stop + 1)
    assert part.order.tolist() == capped.order.tolist()
    torch.testing.assert_close(part.values, capped.values, rtol=0, atol=0)
    assert cmi_greedy(maps, y, alpha=alpha, stop_gain=0.0).stop == "complete"
    for bad in (1.5, -0.1, "0.1", True):
        with pytest.raises(ConfigError, match="stop_gain"):
            cmi_greedy(maps, y, alpha=alpha, stop_gain=bad)


@pytest.mark.parametrize("alpha", [1.01, 2.0, 1.0])
def test_the_knee_stop_keeps_the_full_greedys_prefix_knee_and_total(alpha: float) -> None:
    """stop_at_knee: the steps taken are the full greedy's (order and values), the knee of the curve
    (what cmi_knee reads) is the full curve's, and the values still sum to the full curve's total."""
    early = 0
    for seed in range(4):
        maps, y = _case(seed, n=48, c=14, classes=4)
        cond = conditioning_gram(_case(seed + 10, n=48, c=4)[0], [0, 1]) if seed == 3 else None
        full = cmi_greedy(maps, y, alpha=alpha, condition=cond)
        ref_order, ref_values = cmi_ranking_reference(maps, y, alpha=alpha, condition=cond)
        assert full.order.tolist() == ref_order.tolist()
        knee = cmi_greedy(maps, y, alpha=alpha, condition=cond, stop_at_knee=True)
        assert knee.stop in ("knee", "complete", "vanished")
        assert knee.order[: knee.steps].tolist() == ref_order[: knee.steps].tolist()
        torch.testing.assert_close(knee.values[: knee.steps], ref_values[: knee.steps], rtol=0, atol=1e-9)
        assert sorted(knee.order.tolist()) == list(range(14))
        assert knee_keep(knee.values) == knee_keep(ref_values)
        assert abs(float(knee.values.sum() - ref_values.sum())) < 1e-9
        early += knee.steps < 13
    assert early >= 2  # the stop is taken, not only allowed


def test_runs_stopped_together_settle_the_knee_of_their_mean_curve() -> None:
    """A group of several feature points reads the mean of their curves: stopped together, the mean
    of the stored curves has the knee of the mean of the full curves (each point's own knee need not
    be the group's), and each point's prefix is its full greedy's."""
    early = 0
    for seed in range(4):
        cases = [_case(10 * seed + k, n=48, c=14, classes=4) for k in range(3)]
        y = cases[0][1]
        full = [cmi_greedy(maps, y) for maps, _ in cases]
        runs = [greedy_run(maps, y, stop_at_knee=True) for maps, _ in cases]
        finish_runs(runs)
        got = [r.result for r in runs]
        assert len({r.steps for r in got if r.stop == "knee"}) <= 1  # stopped at one step
        for g, f in zip(got, full):
            assert g.order[: g.steps].tolist() == f.order[: g.steps].tolist()
        mean_got = torch.stack([g.values for g in got]).mean(0)
        mean_full = torch.stack([f.values for f in full]).mean(0)
        assert knee_keep(mean_got) == knee_keep(mean_full)
        assert abs(float(mean_got.sum() - mean_full.sum())) < 1e-9
        early += all(g.steps < 13 for g in got)
    assert early >= 2


def test_calibration_stops_a_groups_points_at_the_groups_knee() -> None:
    """ResNet-20's residual streams are groups of several points: with the knee stop their curve
    (the mean over the points) keeps the full greedy's knee, for every group."""
    model = create_model("resnet20", in_channels=1).eval()
    groups = find_groups(model, (1, 16, 16))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 16, 16, generator=g), torch.randint(0, 4, (48,), generator=g)
    x = x + y[:, None, None, None].float()  # something to inform the channels
    table = {}
    for stop in (False, True):
        params = get_criterion("cmi").resolve({"samples": 48, "stop_at_knee": stop})
        table[stop] = calibrate(model, groups, {"cmi": params}, [(x, y)], show_progress=False)["cmi"]
    assert any(len(g.out_layers) > 1 for g in groups)  # a stream: one point per block output
    stopped = 0
    for group in groups:
        full, knee = table[False][group.name][1], table[True][group.name][1]
        assert knee_keep(knee["cmi_values"]) == knee_keep(full["cmi_values"]), group.name
        stopped += int(knee["cmi_steps"]) < group.channels
    assert stopped > 0


def test_a_groups_points_stop_together_in_the_group_reduction() -> None:
    """calibration._reduce hands a group's cmi accumulators to settle_group first: with the knee
    stop they all stop at one step, where the knee of their mean curve (the group's) is settled,
    and that knee is the full greedies' mean curve's."""
    from prunetune.pruning.calibration import _reduce

    crit = get_criterion("cmi")
    for seed in range(3):
        cases = [_case(10 * seed + k, n=48, c=14, classes=4) for k in range(3)]
        y = cases[0][1]
        accs = {}
        for stop in (False, True):
            accs[stop] = [crit.accumulator(14, **crit.resolve({"samples": 48, "stop_at_knee": stop})) for _ in cases]
            for acc, (maps, _) in zip(accs[stop], cases):
                acc.update(FeatureBatch(activations=maps, labels=y))
        full, knee = _reduce(accs[False]), _reduce(accs[True])
        assert knee_keep(knee[1]["cmi_values"]) == knee_keep(full[1]["cmi_values"])
        assert len({int(a.extras()["cmi_steps"]) for a in accs[True]}) == 1


def test_the_knee_stop_refuses_what_would_change_the_curve_or_the_order_it_settles() -> None:
    maps, y = _case(0)
    for kwargs in ({"stop_gain": 0.01}, {"max_steps": 3}):
        with pytest.raises(ConfigError, match="stop_at_knee"):
            cmi_greedy(maps, y, stop_at_knee=True, **kwargs)
    crit = get_criterion("cmi")
    for params in ({"condition": "previous"}, {"stop_gain": 0.01}, {"max_steps": 4}, {"stop_at_knee": "yes"}):
        with pytest.raises(ConfigError, match="stop_at_knee"):
            crit.resolve({"stop_at_knee": True, **params} if "stop_at_knee" not in params else params)
    assert crit.resolve({"stop_at_knee": True})["stop_at_knee"] is True


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.01, 2.0, 3.0])
def test_the_vanishing_bound_holds_near_the_uniform_matrix(alpha: float) -> None:
    g = torch.Generator().manual_seed(8)
    n = 20
    for scale in (1e-2, 1e-3, 1e-5):
        e = torch.rand(n, n, generator=g, dtype=torch.float64) * scale / n
        e = (e + e.T) / 2
        e.fill_diagonal_(0.0)
        m = torch.eye(n, dtype=torch.float64) / n + e
        bound = vanishing_bound(float(torch.linalg.matrix_norm(e)), n, alpha)
        assert math.isfinite(bound)
        assert abs(float(renyi_entropy(m, alpha)) - math.log2(n)) <= bound + 1e-13
    assert vanishing_bound(1.0 / n, n, alpha) == math.inf  # outside ρ = n·e ≤ 1/2


def test_vanished_needs_a_uniform_diagonal_and_a_tiny_off_diagonal() -> None:
    n = 16
    near = torch.eye(n, dtype=torch.float64) / n
    near[0, 1] = near[1, 0] = 1e-9
    assert vanished(near, 1.01)
    near[0, 1] = near[1, 0] = 1e-5
    assert not vanished(near, 1.01)
    skewed = torch.diag(torch.linspace(1.0, 2.0, n, dtype=torch.float64))
    assert not vanished(skewed / skewed.trace(), 1.01)  # not a normalised-Gram joint
    assert VANISH_BOUND < 1e-10


def test_class_blocks_partition_the_samples_by_class() -> None:
    y = torch.tensor([2, 0, 2, 1, 0, 2, 5])
    blocks = class_blocks(y)
    members = sorted(tuple(row.tolist()) for b in blocks for row in b)
    assert members == [(0, 2, 5), (1, 4), (3,), (6,)]
    assert [b.shape for b in blocks] == [(2, 1), (1, 2), (1, 3)]


def test_cmi_criterion_records_where_the_greedy_stopped() -> None:
    maps, y = _vanishing_case(0)
    crit = get_criterion("cmi")
    for params, steps in (({}, 16), ({"gamma": 0.5}, None), ({"max_steps": 4}, 4)):
        acc = crit.accumulator(16, **params)
        acc.update(FeatureBatch(activations=maps, labels=y))
        extras = acc.extras()
        recorded = int(extras["cmi_steps"])
        assert recorded == steps if steps is not None else recorded < 16
        assert sorted(extras["cmi_order"].tolist()) == list(range(16))
    with pytest.raises(ConfigError, match="stop_gain"):
        crit.resolve({"stop_gain": 1.5})
    assert crit.resolve({"stop_gain": 0.01})["stop_gain"] == 0.01
