"""CIFAR-10/100 loading from tiny archives written in the real python format."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from prunetune.data import load_dataset
from prunetune.data import cifar as cifar_mod
from prunetune.exceptions import CheckpointError, ConfigError, DataError

C10_MEAN, C10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
C100_MEAN, C100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
PER_BATCH = 3  # CIFAR-10: 5 train batches of 3 images = 15 train images
C100_TRAIN, TEST_N = 12, 4


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(folder: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write ``cifar-10-batches-py`` contents into ``folder``; return {file: (rows, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = TEST_N if name == "test_batch" else PER_BATCH
        rows, labels = _rows(rng, n), [(i * 7 + j) % 10 for j in range(n)]
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                              b"filenames": [b"f%d.png" % j for j in range(n)]})
        written[name] = (rows, labels)
    meta = {b"label_names": [f"c{k}".encode() for k in range(10)], b"num_cases_per_batch": 3}
    _dump(folder / "batches.meta", meta)
    return written


def write_cifar100(folder: Path, seed: int = 1) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write ``cifar-100-python`` contents into ``folder``; return {file: (rows, fine labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for name, n in (("train", C100_TRAIN), ("test", TEST_N)):
        rows, fine = _rows(rng, n), [int(v) for v in rng.integers(0, 100, size=n)]
        fine[0] = 99
        _dump(folder / name, {b"filenames": [b"x"] * n, b"fine_labels": fine,
                              b"coarse_labels": [f // 5 for f in fine], b"data": rows})
        written[name] = (rows, fine)
    meta = {b"fine_label_names": [f"f{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"g{k}".encode() for k in range(20)]}
    _dump(folder / "meta", meta)
    return written


def make_tar(root: Path, folder_name: str, archive_name: str) -> Path:
    """Pack ``root/folder_name`` into ``root/archive_name`` and delete the folder."""
    archive = root / archive_name
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / folder_name, arcname=folder_name)
    for f in (root / folder_name).iterdir():
        f.unlink()
    (root / folder_name).rmdir()
    return archive


def expected(rows: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    x = torch.from_numpy(rows.astype(np.float32)).reshape(-1, 3, 32, 32) / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _train_rows(written: dict, names: list[str]) -> tuple[np.ndarray, list[int]]:
    return (np.concatenate([written[n][0] for n in names]), sum((written[n][1] for n in names), []))


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "targz"])
def test_cifar10_shapes_labels_and_pixels(tmp_path: Path, packed: bool) -> None:
    written = write_cifar10(tmp_path / "cifar-10-batches-py")
    if packed:
        make_tar(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    splits = load_dataset("cifar10", root=tmp_path, val_size=5, split_seed=3)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 3, 32)
    assert splits.name == "cifar10" and splits.augment is True
    assert splits.classes == tuple(f"c{k}" for k in range(10))
    assert splits.train.x.shape == (10, 3, 32, 32) and splits.val.x.shape == (5, 3, 32, 32)
    assert splits.test.x.shape == (TEST_N, 3, 32, 32) and splits.test.x.dtype == torch.float32
    test_rows, test_labels = written["test_batch"]
    assert splits.test.y.tolist() == test_labels and splits.test.y.dtype == torch.int64
    for k in range(TEST_N):
        want = (test_rows[k, 0] / 255.0 - C10_MEAN[0]) / C10_STD[0]
        assert splits.test.x[k, 0, 0, 0].item() == pytest.approx(want, abs=1e-5)
        want_g = (test_rows[k, 1024 + 33] / 255.0 - C10_MEAN[1]) / C10_STD[1]  # green, row 1, col 1
        assert splits.test.x[k, 1, 1, 1].item() == pytest.approx(want_g, abs=1e-5)
    torch.testing.assert_close(splits.test.x, expected(test_rows, C10_MEAN, C10_STD))


def test_cifar10_holdout_is_a_partition_of_train(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path / "cifar-10-batches-py")
    rows, labels = _train_rows(written, [f"data_batch_{i}" for i in range(1, 6)])
    splits = load_dataset("cifar10", root=tmp_path, val_size=5, split_seed=0)
    full = expected(rows, C10_MEAN, C10_STD).flatten(1)
    got = torch.cat([splits.train.x, splits.val.x]).flatten(1)
    got_y = torch.cat([splits.train.y, splits.val.y])
    matches = [int(torch.nonzero((full - g).abs().max(1).values < 1e-5).flatten()[0]) for g in got]
    assert sorted(matches) == list(range(len(rows)))
    assert [labels[m] for m in matches] == got_y.tolist()


def test_cifar10_holdout_is_seeded(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    a = load_dataset("cifar10", root=tmp_path, val_size=5, split_seed=0)
    b = load_dataset("cifar10", root=tmp_path, val_size=5, split_seed=0)
    c = load_dataset("cifar10", root=tmp_path, val_size=5, split_seed=1)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.x, c.val.x)


def test_cifar10_val_size_zero_uses_test(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", root=tmp_path, val_size=0)
    assert splits.val is splits.test and len(splits.train) == 5 * PER_BATCH


def test_cifar10_val_size_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")

    def normalise(*args):  # 60 000 images as float32: 740 MB before the error came
        raise AssertionError("normalised before val_size was checked")

    monkeypatch.setattr(cifar_mod, "_normalise", normalise)
    with pytest.raises(ConfigError, match="val_size=5000"):
        load_dataset("cifar10", root=tmp_path)


def test_the_split_seed_is_recorded_only_where_it_draws_the_split(tmp_path: Path) -> None:
    from prunetune.recipes.checkpoint import check_split

    write_cifar10(tmp_path / "cifar-10-batches-py")
    held_out = load_dataset("cifar10", root=tmp_path, val_size=5, split_seed=3).split
    assert held_out == {"dataset": "cifar10", "split_seed": 3, "val_size": 5}
    test_as_val = load_dataset("cifar10", root=tmp_path, val_size=0, split_seed=3).split
    assert test_as_val == {"dataset": "cifar10", "val_size": 0}  # another seed changes nothing: not refused
    check_split("dense.pt", {**test_as_val, "split_seed": 0}, test_as_val)  # as checkpoints recorded it
    with pytest.raises(CheckpointError, match="differs in split_seed"):
        check_split("dense.pt", {**held_out, "split_seed": 0}, held_out)


def test_a_damaged_meta_file_leaves_the_class_names_out(tmp_path: Path, caplog) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    assert load_dataset("cifar10", root=tmp_path, val_size=0).classes[:2] == ("c0", "c1")
    meta.write_bytes(meta.read_bytes()[:20])  # optional names: not worth refusing the whole data set
    with caplog.at_level("WARNING", logger="prunetune.data.cifar"):
        splits = load_dataset("cifar10", root=tmp_path, val_size=0)
    assert splits.classes == () and len(splits.test) == TEST_N
    assert "batches.meta cannot be unpickled" in caplog.text and "class names it holds are left out" in caplog.text


def test_root_may_be_the_extracted_folder(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", val_size=0)
    assert len(splits.test) == TEST_N


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "targz"])
def test_cifar100_fine_labels_and_pixels(tmp_path: Path, packed: bool) -> None:
    written = write_cifar100(tmp_path / "cifar-100-python")
    if packed:
        make_tar(tmp_path, "cifar-100-python", "cifar-100-python.tar.gz")
    splits = load_dataset("cifar100", root=tmp_path, val_size=2, split_seed=0)
    assert splits.num_classes == 100 and splits.name == "cifar100"
    assert len(splits.train) == C100_TRAIN - 2 and len(splits.val) == 2
    assert len(splits.test) == TEST_N
    assert splits.classes[99] == "f99"
    test_rows, fine = written["test"]
    assert splits.test.y.tolist() == fine and 99 in splits.test.y.tolist()
    for k in range(TEST_N):
        want = (test_rows[k, 0] / 255.0 - C100_MEAN[0]) / C100_STD[0]
        assert splits.test.x[k, 0, 0, 0].item() == pytest.approx(want, abs=1e-5)
    torch.testing.assert_close(splits.test.x, expected(test_rows, C100_MEAN, C100_STD))
    train_labels = sorted(torch.cat([splits.train.y, splits.val.y]).tolist())
    assert train_labels == sorted(written["train"][1])


@pytest.mark.parametrize(("name", "archive", "folder"), [
    ("cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    ("cifar100", "cifar-100-python.tar.gz", "cifar-100-python"),
])
def test_missing_archive_names_path_and_file(
    tmp_path: Path, name: str, archive: str, folder: str
) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(name, root=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and archive in message and folder in message
    assert "download=True" in message


def test_root_is_required() -> None:
    with pytest.raises(DataError, match="root"):
        load_dataset("cifar10")


def test_malformed_batch_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_3").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


def test_wrong_data_shape_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    _dump(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match="test_batch.*N×3072"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


@pytest.mark.parametrize("labels", [["a", "b"], {1: 2}, [1.5, 2.0], [None, None]], ids=["str", "dict", "float", "none"])
def test_labels_that_are_not_integers_name_the_file(tmp_path: Path, labels: object) -> None:
    # strings and a dict were a ValueError / TypeError traceback; 1.5 was silently read as class 1
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    _dump(folder / "data_batch_2", {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels})
    with pytest.raises(DataError, match="data_batch_2.*labels must be integers"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


def test_class_names_that_are_not_utf8_are_left_out(tmp_path: Path) -> None:
    # the optional meta file's names were decoded strictly: a UnicodeDecodeError traceback
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    _dump(folder / "batches.meta", {b"label_names": [b"\xff\xfe"] * 10})
    assert load_dataset("cifar10", root=tmp_path, val_size=0).classes == ()


def test_missing_member_in_archive(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_5").unlink()
    make_tar(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="data_batch_5"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


def test_corrupt_archive_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


def test_an_archive_whose_compressed_data_was_damaged_fails_its_crc(tmp_path: Path) -> None:
    """tar stopped at its end marker and never read the gzip trailer: damaged deflate data that still
    decompressed loaded as other pixels or labels. A wrong CRC in the trailer stands for such damage."""
    write_cifar10(tmp_path / "cifar-10-batches-py")
    archive = make_tar(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    good = archive.read_bytes()
    assert len(load_dataset("cifar10", root=tmp_path, val_size=0).test) == TEST_N
    archive.write_bytes(good[:-8] + bytes(b ^ 0xFF for b in good[-8:-4]) + good[-4:])  # CRC32 flipped
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz is unreadable \(CRC check failed"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


def test_an_interrupted_download_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupted(io.BytesIO):
        def read(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", lambda url, timeout: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        load_dataset("cifar10", root=tmp_path, download=True)
    assert not any(tmp_path.iterdir())  # each try left a .part file of its own


def test_download_failure_says_where_to_put_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, timeout: float) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=tmp_path, download=True)
    assert "cifar-10-python.tar.gz" in str(err.value) and str(tmp_path) in str(err.value)
    assert not any(tmp_path.iterdir())  # no partial file left behind


def test_download_md5_mismatch_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = lambda url, timeout: io.BytesIO(b"junk")  # noqa: E731
    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", fake)
    with pytest.raises(DataError, match="MD5"):
        load_dataset("cifar100", root=tmp_path, download=True)
    assert not (tmp_path / "cifar-100-python.tar.gz").exists()


def test_download_with_matching_md5_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging"
    write_cifar10(staging / "cifar-10-batches-py")
    payload = make_tar(staging, "cifar-10-batches-py", "cifar-10-python.tar.gz").read_bytes()
    info = dataclasses.replace(cifar_mod.CIFAR10, md5=hashlib.md5(payload).hexdigest())
    fake = lambda url, timeout: io.BytesIO(payload)  # noqa: E731
    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", fake)
    root = tmp_path / "data"
    splits = cifar_mod.load_cifar(info, root=root, download=True, seed=0, val_size=0)
    assert len(splits.test) == TEST_N and (root / "cifar-10-python.tar.gz").is_file()


@pytest.mark.parametrize("packed", [False, True])
def test_a_member_larger_than_any_cifar_file_is_refused_before_it_is_read(tmp_path: Path, monkeypatch,
                                                                         packed: bool) -> None:
    """A 3 MB archive held a 3 GiB member, read whole into memory before anything was checked."""
    write_cifar10(tmp_path / "cifar-10-batches-py")
    if packed:
        make_tar(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar_mod, "CIFAR10", dataclasses.replace(cifar_mod.CIFAR10, max_member=1000))  # < the batches
    with pytest.raises(DataError, match=r"data_batch_1.* holds \d+ bytes, more than any file of the official archive"):
        load_dataset("cifar10", root=tmp_path, val_size=0)


def test_a_batch_that_asks_for_memory_its_size_cannot_hold_is_refused(tmp_path: Path) -> None:
    """A 740 KB batch file whose pickle called bytearray(4 GiB) took 4.4 GB (bytearray is data)."""

    class Alloc:
        def __reduce__(self):
            return (bytearray, (4 * 2**30,))

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    _dump(folder / "data_batch_2", {b"data": Alloc(), b"labels": [0]})
    with pytest.raises(DataError, match=r"data_batch_2: cannot unpickle \(it asks for 4294967296 bytes of memory"):
        load_dataset("cifar10", root=tmp_path, val_size=0)
