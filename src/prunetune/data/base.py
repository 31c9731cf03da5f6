"""Value types of the data layer, the dataset registry and :func:`load_dataset`.

A dataset loader turns ``(root, download, seed, **params)`` into :class:`DataSplits`. Small
datasets (CIFAR, digits, synthetic) come fully in memory as :class:`TensorSplit` (already
normalised float32 images plus int64 labels); large on-disk datasets (imagefolder) come as torch
``Dataset`` objects that decode and transform images lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from prunetune._registry import Registry
from prunetune.exceptions import ConfigError, DataError


@dataclass(frozen=True, eq=False)  # tensors: compare by identity
class TensorSplit:
    """One in-memory split: normalised images and their labels.

    Attributes:
        x: ``Tensor[N, C, H, W]`` float32 images, already normalised.
        y: ``Tensor[N]`` int64 class labels.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or self.x.dim() != 4 or not self.x.is_floating_point():
            got = _describe(self.x)
            raise DataError(f"TensorSplit.x must be a floating N×C×H×W tensor, got {got}")
        if not isinstance(self.y, Tensor) or self.y.dim() != 1 or self.y.dtype != torch.int64:
            got = _describe(self.y)
            raise DataError(f"TensorSplit.y must be an int64 tensor of shape [N], got {got}")
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"TensorSplit has {self.x.shape[0]} images but {self.y.shape[0]} labels; "
                "x and y must have the same length"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: Sequence[int] | Tensor) -> TensorSplit:
        """Return the samples at ``indices`` (in that order) as a new split."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.dim() != 1:
            raise DataError(f"subset indices must be one-dimensional, got shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise DataError(f"subset indices out of range for a split of {len(self)} samples")
        return TensorSplit(self.x[idx.to(self.x.device)], self.y[idx.to(self.y.device)])

    def to(self, device: str | torch.device) -> TensorSplit:
        """Return the split with both tensors on ``device`` (self if already there)."""
        if self.x.device == torch.device(device) and self.y.device == torch.device(device):
            return self
        return TensorSplit(self.x.to(device), self.y.to(device))


Split = Union[TensorSplit, Dataset]
"""A split is either an in-memory :class:`TensorSplit` or a lazily decoded torch ``Dataset``."""


@dataclass(frozen=True, eq=False)  # tensors: compare by identity
class DataSplits:
    """The three splits of one dataset plus what a model needs to know about it.

    Attributes:
        train: training split.
        val: validation split (used for fine-tuning decisions and search objectives).
        test: held-out test split. Loaders document when ``val`` is ``test`` (e.g. ``val_size=0``).
        num_classes: number of classes (labels are ``0 .. num_classes-1``).
        in_channels: image channels (3 for RGB, 1 for grey).
        image_size: side length of the (square) images fed to the model.
        name: registry name of the dataset.
        augment: whether CIFAR-style train augmentation (pad-crop + horizontal flip, see
            :func:`prunetune.data.loader.augment_batch`) suits this data.
        classes: human-readable class names when the dataset provides them, else empty.
        split: what fixes which sample lands in which split (dataset name, ``split_seed`` and the
            dataset's split parameters); set by :func:`load_dataset`, recorded in dense checkpoints. A
            builder adds what only it knows (a digest of the files), and ``split_seed: None`` where no
            split is drawn (the seed then decides nothing and is not recorded).
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    name: str
    augment: bool
    classes: tuple[str, ...] = field(default=())
    split: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for attr in ("num_classes", "in_channels", "image_size"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"DataSplits.{attr} must be a positive int, got {value!r}")


DatasetBuilder = Callable[..., DataSplits]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset loader.

    Attributes:
        name: registry name.
        build: ``build(root=Path|None, download=bool, seed=int, **params) -> DataSplits``; ``seed``
            is the split seed (``split_seed``): the only randomness in which sample goes where.
        defaults: every parameter the loader takes, with its default; others are rejected.
        summary: one line describing the dataset.
        split_params: the parameters that, with the split seed, decide the split (recorded in
            :attr:`DataSplits.split`).
    """

    name: str
    build: DatasetBuilder
    defaults: Mapping[str, Any]
    summary: str
    split_params: tuple[str, ...] = ()

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Parameter names: run when a recipe is read and again when the data is loaded."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "(none)"
            raise ConfigError(
                f"dataset {self.name!r} has no parameter {', '.join(repr(u) for u in unknown)}; "
                f"its parameters are: {known}"
            )


DATASETS: Registry[DatasetSpec] = Registry("dataset", pluggable=True)


def register_dataset(
    name: str, *, defaults: Mapping[str, Any], summary: str, split_params: Sequence[str] = ()
) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator registering a builder function as dataset ``name``."""

    def _register(build: DatasetBuilder) -> DatasetBuilder:
        DATASETS.register(name, DatasetSpec(name, build, dict(defaults), summary, tuple(split_params)))
        return build

    return _register


def dataset_defaults(name: str) -> dict[str, Any]:
    """The parameters dataset ``name`` accepts, with their defaults."""
    return dict(DATASETS.get(name).defaults)


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    split_seed: int = 0,
    **params: Any,
) -> DataSplits:
    """Load dataset ``name`` and split it into train / val / test.

    Args:
        name: a registered dataset (``cifar10``, ``cifar100``, ``digits``, ``synthetic``,
            ``imagefolder``); see ``DATASETS.names()``.
        root: folder holding the dataset files (required for on-disk datasets).
        download: fetch missing files from the official source where the dataset supports it.
        split_seed: seed of every random choice that shapes the data (hold-out splits, synthetic
            samples). It is a property of the data, never of a training run: a recipe's ``seed``
            does not move it, so every run on the same data sees the same test images.
        **params: dataset-specific parameters; see :func:`dataset_defaults`.

    Returns:
        The dataset's :class:`DataSplits`.

    Raises:
        UnknownNameError: ``name`` is not registered (the message suggests close names).
        ConfigError: an unknown or invalid parameter.
        DataError: files are missing or malformed.
    """
    spec = DATASETS.get(name)
    spec.check_params(params)
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)):
        raise ConfigError(f"split_seed must be an int, got {split_seed!r}")
    root_path = Path(root).expanduser() if root is not None else None
    merged = {**spec.defaults, **params}
    splits = spec.build(root=root_path, download=bool(download), seed=int(split_seed), **merged)
    if splits.num_classes < 2:  # one class folder trained to an accuracy of 1.0 that meant nothing
        raise DataError(f"dataset {name!r}{f' under {root_path}' if root_path is not None else ''} has "
                        f"{splits.num_classes} class; a classifier needs at least 2 (one folder per class)")
    for which in ("train", "val", "test"):  # an empty one failed after the dense training ("evaluation set is empty")
        if len(getattr(splits, which)) == 0:
            where = f" under {root_path}" if root_path is not None else ""
            fraction = f", a larger {which}_fraction" if f"{which}_fraction" in merged else ""
            raise DataError(f"dataset {name!r}{where} gives an empty {which} split; it needs images in every split "
                            f"(more images per class{fraction}, or its own folder or file for that split)")
    split = {"dataset": name, "split_seed": int(split_seed), **{k: merged[k] for k in spec.split_params},
             **splits.split}  # a builder may add what only it knows decides the split
    if split["split_seed"] is None:  # the builder drew no split: the seed decides nothing
        del split["split_seed"]
    return replace(splits, split=split)


def int_param(dataset: str, name: str, value: Any, *, minimum: int) -> int:
    """Validate an integer dataset parameter (``>= minimum``) and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"dataset {dataset!r}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def fraction_param(dataset: str, name: str, value: Any, *, allow_zero: bool) -> float:
    """Validate a fraction parameter in ``[0, 1)`` (or ``(0, 1)``) and return it."""
    low_ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not low_ok or not (value >= 0 if allow_zero else value > 0) or value >= 1:
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(
            f"dataset {dataset!r}: {name} must be a number in {interval}, got {value!r}"
        )
    return float(value)


def require_root(dataset: str, root: Path | None, hint: str) -> Path:
    """Return ``root`` or raise :class:`DataError` explaining what it must contain."""
    if root is None:
        raise DataError(f"dataset {dataset!r} needs root=<folder>: {hint}")
    return root


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator whose seed is a well-mixed function of the integers in ``key``."""
    words = [int(k) % 2**64 for k in key]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def stratified_split(
    y: Tensor, val_fraction: float, test_fraction: float, seed: int, *, salt: int = 0xD161
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded per-class split of sample indices into train / val / test.

    Each class contributes ``round(n_c * fraction)`` samples to val and test (at least one sample
    per class stays in train); each returned index tensor is shuffled.

    Returns:
        ``(train_indices, val_indices, test_indices)``, int64, disjoint, covering ``range(len(y))``.
    """
    gen = seeded_generator(seed, salt)
    parts: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    for cls in torch.unique(y).tolist():
        members = torch.nonzero(y == cls).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        n = members.numel()
        n_test = min(round(n * test_fraction), n - 1)
        n_val = min(round(n * val_fraction), n - 1 - n_test)
        parts[2].append(members[:n_test])
        parts[1].append(members[n_test : n_test + n_val])
        parts[0].append(members[n_test + n_val :])
    return tuple(_shuffled(torch.cat(p), gen) for p in parts)  # type: ignore[return-value]


def _shuffled(indices: Tensor, gen: torch.Generator) -> Tensor:
    return indices[torch.randperm(indices.numel(), generator=gen)]


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
