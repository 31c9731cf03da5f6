"""Does CPU latency follow MACs? ResNet-56 (3×32×32) dense vs pruned to a MACs fraction (not a test).

For each variant (dense; uniform plan at the budget with round_to none/4/8/16; BN kept or folded;
the thinnest reachable plan, which shows the fixed cost that no pruning removes) the median latency
of batch 1 and batch 64 on 1 and 2 threads, in rounds that time every variant back to back.
Run by hand (the numbers depend on the machine and on its load):

    python benchmarks/latency.py [--model resnet56] [--budget 0.5] [--rounds 5] [--min-time 0.2]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from prunetune.deployment.bench import measure
from prunetune.deployment.fold import fold_batchnorm
from prunetune.models import create_model
from prunetune.pruning.allocation import KeepRule, keep_for_budget
from prunetune.pruning.groups import find_groups
from prunetune.pruning.macs import count_cost
from prunetune.pruning.plan import make_plan
from prunetune.pruning.surgery import apply_plan


def variants(name: str, shape: tuple[int, ...], budget: float) -> dict[str, torch.nn.Module]:
    dense = create_model(name).eval()
    groups = find_groups(dense, shape)
    scores = {g.name: torch.rand(g.channels, generator=torch.Generator().manual_seed(0)) for g in groups}

    def pruned(rule: KeepRule, fraction: float) -> torch.nn.Module:
        plan = make_plan(groups, scores, keep_for_budget(groups, fraction, rule=rule))
        return apply_plan(copy.deepcopy(dense), plan, groups).eval()

    out = {"dense, BN": dense, "dense, folded": fold_batchnorm(dense, shape)[0]}
    out["pruned, BN"] = pruned(KeepRule(), budget)
    for r in (None, 4, 8, 16):
        model = pruned(KeepRule(round_to=r), budget)
        out[f"pruned, folded, round_to {r}"] = fold_batchnorm(model, shape)[0]
    from prunetune.pruning.allocation import smallest_fraction

    thin = smallest_fraction(groups, KeepRule())
    out["thinnest (1 channel/group), folded"] = fold_batchnorm(pruned(KeepRule(), thin + 1e-6), shape)[0]
    return out


class _Frozen:
    """A model to be traced, frozen and optimised for inference at the batch size it is timed with."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.cache: dict[int, torch.jit.ScriptModule] = {}


def _for_batch(model, batch: int, shape: tuple[int, ...]):
    if not isinstance(model, _Frozen):
        return model
    if batch not in model.cache:
        with torch.no_grad():
            traced = torch.jit.trace(model.model, torch.randn(batch, *shape), check_trace=False)
            model.cache[batch] = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    return model.cache[batch]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--min-time", type=float, default=0.2, help="timed seconds per model per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: thread CPU time (1 thread)")
    parser.add_argument("--torchscript", action="store_true",
                        help="also time TorchScript frozen + optimize_for_inference copies of two variants")
    args = parser.parse_args(argv)
    shape = (3, 32, 32)
    models = variants(args.model, shape, args.budget)
    if args.torchscript:
        for label in ("dense, folded", "pruned, folded, round_to 16"):
            models[f"{label}, TorchScript frozen"] = _Frozen(models[label])
    dense_macs = count_cost(models["dense, BN"], shape).macs
    settings = [(b, t) for t in map(int, args.threads.split(",")) for b in map(int, args.batches.split(","))]
    ms: dict[tuple, list[float]] = {}
    ratio: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):  # ratios within a round: drift in the machine's load hits all variants alike
        for batch, threads in settings:
            now = {label: measure(_for_batch(model, batch, shape), shape, batch=batch, threads=threads,
                                  min_run_time=args.min_time, warmup=1, label=label, clock=args.clock).median_ms
                   for label, model in models.items()}
            for label, t in now.items():
                ms.setdefault((label, batch, threads), []).append(t)
                ratio.setdefault((label, batch, threads), []).append(now["dense, BN"] / t)
    head = " | ".join(f"batch {b}, {t} thr: ms (speed-up)" for b, t in settings)
    print(f"{args.model}, input 3×32×32, torch {torch.__version__}, eager, inference mode, {args.clock} clock; median of "
          f"{args.rounds} rounds; speed-up = dense-with-BN time / variant time, within a round\n")
    print(f"| variant | MACs ratio | {head} |")
    print("|---|---|" + "---|" * len(settings))
    for label, model in models.items():
        mac = count_cost(model.model if isinstance(model, _Frozen) else model, shape).macs / dense_macs
        cells = " | ".join(f"{statistics.median(ms[label, b, t]):.2f} ({statistics.median(ratio[label, b, t]):.2f}×)"
                           for b, t in settings)
        print(f"| {label} | {mac:.3f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
