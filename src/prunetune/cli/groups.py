"""``prunetune groups``: a dry run of the prunable groups and the widths a ratio or budget gives."""

from __future__ import annotations

import argparse

from prunetune.cli._common import (
    add_allow_code,
    add_budget,
    add_plugins,
    load_cli_plugins,
    add_format,
    fraction,
    int_in,
    millions,
    print_json,
    print_table,
    prune_ratio,
)

MAX_INPUT_SIZE = 1024  # a dry run traces one input; larger sides take minutes and gigabytes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("groups", help="list prunable groups, channels, kept channels, MACs (no weights needed)",
                       description="Prunable groups of a model and what a prune ratio or MACs budget keeps. "
                                   "A group's 'MACs share' is the part of the dense MACs spent in the layers "
                                   "that read or write its channels; a layer between two groups counts for "
                                   "both, so the shares add up to more than 100%.")
    p.add_argument("--model", required=True, help="model name (prunetune.list_models()), tv:NAME or pkg.mod:fn")
    p.add_argument("--num-classes", type=int_in(1), default=10, help="classes of the model's output layer")
    p.add_argument("--in-channels", type=int_in(1), default=3, help="input channels (1: grey images, 3: RGB)")
    p.add_argument("--input-size", type=int_in(1, MAX_INPUT_SIZE, why=" (pixels per side of the traced input)"),
                   default=None, help=f"input side, at most {MAX_INPUT_SIZE} (default: the model's, e.g. 32)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--ratio", type=prune_ratio, default=None, help="one prune ratio for every group")
    add_budget(how)
    p.add_argument("--min-keep", type=int_in(1), default=1, help="channels every group keeps at least")
    p.add_argument("--round-to", default=None, metavar="N|cpu|gpu",
                   help="round kept channels up to a multiple of N, or of a hardware preset (cpu, gpu)")
    p.add_argument("--max-ratio", type=fraction, default=None, metavar="F",
                   help="the largest share of one group an allocation may prune (default: the recipe default, 0.8)")
    add_allow_code(p)
    add_plugins(p)
    add_format(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunetune.exceptions import ConfigError
    from prunetune.models import create_model, default_input_size
    from prunetune.pruning.allocation import DEFAULT_MAX_RATIO, KeepRule, keep_for_budget, keep_from_ratios
    from prunetune.pruning.groups import find_groups
    from prunetune.pruning.macs import analytic_cost

    load_cli_plugins(args)  # a model a plugin registers

    if args.max_ratio is not None and args.ratio is None and args.macs_budget is None:  # it was ignored
        raise ConfigError(f"--max-ratio {args.max_ratio:g} caps what --ratio or --macs-budget prunes; give one of them")
    model = create_model(args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                         allow_code=args.allow_code)
    size = args.input_size or default_input_size(args.model)
    groups = find_groups(model, (args.in_channels, size, size))
    from prunetune.pruning.rounding import resolve_round_to

    smallest = min(groups, key=lambda g: g.channels, default=None)
    if smallest is not None and args.min_keep > smallest.channels:
        raise ConfigError(f"--min-keep {args.min_keep} is more than group {smallest.name!r} has "
                          f"({smallest.channels} channels); use at most {smallest.channels}")
    rule = KeepRule(args.min_keep, resolve_round_to(args.round_to, what="--round-to"),
                    DEFAULT_MAX_RATIO if args.max_ratio is None else args.max_ratio)
    if args.macs_budget is not None:
        keep = keep_for_budget(groups, args.macs_budget, rule=rule)
    else:
        keep = keep_from_ratios(groups, {}, default=args.ratio or 0.0, rule=rule)
    dense, pruned = analytic_cost(groups), analytic_cost(groups, keep)
    if args.format == "json":
        print_json({"groups": [{"name": g.name, "channels": g.channels, "kept": keep[g.name],
                                "macs_share": round(g.macs_share, 6), "analytic": g.analytic} for g in groups],
                    "dense": dense.as_dict(), "pruned": pruned.as_dict(),
                    "counted": list(groups.counted), "skipped": list(groups.skipped)})
        return 0
    rows = [(g.name, g.channels, keep[g.name], f"{100 * g.macs_share:.1f}%", "yes" if g.analytic else "counted*")
            for g in groups]
    print_table(rows, ("group", "channels", "kept", "MACs share", "analytic"))
    print(f"\n{len(groups)} groups; dense {millions(dense.macs)} MACs, {millions(dense.params)} params; "
          f"pruned {millions(pruned.macs)} MACs ({100 * pruned.macs / dense.macs:.1f}%), "
          f"{millions(pruned.params)} params ({100 * pruned.params / dense.params:.1f}%)")
    _notes(groups)
    return 0


def _notes(groups) -> None:
    """Why costs are counted (groups marked ``counted*``) and which groups are left unpruned."""
    if groups.counted:
        more = f"; and {len(groups.counted) - 3} more" if len(groups.counted) > 3 else ""
        print(f"* not computable from layer shapes, so MACs/params of this model are counted on pruned copies "
              f"(exact, slower): {'; '.join(groups.counted[:3])}{more}")
    for reason in groups.skipped:
        print(f"not pruned: {reason}")
