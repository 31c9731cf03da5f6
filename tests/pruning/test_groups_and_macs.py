"""Groups, keep counts, analytic vs counted MACs, and the hand-derived ResNet-56 widths."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunetune.models import create_model
from prunetune.pruning.allocation import KeepRule, keep_from_ratios
from prunetune.pruning.groups import find_groups
from prunetune.pruning.macs import count_cost
from prunetune.testing import check_model

SHAPE = (3, 32, 32)


def test_resnet56_has_the_30_expected_groups() -> None:
    groups = find_groups(create_model("resnet56"), SHAPE)
    expected = ["conv1", *[f"layer1.{b}.conv1" for b in range(9)],
                "layer2.0.conv1", "layer2.0.conv2", *[f"layer2.{b}.conv1" for b in range(1, 9)],
                "layer3.0.conv1", "layer3.0.conv2", *[f"layer3.{b}.conv1" for b in range(1, 9)]]
    assert groups.names == expected
    stream = groups["conv1"]
    assert set(stream.out_layers) == {"conv1", *[f"layer1.{b}.conv2" for b in range(9)]}
    assert "fc" not in {l for g in groups for l in g.out_layers}  # the classifier's outputs are never pruned
    assert "fc" in groups["layer3.0.conv2"].in_layers


def test_group_channel_counts_and_macs_shares() -> None:
    groups = find_groups(create_model("resnet56"), SHAPE)
    assert [groups[n].channels for n in ("conv1", "layer2.0.conv2", "layer3.0.conv2")] == [16, 32, 64]
    assert all(0 < g.macs_share < 1 for g in groups)


def test_keep_rule_floor_min_keep_and_round_to() -> None:
    assert KeepRule().keep(16, 0.4) == 9  # floor(16 * 0.6) = 9
    assert KeepRule().keep(64, 0.4) == 38  # floor(38.4)
    assert KeepRule(min_keep=4).keep(16, 0.95) == 4
    assert KeepRule(round_to=8).keep(64, 0.4) == 40  # 38 rounded up to a multiple of 8
    assert KeepRule(round_to=8).keep(12, 0.1) == 12  # capped at N
    assert KeepRule().keep(10, 0.0) == 10


def hand_widths_resnet56(ratio: float) -> list[int]:
    """Widths worked out by hand: each group keeps floor(N·(1−p)) of 16/32/64 channels."""
    keep16, keep32, keep64 = (math.floor(n * (1 - ratio)) for n in (16, 32, 64))
    return [keep16] * 10 + [keep32] * 10 + [keep64] * 10


def test_groups_command_widths_match_hand_derivation_at_0_4() -> None:
    groups = find_groups(create_model("resnet56"), SHAPE)
    keep = keep_from_ratios(groups, {}, default=0.4)
    assert [keep[n] for n in groups.names] == [9] * 10 + [19] * 10 + [38] * 10 == hand_widths_resnet56(0.4)


class _ConcatIntoDepthwise(nn.Module):
    """Two convs concatenated into a depthwise conv: one coupled group whose channels are written in slices."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.dw(torch.cat([self.left(x), self.right(x)], 1))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.pw(x), 1), 1))


def test_a_concatenation_into_a_depthwise_conv_is_left_unpruned_not_half_a_group() -> None:
    # the group was named after `left` with its 8 channels while `right` and `dw` hold 4 and 12:
    # scoring it failed (tensors of different sizes) and masking it crashed
    model = _ConcatIntoDepthwise().eval()
    groups = find_groups(model, (3, 8, 8))
    assert "left.0" not in groups.names and any(s.startswith("left.0:") for s in groups.skipped)
    for g in groups:
        for layer in g.out_layers:
            module = dict(model.named_modules())[layer]
            assert (module.out_channels if isinstance(module, nn.Conv2d) else module.out_features) == g.channels
    check_model(lambda: _ConcatIntoDepthwise(), (3, 8, 8))


class _GroupNormNet(nn.Module):
    """Conv → GroupNorm(2 groups) → conv; and a GroupNorm(1) (layer norm over C×H×W) that any count fits."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(1, 8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


class _Grouped(nn.Module):
    """A depthwise conv with a channel multiplier of 2 (TensorFlow's depth_multiplier), a conv of 2
    groups, and a plain depthwise conv, which is pruned through."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.mult = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.b, self.two = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c, self.dw = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.dw(self.c(self.two(self.b(self.mult(self.a(x)))))).mean((2, 3)))


def test_a_grouped_conv_is_named_with_why_and_a_plain_depthwise_one_is_pruned_through() -> None:
    groups = find_groups(_Grouped().eval(), (3, 8, 8))
    assert "c" in groups.names and "a" not in groups.names and "b" not in groups.names
    assert ("a: touches grouped conv 'mult' (8 groups of 1 input and 2 output channels each; a depthwise conv with a "
            "channel multiplier: only depthwise convs with as many outputs as inputs are pruned through), "
            "left unpruned") in groups.skipped
    assert ("b: touches grouped conv 'two' (2 groups of 4 input and 4 output channels each; removing single "
            "channels would break its groups), left unpruned") in groups.skipped


def test_a_group_norm_with_several_groups_is_left_unpruned() -> None:
    # keeping 7 of 8 channels left GroupNorm(2, 7): every count of the pruned copy (the budget
    # projection, the budget check) crashed with "channels ... divisible by num_groups"
    model = _GroupNormNet().eval()
    groups = find_groups(model, (3, 8, 8))
    assert groups.names == ["b.0"]
    assert any(s.startswith("a.0:") and "GroupNorm 'a.1' (2 groups)" in s for s in groups.skipped)
    check_model(lambda: _GroupNormNet(), (3, 8, 8), masks=False)  # GroupNorm(1): removal changes its statistics


class _ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle (view, transpose, reshape): the graph sees a conv feeding a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.b(x).mean((2, 3)))


class _GatedHalves(nn.Module):
    """A gated linear unit: one conv's output chunked in two halves, one gating the other."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        u, v = self.a(x).chunk(2, 1)
        return self.fc(self.b(u * torch.sigmoid(v)).mean((2, 3)))


def test_groups_whose_removal_breaks_the_forward_pass_are_left_unpruned() -> None:
    # Torch-Pruning does not follow a channel shuffle or a product of two halves of one tensor:
    # removing channels there left a network whose forward pass crashed (view of a wrong size,
    # halves of different widths, empty convs) in every count, budget projection and removal
    for factory in (_ChannelShuffle, _GatedHalves):
        groups = find_groups(factory().eval(), (3, 8, 8))
        assert groups.names == ["b.0"], factory.__name__
        # the probe removes two of the shuffle's 8 channels: 6 still divides, and the copy runs to
        # another function; the gated unit's halves still break
        why = "changes the network's function" if factory is _ChannelShuffle else "breaks the forward pass"
        assert any(s.startswith("a.0:") and why in s for s in groups.skipped), groups.skipped
        assert not groups.counted
        check_model(factory, (3, 8, 8))


def test_tracing_leaves_the_global_random_state_alone() -> None:
    """find_groups, group_l2 and physical removal trace the model on an input of their own: a user's
    seeded run draws the same random numbers after them as before."""
    from prunetune.pruning import tp_bridge
    from prunetune.pruning.scores import group_weight_scores

    model = create_model("resnet20")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    groups = find_groups(model, (3, 32, 32))
    group_weight_scores(model, groups)
    g = groups.groups[0]
    tp_bridge.remove_channels(model, {g.out_layers[0]: [0]}, (3, 32, 32))
    assert torch.equal(torch.get_rng_state(), before)
    a, b = tp_bridge.example_input((3, 4, 4)), tp_bridge.example_input((3, 4, 4))
    assert torch.equal(a, b) and a.shape == (1, 3, 4, 4)


def test_a_float64_model_is_traced_in_float64() -> None:
    """The tracing input takes the model's dtype: a float64 model used to fail to trace at all (a
    float32 input against float64 weights)."""
    model = create_model("resnet20").double()
    groups = find_groups(model, (3, 16, 16))
    assert groups.names == find_groups(create_model("resnet20"), (3, 16, 16)).names and groups.skipped == ()


def test_calibration_skips_an_empty_batch() -> None:
    from prunetune.pruning.calibration import calibrate
    from prunetune.pruning.criteria import get_criterion

    model = create_model("resnet20")
    groups = find_groups(model, (3, 16, 16))
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4) % 2
    params = {n: get_criterion(n).resolve({}) for n in ("sfs", "hrank", "chip")}
    with_empty = calibrate(model, groups, params, [(x[:0], y[:0]), (x, y), (x[:0], y[:0])], show_progress=False)
    plain = calibrate(model, groups, params, [(x, y)], show_progress=False)
    for crit in params:
        for g in groups:
            assert torch.equal(with_empty[crit][g.name][0], plain[crit][g.name][0])


class _AuxHead(nn.Module):
    """An auxiliary classifier the forward runs only in training (as GoogLeNet's and Inception's)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)
        self.aux = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.conv2(x)
        out = self.fc(x.mean(dim=(2, 3)))
        return (out, self.aux(x.flatten(1))) if self.training else out


def test_a_layer_the_counted_forward_never_runs_costs_no_macs() -> None:
    """MACs are one eval forward's; an unused Linear was counted as in × out MACs (a 10 240-MAC
    error here), so a budget was measured against MACs the deployed network never spends."""
    check_model(_AuxHead, (3, 8, 8))


class _FunctionalMix(nn.Module):
    """A fixed spatial mix of the input image through ``torch.matmul``: MACs outside any layer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mix", torch.eye(8) * 0.5)
        self.a, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.a(x + x @ self.mix)).mean((2, 3)))


def test_macs_shares_are_of_every_dense_mac_functional_ops_included() -> None:
    """`groups` printed the shares of layer MACs only beside a total holding the functional ops too."""
    groups = find_groups(_FunctionalMix().eval(), (3, 8, 8))
    (group,) = groups
    layers = 8 * 3 * 9 * 64 + 8 * 10
    assert math.isclose(group.macs_share, layers / (layers + 3 * 8 * 8 * 8), rel_tol=1e-12)


def test_groups_are_found_under_inference_mode_and_with_frozen_layers() -> None:
    """Under torch.inference_mode() no group was found (autograd off), and a frozen stem's groups
    vanished without a reason: Torch-Pruning follows channels through autograd. Both give all 12
    groups of ResNet-20 now, the frozen parameters stay frozen through removal, and a model built in
    inference mode is one line."""
    import pytest

    from prunetune.exceptions import ConfigError
    from prunetune.pruning.plan import make_plan
    from prunetune.pruning.surgery import apply_plan

    dense = find_groups(create_model("resnet20", in_channels=1), (1, 16, 16))
    assert len(dense.names) == 12 and not dense.skipped
    model = create_model("resnet20", in_channels=1)
    with torch.inference_mode():
        groups = find_groups(model, (1, 16, 16))
        plan = make_plan(groups, {g.name: torch.arange(g.channels, dtype=torch.float64) for g in groups},
                         {g.name: g.channels // 2 for g in groups})
        apply_plan(model, plan, groups)
    assert groups.names == dense.names and not groups.skipped
    assert not any(p.is_inference() for p in model.parameters())  # trainable after the block
    frozen = create_model("resnet20", in_channels=1)
    for name, p in frozen.named_parameters():
        if name.startswith(("conv1", "bn1", "layer1")):
            p.requires_grad_(False)
    stiff = {n for n, p in frozen.named_parameters() if not p.requires_grad}
    groups = find_groups(frozen, (1, 16, 16))
    assert groups.names == dense.names and not groups.skipped
    assert {n for n, p in frozen.named_parameters() if not p.requires_grad} == stiff  # as the trace found them
    apply_plan(frozen, plan, groups)
    assert {n for n, p in frozen.named_parameters() if not p.requires_grad} == stiff  # and after removal
    with torch.inference_mode():
        built_there = create_model("resnet20", in_channels=1)
    with pytest.raises(ConfigError, match=r"holds tensors created under torch.inference_mode\(\), which autograd "
                                          r"cannot trace; build or load it outside inference mode$"):
        find_groups(built_there, (1, 16, 16))


def test_counting_a_shape_the_model_cannot_take_is_one_line() -> None:
    import pytest

    from prunetune.exceptions import ConfigError
    from prunetune.pruning import count_cost

    model = create_model("tiny_convnet", in_channels=1)
    with pytest.raises(ConfigError, match=r"cannot run on an input of shape \(3, 16, 16\) \(Given groups=1"):
        count_cost(model, (3, 16, 16))
    with pytest.raises(ConfigError, match=r"input_shape must be \(C, H, W\)"):
        count_cost(model, "16x16")
    assert model.training  # its mode as it came


def test_a_frozen_batch_norm_stays_in_eval_mode_through_every_pass() -> None:
    """Each pass put the model back with ``model.train(was_training)``, which sets every submodule to the
    top module's mode: a BN frozen with ``bn.eval()`` inside a training model (a detection backbone, a
    head-only fine-tune) came back in train mode from find_groups, count_cost, calibrate, evaluate and
    BN re-estimation, and its statistics then moved on the next training step."""
    from prunetune.pruning import count_cost
    from prunetune.pruning.calibration import calibrate
    from prunetune.pruning.finetune import evaluate, recalibrate_bn

    model = create_model("resnet20", in_channels=1).train()
    model.bn1.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    batches = [(torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,)))]
    groups = find_groups(model, (1, 16, 16))
    assert {n: m.training for n, m in model.named_modules()} == modes
    count_cost(model, (1, 16, 16))
    assert {n: m.training for n, m in model.named_modules()} == modes
    calibrate(model, groups, {"hrank": {}}, batches, show_progress=False)
    assert {n: m.training for n, m in model.named_modules()} == modes
    evaluate(model, batches)
    assert {n: m.training for n, m in model.named_modules()} == modes
    recalibrate_bn(model, batches)
    assert {n: m.training for n, m in model.named_modules()} == modes



def test_weight_scores_refuse_groups_found_on_another_model() -> None:
    """Groups of another model gave a KeyError (group_l2: a RuntimeError calling itself a bug) where the
    layer names differed, and scores of the wrong length where a width did."""
    import dataclasses

    import pytest

    from prunetune.exceptions import ConfigError
    from prunetune.pruning.scores import weight_scores

    model = create_model("resnet20", num_classes=10, in_channels=3)
    deeper = find_groups(create_model("resnet32", num_classes=10, in_channels=3), (3, 16, 16))
    for name in ("l1", "group_l2"):
        with pytest.raises(ConfigError, match=r"^group .* names layer .*, which CifarResNet has not: the groups were "
                                              r"found on another model; pass find_groups\(model, input_shape\)"):
            weight_scores(model, deeper, name, {})
    groups = find_groups(model, (3, 16, 16))
    first = groups.groups[0]
    wider = dataclasses.replace(groups, groups=(dataclasses.replace(first, channels=first.channels + 1),
                                                *groups.groups[1:]))
    with pytest.raises(ConfigError, match=rf"^group {first.name!r} has {first.channels + 1} channels, but this "
                                          rf"model's layer .* has {first.channels}: the groups were found on another"):
        weight_scores(model, wider, "l1", {})
    assert len(weight_scores(model, groups, "l1", {})) == len(groups.groups)


def test_a_groups_macs_share_counts_the_transposed_conv_it_feeds() -> None:
    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.u, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 3, 2, stride=2), nn.Linear(3, 10)

        def forward(self, x):
            return self.fc(self.u(torch.relu(self.a(x))).mean((2, 3)))

    groups = find_groups(Up(), (3, 8, 8))
    # a: 4·3·9·64 = 6912 MACs, u (counted, not modelled): 4·3·4·64 = 3072, fc: 30 (the total 10014 counted)
    assert count_cost(Up(), (3, 8, 8)).macs == 10014
    assert groups["a"].macs_share == pytest.approx((6912 + 3072) / 10014, rel=1e-12)


def test_a_slow_trace_says_it_is_still_running(monkeypatch, caplog) -> None:
    """Torch-Pruning's graph fix took 123 s on a multi-scale concatenating head, silently: it looked
    like a hang."""
    import logging
    import time

    import torch_pruning as tp

    from prunetune.models import create_model
    from prunetune.pruning import tp_bridge

    build = tp.DependencyGraph.build_dependency

    def slow(self, *args, **kwargs):
        time.sleep(0.5)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(tp_bridge, "SLOW_TRACE_S", 0.05)
    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", slow)
    with caplog.at_level(logging.WARNING, logger="prunetune"):
        tp_bridge.build_graph(create_model("tiny_resnet", in_channels=1), torch.randn(1, 1, 8, 8))
    assert "tracing CifarResNet's channel dependencies (Torch-Pruning) has taken over 0 s" in caplog.text
    timers = []

    class Timer:  # records what build_graph does with its timer
        def __init__(self, seconds, fn):
            self.started = self.cancelled = False
            timers.append(self)

        def start(self):
            self.started = True

        def cancel(self):
            self.cancelled = True

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", build)
    monkeypatch.setattr(tp_bridge.threading, "Timer", Timer)
    tp_bridge.build_graph(create_model("tiny_resnet", in_channels=1), torch.randn(1, 1, 8, 8))
    assert len(timers) == 1 and timers[0].started and timers[0].cancelled  # a finished trace says nothing later
