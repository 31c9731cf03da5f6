"""Model registry, reference counts and the option-A shortcut."""

from __future__ import annotations

import pytest
import torch

from prunetune.exceptions import ConfigError, UnknownNameError
from prunetune.models import ChannelPadShortcut, CifarResNet, create_model, list_models
from prunetune.pruning.macs import count_cost

# Conv + linear MACs for one 32×32 input and params incl. BN (platform.md; the papers' tables).
REFERENCE = {"resnet56": (125.49e6, 0.853e6), "resnet110": (252.89e6, 1.728e6), "vgg16_bn": (313.5e6, 14.99e6)}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_dense_counts_match_the_papers(name: str) -> None:
    macs, params = REFERENCE[name]
    cost = count_cost(create_model(name), (3, 32, 32))
    assert cost.macs == pytest.approx(macs, rel=0.005)
    assert cost.params == pytest.approx(params, rel=0.005)


def test_resnet_names_follow_torchvision() -> None:
    names = dict(create_model("resnet20").named_modules())
    for expected in ("conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer3.2.conv2", "layer3.2.bn2", "fc"):
        assert expected in names
    assert isinstance(names["layer2.0.shortcut"], ChannelPadShortcut)


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).view(2, 4, 4, 4)
    out = ChannelPadShortcut(4, 8, stride=2)(x)
    assert out.shape == (2, 8, 2, 2)
    assert torch.equal(out[:, 2:6], x[:, :, ::2, ::2])
    assert out[:, :2].abs().sum() == 0 and out[:, 6:].abs().sum() == 0


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_with_classes_and_channels(name: str) -> None:
    model = create_model(name, num_classes=7, in_channels=1).eval()
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'resnet56'"):
        create_model("resnet57")


def test_bad_depth_and_classes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="6n\\+2"):
        CifarResNet(21)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet20", num_classes=0)


def test_user_factory_by_module_path() -> None:
    model = create_model("prunetune.models.tiny:TinyConvNet", num_classes=3, in_channels=2, width=4,
                         allow_code=True)
    assert model(torch.randn(1, 2, 16, 16)).shape == (1, 3)
    with pytest.raises(UnknownNameError, match="no callable"):
        create_model("prunetune.models.tiny:Missing", allow_code=True)
    with pytest.raises(UnknownNameError, match="cannot import"):
        create_model("no_such_pkg.mod:fn", allow_code=True)


def test_torchvision_model_error_is_clear_when_unavailable() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:
        from prunetune.exceptions import MissingExtraError

        with pytest.raises(MissingExtraError, match=r"\[vision\]"):
            create_model("tv:resnet18")
    else:
        assert create_model("tv:resnet18", num_classes=5)(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_a_broken_optional_import_becomes_an_install_hint(monkeypatch) -> None:
    import importlib

    from prunetune._imports import require
    from prunetune.exceptions import MissingExtraError

    def broken(name, *args, **kwargs):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(MissingExtraError, match=r"RuntimeError: operator torchvision::nms.*\[vision\]"):
        require("torchvision.models", extra="vision", purpose="model 'tv:resnet18'")
