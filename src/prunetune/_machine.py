"""What this machine has, for checks that refuse work it cannot hold before it starts."""

from __future__ import annotations

import os


def physical_memory() -> int | None:
    """Bytes of physical memory (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
