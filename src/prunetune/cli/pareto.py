"""``prunetune pareto``: the non-dominated trials of a search (accuracy ↑ vs MACs ↓), table and plot."""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any

from prunetune.cli._common import add_format, fraction, print_json, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pareto", help="the Pareto front of a search (accuracy vs MACs), table and plot",
                       description="Finished trials of the latest search in an MLflow experiment that no other "
                       "trial beats on both validation accuracy and MACs. Identical points are all listed.")
    add_tracking_args(p)
    p.add_argument("--all", action="store_true", help="list every finished trial, with a front column")
    p.add_argument("--plot", metavar="PATH", default=None,
                   help="save the plot here (front.png, .pdf, .svg, ...; front.html: interactive) and log it "
                   "to the search's parent run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.add_argument("--budget", type=fraction, default=None, metavar="F",
                   help="MACs fraction marked on the plot (default: the search's budget)")
    add_format(p, ("table", "json", "csv"))
    p.set_defaults(func=run)


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help="the MLflow experiment (the search's --experiment)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default sqlite:///mlflow.db in the working directory)")
    p.add_argument("--search-run", default=None, metavar="RUN_ID",
                   help="a search's parent run id (default: the latest search in the experiment)")


def load(args: argparse.Namespace) -> Any:
    from prunetune.tracking import load_search, resolve_tracking_uri

    return load_search(resolve_tracking_uri(args.tracking_uri), args.experiment, parent_run_id=args.search_run)


def run(args: argparse.Namespace) -> int:
    from prunetune.tracking import front_mask

    if args.plot is not None:  # --plot "" too: refused there, not skipped without a word
        check_plot_path(args.plot, overwrite=args.overwrite)
    records = load(args)
    mask = front_mask([t.accuracy for t in records.trials], [t.macs for t in records.trials])
    rows = [dict(t.as_dict(), front=bool(on)) for t, on in zip(records.trials, mask) if args.all or on]
    if args.plot:
        _plot(records, args.plot, args.budget, overwrite=args.overwrite)
    if args.format == "json":
        print_json({"experiment": records.experiment, "search_run": records.parent_run_id, "budget": records.budget,
                    "dense": records.dense, "counts": records.counts, "trials": rows})
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    else:
        print_front(records, rows, show_front=args.all)
        print(f"\n{int(mask.sum())} of {len(records.trials)} finished trials on the front"
              f" ({_counts(records.counts)}); export one with `{export_command(args, records)}`")
    return 0


def export_command(args: argparse.Namespace, records: Any) -> str:
    """The export command for this search: the store (a password shown as ``***``) and search run as
    given here, and the plugin modules the search imported (its recipes name their entries; export
    needs them, with the opt-in); every word quoted for the shell, and a value that starts with ``-``
    joined to its flag (``--experiment=-x``), which argparse would take for a flag."""
    from prunetune._plugins import plugin_options
    from prunetune._text import command_line, masked_url

    parts: list[str | tuple[str, str]] = ["prunetune", "export", ("--experiment", records.experiment)]
    if args.tracking_uri is not None:
        parts.append(("--tracking-uri", masked_url(args.tracking_uri)))
    if args.search_run is not None:
        parts.append(("--search-run", args.search_run))
    return command_line(*parts, *plugin_options(records.plugins), "--out", "best.yaml")


def check_plot_path(path: str, *, overwrite: bool = False) -> None:
    """Refuse a plot path matplotlib cannot write (unknown format), that cannot be created, or that
    exists (unless ``overwrite``), before any work."""
    from prunetune.tracking.plot import check_plot_path as check

    check(path, overwrite=overwrite)


def print_front(records: Any, rows: list[dict[str, Any]], *, show_front: bool = False) -> None:
    """The table of trials: accuracy (val, test), MACs and params (absolute and % of dense)."""
    dense_params = records.dense.get("params")
    headers = ["trial", "val acc", "test acc", "MACs", "MACs %", "params", "params %"]
    table = []
    for r in sorted(rows, key=lambda r: r["macs"]):
        params_pct = r.get("params_ratio") if r.get("params_ratio") is not None else (
            r["params"] / dense_params if dense_params else float("nan"))
        row = [r.get("label") or r["trial_id"], f"{r['accuracy']:.4f}", _maybe(r.get("test_accuracy")), f"{r['macs'] / 1e6:.2f}M",
               f"{100 * r['macs_ratio']:.1f}%", f"{r['params'] / 1e6:.3f}M", f"{100 * params_pct:.1f}%"]
        if show_front:
            row.append("*" if r["front"] else "")
        table.append(row)
    print_table(table, headers + (["front"] if show_front else []))
    if records.dense:
        d = records.dense
        print(f"dense: test acc {d.get('accuracy', float('nan')):.4f}, {d.get('macs', 0) / 1e6:.2f}M MACs, "
              f"{d.get('params', 0) / 1e6:.3f}M params; budget {_pct(records.budget)} of dense MACs")


def _plot(records: Any, path: str, budget: float | None, *, overwrite: bool = False) -> None:
    import logging

    from prunetune.tracking import plot_front
    from prunetune.tracking.store import client

    saved = plot_front(records, path, budget=budget, overwrite=overwrite)
    client(records.uri).log_artifact(records.parent_run_id, str(saved))
    logging.getLogger("prunetune").info("plot saved to %s and logged to search run %s", saved, records.parent_run_id)


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.0f}%"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
