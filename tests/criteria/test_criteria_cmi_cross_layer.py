"""Cross-layer CMI (``cmi`` with ``condition``): conditioning on a neighbouring layer's kept channels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prunetune.exceptions import ConfigError
from prunetune.models import create_model
from prunetune.pruning.calibration import calibrate
from prunetune.pruning.criteria import FeatureBatch, get_criterion, score
from prunetune.pruning.criteria.information import pool_to
from prunetune.pruning.criteria.renyi import (
    cmi_ranking,
    conditional_mutual_information,
    conditioning_gram,
    gram_matrix,
    hadamard_joint,
    label_gram,
    normalize_gram,
)
from prunetune.pruning.groups import find_groups
from prunetune.pruning.scores import compute_scores
from tests.conftest import randomize_bn


def _two_layers(seed: int):
    """Labels y = 2·b1 + b0. The previous layer: noise, b0 (kept), noise, noisy b1. The current
    layer: b1, noisier b1, an exact copy of the previous layer's b0 channel, b0 xor b1, b1 + 2·b0."""
    g = torch.Generator().manual_seed(seed)
    n = 96
    y = torch.randint(0, 4, (n,), generator=g)
    b0, b1 = (y % 2).double(), (y // 2).double()

    def ch(signal, noise):
        return signal[:, None, None] + noise * torch.randn(n, 3, 3, generator=g, dtype=torch.float64)

    zero = torch.zeros(n, dtype=torch.float64)
    prev = torch.stack([ch(zero, 1.0), ch(b0, 0.3), ch(zero, 1.0), ch(b1, 1.5)], 1)
    cur = torch.stack([ch(b1, 0.3), ch(b1, 0.6), prev[:, 1], ch((b0 + b1) % 2, 0.4), ch(b1 + 2 * b0, 0.8)], 1)
    return prev, cur, y


def _orders(prev, cur, y, **params):
    crit = get_criterion("cmi")
    p = crit.resolve(params)
    a_prev, a_cur = crit.accumulator(prev.shape[1], **p), crit.accumulator(cur.shape[1], **p)
    if p["condition"] != "none":
        a_cur.link(a_prev)
    a_prev.update(FeatureBatch(prev, labels=y))
    a_cur.update(FeatureBatch(cur, labels=y))
    return a_prev.extras()["cmi_order"].tolist(), a_cur.extras()["cmi_order"].tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_copy_of_a_kept_previous_channel_ranks_last(seed: int) -> None:
    prev, cur, y = _two_layers(seed)
    prev_order, order = _orders(prev, cur, y, condition="previous")
    assert 1 in prev_order[:2]  # the b0 channel is among the previous layer's kept half
    assert order[-1] == 2
    _, alone = _orders(prev, cur, y)  # the same layer unconditioned: the copy carries b0
    assert alone[-1] != 2


def test_the_condition_acts_as_channels_selected_before_the_first_step() -> None:
    prev, cur, y = _two_layers(0)
    kept = torch.tensor([1, 3])
    a_t = conditioning_gram(prev, kept)
    per = normalize_gram(gram_matrix(prev.reshape(96, 4, -1).transpose(0, 1)))
    torch.testing.assert_close(a_t, hadamard_joint(per[1], per[3]), rtol=0, atol=1e-15)
    order, values = cmi_ranking(cur, y, condition=a_t)
    a_x = normalize_gram(gram_matrix(cur.reshape(96, 5, -1).transpose(0, 1)))
    a_y = label_gram(y)
    first = torch.stack([conditional_mutual_information(a_y, a_x[j], a_t, 1.01) for j in range(5)])
    assert int(order[0]) == int(first.argmax())
    assert values[0].item() == pytest.approx(first.max().item(), abs=1e-9)
    second = conditional_mutual_information(a_y, a_x[order[1]], hadamard_joint(a_t, a_x[order[0]]), 1.01)
    assert values[1].item() == pytest.approx(second.item(), abs=1e-9)


def test_concat_condition_is_one_gram_of_the_width_scaled_maps() -> None:
    prev, _, _ = _two_layers(1)
    x = prev.reshape(96, 4, -1)[:, [0, 3]]
    d = torch.cdist(x.transpose(0, 1), x.transpose(0, 1))  # 2×n×n, per channel
    iu = torch.triu_indices(96, 96, 1)
    width = d[:, iu[0], iu[1]].median(dim=-1).values  # each channel's own median distance
    scaled = (x / width[None, :, None]).reshape(96, -1)
    expected = normalize_gram(gram_matrix(scaled))
    torch.testing.assert_close(conditioning_gram(prev, [0, 3], joint="concat"), expected, rtol=0, atol=1e-14)


def _chain(seed: int = 0):
    model = randomize_bn(create_model("tiny_convnet"), seed)
    groups = find_groups(model, (3, 16, 16))
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(40, 3, 16, 16, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    seen = {}
    modules = dict(model.named_modules())
    hooks = [modules[p].register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, F.relu(o.detach())))
             for p in ("bn1", "bn2", "bn3", "fc1")]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    maps = {"conv1": seen["bn1"], "conv2": seen["bn2"], "conv3": seen["bn3"], "fc1": seen["fc1"][:, :, None, None]}
    return model, groups, x, y, {k: pool_to(v.double(), 64) for k, v in maps.items()}  # cmi's max_spatial


@pytest.mark.parametrize("condition", ["previous", "next", "bidirectional"])
def test_calibration_conditions_each_group_on_its_ranked_neighbour(condition: str) -> None:
    model, groups, x, y, maps = _chain()
    params = {"condition": condition, "condition_keep": 0.25, "samples": 40}
    got = calibrate(model, groups, {"cmi": get_criterion("cmi").resolve(params)}, [(x[:24], y[:24]), (x[24:], y[24:])],
                    show_progress=False)["cmi"]
    names = ["conv1", "conv2", "conv3", "fc1"]
    direction = {"previous": dict.fromkeys(names, "previous"), "next": dict.fromkeys(names, "next"),
                 "bidirectional": {"conv1": "previous", "conv2": "previous", "conv3": "next", "fc1": "next"}}[condition]
    neighbour = {"previous": {"conv2": "conv1", "conv3": "conv2", "fc1": "conv3"},
                 "next": {"conv1": "conv2", "conv2": "conv3", "conv3": "fc1"}}
    expected: dict[str, list[int]] = {}

    def order(name: str) -> list[int]:  # the hand sweep, recursively along the neighbours
        if name not in expected:
            other = neighbour[direction[name]].get(name)
            cond = None
            if other is not None:
                k = max(1, math.floor(maps[other].shape[1] * 0.25))
                cond = conditioning_gram(maps[other], order(other)[:k])
            expected[name] = cmi_ranking(maps[name], y, condition=cond)[0].tolist()
        return expected[name]

    for name in names:
        assert got[name][1]["cmi_order"].tolist() == order(name), name
    plain = calibrate(model, groups, {"cmi": get_criterion("cmi").resolve({"samples": 40})}, [(x, y)],
                      show_progress=False)["cmi"]
    assert any(plain[n][1]["cmi_order"].tolist() != got[n][1]["cmi_order"].tolist() for n in names)


def test_condition_parameters_are_validated_and_fingerprinted(tmp_path) -> None:
    with pytest.raises(ConfigError, match="condition"):
        get_criterion("cmi").resolve({"condition": "sideways"})
    with pytest.raises(ConfigError, match="condition_keep"):
        get_criterion("cmi").resolve({"condition_keep": 0.0})
    with pytest.raises(ConfigError, match="condition_joint"):
        get_criterion("cmi").resolve({"condition_joint": "sum"})
    model, groups, x, y, _ = _chain()

    def fp(params):
        return compute_scores(model, groups, {"cmi": params}, calibration=lambda: [(x, y)], calibration_digest="d",
                              cache_dir=tmp_path, show_progress=False).fingerprints["cmi"]

    assert len({fp({"samples": 40}), fp({"samples": 40, "condition": "previous"}),
                fp({"samples": 40, "condition": "previous", "condition_joint": "concat"})}) == 3


def test_a_single_layer_scored_alone_is_unconditioned() -> None:
    _, cur, y = _two_layers(0)
    torch.testing.assert_close(score("cmi", feature_maps=cur, labels=y, condition="previous"),
                               score("cmi", feature_maps=cur, labels=y))
