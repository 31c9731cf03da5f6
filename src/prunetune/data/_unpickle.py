"""A restricted unpickler for data archives (the CIFAR python batches): data, never code.

``pickle.loads`` imports and calls whatever a pickle names (``os.system`` included), so a crafted
batch file could run code before any check of its contents. :func:`restricted_loads` admits only the
globals the archive format needs: the few builtin constructors a pickle of data calls (``set``,
``frozenset``, ``bytes``, ``bytearray``, ``complex``; lists, dicts, strings and numbers are opcodes),
``_codecs.encode`` as protocol 2 writes bytes (a string and ``latin1``), and numpy's array and
scalar reconstruction (``numpy.core.multiarray._reconstruct`` as Python 2 / old numpy wrote it,
``numpy._core...`` as numpy 2 writes it, ``numpy.ndarray``, ``numpy.dtype``). Anything else is an
:class:`UnpicklingError` naming the refused global; nothing is imported to find out.

Nor may a small file ask for much memory: what the admitted calls allocate from a number (an array's
shape, a dtype's size, ``bytes(n)``), all of them together, is held to :data:`ALLOC_FACTOR` times the
file's size.
A 740 KB batch file asked ``bytearray`` for 4 GiB; 241 KB of ``_reconstruct`` calls for a 95 000-image
train split.

Nor may it rebuild what it made. The pickle's BUILD opcode hands any object a state through its
``__setstate__``, and numpy's own trust theirs: an array rebuilt with an object dtype and a list
shorter than its shape read past the list (a 96-byte batch file crashed the process), a large shape
zero-filled gigabytes, and a dtype's state could rewrite its size or flags. So every array made here
is a :class:`_CheckedArray`, whose state must hold plain data of exactly its shape's bytes within the
bound, and a dtype is a :class:`_DtypeArg` whose state may set its byte order and nothing else.
Object dtypes are refused wherever a dtype is read: data never holds them.
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
    """The allocation bound of one :func:`restricted_loads` call, for all its allocations together: one
    call repeated from the memo (five bytes each) made a 5 KB file allocate a gigabyte."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0

    def check(self, size: int) -> None:
        if size > self.limit:
            raise pickle.UnpicklingError(f"it asks for {size} bytes of memory, more than data of this file's "
                                         "size ever needs")
        self.spent += size
        if self.spent > self.limit:
            raise pickle.UnpicklingError(f"it asks for {self.spent} bytes of memory in all, more than data of this "
                                         "file's size ever needs")

    def array_bytes(self, shape: Any, dtype: Any) -> int:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        return self.itemsize(dtype) * math.prod(max(0, int(d)) for d in dims)

    def itemsize(self, dtype: Any) -> int:
        dtype = dtype.decode("latin1") if isinstance(dtype, bytes) else dtype
        return np.dtype(dtype).itemsize


class _DtypeArg:
    """A dtype the pickle made (``numpy.dtype(...)``), until an array or scalar reads it. BUILD on a real
    dtype would run numpy's ``dtype.__setstate__``, which can rewrite its size and flags; here the
    state may carry the byte order (what numpy writes) and must say nothing else."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        self.dtype = _dtype_with_state(self.dtype, state)


def _dtype_with_state(dtype: np.dtype, state: Any) -> np.dtype:
    """``dtype`` as a plain dtype's pickled state leaves it. numpy tells its state layouts (versions 0 to 4)
    apart by their length, as here; every part but the byte order must be what numpy writes for
    ``dtype`` itself (no subarray, names or fields; sizes -1 or its own; flags 0 or its own)."""
    layouts = {5: (0, slice(1, 3), slice(3, 5)),  # (order, subarray, fields, size, alignment)
               6: (1, slice(2, 4), slice(4, 6)),  # (1, order, subarray, fields, size, alignment)
               7: (1, slice(2, 5), slice(5, 7)),  # (2, order, subarray, names, fields, size, alignment)
               8: (1, slice(2, 5), slice(5, 7)),  # (3, ... , flags)
               9: (1, slice(2, 5), slice(5, 7))}  # (4, ... , flags, metadata)
    if not isinstance(state, tuple) or len(state) not in layouts:
        raise pickle.UnpicklingError("it rebuilds a numpy dtype from a state that is no dtype's")
    at, structure_at, sizes_at = layouts[len(state)]
    order, structure, sizes, tail = state[at], state[structure_at], state[sizes_at], state[7:]
    order = order.decode("latin1") if isinstance(order, bytes) else order  # Python 2's str, read as bytes
    own = dtype.__reduce__()[2]
    allowed_sizes = {-1, dtype.itemsize, dtype.alignment}
    if (order not in ("|", "<", ">", "=") or any(part is not None for part in structure)
            or any(not isinstance(n, int) or n not in allowed_sizes for n in sizes)
            or (tail[:1] and tail[0] not in (0, own[7] if len(own) > 7 else 0))
            or any(part not in (None, {}) for part in tail[1:])):
        raise pickle.UnpicklingError(f"it rewrites numpy dtype {dtype.str!r} through its state {state!r}, "
                                     "which plain data never does")
    return dtype.newbyteorder(order) if order in "<>" and dtype.byteorder != "|" else dtype


def _plain_dtype(dtype: Any) -> np.dtype:
    made = np.dtype(dtype.dtype if isinstance(dtype, _DtypeArg) else
                    dtype.decode("latin1") if isinstance(dtype, bytes) else dtype)
    if made.hasobject:
        raise pickle.UnpicklingError(f"it builds numpy data of dtype {made.str!r}, which holds Python objects; "
                                     "data archives hold numbers")
    if made.fields is not None or made.subdtype is not None or made.itemsize == 0:  # S0 × 10¹² passed the bound
        raise pickle.UnpicklingError(f"it builds numpy data of dtype {made!s}; data archives hold plain numbers")
    return made


class _CheckedArray(np.ndarray):
    """An array made by the pickle, whose BUILD state is checked before numpy reads it (see the module
    docstring); :func:`restricted_loads` hands back plain arrays."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("it rebuilds a numpy array from a state that is no array's")
        version, (shape, dtype, fortran, raw) = (state[0], state[1:]) if len(state) == 5 else (None, state)
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise pickle.UnpicklingError(f"it rebuilds a numpy array with the shape {shape!r}")
        dtype = _plain_dtype(dtype)
        raw = raw.encode("latin1") if isinstance(raw, str) else raw
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("it rebuilds a numpy array from something that is not its bytes")
        size = dtype.itemsize * math.prod(shape)
        bound = self.__dict__.pop("bound", None)  # set where the pickle made it (_bound), for one BUILD
        if bound is None:
            raise pickle.UnpicklingError("it rebuilds one numpy array twice")
        bound.check(size)
        if len(raw) != size:
            raise pickle.UnpicklingError(f"it rebuilds a numpy array of {size} bytes from {len(raw)} bytes")
        parts = (shape, dtype, bool(fortran), raw)
        super().__setstate__(parts if version is None else (version, *parts))


def _bound(array: np.ndarray, limit: _Limit) -> _CheckedArray:
    checked = array.view(_CheckedArray)
    checked.bound = limit  # what its BUILD may allocate
    return checked


def _plain(value: Any) -> Any:
    """``value`` with the :class:`_CheckedArray` at its top or one level down (a batch's dict or list)
    as plain arrays (and a dtype at the top as itself); deeper ones are left as they are (they behave
    as arrays)."""
    def one(v: Any) -> Any:
        return v.view(np.ndarray) if isinstance(v, _CheckedArray) else v

    if isinstance(value, _DtypeArg):
        return value.dtype
    if isinstance(value, dict):
        return {k: one(v) for k, v in value.items()}
    if isinstance(value, list):
        return [one(v) for v in value]
    return one(value)


def _allowed(limit: _Limit) -> dict[tuple[str, str], Any]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    multiarray, numeric = core.multiarray, core.numeric

    def reconstruct(cls: Any, shape: Any, dtype: Any) -> Any:
        if cls is not array and cls is not np.ndarray:
            raise pickle.UnpicklingError(f"it rebuilds an array of class {cls!r}; data arrays are numpy.ndarray")
        dtype = _plain_dtype(dtype)
        limit.check(limit.array_bytes(shape, dtype))
        return _bound(multiarray._reconstruct(np.ndarray, shape, dtype), limit)

    def scalar(dtype: Any, obj: Any = None) -> Any:
        if not isinstance(obj, bytes):  # scalar(dtype) alone allocates dtype.itemsize zero bytes
            raise pickle.UnpicklingError("it builds a numpy scalar without its bytes, which data never holds")
        limit.check(len(obj))
        return multiarray.scalar(_plain_dtype(dtype), obj)  # a numpy scalar's __setstate__ does nothing

    def dtype(*args: Any, **kwargs: Any) -> _DtypeArg:
        made = np.dtype(*args, **kwargs)
        limit.check(made.itemsize)  # dtype('V200000000'), then scalar or ndarray of it
        return _DtypeArg(_plain_dtype(made))

    def array(*args: Any, **kwargs: Any) -> np.ndarray:
        # numpy's pickles name ndarray only as _reconstruct's class; a call with a buffer made a view
        # of a bytearray the pickle then grew (extend), and the array read freed memory
        if len(args) > 2 or set(kwargs) - {"shape", "dtype"}:
            raise pickle.UnpicklingError("it builds a numpy array on a buffer, which numpy's pickles never do")
        args = list(args)
        if len(args) > 1:
            args[1] = _plain_dtype(args[1])
        elif "dtype" in kwargs:
            kwargs["dtype"] = _plain_dtype(kwargs["dtype"])
        shape = args[0] if args else kwargs.get("shape", ())
        limit.check(limit.array_bytes(shape, args[1] if len(args) > 1 else kwargs.get("dtype", float)))
        return _bound(np.ndarray(*args, **kwargs), limit)

    def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        return _bound(numeric._frombuffer(buffer, _plain_dtype(dtype), shape, order), limit)

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
            table[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
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
    return _plain(RestrictedUnpickler(io.BytesIO(payload), limit=limit, encoding=encoding).load())
