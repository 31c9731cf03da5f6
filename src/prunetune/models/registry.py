"""Models by name: built-in architectures, ``tv:<name>`` torchvision models, ``pkg.module:fn`` factories."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from prunetune._checks import boolean
from prunetune._imports import require
from prunetune._machine import physical_memory
from prunetune._modes import modes_kept
from prunetune._safety import check_user_code, is_user_code
from prunetune._text import exception_line, short
from prunetune._registry import Registry, unknown_name_message
from prunetune.exceptions import ConfigError, UnknownNameError
from prunetune.models.cifar_resnet import CifarResNet
from prunetune.models.tiny import TinyConvNet, TinyMobileNet
from prunetune.models.vgg import CifarVGG
from prunetune.models.zoo import ZOO


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture.

    Attributes:
        factory: ``factory(num_classes=..., in_channels=..., **kwargs) -> nn.Module``.
        input_size: the side of the square input the architecture is made for (used by dry runs).
        summary: one line for ``prunetune groups`` and docs.
    """

    factory: Callable[..., nn.Module]
    input_size: int
    summary: str


MODELS: Registry[ModelEntry] = Registry("model", pluggable=True)

for _depth in (20, 32, 56, 110):
    MODELS.register(
        f"resnet{_depth}",
        ModelEntry(partial(CifarResNet, _depth), 32, f"CIFAR ResNet-{_depth}, option-A shortcuts"),
    )
MODELS.register("vgg16_bn", ModelEntry(CifarVGG, 32, "CIFAR VGG-16-BN (HRank/CHIP layout)"))
MODELS.register("tiny_convnet", ModelEntry(TinyConvNet, 16, "test model: 3 conv-BN-ReLU + 2 linear"))
MODELS.register(
    "tiny_resnet", ModelEntry(partial(CifarResNet, 8, width=4), 16, "test model: ResNet-8, width 4")
)
MODELS.register("tiny_mobilenet", ModelEntry(TinyMobileNet, 16, "test model: depthwise-separable"))
for _name, (_cls, _summary) in ZOO.items():
    MODELS.register(_name, ModelEntry(_cls, 16, _summary))

TORCHVISION_PREFIX = "tv:"


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, allow_code: bool = False,
                 **kwargs: object) -> nn.Module:
    """Build a model by name.

    Args:
        name: a registered name (see :func:`list_models`), ``tv:<torchvision name>`` or
            ``package.module:function`` (called as ``function(num_classes=..., in_channels=..., **kwargs)``).
        num_classes: classifier outputs.
        in_channels: input image channels (1 for digits).
        allow_code: allow a ``package.module:function`` name to import and run that code (see
            :mod:`prunetune._safety`; ``torch.hub``, ``builtins`` and the like are refused anyway).
        **kwargs: passed to the factory.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a model name must be a non-empty string, got {short(name)}")
    boolean(allow_code, "allow_code")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {short(num_classes)}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {short(in_channels)}")
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_model(name[len(TORCHVISION_PREFIX):], num_classes, in_channels, kwargs)
    if is_user_code(name):
        factory = _import_factory(name, allow_code)
    else:
        factory = MODELS.get(name).factory
        _check_fits_memory(name, factory, num_classes, in_channels, kwargs)
    try:
        model = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r} does not accept these arguments: {exc}") from exc
    except (ConfigError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a user's factory raises what it raises: named, one line
        if not is_user_code(name):
            raise
        raise ConfigError(f"model factory {name!r} raised {type(exc).__name__}: {exception_line(exc)}") from exc
    return check_built(model, name)


def check_built(model: object, name: str) -> nn.Module:
    """``model`` if it is an ``nn.Module``; else a one-line :class:`ConfigError` (a factory that
    returned 42 failed later with "'int' object has no attribute 'parameters'")."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module; "
                          "return the model itself")
    return model


def check_float32(model: nn.Module, what: str) -> None:
    """A one-line :class:`ConfigError` unless every floating parameter of ``model`` is float32, for the
    paths that train or export it (a float64 or half model failed in the first training step with
    "Input type (float) and bias type (double) should be the same"). ``what`` names the model."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()}
                    - {"float32"})
    if dtypes:
        raise ConfigError(f"{what} has {', '.join(dtypes)} parameters; prunetune trains and deploys float32 "
                          "models: build it in float32 (model.float())")


def train_forward(model: nn.Module, x: Tensor) -> Any:
    """``model.train()(x)`` without a trace: every buffer (BN running statistics), every submodule's
    mode and the random number generators as they were before."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad(), modes_kept(model), \
                torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            return model.train()(x)
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _check_fits_memory(name: str, factory: Callable[..., nn.Module], num_classes: int, in_channels: int,
                       kwargs: dict) -> None:
    """Refuse arguments whose weights alone exceed this machine's memory (``num_classes: 10**12`` in a
    shared file), counted on the meta device first: building them failed with an allocator traceback,
    or took minutes of swapping where the memory almost sufficed. (Not for user code, run once only.)"""
    import torch

    try:
        with torch.device("meta"):
            model = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except Exception:  # noqa: BLE001 - the real build below reports it
        return
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    memory = physical_memory()
    if memory and size > memory:
        raise ConfigError(f"model {name!r} with num_classes={num_classes}, in_channels={in_channels}"
                          f"{''.join(f', {k}={short(v)}' for k, v in kwargs.items())} would hold "
                          f"{size / 2**30:.0f} GiB of weights, more than this machine's {memory / 2**30:.0f} GiB; "
                          "check num_classes, in_channels and the model's arguments")


def check_model_name(name: str) -> None:
    """A registered name must exist (checked when a recipe is read); ``tv:`` and
    ``package.module:function`` names are resolved when the model is built."""
    if not name.startswith(TORCHVISION_PREFIX) and not is_user_code(name):
        MODELS.get(name)


def default_input_size(name: str) -> int:
    """The input side a model is made for: 32 for CIFAR models, 224 for torchvision, else 32."""
    if name.startswith(TORCHVISION_PREFIX):
        return 224
    return MODELS.get(name).input_size if name in MODELS else 32


def list_models() -> list[str]:
    """Registered model names (``tv:`` and factory names are open-ended and not listed)."""
    return MODELS.names()


def _import_factory(spec: str, allow_code: bool) -> Callable[..., nn.Module]:
    module_name, attr = check_user_code(spec, allow_code=allow_code)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownNameError(
            f"model factory {spec!r}: cannot import module {module_name!r} ({exc}); "
            "use 'package.module:function' with the package on PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UnknownNameError(f"model factory {spec!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def _torchvision_model(name: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    tvm = require("torchvision.models", extra="vision", purpose=f"model 'tv:{name}'")
    names = tvm.list_models(module=tvm)
    if name not in names:
        raise UnknownNameError(unknown_name_message("torchvision model", name, names))
    model = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride,
                    child.padding, child.dilation, child.groups, child.bias is not None,
                )
                setattr(parent, child_name, new)
                return
