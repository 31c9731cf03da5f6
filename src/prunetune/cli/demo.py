"""``prunetune demo``: a small real search on the bundled digits, start to finish, in minutes on a CPU.

Every demo is its own MLflow experiment (``demo-YYYYmmdd-HHMMSS``) in the one store of ``--out-dir``,
and writes its files (``best.yaml``, ``front.png``, ``front.html``) into a folder of that name, so
running it again keeps what the earlier demos wrote and never replaces a file.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from prunetune._text import command_line, masked_url
from prunetune.cli._common import fraction

log = logging.getLogger("prunetune")


def demo_config_path() -> Path:
    """The bundled demo search config (``prunetune/configs/demo.yaml``)."""
    import prunetune

    return Path(prunetune.__file__).parent / "configs" / "demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a small real search on the bundled digits data (minutes on a CPU)",
                       description="Train a small CIFAR-style ResNet-20 on scikit-learn's digits (1x16x16; cached), "
                       "score it once, search pruning recipes under a MACs budget with Ray Tune + Optuna on this "
                       "machine, log every trial to MLflow (sqlite in --out-dir), print the Pareto front and "
                       "export the best recipe.")
    p.add_argument("--trials", type=int, default=12, help="trials in all")
    p.add_argument("--concurrency", type=int, default=2, help="trials at a time")
    p.add_argument("--macs-budget", "--budget", dest="macs_budget", type=fraction, default=0.5, metavar="F",
                   help="keep at most this fraction of the dense MACs")
    p.add_argument("--out-dir", default="prunetune-demo",
                   help="where mlflow.db and the Ray results go; each demo's best.yaml, front.png and front.html "
                   "go into a new folder in it named after its experiment (demo-YYYYmmdd-HHMMSS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunetune.cli.live import install, uninstall
    from prunetune.cli.search import report
    from prunetune.search import load_search_config, run_search
    from prunetune.tracking import export_trial, load_search, plot_front, ui_command
    from prunetune.tracking.store import client

    from prunetune._paths import check_output_dir
    from prunetune.exceptions import ConfigError

    t0 = time.perf_counter()
    out = check_output_dir(args.out_dir, "--out-dir").resolve()
    experiment = time.strftime("demo-%Y%m%d-%H%M%S")
    # this demo's own files, in a new folder named after its experiment: a re-run never replaces them
    mine = out / experiment
    if mine.exists():
        raise ConfigError(f"--out-dir {str(out)!r} already holds a demo named {experiment!r} (started in this same "
                          "second?); run it again in a moment, or choose another --out-dir")
    files = {name: mine / name for name in ("best.yaml", "front.png", "front.html")}
    config = load_search_config(demo_config_path(), {  # checked before the folder is made
        "experiment": experiment, "trials": args.trials, "concurrency": args.concurrency,
        "macs_budget": args.macs_budget, "tracking_uri": str(out / "mlflow.db"), "storage_path": str(out / "runs")})
    out.mkdir(parents=True, exist_ok=True)
    log.info("prunetune demo: ResNet-20 on digits 1x16x16, %d trials (%d at a time), MACs budget %.0f%%, output in %s",
             args.trials, args.concurrency, 100 * args.macs_budget, mine)
    live = install(getattr(args, "quiet", False))
    try:
        outcome = run_search(config, resume=False, show_progress=live is None,
                             progress=live.update if live else None)
    finally:
        uninstall(live)
    code = report(outcome)
    if code:
        return code
    records = load_search(outcome.tracking_uri, experiment, parent_run_id=outcome.parent_run_id)
    record, best = export_trial(records, files["best.yaml"], pick="max-acc")
    plot = plot_front(records, files["front.png"], picked=record.run_id)
    page = plot_front(records, files["front.html"], picked=record.run_id)
    client(records.uri).log_artifact(records.parent_run_id, str(plot))
    print(f"\nbest within budget: trial {record.name}, val acc {record.accuracy:.4f}, "
          f"MACs {100 * record.macs_ratio:.1f}% of dense -> {best}")
    print(f"plot: {plot} (interactive: {page})")
    replay = command_line("prunetune", "prune", ("--recipe", str(best)), ("--out", str(mine / "pruned.pt")))
    print(f"replay it: {replay}")
    print(f"browse the runs: {ui_command(outcome.tracking_uri)}   (then open http://127.0.0.1:5000)")
    print(f"the Optuna study: optuna-dashboard {masked_url(outcome.study_storage or '')}")
    print(f"demo finished in {time.perf_counter() - t0:.0f}s")
    return 0
