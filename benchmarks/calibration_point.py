"""Does the calibration point matter? ``block_output`` (official CHIP/HRankPlus) against ``bn``.

CIFAR ResNet-20 on the bundled digits (1×16×16; dense model from the recipe's brief pre-training,
one per seed, since the data split follows the seed). For each seed, criterion and point, the
recipe is scored, planned and run through the ``hard`` schedule with a short fine-tune; the table
gives test accuracy right after the channels are removed (BN statistics re-estimated on one pass
over the training split, no fine-tune) and after the fine-tune, as mean ± std over the seeds, plus how many seeds each point won.

Two allocations: ``streams`` prunes only the three residual-stream groups (the only groups whose
scores the point changes) at ``--stream-ratio``; ``uniform`` prunes every group at
``--uniform-ratio``.

Usage::

    python benchmarks/calibration_point.py --seeds 0 1 2 3 4 --epochs 6
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from prunetune.recipes.pipeline import prepare, score_table, train_pruned

from prunetune.recipes.planning import build_plan
from prunetune.pruning.finetune import evaluate
from prunetune.pruning.surgery import apply_plan
from prunetune.recipes.schema import Recipe

STREAMS = ("conv1", "layer2.0.conv2", "layer3.0.conv2")


def recipe(seed: int, criterion: str, point: str, allocation: dict, epochs: int,
           pretrain_epochs: int | None = None) -> Recipe:
    return Recipe.from_dict({
        "model": {"name": "resnet20", "num_classes": 10, "in_channels": 1},
        "data": {"name": "digits"}, "criterion": criterion, "allocation": allocation,
        "calibration": {"size": 256, "point": point}, "schedule": "hard",
        "finetune": {"epochs": epochs, "lr": 0.02}, "seed": seed, "device": "cpu",
        **({"pretrain": {"epochs": pretrain_epochs}} if pretrain_epochs is not None else {}),
    })


def reestimate_bn(model: torch.nn.Module, batches) -> None:
    """BN running statistics re-estimated as the plain average over the train batches."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    model.eval()


def run(seed: int, criterion: str, point: str, allocation: dict, epochs: int, base=None,
        pretrain_epochs: int | None = None):
    r = recipe(seed, criterion, point, allocation, epochs, pretrain_epochs)
    base = base or prepare(r, show_progress=False)
    base.recipe = r
    table = score_table(base, {criterion: {}}, show_progress=False)
    plan = build_plan(r, base, table)

    cut = apply_plan(copy.deepcopy(base.model), plan, base.groups)
    reestimate_bn(cut, base.loader("train", train=True, seed=seed))
    before = evaluate(cut, base.loader("test"), device=base.device)
    model, _, _ = train_pruned(r, base, plan, show_progress=False)  # the plan carries its prune order
    after = evaluate(model, base.loader("test"), device=base.device)
    return base, before, after


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--criteria", nargs="+", default=["chip", "hrank"])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--stream-ratio", type=float, default=0.6)
    ap.add_argument("--uniform-ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pretrain-epochs", type=int, default=None,
                    help="epochs of the dense model's training (default: the recipe's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    allocations = {
        "streams": {"ratios": dict.fromkeys(STREAMS, args.stream_ratio), "default": 0.0},
        "uniform": {"ratio": args.uniform_ratio},
    }
    results: dict[tuple, list[tuple[float, float]]] = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        base = None
        for crit in args.criteria:
            for alloc_name, alloc in allocations.items():
                for point in ("block_output", "bn"):
                    base, before, after = run(seed, crit, point, alloc, args.epochs, base, args.pretrain_epochs)
                    results.setdefault((crit, alloc_name, point), []).append((before, after))
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nResNet-20 on digits, seeds {args.seeds}, fine-tune {args.epochs} epochs; test accuracy %\n")
    print("| criterion | allocation | point | after removal | after fine-tune | seeds won (removal / fine-tune) |")
    print("|---|---|---|---|---|---|")
    for (crit, alloc_name, point), vals in results.items():
        other = results[(crit, alloc_name, "bn" if point == "block_output" else "block_output")]
        wins = [sum(v[i] > o[i] for v, o in zip(vals, other)) for i in (0, 1)]
        cells = []
        for i in (0, 1):
            xs = [100 * v[i] for v in vals]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{statistics.mean(xs):.1f} ± {sd:.1f}")
        print(f"| {crit} | {alloc_name} | {point} | {cells[0]} | {cells[1]} | {wins[0]} / {wins[1]} |")


if __name__ == "__main__":
    main()
