"""ImageNet-style class-folder datasets, decoded lazily by torchvision (optional ``vision`` extra).

Layout under ``root``::

    root/train/<class>/<image>   root/val/<class>/<image>   [root/test/<class>/<image>]

Without ``test/`` the test split is the val split (the same object). Without ``val/`` a stratified
``val_fraction`` of each class of ``train/`` is held out as the val split, chosen by the dataset's
``split_seed`` (default 0; never the recipe's training seed), so every run sees the same split. Train images get
``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip``; val/test images get
``Resize(round(256·image_size/224))`` + ``CenterCrop(image_size)``; all are normalised with the
ImageNet mean/std. The splits are torchvision ``ImageFolder`` datasets, so their augmentation
lives in the transforms and ``DataSplits.augment`` is ``False`` (no second, tensor-level pass).

Parameters: ``image_size`` (default 224), ``val_fraction`` (default 0.1; used without ``val/``).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from prunetune._imports import require
from prunetune._paths import input_file_problem
from prunetune._text import exception_line
from prunetune.data.base import (
    DataSplits,
    fraction_param,
    int_param,
    register_dataset,
    require_root,
    stratified_split,
)
from prunetune.exceptions import DataError, MissingExtraError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PURPOSE = "the 'imagefolder' dataset"


@register_dataset(
    "imagefolder", defaults={"image_size": 224, "val_fraction": 0.1},
    summary="class folders under root/train, root/val (or a held-out part of train)",
)
def load_imagefolder(
    *, root: Path | None, download: bool, seed: int, image_size: int, val_fraction: float
) -> DataSplits:
    """Build lazy train / val / test ``ImageFolder`` datasets (see the module docstring).

    Raises:
        DataError: ``root`` or a split folder is missing, or the splits disagree on classes.
        MissingExtraError: torchvision cannot be imported.
    """
    image_size = int_param("imagefolder", "image_size", image_size, minimum=1)
    val_fraction = fraction_param("imagefolder", "val_fraction", val_fraction, allow_zero=False)
    root = require_root("imagefolder", root, "a folder with train/ (and val/) class subfolders")
    if download:
        raise DataError(
            f"dataset 'imagefolder' cannot be downloaded; put the class folders under {root}"
        )
    folders = split_folders(root)
    tv = _torchvision()
    train_tf, eval_tf = build_transforms(tv, image_size)
    train = _image_folder(tv, folders["train"], train_tf)
    classes = list(train.classes)
    split_info: dict[str, object] = {}  # recorded in dense checkpoints: only a held-out val depends on it
    if "val" in folders:
        val = _image_folder(tv, folders["val"], eval_tf)
    else:
        train, val = _hold_out(tv, folders["train"], train, eval_tf, val_fraction, seed)
        split_info["val_fraction"] = val_fraction
    test = _image_folder(tv, folders["test"], eval_tf) if "test" in folders else val
    for name, split in (("val", val), ("test", test)):
        found = list(getattr(split, "dataset", split).classes)
        if found != classes:
            raise DataError(
                f"imagefolder {folders.get(name, folders['train'])} has classes {found}, but train has "
                f"{classes}; every split needs the same class folders"
            )
    return DataSplits(
        train=train,
        val=val,
        test=test,
        num_classes=len(classes),
        in_channels=3,
        image_size=image_size,
        name="imagefolder",
        augment=False,
        classes=tuple(classes),
        split=split_info,
    )


def _hold_out(tv: ModuleType, folder: Path, train: Any, eval_tf: Any, val_fraction: float,
              seed: int) -> tuple[Any, Any]:
    """Stratified hold-out of ``val_fraction`` of ``train`` (seeded by the split seed): ``(train, val)``
    subsets, val read with the evaluation transforms."""
    from torch.utils.data import Subset

    targets = torch.as_tensor([int(t) for _, t in train.samples], dtype=torch.long)
    if targets.numel() < 2:
        raise DataError(f"imagefolder {folder} has {targets.numel()} image(s); holding out a val split "
                        "needs at least 2 (or add a val/ folder)")
    train_idx, val_idx, _ = stratified_split(targets, val_fraction, 0.0, seed, salt=0x1F01)
    evaluated = _image_folder(tv, folder, eval_tf)
    return Subset(train, train_idx.tolist()), Subset(evaluated, val_idx.tolist())


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The file names read as images (torchvision's ``IMG_EXTENSIONS``); hidden files (``.name``) are not."""


def _image_folder(tv: ModuleType, folder: Path, transform: Any) -> Any:
    """``ImageFolder(folder)`` reading regular image files only, a damaged image named in one line.

    A class folder without images (or an empty split folder) was torchvision's FileNotFoundError with
    a traceback; a FIFO named like an image hung a loader worker for ever; an image PIL cannot decode
    was a traceback in the middle of an epoch.
    """
    try:
        return tv.datasets.ImageFolder(str(folder), transform=transform,
                                       loader=_ImageLoader(tv.datasets.folder.default_loader),
                                       is_valid_file=_is_image)
    except FileNotFoundError as exc:
        raise DataError(f"imagefolder {folder}: {exception_line(exc, 200)}; every class folder needs at least "
                        f"one image ({', '.join(IMAGE_EXTENSIONS)})") from None


def _is_image(path: str) -> bool:
    """A visible file with an image name (from the name alone: a listing of a million files stats none)."""
    return not os.path.basename(path).startswith(".") and path.lower().endswith(IMAGE_EXTENSIONS)


class _ImageLoader:
    """torchvision's image loader, with a file it cannot decode named and one that is no regular file
    refused before it is opened (a FIFO named like an image hung a loader worker for ever); a class,
    as loader workers pickle it."""

    def __init__(self, load: Any) -> None:
        self.load = load

    def __call__(self, path: str) -> Any:
        problem = input_file_problem(path)
        if problem is not None:
            raise DataError(f"imagefolder file {path} {problem}; remove it (only regular image files are read)")
        try:
            return self.load(path)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated files
            raise DataError(f"imagefolder image {path} cannot be read ({exception_line(exc)}); "
                            "remove or replace it") from None


def split_folders(root: Path) -> dict[str, Path]:
    """Return the existing ``train``/``val``/``test`` folders, requiring train."""
    if not root.is_dir():
        raise DataError(f"imagefolder root {root} does not exist or is not a folder")
    folders = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    if "train" not in folders:
        raise DataError(
            f"imagefolder split folder {root / 'train'} is missing: {root} needs a train/ subfolder "
            "with one folder per class (val/ and test/ are optional)"
        )
    return folders


def build_transforms(tv: ModuleType, image_size: int) -> tuple[Any, Any]:
    """The (train, eval) torchvision transform pipelines for ``image_size``."""
    t = tv.transforms
    normalise = t.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = t.Compose(
        [t.RandomResizedCrop(image_size), t.RandomHorizontalFlip(), t.ToTensor(), normalise]
    )
    resize = round(256 * image_size / 224)
    evaluate = t.Compose([t.Resize(resize), t.CenterCrop(image_size), t.ToTensor(), normalise])
    return train, evaluate


def _torchvision() -> ModuleType:
    """Import torchvision (datasets, transforms); any import failure becomes an install hint."""
    try:
        tv = require("torchvision", extra="vision", purpose=_PURPOSE)
        require("torchvision.datasets", extra="vision", purpose=_PURPOSE)
        require("torchvision.transforms", extra="vision", purpose=_PURPOSE)
    except (RuntimeError, OSError, AttributeError) as exc:  # e.g. built for another torch
        raise MissingExtraError(
            f"{_PURPOSE} needs torchvision, which failed to import ({exc}); install a torchvision "
            "matching your torch with: pip install -c constraints.txt -e '.[vision]'"
        ) from exc
    return tv
