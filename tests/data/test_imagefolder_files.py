"""imagefolder with odd contents: one line naming the folder or the file, found at load time where it can be.

A class folder without images was torchvision's FileNotFoundError with a traceback, a FIFO named like
an image hung a loader worker for ever, an image PIL cannot decode was a traceback mid-epoch (after
the dense training), and a held-out val split with no image failed only after the training. The
worker test runs everywhere; the others need torchvision (the ``vision`` extra).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from prunetune.data import load_dataset
from prunetune.data.loader import DatasetLoader, worker_error_line
from prunetune.exceptions import DataError


class _Broken(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise DataError(f"imagefolder image /data/x{i}.png cannot be read (truncated); remove or replace it")


@pytest.mark.parametrize("workers", [0, 1])
def test_an_error_in_a_loader_worker_is_its_own_line(workers: int) -> None:
    loader = DatasetLoader(_Broken(), batch_size=2, num_workers=workers)
    with pytest.raises(DataError) as err:
        next(iter(loader))
    assert str(err.value) == "imagefolder image /data/x0.png cannot be read (truncated); remove or replace it"


def test_worker_error_line_leaves_other_messages_alone() -> None:
    assert worker_error_line("plain message: with a colon") == "plain message: with a colon"
    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise DataError("a: b")\nprunetune.exceptions.DataError: a: b\n')
    assert worker_error_line(wrapped) == "a: b"


def _image(path: Path, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (10, 20, 30)).save(path)


@pytest.fixture()
def tv():
    return pytest.importorskip("torchvision")


def test_a_class_folder_without_images_is_one_line(tmp_path, tv) -> None:
    _image(tmp_path / "train" / "a" / "0.png")
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "notes.txt").write_text("no image here")
    with pytest.raises(DataError, match=r"imagefolder .*train: .*b.*; every class folder needs at least one image"):
        load_dataset("imagefolder", root=tmp_path, image_size=8)


def test_a_fifo_named_like_an_image_is_refused_not_read(tmp_path, tv) -> None:
    for split in ("train", "val"):  # a train file is checked when read (val and test files at load)
        for cls in ("a", "b"):
            for i in range(3):
                _image(tmp_path / split / cls / f"{i}.png")
    os.mkfifo(tmp_path / "train" / "a" / "fifo.png")
    splits = load_dataset("imagefolder", root=tmp_path, image_size=8)
    loader = DatasetLoader(splits.train, batch_size=16, num_workers=1)
    with pytest.raises(DataError, match=r"fifo.png is a named pipe \(FIFO\), not a regular file; remove it"):
        for _ in loader:
            pass


def test_an_image_that_cannot_be_decoded_is_named(tmp_path, tv) -> None:
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for i in range(3):
                _image(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "train" / "b" / "bad.jpg").write_text("not an image")
    (tmp_path / "train" / "b" / ".hidden.png").write_text("a hidden file is not read")
    splits = load_dataset("imagefolder", root=tmp_path, image_size=8)
    loader = DatasetLoader(splits.train, batch_size=16, num_workers=1)
    with pytest.raises(DataError, match=r"^imagefolder image .*bad.jpg cannot be read \(.*\); remove or replace it$"):
        for _ in loader:
            pass


def test_a_held_out_val_split_with_no_image_is_refused_at_load(tmp_path, tv) -> None:
    for cls in ("a", "b"):
        _image(tmp_path / "train" / cls / "0.png")  # one image a class: nothing to hold out
    with pytest.raises(DataError, match=r"gives an empty val split"):
        load_dataset("imagefolder", root=tmp_path, image_size=8)


def test_a_batch_of_decoded_images_larger_than_memory_is_refused_before_training(monkeypatch) -> None:
    """A lazy dataset decodes image_size at every batch: image_size 30000 took 21 GB before the run
    was stopped. The size is a stand-in here (digits at a faked image_size), so no torchvision is needed."""
    import dataclasses

    from prunetune.exceptions import ConfigError
    from prunetune.recipes import pipeline
    from prunetune.recipes.schema import Recipe

    real = pipeline.load_data
    monkeypatch.setattr(pipeline, "load_data", lambda r: dataclasses.replace(real(r), image_size=30000))
    recipe = Recipe.from_dict({"model": {"name": "tiny_convnet", "in_channels": 1}, "data": "digits",
                               "criterion": "l1", "allocation": {"ratio": 0.5}})
    with pytest.raises(ConfigError, match=r"^a batch of 128 images of 30000x30000 needs \d+ GiB .*; give a smaller "
                                          r"image_size or data.batch_size$"):
        pipeline.load_inputs(recipe)


def test_a_single_class_folder_is_refused(tmp_path, tv) -> None:
    """One class trained to an accuracy of 1.0 that meant nothing."""
    for i in range(4):
        _image(tmp_path / "train" / "only" / f"{i}.png")
    with pytest.raises(DataError, match=r"has 1 class; a classifier needs at least 2"):
        load_dataset("imagefolder", root=tmp_path, image_size=8)


def test_the_image_reader_refuses_what_is_no_regular_file_and_names_what_it_cannot_decode(tmp_path) -> None:
    """The reading half of the folder's checks, without torchvision (PIL comes with torch's dependencies)."""
    from prunetune.data.imagefolder import read_image

    _image(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"x")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    assert read_image(str(tmp_path / "good.png")).mode == "RGB"
    with pytest.raises(DataError, match=r"bad.png cannot be read \(cannot identify image file.*\); remove or replace"):
        read_image(str(tmp_path / "bad.png"))
    with pytest.raises(DataError, match=r"fifo.png is a named pipe \(FIFO\), not a regular file; remove it"):
        read_image(str(tmp_path / "fifo.png"))  # refused, not opened: opening a FIFO waits for a writer
    with pytest.raises(DataError, match=r"dangling.png does not exist"):
        read_image(str(tmp_path / "dangling.png"))
