"""CIFAR batch files and archives a hostile user could bring: each a one-line error, in bounded memory.

A 903-byte nested list of shared references as ``data`` made ``np.asarray`` allocate tens of GB; an
archive of oversized members was read whole before the error; a dataset too large for memory was an
allocator traceback; and several messages said "not found" or "missing" of what was there.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from prunetune.data import cifar as cifar_mod
from prunetune.data import load_dataset
from prunetune.exceptions import ConfigError, DataError

from test_data_cifar import make_tar, write_cifar10, write_cifar100


def _dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def test_data_that_is_no_numpy_array_is_refused_before_any_conversion(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    x: object = [1] * 10
    for _ in range(9):
        x = [x] * 10  # 903 bytes of pickle; 10**10 values as an array
    _dump(folder / "data_batch_1", {b"data": x, b"labels": [0] * 20})
    assert (folder / "data_batch_1").stat().st_size < 2000
    with pytest.raises(DataError, match=r"data_batch_1: b'data' must be a uint8 N×3072 numpy array, got a list$"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


@pytest.mark.parametrize(("labels", "why"), [
    (np.zeros((3, 1), np.int64), r"labels must be 1-D \(one per image\), got shape \(3, 1\)"),
    ([[0]] * 3, r"labels must be integers"),
    ([0] * 4, r"3 images, 4 labels"),
    ([2**70, 0, 0], r"labels must be integers"),
])
def test_labels_must_be_a_flat_list_of_ints_one_per_image(tmp_path: Path, labels, why: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    _dump(folder / "data_batch_2", {b"data": np.zeros((3, 3072), np.uint8), b"labels": labels})
    with pytest.raises(DataError, match=rf"data_batch_2: {why}"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


def test_str_keys_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    _dump(folder / "test_batch", {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 2]})
    with pytest.raises(DataError, match=r"test_batch: its keys are str \('data'\), the official python batches' "
                                        r"are bytes"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


def test_the_member_limit_is_the_variants_own(tmp_path: Path) -> None:
    assert 31_000_000 < cifar_mod.CIFAR10.max_member < 40 * 2**20
    assert 155_000_000 < cifar_mod.CIFAR100.max_member < 200 * 2**20
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    rows = 37 * 2**20 // 3072  # a valid batch, larger than any of CIFAR-10's
    _dump(folder / "data_batch_4", {b"data": np.zeros((rows, 3072), np.uint8), b"labels": [0] * rows})
    with pytest.raises(DataError, match=r"data_batch_4 holds \d+ bytes, more than any file of the official archive "
                                        r"\(36 MiB at most\)"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


def test_each_member_is_checked_as_it_is_read(tmp_path: Path, monkeypatch) -> None:
    """The first bad batch stops the reading: the members after it are never read."""
    write_cifar10(tmp_path / "cifar-10-batches-py")
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_1", {b"data": [1, 2], b"labels": [0]})
    make_tar(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    read = []
    real = cifar_mod._unpickle
    monkeypatch.setattr(cifar_mod, "_unpickle", lambda payload, where: read.append(where) or real(payload, where))
    with pytest.raises(DataError, match=r"data_batch_1: b'data' must be"):
        load_dataset("cifar10", root=tmp_path, val_size=0)
    assert read[-1].endswith("data_batch_1") and not any("data_batch_2" in w or "test_batch" in w for w in read)


def test_a_dataset_larger_than_memory_is_one_line_before_it_is_made(tmp_path: Path, monkeypatch) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    monkeypatch.setattr("prunetune._machine.physical_memory", lambda: 100_000)  # 19 images of 12 KiB as float32
    with pytest.raises(ConfigError, match=r"^CIFAR-10 under .*cifar-10-batches-py \(19 images\) as float32 needs .*"
                                          r"re-extract or re-download cifar-10-python.tar.gz$"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


def test_root_may_be_the_archive_itself(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    archive = make_tar(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    assert len(load_dataset("cifar10", root=archive, val_size=0).train) == 15
    (tmp_path / "other.tar.gz").write_bytes(b"x")
    with pytest.raises(DataError, match=r"root .*other.tar.gz is a file; give the folder holding cifar-10-python"):
        load_dataset("cifar10", root=tmp_path / "other.tar.gz")


def test_a_folder_or_archive_of_the_wrong_kind_says_what_it_is(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").write_text("a file")
    with pytest.raises(DataError, match=r"cifar-10-batches-py is a file, not the extracted folder"):
        load_dataset("cifar10", root=tmp_path)
    os.unlink(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-python.tar.gz").mkdir()
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz is a directory, not the archive"):
        load_dataset("cifar10", root=tmp_path)


@pytest.mark.parametrize(("kind", "said"), [(tarfile.SYMTYPE, "a symbolic link to elsewhere"),
                                            (tarfile.LNKTYPE, "a hard link to elsewhere"),
                                            (tarfile.FIFOTYPE, r"a named pipe \(FIFO\)")])
def test_a_member_that_is_no_regular_file_says_what_it_is(tmp_path: Path, kind: bytes, said: str) -> None:
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        member.type, member.linkname = kind, "elsewhere"
        tar.addfile(member, io.BytesIO(b""))
    with pytest.raises(DataError, match=rf"member cifar-10-batches-py/data_batch_1 is {said}, not a regular file"):
        load_dataset("cifar10", root=tmp_path)


def test_the_missing_archive_message_names_the_recipe_key_and_the_other_variant(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "cifar-100-python")
    with pytest.raises(DataError, match=r"download: true \(download=True from Python\); .* holds CIFAR-100 "
                                        r"\(cifar-100-python\): for it use dataset 'cifar100'$"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DataError, match=r"for it use dataset 'cifar100'$"):
        load_dataset("cifar10", root=tmp_path / "cifar-100-python")


def test_cifar100_still_reads_with_its_own_limit(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "cifar-100-python")
    info = dataclasses.replace(cifar_mod.CIFAR100, max_member=10)
    with pytest.raises(DataError, match=r"\(0 MiB at most\)"):
        cifar_mod.load_cifar(info, root=tmp_path, download=False, seed=0, val_size=0)
    assert len(load_dataset("cifar100", root=tmp_path, val_size=0).train) == 12
