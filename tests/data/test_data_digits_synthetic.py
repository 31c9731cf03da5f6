"""The offline datasets: scikit-learn digits and the seeded synthetic set."""

from __future__ import annotations

import pytest
import torch

from prunetune.data import load_dataset
from prunetune.data.base import stratified_split
from prunetune.exceptions import ConfigError

N_DIGITS = 1797


def test_digits_sizes_add_up_and_metadata() -> None:
    splits = load_dataset("digits")
    assert len(splits.train) + len(splits.val) + len(splits.test) == N_DIGITS
    assert len(splits.val) == pytest.approx(0.15 * N_DIGITS, abs=10)
    assert len(splits.test) == pytest.approx(0.15 * N_DIGITS, abs=10)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 16)
    assert splits.augment is False and splits.name == "digits"
    assert splits.train.x.shape[1:] == (1, 16, 16) and splits.train.x.dtype == torch.float32
    assert set(splits.test.y.tolist()) == set(range(10))


def test_digits_native_size() -> None:
    splits = load_dataset("digits", image_size=8)
    assert splits.train.x.shape[1:] == (1, 8, 8) and splits.image_size == 8


def test_digits_train_standardised() -> None:
    x = load_dataset("digits", split_seed=4).train.x
    assert abs(x.mean().item()) < 1e-4
    assert x.std().item() == pytest.approx(1.0, abs=1e-3)


def test_digits_deterministic_per_seed() -> None:
    a, b, c = (load_dataset("digits", split_seed=s) for s in (7, 7, 8))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)


def test_stratified_split_is_a_disjoint_cover() -> None:
    y = torch.arange(N_DIGITS) % 10
    train, val, test = stratified_split(y, 0.15, 0.15, seed=0)
    everything = torch.cat([train, val, test])
    assert everything.numel() == N_DIGITS and sorted(everything.tolist()) == list(range(N_DIGITS))
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert len(set(val.tolist()) & set(test.tolist())) == 0
    for part in (train, val, test):  # stratified: every class about equally represented
        counts = torch.bincount(y[part], minlength=10)
        assert counts.max() - counts.min() <= 1
    again = stratified_split(y, 0.15, 0.15, seed=0)
    other = stratified_split(y, 0.15, 0.15, seed=1)
    assert all(torch.equal(p, q) for p, q in zip((train, val, test), again))
    assert not torch.equal(test, other[2])


def test_digits_val_fraction_zero_uses_test() -> None:
    splits = load_dataset("digits", val_fraction=0)
    assert splits.val is splits.test


@pytest.mark.parametrize(("param", "value"), [
    ("val_fraction", 0.6), ("test_fraction", 0), ("test_fraction", 1.5), ("image_size", 4),
    ("image_size", "16"),
])
def test_digits_bad_params(param: str, value: object) -> None:
    overrides = {param: value, **({"test_fraction": 0.5} if param == "val_fraction" else {})}
    with pytest.raises(ConfigError, match=param):
        load_dataset("digits", **overrides)


def test_synthetic_shapes_and_balance() -> None:
    splits = load_dataset("synthetic", num_classes=4, in_channels=2, image_size=12,
                          train_size=40, val_size=8, test_size=12)
    assert splits.train.x.shape == (40, 2, 12, 12) and splits.val.x.shape == (8, 2, 12, 12)
    assert splits.test.x.shape == (12, 2, 12, 12)
    assert torch.bincount(splits.train.y, minlength=4).tolist() == [10, 10, 10, 10]
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (4, 2, 12)
    assert splits.augment is False


def test_synthetic_deterministic_per_seed() -> None:
    a, b, c = (load_dataset("synthetic", split_seed=s, train_size=32) for s in (0, 0, 1))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


def test_synthetic_is_learnable_by_nearest_centroid() -> None:
    splits = load_dataset("synthetic", split_seed=2)
    x, y = splits.train.x.flatten(1), splits.train.y
    centroids = torch.stack([x[y == c].mean(0) for c in range(splits.num_classes)])
    pred = torch.cdist(splits.test.x.flatten(1), centroids).argmin(1)
    assert (pred == splits.test.y).float().mean().item() > 0.9


def test_synthetic_val_size_zero_uses_test() -> None:
    splits = load_dataset("synthetic", val_size=0)
    assert splits.val is splits.test
