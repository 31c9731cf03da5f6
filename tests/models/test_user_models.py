"""Models a user builds (``package.module:function``) that prunetune cannot train: one line each,
before any training. Each was a traceback: a float64 or half model in the first training step, a
forward returning (logits, features) in the first loss, a dict input deep in the dependency graph,
a factory returning 42 or raising, every parameter frozen in the first backward pass."""

from __future__ import annotations

import sys
import textwrap

import pytest

import prunetune
from prunetune.exceptions import ConfigError

MODULE = '''
import torch
from torch import nn


def _net(in_channels, num_classes):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def double(num_classes=10, in_channels=1):
    return _net(in_channels, num_classes).double()


def half(num_classes=10, in_channels=1):
    return _net(in_channels, num_classes).half()


class Pair(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.net = _net(in_channels, num_classes)

    def forward(self, x):
        return self.net(x), x


def pair(num_classes=10, in_channels=1):
    return Pair(in_channels, num_classes)


class DictIn(Pair):
    def forward(self, batch):
        return self.net(batch.get("image"))


def dict_in(num_classes=10, in_channels=1):
    return DictIn(in_channels, num_classes)


def forty_two(num_classes=10, in_channels=1):
    return 42


def boom(num_classes=10, in_channels=1):
    raise ValueError("boom")


def frozen(num_classes=10, in_channels=1):
    net = _net(in_channels, num_classes)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def fine(num_classes=10, in_channels=1):
    return _net(in_channels, num_classes)


class AuxTuple(Pair):
    """(logits, aux) in train mode only, as torchvision's Inception with aux_logits=True."""

    def forward(self, x):
        out = self.net(x)
        return (out, out.detach()) if self.training else out


def aux_tuple(num_classes=10, in_channels=1):
    return AuxTuple(in_channels, num_classes)


class TrainBoom(Pair):
    def forward(self, x):
        if self.training:
            raise RuntimeError("only eval works")
        return self.net(x)


def train_boom(num_classes=10, in_channels=1):
    return TrainBoom(in_channels, num_classes)
'''


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usernets28.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usernets28", None)
    yield "usernets28"
    sys.modules.pop("usernets28", None)


def _recipe(factory: str) -> dict:
    return {"model": {"name": f"usernets28:{factory}", "in_channels": 1}, "data": "digits", "criterion": "l1",
            "allocation": {"ratio": 0.5}, "pretrain": {"epochs": 1}, "finetune": {"epochs": 0},
            "calibration": {"use_cache": False}}


@pytest.mark.parametrize(("factory", "message"), [
    ("double", r"^model 'usernets28:double' has float64 parameters; .* build it in float32 \(model.float\(\)\)$"),
    ("half", r"^model 'usernets28:half' has float16 parameters"),
    ("pair", r"^model 'usernets28:pair' returns a tuple for a batch of 2 images; prunetune needs the logits as "
             r"one Tensor\[B, 10\] \(return only the logits from forward\)$"),
    ("dict_in", r"^model 'usernets28:dict_in' fails on a batch of images of shape \(2, 1, 16, 16\) \(AttributeError: "),
    ("forty_two", r"^model factory 'usernets28:forty_two' returned int, not a torch.nn.Module"),
    ("boom", r"^model factory 'usernets28:boom' raised ValueError: boom$"),
    ("frozen", r"^model 'usernets28:frozen' has every parameter frozen \(requires_grad=False\)"),
    ("aux_tuple", r"^model 'usernets28:aux_tuple' returns a tuple in train mode for a batch of 2 images; training "
                  r"needs the logits as one Tensor\[B, 10\] \(turn auxiliary outputs off, e.g. aux_logits=False\)$"),
    ("train_boom", r"^model 'usernets28:train_boom' fails in train mode on a batch of images of shape "
                   r"\(2, 1, 16, 16\) \(RuntimeError: only eval works\); prunetune also runs model.train\(\)\(x\)$"),
])
def test_a_model_prunetune_cannot_train_is_one_line_before_training(user_module, factory, message, caplog) -> None:
    with caplog.at_level("INFO", logger="prunetune"), pytest.raises(ConfigError, match=message):
        prunetune.prune(_recipe(factory), allow_code=True)
    assert not any("training it for" in r.getMessage() for r in caplog.records)


def test_a_model_it_can_train_passes_the_checks(user_module) -> None:
    result = prunetune.prune(_recipe("fine"), allow_code=True)
    assert result.plan.pruned.macs < result.plan.dense.macs


def test_a_float64_model_is_built_for_what_does_not_train(user_module) -> None:
    """The dtype check belongs to training and export: `groups` and create_model take a float64 model
    (the dependency graph traces it in its own dtype)."""
    from prunetune.pruning.groups import find_groups

    model = prunetune.create_model("usernets28:double", in_channels=1, allow_code=True)
    assert len(find_groups(model, (1, 8, 8))) >= 1


def test_the_forward_check_leaves_every_submodules_mode_as_it_was(user_module) -> None:
    from prunetune.recipes.pipeline import check_trainable

    model = prunetune.create_model("usernets28:fine", in_channels=1, allow_code=True).train()
    model[1].eval()  # a frozen batch norm inside a training model
    check_trainable(model, "fine", (1, 8, 8), 10)
    assert model.training and not model[1].training


def test_a_tuple_in_train_mode_is_refused_only_where_the_model_trains(user_module, tmp_path) -> None:
    """With a checkpoint and no fine-tuning nothing trains: BN re-estimation reads no output."""
    import torch

    model = prunetune.create_model("usernets28:aux_tuple", in_channels=1, allow_code=True)
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    recipe = _recipe("aux_tuple")
    recipe["model"]["checkpoint"] = str(tmp_path / "dense.pt")
    result = prunetune.prune(recipe, allow_code=True)
    assert result.plan.pruned.macs < result.plan.dense.macs
    recipe["finetune"] = {"epochs": 1}
    with pytest.raises(ConfigError, match="returns a tuple in train mode"):
        prunetune.prune(recipe, allow_code=True)


def test_the_train_mode_check_leaves_statistics_modes_and_random_numbers_as_they_were(user_module) -> None:
    import torch

    from prunetune.recipes.pipeline import check_trainable

    model = prunetune.create_model("usernets28:fine", in_channels=1, allow_code=True).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_trainable(model, "fine", (1, 8, 8), 10)
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN running statistics too
    assert torch.equal(torch.get_rng_state(), rng)
