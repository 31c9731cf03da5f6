"""Batch iteration, tensor-level augmentation, calibration subsets and split fingerprints.

In-memory splits (:class:`TensorSplit`) are iterated by :class:`BatchLoader`, which moves the
whole split to the target device once and slices batches there (no worker processes, no per-batch
host→device copies). Lazily decoded torch ``Dataset`` splits (imagefolder) go through a torch
``DataLoader`` with workers, wrapped by :class:`DatasetLoader` so that both loaders share one
contract: iterating yields ``(x, y)`` batches already on ``device``; each iteration started (its
first ``next()``, not the ``iter()`` call alone) is one epoch whose shuffle order (and augmentation)
is a pure function of ``(seed, epoch)``; ``set_epoch`` jumps to a given epoch. Use
:func:`make_loader` to get the right one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from prunetune.data.base import Split, TensorSplit, seeded_generator
from prunetune.exceptions import ConfigError, DataError, PrunetuneError

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1
_CALIBRATION_STREAM = 2


def augment_batch(
    x: Tensor, *, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """CIFAR-style augmentation of a whole batch: zero-padded random crop + horizontal flip.

    Each image is padded by ``padding`` zeros on every side and cropped back to ``H×W`` at a random
    offset ``(dy, dx) ∈ [0, 2·padding]²``, i.e. ``out[i, :, r, c] = x[i, :, r+dy-p, c+dx-p]``
    (zero outside); then it is mirrored left-right with probability 1/2. Vectorised: one pad and one
    gather for the batch, no Python loop over images. Runs on ``x``'s device; random numbers are
    drawn on ``generator``'s device (CPU when ``None``, from the global RNG) and moved to ``x``'s.

    Args:
        x: ``Tensor[B, C, H, W]``.
        padding: zero padding per side (0 disables the crop).
        flip: whether to apply random horizontal flips.
        generator: source of randomness, for reproducible augmentation.

    Returns:
        A new tensor of ``x``'s shape, dtype and device.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(getattr(x, "shape", ()))
        raise DataError(f"augment_batch expects a B×C×H×W tensor, got shape {shape}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"augment_batch padding must be an int >= 0, got {padding!r}")
    draw_on = generator.device if generator is not None else torch.device("cpu")
    out = _random_crop(x, padding, generator, draw_on) if padding else x.clone()
    if flip:
        mask = torch.rand(x.shape[0], generator=generator, device=draw_on).to(x.device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out


def _random_crop(
    x: Tensor, padding: int, generator: torch.Generator | None, draw_on: torch.device
) -> Tensor:
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=draw_on)
    offsets = offsets.to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding)).reshape(b, c, -1)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # B×H rows of the padded image
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # B×W columns
    flat = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).reshape(b, 1, h * w)
    return padded.gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)


class BatchLoader:
    """Seeded mini-batches of an in-memory split, held on ``device``.

    Args:
        split: the split to iterate.
        batch_size: samples per batch.
        shuffle: reshuffle every epoch (order depends only on ``seed`` and the epoch number). A
            shuffled (training) loader drops a final batch of exactly one sample (see :func:`make_loader`).
        augment: apply :func:`augment_batch` to every batch (seeded by ``seed`` and the epoch).
        device: where the split is copied once, at construction, and where batches live.
        seed: seed of shuffling and augmentation.
        drop_last: drop the final incomplete batch.
        padding: crop padding used when ``augment`` is on.
    """

    def __init__(
        self,
        split: TensorSplit,
        *,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        padding: int = 4,
    ) -> None:
        if not isinstance(split, TensorSplit):
            kind = type(split).__name__
            raise DataError(f"BatchLoader needs a TensorSplit, got {kind}; use make_loader")
        self.batch_size = _positive_batch_size(batch_size)
        self.shuffle, self.augment, self.drop_last = bool(shuffle), bool(augment), bool(drop_last)
        self.seed, self.padding = int(seed), padding
        self.device = torch.device(device)
        self.split = split.to(self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch`` (later ones follow on from it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last or _lone_last(n, self.batch_size, self.shuffle) \
            else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        """The next epoch's batches. The epoch advances at the first ``next()`` (also on an empty loader),
        not at ``iter()``: a wrapper that calls ``iter()`` once more without drawing (tqdm's asyncio
        class does; :func:`~prunetune.pruning.progress.progress` now hands it an iterator) must not move
        training on to the next epoch's shuffle and augmentation."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = None
        if self.shuffle:
            gen = seeded_generator(self.seed, epoch, _SHUFFLE_STREAM)
            order = torch.randperm(len(self.split), generator=gen).to(self.device)
        gen = seeded_generator(self.seed, epoch, _AUGMENT_STREAM) if self.augment else None
        yield from self._batches(order, gen)

    def _batches(self, order: Tensor | None, gen: torch.Generator | None) -> Iterator[Batch]:
        x, y = self.split.x, self.split.y
        for b in range(len(self)):
            start, stop = b * self.batch_size, (b + 1) * self.batch_size
            idx = order[start:stop] if order is not None else slice(start, stop)
            xb, yb = x[idx], y[idx]
            if gen is not None:
                xb = augment_batch(xb, padding=self.padding, generator=gen)
            yield xb, yb


class DatasetLoader:
    """A torch ``DataLoader`` over a lazily decoded ``Dataset`` that yields batches on ``device``.

    Augmentation is whatever the dataset's transforms do; each sample is read with the global torch RNG
    seeded from ``(seed, epoch, sample index)`` (and restored afterwards), so its random crop and flip do
    not depend on the number of workers, nor on which worker reads it. The shuffle order is reseeded
    from ``(seed, epoch)`` at every ``__iter__``; a shuffled (training) loader drops a final batch of
    exactly one sample (see :func:`make_loader`). The underlying loader is :attr:`loader`.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        shuffle: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        num_workers: int | None = None,
        drop_last: bool = False,
    ) -> None:
        workers = _num_workers(num_workers)
        batch_size = _positive_batch_size(batch_size)
        self.device = torch.device(device)
        self.seed, self.epoch = int(seed), 0
        self._generator = torch.Generator()
        self._sampler = _SeededSampler(len(dataset), bool(shuffle),  # type: ignore[arg-type]
                                       drop_one=_lone_last(len(dataset), batch_size, bool(shuffle)))  # type: ignore[arg-type]
        self.loader = DataLoader(
            _SeededDataset(dataset),
            batch_size=batch_size,
            sampler=self._sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=bool(drop_last),
            generator=self._generator,
            persistent_workers=workers > 0,
            worker_init_fn=_stops_go_to_the_main_process,
        )

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        """The next epoch's batches; the epoch advances when the first batch is drawn (see
        :meth:`BatchLoader.__iter__`)."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        epoch_seed = seeded_generator(self.seed, epoch, _SHUFFLE_STREAM).initial_seed()
        self._generator.manual_seed(epoch_seed)
        self._sampler.epoch_seed = epoch_seed
        yield from self._batches()

    def _batches(self) -> Iterator[Batch]:
        move = {"device": self.device, "non_blocking": self.device.type == "cuda"}
        try:
            for x, y in self.loader:
                yield x.to(**move), y.to(**move)
        except PrunetuneError as exc:  # from a worker it reads "Caught DataError in DataLoader worker ..." and
            # the worker's traceback, whose last line is the error itself; raised here, it is left as it is
            if not str(exc).startswith("Caught "):
                raise
            raise type(exc)(worker_error_line(str(exc))) from None


class _SeededSampler(Sampler):
    """``(index, seed of that sample's randomness)`` pairs in the epoch's order; runs in the main process,
    so the epoch seed set there reaches persistent workers too."""

    def __init__(self, n: int, shuffle: bool, *, drop_one: bool) -> None:
        self.n, self.shuffle, self.drop_one = n, shuffle, drop_one
        self.epoch_seed = 0

    def __len__(self) -> int:
        return self.n - self.drop_one

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # its own generator: the DataLoader draws its worker seed from the loader's one, per epoch or only once
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch_seed)).tolist() \
            if self.shuffle else range(self.n)
        for i in order[: len(self)]:
            yield i, seeded_generator(self.epoch_seed, _AUGMENT_STREAM, i).initial_seed()


class _SeededDataset(Dataset):
    """Reads sample ``i`` of ``dataset`` with the global torch RNG seeded for it, then restored."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def worker_error_line(message: str) -> str:
    """The error a DataLoader worker raised, from the message the main process re-raises it with
    ("Caught X in DataLoader worker process 0", the traceback, then "module.X: the message")."""
    if not message.startswith("Caught "):
        return message
    lines = [line for line in message.splitlines() if line.strip()]
    last = lines[-1] if lines else message
    head, sep, rest = last.partition(": ")
    return rest if sep and "." in head and " " not in head else last


def make_loader(
    split: Split,
    *,
    batch_size: int,
    shuffle: bool = False,
    augment: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int | None = None,
    drop_last: bool = False,
) -> BatchLoader | DatasetLoader:
    """The right loader for ``split``: :class:`BatchLoader` for a :class:`TensorSplit`, else a
    :class:`DatasetLoader` (``augment`` is then ignored: the dataset's transforms augment, and
    ``num_workers`` defaults to ``min(8, cpu count)``; for a TensorSplit it is unused).

    A shuffled loader is a training loader: where the last batch would hold exactly one sample (and
    ``batch_size > 1``) that sample is left out of the epoch, as BatchNorm in train mode cannot normalise
    a batch of one (a shuffled epoch leaves out another sample each time). Unshuffled (evaluation)
    loaders keep every sample."""
    if isinstance(split, TensorSplit):
        return BatchLoader(split, batch_size=batch_size, shuffle=shuffle, augment=augment,
                           device=device, seed=seed, drop_last=drop_last)
    if isinstance(split, Dataset):
        return DatasetLoader(split, batch_size=batch_size, shuffle=shuffle, device=device,
                             seed=seed, num_workers=num_workers, drop_last=drop_last)
    kind = type(split).__name__
    raise DataError(f"make_loader needs a TensorSplit or a torch Dataset, got {kind}")


def calibration_subset(split: Split, *, size: int, seed: int) -> Split:
    """A seeded random subset of ``min(size, len(split))`` distinct samples.

    The same ``(split, size, seed)`` always gives the same samples in the same order. A
    :class:`TensorSplit` gives a :class:`TensorSplit`; a ``Dataset`` gives a
    ``torch.utils.data.Subset``, read without augmentation where the dataset offers an ``unaugmented()``
    view (imagefolder's train split: its evaluation transforms, as in-memory splits are never augmented
    here either).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigError(
            f"calibration size must be a positive int (number of samples), got {size!r}"
        )
    n = len(split)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("cannot draw a calibration subset from an empty split")
    if size > n:  # said, not silently fewer
        log.info("calibration size %d is more than the split's %d images: all %d are used", size, n, n)
    perm = torch.randperm(n, generator=seeded_generator(seed, _CALIBRATION_STREAM))[:size]
    if isinstance(split, TensorSplit):
        return split.subset(perm)
    return Subset(_unaugmented(split), perm.tolist())


def _unaugmented(split: Any) -> Any:
    """``split`` read without augmentation: its ``unaugmented()`` view, through Subsets; else itself."""
    if isinstance(split, Subset):
        inner = _unaugmented(split.dataset)
        return split if inner is split.dataset else Subset(inner, split.indices)
    view = getattr(split, "unaugmented", None)
    return view() if callable(view) else split


def split_fingerprint(split: Split) -> str:
    """A stable content hash of a split (16 hex chars of a sha256), for cache keys.

    A :class:`TensorSplit` hashes the shape, dtype and raw bytes of ``x`` and ``y`` (device
    independent). A folder dataset (with ``samples``, like ``ImageFolder``) hashes its file
    paths and targets, and how it reads them (its ``transform``: the image size, the normalisation,
    augmented or not; object addresses in its text left out, so a lambda does not change it from run
    to run); a ``Subset`` adds its indices.
    """
    digest = hashlib.sha256()
    _feed(digest, split)
    return digest.hexdigest()[:16]


def _stamp(path: Any) -> tuple[int, int]:
    """(size, modification time in ns) of a data file; (-1, -1) where it cannot be read."""
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _transform_text(dataset: object) -> str:
    """How a folder dataset turns a file into a sample: its ``transform``'s text without addresses."""
    return re.sub(r" at 0x[0-9A-Fa-f]+", "", repr(getattr(dataset, "transform", None)))


def _feed(digest: Any, split: object) -> None:
    if isinstance(split, TensorSplit):
        for t in (split.x, split.y):
            digest.update(f"{tuple(t.shape)}:{t.dtype};".encode())
            digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(split, Subset) and isinstance(getattr(split.dataset, "samples", None), Sequence):
        # a subset of a folder: its own files only (a 256-image calibration subset of ImageNet stats 256)
        samples = split.dataset.samples  # type: ignore[attr-defined]
        chosen = [samples[int(i)] for i in split.indices]
        digest.update(repr([(str(p), int(t), *_stamp(p)) for p, t in chosen]).encode())
        digest.update(_transform_text(split.dataset).encode())
    elif isinstance(split, Subset):
        _feed(digest, split.dataset)
        digest.update(repr([int(i) for i in split.indices]).encode())
    elif isinstance(getattr(split, "samples", None), Sequence):
        samples = split.samples  # type: ignore[attr-defined]
        # each file's size and modification time too: a file replaced under the same name is other data
        digest.update(repr([(str(p), int(t), *_stamp(p)) for p, t in samples]).encode())
        digest.update(_transform_text(split).encode())
    else:
        raise DataError(
            f"cannot fingerprint a {type(split).__name__}: pass a TensorSplit, a Subset or a "
            "dataset with a .samples list of (path, target)"
        )


def _stops_go_to_the_main_process(_worker_id: int) -> None:
    """A DataLoader worker ignores Ctrl-C and ends quietly on SIGTERM. A terminal's Ctrl-C, GNU
    ``timeout`` and service managers signal the whole process group; a worker killed by SIGTERM made the
    main process's loader print a traceback ("DataLoader worker ... is killed by signal: Terminated")
    after its one-line stop message. On Ctrl-C the main process stops and its loader shuts the workers
    down; on SIGTERM a worker exits with status 0, which the loader does not report, and the loader's
    own ``terminate()`` of a stuck worker still ends it (torch's workers also end when the main process
    is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(_signum: int, _frame: Any) -> None:
    os._exit(0)


def _lone_last(n: int, batch_size: int, shuffle: bool) -> bool:
    """Whether a training (shuffled) loader drops its last batch: it would hold one sample of several."""
    return shuffle and batch_size > 1 and n > 1 and n % batch_size == 1


def _positive_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def _num_workers(num_workers: int | None) -> int:
    if num_workers is None:
        return min(8, os.cpu_count() or 1)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers must be an int >= 0, got {num_workers!r}")
    return num_workers
