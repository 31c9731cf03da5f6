"""Where a calibration pass spends its time: torch's profiler over ``benchmarks/scoring.py``'s setup.

ResNet-56, ``--images`` random images, the calibration pass with the criteria named in
``--criteria`` (default: every forward-only activation criterion), once to warm up, then once
under ``torch.profiler``. Prints the operators that took the most time (self time on the device
when it is CUDA, on the CPU otherwise) as a markdown table, and the pass's wall time.

Usage::

    python benchmarks/profile_scoring.py --criteria chip,hrank --device cuda --images 512
    python benchmarks/profile_scoring.py --threads 1 --rows 25

Benchmarks are not tests; nothing in the test suite runs this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scoring  # noqa: E402  (this folder's benchmark: its model, data and criteria)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--criteria", default="", help="comma-separated labels of scoring.py's rows (default: all forward-only)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=20, help="operators listed (default 20)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    scoring.DEVICE = scoring.resolve_device(args.device)
    build_args = argparse.Namespace(seed=0, data="randn", images=args.images, batch_size=args.batch_size)
    model, groups, batches = scoring.build(build_args)
    crits = scoring.activation_criteria()
    labels = [s.strip() for s in args.criteria.split(",") if s.strip()] or [
        lab for lab, v in crits.items() if v[0] not in ("cmi", "taylor")]
    unknown = [lab for lab in labels if lab not in crits]
    if unknown:
        raise SystemExit(f"--criteria: unknown {', '.join(unknown)}; choose from {', '.join(crits)}")
    params = {crits[lab][0]: crits[lab][1] for lab in labels}

    def run() -> None:
        scoring.run_calibration(model, groups, batches, params)

    run()  # warm-up: kernels, cuSOLVER handles, the thread pool
    wall = scoring.timed(run)
    cuda = scoring.DEVICE.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run()
        scoring.sync()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"  # microseconds
    print(f"# calibration profile: {', '.join(labels)}\n")
    print(f"{scoring.machine_line()}\n")
    print(f"ResNet-56, {args.images} images in batches of {args.batch_size}; pass wall time {wall:.3f} s "
          f"(unprofiled)\n")
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)
    total = sum(getattr(e, key, 0.0) for e in events) or 1.0
    side = "device" if cuda else "CPU"
    print(f"| operator | calls | self {side} ms | share | self CPU ms |")
    print("|---|---:|---:|---:|---:|")
    for e in events[: args.rows]:
        t = getattr(e, key, 0.0)
        print(f"| `{e.key[:70]}` | {e.count} | {t / 1e3:.1f} | {t / total:.1%} | {e.self_cpu_time_total / 1e3:.1f} |")
    print(f"\ntotal self {side} time {total / 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
