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


# a pickle of data holds its values: nothing it builds needs much more memory than the payload itself.
# bytes(n), bytearray(n) and ndarray(shape) allocate from a number alone (a 740 KB batch file asked for
# 4 GiB), so their sizes are held to this many times the payload (and at least ALLOC_FLOOR bytes)
ALLOC_FACTOR = 4
ALLOC_FLOOR = 1 << 20


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed`, and sizes allocations."""

    _table: dict[tuple[str, str], Any] | None = None

    def __init__(self, file: Any, *, limit: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.limit = limit

    def find_class(self, module: str, name: str) -> Any:
        table = RestrictedUnpickler._table
        if table is None:
            table = RestrictedUnpickler._table = _allowed()
        found = table.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data archive never holds "
                                         "(only lists, dicts, strings, numbers and numpy arrays are read)")
        if found in (bytes, bytearray, np.ndarray):
            return _Sized(found, self.limit)
        if name == "_reconstruct":  # _reconstruct(numpy.ndarray, ...) needs the class itself
            return _unsized_first(found)
        return found


def _unsized_first(reconstruct: Any) -> Any:
    def call(cls: Any, *args: Any) -> Any:
        return reconstruct(cls.make if isinstance(cls, _Sized) else cls, *args)

    return call


class _Sized:
    """``make`` (bytes, bytearray or numpy.ndarray) refusing a size above ``limit`` bytes."""

    def __init__(self, make: Any, limit: int) -> None:
        self.make, self.limit = make, limit

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        make, limit = self.make, self.limit
        if make is np.ndarray:
            shape = args[0] if args else kwargs.get("shape", ())
            dims = (shape,) if isinstance(shape, int) else tuple(shape)
            itemsize = np.dtype(args[1] if len(args) > 1 else kwargs.get("dtype", float)).itemsize
            size = itemsize * int(np.prod([max(0, int(d)) for d in dims], dtype=object))
        else:
            size = args[0] if args and isinstance(args[0], int) and not isinstance(args[0], bool) else 0
        if size > limit:
            raise pickle.UnpicklingError(f"it asks for {size} bytes of memory, more than data of this file's size "
                                         "ever needs")
        return make(*args, **kwargs)


def restricted_loads(payload: bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle ``payload`` admitting only data (see the module docstring)."""
    limit = max(ALLOC_FLOOR, ALLOC_FACTOR * len(payload))
    return RestrictedUnpickler(io.BytesIO(payload), limit=limit, encoding=encoding).load()
