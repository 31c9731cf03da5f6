"""ImageNet-style class-folder datasets, decoded lazily by torchvision (optional ``vision`` extra).

Layout under ``root``::

    root/train/<class>/<image>   root/val/<class>/<image>   [root/test/<class>/<image>]

Without ``test/`` the test split is the val split (the same object). Train images get
``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip``; val/test images get
``Resize(round(256·image_size/224))`` + ``CenterCrop(image_size)``; all are normalised with the
ImageNet mean/std. The splits are torchvision ``ImageFolder`` datasets, so their augmentation
lives in the transforms and ``DataSplits.augment`` is ``False`` (no second, tensor-level pass).

Parameters: ``image_size`` (default 224).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from prunetune._imports import require
from prunetune.data.base import DataSplits, int_param, register_dataset, require_root
from prunetune.exceptions import DataError, MissingExtraError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PURPOSE = "the 'imagefolder' dataset"


@register_dataset(
    "imagefolder", defaults={"image_size": 224}, summary="class folders under root/train, root/val"
)
def load_imagefolder(
    *, root: Path | None, download: bool, seed: int, image_size: int
) -> DataSplits:
    """Build lazy train / val / test ``ImageFolder`` datasets (see the module docstring).

    Raises:
        DataError: ``root`` or a split folder is missing, or the splits disagree on classes.
        MissingExtraError: torchvision cannot be imported.
    """
    del seed  # file order is fixed by the folders; shuffling is the loader's job
    image_size = int_param("imagefolder", "image_size", image_size, minimum=1)
    root = require_root("imagefolder", root, "a folder with train/ and val/ class subfolders")
    if download:
        raise DataError(
            f"dataset 'imagefolder' cannot be downloaded; put the class folders under {root}"
        )
    folders = split_folders(root)
    tv = _torchvision()
    train_tf, eval_tf = build_transforms(tv, image_size)
    train = tv.datasets.ImageFolder(str(folders["train"]), transform=train_tf)
    val = tv.datasets.ImageFolder(str(folders["val"]), transform=eval_tf)
    test = val
    if "test" in folders:
        test = tv.datasets.ImageFolder(str(folders["test"]), transform=eval_tf)
    for name, split in (("val", val), ("test", test)):
        if list(split.classes) != list(train.classes):
            raise DataError(
                f"imagefolder {folders.get(name)} has classes {split.classes}, but train has "
                f"{train.classes}; every split needs the same class folders"
            )
    return DataSplits(
        train=train,
        val=val,
        test=test,
        num_classes=len(train.classes),
        in_channels=3,
        image_size=image_size,
        name="imagefolder",
        augment=False,
        classes=tuple(train.classes),
    )


def split_folders(root: Path) -> dict[str, Path]:
    """Return the existing ``train``/``val``/``test`` folders, requiring train and val."""
    if not root.is_dir():
        raise DataError(f"imagefolder root {root} does not exist or is not a folder")
    folders = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    for needed in ("train", "val"):
        if needed not in folders:
            raise DataError(
                f"imagefolder split folder {root / needed} is missing: {root} needs train/ and "
                "val/ subfolders, each with one folder per class (test/ is optional)"
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
