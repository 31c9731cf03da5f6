"""CIFAR-10 and CIFAR-100 from the official *python* archives, without torchvision.

``root`` must hold either the extracted folder (``cifar-10-batches-py/`` or ``cifar-100-python/``)
or the unextracted archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``); the folder
wins when both exist. ``root`` may also be the extracted folder or the archive itself. A batch file
larger than the official ones (CIFAR-10: 36 MiB, CIFAR-100: 180 MiB) is refused before it is read, each
file is checked as it is read, and the whole dataset's float32 size is checked against memory. The batch files are pickled
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
import logging
import os
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunetune._machine import check_input_fits
from prunetune._paths import input_file_problem
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

log = logging.getLogger(__name__)
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
    max_member: int  # bytes: a little more than the largest file of the official archive


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
    max_member=36 * 2**20,  # a batch is 31 MB
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
    max_member=180 * 2**20,  # 'train' is 155 MB
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
    _check_val_size(info, val_size, len(x_train))  # before the test files are joined and all is normalised
    x_test, y_test = _join(info, files, info.test_files)
    check_input_fits(len(x_train) + len(x_test), (3, 32, 32), f"{info.title} under {source} "
                     f"({len(x_train) + len(x_test)} images) as float32", f"re-extract or re-download {info.archive}")
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
        split={} if val_size else {"split_seed": None},  # val_size 0: val is test, nothing is drawn
    )


def locate(info: CifarInfo, root: Path, download: bool) -> Path:
    """Return the extracted folder or the archive under ``root`` (or ``root`` itself, when it is one of
    them), downloading it if asked."""
    if root.name in (info.folder, info.archive) and (root.is_dir() if root.name == info.folder else root.is_file()):
        return root
    if root.is_file():
        raise DataError(f"{info.title} root {root} is a file; give the folder holding {info.archive} "
                        f"(or the extracted {info.folder}/)")
    if (root / info.folder).is_dir():
        return root / info.folder
    archive = root / info.archive
    if archive.is_file():
        return archive
    for path, kind in ((root / info.folder, "folder"), (archive, "file")):
        if path.exists():
            problem = input_file_problem(path) or "is a file"
            raise DataError(f"{info.title} {path} {problem}, not the {'extracted folder' if kind == 'folder' else 'archive'}; "
                            f"replace it with the official {info.archive} (or its extracted {info.folder}/)")
    if download:
        return download_archive(info, root)
    other = next((o for o in (CIFAR10, CIFAR100) if o is not info and
                  ((root / o.folder).exists() or (root / o.archive).exists() or root.name == o.folder)), None)
    hint = f"; {root} holds {other.title} ({other.folder}): for it use dataset {other.name!r}" if other else ""
    raise DataError(
        f"{info.title} archive not found under {root}: put {info.archive} "
        f"(or the extracted {info.folder}/) there, or set the recipe's data download: true "
        f"(download=True from Python){hint}"
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
    except BaseException:  # Ctrl-C: no partial file left behind, one more at every try
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != info.md5:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"downloaded {info.title} archive has MD5 {digest.hexdigest()}, expected {info.md5}; "
            f"{by_hand}"
        )
    partial.replace(target)
    return target


def read_members(info: CifarInfo, source: Path) -> dict[str, tuple[Any, str]]:
    """Unpickle every batch file (and the meta file when present) of a folder or archive, each checked
    (:func:`_check_batch`) as it is read, before the next is.

    Returns:
        ``{file name: (checked (rows, labels) of a batch file, or the meta file's object, where it came from)}``.
    """
    wanted = (*info.train_files, *info.test_files, info.meta_file)
    read = _read_folder if source.is_dir() else _read_archive
    found = {}
    for name, payload, where in read(info, source, wanted):
        if name == info.meta_file:  # only the class names: optional, so a damaged one is left out
            try:
                found[name] = (restricted_loads(payload, encoding="bytes"), where)
            except Exception as exc:  # noqa: BLE001 - pickle raises many types on bad input
                log.warning("CIFAR meta file %s cannot be unpickled (%s); the class names it holds are left out",
                            where, exception_line(exc))
            continue
        obj = _unpickle(payload, where)
        del payload  # the batch's bytes are not kept beside its array
        found[name] = (_check_batch(info, obj, where), where)
    for name in (*info.train_files, *info.test_files):
        if name not in found:
            where = source / name if source.is_dir() else f"{source} (member {info.folder}/{name})"
            raise DataError(
                f"{info.title} file {where} is missing; re-extract or re-download {info.archive}"
            )
    return found


def _too_big(info: CifarInfo, size: int, where: str) -> DataError:
    # a 3 MB archive held a 3 GiB member, read whole before anything was checked
    return DataError(f"{info.title} file {where} holds {size} bytes, more than any file of the official "
                     f"archive ({info.max_member >> 20} MiB at most); re-extract or re-download {info.archive}")


def _read_folder(info: CifarInfo, folder: Path, wanted: tuple[str, ...]) -> Iterator[tuple[str, bytes, str]]:
    for name in wanted:
        path = folder / name
        problem = input_file_problem(path)
        if problem is not None and problem != "does not exist":
            raise DataError(f"{info.title} file {path} {problem}; re-extract or re-download {info.archive}")
        if problem is None:
            size = path.stat().st_size
            if size > info.max_member:
                raise _too_big(info, size, str(path))
            try:
                payload = path.read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read CIFAR file {path} ({exc})") from exc
            yield name, payload, str(path)


def _read_archive(info: CifarInfo, archive: Path, wanted: tuple[str, ...]) -> Iterator[tuple[str, bytes, str]]:
    """Read the wanted members in one streaming pass over the gzipped tar."""
    members = {f"{info.folder}/{name}": name for name in wanted}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = members.get(member.name.removeprefix("./"))
                if name and not member.isfile():
                    raise DataError(f"{info.title} archive {archive}: member {member.name} is {_member_kind(member)}, "
                                    f"not a regular file; download the official {info.archive} again")
                handle = tar.extractfile(member) if name else None
                if handle is not None:
                    if member.size > info.max_member:  # the header's size, before a byte is inflated
                        raise _too_big(info, member.size, f"{archive} (member {member.name})")
                    yield name, handle.read(info.max_member + 1), f"{archive}:{member.name}"
            # tar stops at its end marker and never reaches the gzip trailer: read to it, so that
            # damaged compressed data fails the CRC instead of loading as other pixels or labels
            while tar.fileobj.read(_CHUNK):
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{info.title} archive {archive} is unreadable ({exc}); download it again"
        ) from exc


def _member_kind(member: tarfile.TarInfo) -> str:
    kinds = ((member.issym(), f"a symbolic link to {member.linkname}"), (member.islnk(), f"a hard link to {member.linkname}"),
             (member.isdir(), "a folder"), (member.isfifo(), "a named pipe (FIFO)"), (member.isdev(), "a device"))
    return next((kind for test, kind in kinds if test), "a special file")


def _unpickle(payload: bytes, where: str) -> Any:
    try:
        return restricted_loads(payload, encoding="bytes")
    except Exception as exc:  # noqa: BLE001 - pickle raises many types on bad input
        raise DataError(f"malformed CIFAR batch file {where}: cannot unpickle ({exception_line(exc)}); re-extract or "
                        "re-download the official archive") from None


def _join(
    info: CifarInfo, files: dict[str, tuple[Any, str]], names: tuple[str, ...]
) -> tuple[np.ndarray, torch.Tensor]:
    """Concatenate checked batch files: uint8 ``N×3072`` rows and int64 labels."""
    checked = [files[name][0] for name in names]
    rows = np.concatenate([c[0] for c in checked])
    labels = np.concatenate([c[1] for c in checked])
    return rows, torch.from_numpy(labels)


def _check_batch(info: CifarInfo, batch: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled batch dict and return its rows and labels.

    ``data`` must be a numpy array (a nested list of shared references asked ``np.asarray`` for tens of
    GB) and the labels a flat list of ints or a 1-D integer array, checked before any conversion."""
    if isinstance(batch, dict) and "data" in batch and b"data" not in batch:
        raise DataError(f"malformed CIFAR batch file {where}: its keys are str ('data'), the official python "
                        "batches' are bytes (b'data'); re-extract or re-download the official archive")
    if not isinstance(batch, dict) or b"data" not in batch or info.label_key not in batch:
        raise DataError(
            f"malformed CIFAR batch file {where}: expected a dict with keys b'data' and "
            f"{info.label_key!r}"
        )
    rows = batch[b"data"]
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        got = f"{rows.dtype} {rows.shape}" if isinstance(rows, np.ndarray) else f"a {type(rows).__name__}"
        raise DataError(
            f"malformed CIFAR batch file {where}: b'data' must be a uint8 N×3072 numpy array, got {got}"
        )
    labels = batch[info.label_key]
    if isinstance(labels, np.ndarray) and labels.ndim != 1:
        raise DataError(f"malformed CIFAR batch file {where}: labels must be 1-D (one per image), got shape "
                        f"{labels.shape}")
    if not isinstance(labels, (list, np.ndarray)):
        raise DataError(f"malformed CIFAR batch file {where}: labels must be integers (a list of ints or a 1-D "
                        f"integer array), got a {type(labels).__name__}")
    if len(labels) != rows.shape[0]:
        raise DataError(f"malformed CIFAR batch file {where}: {rows.shape[0]} images, {len(labels)} labels")
    if (labels.dtype.kind not in "iu" if isinstance(labels, np.ndarray) else
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and abs(v) < 2**63 for v in labels)):
        raise DataError(  # not silently truncated: 1.5 is no class
            f"malformed CIFAR batch file {where}: labels must be integers, got {short(labels)}"
        )
    labels = np.asarray(labels, dtype=np.int64)
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
    _check_val_size(info, val_size, len(train))
    perm = torch.randperm(len(train), generator=seeded_generator(seed, 0xC1FA))
    return train.subset(perm[val_size:]), train.subset(perm[:val_size])


def _check_val_size(info: CifarInfo, val_size: int, train_images: int) -> None:
    if val_size >= train_images:
        raise ConfigError(
            f"dataset {info.name!r}: val_size={val_size} must be smaller than the "
            f"{train_images} training images (0 uses the test split for validation)"
        )


def _class_names(info: CifarInfo, meta: tuple[Any, str] | None) -> tuple[str, ...]:
    """Class names from the meta file, or ``()`` when it is absent or does not fit."""
    names = meta[0].get(info.names_key) if meta is not None and isinstance(meta[0], dict) else None
    if not isinstance(names, (list, tuple)) or len(names) != info.num_classes:
        return ()
    try:
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError:  # the names are optional: a damaged meta file leaves them out
        return ()
