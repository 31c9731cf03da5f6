"""How well the adaptive-BN proxy ranks plans, read as a likelihood or as an accuracy, by BN batches.

One dense ``--model`` on digits (1×16×16); ``--candidates`` plans sampled from the default search
space's plan part (budget ``--budget``); each gets its proxy with each count of ``--bn-batches`` (0:
stale BN statistics) and ``--ft-seeds`` 3-epoch fine-tunes (hard schedule, the recipe's lr), whose
mean test accuracy is what the proxy should predict. Reported per BN-batch count and per reading
(the likelihood, exp(−mean cross-entropy), which the search ranks by; the accuracy): Spearman's ρ
between proxy and fine-tuned test accuracy over all plans and within MACs bins (where the proxy must
tell plans of one cost apart, the harder and more useful question), and seconds per proxy. Not a
test; run by hand::

    python benchmarks/proxy.py [--model resnet20] [--candidates 40] [--bins 4] [--bn-batches 4]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from prunetune.pruning.finetune import evaluate
from prunetune.pruning.proxy import bn_proxy
from prunetune.recipes.pipeline import prepare, score_table, train_pruned
from prunetune.recipes.planning import build_plan
from prunetune.recipes.schema import Recipe
from prunetune.search.selection import spearman
from prunetune.spaces import RandomTrial, SpaceSpec, build_space, plan_space, space_criteria, trial_recipe


def recipe_for(args: argparse.Namespace) -> Recipe:
    return Recipe.from_dict({
        "model": {"name": args.model, "num_classes": 10, "in_channels": 1},
        "data": {"name": "digits", "image_size": 16, "batch_size": 64},
        "pretrain": {"epochs": args.pretrain_epochs, "lr": 0.1, "batch_size": 64},
        "finetune": {"epochs": 3, "lr": 0.05, "batch_size": 64},
        "criterion": "l1", "allocation": {"macs_budget": args.budget}, "device": "cpu",
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--bins", type=int, default=4)
    parser.add_argument("--bn-batches", default="4")
    parser.add_argument("--ft-seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = recipe_for(args)
    base = prepare(recipe, show_progress=False)
    spec = SpaceSpec()
    space = plan_space(build_space(spec, base.groups, budget=args.budget, rule=recipe.allocation.rule))
    table = score_table(base, space_criteria(spec), show_progress=False)
    counts = [int(b) for b in args.bn_batches.split(",")]
    val = base.loader("val", batch_size=256)
    rows = []
    for i in range(args.candidates):
        trial_r = trial_recipe(recipe, space.define(RandomTrial(i)), base.groups).with_changes(seed=0)
        plan = build_plan(trial_r, base, table)
        proxies, seconds = {}, {}
        for n in counts:
            t0 = time.perf_counter()
            bn = base.loader("train", train=True, seed=1)
            proxies[n] = bn_proxy(base.model, base.groups, plan, bn_batches=bn, val_batches=val, max_bn_batches=n)
            seconds[n] = time.perf_counter() - t0
        tests = []
        for seed in range(args.ft_seeds):
            model, _, _ = train_pruned(trial_r.with_changes(plan=plan.to_dict(), seed=seed), base, plan,
                                       show_progress=False)
            tests.append(evaluate(model, base.loader("test")))
        rows.append({"macs": plan.macs_ratio, "test": statistics.mean(tests), "proxy": proxies, "s": seconds})
        print(f"candidate {i}: MACs {plan.macs_ratio:.3f}, test {rows[-1]['test']:.4f}, "
              + ", ".join(f"bn{n} {p.likelihood:.3f} / {p.accuracy:.3f}" for n, p in proxies.items()), flush=True)
    report(rows, counts, args.bins)


def report(rows: list[dict], counts: list[int], bins: int) -> None:
    order = sorted(rows, key=lambda r: r["macs"])
    size = math.ceil(len(order) / bins)
    groups = [order[i:i + size] for i in range(0, len(order), size)]
    print(f"\n{len(rows)} plans, MACs {order[0]['macs']:.1%}–{order[-1]['macs']:.1%}, {len(groups)} MACs bins of ~{size}\n")
    print("| BN batches | proxy read as | ρ all plans | ρ within MACs bins (mean) | s / proxy (median) |")
    print("|---|---|---|---|---|")
    for n in counts:
        for reading in ("likelihood", "accuracy"):
            values = [getattr(r["proxy"][n], reading) for r in rows]
            rho_all = spearman(values, [r["test"] for r in rows])
            within = [spearman([getattr(r["proxy"][n], reading) for r in g], [r["test"] for r in g]) for g in groups]
            within = [w for w in within if not math.isnan(w)]
            print(f"| {n} | {reading} | {rho_all:.2f} | {statistics.mean(within) if within else math.nan:.2f} | "
                  f"{statistics.median(r['s'][n] for r in rows):.3f} |")


if __name__ == "__main__":
    main()
