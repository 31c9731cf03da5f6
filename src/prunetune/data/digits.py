"""scikit-learn's bundled 8×8 handwritten digits: a tiny offline dataset for tests and demos.

1797 grey images with values ``0..16`` and 10 classes, shipped inside scikit-learn (no download).
Images are scaled to ``[0, 1]``, optionally upsampled (bilinear) to ``image_size``, then
standardised with the mean and std of the *training* split only.

Parameters:
    image_size: side length after upsampling (default 16; 8 keeps the native resolution).
    val_fraction: share of each class held out for validation (default 0.15; 0 makes ``val`` the
        test split).
    test_fraction: share of each class held out for testing (default 0.15).

The split is stratified: every class is permuted with a generator seeded by the dataset's
``split_seed`` (default 0; never the recipe's training seed) and cut by the fractions, so all three
splits keep the class balance. Digits are never flipped (``augment`` is
``False``): a mirrored 2 is not a 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prunetune._machine import check_input_fits
from prunetune.data.base import (
    DataSplits,
    TensorSplit,
    fraction_param,
    int_param,
    register_dataset,
    stratified_split,
)
from prunetune.exceptions import ConfigError

NATIVE_SIZE = 8
NUM_CLASSES = 10
_DEFAULTS = {"image_size": 16, "val_fraction": 0.15, "test_fraction": 0.15}


@register_dataset(
    "digits", defaults=_DEFAULTS, summary="scikit-learn digits: 1797 8×8 grey, 10 classes",
    split_params=("val_fraction", "test_fraction"),
)
def load_digits_dataset(
    *,
    root: Path | None,
    download: bool,
    seed: int,
    image_size: int,
    val_fraction: float,
    test_fraction: float,
) -> DataSplits:
    """Load and split the digits (see the module docstring); ``root``/``download`` are unused."""
    del root, download  # bundled with scikit-learn
    image_size = int_param("digits", "image_size", image_size, minimum=NATIVE_SIZE)
    val_fraction = fraction_param("digits", "val_fraction", val_fraction, allow_zero=True)
    test_fraction = fraction_param("digits", "test_fraction", test_fraction, allow_zero=False)
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"dataset 'digits': val_fraction + test_fraction must be < 1 to leave training data, "
            f"got {val_fraction} + {test_fraction}"
        )
    x, y = _raw_digits()
    # the upsampled images and their normalised copy: a large image_size was an allocator traceback
    check_input_fits(2 * len(x), (1, image_size, image_size), f"dataset 'digits' at image_size {image_size}",
                     "give a smaller image_size")
    x = _resize(x, image_size)
    train_idx, val_idx, test_idx = stratified_split(y, val_fraction, test_fraction, seed)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    test = TensorSplit(x[test_idx], y[test_idx])
    val = TensorSplit(x[val_idx], y[val_idx]) if val_idx.numel() else test
    return DataSplits(
        train=TensorSplit(x[train_idx], y[train_idx]),
        val=val,
        test=test,
        num_classes=NUM_CLASSES,
        in_channels=1,
        image_size=image_size,
        name="digits",
        augment=False,
        classes=tuple(str(d) for d in range(NUM_CLASSES)),
    )


def _raw_digits() -> tuple[Tensor, Tensor]:
    """The bundled digits as float32 ``N×1×8×8`` in ``[0, 1]`` and int64 labels."""
    from sklearn.datasets import load_digits  # a core dependency, imported lazily (slow import)

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return x, y


def _resize(x: Tensor, image_size: int) -> Tensor:
    if image_size == NATIVE_SIZE:
        return x
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
