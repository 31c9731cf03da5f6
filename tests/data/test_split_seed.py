"""The data split belongs to the data (``split_seed``), never to a recipe's training ``seed``."""

from __future__ import annotations

import pytest
import torch

from prunetune.recipes.checkpoint import check_split, checkpoint_split, save_dense
from prunetune.data import split_fingerprint
from prunetune.exceptions import CheckpointError, ConfigError
from prunetune.models import create_model
from prunetune.recipes.pipeline import load_data, prepare
from prunetune.recipes.schema import Recipe

MODEL = {"name": "tiny_convnet", "num_classes": 10, "in_channels": 1}


def _recipe(seed: int = 0, **data) -> Recipe:
    return Recipe.from_dict({"model": MODEL, "data": {"name": "digits", "image_size": 8, **data},
                             "criterion": "l1", "allocation": {"ratio": 0.5}, "seed": seed, "device": "cpu"})


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_recipes_with_other_seeds_see_identical_splits(name) -> None:
    prints = set()
    for seed in (0, 1, 2):
        splits = load_data(_recipe(seed).with_changes(data=_recipe(seed).data.__class__(name=name)))
        prints.add(tuple(split_fingerprint(getattr(splits, s)) for s in ("train", "val", "test")))
    assert len(prints) == 1


def test_split_seed_moves_the_split_and_is_recorded() -> None:
    a, b = load_data(_recipe()), load_data(_recipe(split_seed=1))
    assert split_fingerprint(a.test) != split_fingerprint(b.test)
    assert a.split == {"dataset": "digits", "split_seed": 0, "val_fraction": 0.15, "test_fraction": 0.15}
    assert b.split["split_seed"] == 1
    with pytest.raises(ConfigError, match="split_seed"):
        _recipe(split_seed="one")


def test_checkpoint_records_its_split_and_another_split_is_an_error(tmp_path) -> None:
    model = create_model("tiny_convnet", num_classes=10, in_channels=1)
    path = save_dense(tmp_path / "dense.pt", model, data_split=load_data(_recipe()).split)
    assert checkpoint_split(path)["split_seed"] == 0
    same = _recipe(seed=3).with_changes(model=_recipe().model.__class__(**MODEL, checkpoint=str(path)))
    base = prepare(same, show_progress=False)  # another training seed, same split: fine
    assert base.splits.split["split_seed"] == 0
    other = same.with_changes(data=_recipe(split_seed=1).data)
    with pytest.raises(CheckpointError) as err:
        prepare(other, show_progress=False)
    message = str(err.value)
    assert "split_seed: 0" in message and "split_seed: 1" in message and "\n" not in message


def test_bare_state_dicts_carry_no_split(tmp_path) -> None:
    model = create_model("tiny_convnet", num_classes=10, in_channels=1)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    assert checkpoint_split(tmp_path / "bare.pt") is None
    check_split(tmp_path / "bare.pt", None, {"dataset": "digits", "split_seed": 5})  # nothing to compare
