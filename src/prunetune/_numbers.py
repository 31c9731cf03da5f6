"""The one test of "a finite real number" used by config checks and result records."""

from __future__ import annotations

import math


def is_finite_number(x: object) -> bool:
    """True for an int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
