"""``prunetune search``: Ray Tune + Optuna over pruning recipes under a MACs budget, logged to MLflow."""

from __future__ import annotations

import argparse
import logging
import shlex

from prunetune._text import command_line, masked_url
from prunetune.cli._common import (
    add_allow_code,
    add_budget,
    add_format,
    add_plugins,
    need_file,
    print_json,
)

log = logging.getLogger("prunetune")
INTERRUPTED = 130


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search pruning recipes under a MACs budget (Ray Tune + Optuna, MLflow)",
                       description="Every trial samples a recipe from the config's space, projects it onto a MACs "
                       "target within the budget, fine-tunes and evaluates it; accuracy and MACs are optimised "
                       "together. Flags override the config file. An interrupted search continues when the same "
                       "command runs again.")
    p.add_argument("--config", required=True, help="search config YAML (base recipe, space, settings)")
    add_budget(p)
    p.add_argument("--trials", type=int, default=None, help="trials in all (config: trials)")
    p.add_argument("--experiment", default=None, help="search / MLflow experiment name (default: config file name)")
    p.add_argument("--concurrency", type=int, default=None, help="trials at a time (config: concurrency)")
    p.add_argument("--sampler", choices=("tpe", "nsga2"), default=None,
                   help="Optuna sampler of the fine-tune study: tpe (multivariate TPE) or nsga2 (config: sampler)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (config: seed)")
    p.add_argument("--cpus-per-trial", type=float, default=None, metavar="N",
                   help="CPUs Ray reserves for each trial, and the torch threads a trial (and its replay) uses "
                   "(config: cpus_per_trial, default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=None, metavar="N",
                   help="GPUs per trial; fractions share a GPU, e.g. 0.5 (config: gpus_per_trial, default 0)")
    p.add_argument("--time-budget-s", type=float, default=None, metavar="S",
                   help="stop starting and running trials after this many seconds (config: time_budget_s)")
    p.add_argument("--asha", action=argparse.BooleanOptionalAction, default=None,
                   help="early-stop weak trials (ASHA on validation accuracy per fine-tune epoch)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search (an error if there is none; without it, resuming is automatic)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="run on an existing Ray cluster: auto, host:port or ray://host:port (default: RAY_ADDRESS, "
                   "else a local Ray on 127.0.0.1)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow store: sqlite:///file.db or http://host:port (default sqlite:///mlflow.db here)")
    p.add_argument("--storage-path", default=None, metavar="DIR",
                   help="Ray results and resume state (default ./prunetune-runs)")
    p.add_argument("--study-storage", default=None, metavar="URL",
                   help="the Optuna study: an RDB URL or an sqlite file (default: <MLflow db stem>-optuna.db beside "
                   "an sqlite MLflow store, else <storage-path>/optuna.db); open it with optuna-dashboard URL")
    add_allow_code(p)
    add_plugins(p, config=True)
    add_format(p)
    p.set_defaults(func=run)


def overrides(args: argparse.Namespace) -> dict:
    keys = ("macs_budget", "trials", "experiment", "concurrency", "sampler", "seed", "cpus_per_trial",
            "gpus_per_trial", "time_budget_s", "asha", "ray_address", "tracking_uri", "storage_path", "study_storage")
    given = {k: getattr(args, k) for k in keys}
    given["allow_code"] = True if args.allow_code else None  # the flag can grant, never revoke, the config's
    given["plugins"] = args.plugin
    return given


def run(args: argparse.Namespace) -> int:
    from prunetune.cli.live import install, uninstall
    from prunetune.search.progress import Progress

    live = install(args.quiet)
    progress = Progress(live.update if live else None, hold=True)  # lines once the input passed its checks
    progress.start_ticker()
    progress.phase("loading", f"search config {args.config}")
    try:
        from prunetune.search import load_search_config, run_search

        config = load_search_config(need_file(args.config, "search config"), overrides(args))
        try:
            outcome = run_search(config, resume=True if args.resume else None, progress=progress,
                                 show_progress=False if live else args.format == "table" and not args.quiet)
        except KeyboardInterrupt:  # in scoring or screening (Tune reports a stop in its fit): what is done stays
            log.warning("search %s was interrupted; run the same command again to continue",
                        config.settings.experiment)
            raise
    finally:
        progress.close("ended")  # no-op after the search closed it; stops the ticker after an early error
        uninstall(live)
    return report(outcome, json_output=args.format == "json", plugins=config.settings.plugins)


def report(outcome, *, json_output: bool = False, plugins: tuple[str, ...] = ()) -> int:
    """Print how a search ended and its front; 130 when it was interrupted, 1 when no trial finished and
    one failed. ``plugins``: the search's plugin modules, which the export command it suggests needs too."""
    from prunetune.cli.pareto import print_front
    from prunetune.exceptions import TrackingError
    from prunetune.tracking import front_mask, load_search, ui_command

    try:
        records = load_search(outcome.tracking_uri, outcome.experiment, parent_run_id=outcome.parent_run_id)
    except TrackingError:
        records = None
    if json_output:
        trials = [t.as_dict() for t in records.trials] if records else []
        print_json({"experiment": outcome.experiment, "status": outcome.status, "counts": outcome.counts,
                    "search_run": outcome.parent_run_id, "tracking_uri": masked_url(outcome.tracking_uri),
                    "storage": str(outcome.experiment_dir), "seconds": outcome.seconds, "trials": trials,
                    "study_storage": masked_url(outcome.study_storage or ""), "study_name": outcome.study_name,
                    "error": outcome.error})
    elif records is not None:
        mask = front_mask([t.accuracy for t in records.trials], [t.macs for t in records.trials])
        print(f"\nPareto front of {outcome.experiment} ({int(mask.sum())} of {len(records.trials)} finished trials):")
        print_front(records, [dict(t.as_dict(), front=True) for t, on in zip(records.trials, mask) if on])
        experiment, store = ("--experiment", outcome.experiment), _uri_option(outcome.tracking_uri)
        print(f"\nnext: {command_line('prunetune', 'pareto', experiment, '--plot', 'front.png', *store)}")
        from prunetune._plugins import plugin_options

        code = plugin_options(plugins)
        print(f"      {command_line('prunetune', 'export', experiment, '--out', 'best.yaml', *store, *code)}")
        if outcome.tracking_uri.startswith("sqlite"):
            print(f"      {ui_command(outcome.tracking_uri)}")
        print(f"      optuna-dashboard {shlex.quote(masked_url(outcome.study_storage or ''))}   "
              f"(the Optuna study {outcome.study_name!r})")
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(outcome.counts.items())) or "no trial run"
    if outcome.failed:
        log.error("search %s: no trial finished (%s); the first error: %s. Fix it and start again with another "
                  "--experiment", outcome.experiment, counts, outcome.error or "unknown")
        return 1
    if outcome.interrupted:
        log.warning("search %s was interrupted (%s); run the same command again (or add --resume) to continue",
                    outcome.experiment, counts)
        return INTERRUPTED
    return 0


def _uri_option(uri: str) -> list[tuple[str, str]]:
    """``--tracking-uri`` (a password masked) unless ``uri`` is the store a command finds by default."""
    import os

    from prunetune.tracking.store import resolve_tracking_uri

    return [] if uri == resolve_tracking_uri(None, cwd=os.getcwd()) else [("--tracking-uri", masked_url(uri))]
