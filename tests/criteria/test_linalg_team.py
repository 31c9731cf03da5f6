"""``batched_linalg`` solves a CPU batch in the main thread's own OpenMP team (``_linalg._in_team``):
one chunk per thread, with the thread pool's values, an error in a chunk raised to the caller, and the
pool used where no team is formed (another thread, inside a parallel region)."""

from __future__ import annotations

import pytest
import torch

from prunetune.pruning.criteria import _linalg

pytestmark = pytest.mark.skipif(_linalg._gomp() is None, reason="needs torch's bundled GNU OpenMP")


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _grams(n: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(n, k, 3 * k, dtype=torch.float64, generator=g))
    return x @ x.transpose(1, 2)


def test_each_thread_of_the_team_solves_its_chunk_with_the_values_of_one_call(two_threads) -> None:
    x = _grams(256, 24)
    chunks = x.chunk(2)
    where: list[int] = []

    def eigh(chunk: torch.Tensor):
        where.append(_linalg._gomp().omp_get_thread_num())
        return torch.linalg.eigh(chunk)

    parts = _linalg._in_team(eigh, chunks)
    assert parts is not None and sorted(where) == [0, 1]  # the calling thread and its team's worker
    for part, chunk in zip(parts, chunks):
        one = torch.linalg.eigh(chunk)
        assert torch.equal(part.eigenvalues, one.eigenvalues) and torch.equal(part.eigenvectors, one.eigenvectors)
    batched = _linalg.batched_linalg(torch.linalg.eigh, x)
    assert type(batched) is type(parts[0])  # eigh's named fields kept
    assert torch.equal(batched.eigenvalues, torch.cat([p.eigenvalues for p in parts]))
    pooled = _linalg._threaded(torch.linalg.eigh, x, 64)  # the thread pool's route
    assert torch.equal(batched.eigenvectors, pooled.eigenvectors)


@pytest.mark.parametrize("k", [96, 128])
def test_the_team_gives_the_pools_values_where_mkl_would_solve_otherwise_with_more_threads(two_threads, k) -> None:
    # from about 88 on, MKL left at the process's count solves a matrix another way even on one
    # thread inside the region: the team holds it to one thread, as the pool's threads are held
    x = _grams(64, k)
    for fn in (torch.linalg.eigh, torch.linalg.eigvalsh):
        team = _linalg._threaded(fn, x, 8, team=True)
        pooled = _linalg._threaded(fn, x, 8)
        for a, b in zip(*(t if isinstance(t, tuple) else (t,) for t in (team, pooled))):
            assert torch.equal(a, b)


def test_only_the_main_thread_forms_a_team(two_threads) -> None:
    import threading

    seen = []
    worker = threading.Thread(target=lambda: seen.append(_linalg._in_team(torch.sum, torch.ones(2, 3).chunk(2))))
    worker.start()
    worker.join()
    assert seen == [None]  # another thread's team would be a team of its own: the pool serves it


def test_batched_linalg_takes_the_team_on_the_cpu(two_threads, monkeypatch) -> None:
    calls = []
    real = _linalg._in_team
    monkeypatch.setattr(_linalg, "_in_team", lambda fn, chunks: calls.append(len(chunks)) or real(fn, chunks))
    x = _grams(256, 8)
    assert torch.equal(_linalg.batched_linalg(torch.linalg.eigvalsh, x), torch.linalg.eigvalsh(x))
    assert calls == [2]
    torch.set_num_threads(1)  # one thread: one call, no team
    _linalg.batched_linalg(torch.linalg.eigvalsh, x)
    assert calls == [2]


def test_an_error_in_a_chunk_is_raised_to_the_caller(two_threads) -> None:
    def fails_on_the_second(chunk: torch.Tensor) -> torch.Tensor:
        if chunk[0, 0, 0] < 0:
            raise ValueError("injected in a chunk")
        return chunk.sum()

    x = torch.ones(4, 2, 2)
    x[2:] = -1.0
    with pytest.raises(ValueError, match="injected in a chunk"):
        _linalg._in_team(fails_on_the_second, x.chunk(2))


def test_inside_a_parallel_region_no_team_is_formed(two_threads) -> None:
    inner = []
    _linalg._in_team(lambda chunk: inner.append(_linalg._in_team(torch.sum, [chunk, chunk])), torch.ones(2, 3).chunk(2))
    assert inner == [None, None]  # the caller then takes the pool
