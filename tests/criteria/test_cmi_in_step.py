"""The greedies of several layers run in step (``renyi.finish_sets``, ``cmi_steps.steps_together``,
the cmi accumulator's ``settle_groups``): each step's eigenvalue problems of every layer are solved
in shared batches, and every layer's result must be the one it gets alone."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from prunetune.models import create_model
from prunetune.pruning.calibration import calibrate
from prunetune.pruning.criteria import FeatureBatch, cmi, cmi_steps, get_criterion
from prunetune.pruning.criteria.renyi import finish_runs, finish_sets, greedy_run
from prunetune.pruning.groups import find_groups


def _layer(seed: int, y: torch.Tensor, c: int, spatial: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    maps = torch.relu(torch.randn(y.numel(), c, spatial, spatial, generator=g, dtype=torch.float64))
    maps[:, c // 3] += 0.6 * y[:, None, None].to(torch.float64)  # an informative channel
    maps[:, -1] = maps[:, 0] + 0.05 * torch.randn(y.numel(), spatial, spatial, generator=g, dtype=torch.float64)
    return maps


def _labels(seed: int, n: int = 40, classes: int = 4) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def _same(got, alone) -> None:
    assert (got.stop, got.steps) == (alone.stop, alone.steps)
    assert got.order.tolist() == alone.order.tolist()
    torch.testing.assert_close(got.values, alone.values, rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.01, 1.0, 3.0, 2.0, 0.5])
def test_layers_run_in_step_give_each_layers_result_alone(alpha: float) -> None:
    """Layers of different widths, with and without the knee stop, stop_gain, max_steps and a
    condition, in sets of one or several: the same orders, values and stops as each set alone.
    (α = 2 and α < 1 do not take the shared batches; they must still come out right.)"""
    y = _labels(0)
    specs = [  # (seed, channels, greedy_run options, set)
        (1, 9, {}, 0), (2, 5, {}, 1), (3, 12, {"stop_gain": 0.05}, 2), (4, 7, {"max_steps": 4}, 3),
        (5, 10, {"stop_at_knee": True}, 4), (6, 10, {"stop_at_knee": True}, 4), (7, 6, {"stop_at_knee": True}, 5),
    ]
    cond = cmi.conditioning_gram(_layer(9, y, 4), torch.tensor([0, 2]), joint="hadamard", sigma_rule="median", gamma=1.0)
    specs.append((8, 8, {"condition": cond}, 6))
    if alpha == 2.0 or alpha < 1.0:
        specs = [s for s in specs if "stop_at_knee" not in s[2]]
    maps = {seed: _layer(seed, y, c) for seed, c, _, _ in specs}

    def runs():
        return {seed: greedy_run(maps[seed], y, alpha=alpha, **kw) for seed, _, kw, _ in specs}

    alone = runs()
    for k in sorted({s[3] for s in specs}):
        finish_runs([alone[seed] for seed, _, _, which in specs if which == k])
    together = runs()
    finish_sets([[together[seed] for seed, _, _, which in specs if which == k] for k in sorted({s[3] for s in specs})])
    for seed, *_ in specs:
        _same(together[seed].result, alone[seed].result)
    stops = {together[seed].result.stop for seed, *_ in specs}
    assert "max_steps" in stops and len(stops) >= 2  # the early stops were taken, beside full runs


def test_steps_together_batches_the_layers_steps_and_matches_their_own_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """One call per step for all layers whose samples and labels agree; a small memory bound splits
    a step's candidates across chunks (and layers across a chunk's edge) without changing a value."""
    y = _labels(3, n=36, classes=3)
    layers = [_layer(20 + k, y, c) for k, c in enumerate((6, 9, 4))]
    other_labels = _labels(4, n=36, classes=3)
    alone = [greedy_run(m, y) for m in layers] + [greedy_run(layers[0], other_labels)]
    for r in alone:
        finish_runs([r])
    calls = []
    real = cmi_steps.steps_together

    def counting(steps):
        calls.append(len(steps))
        return real(steps)

    monkeypatch.setattr("prunetune.pruning.criteria.renyi.steps_together", counting)
    together = [greedy_run(m, y) for m in layers] + [greedy_run(layers[0], other_labels)]
    for r in together:
        r.ev.chunk = 5  # a chunk holds parts of two layers' steps
    finish_sets([[r] for r in together])
    for got, ref in zip(together, alone):
        _same(got.result, ref.result)
    assert max(calls) == 3  # the three layers with the same labels share each step's call
    assert together[0].ev.together_key() != together[3].ev.together_key()  # other labels: another batch


def test_calibration_runs_the_layers_in_step_with_each_groups_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """``calibrate`` hands every group's cmi accumulators to ``settle_groups``: on a GPU (here
    pretended) the groups share each step's batched calls, on the CPU each group runs alone; every
    table equals the one reduced group by group (the knee stop's group curves included), and a
    memory bound of one group per wave changes nothing either."""
    model = create_model("resnet20", in_channels=1).eval()
    groups = find_groups(model, (1, 16, 16))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 1, 16, 16, generator=g), torch.randint(0, 4, (40,), generator=g)
    x = x + y[:, None, None, None].float()
    batches = [(x[:24], y[:24]), (x[24:], y[24:])]

    def table(stop: bool):
        params = get_criterion("cmi").resolve({"samples": 40, "stop_at_knee": stop})
        return calibrate(model, groups, {"cmi": params}, batches, show_progress=False)["cmi"]

    sizes = []
    real = cmi_steps.steps_together
    monkeypatch.setattr("prunetune.pruning.criteria.renyi.steps_together", lambda s: sizes.append(len(s)) or real(s))
    on_cpu = {stop: table(stop) for stop in (False, True)}
    largest_group = max(len(g.feature_points) for g in groups)
    assert max(sizes) <= largest_group  # on the CPU each group runs alone
    sizes.clear()
    monkeypatch.setattr(cmi._SampleAccumulator, "on_accelerator", lambda self: True)  # as on a GPU
    in_step = {stop: table(stop) for stop in (False, True)}
    assert max(sizes) > largest_group  # layers of several groups shared a call
    monkeypatch.setattr(cmi, "SETTLE_MEMORY_MB", 0)  # every group its own wave
    waves = {stop: table(stop) for stop in (False, True)}
    monkeypatch.setattr(cmi._SampleAccumulator, "settle_groups", None)
    alone = {stop: table(stop) for stop in (False, True)}
    for stop in (False, True):
        for name in alone[stop]:
            for got in (in_step[stop][name], waves[stop][name], on_cpu[stop][name]):
                torch.testing.assert_close(got[0], alone[stop][name][0], rtol=0, atol=0)
                assert got[1]["cmi_order"].tolist() == alone[stop][name][1]["cmi_order"].tolist()
                torch.testing.assert_close(got[1]["cmi_values"], alone[stop][name][1]["cmi_values"], rtol=0, atol=1e-12)
                assert int(got[1]["cmi_steps"]) == int(alone[stop][name][1]["cmi_steps"])


def _accumulators(count: int, seed: int) -> list:
    """``count`` cmi accumulators of 6 channels, each fed one batch of 30 samples."""
    crit = get_criterion("cmi")
    y = _labels(seed, n=30)
    accs = []
    for k in range(count):
        acc = crit.accumulator(6, **crit.resolve({"samples": 30}))
        acc.update(FeatureBatch(activations=_layer(10 * seed + k, y, 6), labels=y))
        accs.append(acc)
    return accs


def test_settle_groups_frees_each_waves_gram_matrices(monkeypatch: pytest.MonkeyPatch) -> None:
    accs = _accumulators(3, seed=4)
    assert accs[0].gram_bytes() == 6 * 30 * 30 * 8
    monkeypatch.setattr(cmi._SampleAccumulator, "on_accelerator", lambda self: True)
    monkeypatch.setattr(cmi, "SETTLE_MEMORY_MB", 2 * accs[0].gram_bytes() / 2**20)  # two points a wave
    finished: list[weakref.ref] = []  # the Gram matrices of the waves run so far
    waves = []
    real_finish, real_greedy = cmi.finish_sets, cmi._SampleAccumulator.greedy

    def finish(sets):
        waves.append(len(sets))
        real_finish(sets)
        finished.extend(weakref.ref(r.ev.a_ch) for runs in sets for r in runs)

    def greedy(self):  # a new greedy is set up only once nothing holds an earlier wave's matrices
        if self._greedy is None:
            gc.collect()
            assert all(ref() is None for ref in finished)
        return real_greedy(self)

    monkeypatch.setattr(cmi, "finish_sets", finish)
    monkeypatch.setattr(cmi._SampleAccumulator, "greedy", greedy)
    cmi._SampleAccumulator.settle_groups([[a] for a in accs])
    assert waves == [2, 1]
    assert all(a._greedy is None and a._result is not None for a in accs)


def test_a_wave_takes_at_most_a_quarter_of_the_devices_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    accs = _accumulators(4, seed=5)
    monkeypatch.setattr(cmi._SampleAccumulator, "on_accelerator", lambda self: True)
    monkeypatch.setattr(cmi, "_free_bytes", lambda device: 4 * 2 * accs[0].gram_bytes())  # room for two a wave
    waves = []
    real = cmi.finish_sets
    monkeypatch.setattr(cmi, "finish_sets", lambda sets: waves.append(len(sets)) or real(sets))
    cmi._SampleAccumulator.settle_groups([[a] for a in accs])
    assert waves == [2, 2]


def test_a_device_that_does_not_say_its_free_memory_leaves_the_fixed_bound() -> None:
    assert cmi._free_bytes(torch.device("cpu")) > 2**60
