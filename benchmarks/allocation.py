"""How far one group may be cut: fine-tuned accuracy of sampled allocation shapes under several max_ratio.

ResNet-20 on digits (1×16×16), one dense model, per-stage relative ratios sampled as a search samples
them (uniform in [0, 0.8]), projected onto low MACs targets with each ``max_ratio``; every plan is
fine-tuned (3 epochs, hard schedule) and tested. The same shapes and seeds for every cap, so the
columns differ only in the cap. Not a test; run by hand, the table goes in ``benchmarks/README.md``::

    python benchmarks/allocation.py [--shapes 8] [--targets 0.12,0.2] [--caps 0.7,0.8,0.9,1.0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from prunetune.recipes.pipeline import prepare, run_recipe
from prunetune.recipes.schema import Recipe
from prunetune.spaces import stage_of

RECIPE = {
    "model": {"name": "resnet20", "num_classes": 10, "in_channels": 1},
    "data": {"name": "digits", "image_size": 16, "batch_size": 64},
    "pretrain": {"epochs": 6, "lr": 0.1, "batch_size": 64},
    "finetune": {"epochs": 3, "lr": 0.05, "batch_size": 64},
    "criterion": "l1", "device": "cpu",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=8)
    parser.add_argument("--targets", default="0.12,0.2")
    parser.add_argument("--caps", default="0.7,0.8,0.9,1.0")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = prepare(Recipe.from_dict({**RECIPE, "allocation": {"ratio": 0.5}}), show_progress=False)
    stage = stage_of(base.groups)
    rng = random.Random(0)
    shapes = [{s: rng.uniform(0.0, 0.8) for s in sorted(set(stage.values()))} for _ in range(args.shapes)]
    caps = [float(c) for c in args.caps.split(",")]
    print(f"dense test accuracy {base.dense['accuracy']:.4f}; {args.shapes} shapes × targets {args.targets}; "
          f"3 epochs; torch threads {torch.get_num_threads()}\n")
    print("| target | max_ratio | test accuracy, mean ± std over shapes | worst shape | smallest group kept | s / run |")
    print("|---|---|---|---|---|---|")
    for target in (float(t) for t in args.targets.split(",")):
        for cap in caps:
            accs, kept, times = [], [], []
            for i, shape in enumerate(shapes):
                ratios = {g: max(0.01, shape[s]) for g, s in stage.items()}
                recipe = Recipe.from_dict({**RECIPE, "seed": i, "allocation": {
                    "macs_budget": target, "ratios": ratios, "max_ratio": cap}})
                t0 = time.perf_counter()
                result = run_recipe(recipe, base=base, show_progress=False)
                times.append(time.perf_counter() - t0)
                accs.append(result.pruned["accuracy"])
                kept.append(min(len(k) / result.plan.channels[g] for g, k in result.plan.kept.items()))
            print(f"| {target:.0%} | {cap:g} | {100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f} | "
                  f"{100 * min(accs):.2f} | {100 * min(kept):.0f}% | {statistics.median(times):.1f} |", flush=True)


if __name__ == "__main__":
    main()
