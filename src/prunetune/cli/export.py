"""``prunetune export``: write a search trial's recipe with its plan, ready for ``prunetune prune``."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunetune._text import command_line
from prunetune.cli._common import add_allow_code, add_format, add_plugins, fraction, load_cli_plugins, print_json
from prunetune.cli.pareto import add_tracking_args, load


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the best trial of a search as a recipe carrying its plan",
                       description="Pick a finished trial (max-acc: the most accurate within the budget; knee: "
                       "the knee of the front within the budget; or --trial ID) and write its recipe with its plan inline. "
                       "`prunetune prune --recipe OUT` rebuilds exactly the network the trial measured.")
    add_tracking_args(p)
    p.add_argument("--out", required=True, help="the recipe file to write (YAML)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pick", choices=("max-acc", "knee"), default="max-acc",
                       help="how to choose the trial: max-acc (most accurate within the budget, the default) or knee")
    which.add_argument("--trial", default=None, metavar="ID",
                       help="export this finished trial instead: its name (t07, as the MLflow run is named), "
                       "its Ray trial id or its MLflow run id")
    p.add_argument("--budget", type=fraction, default=None, metavar="F",
                   help="only trials within this MACs fraction (default: the search's budget)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_plugins(p)
    add_allow_code(p)
    add_format(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunetune._paths import check_output_file
    from prunetune.tracking import export_trial

    check_output_file(args.out, "--out", overwrite=args.overwrite)
    load_cli_plugins(args)  # a search with plugins: its recipes name their entries
    records = load(args)
    record, path = export_trial(records, args.out, pick=args.pick, budget=args.budget, overwrite=args.overwrite,
                                trial=args.trial)
    if args.format == "json":
        print_json({"out": str(path), "trial": record.as_dict(), "search_run": records.parent_run_id})
        return 0
    print(f"exported trial {record.name} ({record.trial_id}; val acc {record.accuracy:.4f}, test acc "
          f"{record.test_accuracy if record.test_accuracy is not None else float('nan'):.4f}, MACs "
          f"{100 * record.macs_ratio:.1f}% of dense, {record.macs / 1e6:.2f}M) to {path}")
    out = Path(path).with_suffix(".pt")  # beside the recipe, named after it: two exports, two models
    print(f"rebuild it with: {command_line('prunetune', 'prune', ('--recipe', str(path)), ('--out', str(out)))}"
          f"{_code_flags(path)}")
    return 0


def _code_flags(path) -> str:
    """The flags the replay of the exported recipe at ``path`` needs (:func:`prunetune._plugins.replay_flags`:
    the plugin modules of the entries it names, ``--allow-code`` with them or for the user's own model)."""
    from prunetune._plugins import replay_flags
    from prunetune._yaml import load_yaml_file

    return replay_flags(load_yaml_file(path, "the exported recipe"))
