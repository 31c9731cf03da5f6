"""find_groups' removal probe: a group is kept only where physically removing channels computes what
masking them computes, not merely where the pruned copy still runs.

Each user-style model below holds a channel dependency Torch-Pruning does not follow and whose
removal, one channel per group as the probe used to try, still ran: the group was kept and every
plan over it deployed a network computing something else than the masked one that was scored and
fine-tuned.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from prunetune.models import create_model
from prunetune.pruning.groups import find_groups
from prunetune.pruning.plan import make_plan
from prunetune.pruning.surgery import MaskHooks, apply_plan, channel_masks
from prunetune.testing import check_model, randomize_bn

SHAPE = (3, 8, 8)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _Rolled(nn.Module):
    """A fixed cyclic permutation of the channels between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = _block(3, 8), _block(8, 8), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.b(torch.roll(self.a(x), 1, dims=1)).mean((2, 3)))


class _EvenOdd(nn.Module):
    """Channels reordered by index: the even ones first, then the odd ones (index_select)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = _block(3, 8), _block(8, 8), nn.Linear(8, 10)

    def forward(self, x):
        y = self.a(x)
        order = torch.cat([torch.arange(0, y.shape[1], 2), torch.arange(1, y.shape[1], 2)])
        return self.fc(self.b(y.index_select(1, order)).mean((2, 3)))


class _TailSlice(nn.Module):
    """A head that reads only the last 4 channels of the features (``x[:, -4:]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = _block(3, 8), _block(8, 8), nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.b(self.a(x))[:, -4:].mean((2, 3)))


class _HeadSlice(nn.Module):
    """A head that reads only the first 4 channels (``x[:, :4]``): removing the last channel is a
    true equivalence, so only removing an earlier one shows the slice."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = _block(3, 8), _block(8, 8), nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.b(self.a(x))[:, :4].mean((2, 3)))


class _MeanBroadcast(nn.Module):
    """The mean over channels subtracted from every channel (a hand-written cross-channel centring)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = _block(3, 8), _block(8, 8), nn.Linear(8, 10)

    def forward(self, x):
        y = self.a(x)
        return self.fc(self.b(y - y.mean(1, keepdim=True)).mean((2, 3)))


class _ShuffledConcat(nn.Module):
    """ShuffleNet's channel shuffle over a concatenation of two branches: one channel removed from
    each leaves 14 channels, which still divide into 2 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right, self.b = _block(3, 8), _block(3, 8), _block(16, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.cat([self.left(x), self.right(x)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.b(y).mean((2, 3)))


class _ChannelsLastFlatten(nn.Module):
    """A feature map flattened channels-last into a Linear: Torch-Pruning slices the Linear's
    inputs as if the flatten were channels-first."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc = _block(3, 4), nn.Linear(4 * 2 * 2, 10)

    def forward(self, x):
        y = nn.functional.adaptive_avg_pool2d(self.a(x), 2)
        return self.fc(y.permute(0, 2, 3, 1).reshape(y.shape[0], -1))


CHANGED = {  # model -> (the groups left unpruned, the groups kept)
    _Rolled: (["a.0"], ["b.0"]),
    _EvenOdd: (["a.0"], ["b.0"]),
    _TailSlice: (["b.0"], ["a.0"]),
    _HeadSlice: (["b.0"], ["a.0"]),
    _MeanBroadcast: (["a.0"], ["b.0"]),
    _ShuffledConcat: (["left.0", "right.0"], ["b.0"]),
    _ChannelsLastFlatten: (["a.0"], []),
}


def _masked_vs_removed(model: nn.Module, groups, keep: dict[str, int], seed: int = 0) -> float:
    """Max |masked − physically pruned| over a random plan, in float64, relative to the output scale."""
    gen = torch.Generator().manual_seed(seed)
    plan = make_plan(groups, {g.name: torch.rand(g.channels, generator=gen) for g in groups}, keep)
    model = copy.deepcopy(model).double().eval()
    x = torch.randn(2, *groups.input_shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        with MaskHooks(model, groups, channel_masks(plan)):
            masked = model(x)
        removed = apply_plan(copy.deepcopy(model), plan, groups)(x)
    return float((masked - removed).abs().max() / masked.abs().max())


@pytest.mark.parametrize("factory", list(CHANGED), ids=lambda f: f.__name__.lstrip("_"))
def test_a_removal_that_runs_but_changes_the_function_is_left_unpruned(factory) -> None:
    torch.manual_seed(0)
    model = randomize_bn(factory())
    groups = find_groups(model, SHAPE)
    out, kept = CHANGED[factory]
    assert groups.names == kept, groups.skipped
    for name in out:
        assert any(s.startswith(f"{name}: removing its channels") and s.endswith("left unpruned")
                   for s in groups.skipped), (name, groups.skipped)
    if kept:  # what is left is pruned faithfully: removal equals masking on random plans
        check_model(factory, SHAPE)


def test_the_reason_says_the_function_changed() -> None:
    torch.manual_seed(0)
    (reason,) = find_groups(_Rolled().eval(), SHAPE).skipped
    assert reason.startswith("a.0: removing its channels changes the network's function: the pruned copy's "
                             "output differs from the dense network's with those channels masked")


class _DeepWithOneRoll(nn.Module):
    """Eight conv blocks with a channel roll after the fifth: the bisection finds that one group."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(_block(3, 8), *[_block(8, 8) for _ in range(7)])
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == 4:
                x = torch.roll(x, 1, dims=1)
        return self.fc(x.mean((2, 3)))


def test_one_bad_group_among_many_is_found_and_the_rest_are_kept() -> None:
    torch.manual_seed(0)
    model = _DeepWithOneRoll().eval()  # fresh BN: eight blocks of random statistics leave no signal
    groups = find_groups(model, SHAPE)
    assert groups.names == [f"blocks.{i}.0" for i in range(8) if i != 4]
    assert [s.split(":")[0] for s in groups.skipped] == ["blocks.4.0"]
    assert _masked_vs_removed(model, groups, {g.name: 3 for g in groups}) < 1e-9


class _PaddedHead(nn.Module):
    """Features of two concatenated branches, padded with zeros to the head's 16 where fewer than 13
    (a width check at run time): the probe's three channels off either branch (each is the second or
    third group of its width, so it loses three) leave 13, which run as before; off both, 10 are padded
    to 16, which the pruned head (10 inputs) cannot take. Each group passes alone; only the two
    together fail."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.left, self.right = _block(3, 8), _block(8, 8), _block(8, 8)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.a(x)
        y = torch.cat([self.left(y), self.right(y)], 1).mean((2, 3))
        if y.shape[1] <= 12:
            y = nn.functional.pad(y, (0, 16 - y.shape[1]))
        return self.fc(y)


def test_groups_that_fail_only_together_are_all_left_unpruned_and_the_rest_kept() -> None:
    torch.manual_seed(0)
    groups = find_groups(randomize_bn(_PaddedHead()), SHAPE)
    # all three fail together; a.0 passes alone, left.0 + right.0 fail, and each of them passes alone
    assert groups.names == ["a.0"]
    raised = "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x16 and 10x10)"
    together = (f"removing its channels breaks the forward pass ({raised}; a reshape, split or chunk the dependency "
                "graph does not follow, or channels paired through detach() or pooling indices?), found only with 1 "
                "other group's channels removed too")
    assert groups.skipped == (f"left.0: {together}, left unpruned", f"right.0: {together}, left unpruned")
    check_model(_PaddedHead, SHAPE)  # what is kept is pruned faithfully: removal equals masking

class _TwoHeads(nn.Module):
    """A dict output with a tuple inside, dropout, and a second head that reads rolled channels:
    only that head's leaf differs, by far less than the logits' scale: each leaf is compared at its own."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = _block(3, 8), _block(8, 8), _block(8, 8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 10)
        self.aux = nn.Linear(8, 2)
        with torch.no_grad():
            self.fc.weight.mul_(1e9)  # at the logits' scale, float64 round-off would hide the aux head's difference

    def forward(self, x):
        y = self.b(self.drop(self.a(x)))
        aux = self.aux(torch.roll(self.c(y), 1, dims=1).mean((2, 3)))
        return {"logits": self.fc(y.mean((2, 3))), "more": (aux,)}


def test_outputs_are_compared_leaf_by_leaf_in_eval_mode_without_random_numbers(monkeypatch) -> None:
    torch.manual_seed(0)
    model = _TwoHeads().train()  # dropout and BN as a user's model in training has them
    groups = find_groups(model, SHAPE)
    assert groups.names == ["a.0", "b.0"]
    assert [s.split(":")[0] for s in groups.skipped] == ["c.0"]
    from prunetune.pruning import removal_probe

    # the probe alone, on the groups it was given: no random numbers, the model left as it was
    with monkeypatch.context() as m:
        m.setattr(removal_probe, "unfaithful_groups", lambda *_a: {})
        before = find_groups(model, SHAPE)
    state, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    example = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(3))
    assert removal_probe.unfaithful_groups(model, example, list(before)) == {"c.0": removal_probe.CHANGES}
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("name", "count"), [("resnet20", 12), ("resnet56", 30), ("vgg16_bn", 14),
                                              ("zoo_mobilenet", 6)])
def test_ordinary_models_keep_every_group_and_removal_still_equals_masking(name: str, count: int) -> None:
    shape = (3, 16, 16) if name.startswith("zoo") else (3, 32, 32)
    model = randomize_bn(create_model(name))
    groups = find_groups(model, shape)
    assert len(groups) == count and groups.skipped == ()
    keep = {g.name: max(1, g.channels // 3) for g in groups}
    assert _masked_vs_removed(model, groups, keep) < 1e-9


def test_the_probe_removes_channels_no_slice_reversal_or_roll_maps_onto_themselves() -> None:
    from prunetune.pruning import removal_probe

    for c in range(3, 65):
        removed = set(removal_probe.probe_channels(c))
        assert len(removed) == 2 and max(removed) < c - 1  # from either end: not a prefix or suffix
        assert {c - 1 - i for i in removed} != removed  # not symmetric: a reversal moves them
        assert {(i + 1) % c for i in removed} != removed
    assert removal_probe.probe_channels(2) == (0,)


def test_groups_of_one_width_lose_different_channels_each_from_either_end_unsymmetric() -> None:
    from types import SimpleNamespace

    from prunetune.pruning import removal_probe

    for c in (4, 5, 16, 64):
        groups = [SimpleNamespace(name=f"g{i}", channels=c) for i in range(40)] + [SimpleNamespace(name="x", channels=2)]
        sets = removal_probe.probe_sets(groups)
        assert sets["g0"] == removal_probe.probe_channels(c) and sets["x"] == (0,)
        distinct = min(40, 2 ** (c - 3))  # the subsets of the channels between the first set's two
        assert len({sets[f"g{i}"] for i in range(40)}) == distinct
        for i in range(40):
            removed = set(sets[f"g{i}"])
            assert 0 in removed and c - 1 not in removed and len(removed) < c
            assert {c - 1 - j for j in removed} != removed and {(j + 1) % c for j in removed} != removed


class _DetachedShortcut(nn.Module):
    """A residual added through ``detach()``: the shortcut pairs the stem's channels with the block's
    index by index, on a path autograd (and so the dependency graph) does not see. With the same
    channels removed from both, removal equals masking; keeping different ones computes something
    else, and different counts crash."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _block(3, 8)
        self.c1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.head = _block(8, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        a = self.stem(x)
        return self.fc(self.head(torch.relu(self.c1(a) + a.detach())).mean((2, 3)))


class _Unpooled(nn.Module):
    """SegNet's decoder: ``max_unpool2d`` of one layer's maps with the pooling indices of another's."""

    def __init__(self) -> None:
        super().__init__()
        self.e1, self.d1, self.head = _block(3, 8), _block(8, 8), _block(8, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        p, idx = nn.functional.max_pool2d(self.e1(x), 2, return_indices=True)
        return self.fc(self.head(nn.functional.max_unpool2d(self.d1(p), idx, 2)).mean((2, 3)))


@pytest.mark.parametrize(("net", "paired"), [(_DetachedShortcut, ["stem.0", "c1.0"]), (_Unpooled, ["e1.0", "d1.0"])])
def test_groups_paired_through_a_path_autograd_does_not_see_are_left_unpruned(net, paired) -> None:
    torch.manual_seed(0)
    model = randomize_bn(net())
    groups = find_groups(model, SHAPE)
    assert groups.names == ["head.0"]
    assert [s.split(":")[0] for s in groups.skipped] == paired
    assert all("breaks the forward pass" in s and "pooling indices" in s for s in groups.skipped)
    check_model(net, SHAPE)


class _CReLU(nn.Module):
    """A BN over a tensor concatenated with itself (CReLU: ``cat([a, -a])``): each channel of ``a`` is two
    channels of the BN, which masking has to cover both of."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(24)
        self.b = _block(24, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        a = self.a(x)
        return self.fc(self.b(torch.relu(self.bn(torch.cat([a, -a, a], 1)))).mean((2, 3)))


def test_a_tensor_concatenated_with_itself_is_masked_at_each_copy_and_pruned() -> None:
    torch.manual_seed(0)
    model = randomize_bn(_CReLU())
    groups = find_groups(model, SHAPE)
    assert groups.names == ["a", "b.0"] and groups.skipped == ()
    assert dict(groups["a"].mask_index)["bn"][:3] == (0, 8, 16)  # channel 0 at each of the three copies
    check_model(_CReLU, SHAPE)  # analytic == counted, masking == removal on random plans
    assert _masked_vs_removed(model, groups, {"a": 5, "b.0": 9}) < 1e-9


def test_a_group_whose_mask_fails_is_left_unpruned_with_the_error_not_raised(monkeypatch) -> None:
    from prunetune.pruning import removal_probe

    class Failing(MaskHooks):
        def __init__(self, model, groups, masks) -> None:
            if "b.0" in masks:
                raise RuntimeError("the mask does not fit")
            super().__init__(model, groups, masks)

    torch.manual_seed(0)
    model = randomize_bn(_CReLU())
    with monkeypatch.context() as m:
        m.setattr(removal_probe, "unfaithful_groups", lambda *_a: {})
        groups = list(find_groups(model, SHAPE))
    monkeypatch.setattr(removal_probe, "MaskHooks", Failing)
    example = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(3))
    assert removal_probe.unfaithful_groups(model, example, groups) == {
        "b.0": "masking its channels fails (RuntimeError: the mask does not fit), so it can be neither scored nor "
               "soft-pruned"}


class _TrackedInstanceNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
        self.b, self.fc = _block(8, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.b(torch.relu(self.norm(self.a(x)))).mean((2, 3)))


def test_an_instance_norm_tracking_running_statistics_is_named_as_the_cause() -> None:
    groups = find_groups(_TrackedInstanceNorm(), SHAPE)
    assert groups.names == ["b.0"]
    (why,) = groups.skipped
    assert why.startswith("a: removing its channels breaks the forward pass (RuntimeError: running_mean should contain")
    assert "likely cause: 'norm', an instance norm with track_running_stats=True" in why


class _RolledBesideATrackedNorm(nn.Module):
    """A rolled group, and elsewhere a tracked instance norm of the same width that has nothing to do with it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _block(3, 8), _block(8, 8)
        self.side = nn.Sequential(nn.Conv2d(3, 8, 1), nn.InstanceNorm2d(8, track_running_stats=True))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        main = self.b(torch.roll(self.a(x), 1, dims=1)).mean((2, 3))
        return self.fc(torch.cat([main, self.side(x).mean((2, 3))], 1))


def test_a_tracked_instance_norm_is_named_only_where_its_statistics_broke_the_copy() -> None:
    groups = find_groups(_RolledBesideATrackedNorm(), SHAPE)
    why = next(s for s in groups.skipped if s.startswith("a.0:"))
    assert "changes the network's function" in why and "instance norm" not in why


def test_the_tolerance_sits_between_round_off_and_a_changed_function() -> None:
    from prunetune.pruning import removal_probe

    assert 1e-5 < removal_probe.tolerance(torch.float32) < 1e-3
    assert 1e-9 < removal_probe.tolerance(torch.float64) < 1e-7


class _Float32Only(_Rolled):
    """A forward that casts its input to float32 (images stored as integers): it cannot run in float64,
    so the probe compares in float32, at float32's tolerance."""

    def forward(self, x):
        return super().forward(x.float())


def test_a_model_that_runs_only_in_float32_is_probed_in_float32() -> None:
    torch.manual_seed(0)
    groups = find_groups(randomize_bn(_Float32Only()), SHAPE)
    assert groups.names == ["b.0"] and groups.skipped[0].startswith("a.0: removing its channels changes")


class _ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: depthwise conv, then channels-last LayerNorm and a Linear MLP, layer scale."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.pw2(nn.functional.gelu(self.pw1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
        return x + (y * self.gamma).permute(0, 3, 1, 2)


class _MiniConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 2, stride=2), nn.GroupNorm(1, 16))
        self.block, self.head = _ConvNeXtBlock(16), nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_channel_normalised_and_channels_last_models_keep_their_groups() -> None:
    # LayerNorm and GroupNorm(1) are masking ≠ removal by design (README), and the MLP's Linear works on
    # channels-last features: the probe must not take either for a changed function
    torch.manual_seed(0)
    groups = find_groups(_MiniConvNeXt().eval(), (3, 16, 16))
    assert groups.names == ["stem.0", "block.pw1"] and groups.skipped == ()


@pytest.mark.parametrize("size", [16, 128])
def test_a_linear_on_channels_last_features_is_masked_on_its_last_dimension(size: int) -> None:
    """MaskHooks masks a Linear's features (its last dimension), so soft schedules run on ConvNeXt's
    MLP and masking its group equals removing it. It masked dim 1 before: a crash on 8×8 maps, and on
    64×64 maps (64 rows = the MLP's 64 hidden features) silently the wrong dimension."""
    torch.manual_seed(0)
    model = _MiniConvNeXt()
    groups = find_groups(model, (3, size, size))
    assert groups.names == ["stem.0", "block.pw1"]
    assert _masked_vs_removed(model, groups, {"stem.0": 16, "block.pw1": 40}) < 1e-9


@pytest.mark.parametrize("size", [16, 128])
def test_calibration_reads_a_linear_feature_point_on_its_features(size: int) -> None:
    """Calibration hands the criteria a channels-last Linear's output with its features at dim 1 (it
    handed [B, H, W, C] before: an error on 8×8 maps, the rows read as channels on 64×64), and the
    gradient criteria its gradient the same way."""
    from prunetune.pruning.calibration import calibrate
    from prunetune.pruning.criteria import get_criterion, score

    torch.manual_seed(0)
    model = _MiniConvNeXt()
    groups = find_groups(model, (3, size, size))
    x, y = torch.randn(4, 3, size, size), torch.arange(4) % 2
    seen: dict[str, torch.Tensor] = {}
    handle = model.block.pw1.register_forward_hook(lambda _m, _i, out: seen.update(out=out.detach()))
    params = {n: get_criterion(n).resolve({}) for n in ("dfs", "taylor")}
    out = calibrate(model, groups, params, [(x, y)], activation="none", point="bn", show_progress=False)
    handle.remove()
    maps = seen["out"].permute(0, 3, 1, 2)
    assert out["dfs"]["block.pw1"][0].shape == (64,)
    torch.testing.assert_close(out["dfs"]["block.pw1"][0], score("dfs", feature_maps=maps).to(torch.float64))
    assert out["taylor"]["block.pw1"][0].shape == (64,) and bool((out["taylor"]["block.pw1"][0] > 0).any())


def test_only_the_groups_that_fail_together_are_blamed_not_their_halves() -> None:
    """Four groups, two of which (b, d) fail only when removed together; each half of the set holds
    one of them and an innocent group. All four used to be left unpruned; now a and c stay."""
    from types import SimpleNamespace

    from prunetune.pruning import removal_probe

    groups = [SimpleNamespace(name=n) for n in ("a", "b", "c", "d", "e")]
    calls = []

    def check(part):
        calls.append([g.name for g in part])
        return removal_probe.BREAKS if {"b", "d"} <= {g.name for g in part} else None

    found = removal_probe._bisect(groups, removal_probe.BREAKS, check)
    together = f"{removal_probe.BREAKS}, found only with 1 other group's channels removed too"
    assert found == {"b": together, "d": together}
    assert len(calls) <= 10  # halving, not every subset


class _Scaled(nn.Module):
    """A per-channel scale between two blocks, held as ``kind``: a plain tensor attribute, a buffer, a
    frozen or a trainable parameter. Only a parameter is in the autograd graph that Torch-Pruning
    traces (a frozen one is traced as trainable), so only then is it pruned with the channels it scales."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.a, self.b = _block(3, 8), _block(8, 8)
        scale = torch.linspace(0.5, 1.5, 8).reshape(1, 8, 1, 1)
        if kind == "buffer":
            self.register_buffer("scale", scale)
        elif kind in ("frozen", "parameter"):
            self.scale = nn.Parameter(scale, requires_grad=kind == "parameter")
        else:
            self.scale = scale
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.b(self.a(x) * self.scale).mean((2, 3)))


@pytest.mark.parametrize("kind", ["attribute", "buffer"])
def test_a_tensor_the_graph_cannot_follow_is_named_with_what_the_pruned_copy_raised(kind: str) -> None:
    groups = find_groups(_Scaled(kind), SHAPE)
    assert groups.names == ["b.0"]
    (skipped,) = groups.skipped
    assert skipped.startswith("a.0: removing its channels breaks the forward pass (RuntimeError: The size of tensor")
    assert ("; likely cause: scale, a tensor of shape (1, 8, 1, 1) that is not an nn.Parameter, which the "
            "dependency graph cannot follow, so it keeps its 8 channels (make it an nn.Parameter, frozen or not") in skipped


@pytest.mark.parametrize("kind", ["parameter", "frozen"])
def test_a_parameter_of_the_group_width_is_pruned_with_it_and_named_nowhere(kind: str) -> None:
    """A frozen scale was invisible to the autograd trace: the group was left unpruned and the
    parameter blamed. Every parameter is traced now, and one frozen stays frozen once pruned."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Torch-Pruning's "Unwrapped parameters detected" is not the user's to read
        groups = find_groups(_Scaled(kind), SHAPE)
    assert groups.names == ["a.0", "b.0"] and not groups.skipped
    check_model(lambda: _Scaled(kind), SHAPE)  # removal equals masking, the scale pruned with a.0
    model = _Scaled(kind)
    apply_plan(model, make_plan(groups, {g.name: torch.arange(g.channels, dtype=torch.float64) for g in groups},
                                {"a.0": 5, "b.0": 6}), groups)
    assert model.scale.shape == (1, 5, 1, 1) and model.scale.requires_grad == (kind == "parameter")


class _DeepSupervision(nn.Module):
    """In train mode an auxiliary head on a's features adds to the logits (one Tensor either way): the
    eval-mode trace never sees ``aux``, so removing a's channels left it 8 inputs wide, and every
    training step of the pruned network failed."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _block(3, 8), _block(8, 8)
        self.fc, self.aux = nn.Linear(8, 10), nn.Linear(8, 10)

    def forward(self, x):
        y = self.a(x)
        out = self.fc(self.b(y).mean((2, 3)))
        return out + 0.3 * self.aux(y.mean((2, 3))) if self.training else out


def test_channels_a_train_only_head_reads_are_not_pruned_and_the_probe_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = _DeepSupervision().eval()
    state, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    groups = find_groups(model, SHAPE)
    assert groups.names == ["b.0"]
    (skipped,) = groups.skipped
    assert skipped.startswith("a.0: removing its channels breaks the forward pass in train mode (RuntimeError: mat1 "
                              "and mat2 shapes cannot be multiplied")
    assert "; 'aux' runs only in train mode, which the dependency graph does not trace (an auxiliary head?" in skipped
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN statistics untouched
    check_model(_DeepSupervision, SHAPE)
    plan = make_plan(groups, {"b.0": torch.arange(8.0)}, {"b.0": 4})
    apply_plan(model, plan, groups).train()(torch.randn(2, *SHAPE))  # what is kept trains


class _Positional(nn.Module):
    """A learned term added to a's output: per channel (1, 8, 1, 1), which Torch-Pruning prunes on its
    channels but masking a's channels does not reach, or per position (1, 8, 8, 8), which it prunes on
    its last dimension."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.a, self.b = _block(3, 8), _block(8, 8)
        self.pos = nn.Parameter(torch.linspace(0.5, 1.5, math.prod(shape)).reshape(shape))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.b(self.a(x) + self.pos).mean((2, 3)))


@pytest.mark.parametrize(("shape", "why"), [
    ((1, 8, 1, 1), "(dim 1), and which masking the channels does not reach (a bias added to a layer's output is "
                   "best that layer's own bias)"),
    ((1, 8, 8, 8), "(dim 3), not necessarily its 8 channels (hold it in an nn.Conv2d or nn.Linear, or put its "
                   "channels last)"),
])
def test_a_parameter_outside_the_layers_is_named_where_its_group_is_not_pruned(shape, why) -> None:
    torch.manual_seed(0)
    groups = find_groups(_Positional(shape), SHAPE)
    assert groups.names == ["b.0"]
    (skipped,) = groups.skipped
    assert (f"; likely cause: pos, an nn.Parameter of shape {shape} outside torch's layers, which Torch-Pruning "
            f"prunes along its last non-singleton dimension {why}, left unpruned") in skipped
