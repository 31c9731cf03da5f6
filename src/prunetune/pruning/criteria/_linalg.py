"""Batched linear algebra for the criteria, routed by device, size and dtype.

Every criterion that factorises (``chip``'s ``eigh`` per image, ``hrank``'s Cholesky and
``eigvalsh`` per map, ``cmi``'s ``eigvalsh`` per candidate joint) hands a batch of small matrices to
:func:`batched_linalg`, which picks how to solve it with the same values: on the CPU, split across
torch's threads (the main thread's own OpenMP team where torch's runtime has GNU OpenMP's entry
points, else a thread pool), large float64 ``eigvalsh`` by numpy's LAPACK; on CUDA, the sizes
cuSOLVER solves cuSOLVER's batched solver (:mod:`._cusolver`), or where that is missing or switched off,
the sizes cuSOLVER solves one matrix at a time through the host. Measured in benchmarks/README.md ("gpu", "CMI").
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy
import torch
from torch import Tensor

from prunetune.pruning.criteria import _cusolver

_POOL_LOCK = threading.Lock()
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool(workers: int) -> ThreadPoolExecutor:
    """One shared pool with at least ``workers`` threads (rebuilt only when more are wanted), each
    thread held to one OpenMP and one MKL thread (:func:`one_thread_here`)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] < workers:
            if _POOL is not None:
                _POOL[1].shutdown(wait=False)
            _POOL = (workers, ThreadPoolExecutor(workers, thread_name_prefix="prunetune-linalg",
                                                 initializer=one_thread_here))
        return _POOL[1]


_TORCH_CPU: list[Any] = []


def _torch_cpu() -> Any:
    """torch's CPU library (``ctypes.CDLL``), once; ``None`` where it is not found. A symbol looked up
    there resolves through the libraries it was linked against, so the OpenMP runtime and MKL found
    are the ones torch is bound to, also where another copy of a runtime was loaded first."""
    if not _TORCH_CPU:
        lib = None
        for path in sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu*")))[:1]:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                lib = None
        _TORCH_CPU.append(lib)
    return _TORCH_CPU[0]


def _thread_setters() -> list[Callable[[int], Any]]:
    """``omp_set_num_threads`` of the OpenMP runtime torch is bound to and MKL's
    ``MKL_Set_Num_Threads_Local`` (the C interface; the lower-case name is the Fortran one, which
    takes a pointer), found through torch's CPU library (:func:`_torch_cpu`); both set the calling
    thread's own count. Empty where neither is found (no OpenMP runtime, no MKL)."""
    lib = _torch_cpu()
    found = []
    for name in ("omp_set_num_threads", "MKL_Set_Num_Threads_Local"):  # C interface (by value)
        try:
            fn = getattr(lib, name)
        except AttributeError:  # also lib None
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        found.append(fn)
    return found


def one_thread_here() -> None:
    """Hold the calling thread's OpenMP parallel regions and MKL calls to one thread.

    A pool thread runs its share of a batch on one core: with the process's thread count it
    would start an OpenMP team of its own, which lives as long as the thread does. More OpenMP
    threads than cores make GNU OpenMP stop spinning while it waits, and MKL's LAPACK, which opens
    a parallel region per step of a reduction, then ran 5-6× slower on the main thread for the rest
    of the process (a 256×256 ``eigvalsh`` on 2 cores: 2.5 → 14 ms, measured; benchmarks/README.md,
    "CMI"). Only this thread's settings change (OpenMP's count is per thread, and MKL's ``_local``
    one too)."""
    torch.get_num_threads()  # ATen's lazy per-thread start-up first: it sets the process's count here
    for set_threads in _thread_setters():
        try:
            set_threads(1)
        except Exception:  # noqa: BLE001 - a runtime that refuses: the thread keeps the default
            pass


HOST_EIGEN_SIZES = range(33, 65)
"""Matrix sizes n whose batched symmetric eigen-solves a CUDA tensor sends to the host's LAPACK.

Measured on an H200 with torch 2.11 + CUDA 13 (benchmarks/README.md, "gpu"): a batch of 128
float64 64×64 ``eigh`` took 98 ms on the GPU (cuSOLVER solves such a batch one matrix at a time)
and 40 ms through the host (copy, LAPACK in two chunks of 64 on two threads, copy back); at n ≤ 32
cuSOLVER's batched solver took 0.2-0.3 ms, and at n = 256 the GPU was 8× faster than the host.
``eigvalsh`` takes the same route at these sizes; it was not measured separately."""

_EIGEN = (torch.linalg.eigh, torch.linalg.eigvalsh)


def _to_device(out: Any, device: torch.device) -> Any:
    if isinstance(out, tuple):  # eigh's (eigenvalues, eigenvectors), its named fields kept
        return type(out)(tuple(t.to(device) for t in out))
    return out.to(device)


def on_host(fn: Callable[[Tensor], Any], x: Tensor) -> bool:
    """Whether :func:`batched_linalg` solves ``fn(x)`` through the host (see :data:`HOST_EIGEN_SIZES`)."""
    return (
        x.device.type == "cuda" and fn in _EIGEN and x.dim() == 3 and x.shape[-1] in HOST_EIGEN_SIZES
    )


CUSOLVER_BATCHED_MIN_SIZE = 33
"""Matrix size n from which a CUDA batch of symmetric eigen-solves goes to cuSOLVER's batched
solver, ``cusolverDnXsyevBatched`` (:mod:`._cusolver`), unless that route is switched off
(``PRUNETUNE_CUSOLVER_BATCHED=0``) or the installed cuSOLVER lacks it; below, torch solves a batch in one call itself (``syevjBatched``, or
``XsyevBatched`` in builds that have it). Otherwise the batch goes
the way it went before (:data:`HOST_EIGEN_SIZES`, else torch)."""


def via_cusolver_batched(fn: Callable[[Tensor], Any], x: Tensor) -> bool:
    """Whether :func:`batched_linalg` first tries ``cusolverDnXsyevBatched`` for ``fn(x)``."""
    return (
        fn in _EIGEN and x.device.type == "cuda" and x.dim() == 3 and x.shape[-1] >= CUSOLVER_BATCHED_MIN_SIZE
        and _cusolver.enabled()
    )


NUMPY_EIGVALSH_MIN_SIZE = 192
"""Matrix size n from which a CPU float64 batched ``eigvalsh`` is solved by numpy's LAPACK.

numpy's wheels bundle OpenBLAS, whose ``dsyevd`` reduces a matrix of this size to tridiagonal form
faster than the MKL in torch's CPU wheels: measured on the project machine (one thread per solve,
benchmarks/README.md, "CMI"), 2.0 against 2.7 ms per 256×256 matrix, 1.09× faster at 192 and
equal (±5%) from 96 to 160. The eigenvalues agree to rounding (about 1e-15 of the largest). The
CMI criterion's 256×256 problems are the case this serves."""


def _numpy_eigvalsh(x: Tensor) -> Tensor:
    try:
        return torch.from_numpy(numpy.linalg.eigvalsh(x.numpy()))
    except numpy.linalg.LinAlgError:  # let torch's routine raise its own error on the same input
        return torch.linalg.eigvalsh(x)


def via_numpy(fn: Callable[[Tensor], Any], x: Tensor) -> bool:
    """Whether :func:`batched_linalg` solves ``fn(x)`` with numpy (:data:`NUMPY_EIGVALSH_MIN_SIZE`)."""
    return (
        fn is torch.linalg.eigvalsh and x.device.type == "cpu" and x.dtype == torch.float64
        and x.dim() >= 2 and x.shape[-1] >= NUMPY_EIGVALSH_MIN_SIZE and not x.requires_grad
    )


_BLAS_CONTROLLER: list[Any] = []


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Limit numpy's BLAS to one thread per call (the batch is already split across threads)."""
    if not _BLAS_CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER.append(ThreadpoolController())
        except Exception:  # threadpoolctl missing or unable to inspect: numpy keeps its own setting
            _BLAS_CONTROLLER.append(None)
    controller = _BLAS_CONTROLLER[0]
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def batched_linalg(fn: Callable[[Tensor], Any], x: Tensor, *, min_chunk: int = 64) -> Any:
    """``fn(x)`` for a batched linear-algebra call, the batch split across torch's CPU threads.

    On CPU, torch runs a batched ``eigvalsh``/``eigh``/``svdvals`` of small matrices as one LAPACK
    call per matrix on a single thread. This splits the leading dimension into at most
    ``torch.get_num_threads()`` chunks (of at least ``min_chunk`` matrices), runs ``fn`` on each,
    one chunk per thread of the main thread's OpenMP team (:func:`_in_team`) or, elsewhere, in a
    thread pool, and concatenates the results (a tensor or a tuple of tensors) along dimension 0.
    Each chunk is solved by the same routine on one thread, so the values do not depend on the route
    or the split; against one multi-threaded call they can differ by rounding (MKL solves matrices
    from about 88 on another way with more threads). A float64 ``eigvalsh`` of matrices of
    :data:`NUMPY_EIGVALSH_MIN_SIZE` or more goes to numpy's LAPACK (its BLAS held to one thread per
    call), whose values agree to rounding. On CUDA, a batch of symmetric eigen-solves of a size
    where cuSOLVER solves one matrix at a time (:data:`HOST_EIGEN_SIZES`) is solved this way on the
    host and copied back (:func:`on_host`), where cuSOLVER's batched solver is missing or switched
    off (:func:`via_cusolver_batched`); other calls on other devices, and small batches, are
    ``fn(x)``.
    """
    if via_cusolver_batched(fn, x):
        out = _cusolver.eigh(x, vectors=fn is torch.linalg.eigh)
        if out is not None:
            return out
    if on_host(fn, x):
        return _to_device(_threaded(fn, x.cpu(), min_chunk, team=True), x.device)
    if via_numpy(fn, x):
        with _one_blas_thread():
            return _threaded(_numpy_eigvalsh, x, min_chunk, team=True)
    return _threaded(fn, x, min_chunk, team=True)


def eigvalsh_here(x: Tensor) -> Tensor:
    """``eigvalsh`` of a batch in one call on this thread, by the routine :func:`batched_linalg`
    would pick (on the CPU numpy's LAPACK from :data:`NUMPY_EIGVALSH_MIN_SIZE`, torch's below; on
    CUDA :func:`batched_linalg`'s own route, cuSOLVER's batched solver included)."""
    if x.device.type != "cpu":
        return batched_linalg(torch.linalg.eigvalsh, x)
    return _numpy_eigvalsh(x) if via_numpy(torch.linalg.eigvalsh, x) else torch.linalg.eigvalsh(x)


def split_across_threads(fn: Callable[[Tensor], Any], x: Tensor, *, min_chunk: int = 1) -> Any:
    """``fn`` on chunks of ``x``'s leading dimension in torch's CPU threads, the results (tensors or
    tuples of tensors) concatenated; numpy's BLAS held to one thread meanwhile. For work per
    matrix that is more than one LAPACK call (``fn`` then calls :func:`eigvalsh_here` and the like):
    one split and one wait instead of one per call. Always the thread pool, not the OpenMP team:
    ``fn`` is more than one routine, and a team's worker runs Python with a fresh thread state on
    every call (no thread-local state survives), inside a parallel region."""
    with _one_blas_thread():
        return _threaded(fn, x, min_chunk)


def _threaded(fn: Callable[[Tensor], Any], x: Tensor, min_chunk: int, *, team: bool = False) -> Any:
    workers = min(torch.get_num_threads(), x.shape[0] // max(1, min_chunk)) if x.dim() else 1
    if x.device.type != "cpu" or workers < 2:
        return fn(x)
    chunks = x.chunk(workers)
    parts = (_in_team(fn, chunks) if team else None) or list(_pool(torch.get_num_threads()).map(fn, chunks))
    if isinstance(parts[0], tuple):  # eigh's (eigenvalues, eigenvectors), its named fields kept
        return type(parts[0])(tuple(torch.cat(p) for p in zip(*parts)))
    return torch.cat(parts)


_GOMP: list[Any] = []


def _gomp() -> Any:
    """torch's CPU library (:func:`_torch_cpu`) with ``GOMP_parallel``'s argument types set, and
    MKL's ``MKL_Set_Num_Threads_Local`` (``None`` without MKL) as ``.mkl_local``; ``None`` where
    torch's OpenMP runtime has no ``GOMP_parallel``."""
    if not _GOMP:
        lib = _torch_cpu()
        try:
            lib.GOMP_parallel.argtypes = [_TEAM_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            lib.GOMP_parallel.restype = None
            for name in ("omp_get_thread_num", "omp_get_num_threads", "omp_in_parallel"):
                getattr(lib, name).restype = ctypes.c_int
        except AttributeError:  # also lib None
            lib = None
        if lib is not None:
            setters = {fn.__name__: fn for fn in _thread_setters()}
            lib.mkl_local = setters.get("MKL_Set_Num_Threads_Local")
        _GOMP.append(lib)
    return _GOMP[0]


_TEAM_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _in_team(fn: Callable[[Tensor], Any], chunks: Sequence[Tensor]) -> list[Any] | None:
    """``[fn(c) for c in chunks]``, one chunk per thread of the main thread's own OpenMP team, or
    ``None`` where that is not done (torch's runtime has no ``GOMP_parallel``, another thread calls:
    each would start a team of its own, or the call is already inside a parallel region).

    Measured on the project's 2-core machine (benchmarks/README.md, "scoring", stop 38): after a
    parallel region of the calling thread (a convolution, a Gram product), GNU OpenMP's worker spins
    for some milliseconds before it sleeps, and two pool threads solving a batch then share the
    cores with it; in the team, that worker solves a chunk instead. Each thread runs ``fn`` inside
    the parallel region, where ATen runs on that thread alone, with MKL held to one thread for the
    call as a pool thread is, so every matrix is solved as in the pool, with the same values. The
    GIL is released while the team runs (``ctypes``) and taken by each thread for its Python; an
    error in a chunk is raised here.
    """
    gomp = _gomp()
    if gomp is None or threading.current_thread() is not threading.main_thread() or gomp.omp_in_parallel():
        return None
    parts: list[Any] = [None] * len(chunks)
    errors: list[BaseException] = []

    def body(_data: Any) -> None:
        # MKL held to one thread here, as in the pool: with the process's count it runs on one
        # thread inside the region too, but solves matrices from about 88 on another way
        previous = gomp.mkl_local(1) if gomp.mkl_local is not None else None
        try:
            for i in range(gomp.omp_get_thread_num(), len(chunks), gomp.omp_get_num_threads()):
                parts[i] = fn(chunks[i])
        except BaseException as err:  # noqa: BLE001 - raised on the calling thread below
            errors.append(err)
        finally:
            if previous is not None:
                gomp.mkl_local(previous)

    gomp.GOMP_parallel(_TEAM_BODY(body), None, len(chunks), 0)
    if errors:
        raise errors[0]
    return parts
