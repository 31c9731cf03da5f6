"""The model section against the data: a mismatch in classes names the classes the data has, so a user
whose image folder holds a stray folder (``.ipynb_checkpoints`` is skipped, ``tmp`` is not) sees it."""

from __future__ import annotations

import dataclasses

import pytest

from prunetune.exceptions import ConfigError
from prunetune.recipes import pipeline
from prunetune.recipes.schema import Recipe

RECIPE = {"model": {"name": "tiny_convnet", "in_channels": 1, "num_classes": 3}, "data": "digits",
          "criterion": "l1", "allocation": {"ratio": 0.5}}


def _with_classes(monkeypatch, classes: tuple[str, ...]) -> None:
    real = pipeline.load_data
    monkeypatch.setattr(pipeline, "load_data", lambda r: dataclasses.replace(real(r), classes=classes))


def test_a_class_count_mismatch_names_the_classes_found(monkeypatch) -> None:
    _with_classes(monkeypatch, tuple(str(i) for i in range(9)) + ("tmp",))
    with pytest.raises(ConfigError) as err:
        pipeline.load_inputs(Recipe.from_dict(RECIPE))
    assert str(err.value) == (
        "data 'digits' has 1 input channels and 10 classes ('0', '1', '2', '3', '4', '5', '6', '7', ... 2 more), "
        "the model is set to in_channels=1, num_classes=3; fix the recipe's model section")


def test_few_classes_are_all_named_and_none_where_the_data_has_no_names(monkeypatch) -> None:
    _with_classes(monkeypatch, ("cat", "dog"))
    with pytest.raises(ConfigError, match=r"10 classes \('cat', 'dog'\), the model"):
        pipeline.load_inputs(Recipe.from_dict(RECIPE))
    _with_classes(monkeypatch, ())
    with pytest.raises(ConfigError, match=r"10 classes, the model"):
        pipeline.load_inputs(Recipe.from_dict(RECIPE))


def test_a_split_of_other_files_is_refused_and_a_checkpoint_without_the_digest_is_taken_with_a_warning(
        tmp_path, caplog) -> None:
    """A generated image-folder split records a digest of its files (``files``): another digest is a
    changed folder, said as such; a checkpoint written before the digest existed has none to compare."""
    from prunetune.exceptions import CheckpointError
    from prunetune.recipes.checkpoint import check_split

    split = {"dataset": "imagefolder", "split_seed": 0, "val_fraction": 0.1, "files": "0123456789abcdef"}
    with pytest.raises(CheckpointError, match=r"was trained on a split of other files: images were added, removed"):
        check_split(tmp_path / "dense.pt", split, {**split, "files": "fedcba9876543210"})
    old = {k: v for k, v in split.items() if k != "files"}
    with caplog.at_level("WARNING", logger="prunetune.recipes.checkpoint"):
        check_split(tmp_path / "dense.pt", old, split)
    assert "predates the file digest" in caplog.text
    with pytest.raises(CheckpointError, match=r"differs in files, split_seed\)"):  # not forgiven with it
        check_split(tmp_path / "dense.pt", old, {**split, "split_seed": 1})
