"""A restricted unpickler for data archives (the CIFAR python batches): data, never code.

``pickle.loads`` imports and calls whatever a pickle names (``os.system`` included), so a crafted
batch file could run code before any check of its contents. :func:`restricted_loads` admits only the
globals the archive format needs: builtin containers and scalars, and numpy's array and scalar
reconstruction (``numpy.core.multiarray._reconstruct`` as Python 2 / old numpy wrote it,
``numpy._core...`` as numpy 2 writes it, ``numpy.ndarray``, ``numpy.dtype``). Anything else is an
:class:`UnpicklingError` naming the refused global; nothing is imported to find out.
"""

from __future__ import annotations

import builtins
import codecs
import io
import pickle
from typing import Any

import numpy as np

_BUILTIN_TYPES = ("set", "frozenset", "bytearray", "list", "dict", "tuple", "int", "float", "complex", "str",
                  "bytes", "bool")


def _allowed() -> dict[tuple[str, str], Any]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    multiarray, numeric = core.multiarray, core.numeric
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                         ("_codecs", "encode"): codecs.encode}
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            table[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    for module in ("builtins", "__builtin__"):  # Python 3 and Python 2 names
        table.update({(module, name): getattr(builtins, name) for name in _BUILTIN_TYPES})
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed`."""

    _table: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        table = RestrictedUnpickler._table
        if table is None:
            table = RestrictedUnpickler._table = _allowed()
        found = table.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data archive never holds "
                                         "(only lists, dicts, strings, numbers and numpy arrays are read)")
        return found


def restricted_loads(payload: bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle ``payload`` admitting only data (see the module docstring)."""
    return RestrictedUnpickler(io.BytesIO(payload), encoding=encoding).load()
