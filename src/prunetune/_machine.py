"""What this machine has, for checks that refuse work it cannot hold before it starts."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence


def physical_memory() -> int | None:
    """Bytes of physical memory (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_input_fits(batch: int, input_shape: Sequence[int], what: str, fix: str, *, activation: int = 0) -> None:
    """Refuse a float32 input batch larger than this machine's memory, before the allocator would fail
    with a traceback (or the kernel end the process); the one-line error names ``what`` and ends with
    ``fix``. ``activation``: the most elements one layer outputs per input, if known; two of those
    (a layer's input and output) count too."""
    from prunetune.exceptions import ConfigError

    memory = physical_memory()
    need = 4 * batch * (math.prod(input_shape) + 2 * activation)
    if memory and need > memory:
        alone = "its input and largest activations" if activation else "its input alone"
        raise ConfigError(f"{what} needs {need / 2**30:.0f} GiB for {alone}, more than this machine's "
                          f"{memory / 2**30:.0f} GiB; {fix}")
