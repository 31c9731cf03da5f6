"""Full float32 arithmetic on CUDA: TF32 off while a block runs, the caller's settings restored after.

TF32 keeps 10 bits of mantissa. On an H200 with it on (PyTorch's default for cuDNN convolutions), a
random ResNet-56's ``taylor`` scores differed from the CPU's by up to 23% (17 of its 30 groups kept
another half) and ``cmi``'s by up to 53% (benchmarks/README.md, "gpu", third run). The calibration
pass, the removal probe and deploy's check (a 1e-4 tolerance) run inside :func:`full_float32`; the
fine-tune keeps torch's settings (its autocast is reduced precision anyway).

torch has two APIs for these settings, and mixing them makes later reads raise ("a mix of the legacy
and new APIs"): torch's own code (``torch.jit.trace``, for one) reads the older ``allow_tf32`` flags.
So each setting is changed through the API it can still be read with: the older one
(``torch.set_float32_matmul_precision``, ``torch.backends.cudnn.allow_tf32``) unless the caller's
own use of the newer per-backend ``fp32_precision`` makes it unreadable, then that one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

# what the calibration pass computes in, part of every score's cache fingerprint (pruning/scores.py):
# entries made with TF32 on a GPU, before the pass turned it off, are not served again
PRECISION = "float32, no TF32"


def _cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


@contextmanager
def full_float32(device: str | torch.device) -> Iterator[None]:
    """No TF32 in CUDA convolutions and matrix products within the block, where ``device`` is CUDA
    (elsewhere the settings are left alone: they change nothing there). Restored afterwards, also
    after an error; each newer per-backend value is put back as it was. The settings are
    process-wide: blocks running at once in two threads would restore each other's."""
    if not _cuda(device):
        yield
        return
    newer = hasattr(torch.backends.cuda.matmul, "fp32_precision")
    own = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn) if newer else ()
    saved = [backend.fp32_precision for backend in own]
    restores: list[Callable[[], None]] = []
    try:
        restores.append(_set(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, "highest",
                             own[:1]))
        restores.append(_set(lambda: torch.backends.cudnn.allow_tf32,
                             lambda value: setattr(torch.backends.cudnn, "allow_tf32", value), False, own[1:]))
        if newer and torch.backends.cudnn.conv.fp32_precision == "tf32":  # inherited from a level above
            for backend in own[1:]:
                backend.fp32_precision = "ieee"
        yield
    finally:
        for restore in reversed(restores):
            restore()
        for backend, value in zip(own, saved):
            if backend.fp32_precision != value:  # an older-API write changed it (rewriting an equal one mixes APIs)
                backend.fp32_precision = value


def _set(get: Callable[[], Any], put: Callable[[Any], None], full: Any, holders: tuple[Any, ...]) -> Callable[[], None]:
    """Set one setting to full precision through the older API, or through the ``holders``'
    ``fp32_precision`` where reading or writing the older one raises (the caller used the newer API in
    a way the older cannot express, or froze the flags with ``torch.backends.disable_global_flags``);
    returns what puts the caller's value back."""
    try:
        kept = get()
        put(full)
    except RuntimeError:
        old = [holder.fp32_precision for holder in holders]
        for holder in holders:
            holder.fp32_precision = "ieee"

        def back() -> None:
            for holder, value in zip(holders, old):
                holder.fp32_precision = value
        return back
    return lambda: put(kept)
