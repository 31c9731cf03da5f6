"""Soft-to-hard schedules in a short fine-tune on digits: test accuracy mean ± std against ``hard``.

One dense ResNet-20 (brief training, cached), one plan per criterion (the same plan for every
schedule), 30% MACs, 3 fine-tune epochs, seeds 0–2. Every schedule at its defaults, plus the
published variants (``hard_fraction: 0``: soft to the end; ``pool: all``: re-scoring may prune any
channel) to show what the defaults change. "val: last epoch → final" is the validation accuracy the
last epoch measured on the masked network, then that of the physically pruned network the recipe
returns (means over the seeds): equal for ``hard``; for the soft schedules the second has its BN
statistics re-estimated after the removal (``finetune.recalibrate_bn``, the default).
Not a test; run by hand:

    python benchmarks/schedules.py [--epochs 3] [--seeds 3] [--budget 0.3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prunetune.recipes.pipeline import prepare, run_recipe
from prunetune.pruning.finetune import evaluate
from prunetune.recipes.schema import Recipe

SCHEDULES = [
    ("hard", "hard"), ("sfp", "sfp"), ("asfp", "asfp"), ("ghfp", "ghfp"),
    ("ghfp, base asfp", {"name": "ghfp", "base": "asfp"}), ("iterative", "iterative"),
    ("iterative, rescore", {"name": "iterative", "rescore": True}),
    ("sfp published (hard_fraction 0, pool all)", {"name": "sfp", "hard_fraction": 0.0, "pool": "all"}),
    ("ghfp published (hard_fraction 0, pool all)", {"name": "ghfp", "hard_fraction": 0.0, "pool": "all"}),
    ("ghfp asfp published", {"name": "ghfp", "base": "asfp", "hard_fraction": 0.0, "pool": "all"}),
]
CRITERIA = {"capacity+independence": {"blend": {"capacity": 1.0, "independence": 1.0}, "normalizer": "rank"},
            "l1": "l1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = {
        "model": {"name": "resnet20", "num_classes": 10, "in_channels": 1},
        "data": {"name": "digits", "image_size": 16, "batch_size": 64},
        "calibration": {"size": 256}, "pretrain": {"epochs": 6, "lr": 0.1, "batch_size": 64},
        "allocation": {"macs_budget": args.budget}, "device": "cpu",
        "finetune": {"epochs": args.epochs, "lr": 0.05, "batch_size": 64},
    }
    base = prepare(Recipe.from_dict({**recipe, "criterion": "l1"}), show_progress=False)
    print(f"ResNet-20 on digits 1x16x16; dense test accuracy {base.dense['accuracy']:.4f}; {args.budget:.0%} MACs; "
          f"{args.epochs} fine-tune epochs; seeds 0-{args.seeds - 1}; torch threads {torch.get_num_threads()}\n")
    print("| criterion | schedule | test accuracy (mean ± std) | Δ vs hard (points) | val: last epoch → final | s / run |")
    print("|---|---|---|---|---|---|")
    for cname, criterion in CRITERIA.items():
        hard = None
        for label, schedule in SCHEDULES:
            accs, last, final, times = [], [], [], []
            for seed in range(args.seeds):
                r = Recipe.from_dict({**recipe, "criterion": criterion, "schedule": schedule, "seed": seed})
                t0 = time.perf_counter()
                result = run_recipe(r, base=base, show_progress=False)
                times.append(time.perf_counter() - t0)
                accs.append(result.pruned["accuracy"])
                last.append(result.history[-1]["accuracy"])
                final.append(evaluate(result.model, base.loader("val")))
            mean = statistics.mean(accs)
            hard = mean if hard is None else hard
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {cname} | {label} | {100 * mean:.2f} ± {100 * std:.2f} | {100 * (mean - hard):+.2f} | "
                  f"{100 * statistics.mean(last):.2f} → {100 * statistics.mean(final):.2f} | "
                  f"{statistics.median(times):.1f} |", flush=True)


if __name__ == "__main__":
    main()
