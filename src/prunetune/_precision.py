"""Full float32 arithmetic on CUDA: TF32 off while a block runs, the caller's settings restored after.

TF32 keeps 10 bits of mantissa. On an H200 with it on (PyTorch's default for cuDNN convolutions), a
random ResNet-56's ``taylor`` scores differed from the CPU's by up to 23% (17 of its 30 groups kept
another half) and ``cmi``'s by up to 53% (benchmarks/README.md, "gpu", third run). The calibration
pass, the removal probe and deploy's checks (a 1e-4 tolerance) run inside :func:`full_float32`;
the fine-tune keeps torch's settings (its autocast is reduced precision anyway).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# what the calibration pass computes in, part of every score's cache fingerprint (pruning/scores.py):
# entries made with TF32 on a GPU, before the pass turned it off, are not served again
PRECISION = "float32, no TF32"


@contextmanager
def full_float32() -> Iterator[None]:
    """No TF32 in CUDA convolutions and matrix products within the block (also as a decorator).

    The caller's settings are restored afterwards, also after an error; on the CPU they change
    nothing. Since torch 2.9 the settings are ``fp32_precision`` per backend (reading the older
    ``allow_tf32`` flags raises once those are set), before it the ``allow_tf32`` flags. The
    settings are process-wide: blocks running at once in two threads would restore each other's."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        settings = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
        kept = [backend.fp32_precision for backend in settings]
        try:
            for backend in settings:
                backend.fp32_precision = "ieee"
            yield
        finally:
            for backend, value in zip(settings, kept):
                backend.fp32_precision = value
        return
    kept_flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = kept_flags
