"""``prunetune score``: compute (or load cached) scores for a recipe's criteria, per-group summary."""

from __future__ import annotations

import argparse

from prunetune.cli._common import (
    add_allow_code,
    add_format,
    add_plugins,
    load_cli_plugins,
    need_file,
    print_json,
    print_table,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="compute or load cached scores for a recipe's criteria",
                       description="Score every group with the recipe's criteria (one calibration pass), "
                       "cached by a fingerprint of weights, calibration set, criteria and version.")
    p.add_argument("--recipe", required=True, help="recipe YAML")
    p.add_argument("--criteria", default=None, help="comma-separated criteria instead of the recipe's")
    add_allow_code(p)
    add_plugins(p)
    add_format(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from prunetune.exceptions import ConfigError
    from prunetune.recipes.pipeline import prepare, score_table
    from prunetune.recipes.planning import recipe_criteria
    from prunetune.pruning.criteria import CRITERIA
    from prunetune.recipes.schema import Recipe

    load_cli_plugins(args)  # before the recipe: it may name their entries
    recipe = Recipe.from_yaml(need_file(args.recipe, "recipe"), allow_code=args.allow_code)
    criteria = recipe_criteria(recipe)
    if args.criteria is not None:
        names = [name.strip() for name in args.criteria.split(",")]
        if not all(names):
            what = "names no criterion" if not any(names) else "has an empty name (commas in a row, or one at an end)"
            raise ConfigError(f"--criteria {args.criteria!r} {what}; give comma-separated names, "
                              f"e.g. --criteria l1,fpgm (known: {', '.join(CRITERIA.names())})")
        criteria = {name: CRITERIA.get(name).resolve(None) for name in names}
    base = prepare(recipe, show_progress=args.format == "table")
    t0 = time.perf_counter()
    table = score_table(base, criteria, show_progress=args.format == "table")
    seconds = time.perf_counter() - t0
    summary = {c: {g: _stats(s) for g, s in per.items()} for c, per in table.scores.items()}
    if args.format == "json":
        print_json({"cached": table.all_cached, "fingerprint": table.fingerprint, "seconds": seconds,
                    "criteria": {c: {"cached": table.cached[c], "fingerprint": table.fingerprints[c]} for c in criteria},
                    "scores": summary})
        return 0
    for crit, per in summary.items():
        print(f"\n{crit} ({'loaded from cache' if table.cached[crit] else 'computed'})")
        print_table([(g, s["channels"], s["min"], s["mean"], s["max"]) for g, s in per.items()],
                    ("group", "channels", "min", "mean", "max"))
    print(f"\n{'loaded' if table.all_cached else 'computed'} in {seconds:.2f}s; fingerprint {table.fingerprint}")
    return 0


def _stats(s) -> dict:
    return {"channels": int(s.numel()), "min": float(s.min()), "mean": float(s.mean()), "max": float(s.max())}
