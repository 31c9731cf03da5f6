"""Datasets, splits and batch loading.

Public API::

    load_dataset(name, *, root=None, download=False, split_seed=0, **params) -> DataSplits
    DATASETS                      # Registry of DatasetSpec (cifar10, cifar100, digits, ...)
    dataset_defaults(name)        # parameters a dataset takes, with defaults
    TensorSplit(x, y), DataSplits(...)
    make_loader(split, *, batch_size, shuffle, augment, device, seed, num_workers, drop_last)
    BatchLoader, DatasetLoader, augment_batch(x, *, padding, flip, generator)
    calibration_subset(split, *, size, seed), split_fingerprint(split)

Importing this package imports torch and numpy only; scikit-learn (digits) and torchvision
(imagefolder) are imported when those datasets are loaded.
"""

from __future__ import annotations

from prunetune.data import cifar, digits, imagefolder, synthetic  # noqa: F401  (register datasets)
from prunetune.data.base import (
    DATASETS,
    DataSplits,
    DatasetSpec,
    Split,
    TensorSplit,
    dataset_defaults,
    load_dataset,
    register_dataset,
)
from prunetune.data.loader import (
    BatchLoader,
    DatasetLoader,
    augment_batch,
    calibration_subset,
    make_loader,
    split_fingerprint,
)

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DataSplits",
    "DatasetLoader",
    "DatasetSpec",
    "Split",
    "TensorSplit",
    "augment_batch",
    "calibration_subset",
    "dataset_defaults",
    "load_dataset",
    "make_loader",
    "register_dataset",
    "split_fingerprint",
]
