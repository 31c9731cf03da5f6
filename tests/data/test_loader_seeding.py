"""Training loaders: no final batch of one image, and a lazily read sample's randomness seeded per sample.

A training batch of one image crashed BatchNorm in train mode ("Expected more than 1 value per channel")
after the pretraining and the scoring; the random crops of a folder's images depended on the number of
DataLoader workers (so on the machine's core count); and calibration read the train split augmented.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, Subset

from prunetune.data import BatchLoader, DatasetLoader, TensorSplit, calibration_subset, make_loader


class _Random(Dataset):
    """Each read draws from the global torch RNG, as torchvision's random transforms do."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.rand(3) + i, i


def _split(n: int) -> TensorSplit:
    return TensorSplit(torch.zeros(n, 1, 2, 2), torch.arange(n))


@pytest.mark.parametrize("lazy", [False, True])
def test_a_training_loader_drops_a_final_batch_of_one(lazy: bool) -> None:
    split = _split(17)
    data = Subset(torch.utils.data.TensorDataset(split.x, split.y), range(17)) if lazy else split
    train = make_loader(data, batch_size=8, shuffle=True, num_workers=0)
    sizes = [len(y) for _, y in train]
    assert sizes == [8, 8] and len(train) == 2
    assert len(set(torch.cat([y for _, y in train]).tolist())) == 16  # another sample left out each epoch
    evaluate = make_loader(data, batch_size=8, num_workers=0)
    assert [len(y) for _, y in evaluate] == [8, 8, 1] and len(evaluate) == 3  # evaluation keeps every image
    for n, batch, expected in ((18, 8, [8, 8, 2]), (3, 1, [1, 1, 1]), (1, 8, [1])):  # only a lone last one
        assert [len(y) for _, y in make_loader(_split(n), batch_size=batch, shuffle=True)] == expected


def test_a_lazy_split_gives_the_same_batches_whatever_the_number_of_workers() -> None:
    def epochs(workers: int) -> list[torch.Tensor]:
        loader = DatasetLoader(_Random(), batch_size=4, shuffle=True, seed=3, num_workers=workers)
        return [torch.cat([x for x, _ in loader]) for _ in range(2)]

    state = torch.random.get_rng_state()
    zero = epochs(0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the main process's RNG is left alone
    assert not torch.equal(zero[0], zero[1])  # the epochs differ
    for workers in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(zero, epochs(workers)))


class _Augmented(Dataset):
    def __init__(self, augmented: bool = True) -> None:
        self.augmented = augmented

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        return torch.tensor([float(i), float(self.augmented)]), i

    def unaugmented(self) -> _Augmented:
        return _Augmented(False)


def test_calibration_subsets_read_the_split_unaugmented() -> None:
    for split in (_Augmented(), Subset(_Augmented(), [5, 4, 3, 2])):
        subset = calibration_subset(split, size=3, seed=0)
        assert all(x[1] == 0.0 for x, _ in subset)
        plain = calibration_subset(Subset(torch.utils.data.TensorDataset(torch.zeros(4)), range(4)), size=2, seed=0)
        assert len(plain) == 2


def test_batch_loader_len_matches_what_it_yields() -> None:
    loader = BatchLoader(_split(9), batch_size=4, shuffle=True)
    assert len(loader) == len(list(loader)) == 2


@pytest.mark.parametrize("lazy", [False, True])
def test_an_iter_that_draws_nothing_does_not_move_the_epoch_on(lazy: bool) -> None:
    """tqdm's asyncio class (``tqdm.auto`` on a terminal) calls ``iter()`` once more than it draws:
    a fine-tune with a progress bar trained on the next epoch's shuffle and gave another network."""
    split = _split(16)
    data = Subset(torch.utils.data.TensorDataset(split.x, split.y), range(16)) if lazy else split
    plain, wrapped = (make_loader(data, batch_size=4, shuffle=True, num_workers=0, seed=3) for _ in range(2))
    want = [torch.cat([y for _, y in plain]) for _ in range(2)]
    for epoch in range(2):
        iter(wrapped)  # never drawn from
        assert torch.equal(torch.cat([y for _, y in wrapped]), want[epoch])


def test_a_progress_bar_iterates_its_items_once(monkeypatch) -> None:
    pytest.importorskip("tqdm")
    from prunetune.pruning import progress as progress_module

    class Counted:
        calls = 0

        def __len__(self) -> int:
            return 3

        def __iter__(self):
            Counted.calls += 1
            return iter(range(3))

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PRUNETUNE_PROGRESS", "1")
    assert list(progress_module.progress(Counted(), desc="epoch 1/1")) == [0, 1, 2]
    assert Counted.calls == 1


class _Stuck(Dataset):
    """Reads 0 and 1 at once; 2 and on hang (a network file system, a deadlock). Each read returns
    whether the reading process ignores SIGINT."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        import signal
        import time

        if i >= 2:
            time.sleep(60)
        return torch.tensor(signal.getsignal(signal.SIGINT) == signal.SIG_IGN), i


def test_loader_workers_leave_ctrl_c_to_the_main_process_and_end_on_sigterm() -> None:
    """A terminal's Ctrl-C reaches the workers too; SIGTERM is how the loader's shutdown ends a stuck one."""
    import time

    loader = make_loader(_Stuck(), batch_size=2, num_workers=1)
    it = iter(loader)
    ignored, _ = next(it)
    assert ignored.all()
    workers = list(loader.loader._iterator._workers)
    t0 = time.monotonic()
    loader.loader._iterator._shutdown_workers()  # joins for 5 s, then terminate(): SIGTERM
    assert time.monotonic() - t0 < 30 and not any(w.is_alive() for w in workers)
    assert [w.exitcode for w in workers] == [0]  # quietly: no "killed by signal" for the loader to report
    del it
