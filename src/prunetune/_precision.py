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
    after an error. The settings are process-wide: blocks running at once in two threads would
    restore each other's."""
    if not _cuda(device):
        yield
        return
    restores: list[Callable[[], None]] = []
    try:
        restores.append(_set(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, "highest",
                             "matmul"))
        restores.append(_set(lambda: torch.backends.cudnn.allow_tf32,
                             lambda value: setattr(torch.backends.cudnn, "allow_tf32", value), False, "conv"))
        yield
    finally:
        for restore in reversed(restores):
            restore()


def _set(get: Callable[[], Any], put: Callable[[Any], None], full: Any, backend: str) -> Callable[[], None]:
    """Set one setting to full precision through the older API, or through ``fp32_precision`` where
    reading the older one raises; returns what puts the caller's value back."""
    try:
        kept = get()
    except RuntimeError:  # the caller set the newer API in a way the older one cannot express
        holder = torch.backends.cuda.matmul if backend == "matmul" else torch.backends.cudnn.conv
        old = holder.fp32_precision
        holder.fp32_precision = "ieee"
        return lambda: setattr(holder, "fp32_precision", old)
    put(full)
    return lambda: put(kept)
