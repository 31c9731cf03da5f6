"""cuSOLVER's batched symmetric eigen-solver (``cusolverDnXsyevBatched``), called directly.

torch solves a batch of symmetric eigenvalue problems on CUDA in one call only up to 32×32 (with
``syevjBatched``, or with ``cusolverDnXsyevBatched`` in builds that have it); above that it calls
``syevd`` once per matrix (about 0.8 ms per 64×64 and 1.9 ms per 256×256 float64 matrix on an H200
with torch 2.11, benchmarks/README.md, "gpu"), which is what the ``cmi`` criterion's 256×256 joints
and CHIP's 64×64 Gram matrices spend their time on. ``cusolverDnXsyevBatched`` (cuSOLVER 11.7.1,
CUDA 12.6.2) takes any n, so this module calls it for those sizes, through ``ctypes`` on the
``libcusolver`` torch loaded: no compiled extension, nothing to install.

:func:`eigh` returns what ``torch.linalg.eigh``/``eigvalsh`` (``UPLO='L'``) return, for a float32 or
float64 CUDA ``Tensor[B, n, n]``, or ``None`` where the routine is not there (no CUDA, a cuSOLVER
older than 11.7.1, an unexpected status): the caller then uses torch. A matrix the routine reports
as not converged is solved again by torch.

**On by default** (``PRUNETUNE_CUSOLVER_BATCHED=0`` turns it off). Measured on an H200 with torch
2.11 + CUDA 13 (benchmarks/README.md, "gpu"): the eigenvalues equal torch's to 5e-17 (256×256) and
the eigenvectors reconstruct the matrices to 4e-17 (64×64); a batch of 64 float64 256×256
``eigvalsh`` took 9.4 ms against torch's 122 ms, and 128 64×64 ``eigh`` 0.81 ms against 91 ms.
Tested without a GPU (tests/criteria/test_cusolver_route.py): the ctypes declarations against a C
library with the documented prototypes, and the layout, triangle, eigenvector, workspace and
not-converged handling against a stand-in that checks what the documentation says it receives.
``benchmarks/gpu_linalg.py`` times it against torch's solver and checks its values.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys
import threading
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

ENV_SWITCH = "PRUNETUNE_CUSOLVER_BATCHED"

# cuSOLVER / CUDA enum values (cusolver_common.h, cublas_api.h, library_types.h)
_NOVECTOR, _VECTOR = 0, 1
_FILL_UPPER = 1  # column-major upper triangle = row-major lower, what torch's UPLO='L' reads
_DTYPES = {torch.float32: 0, torch.float64: 1}  # CUDA_R_32F, CUDA_R_64F

MAX_BATCH = 32768
"""Matrices per call: cuSOLVER refuses a batch beyond the CUDA grid's 65 535 (reported for
``XsyevBatched``'s workspace query); larger batches go in chunks of this many."""

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}  # "lib": CDLL | None; ("handle", device): (handle, params)


def enabled() -> bool:
    """Whether :func:`~prunetune.pruning.criteria._linalg.batched_linalg` tries this route: yes
    unless the environment switch is ``0`` (or ``false``, ``no``, ``off``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _loaded_paths() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            return [line.split()[-1] for line in maps if "libcusolver.so" in line]
    except OSError:
        return []


def _find_library() -> ctypes.CDLL | None:
    """The libcusolver torch uses (from /proc/self/maps, after one small solve has made torch load
    it), else one by name or beside the NVIDIA wheels on ``sys.path``."""
    paths = _loaded_paths()
    if not paths and torch.cuda.is_available():  # torch may load cuSOLVER on its first solve
        torch.linalg.eigvalsh(torch.eye(2, device="cuda"))
        paths = _loaded_paths()
    paths += ["libcusolver.so.12", "libcusolver.so.11", "libcusolver.so"]
    for site in sys.path:
        paths += sorted(glob.glob(os.path.join(site, "nvidia", "**", "libcusolver.so*"), recursive=True))
    for path in dict.fromkeys(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "cusolverDnXsyevBatched"):
            return _declare(lib)
    return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_size_t
    lib.cusolverDnCreate.argtypes = [ctypes.POINTER(p)]
    lib.cusolverDnCreateParams.argtypes = [ctypes.POINTER(p)]
    lib.cusolverDnSetStream.argtypes = [p, p]
    lib.cusolverDnXsyevBatched_bufferSize.argtypes = [
        p, p, i32, i32, i64, i32, p, i64, i32, p, i32, ctypes.POINTER(sz), ctypes.POINTER(sz), i64,
    ]
    lib.cusolverDnXsyevBatched.argtypes = [p, p, i32, i32, i64, i32, p, i64, i32, p, i32, p, sz, p, sz, p, i64]
    for fn in (lib.cusolverDnCreate, lib.cusolverDnCreateParams, lib.cusolverDnSetStream,
               lib.cusolverDnXsyevBatched_bufferSize, lib.cusolverDnXsyevBatched):
        fn.restype = i32
    return lib


def _library() -> ctypes.CDLL | None:
    if "lib" not in _STATE:
        _STATE["lib"] = _find_library()
        if _STATE["lib"] is None:
            log.debug("cusolverDnXsyevBatched not found; batched eigen-solves stay with torch")
    return _STATE["lib"]


def _handle(lib: ctypes.CDLL, device: torch.device) -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
    key = ("handle", device.index)
    if key not in _STATE:
        handle, params = ctypes.c_void_p(), ctypes.c_void_p()
        _check(lib.cusolverDnCreate(ctypes.byref(handle)), "cusolverDnCreate")
        _check(lib.cusolverDnCreateParams(ctypes.byref(params)), "cusolverDnCreateParams")
        _STATE[key] = (handle, params)
    return _STATE[key]


class _Unavailable(RuntimeError):
    pass


def _check(status: int, what: str) -> None:
    if status != 0:
        raise _Unavailable(f"{what} returned cuSOLVER status {status}")


def available(x: Tensor) -> bool:
    """Whether :func:`eigh` can take ``x`` (a float32/float64 CUDA ``Tensor[B, n, n]`` with B, n ≥ 1)."""
    return (
        x.device.type == "cuda" and x.dtype in _DTYPES and x.dim() == 3 and x.shape[0] > 0
        and x.shape[-1] > 0 and x.shape[-1] == x.shape[-2] and not x.requires_grad
        and _library() is not None
    )


def eigh(x: Tensor, *, vectors: bool) -> Any:
    """``torch.linalg.eigh(x)`` (``vectors``) or ``eigvalsh(x)`` by one ``cusolverDnXsyevBatched``
    call, or ``None`` where that routine cannot take ``x`` (:func:`available`) or fails to run."""
    key = ("refused", x.shape[-1], x.dtype, vectors)
    if not available(x) or key in _STATE:
        return None
    try:
        with _LOCK, torch.cuda.device(x.device):
            return _solve_chunks(_library(), x, vectors, torch.cuda.current_stream(x.device).cuda_stream)
    except _Unavailable as err:  # a status cuSOLVER gives for this size and type: torch's, from now on
        log.warning("cusolverDnXsyevBatched: %s for %s %d×%d matrices; torch solves them instead",
                    err, str(x.dtype).replace("torch.", ""), x.shape[-1], x.shape[-1])
        _STATE[key] = True
        return None
    except torch.cuda.OutOfMemoryError:  # its copy and workspace did not fit: torch's solver, as before
        return None


def _solve_chunks(lib: Any, x: Tensor, vectors: bool, stream: int) -> Any:
    """:func:`_solve` on chunks of at most :data:`MAX_BATCH` matrices, the results concatenated."""
    parts = [_solve(lib, part, vectors, stream) for part in x.split(MAX_BATCH)]
    if len(parts) == 1:
        return parts[0]
    if not vectors:
        return torch.cat(parts)
    return torch.return_types.linalg_eigh((torch.cat([p.eigenvalues for p in parts]),
                                           torch.cat([p.eigenvectors for p in parts])))


def _solve(lib: Any, x: Tensor, vectors: bool, stream: int) -> Any:
    """One ``cusolverDnXsyevBatched`` call on ``stream`` for ``x`` (its memory read through
    ``data_ptr``, column-major, which for a symmetric matrix is the same matrix)."""
    b, n = x.shape[0], x.shape[-1]
    handle, params = _handle(lib, x.device)
    _check(lib.cusolverDnSetStream(handle, ctypes.c_void_p(stream)), "cusolverDnSetStream")
    a = x.contiguous().clone()  # overwritten: by the eigenvectors (column-major) or by workspace
    w = torch.empty(b, n, dtype=x.dtype, device=x.device)
    info = torch.zeros(b, dtype=torch.int32, device=x.device)
    dtype, jobz = _DTYPES[x.dtype], _VECTOR if vectors else _NOVECTOR
    dev_bytes, host_bytes = ctypes.c_size_t(), ctypes.c_size_t()
    _check(lib.cusolverDnXsyevBatched_bufferSize(
        handle, params, jobz, _FILL_UPPER, n, dtype, a.data_ptr(), n, dtype, w.data_ptr(), dtype,
        ctypes.byref(dev_bytes), ctypes.byref(host_bytes), b), "cusolverDnXsyevBatched_bufferSize")
    dev_work = torch.empty(max(1, dev_bytes.value), dtype=torch.uint8, device=x.device)
    host_work = ctypes.create_string_buffer(max(1, host_bytes.value))
    _check(lib.cusolverDnXsyevBatched(
        handle, params, jobz, _FILL_UPPER, n, dtype, a.data_ptr(), n, dtype, w.data_ptr(), dtype,
        dev_work.data_ptr(), dev_bytes.value, ctypes.cast(host_work, ctypes.c_void_p), host_bytes.value,
        info.data_ptr(), b), "cusolverDnXsyevBatched")
    bad = torch.nonzero(info).flatten()
    if bad.numel():  # not converged (info > 0): torch's solver for those matrices (it raises if it fails too)
        redo = torch.linalg.eigh(x[bad]) if vectors else torch.linalg.eigvalsh(x[bad])
        if vectors:
            w[bad], a[bad] = redo.eigenvalues, redo.eigenvectors.transpose(-2, -1)
        else:
            w[bad] = redo
    if not vectors:
        return w
    # column-major eigenvectors read row-major are Vᵀ
    return torch.return_types.linalg_eigh((w, a.transpose(-2, -1)))
