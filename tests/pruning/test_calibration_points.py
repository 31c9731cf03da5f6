"""Where calibration reads feature maps (BN vs residual block output) and train-mode Taylor."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunetune.exceptions import ConfigError
from prunetune.models import create_model
from prunetune.pruning.calibration import calibrate
from prunetune.pruning.criteria import score
from prunetune.pruning.groups import find_groups
from prunetune.pruning.points import group_points, neighbour_groups
from prunetune.pruning.scores import CalibrationSettings, compute_scores
from prunetune.recipes.schema import CalibrationSpec
from tests.conftest import randomize_bn

SHAPE = (3, 8, 8)


@pytest.fixture(scope="module")
def resnet():
    model = randomize_bn(create_model("resnet20", width=4))
    groups = find_groups(model, SHAPE)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, *SHAPE, generator=gen), torch.randint(0, 10, (24,), generator=gen)
    return model, groups, x, y


def _batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def _capture(model, names, x):
    seen = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach().clone()))
             for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_block_output_points_of_a_cifar_resnet(resnet) -> None:
    model, groups, _, _ = resnet
    points = group_points(model, groups, "block_output")
    assert points["conv1"] == ("bn1", "layer1.0", "layer1.1", "layer1.2")  # stem, then each block
    assert points["layer2.0.conv2"] == ("layer2.0", "layer2.1", "layer2.2")
    assert points["layer2.1.conv1"] == ("layer2.1.bn1",)  # block internals keep their BN
    assert group_points(model, groups, "bn") == {g.name: g.feature_points for g in groups}


@pytest.mark.parametrize("name", ["chip", "hrank"])
def test_block_output_equals_the_official_per_block_scores(resnet, name) -> None:
    # the official CHIP/HRankPlus code hooks the stem ReLU and each block's output (after the
    # residual addition and the ReLU) and scores each one; the stream's score is their mean
    model, groups, x, y = resnet
    official = {"conv1": ["bn1", "layer1.0", "layer1.1", "layer1.2"],
                "layer3.0.conv2": ["layer3.0", "layer3.1", "layer3.2"]}
    seen = _capture(model, [n for names in official.values() for n in names], x)
    got = calibrate(model, groups, {name: {}}, _batches(x, y, 8), point="block_output",
                    show_progress=False)[name]
    before = calibrate(model, groups, {name: {}}, _batches(x, y, 8), point="bn", show_progress=False)[name]
    for group, names in official.items():
        expected = torch.stack([score(name, feature_maps=F.relu(seen[n])) for n in names]).mean(0)
        torch.testing.assert_close(got[group][0], expected.to(torch.float64), rtol=0, atol=1e-9)
        assert not torch.allclose(before[group][0], got[group][0])  # the two points differ here
    torch.testing.assert_close(got["layer2.1.conv1"][0], before["layer2.1.conv1"][0], rtol=0, atol=0)


class _InplaceBottleneck(nn.Module):
    """A torchvision-style block: in-place addition and ReLU, a downsample Sequential."""

    def __init__(self, cin: int, cout: int, inplace: bool = True) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.conv3, self.bn3 = nn.Conv2d(4, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=inplace)
        self.inplace = inplace
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(out))
        if self.inplace:
            out += identity
        else:
            out = out + identity
        return self.relu(out)


class _InplaceNet(nn.Module):
    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.layer1 = nn.Sequential(_InplaceBottleneck(6, 8, inplace))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.layer1(F.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_block_output_finds_in_place_blocks_and_counts_each_block_once() -> None:
    model = randomize_bn(_InplaceNet())
    groups = find_groups(model, SHAPE)
    stream = next(g for g in groups if "layer1.0.downsample.1" in g.feature_points)
    points = group_points(model, groups, "block_output")
    assert points[stream.name] == ("layer1.0",)  # bn3 and the downsample BN: one block
    assert points["layer1.0.conv1"] == ("layer1.0.bn1",)
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(1))
    seen = _capture(model, ["layer1.0"], x)
    got = calibrate(model, groups, {"dfs": {}}, [(x, torch.zeros(6, dtype=torch.long))],
                    point="block_output", show_progress=False)["dfs"][stream.name][0]
    torch.testing.assert_close(got, score("dfs", feature_maps=seen["layer1.0"]), rtol=0, atol=1e-12)


def test_point_is_in_the_fingerprint_and_validated(resnet, tmp_path) -> None:
    model, groups, x, y = resnet

    def table(point):
        return compute_scores(model, groups, {"dfs": None, "l1": None}, calibration=lambda: _batches(x, y, 8),
                              calibration_digest="d", settings=CalibrationSettings(point=point),
                              cache_dir=tmp_path, show_progress=False)

    a, b = table("bn"), table("block_output")
    assert a.fingerprints["dfs"] != b.fingerprints["dfs"] and not b.cached["dfs"]
    assert a.fingerprints["l1"] == b.fingerprints["l1"]  # weight criteria read no feature maps
    assert table("block_output").all_cached
    assert CalibrationSpec.parse({}).point == "block_output"
    with pytest.raises(ConfigError, match="calibration.point must be one of block_output, bn, got 'relu2'"):
        CalibrationSpec.parse({"point": "relu2"})


def _hand_taylor(model, groups, batches, *, train: bool) -> dict[str, torch.Tensor]:
    """Molchanov's Taylor-FO-BN by hand: per minibatch (Σ_{b,h,w} z · dL/dz)² at every BN output,
    averaged over minibatches, then over a group's BNs; BN in train or eval mode."""
    m = copy.deepcopy(model)
    m.train(train)
    modules = dict(m.named_modules())
    total = {g.name: 0.0 for g in groups}
    for x, y in batches:
        outs = {}

        def keep(name):
            def hook(_mod, _inp, out):
                out.retain_grad()
                outs[name] = out
            return hook

        hooks = [modules[p].register_forward_hook(keep(p)) for g in groups for p in g.feature_points]
        F.cross_entropy(m(x), y).backward()
        for h in hooks:
            h.remove()
        for g in groups:
            per_bn = [((outs[p] * outs[p].grad).sum(dim=(0, 2, 3)) ** 2).double() for p in g.feature_points]
            total[g.name] = total[g.name] + torch.stack(per_bn).mean(0)
        m.zero_grad()
    return {k: v / len(batches) for k, v in total.items()}


def test_taylor_train_mode_equals_a_hand_accumulation_and_keeps_the_model(resnet) -> None:
    model, groups, x, y = resnet
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches(x, y, 8)
    got = calibrate(model, groups, {"taylor": {"bn_mode": "train"}, "dfs": {}}, batches,
                    point="block_output", show_progress=False)
    default = calibrate(model, groups, {"taylor": {}}, batches, show_progress=False)["taylor"]
    evaled = calibrate(model, groups, {"taylor": {"bn_mode": "eval"}}, iter(batches), show_progress=False)["taylor"]
    hand_train = _hand_taylor(model, groups, batches, train=True)
    hand_eval = _hand_taylor(model, groups, batches, train=False)
    for g in groups.names:
        torch.testing.assert_close(got["taylor"][g][0], hand_train[g], rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(default[g][0], hand_train[g], rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(evaled[g][0], hand_eval[g], rtol=1e-5, atol=1e-10)
    assert not torch.allclose(hand_train["conv1"], hand_eval["conv1"])
    assert not model.training and all(not m.training for m in model.modules())
    for k, v in model.state_dict().items():  # running statistics and counters restored
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_taylor_rejects_an_unknown_bn_mode() -> None:
    with pytest.raises(ConfigError, match="bn_mode"):
        score("taylor", feature_maps=torch.ones(2, 3, 2, 2), gradients=torch.ones(2, 3, 2, 2),
              labels=torch.zeros(2, dtype=torch.long), bn_mode="training")


def test_taylor_reads_bn_outputs_before_an_in_place_residual_addition() -> None:
    model = randomize_bn(_InplaceNet())
    twin = _InplaceNet(inplace=False)
    twin.load_state_dict(model.state_dict())  # the same function without in-place ops
    groups = find_groups(model, SHAPE)
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(6, *SHAPE, generator=gen), torch.randint(0, 10, (6,), generator=gen))
               for _ in range(2)]
    got = calibrate(model, groups, {"taylor": {}}, batches, show_progress=False)["taylor"]
    hand = _hand_taylor(twin.eval(), groups, batches, train=True)
    for g in groups.names:
        torch.testing.assert_close(got[g][0], hand[g], rtol=1e-5, atol=1e-10)


def test_neighbour_groups_of_a_residual_network(resnet) -> None:
    _, groups, _, _ = resnet
    prev, nxt = neighbour_groups(groups, "previous"), neighbour_groups(groups, "next")
    assert prev["conv1"] is None and prev["layer1.0.conv1"] == "conv1"
    assert prev["layer2.0.conv2"] == "layer2.0.conv1" and prev["layer2.1.conv1"] == "layer2.0.conv2"
    assert nxt["conv1"] == "layer1.0.conv1" and nxt["layer2.0.conv2"] == "layer2.1.conv1"
    assert nxt["layer1.0.conv1"] is None  # its only reader writes the earlier stream: no cycle
    assert nxt["layer3.2.conv1"] is None


def test_taylor_fingerprint_follows_the_calibration_batch_size(resnet, tmp_path) -> None:
    model, groups, x, y = resnet

    def fps(batch_size):
        return compute_scores(model, groups, {"taylor": None, "chip": None},
                              calibration=lambda: _batches(x, y, batch_size), calibration_digest="d",
                              settings=CalibrationSettings(batch_size=batch_size), cache_dir=tmp_path,
                              show_progress=False).fingerprints

    small, large = fps(8), fps(12)
    assert small["taylor"] != large["taylor"]  # per-minibatch squares and BN batch statistics
    assert small["chip"] == large["chip"]  # streaming statistics do not depend on the batching
