"""Architectures by name (see :func:`create_model`)."""

from prunetune.models.cifar_resnet import ChannelPadShortcut, CifarResNet
from prunetune.models.registry import (
    MODELS,
    ModelEntry,
    check_model_name,
    create_model,
    default_input_size,
    list_models,
)
from prunetune.models.vgg import CifarVGG

__all__ = [
    "MODELS", "ChannelPadShortcut", "CifarResNet", "CifarVGG", "ModelEntry",
    "check_model_name", "create_model", "default_input_size", "list_models",
]
