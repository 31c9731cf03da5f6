"""The one test of "a finite real number" used by config checks and result records."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def is_finite_number(x: object) -> bool:
    """True for an int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def plain(value: Any) -> Any:
    """``value`` with numpy scalars (``np.int64(3)``, ``np.float32(0.5)``, ``np.bool_``) as the Python
    numbers they hold, inside mappings, lists and tuples too. A setting computed with numpy in a
    caller's script is the number it prints as; the checks take ints and floats (YAML gives nothing
    else), and refused ``trials=np.int64(2)`` as "not an integer"."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value
