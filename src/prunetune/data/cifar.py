"""CIFAR-10 and CIFAR-100 from the official *python* archives, without torchvision.

``root`` must hold either the extracted folder (``cifar-10-batches-py/`` or ``cifar-100-python/``)
or the unextracted archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``); the folder
wins when both exist. ``root`` may also be the extracted folder itself. The batch files are pickled
dicts (read with ``encoding="bytes"``) holding ``b"data"`` (uint8 ``N×3072``, channel-major rows)
and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).

The batch files are read with a restricted unpickler (:mod:`prunetune.data._unpickle`) that admits
only lists, dicts, strings, numbers and numpy arrays: a crafted file is refused as malformed and
cannot run code.

Parameters: ``val_size`` (default 5000) training images are held out, by a permutation seeded
with the dataset's ``split_seed`` (default 0, never the recipe's training seed), as the validation
split. ``val_size=0`` keeps the full training set and makes
``val`` the test split (the same object).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunetune._text import exception_line, short
from prunetune.data._unpickle import restricted_loads
from prunetune.data.base import (
    DataSplits,
    TensorSplit,
    int_param,
    register_dataset,
    require_root,
    seeded_generator,
)
from prunetune.exceptions import ConfigError, DataError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class CifarInfo:
    """Everything that differs between CIFAR-10 and CIFAR-100."""

    name: str
    title: str
    folder: str
    archive: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarInfo(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)

CIFAR100 = CifarInfo(
    name="cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)

_DEFAULTS = {"val_size": 5000}


@register_dataset("cifar10", defaults=_DEFAULTS, summary="CIFAR-10: 60k 32×32 RGB, 10 classes",
                  split_params=("val_size",))
def load_cifar10(*, root: Path | None, download: bool, seed: int, val_size: int) -> DataSplits:
    """Load CIFAR-10 (see the module docstring)."""
    return load_cifar(CIFAR10, root=root, download=download, seed=seed, val_size=val_size)


@register_dataset("cifar100", defaults=_DEFAULTS, summary="CIFAR-100: 60k 32×32 RGB, 100 classes",
                  split_params=("val_size",))
def load_cifar100(*, root: Path | None, download: bool, seed: int, val_size: int) -> DataSplits:
    """Load CIFAR-100 with its fine labels (see the module docstring)."""
    return load_cifar(CIFAR100, root=root, download=download, seed=seed, val_size=val_size)


def load_cifar(
    info: CifarInfo, *, root: Path | None, download: bool, seed: int, val_size: int
) -> DataSplits:
    """Read, normalise and split one CIFAR variant."""
    val_size = int_param(info.name, "val_size", val_size, minimum=0)
    hint = f"the folder holding {info.archive} or the extracted {info.folder}/"
    source = locate(info, require_root(info.name, root, hint), download)
    files = read_members(info, source)
    x_train, y_train = _join(info, files, info.train_files)
    x_test, y_test = _join(info, files, info.test_files)
    train_all = TensorSplit(_normalise(info, x_train), y_train)
    test = TensorSplit(_normalise(info, x_test), y_test)
    train, val = _hold_out(info, train_all, val_size, seed, test)
    return DataSplits(
        train=train,
        val=val,
        test=test,
        num_classes=info.num_classes,
        in_channels=3,
        image_size=32,
        name=info.name,
        augment=True,
        classes=_class_names(info, files.get(info.meta_file)),
    )


def locate(info: CifarInfo, root: Path, download: bool) -> Path:
    """Return the extracted folder or the archive under ``root``, downloading it if asked."""
    if root.name == info.folder and root.is_dir():
        return root
    if (root / info.folder).is_dir():
        return root / info.folder
    archive = root / info.archive
    if archive.is_file():
        return archive
    if download:
        return download_archive(info, root)
    raise DataError(
        f"{info.title} archive not found under {root}: put {info.archive} "
        f"(or the extracted {info.folder}/) there, or pass download=True"
    )


def download_archive(info: CifarInfo, root: Path) -> Path:
    """Download the official archive into ``root`` and verify its MD5."""
    target = root / info.archive
    partial = None
    by_hand = f"download {info.url} yourself and put {info.archive} under {root}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5()
        fd, name = tempfile.mkstemp(prefix=f".{info.archive}.", suffix=".part", dir=root)  # unique per download
        partial = Path(name)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(info.url, timeout=60) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except Exception as exc:  # noqa: BLE001 - any network or disk failure gets the same advice
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise DataError(
            f"could not download {info.title} from {info.url} ({exc}); {by_hand}"
        ) from exc
    if digest.hexdigest() != info.md5:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"downloaded {info.title} archive has MD5 {digest.hexdigest()}, expected {info.md5}; "
            f"{by_hand}"
        )
    partial.replace(target)
    return target


def read_members(info: CifarInfo, source: Path) -> dict[str, tuple[Any, str]]:
    """Unpickle every batch file (and the meta file when present) of a folder or archive.

    Returns:
        ``{file name: (unpickled object, description of where it came from)}``.
    """
    wanted = (*info.train_files, *info.test_files, info.meta_file)
    raw = _read_folder(info, source, wanted) if source.is_dir() else _read_archive(info, source, wanted)
    for name in (*info.train_files, *info.test_files):
        if name not in raw:
            where = source / name if source.is_dir() else f"{source} (member {info.folder}/{name})"
            raise DataError(
                f"{info.title} file {where} is missing; re-extract or re-download {info.archive}"
            )
    return {name: (_unpickle(payload, where), where) for name, (payload, where) in raw.items()}


# the largest file of the official archives is CIFAR-100's 'train', 155 MB; a member above this is no
# CIFAR batch (a 3 MB archive held a 3 GiB member, read whole before anything was checked)
MAX_MEMBER_BYTES = 256 * 2**20


def _too_big(info: CifarInfo, size: int, where: str) -> DataError:
    return DataError(f"{info.title} file {where} holds {size} bytes, more than any file of the official "
                     f"archive ({MAX_MEMBER_BYTES >> 20} MiB at most); re-extract or re-download {info.archive}")


def _read_folder(info: CifarInfo, folder: Path, wanted: tuple[str, ...]) -> dict[str, tuple[bytes, str]]:
    found = {}
    for name in wanted:
        path = folder / name
        if path.is_file():
            size = path.stat().st_size
            if size > MAX_MEMBER_BYTES:
                raise _too_big(info, size, str(path))
            try:
                found[name] = (path.read_bytes(), str(path))
            except OSError as exc:
                raise DataError(f"cannot read CIFAR file {path} ({exc})") from exc
    return found


def _read_archive(
    info: CifarInfo, archive: Path, wanted: tuple[str, ...]
) -> dict[str, tuple[bytes, str]]:
    """Read the wanted members in one streaming pass over the gzipped tar."""
    members = {f"{info.folder}/{name}": name for name in wanted}
    found = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = members.get(member.name.removeprefix("./"))
                handle = tar.extractfile(member) if name and member.isfile() else None
                if handle is not None:
                    if member.size > MAX_MEMBER_BYTES:  # the header's size, before a byte is inflated
                        raise _too_big(info, member.size, f"{archive} (member {member.name})")
                    found[name] = (handle.read(MAX_MEMBER_BYTES + 1), f"{archive}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{info.title} archive {archive} is unreadable ({exc}); download it again"
        ) from exc
    return found


def _unpickle(payload: bytes, where: str) -> Any:
    try:
        return restricted_loads(payload, encoding="bytes")
    except Exception as exc:  # noqa: BLE001 - pickle raises many types on bad input
        raise DataError(f"malformed CIFAR batch file {where}: cannot unpickle ({exception_line(exc)}); re-extract or "
                        "re-download the official archive") from None


def _join(
    info: CifarInfo, files: dict[str, tuple[Any, str]], names: tuple[str, ...]
) -> tuple[np.ndarray, torch.Tensor]:
    """Validate and concatenate batch files: uint8 ``N×3072`` rows and int64 labels."""
    checked = [_check_batch(info, *files[name]) for name in names]
    rows = np.concatenate([c[0] for c in checked])
    labels = np.concatenate([c[1] for c in checked])
    return rows, torch.from_numpy(labels)


def _check_batch(info: CifarInfo, batch: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled batch dict and return its rows and labels."""
    if not isinstance(batch, dict) or b"data" not in batch or info.label_key not in batch:
        raise DataError(
            f"malformed CIFAR batch file {where}: expected a dict with keys b'data' and "
            f"{info.label_key!r}"
        )
    rows = np.asarray(batch[b"data"])
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        raise DataError(
            f"malformed CIFAR batch file {where}: b'data' must be uint8 N×3072, "
            f"got {rows.dtype} {rows.shape}"
        )
    try:
        labels = np.asarray(batch[info.label_key])
    except (TypeError, ValueError):  # ragged lists
        labels = np.asarray(None)
    if labels.dtype.kind not in "iu" and labels.size:  # not silently truncated: 1.5 is no class
        raise DataError(
            f"malformed CIFAR batch file {where}: labels must be integers, got "
            f"{short(batch[info.label_key])}"
        )
    labels = labels.astype(np.int64)
    if labels.shape != (rows.shape[0],):
        raise DataError(
            f"malformed CIFAR batch file {where}: {rows.shape[0]} images, {labels.size} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DataError(
            f"malformed CIFAR batch file {where}: labels must lie in 0..{info.num_classes - 1}, "
            f"got {labels.min()}..{labels.max()}"
        )
    return rows, labels


def _normalise(info: CifarInfo, rows: np.ndarray) -> torch.Tensor:
    """uint8 ``N×3072`` rows → float32 ``N×3×32×32`` standardised with the CIFAR mean/std."""
    x = torch.from_numpy(rows).reshape(-1, 3, 32, 32).to(torch.float32)
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.div_(255.0).sub_(mean).div_(std)


def _hold_out(
    info: CifarInfo, train: TensorSplit, val_size: int, seed: int, test: TensorSplit
) -> tuple[TensorSplit, TensorSplit]:
    """Split a seeded hold-out of ``val_size`` images off ``train`` (``0`` → val is test)."""
    if val_size == 0:
        return train, test
    if val_size >= len(train):
        raise ConfigError(
            f"dataset {info.name!r}: val_size={val_size} must be smaller than the "
            f"{len(train)} training images (0 uses the test split for validation)"
        )
    perm = torch.randperm(len(train), generator=seeded_generator(seed, 0xC1FA))
    return train.subset(perm[val_size:]), train.subset(perm[:val_size])


def _class_names(info: CifarInfo, meta: tuple[Any, str] | None) -> tuple[str, ...]:
    """Class names from the meta file, or ``()`` when it is absent or does not fit."""
    names = meta[0].get(info.names_key) if meta is not None and isinstance(meta[0], dict) else None
    if not isinstance(names, (list, tuple)) or len(names) != info.num_classes:
        return ()
    try:
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError:  # the names are optional: a damaged meta file leaves them out
        return ()
