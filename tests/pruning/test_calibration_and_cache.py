"""The calibration pass and the score cache."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

import prunetune.pruning.scores as scores_module
from prunetune.cli import main
from prunetune.models import create_model
from prunetune.pruning.calibration import calibrate
from prunetune.pruning.criteria import get_criterion, score
from prunetune.pruning.groups import find_groups
from prunetune.pruning.scores import compute_scores
from tests.conftest import randomize_bn

SHAPE = (3, 16, 16)
ACTIVATION_CRITERIA = ["chip", "hrank", "dfs", "sfs", "dfs_sfs", "independence"]


@pytest.fixture(scope="module")
def setup():
    model = randomize_bn(create_model("tiny_resnet"))
    groups = find_groups(model, SHAPE)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, *SHAPE, generator=gen), torch.randint(0, 10, (48,), generator=gen)
    return model, groups, x, y


def _params(name: str) -> dict:
    return {"source": "feature"} if name == "independence" else {}


def _batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


@pytest.mark.parametrize("name", ACTIVATION_CRITERIA)
def test_streaming_pass_equals_one_batch(setup, name) -> None:
    model, groups, x, y = setup
    crit = {name: get_criterion(name).resolve(_params(name))}
    streamed = calibrate(model, groups, crit, _batches(x, y, 16), show_progress=False)
    whole = calibrate(model, groups, crit, _batches(x, y, 48), show_progress=False)
    for g in groups.names:
        assert torch.allclose(streamed[name][g][0], whole[name][g][0], atol=1e-8), g


def test_pass_reads_relu_of_bn_outputs_and_averages_stream_members(setup) -> None:
    model, groups, x, y = setup
    seen = {}
    modules = dict(model.named_modules())
    stream = groups["conv1"]
    hooks = [modules[p].register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, F.relu(o.detach())))
             for p in stream.feature_points]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    expected = torch.stack([score("dfs", feature_maps=seen[p]) for p in stream.feature_points]).mean(0)
    got = calibrate(model, groups, {"dfs": {}}, _batches(x, y, 16), point="bn",
                    show_progress=False)["dfs"]["conv1"][0]
    assert len(stream.feature_points) == 2  # bn1 and layer1.0.bn2
    assert torch.allclose(got, expected.to(got.dtype), atol=1e-10)


def test_hooks_are_removed_after_an_error(setup) -> None:
    model, groups, x, y = setup

    def failing():
        yield x[:8], y[:8]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        calibrate(model, groups, {"dfs": {}}, failing(), show_progress=False)
    assert all(not m._forward_hooks for m in model.modules())


def test_taylor_runs_with_gradients_and_leaves_no_grads(setup) -> None:
    model, groups, x, y = setup
    out = calibrate(model, groups, {"taylor": {}}, _batches(x, y, 16), show_progress=False)["taylor"]
    assert all(torch.isfinite(s).all() and (s >= 0).all() for s, _ in out.values())
    assert any(float(s.sum()) > 0 for s, _ in out.values())
    assert all(p.grad is None for p in model.parameters())


def test_cache_loads_and_recomputes_on_any_change(setup, tmp_path, monkeypatch) -> None:
    model, groups, x, y = setup
    model = randomize_bn(create_model("tiny_resnet"))
    calls = []
    real = scores_module.calibrate

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scores_module, "calibrate", counting)

    def table(m, crit, n=32, digest="d1"):
        return compute_scores(m, groups, crit, calibration=lambda: _batches(x[:n], y[:n], 16),
                              calibration_digest=f"{digest}:{n}", cache_dir=tmp_path, show_progress=False)

    first = table(model, {"chip": None, "l1": None})
    assert not first.all_cached and len(calls) == 1
    second = table(model, {"chip": None, "l1": None})
    assert second.all_cached and len(calls) == 1 and second.fingerprint == first.fingerprint
    assert all(torch.equal(first["chip"][g], second["chip"][g]) for g in groups.names)
    table(model, {"chip": None}, n=48, digest="d2")  # calibration size changed
    assert len(calls) == 2
    table(model, {"independence": {"source": "feature"}})  # a criterion parameter changed
    assert len(calls) == 3
    with torch.no_grad():
        model.layer2[0].conv1.weight[0, 0, 0, 0] += 1e-3  # one weight changed
    changed = table(model, {"chip": None, "l1": None})
    assert len(calls) == 4 and not changed.cached["l1"] and changed.fingerprint != first.fingerprint


def test_score_command_says_computed_then_cached(tmp_path, capsys) -> None:
    recipe = {
        "model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1}, "data": {"name": "digits", "image_size": 8},
        "criterion": {"blend": {"capacity": 0.7, "independence": 0.3}, "normalizer": "rank"},
        "allocation": {"ratio": 0.3}, "pretrain": {"epochs": 1}, "calibration": {"size": 64, "cache_dir": str(tmp_path)},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    outputs = []
    for _ in range(2):
        assert main(["score", "--recipe", str(path), "--criteria", "chip,l1", "--format", "json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0]["cached"] is False and outputs[1]["cached"] is True
    assert outputs[0]["fingerprint"] == outputs[1]["fingerprint"]
    assert set(outputs[1]["scores"]) == {"chip", "l1"}
    assert main(["score", "--recipe", str(path), "--criteria", "chipp"]) == 2
    assert "did you mean 'chip'" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["a-list", "no-scores", "missing-group", "wrong-size", "non-finite", "torn"])
def test_a_damaged_cache_entry_is_recomputed_and_replaced(setup, tmp_path, damage) -> None:
    # a readable entry that was no score table was a TypeError traceback; one with missing, wrong-sized or
    # non-finite scores failed every later run with "criterion 'l1' gave ... scores" until deleted by hand
    model, groups, _, _ = setup
    first = compute_scores(model, groups, {"l1": None}, cache_dir=tmp_path, show_progress=False)
    (entry,) = (tmp_path / "scores").glob("*.pt")
    good = torch.load(entry, weights_only=True)
    name = groups.names[0]
    if damage == "a-list":
        torch.save([1, 2], entry)
    elif damage == "no-scores":
        torch.save({"extras": {}}, entry)
    elif damage == "missing-group":
        torch.save({"scores": {g: s for g, s in good["scores"].items() if g != name}, "extras": {}}, entry)
    elif damage == "wrong-size":
        torch.save({"scores": {**good["scores"], name: torch.ones(1)}, "extras": {}}, entry)
    elif damage == "non-finite":
        torch.save({"scores": {**good["scores"], name: good["scores"][name] * float("nan")}, "extras": {}}, entry)
    else:
        entry.write_bytes(entry.read_bytes()[:100])
    again = compute_scores(model, groups, {"l1": None}, cache_dir=tmp_path, show_progress=False)
    assert not again.cached["l1"]
    assert all(torch.equal(first["l1"][g], again["l1"][g]) for g in groups.names)
    assert compute_scores(model, groups, {"l1": None}, cache_dir=tmp_path, show_progress=False).cached["l1"]


def test_the_full_cmi_greedy_in_the_cache_answers_a_knee_stop_request(setup, tmp_path, monkeypatch) -> None:
    """A ``cmi_knee`` trial of a search whose space also offered ``cmi_cumulative`` was planned on the
    full greedy's scores; replayed on its own its recipe asks for the knee stop. The cached full greedy
    answers it where only its extras count (the knee is the same; the order after it is not, so never
    for a blended ``cmi``): no second calibration, and the table records the entry it read. Not the
    other way round: a knee-stopped entry never stands in for the full greedy."""
    model, groups, x, y = setup
    calls = []
    real = scores_module.calibrate
    monkeypatch.setattr(scores_module, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))

    def table(stop: bool, cache_dir, extras_only=("cmi",)):
        return compute_scores(model, groups, {"cmi": {"samples": 32, "stop_at_knee": stop}},
                              calibration=lambda: _batches(x[:32], y[:32], 16), calibration_digest="d",
                              cache_dir=cache_dir, show_progress=False, extras_only=extras_only)

    full = table(False, tmp_path)
    blended = table(True, tmp_path, extras_only=())  # its scores (the order after the knee) would be used
    assert len(calls) == 2 and not blended.cached["cmi"]
    (tmp_path / "scores" / f"{blended.fingerprints['cmi']}.pt").unlink()
    knee = table(True, tmp_path)
    assert len(calls) == 2 and knee.cached["cmi"] and knee.fingerprints["cmi"] == full.fingerprints["cmi"]
    assert all(torch.equal(full["cmi"][g], knee["cmi"][g]) for g in groups.names)
    other = tmp_path / "other"
    table(True, other)
    assert len(calls) == 3
    again = table(False, other)  # the knee stop's entry is not the full greedy's
    assert len(calls) == 4 and not again.cached["cmi"]


def test_scratch_tensors_are_reused_in_the_pass_only() -> None:
    from prunetune.pruning.criteria._scratch import reuse_scratch, scratch

    cpu = torch.device("cpu")
    assert scratch("t", (3, 4), torch.float64, cpu) is not scratch("t", (3, 4), torch.float64, cpu)
    with reuse_scratch():
        a = scratch("t", (3, 4), torch.float64, cpu)
        with reuse_scratch():  # a nested block shares the pool
            assert scratch("t", (3, 4), torch.float64, cpu) is a
        assert scratch("u", (3, 4), torch.float64, cpu) is not a  # one per tag
        b = scratch("t", (4, 3), torch.float64, cpu)  # another shape replaces it
        assert b is not a and scratch("t", (4, 3), torch.float64, cpu) is b
    assert scratch("t", (4, 3), torch.float64, cpu) is not b  # freed with the block


def test_pass_with_reused_scratch_equals_fresh_tensors(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """No accumulator keeps a scratch tensor (or a view) past its batch: the pass, which reuses them
    from point to point, gives bit for bit what it gives with a fresh tensor every time."""
    from prunetune.pruning.criteria import _scratch

    model, groups, x, y = setup
    crit = {n: get_criterion(n).resolve(_params(n)) for n in ACTIVATION_CRITERIA}
    crit["capacity"] = get_criterion("capacity").resolve({"source": "feature"})
    reused = calibrate(model, groups, crit, _batches(x, y, 16), show_progress=False)
    monkeypatch.setattr(_scratch, "scratch", lambda tag, shape, dtype, device: torch.full(
        tuple(shape), float("nan"), dtype=dtype, device=device))
    monkeypatch.setattr("prunetune.pruning.criteria._common.scratch", _scratch.scratch)
    monkeypatch.setattr("prunetune.pruning.criteria.activation.scratch", _scratch.scratch)
    fresh = calibrate(model, groups, crit, _batches(x, y, 16), show_progress=False)
    for name in crit:
        for g in groups.names:
            assert torch.equal(reused[name][g][0], fresh[name][g][0]), (name, g)
