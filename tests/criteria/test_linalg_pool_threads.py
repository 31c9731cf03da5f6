"""The thread pool of ``criteria._linalg`` runs each share of a batch on one thread, and leaves the
rest of the process as it was: its threads start no OpenMP team of their own (one per thread, living as
long as the thread: with more OpenMP threads than cores GNU OpenMP stops spinning, and MKL's LAPACK on
the main thread ran 5-6× slower for the rest of the process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from prunetune.pruning.criteria import _linalg

_SCRIPT = textwrap.dedent("""
    import os, threading, torch
    torch.set_num_threads(2)
    from prunetune.pruning.criteria import _linalg

    def threads():
        return len(os.listdir(f"/proc/{os.getpid()}/task"))

    x = torch.randn(8, 48, 48, dtype=torch.float64)
    x = x @ x.transpose(1, 2) + torch.eye(48, dtype=torch.float64)
    torch.linalg.eigvalsh(x[0])  # the main thread's own OpenMP team, before counting
    (x @ x).sum()
    before = threads()
    # both pool threads started (ThreadPoolExecutor starts them lazily and reuses an idle one, so a
    # loaded machine could otherwise finish the first share before the second thread was needed)
    wait = threading.Barrier(2)
    [f.result() for f in [_linalg._pool(2).submit(wait.wait) for _ in range(2)]]
    seen = []
    out = _linalg._threaded(lambda a: seen.append(torch.get_num_threads()) or torch.linalg.eigvalsh(a), x, 1)
    assert torch.allclose(out, torch.linalg.eigvalsh(x))
    (x.expand(2, 8, 48, 48) * 2).sum(dim=0)  # an ATen op in the pool threads too
    _linalg._pool(2).submit(lambda: (x.expand(64, 8, 48, 48) * 2).sum()).result()
    print(before, threads(), seen, torch.get_num_threads())
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or not _linalg._thread_setters(),
                    reason="needs Linux's /proc and torch's bundled GNU OpenMP")
def test_pool_threads_run_on_one_thread_and_start_no_openmp_team() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fields = proc.stdout.strip().split(" ", 2)
    before, after = int(fields[0]), int(fields[1])
    seen, main = fields[2].rsplit(" ", 1)
    assert seen == "[1, 1]"  # each share on one thread
    assert int(main) == 2  # the process's own setting is untouched
    assert after == before + 2  # the pool's two threads, and no OpenMP team beside them
