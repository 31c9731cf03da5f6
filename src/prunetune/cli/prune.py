"""``prunetune prune``: one recipe, score → allocate → prune → fine-tune → evaluate, saved."""

from __future__ import annotations

import argparse
import logging

from prunetune._paths import check_file_name, check_output_file
from prunetune.cli._common import (
    add_allow_code,
    add_format,
    add_plugins,
    load_cli_plugins,
    millions,
    need_file,
    print_json,
)

log = logging.getLogger("prunetune")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune one model by a recipe and save it (state dict + plan)",
                       description="Score, allocate, prune, fine-tune and evaluate as a recipe says. "
                       "Without a checkpoint the dense model is first trained briefly on the recipe's data.")
    p.add_argument("--recipe", required=True, help="recipe YAML")
    p.add_argument("--out", required=True, help="where to save the pruned model (.pt); the plan goes next to it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (and its plan)")
    add_allow_code(p)
    add_plugins(p)
    add_format(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunetune.recipes.pruned_file import plan_file
    from prunetune.recipes.pipeline import run_recipe
    from prunetune.recipes.schema import Recipe

    load_cli_plugins(args)  # before the recipe: it may name their entries
    recipe = Recipe.from_yaml(need_file(args.recipe, "recipe"), allow_code=args.allow_code)
    # run_recipe writes the plan next to the model, as <out stem>.plan.json, the two as one pair
    out = check_file_name(args.out, "--out")  # before plan_file, which cannot name a plan for "." or "/"
    out = check_output_file(out, "--out", overwrite=args.overwrite, written_with=[plan_file(out)])
    check_output_file(plan_file(out), "the plan file next to --out", overwrite=args.overwrite)
    result = run_recipe(recipe, out=out, overwrite=args.overwrite, show_progress=args.format == "table")
    if args.format == "json":
        print_json(result.summary())
        return 0
    d, p = result.dense, result.pruned
    print(f"dense : {millions(d['macs'])} MACs  {millions(d['params'])} params  accuracy {d['accuracy']:.4f}")
    print(f"pruned: {millions(p['macs'])} MACs ({100 * p['macs'] / d['macs']:.1f}%)  "
          f"{millions(p['params'])} params ({100 * p['params'] / d['params']:.1f}%)  accuracy {p['accuracy']:.4f}")
    print(f"saved {result.out} (load with prunetune.load_pruned) and plan {result.plan_path}; "
          f"{result.timings['total_s']:.1f}s")
    return 0
