"""GPU linear algebra: the batched factorisations the criteria run, on the GPU and on the host.

Every activation criterion that factorises (``chip``: one ``eigh`` of each image's c×c Gram matrix;
``hrank``: one Cholesky of each h×w map's Gram matrix, ``eigvalsh`` of the maps it does not
certify; ``cmi``: one ``eigvalsh`` of a samples×samples joint per candidate and step, and of its
class blocks) hands a batch of small matrices to :func:`torch.linalg` through
:func:`prunetune.pruning.criteria._linalg.batched_linalg`. On CUDA torch solves such a batch with
cuSOLVER; on the CPU ``batched_linalg`` splits it across torch's threads. This times, for the
shapes ResNet-56 (512 images in batches of 128) and the ``cmi`` defaults (256 samples, 10 classes)
produce, each call on the GPU against the same call routed through the host (copy to the CPU,
solve split across threads, copy back), and checks that both give the same values.

Usage (on a machine with a GPU; ``--device cpu`` only checks that the script runs)::

    python benchmarks/gpu_linalg.py [--repeats 5] [--threads N]

Benchmarks are not tests; nothing in the test suite runs this.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from prunetune.pruning.criteria import _cusolver
from prunetune.pruning.criteria._linalg import batched_linalg

# (label, op, batch, n): the batches one calibration batch of 128 images (or one cmi step) hands over
CASES: list[tuple[str, str, int, int]] = [
    ("chip 16 ch", "eigh", 128, 16),
    ("chip 32 ch", "eigh", 128, 32),
    ("chip 64 ch", "eigh", 128, 64),
    ("hrank 32×32 maps", "cholesky", 128 * 16, 32),
    ("hrank 16×16 maps", "cholesky", 128 * 32, 16),
    ("hrank 8×8 maps", "cholesky", 128 * 64, 8),
    ("hrank uncertified 16×16", "eigvalsh", 128 * 16, 16),
    ("cmi step, 64 candidates", "eigvalsh", 64, 256),
    ("cmi step, 16 candidates", "eigvalsh", 16, 256),
    ("cmi step, 1 candidate", "eigvalsh", 1, 256),
    ("cmi step, 64 candidates, 128 samples", "eigvalsh", 64, 128),
    ("cmi class blocks, 64 candidates", "eigvalsh", 64 * 10, 26),
]

OPS: dict[str, Callable[[Tensor], Tensor]] = {
    "eigh": lambda x: torch.linalg.eigh(x)[0],
    "eigvalsh": torch.linalg.eigvalsh,
    "cholesky": lambda x: torch.linalg.cholesky_ex(x).L,
}


def spd_batch(batch: int, n: int, device: torch.device, gen: torch.Generator) -> Tensor:
    """Unit-trace PSD matrices like the criteria's Gram matrices (rank ≥ n, float64)."""
    f = torch.randn(batch, n, 2 * n, generator=gen, dtype=torch.float64)
    g = f @ f.transpose(1, 2)
    return (g / torch.diagonal(g, dim1=1, dim2=2).sum(-1)[:, None, None]).to(device)


def timed(fn: Callable[[], Tensor], device: torch.device, repeats: int) -> tuple[float, Tensor]:
    out = fn()  # warm-up (cuSOLVER handles, workspaces, thread pool)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    print("# GPU linear algebra: device call against the host route\n")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device} ({gpu})\n")
    print("| case | op | batch × n×n | torch on device ms | host route ms | host / device | max abs diff "
          "| cuSOLVER batched ms | torch / batched | batched: max abs diff (eigenvalues / reconstruction) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for label, op, batch, n in CASES:
        x = spd_batch(batch, n, device, gen)
        fn = OPS[op]
        dev_s, dev_out = timed(lambda: fn(x), device, args.repeats)  # noqa: B023
        host_s, host_out = timed(lambda: batched_linalg(fn, x.cpu()).to(device), device, args.repeats)  # noqa: B023
        diff = float((dev_out - host_out).abs().max())
        batched = "| — | — | — |"
        if op != "cholesky" and _cusolver.available(x):
            vectors = op == "eigh"
            bat_s, bat_out = timed(lambda: _cusolver.eigh(x, vectors=vectors), device, args.repeats)  # noqa: B023
            if bat_out is None:
                batched = "| refused | — | — |"
            else:
                lam = bat_out.eigenvalues if vectors else bat_out
                err = f"{float((lam - dev_out).abs().max()):.1e}"
                if vectors:
                    vec = bat_out.eigenvectors
                    rebuilt = vec @ torch.diag_embed(lam) @ vec.transpose(-2, -1)
                    err += f" / {float((rebuilt - x).abs().max()):.1e}"
                batched = f"| {bat_s * 1e3:.2f} | {dev_s / bat_s:.2f} | {err} |"
        print(f"| {label} | {op} | {batch} × {n}×{n} | {dev_s * 1e3:.2f} | {host_s * 1e3:.2f} | "
              f"{host_s / dev_s:.2f} | {diff:.1e} {batched}", flush=True)


if __name__ == "__main__":
    main()
