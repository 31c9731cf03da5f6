"""The dataset registry, parameter checking and the imagefolder error paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from prunetune.data import DATASETS, dataset_defaults, load_dataset
from prunetune.data import imagefolder as imagefolder_mod
from prunetune.exceptions import CheckpointError, ConfigError, DataError, MissingExtraError, UnknownNameError
from prunetune.recipes.checkpoint import check_split


def test_registered_names() -> None:
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "imagefolder", "synthetic"]


def test_unknown_dataset_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError) as err:
        load_dataset("cifar1")
    assert "did you mean" in str(err.value) and "'cifar10'" in str(err.value)


def test_unknown_param_names_param_and_lists_known() -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset("digits", imagesize=16)
    message = str(err.value)
    assert "'imagesize'" in message and "image_size" in message and "val_fraction" in message


def test_dataset_defaults() -> None:
    assert dataset_defaults("synthetic")["image_size"] == 32
    assert dataset_defaults("cifar10") == {"val_size": 5000}


def test_bad_seed_type() -> None:
    with pytest.raises(ConfigError, match="seed"):
        load_dataset("synthetic", split_seed="zero")


def _folders(root: Path, *names: str) -> Path:
    for name in names:
        (root / name / "cat").mkdir(parents=True)
    return root


def test_imagefolder_needs_root() -> None:
    with pytest.raises(DataError, match="root"):
        load_dataset("imagefolder")


def test_imagefolder_missing_train_folder_is_named(tmp_path: Path) -> None:
    _folders(tmp_path, "val")
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", root=tmp_path)
    assert str(tmp_path / "train") in str(err.value)


def _png(path: Path) -> None:
    from PIL import Image  # installed with torch's dependencies; torchvision itself is faked here

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)


class _AnyTransform:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: (name, args)


def test_imagefolder_without_val_holds_out_a_split_fixed_by_split_seed(tmp_path, monkeypatch) -> None:
    for cls in ("ant", "bee", "cat"):
        for i in range(10):
            _png(tmp_path / "train" / cls / f"{i}.png")
    fake = SimpleNamespace(transforms=_AnyTransform())
    monkeypatch.setattr(imagefolder_mod, "_torchvision", lambda: fake)

    def held_out(**kw):
        splits = load_dataset("imagefolder", root=tmp_path, val_fraction=0.2, **kw)
        assert splits.test is splits.val and splits.classes == ("ant", "bee", "cat")
        val = set(splits.val.indices)
        assert not val & set(splits.train.indices) and len(val) + len(splits.train) == 30
        assert sorted(t for _, t in (splits.val.dataset.samples[i] for i in val)) == [0, 0, 1, 1, 2, 2]
        assert splits.split == {"dataset": "imagefolder", "split_seed": kw.get("split_seed", 0), "val_fraction": 0.2,
                                "files": imagefolder_mod.files_digest(splits.train.dataset)}
        return val

    assert held_out() == held_out(split_seed=0) != held_out(split_seed=1)


def test_imagefolder_missing_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope"):
        load_dataset("imagefolder", root=tmp_path / "nope")


def test_imagefolder_without_torchvision_gives_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _folders(tmp_path, "train", "val")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(MissingExtraError) as err:
        load_dataset("imagefolder", root=tmp_path)
    assert "torchvision" in str(err.value) and ".[vision]" in str(err.value)


def test_imagefolder_broken_torchvision_gives_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _folders(tmp_path, "train", "val")

    def broken(module: str, **kwargs: object) -> None:
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(imagefolder_mod, "require", broken)
    with pytest.raises(MissingExtraError, match=r"nms.*\.\[vision\]"):
        load_dataset("imagefolder", root=tmp_path)


def test_held_out_val_with_a_mismatched_test_folder_is_a_data_error(tmp_path, monkeypatch) -> None:
    for split, classes in (("train", ("ant", "bee")), ("test", ("ant", "cat"))):
        for cls in classes:
            for i in range(5):
                _png(tmp_path / split / cls / f"{i}.png")
    fake = SimpleNamespace(transforms=_AnyTransform())
    monkeypatch.setattr(imagefolder_mod, "_torchvision", lambda: fake)
    with pytest.raises(DataError, match="same class folders"):
        load_dataset("imagefolder", root=tmp_path)


def test_imagefolder_records_val_fraction_only_when_it_holds_out(tmp_path, monkeypatch) -> None:
    for split in ("train", "val"):
        for cls in ("ant", "bee"):
            _png(tmp_path / split / cls / "0.png")
    fake = SimpleNamespace(transforms=_AnyTransform())
    monkeypatch.setattr(imagefolder_mod, "_torchvision", lambda: fake)
    split = load_dataset("imagefolder", root=tmp_path).split
    assert set(split) == {"dataset", "files"} and split["dataset"] == "imagefolder"  # nothing drawn: no seed
    assert load_dataset("imagefolder", root=tmp_path, split_seed=1).split == split
    check_split("dense.pt", {**split, "split_seed": 0}, split)  # checkpoints recorded the seed regardless
    # an image moved from train/ to val/ after a dense model trained on it: the record says so; one
    # added to val/ was never trained on, and changes nothing
    _png(tmp_path / "train" / "ant" / "1.png")
    before = load_dataset("imagefolder", root=tmp_path).split
    _png(tmp_path / "val" / "bee" / "new.png")
    assert load_dataset("imagefolder", root=tmp_path).split == before
    os.rename(tmp_path / "train" / "ant" / "1.png", tmp_path / "val" / "ant" / "1.png")
    after = load_dataset("imagefolder", root=tmp_path).split
    assert after["files"] != before["files"]
    with pytest.raises(CheckpointError, match="split of other files"):
        check_split("dense.pt", before, after)
    check_split("dense.pt", {k: v for k, v in before.items() if k != "files"}, after)  # older checkpoints: a warning
