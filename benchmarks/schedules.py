"""Soft-to-hard schedules compared on digits: accuracy mean ± std and wall time (not a test).

The same dense base model (brief training, cached), a 50% MACs budget, every schedule × two
criteria, the same fine-tune epochs, several seeds. Run by hand:

    python benchmarks/schedules.py [--epochs 4] [--seeds 3] [--criteria l2,chip] [--budget 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prunetune.pipeline import prepare, run_recipe
from prunetune.pruning.schedules import SCHEDULES
from prunetune.recipe import Recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--criteria", default="l2,chip")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base_recipe = {
        "model": {"name": args.model, "num_classes": 10, "in_channels": 1},
        "data": {"name": "digits", "image_size": 16},
        "criterion": "l2", "allocation": {"macs_budget": args.budget},
        "finetune": {"epochs": args.epochs, "lr": 0.05, "batch_size": 64},
        "pretrain": {"epochs": 10, "lr": 0.1}, "seed": 0,
    }
    base = prepare(Recipe.from_dict(base_recipe), show_progress=False)
    print(f"model {args.model} on digits 1x16x16; dense accuracy {base.dense['accuracy']:.4f}; "
          f"budget {args.budget:.0%} of {base.dense['macs'] / 1e6:.2f}M MACs; {args.epochs} fine-tune epochs; "
          f"{args.seeds} seeds; torch threads {torch.get_num_threads()}\n")
    print("| schedule | criterion | test accuracy (mean ± std) | MACs ratio | wall s / run |")
    print("|---|---|---|---|---|")
    for schedule in SCHEDULES.names():
        for criterion in args.criteria.split(","):
            accs, times, ratio = [], [], 0.0
            for seed in range(args.seeds):
                recipe = Recipe.from_dict({**base_recipe, "criterion": criterion, "schedule": schedule,
                                           "seed": seed})
                t0 = time.perf_counter()
                result = run_recipe(recipe, base=base, show_progress=False)
                times.append(time.perf_counter() - t0)
                accs.append(result.pruned["accuracy"])
                ratio = result.pruned["macs"] / result.dense["macs"]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {schedule} | {criterion} | {100 * statistics.mean(accs):.2f} ± {100 * std:.2f} | "
                  f"{ratio:.3f} | {statistics.median(times):.1f} |", flush=True)


if __name__ == "__main__":
    main()
