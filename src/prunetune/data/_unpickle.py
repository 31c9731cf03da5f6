"""A restricted unpickler for data archives (the CIFAR python batches): data, never code.

``pickle.loads`` imports and calls whatever a pickle names (``os.system`` included), so a crafted
batch file could run code before any check of its contents. :func:`restricted_loads` admits only the
globals the archive format needs: the few builtin constructors a pickle of data calls (``set``,
``frozenset``, ``bytes``, ``bytearray``, ``complex``; lists, dicts, strings and numbers are opcodes),
``_codecs.encode`` as protocol 2 writes bytes (a string and ``latin1``), and numpy's array and
scalar reconstruction (``numpy.core.multiarray._reconstruct`` as Python 2 / old numpy wrote it,
``numpy._core...`` as numpy 2 writes it, ``numpy.ndarray``, ``numpy.dtype``). Anything else is an
:class:`UnpicklingError` naming the refused global; nothing is imported to find out.

Nor may a small file ask for much memory: every admitted call that allocates from a number (an
array's shape, a dtype's size, ``bytes(n)``) is held to :data:`ALLOC_FACTOR` times the file's size.
A 740 KB batch file asked ``bytearray`` for 4 GiB; 241 KB of ``_reconstruct`` calls for a 95 000-image
train split.
"""

from __future__ import annotations

import builtins
import io
import math
import pickle
from typing import Any

import numpy as np

_BUILTIN_CALLS = ("set", "frozenset", "bytearray", "bytes", "complex")

# a pickle of data holds its values: nothing it builds needs much more memory than the payload itself
ALLOC_FACTOR = 4
ALLOC_FLOOR = 1 << 20


class _Limit:
    """The allocation bound of one :func:`restricted_loads` call, and the checks against it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def check(self, size: int) -> None:
        if size > self.limit:
            raise pickle.UnpicklingError(f"it asks for {size} bytes of memory, more than data of this file's "
                                         "size ever needs")

    def array_bytes(self, shape: Any, dtype: Any) -> int:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        return self.itemsize(dtype) * math.prod(max(0, int(d)) for d in dims)

    def itemsize(self, dtype: Any) -> int:
        dtype = dtype.decode("latin1") if isinstance(dtype, bytes) else dtype
        return np.dtype(dtype).itemsize


def _allowed(limit: _Limit) -> dict[tuple[str, str], Any]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    multiarray, numeric = core.multiarray, core.numeric

    def reconstruct(cls: Any, shape: Any, dtype: Any) -> Any:
        limit.check(limit.array_bytes(shape, dtype))
        return multiarray._reconstruct(np.ndarray if cls is array else cls, shape, dtype)

    def scalar(dtype: Any, obj: Any = None) -> Any:
        if not isinstance(obj, bytes):  # scalar(dtype) alone allocates dtype.itemsize zero bytes
            raise pickle.UnpicklingError("it builds a numpy scalar without its bytes, which data never holds")
        limit.check(len(obj))
        return multiarray.scalar(dtype, obj)

    def dtype(*args: Any, **kwargs: Any) -> np.dtype:
        made = np.dtype(*args, **kwargs)
        limit.check(made.itemsize)  # dtype('V200000000'), then scalar or ndarray of it
        return made

    def array(*args: Any, **kwargs: Any) -> np.ndarray:
        shape = args[0] if args else kwargs.get("shape", ())
        limit.check(limit.array_bytes(shape, args[1] if len(args) > 1 else kwargs.get("dtype", float)))
        return np.ndarray(*args, **kwargs)

    def encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):  # 'hex' doubles at each call
            raise pickle.UnpicklingError(f"it encodes with {encoding!r}; pickled bytes use latin1 only")
        return obj.encode(encoding, errors)

    def sized(make: Any) -> Any:
        def call(*args: Any) -> Any:
            if args and isinstance(args[0], int) and not isinstance(args[0], bool):
                limit.check(args[0])  # bytes(n), bytearray(n): n zero bytes
            return make(*args)

        return call

    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): array, ("numpy", "dtype"): dtype,
                                         ("_codecs", "encode"): encode}
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{prefix}.multiarray", "scalar")] = scalar
        if hasattr(numeric, "_frombuffer"):  # reads its array from the payload's own bytes
            table[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    for module in ("builtins", "__builtin__"):  # Python 3 and Python 2 names
        for name in _BUILTIN_CALLS:
            made = getattr(builtins, name)
            table[(module, name)] = sized(made) if name in ("bytes", "bytearray") else made
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed`, their allocations bounded."""

    def __init__(self, file: Any, *, limit: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._table = _allowed(_Limit(limit))

    def find_class(self, module: str, name: str) -> Any:
        found = self._table.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data archive never holds "
                                         "(only lists, dicts, strings, numbers and numpy arrays are read)")
        return found


def restricted_loads(payload: bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle ``payload`` admitting only data (see the module docstring)."""
    limit = max(ALLOC_FLOOR, ALLOC_FACTOR * len(payload))
    return RestrictedUnpickler(io.BytesIO(payload), limit=limit, encoding=encoding).load()
