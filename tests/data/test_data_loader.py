"""augment_batch, BatchLoader / make_loader, calibration subsets and fingerprints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from prunetune.data import (
    BatchLoader,
    DatasetLoader,
    TensorSplit,
    augment_batch,
    calibration_subset,
    make_loader,
    split_fingerprint,
)
from prunetune.exceptions import ConfigError, DataError


def _batch(n: int = 16, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    # strictly positive values so zero padding is distinguishable from image content
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) + 1.0


def _split(n: int) -> TensorSplit:
    """Sample i has label i and constant image value i, so a batch identifies its samples."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, 4, 4).contiguous()
    return TensorSplit(x, torch.arange(n))


def _epoch_ids(loader: BatchLoader | DatasetLoader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


# ---------------------------------------------------------------- augment_batch


def test_augment_keeps_shape_dtype_and_input() -> None:
    x = _batch()
    before = x.clone()
    out = augment_batch(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(x, before)
    assert not torch.equal(out, x)


def test_no_padding_no_flip_is_identity() -> None:
    x = _batch()
    assert torch.equal(augment_batch(x, padding=0, flip=False), x)


def test_flip_only_gives_x_or_its_mirror() -> None:
    x = _batch(n=64)
    out = augment_batch(x, padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    same = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same))
    assert any(flipped) and any(same)


def _crop_offsets(x: torch.Tensor, out: torch.Tensor, padding: int) -> list[tuple[int, int]]:
    """For each sample, the (dy, dx) whose hand-computed padded crop equals the output."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (padding,) * 4)
    found = []
    for i in range(x.shape[0]):
        hits = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + h, dx:dx + w])]
        assert len(hits) == 1, f"sample {i} is not a unique shifted copy: {hits}"
        found.append(hits[0])
    return found


def test_crops_are_shifted_copies() -> None:
    x = _batch(n=32)
    out = augment_batch(x, padding=2, flip=False, generator=torch.Generator().manual_seed(2))
    offsets = _crop_offsets(x, out, padding=2)
    assert len(set(offsets)) > 3  # per-sample offsets, not one shared shift
    dy, dx = offsets[0]  # one sample against an explicit by-hand crop
    manual = torch.zeros(3, 8 + 4, 8 + 4)
    manual[:, 2:10, 2:10] = x[0]
    assert torch.equal(out[0], manual[:, dy:dy + 8, dx:dx + 8])


def test_crop_and_flip_combined() -> None:
    x = _batch(n=32)
    out = augment_batch(x, padding=1, flip=True, generator=torch.Generator().manual_seed(3))
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(32):
        crops = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)


def test_augment_is_reproducible_with_generator() -> None:
    x = _batch()
    a = augment_batch(x, generator=torch.Generator().manual_seed(5))
    b = augment_batch(x, generator=torch.Generator().manual_seed(5))
    c = augment_batch(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="B×C×H×W"):
        augment_batch(torch.zeros(3, 8, 8))
    with pytest.raises(ConfigError, match="padding"):
        augment_batch(_batch(), padding=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_on_cuda_matches_cpu() -> None:
    x = _batch()
    cpu = augment_batch(x, generator=torch.Generator().manual_seed(9))
    gpu = augment_batch(x.cuda(), generator=torch.Generator().manual_seed(9))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


# ---------------------------------------------------------------- BatchLoader


def test_every_sample_once_per_epoch_and_len() -> None:
    loader = BatchLoader(_split(23), batch_size=5, shuffle=True, seed=0)
    assert len(loader) == 5
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == 5 and [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
        ids = torch.cat([y for _, y in batches]).tolist()
        assert sorted(ids) == list(range(23))
        for x, y in batches:  # images travel with their labels
            assert torch.equal(x[:, 0, 0, 0], y.float())


def test_drop_last() -> None:
    loader = BatchLoader(_split(23), batch_size=5, drop_last=True)
    assert len(loader) == 4 and len(_epoch_ids(loader)) == 20


def test_no_shuffle_is_in_order() -> None:
    assert _epoch_ids(BatchLoader(_split(10), batch_size=3)) == list(range(10))


def test_reshuffles_between_epochs_deterministically() -> None:
    a = BatchLoader(_split(50), batch_size=8, shuffle=True, seed=1)
    b = BatchLoader(_split(50), batch_size=8, shuffle=True, seed=1)
    c = BatchLoader(_split(50), batch_size=8, shuffle=True, seed=2)
    epochs_a = [_epoch_ids(a) for _ in range(3)]
    epochs_b = [_epoch_ids(b) for _ in range(3)]
    assert epochs_a == epochs_b
    assert epochs_a[0] != epochs_a[1] != epochs_a[2]
    assert epochs_a[0] != list(range(50))
    assert _epoch_ids(c) != epochs_a[0]
    a.set_epoch(1)
    assert _epoch_ids(a) == epochs_a[1]


def test_augmenting_loader_changes_images_not_labels() -> None:
    split = TensorSplit(_batch(n=12), torch.arange(12))
    plain = list(BatchLoader(split, batch_size=4, seed=0))
    aug1 = list(BatchLoader(split, batch_size=4, augment=True, seed=0))
    aug2 = list(BatchLoader(split, batch_size=4, augment=True, seed=0))
    assert all(torch.equal(p[1], q[1]) for p, q in zip(plain, aug1))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(plain, aug1))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(aug1, aug2))


def test_loader_holds_split_on_device() -> None:
    loader = BatchLoader(_split(4), batch_size=2, device="cpu")
    assert loader.split.x.device.type == "cpu"
    x, _ = next(iter(loader))
    assert x.device.type == "cpu"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_batch_size(bad: object) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        BatchLoader(_split(4), batch_size=bad)  # type: ignore[arg-type]


def test_make_loader_picks_the_loader() -> None:
    assert isinstance(make_loader(_split(6), batch_size=2), BatchLoader)
    ds = TensorDataset(torch.zeros(10, 1, 2, 2), torch.arange(10))
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=3, num_workers=0)
    assert isinstance(loader, DatasetLoader) and len(loader) == 3
    first, second = _epoch_ids(loader), _epoch_ids(loader)
    assert sorted(first) == list(range(10)) and first != second
    again = make_loader(ds, batch_size=4, shuffle=True, seed=3, num_workers=0)
    assert _epoch_ids(again) == first
    with pytest.raises(DataError, match="list"):
        make_loader([1, 2, 3], batch_size=2)  # type: ignore[arg-type]


# ---------------------------------------------------------------- calibration subsets


def test_calibration_subset_size_and_determinism() -> None:
    split = _split(40)
    a = calibration_subset(split, size=10, seed=0)
    b = calibration_subset(split, size=10, seed=0)
    c = calibration_subset(split, size=10, seed=1)
    assert isinstance(a, TensorSplit) and len(a) == 10
    assert len(set(a.y.tolist())) == 10  # without replacement
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)
    assert torch.equal(a.x[:, 0, 0, 0], a.y.float())


def test_calibration_subset_is_capped() -> None:
    sub = calibration_subset(_split(7), size=100, seed=0)
    assert len(sub) == 7 and sorted(sub.y.tolist()) == list(range(7))


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_calibration_subset_rejects_bad_size(bad: object) -> None:
    with pytest.raises(ConfigError, match="calibration size"):
        calibration_subset(_split(7), size=bad, seed=0)  # type: ignore[arg-type]


def test_calibration_subset_of_dataset_is_subset() -> None:
    ds = TensorDataset(torch.zeros(10, 1, 2, 2), torch.arange(10))
    sub = calibration_subset(ds, size=4, seed=0)
    assert isinstance(sub, Subset) and len(sub) == 4 and len(set(sub.indices)) == 4


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_is_stable_and_content_based() -> None:
    a, b = _split(8), _split(8)
    fp = split_fingerprint(a)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp == split_fingerprint(b)
    changed = TensorSplit(a.x.clone(), a.y.clone())
    changed.x[3, 1, 2, 2] += 1e-3
    assert split_fingerprint(changed) != fp
    relabelled = TensorSplit(a.x, a.y.flip(0))
    assert split_fingerprint(relabelled) != fp
    reshaped = TensorSplit(a.x.reshape(8, 1, 4, 8), a.y)
    assert split_fingerprint(reshaped) != fp


def test_fingerprint_of_subset_and_unsupported() -> None:
    class Folder(torch.utils.data.Dataset):
        samples = [("a.png", 0), ("b.png", 1)]

    ds = Folder()
    assert split_fingerprint(Subset(ds, [0])) != split_fingerprint(Subset(ds, [1]))
    with pytest.raises(DataError, match="fingerprint"):
        split_fingerprint(TensorDataset(torch.zeros(2)))


def test_a_folder_datasets_fingerprint_changes_when_a_file_is_replaced(tmp_path) -> None:
    """Paths and labels alone were hashed: images replaced under the same names kept the key, and the
    caches keyed by it (scores, the dense model's brief training) answered for the old data."""
    import os

    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"old image")

    class Folder(torch.utils.data.Dataset):
        samples = [(str(tmp_path / "a.png"), 0), (str(tmp_path / "b.png"), 1)]

    before = split_fingerprint(Folder())
    assert split_fingerprint(Folder()) == before
    (tmp_path / "b.png").write_bytes(b"another, longer image")
    changed = split_fingerprint(Folder())
    assert changed != before
    stamp = os.stat(tmp_path / "b.png")
    (tmp_path / "b.png").write_bytes(b"another, LONGER image")  # same size: the time tells
    os.utime(tmp_path / "b.png", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))  # a second on
    assert split_fingerprint(Folder()) != changed
    # a subset of a folder answers for its own files only (a calibration subset of a large folder)
    only_a = split_fingerprint(Subset(Folder(), [0]))
    (tmp_path / "b.png").write_bytes(b"b changes again, at another length")
    assert split_fingerprint(Subset(Folder(), [0])) == only_a != split_fingerprint(Subset(Folder(), [1]))
    (tmp_path / "a.png").write_bytes(b"a changes, at another length")
    assert split_fingerprint(Subset(Folder(), [0])) != only_a


def test_the_dense_cache_key_follows_the_training_data_and_the_models_code(tmp_path, monkeypatch) -> None:
    """The same recipe text in two folders (a relative data root, other files there) loaded the other
    folder's brief training: accuracy 0.0 instead of 1.0."""
    import sys
    from types import SimpleNamespace

    from prunetune.recipes.pipeline import dense_cache_path
    from prunetune.recipes.schema import Recipe

    recipe = Recipe.from_dict({"model": {"name": "tiny_convnet", "in_channels": 1}, "data": "digits",
                               "criterion": "l1", "allocation": {"ratio": 0.5}})
    a, b = _split(8), _split(8)
    b.x[0] += 1.0
    path_a = dense_cache_path(SimpleNamespace(recipe=recipe, splits=SimpleNamespace(train=a)))
    assert dense_cache_path(SimpleNamespace(recipe=recipe, splits=SimpleNamespace(train=_split(8)))) == path_a
    assert dense_cache_path(SimpleNamespace(recipe=recipe, splits=SimpleNamespace(train=b))) != path_a
    # a package.module:function model: an edit of its source is another model
    (tmp_path / "mynets.py").write_text("def build(**kw):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mynets", None)
    coded = Recipe.from_dict({"model": {"name": "mynets:build", "in_channels": 1}, "data": "digits",
                              "criterion": "l1", "allocation": {"ratio": 0.5}}, allow_code=True)
    first = dense_cache_path(SimpleNamespace(recipe=coded, splits=SimpleNamespace(train=a)))
    (tmp_path / "mynets.py").write_text("def build(**kw):\n    return 1\n")
    assert dense_cache_path(SimpleNamespace(recipe=coded, splits=SimpleNamespace(train=a))) != first


def test_a_folder_datasets_fingerprint_holds_how_it_reads_its_files() -> None:
    """The transform was not hashed: scores cached from an augmented calibration subset (as before
    stop 30), or at another normalisation, answered for the unaugmented one. A lambda's address is
    left out, so such a transform still hits the cache in the next run."""

    class Folder(torch.utils.data.Dataset):
        samples = [("a.png", 0), ("b.png", 1)]

        def __init__(self, transform) -> None:
            self.transform = transform

    class Crop:
        def __init__(self, size: int) -> None:
            self.size = size

        def __repr__(self) -> str:
            return f"Crop(size={self.size})"

    plain = split_fingerprint(Folder(None))
    assert split_fingerprint(Folder(Crop(8))) not in (plain, split_fingerprint(Folder(Crop(16))))
    assert split_fingerprint(Subset(Folder(Crop(8)), [0])) != split_fingerprint(Subset(Folder(Crop(16)), [0]))
    assert split_fingerprint(Folder(lambda x: x)) == split_fingerprint(Folder(lambda x: x))
