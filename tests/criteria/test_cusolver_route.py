"""The CUDA route through cuSOLVER's batched eigen-solver (``criteria._cusolver``), tested without a GPU.

The route is on unless ``PRUNETUNE_CUSOLVER_BATCHED=0``. What runs on a GPU is measured in
``benchmarks/gpu_linalg.py`` (values against torch's solver; benchmarks/README.md, "gpu");
here: the routing decision, the fall-back to torch, the environment switch, and the call's
contract (column-major storage, eigenvectors returned transposed, matrices reported as not
converged solved again by torch) against a stand-in library that behaves as the documentation says.
"""

from __future__ import annotations

import ctypes

import numpy
import pytest
import torch

from prunetune.pruning.criteria import _cusolver, _linalg
from prunetune.pruning.criteria._linalg import batched_linalg, via_cusolver_batched


class _CudaLike:
    def __init__(self, batch: int, n: int, device: str = "cuda") -> None:
        self.device, self.shape = torch.device(device), (batch, n, n)

    def dim(self) -> int:
        return 3


def test_cuda_eigen_solves_above_32_try_the_batched_solver_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_cusolver.ENV_SWITCH, raising=False)
    assert via_cusolver_batched(torch.linalg.eigvalsh, _CudaLike(64, 256))  # on by default
    monkeypatch.setenv(_cusolver.ENV_SWITCH, "0")
    assert not via_cusolver_batched(torch.linalg.eigvalsh, _CudaLike(64, 256))
    monkeypatch.setenv(_cusolver.ENV_SWITCH, "1")
    assert via_cusolver_batched(torch.linalg.eigvalsh, _CudaLike(64, 256))
    assert via_cusolver_batched(torch.linalg.eigh, _CudaLike(128, 64))
    assert via_cusolver_batched(torch.linalg.eigvalsh, _CudaLike(1, 33))
    assert not via_cusolver_batched(torch.linalg.eigh, _CudaLike(128, 32))  # torch's batched Jacobi
    assert not via_cusolver_batched(torch.linalg.cholesky_ex, _CudaLike(128, 64))
    assert not via_cusolver_batched(torch.linalg.eigvalsh, _CudaLike(64, 256, device="cpu"))


def test_the_switch_and_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_cusolver.ENV_SWITCH, raising=False)
    assert _cusolver.enabled()
    for on in ("1", "true", "ON", ""):
        monkeypatch.setenv(_cusolver.ENV_SWITCH, on)
        assert _cusolver.enabled()
    for off in ("0", "false", " Off ", "no"):
        monkeypatch.setenv(_cusolver.ENV_SWITCH, off)
        assert not _cusolver.enabled()
    x = torch.eye(40, dtype=torch.float64).expand(3, 40, 40)
    assert not _cusolver.available(x) and _cusolver.eigh(x, vectors=False) is None


@pytest.mark.parametrize("fn", [torch.linalg.eigh, torch.linalg.eigvalsh])
def test_batched_linalg_falls_back_when_the_routine_declines(fn, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.randn(5, 40, 40, dtype=torch.float64)
    g = g @ g.transpose(1, 2)
    calls = []
    monkeypatch.setattr(_linalg, "via_cusolver_batched", lambda f, x: True)
    monkeypatch.setattr(_cusolver, "eigh", lambda x, vectors: calls.append(vectors))  # returns None
    out, ref = batched_linalg(fn, g), fn(g)
    assert calls == [fn is torch.linalg.eigh]
    if fn is torch.linalg.eigh:
        assert torch.equal(out.eigenvalues, ref.eigenvalues)
    else:
        assert torch.equal(out, ref)


class _FakeCusolver:
    """``cusolverDnXsyevBatched`` as documented: column-major matrices of the type the dtype codes
    name (CUDA_R_32F = 0, CUDA_R_64F = 1), the triangle ``uplo`` names read, eigenvalues ascending into
    W, eigenvectors (jobz = 1) written over A column-major, one int32 info per matrix, and the
    workspaces the size query gave. Matrix ``fail`` is reported as not converged, garbage in its W
    and A."""

    DEV, HOST = 64, 16

    def __init__(self, fail: int | None = None) -> None:
        self.fail, self.calls = fail, []

    def cusolverDnCreate(self, ref) -> int:
        return 0

    cusolverDnCreateParams = cusolverDnCreate

    def cusolverDnSetStream(self, handle, stream) -> int:
        return 0

    def cusolverDnXsyevBatched_bufferSize(self, h, p, jobz, uplo, n, ta, a, lda, tw, w, tc, dev, host, batch) -> int:
        dev._obj.value, host._obj.value = self.DEV, self.HOST
        return 0

    def cusolverDnXsyevBatched(self, h, p, jobz, uplo, n, ta, a, lda, tw, w, tc, dev, devb, host, hostb, info, batch):
        assert ta == tw == tc in (0, 1) and lda == n and (devb, hostb) == (self.DEV, self.HOST)
        assert dev and host.value  # workspaces given
        self.calls.append((jobz, uplo, n, lda, batch))
        real = ctypes.c_float if ta == 0 else ctypes.c_double
        a_mem = numpy.ctypeslib.as_array((real * (batch * n * n)).from_address(a))
        w_mem = numpy.ctypeslib.as_array((real * (batch * n)).from_address(w))
        info_mem = numpy.ctypeslib.as_array((ctypes.c_int32 * batch).from_address(info))
        for k in range(batch):
            col_major = a_mem[k * n * n : (k + 1) * n * n].reshape(n, n).T.astype(numpy.float64)  # [i, j] = A(i, j)
            half = numpy.triu(col_major) if uplo == 1 else numpy.tril(col_major)  # CUBLAS_FILL_MODE_UPPER = 1
            sym = half + (numpy.triu(half, 1) if uplo == 1 else numpy.tril(half, -1)).T
            lam, vec = numpy.linalg.eigh(sym)
            w_mem[k * n : (k + 1) * n] = lam
            if jobz == 1:
                a_mem[k * n * n : (k + 1) * n * n] = vec.T.reshape(-1)  # column-major V
            if k == self.fail:
                info_mem[k] = 3
                w_mem[k * n : (k + 1) * n] = numpy.nan
                a_mem[k * n * n : (k + 1) * n * n] = 5.0
        return 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("vectors", [False, True])
@pytest.mark.parametrize("fail", [None, 1])
def test_the_call_reads_and_returns_what_torch_does(vectors: bool, fail, dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values equal torch's to rounding: the row-major lower triangle is what is read (torch's
    UPLO='L'; the upper one here holds other values), eigenvectors come back as columns, and a matrix
    reported as not converged is solved by torch, eigenvalues and eigenvectors."""
    monkeypatch.setattr(_cusolver, "_STATE", {})
    fake = _FakeCusolver(fail)
    f = torch.randn(3, 6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = (f @ f.transpose(1, 2)).to(dtype)
    skewed = torch.tril(g) + torch.triu(torch.full_like(g, 7.0), 1)  # only the lower triangle is g's
    out = _cusolver._solve(fake, skewed, vectors, stream=0)
    ref = torch.linalg.eigh(g)
    assert fake.calls == [(int(vectors), 1, 6, 6, 3)]
    lam = out.eigenvalues if vectors else out
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    assert lam.dtype == dtype and torch.allclose(lam, ref.eigenvalues, atol=tol, rtol=0)
    if vectors:
        rebuilt = out.eigenvectors @ torch.diag_embed(out.eigenvalues) @ out.eigenvectors.transpose(1, 2)
        assert torch.allclose(rebuilt, g, atol=tol * 10, rtol=0)
    assert torch.equal(skewed, torch.tril(g) + torch.triu(torch.full_like(g, 7.0), 1))  # input untouched


_STUB = r"""
#include <stdint.h>
#include <stddef.h>
static int64_t seen[32];
void stub_seen(int64_t *out) { for (int i = 0; i < 32; i++) out[i] = seen[i]; }
int cusolverDnCreate(void **h) { *h = (void *)0x1234; return 0; }
int cusolverDnCreateParams(void **p) { *p = (void *)0x5678; return 0; }
int cusolverDnSetStream(void *h, void *s) { seen[0] = (int64_t)h; seen[1] = (int64_t)s; return 0; }
int cusolverDnXsyevBatched_bufferSize(void *h, void *p, int jobz, int uplo, int64_t n, int ta, const void *a,
        int64_t lda, int tw, const void *w, int tc, size_t *dev, size_t *host, int64_t batch) {
    seen[2] = (int64_t)p; seen[3] = jobz; seen[4] = uplo; seen[5] = n; seen[6] = ta; seen[7] = lda;
    seen[8] = tw; seen[9] = tc; seen[10] = batch; *dev = 4096; *host = 3000000000u; return 0;
}
int cusolverDnXsyevBatched(void *h, void *p, int jobz, int uplo, int64_t n, int ta, void *a, int64_t lda,
        int tw, void *w, int tc, void *dev, size_t devb, void *host, size_t hostb, int *info, int64_t batch) {
    seen[11] = jobz; seen[12] = uplo; seen[13] = n; seen[14] = ta; seen[15] = lda; seen[16] = tw;
    seen[17] = tc; seen[18] = (int64_t)devb; seen[19] = (int64_t)hostb; seen[20] = batch;
    seen[21] = (int64_t)a; seen[22] = (int64_t)w; seen[23] = (int64_t)info; seen[24] = (int64_t)dev;
    for (int64_t k = 0; k < batch * n; k++) ((double *)w)[k] = (double)k;
    for (int64_t k = 0; k < batch; k++) info[k] = 0;
    return 0;
}
"""


def test_the_ctypes_declarations_pass_every_argument_as_the_documented_c_type(tmp_path, monkeypatch) -> None:
    """A C library with cusolverDnXsyevBatched's documented prototypes (int64_t sizes, int enums,
    size_t workspaces, pointers) records what it receives: every value arrives whole, the host
    workspace size beyond 32 bits too (a size query's answer, passed back)."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler here")
    src, lib_path = tmp_path / "stub.c", tmp_path / "libstub.so"
    src.write_text(_STUB)
    subprocess.run([cc, "-shared", "-fPIC", "-O0", "-o", str(lib_path), str(src)], check=True)
    lib = _cusolver._declare(ctypes.CDLL(str(lib_path)))
    monkeypatch.setattr(_cusolver, "_STATE", {})
    monkeypatch.setattr(ctypes, "create_string_buffer", lambda size: (ctypes.c_char * 1)())  # 3 GB not needed here
    x = torch.eye(5, dtype=torch.float64).repeat(3, 1, 1)
    w = _cusolver._solve(lib, x, False, stream=0xABCDEF01234)
    seen = (ctypes.c_int64 * 32)()
    lib.stub_seen(seen)
    assert seen[1] == 0xABCDEF01234 and seen[0] == 0x1234 and seen[2] == 0x5678
    assert list(seen[3:11]) == [0, 1, 5, 1, 5, 1, 1, 3]  # jobz, uplo, n, type, lda, type, type, batch
    assert list(seen[11:21]) == [0, 1, 5, 1, 5, 1, 1, 4096, 3000000000, 3]
    assert seen[21] != x.data_ptr() and seen[22] == w.data_ptr()  # A is a copy; W is what comes back
    assert torch.equal(w, torch.arange(15, dtype=torch.float64).reshape(3, 5))


@pytest.mark.parametrize("vectors", [False, True])
def test_large_batches_go_in_chunks_the_routine_takes(vectors: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cusolver, "_STATE", {})
    monkeypatch.setattr(_cusolver, "MAX_BATCH", 2)
    fake = _FakeCusolver()
    f = torch.randn(5, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = f @ f.transpose(1, 2)
    out = _cusolver._solve_chunks(fake, g, vectors, stream=0)
    assert [c[-1] for c in fake.calls] == [2, 2, 1]
    ref = torch.linalg.eigh(g)
    lam = out.eigenvalues if vectors else out
    assert torch.allclose(lam, ref.eigenvalues, atol=1e-12, rtol=0)
    if vectors:
        assert torch.allclose(out.eigenvectors @ torch.diag_embed(lam) @ out.eigenvectors.transpose(1, 2), g, atol=1e-10)


def test_eigvalsh_here_takes_the_batched_route_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    # cmi's greedy solves each step's joints through eigvalsh_here: on CUDA that must be
    # batched_linalg's route (cuSOLVER's batched solver), not torch's one-matrix-at-a-time call
    seen = []
    monkeypatch.setattr(_linalg, "batched_linalg", lambda fn, x: seen.append((fn, x)) or "routed")
    x = _CudaLike(64, 256)
    assert _linalg.eigvalsh_here(x) == "routed" and seen == [(torch.linalg.eigvalsh, x)]
    g = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    assert torch.equal(_linalg.eigvalsh_here(g), torch.ones(2, 3, dtype=torch.float64)) and len(seen) == 1
