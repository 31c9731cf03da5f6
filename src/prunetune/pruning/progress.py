"""Progress bars for long work (calibration, fine-tune epochs), off when not on a terminal or in CI."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars only on an interactive terminal and never in CI or when PRUNETUNE_PROGRESS=0."""
    if os.environ.get("PRUNETUNE_PROGRESS") == "0" or os.environ.get("CI"):
        return False
    return sys.stderr.isatty() or os.environ.get("PRUNETUNE_PROGRESS") == "1"


def progress(items: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar on stderr when enabled (and the terminal allows it)."""
    if not (enabled and progress_enabled()):
        yield from items
        return
    from tqdm.auto import tqdm

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    # an iterator, not the iterable: tqdm.auto's class calls iter() in its constructor and again when
    # iterated, and each iter() of a training loader is an epoch (its shuffle and augmentation), so a
    # bar on a terminal trained on the next epoch's batches and changed the result
    yield from tqdm(iter(items), desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stderr)
