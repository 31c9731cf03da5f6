"""Dataset parameters a hostile user could give: refused in one line before any work, or said aloud.

``num_classes: 1000000`` was an allocator traceback (the memory check counted the samples, not the class
templates); ``noise: .nan`` trained to a nan loss found after the pretraining; a calibration size above
the split's images silently used fewer; a val split emptied by a small val_fraction did not name it.
"""

from __future__ import annotations

import logging

import pytest

from prunetune.data import TensorSplit, calibration_subset, load_dataset
from prunetune.exceptions import ConfigError, DataError


def test_the_memory_check_counts_the_class_templates(monkeypatch) -> None:
    monkeypatch.setattr("prunetune._machine.physical_memory", lambda: 2**30)
    with pytest.raises(ConfigError, match=r"^dataset 'synthetic' with 24 images and 1000000 class templates of "
                                          r"3x32x32 needs \d+ GiB .*; give smaller train_size, val_size, test_size, num_classes"):
        load_dataset("synthetic", num_classes=1_000_000, train_size=8, val_size=8, test_size=8)


@pytest.mark.parametrize("noise", [float("nan"), float("inf"), -1.0])
def test_noise_must_be_finite(noise: float) -> None:
    with pytest.raises(ConfigError, match=r"noise must be a finite number >= 0"):
        load_dataset("synthetic", noise=noise)


def test_a_calibration_size_above_the_split_says_it_uses_all(caplog) -> None:
    split = load_dataset("synthetic", train_size=20, val_size=4, test_size=4).train
    with caplog.at_level(logging.INFO, logger="prunetune.data.loader"):
        assert len(calibration_subset(split, size=100000, seed=0)) == 20
        calibration_subset(split, size=20, seed=0)
    assert [r.getMessage() for r in caplog.records] == [
        "calibration size 100000 is more than the split's 20 images: all 20 are used"]
    assert isinstance(split, TensorSplit)


def test_an_empty_val_split_suggests_a_larger_val_fraction(tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    from PIL import Image

    from prunetune.data import imagefolder

    monkeypatch.setattr(imagefolder, "_torchvision", lambda: SimpleNamespace(
        transforms=SimpleNamespace(**{n: (lambda *a, **k: None) for n in
                                      ("Compose", "Normalize", "RandomResizedCrop", "RandomHorizontalFlip",
                                       "ToTensor", "Resize", "CenterCrop")})))
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(4):  # 4 images a class: the default val_fraction 0.1 holds out none
            Image.new("RGB", (4, 4)).save(tmp_path / "train" / cls / f"{i}.png")
    with pytest.raises(DataError, match=r"gives an empty val split; .*\(more images per class, a larger "
                                        r"val_fraction, or its own folder or file for that split\)$"):
        load_dataset("imagefolder", root=tmp_path)
