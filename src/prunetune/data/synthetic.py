"""A seeded synthetic image-classification dataset a small CNN can learn in seconds.

Every class owns a fixed random *template*: smooth (bilinearly upsampled from a 4×4 grid, at most
the image size) Gaussian noise, standardised to zero mean and unit std. A sample of class ``c`` is
``amplitude · template[c] + noise · ε`` with a per-sample amplitude in ``[0.5, 1.5]`` and pixel
noise ``ε ~ N(0, 1)``. Labels are balanced (``i mod num_classes``, then shuffled). Templates are
shared by the three splits; everything is a function of the dataset's ``split_seed`` (default 0,
never the recipe's training seed) and the parameters.

Parameters: ``num_classes`` (10), ``in_channels`` (3), ``image_size`` (32), ``train_size`` (512),
``val_size`` (128; 0 makes ``val`` the test split), ``test_size`` (128), ``noise`` (1.0, the pixel
noise std relative to the unit-std templates).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from prunetune._machine import check_input_fits
from prunetune.data.base import (
    DataSplits,
    TensorSplit,
    int_param,
    register_dataset,
    seeded_generator,
)
from prunetune.exceptions import ConfigError

_GRID = 4
_DEFAULTS = {
    "num_classes": 10,
    "in_channels": 3,
    "image_size": 32,
    "train_size": 512,
    "val_size": 128,
    "test_size": 128,
    "noise": 1.0,
}


@register_dataset(
    "synthetic", defaults=_DEFAULTS, summary="seeded class templates plus noise (offline)",
    split_params=tuple(_DEFAULTS),
)
def load_synthetic(
    *,
    root: Path | None,
    download: bool,
    seed: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    train_size: int,
    val_size: int,
    test_size: int,
    noise: float,
) -> DataSplits:
    """Generate the dataset (see the module docstring); ``root`` and ``download`` are unused."""
    del root, download
    num_classes = int_param("synthetic", "num_classes", num_classes, minimum=2)
    in_channels = int_param("synthetic", "in_channels", in_channels, minimum=1)
    image_size = int_param("synthetic", "image_size", image_size, minimum=1)
    sizes = (
        int_param("synthetic", "train_size", train_size, minimum=1),
        int_param("synthetic", "val_size", val_size, minimum=0),
        int_param("synthetic", "test_size", test_size, minimum=1),
    )
    noise = _noise_param(noise)
    # the samples and their noise are built whole: a huge train_size asked the allocator for terabytes; so
    # are the class templates and their temporaries (num_classes 1000000 was an allocator traceback)
    check_input_fits(2 * sum(sizes) + 3 * num_classes, (in_channels, image_size, image_size),
                     f"dataset 'synthetic' with {sum(sizes)} images and {num_classes} class templates of "
                     f"{in_channels}x{image_size}x{image_size}",
                     "give smaller train_size, val_size, test_size, num_classes or image_size")
    gen = seeded_generator(seed, 0x5147)
    templates = make_templates(num_classes, in_channels, image_size, gen)
    train, val, test = (sample_split(templates, n, noise, gen) if n else None for n in sizes)
    return DataSplits(
        train=train,
        val=val if val is not None else test,
        test=test,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        name="synthetic",
        augment=False,
        classes=tuple(f"class_{c}" for c in range(num_classes)),
    )


def make_templates(
    num_classes: int, in_channels: int, image_size: int, gen: torch.Generator
) -> Tensor:
    """``Tensor[K, C, S, S]`` of smooth, per-template standardised random patterns."""
    grid = min(_GRID, image_size)
    coarse = torch.randn(num_classes, in_channels, grid, grid, generator=gen)
    size = (image_size, image_size)
    smooth = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    flat = smooth.flatten(1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)
    return flat.view_as(smooth)


def sample_split(templates: Tensor, size: int, noise: float, gen: torch.Generator) -> TensorSplit:
    """Draw ``size`` balanced, shuffled samples around the class templates."""
    num_classes = templates.shape[0]
    y = (torch.arange(size) % num_classes)[torch.randperm(size, generator=gen)]
    amplitude = torch.empty(size, 1, 1, 1).uniform_(0.5, 1.5, generator=gen)
    eps = torch.randn(size, *templates.shape[1:], generator=gen)
    return TensorSplit(amplitude * templates[y] + noise * eps, y)


def _noise_param(noise: object) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        # nan or inf trained to a nan loss, found after the pretraining
        raise ConfigError(f"dataset 'synthetic': noise must be a finite number >= 0, got {noise!r}")
    return float(noise)
