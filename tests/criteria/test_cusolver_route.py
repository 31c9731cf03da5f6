"""The CUDA route through cuSOLVER's batched eigen-solver (``criteria._cusolver``), tested without a GPU.

The route is off unless ``PRUNETUNE_CUSOLVER_BATCHED=1``. What runs on a GPU is measured in ``benchmarks/gpu_linalg.py`` (values against torch's solver);
here: the routing decision, the fall-back to torch, the environment switch, and the call's
contract (column-major storage, eigenvectors returned transposed, matrices reported as not
converged solved again by torch) against a stand-in library that behaves as the documentation says.
"""

from __future__ import annotations

import ctypes

import numpy
import pytest
import torch

from prunetune.pruning.criteria import _common, _cusolver
from prunetune.pruning.criteria._common import batched_linalg, via_cusolver_batched


class _CudaLike:
    def __init__(self, batch: int, n: int, device: str = "cuda") -> None:
        self.device, self.shape = torch.device(device), (batch, n, n)

    def dim(self) -> int:
        return 3


def test_cuda_eigen_solves_above_32_try_the_batched_solver_when_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not via_cusolver_batched(torch.linalg.eigvalsh, _CudaLike(64, 256))  # off by default
    monkeypatch.setenv(_cusolver.ENV_SWITCH, "1")
    assert via_cusolver_batched(torch.linalg.eigvalsh, _CudaLike(64, 256))
    assert via_cusolver_batched(torch.linalg.eigh, _CudaLike(128, 64))
    assert via_cusolver_batched(torch.linalg.eigvalsh, _CudaLike(1, 33))
    assert not via_cusolver_batched(torch.linalg.eigh, _CudaLike(128, 32))  # torch's batched Jacobi
    assert not via_cusolver_batched(torch.linalg.cholesky_ex, _CudaLike(128, 64))
    assert not via_cusolver_batched(torch.linalg.eigvalsh, _CudaLike(64, 256, device="cpu"))


def test_the_switch_and_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_cusolver.ENV_SWITCH, raising=False)
    assert not _cusolver.enabled()
    for on in ("1", "true", "ON"):
        monkeypatch.setenv(_cusolver.ENV_SWITCH, on)
        assert _cusolver.enabled()
    for off in ("0", "false", ""):
        monkeypatch.setenv(_cusolver.ENV_SWITCH, off)
        assert not _cusolver.enabled()
    x = torch.eye(40, dtype=torch.float64).expand(3, 40, 40)
    assert not _cusolver.available(x) and _cusolver.eigh(x, vectors=False) is None


@pytest.mark.parametrize("fn", [torch.linalg.eigh, torch.linalg.eigvalsh])
def test_batched_linalg_falls_back_when_the_routine_declines(fn, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.randn(5, 40, 40, dtype=torch.float64)
    g = g @ g.transpose(1, 2)
    calls = []
    monkeypatch.setattr(_common, "via_cusolver_batched", lambda f, x: True)
    monkeypatch.setattr(_cusolver, "eigh", lambda x, vectors: calls.append(vectors))  # returns None
    out, ref = batched_linalg(fn, g), fn(g)
    assert calls == [fn is torch.linalg.eigh]
    if fn is torch.linalg.eigh:
        assert torch.equal(out.eigenvalues, ref.eigenvalues)
    else:
        assert torch.equal(out, ref)


class _FakeCusolver:
    """``cusolverDnXsyevBatched`` as documented: column-major matrices, the triangle ``uplo`` names read,
    eigenvalues ascending into W, eigenvectors (jobz = 1) written over A column-major, one info per
    matrix. Matrix ``fail`` is reported as not converged, with garbage in its outputs."""

    def __init__(self, fail: int | None = None) -> None:
        self.fail, self.calls = fail, []

    def cusolverDnCreate(self, ref) -> int:
        return 0

    cusolverDnCreateParams = cusolverDnCreate

    def cusolverDnSetStream(self, handle, stream) -> int:
        return 0

    def cusolverDnXsyevBatched_bufferSize(self, h, p, jobz, uplo, n, ta, a, lda, tw, w, tc, dev, host, batch) -> int:
        dev._obj.value, host._obj.value = 64, 16
        return 0

    def cusolverDnXsyevBatched(self, h, p, jobz, uplo, n, ta, a, lda, tw, w, tc, dev, devb, host, hostb, info, batch):
        self.calls.append((jobz, uplo, n, lda, batch))
        a_mem = numpy.ctypeslib.as_array((ctypes.c_double * (batch * n * n)).from_address(a))
        w_mem = numpy.ctypeslib.as_array((ctypes.c_double * (batch * n)).from_address(w))
        info_mem = numpy.ctypeslib.as_array((ctypes.c_int32 * batch).from_address(info))
        for k in range(batch):
            col_major = a_mem[k * n * n : (k + 1) * n * n].reshape(n, n).T  # [i, j] = A(i, j)
            half = numpy.triu(col_major) if uplo == 1 else numpy.tril(col_major)  # CUBLAS_FILL_MODE_UPPER = 1
            sym = half + (numpy.triu(half, 1) if uplo == 1 else numpy.tril(half, -1)).T
            lam, vec = numpy.linalg.eigh(sym)
            w_mem[k * n : (k + 1) * n] = lam
            if jobz == 1:
                a_mem[k * n * n : (k + 1) * n * n] = vec.T.reshape(-1)  # column-major V
            if k == self.fail:
                info_mem[k] = 3
                w_mem[k * n : (k + 1) * n] = numpy.nan
        return 0


@pytest.mark.parametrize("vectors", [False, True])
@pytest.mark.parametrize("fail", [None, 1])
def test_the_call_reads_and_returns_what_torch_does(vectors: bool, fail, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values equal torch's to rounding: the row-major lower triangle is what is read (torch's
    UPLO='L'; the upper one here holds other values), eigenvectors come back as columns, and a matrix
    reported as not converged is solved by torch."""
    monkeypatch.setattr(_cusolver, "_STATE", {})
    fake = _FakeCusolver(fail)
    f = torch.randn(3, 6, 9, dtype=torch.float64)
    g = f @ f.transpose(1, 2)
    skewed = torch.tril(g) + torch.triu(torch.full_like(g, 7.0), 1)  # only the lower triangle is g's
    out = _cusolver._solve(fake, skewed, vectors, stream=0)
    ref = torch.linalg.eigh(g)
    assert fake.calls == [(int(vectors), 1, 6, 6, 3)]
    lam = out.eigenvalues if vectors else out
    assert torch.allclose(lam, ref.eigenvalues, atol=1e-12, rtol=0)
    if vectors:
        rebuilt = out.eigenvectors @ torch.diag_embed(out.eigenvalues) @ out.eigenvectors.transpose(1, 2)
        assert torch.allclose(rebuilt, g, atol=1e-10, rtol=0)
    assert torch.equal(skewed, torch.tril(g) + torch.triu(torch.full_like(g, 7.0), 1))  # input untouched
