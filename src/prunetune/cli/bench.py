"""``prunetune bench``: measured latency of the dense and the pruned network, next to MACs and params."""

from __future__ import annotations

import argparse
import logging
import math
import os

from prunetune.cli._common import (
    add_allow_code,
    add_format,
    add_plugins,
    load_cli_plugins,
    millions,
    need_file,
    print_json,
    print_table,
)

log = logging.getLogger("prunetune")
NOISY = 0.5  # an IQR above half the median: the timings say little about the speed-up


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure dense vs pruned latency next to MACs and params",
                       description="Median latency of repeated forward passes (torch.utils.benchmark, after a "
                       "warm-up) of the pruned model and its dense architecture. Timings depend on the machine and "
                       "its load: compare the ratios of one run.")
    p.add_argument("--model", required=True, help="pruned model file written by `prunetune prune --out`")
    p.add_argument("--dense", default=None, help="dense checkpoint (state dict); default: the dense architecture "
                   "with its initial weights (latency does not depend on the weights)")
    p.add_argument("--batch", type=_batches, default=(1, 64), help="batch sizes, comma-separated (default 1,64)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's current setting)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per measurement")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or the CPU time of the timing thread (needs --threads 1; steadier on a "
                   "machine shared with other work)")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                   help="time the models with their batch norms (default: folded, as `deploy` writes them)")
    add_allow_code(p)
    add_plugins(p)
    add_format(p)
    p.set_defaults(func=run)


def _batches(text: str) -> tuple[int, ...]:
    """Batch sizes like ``1,64``: every comma-separated field a positive integer, none twice."""
    values = []
    for field in text.split(","):
        try:
            value = int(field.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected positive batch sizes like 1,64, got {text!r} ({field.strip()!r} is not a whole number)"
            ) from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected positive batch sizes like 1,64, got {text!r} ({value} < 1)")
        if value in values:
            raise argparse.ArgumentTypeError(f"expected batch sizes like 1,64, got {text!r} ({value} twice)")
        values.append(value)
    return tuple(values)


def run(args: argparse.Namespace) -> int:
    from prunetune.recipes.checkpoint import load_checkpoint
    from prunetune.recipes.pruned_file import dense_architecture, load_pruned, read_pruned_plan
    from prunetune.deployment.bench import compare, speedups
    from prunetune.exceptions import ConfigError
    from prunetune._machine import check_input_fits

    load_cli_plugins(args)  # a model (or other entry) a plugin registers

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    cpus = os.cpu_count()
    if args.threads is not None and cpus and args.threads > cpus:  # torch's thread pool crashed (SIGSEGV) at 100000
        raise ConfigError(f"--threads {args.threads} is more than this machine's {cpus} CPUs; give at most {cpus}")
    if not math.isfinite(args.min_time) or args.min_time <= 0:
        raise ConfigError(f"--min-time must be a number of seconds > 0, got {args.min_time:g}")
    path = need_file(args.model, "pruned model", "pruned model file (.pt)")
    plan = read_pruned_plan(path)
    for batch in args.batch:
        check_input_fits(batch, plan.input_shape, f"--batch {batch}", "give smaller batch sizes")
    pruned = load_pruned(path, allow_code=args.allow_code)
    dense = dense_architecture(path, allow_code=args.allow_code)
    if args.dense:
        load_checkpoint(dense, need_file(args.dense, "dense checkpoint", "state-dict file (.pt)"),
                        model_name="the pruned model's dense architecture")
    rows = compare({"dense": dense, "pruned": pruned}, tuple(plan.input_shape), batches=args.batch,
                   threads=args.threads, fold_bn=args.fold_bn, min_run_time=args.min_time,
                   clock=args.clock)
    ratio = speedups(rows)
    noisy = [r for r in rows if r.iqr_ms > NOISY * r.median_ms]
    if noisy:  # a loaded machine: the medians (and so the speed-ups) may be off by far more than their spread
        worst = max(noisy, key=lambda r: r.iqr_ms / r.median_ms)
        log.warning("the timings are noisy (%s at batch %d: IQR %.3g ms around a median of %.3g ms), so the "
                    "speed-ups are unreliable; another process is busy? use --threads 1 --clock cpu, or a longer "
                    "--min-time", worst.model, worst.batch, worst.iqr_ms, worst.median_ms)
    if args.format == "json":
        print_json({"input_shape": list(plan.input_shape), "fold_bn": args.fold_bn,
                    "rows": [{**r.as_dict(), "speedup": ratio.get((r.model, r.batch))} for r in rows]})
        return 0
    table = [(r.model, r.batch, r.threads, millions(r.macs), millions(r.params), f"{r.median_ms:.3f}",
              f"{r.iqr_ms:.3f}", f"{ratio[(r.model, r.batch)]:.2f}x" if (r.model, r.batch) in ratio else "")
             for r in rows]
    print_table(table, ("model", "batch", "threads", "MACs", "params", "median ms", "IQR ms", "speed-up"))
    print(f"\ninput (N, {', '.join(map(str, plan.input_shape))}); BN {'folded' if args.fold_bn else 'kept'}; "
          f"{args.clock} clock; "
          f"pruned/dense MACs {rows[1].macs / rows[0].macs:.3f}")
    return 0

