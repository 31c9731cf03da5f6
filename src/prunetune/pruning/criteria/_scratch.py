"""Reusable scratch tensors for the calibration pass on the CPU.

A calibration pass makes the same large temporaries at every feature point of a stage: the float64
channel-major copy of the maps, HRank's per-map Gram matrices (16 MB per batch of 128 at a
ResNet-56 stage-1 point), CHIP's squared eigenvector components (and their copy in level order)
and the histograms' bin indices. Fresh, each is new pages from the operating system, and how much
that costs depends on what the allocator did just before (on the benchmark machine one such Gram
matrix took 6 ms warm and 24 ms as fresh pages). Inside :func:`reuse_scratch` (entered by
:func:`~prunetune.pruning.calibration.calibrate`), :func:`scratch` hands back the tensor of the
previous request with the same tag, shape, dtype and device instead.

Rules for callers: a scratch tensor is garbage outside the update that asked for it; nothing may
keep it or a view of it (results must be new tensors). Each tag holds one tensor per thread, the
latest shape asked for, so the memory held is one tensor per tag; all are freed when the
outermost block exits. Other devices get fresh tensors: their caching allocators already reuse.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

_LOCAL = threading.local()


@contextmanager
def reuse_scratch() -> Iterator[None]:
    """Within this block (per thread), :func:`scratch` reuses tensors; nested blocks share one pool."""
    outer = getattr(_LOCAL, "pool", None) is None
    if outer:
        _LOCAL.pool = {}
    try:
        yield
    finally:
        if outer:
            _LOCAL.pool = None


def scratch(tag: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor; inside :func:`reuse_scratch` on the CPU, the previous one of ``tag``
    when its shape, dtype and device match (it replaces it otherwise)."""
    pool = getattr(_LOCAL, "pool", None)
    if pool is None or device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    key = (tuple(shape), dtype, device)
    held = pool.get(tag)
    if held is None or held[0] != key:
        pool.pop(tag, None)  # free the old one before the new allocation
        held = pool[tag] = (key, torch.empty(shape, dtype=dtype, device=device))
    return held[1]
