"""ImageNet-style class-folder datasets, read with PIL and transformed by torchvision (optional ``vision`` extra).

Layout under ``root``::

    root/train/<class>/<image>   root/val/<class>/<image>   [root/test/<class>/<image>]

Without ``test/`` the test split is the val split (the same object). Without ``val/`` a stratified
``val_fraction`` of each class of ``train/`` is held out as the val split, chosen by the dataset's
``split_seed`` (default 0; never the recipe's training seed), so every run sees the same split; the split
records a digest of the files it split (``files``), so a dense checkpoint is not used on a folder that
changed. Train images get ``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip``; val/test images
(and calibration subsets, see :meth:`FolderImages.unaugmented`) get ``Resize(round(256·image_size/224))``
+ ``CenterCrop(image_size)``; all are normalised with the ImageNet mean/std. The splits are
:class:`FolderImages` datasets (torchvision ``ImageFolder``'s interface), so their augmentation lives in
the transforms and ``DataSplits.augment`` is ``False`` (no second, tensor-level pass).

Listing (:func:`list_images`) skips hidden files and folders, and, with one logged warning, files that are
no image by name and files outside a class folder; a folder reached twice through symbolic links is an
error. Every val and test file is opened (its header only) when the data is loaded, before any training;
a train image is checked when it is first read.

Parameters: ``image_size`` (default 224), ``val_fraction`` (default 0.1; used without ``val/``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from prunetune._imports import require
from prunetune._paths import input_file_problem
from prunetune._text import exception_line, listed
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

log = logging.getLogger(__name__)


@register_dataset(
    "imagefolder", defaults={"image_size": 224, "val_fraction": 0.1},
    summary="class folders under root/train, root/val (or a held-out part of train)",
)
def load_imagefolder(
    *, root: Path | None, download: bool, seed: int, image_size: int, val_fraction: float
) -> DataSplits:
    """Build lazy train / val / test :class:`FolderImages` datasets (see the module docstring).

    Raises:
        DataError: ``root`` or a split folder is missing, the splits disagree on classes, a folder is
            reached twice (a symbolic link loop), or a val/test file is no image PIL can open.
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
    # train's folders are refused in val and test (val/cat linked to train/cat: held-out images trained on)
    seen: dict[tuple[int, int], str] = {}
    train = FolderImages(folders["train"], train_tf, eval_tf, seen=seen)
    classes = list(train.classes)
    split_info: dict[str, object] = {}  # recorded in dense checkpoints (recipes.checkpoint.check_split)
    val = FolderImages(folders["val"], eval_tf, seen=dict(seen)) if "val" in folders else None
    test = FolderImages(folders["test"], eval_tf, seen=dict(seen)) if "test" in folders else None
    if val is not None:
        # which files train/ holds: images moved from train/ to val/ after a dense model trained on them
        # would otherwise pass as the split it was trained on (images added to val/ or test/ were never
        # trained on, so they do not count); nothing is drawn, so the seed decides nothing
        split_info.update(files=files_digest(train), split_seed=None)
    else:
        train, val = _hold_out(folders["train"], train, val_fraction, seed)
        # which files were split: one more image a class moved every held-out image, under the same seed
        split_info.update(val_fraction=val_fraction, files=files_digest(train.dataset))
    test = val if test is None else test
    for name, split in (("val", val), ("test", test)):
        found = list(getattr(split, "dataset", split).classes)
        if found != classes:  # what differs, not both lists: a thousand classes made a 26 000-character line
            have, want = set(found), set(classes)
            missing, extra = [c for c in classes if c not in have], [c for c in found if c not in want]
            what = " and ".join([f"lacks {listed(missing)}"] * bool(missing)
                                + [f"has {listed(extra)}, which train has not"] * bool(extra))
            raise DataError(f"imagefolder {folders.get(name, folders['train'])} {what} ({len(found)} classes, train "
                            f"{len(classes)}); every split needs the same class folders")
    for split in (val, test) if test is not val else (val,):  # before any training: the held-out images only
        check_headers(split)
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


def _hold_out(folder: Path, train: FolderImages, val_fraction: float, seed: int) -> tuple[Any, Any]:
    """Stratified hold-out of ``val_fraction`` of ``train`` (seeded by the split seed): ``(train, val)``
    subsets, val read with the evaluation transforms."""
    from torch.utils.data import Subset

    targets = torch.as_tensor(train.targets, dtype=torch.long)
    if targets.numel() < 2:
        raise DataError(f"imagefolder {folder} has {targets.numel()} image(s); holding out a val split "
                        "needs at least 2 (or add a val/ folder)")
    train_idx, val_idx, _ = stratified_split(targets, val_fraction, 0.0, seed, salt=0x1F01)
    return Subset(train, train_idx.tolist()), Subset(train.unaugmented(), val_idx.tolist())


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
"""The file names read as images (torchvision's ``IMG_EXTENSIONS``, and ``.gif``: its first frame);
hidden files and folders (``.name``) are not."""


class FolderImages(torch.utils.data.Dataset):
    """The images of one split folder, ``folder/<class>/.../<image>``, as torchvision's ``ImageFolder``
    lists them (``classes``, ``class_to_idx``, ``samples``, ``targets``), read by :func:`read_image`.

    Listed by :func:`list_images`: hidden files and folders are skipped, and so (with one logged
    warning) are files that are no image by name and files lying outside a class folder. ``eval_transform``:
    the transform of :meth:`unaugmented` (default: ``transform``).
    """

    def __init__(self, folder: Path, transform: Any = None, eval_transform: Any = None, *,
                 seen: dict[tuple[int, int], str] | None = None) -> None:
        self.root = str(folder)
        self.classes, self.samples = list_images(folder, seen)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.eval_transform = transform if eval_transform is None else eval_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        image = read_image(path)
        return (self.transform(image) if self.transform is not None else image), target

    def unaugmented(self) -> FolderImages:
        """The same images (the same lists, not listed again) read with the evaluation transform."""
        view = copy.copy(self)
        view.transform = self.eval_transform
        return view


def list_images(folder: Path, seen: dict[tuple[int, int], str] | None = None,
                ) -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, samples)`` of a split folder, in torchvision's order (classes sorted; each class's
    files by folder path, then name). Folders reached through symbolic links are read, but none twice;
    ``seen`` (device and inode → path) holds folders listed before, of another split, none of which may
    come again.

    Raises:
        DataError: a folder is reached twice (a link loop, or two links to one folder), a class folder
            holds no image, there is no class folder, or a folder cannot be listed.
    """
    seen = {} if seen is None else seen
    skipped: Counter[str] = Counter()
    classes = []
    for entry in _entries(folder, seen):
        kind = _classify(entry, top=True)
        if kind == "folder":
            classes.append(entry.name)
        else:
            skipped[kind if kind.startswith("hidden") else f"loose in {folder.name}/ (not in a class folder)"] += 1
    samples, empty = [], []
    for target, name in enumerate(classes):
        found: list[tuple[str, str, str]] = []
        stack = [os.path.join(folder, name)]
        while stack:
            here = stack.pop()
            for entry in _entries(Path(here), seen):
                kind = _classify(entry)
                if kind == "folder":
                    stack.append(entry.path)
                elif kind.startswith("hidden"):
                    skipped[kind] += 1
                elif entry.name.lower().endswith(IMAGE_EXTENSIONS):  # by folder (as /-joined text), then name:
                    found.append((posix_relative(here, str(folder)), entry.name, here))  # one order on every system
                else:
                    skipped[f"named {os.path.splitext(entry.name)[1].lower() or '(no extension)'}"] += 1
        if not found:
            empty.append(name)
        samples.extend((os.path.join(here, fname), target) for _, fname, here in sorted(found))
    if not classes:
        raise DataError(f"imagefolder {folder}: no class folder found; put each class's images in "
                        f"{folder}/<class>/ ({', '.join(IMAGE_EXTENSIONS)})")
    if empty:
        raise DataError(f"imagefolder {folder}: class folder(s) {', '.join(empty)} hold no image; every class "
                        f"folder needs at least one image ({', '.join(IMAGE_EXTENSIONS)})")
    if skipped:
        log.warning("imagefolder %s: skipped %d file(s) or folder(s) that are not read: %s", folder,
                    sum(skipped.values()), ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
    return classes, samples


def _entries(folder: Path, seen: dict[tuple[int, int], str]) -> list[os.DirEntry]:
    """The entries of ``folder`` by name, refusing a folder already listed (by device and inode)."""
    try:
        st = os.stat(folder)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise DataError(f"imagefolder folder {folder} is {seen[key]} again (a symbolic link loop, or two "
                            "links to one folder): its images would be read twice, or be training and held-out "
                            "images at once; remove the link")
        seen[key] = str(folder)
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"imagefolder folder {folder} cannot be listed ({exc.strerror or exc}); "
                        "fix its permissions or remove it") from None


def _classify(entry: os.DirEntry, *, top: bool = False) -> str:
    """``"folder"``, ``"file"``, ``"hidden folder"`` or ``"hidden file"``. A link that cannot be followed
    (its target missing, as a class folder on an unmounted disk, a loop, no permission) and that would be
    read (any name at the ``top`` of a split folder, where each entry is a class; below, a name without
    extension or with an image's) is an error: skipped, it would drop a class and renumber every later
    one, or drop images. Other names (``notes.txt``) are skipped files, as before."""
    hidden = entry.name.startswith(".")
    extension = os.path.splitext(entry.name)[1].lower()
    if not hidden and (top or not extension or extension in IMAGE_EXTENSIONS) and entry.is_symlink():
        try:
            os.stat(entry.path)
        except FileNotFoundError:
            why = "which does not exist; mount or restore its target, or remove the link"
        except OSError as exc:
            why = f"which cannot be followed ({exc.strerror or exc}); fix or remove the link"
        else:
            why = None
        if why is not None:
            try:
                target = os.readlink(entry.path)
            except OSError:
                target = "?"
            raise DataError(f"imagefolder {entry.path} is a link to {target}, {why}")
    kind = "folder" if _is_dir(entry) else "file"
    return f"hidden {kind}" if hidden else kind


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # through a link: a linked folder is read
    except OSError:
        return False


def files_digest(images: FolderImages) -> str:
    """16 hex digits of a sha256 of the split folder's files (paths relative to it, ``/``-separated, sorted)
    and classes."""
    digest = hashlib.sha256()
    for path, target in sorted((posix_relative(p, images.root), t) for p, t in images.samples):
        digest.update(f"{images.classes[target]}\0{path}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def posix_relative(path: str, root: str, paths: Any = os.path) -> str:
    """``path`` relative to ``root`` with ``/`` between its parts on every system (``paths``: the
    platform's path module), so a split's digest is the same on Windows as on Linux."""
    return paths.relpath(path, root).replace(paths.sep, "/")


def check_headers(split: Any) -> None:
    """Open the header of every image of ``split`` (a :class:`FolderImages` or a ``Subset`` of one),
    refusing the first that is no regular file or that PIL cannot open, in one line; nothing is decoded."""
    from PIL import Image

    images, indices = (split.dataset, split.indices) if hasattr(split, "indices") else (split, range(len(split)))
    for i in indices:
        path = images.samples[int(i)][0]
        _check_file(path)
        with _reading(path):
            with Image.open(path) as image:
                _check_mode(image, path)


def read_image(path: str) -> Any:
    """The image at ``path`` as an 8-bit RGB PIL image, or a one-line :class:`DataError`.

    16-bit greyscale (``I;16`` modes, and 16-bit PGM, which PIL opens as ``I``) is scaled to 8 bits
    (value / 257) first: ``convert("RGB")`` saturated every pixel to 255. Other 32-bit integer and float
    images (modes ``I``, ``F``) are refused, their value range unknown. A file that is no regular file (a
    FIFO hung a loader worker) is refused before it is opened.
    """
    from PIL import Image

    _check_file(path)
    with _reading(path):
        with Image.open(path) as image:
            _check_mode(image, path)
            if image.mode.startswith("I;16") or _sixteen_bit(image):
                values = np.asarray(image)
                if values.size and (values.min() < 0 or values.max() > 65535):
                    raise DataError(f"imagefolder image {path} has pixel values outside 0..65535 in a 16-bit "
                                    "format; re-save it as an 8- or 16-bit image")
                levels = values.astype(np.float32) / 257
                return Image.fromarray(levels.round().astype(np.uint8), "L").convert("RGB")
            return image.convert("RGB")


def _check_file(path: str) -> None:
    problem = input_file_problem(path)
    if problem is not None:
        raise DataError(f"imagefolder file {path} {problem}; remove it (only regular image files are read)")


def _sixteen_bit(image: Any) -> bool:
    """PIL opens a 16-bit PGM (maxval up to 65535) in mode ``I``, not ``I;16``: its range is known."""
    return image.mode == "I" and image.format == "PPM"


def _check_mode(image: Any, path: str) -> None:
    if image.mode in ("I", "F") and not _sixteen_bit(image):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise DataError(f"imagefolder image {path} has {kind} pixels (PIL mode {image.mode}), whose range is "
                        "unknown; convert it to an 8- or 16-bit image")


@contextmanager
def _reading(path: str) -> Iterator[None]:
    """Name ``path`` in one line for any failure to read it; PIL's decompression-bomb warning (an image of
    more than ``Image.MAX_IMAGE_PIXELS`` pixels) becomes one logged warning naming the file."""
    from PIL import Image

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            yield
        for warning in caught:
            if issubclass(warning.category, Image.DecompressionBombWarning) and path not in _WARNED:
                _WARNED.add(path)
                log.warning("imagefolder image %s is very large (%s)", path, warning.message)
            elif not issubclass(warning.category, Image.DecompressionBombWarning):
                key = (str(warning.message), warning.category, warning.filename, warning.lineno)
                if key not in _PIL_WARNINGS:  # once, as PIL's own would be, not for every image and epoch
                    _PIL_WARNINGS.add(key)  # (a registry would not do: every catch_warnings resets them)
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"imagefolder image {path} is refused as a decompression bomb ({exception_line(exc)}); "
                        "shrink or remove it") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated files
        raise DataError(f"imagefolder image {path} cannot be read ({exception_line(exc)}); "
                        "remove or replace it") from None


_WARNED: set[str] = set()  # the images warned about in this process (each once, not once an epoch)
_PIL_WARNINGS: set[tuple] = set()  # PIL's other warnings passed on in this process (each text and place once)


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
    """Import torchvision's transforms (the folders are listed and read here); any import failure becomes
    an install hint."""
    try:
        tv = require("torchvision", extra="vision", purpose=_PURPOSE)
        require("torchvision.transforms", extra="vision", purpose=_PURPOSE)
    except (RuntimeError, OSError, AttributeError) as exc:  # e.g. built for another torch
        raise MissingExtraError(
            f"{_PURPOSE} needs torchvision, which failed to import ({exc}); install a torchvision "
            "matching your torch with: pip install -c constraints.txt -e '.[vision]'"
        ) from exc
    return tv
