"""The search against what a user would do by hand, at equal fine-tune compute, judged on test accuracy.

One dense ResNet-20 trained once on digits (1×16×16; saved with its data split). Then, with the same
fine-tune (3 epochs, lr 0.05, hard schedule unless the search picks another):

* **hand**: the uniform-L1 recipe (``criterion: l1``, ``allocation: {macs_budget: T}``) at the
  targets × seeds (4 × 3 = 12 fine-tunes);
* **tp**: Torch-Pruning's global magnitude pruning (MetaPruner + GroupMagnitudeImportance,
  ``global_pruning=True``, prunetune's option-A shortcut pruner plugged in), its ratio bisected to the
  largest plan at or below each target, fine-tuned by the same loop, same seeds;
* **search**: ``prunetune search`` with the default space and screening, ``trials`` fine-tunes, one
  search per seed (sampler seed and recipe seed).

Reported: test-accuracy hypervolume (reference point MACs = the budget, accuracy 0.5, MACs clipped
to [0.1, budget]; 0.5 by default), a baseline's at the search's fine-tune count (with more seeds than
that, the mean over every choice of seeds that fits); at every target, the best search trial at no
more MACs against the baselines' seed mean; wall time (screening included), the baselines' 12
fine-tunes run as 2 processes × 1 thread, the search with concurrency 2 × 1 CPU. Not a test: run
by hand, the table goes in ``benchmarks/README.md``::

    python benchmarks/front.py [--seeds 3] [--trials 12] [--epochs 3] [--targets 0.15,0.25,0.35,0.5]
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import copy
import itertools
import json
import logging
import math
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODEL = {"name": "resnet20", "num_classes": 10, "in_channels": 1}
DATA = {"name": "digits", "image_size": 16, "batch_size": 64}
PRETRAIN = {"epochs": 6, "lr": 0.1, "batch_size": 64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL["name"], help="a registered model (default resnet20)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=6,
                        help="epochs of the dense model's training (default 6; deeper nets need more)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--targets", default="0.15,0.25,0.35,0.5")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    parser.add_argument("--only", default="hand,tp,search", help="which methods to run")
    parser.add_argument("--search-config", default=None, help="a JSON mapping merged into the search config")
    parser.add_argument("--json", default=None, help="write every measured point here")
    parser.add_argument("--baselines", default=None, help="reuse the hand/tp points of an earlier --json file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)
    MODEL["name"] = args.model
    PRETRAIN["epochs"] = args.pretrain_epochs
    work = Path(args.workdir or tempfile.mkdtemp(prefix="prunetune-front-"))
    work.mkdir(parents=True, exist_ok=True)
    targets = [float(t) for t in args.targets.split(",")]
    seeds = list(range(args.seeds))
    dense = train_dense(work)
    finetune = {"epochs": args.epochs, "lr": args.lr, "batch_size": 64}
    results: dict[str, dict] = {"dense": dense, "targets": targets, "seeds": seeds, "finetune": finetune,
                                "budget": args.budget}
    jobs = [(t, s) for t in targets for s in seeds]
    only = args.only.split(",")
    if args.baselines:
        earlier = json.loads(Path(args.baselines).read_text())
        results.update({k: earlier[k] for k in ("hand", "tp") if k in earlier and k not in only})
    if "hand" in only:
        results["hand"] = run_pool("hand", dense["checkpoint"], finetune, jobs)
    if "tp" in only:
        results["tp"] = run_pool("tp", dense["checkpoint"], finetune, jobs)
    if "search" in only:
        extra = json.loads(args.search_config) if args.search_config else {}
        results["search"] = [run_search_once(work, dense["checkpoint"], finetune, args, seed, extra) for seed in seeds]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    report(results, targets, dense)


# -- the dense model ---------------------------------------------------------------------------
def recipe_dict(checkpoint: str | None, finetune: dict, **extra) -> dict:
    model = {**MODEL, **({"checkpoint": checkpoint} if checkpoint else {})}
    return {"model": model, "data": DATA, "calibration": {"size": 256, "batch_size": 128},
            "pretrain": dict(PRETRAIN), "finetune": finetune, "device": "cpu",
            **extra}


def train_dense(work: Path) -> dict:
    from prunetune.recipes.checkpoint import save_dense
    from prunetune.recipes.pipeline import prepare
    from prunetune.recipes.schema import Recipe

    path = work / "dense.pt"
    recipe = Recipe.from_dict({**recipe_dict(None, {"epochs": 1}), "criterion": "l1",
                               "allocation": {"ratio": 0.5}, "calibration": {"use_cache": False}})
    base = prepare(recipe, show_progress=False)
    save_dense(path, base.model, data_split=base.splits.split)
    print(f"dense {MODEL['name']} on digits 1x16x16: test accuracy {base.dense['accuracy']:.4f}, "
          f"{base.dense['macs'] / 1e6:.2f}M MACs, {len(base.splits.test)} test images")
    return {"checkpoint": str(path), "accuracy": base.dense["accuracy"], "macs": base.dense["macs"],
            "test_images": len(base.splits.test)}


# -- baselines: 2 worker processes × 1 thread, each preparing the dense model once ---------------
_BASE = None


def _init_worker(checkpoint: str, finetune: dict, model: dict) -> None:
    global _BASE
    from prunetune.recipes.pipeline import prepare
    from prunetune.recipes.schema import Recipe

    torch.set_num_threads(1)
    MODEL.update(model)  # a spawned worker starts from the module's default
    recipe = Recipe.from_dict({**recipe_dict(checkpoint, finetune), "criterion": "l1",
                               "allocation": {"macs_budget": 0.5}})
    _BASE = prepare(recipe, show_progress=False)


def _hand_job(job: tuple[float, int], finetune: dict) -> dict:
    from prunetune.recipes.pipeline import run_recipe

    from prunetune.recipes.schema import Recipe

    target, seed = job
    t0 = time.perf_counter()
    recipe = Recipe.from_dict({**recipe_dict(_BASE.recipe.model.checkpoint, finetune), "criterion": "l1",
                               "allocation": {"macs_budget": target}, "schedule": "hard", "seed": seed})
    result = run_recipe(recipe, base=_BASE, show_progress=False)
    return {"target": target, "seed": seed, "macs_ratio": result.pruned["macs"] / result.dense["macs"],
            "test_accuracy": result.pruned["accuracy"], "seconds": time.perf_counter() - t0}


def _tp_job(job: tuple[float, int], finetune: dict) -> dict:
    from prunetune.pruning.finetune import FinetuneConfig, evaluate
    from prunetune.pruning.finetune import finetune as train
    from prunetune.pruning.macs import count_cost

    target, seed = job
    t0 = time.perf_counter()
    dense_macs = count_cost(_BASE.model, _BASE.input_shape).macs
    model, ratio = tp_prune(_BASE.model, _BASE.input_shape, target, dense_macs)
    torch.manual_seed(seed)
    cfg = FinetuneConfig(**finetune)
    train(model, _BASE.loader("train", train=True, seed=seed, batch_size=cfg.batch_size), cfg, show_progress=False)
    macs = count_cost(model, _BASE.input_shape).macs
    return {"target": target, "seed": seed, "macs_ratio": macs / dense_macs, "tp_ratio": ratio,
            "test_accuracy": evaluate(model, _BASE.loader("test")), "seconds": time.perf_counter() - t0}


def classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The model's last Linear layer (its classes are not pruned)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]


def tp_prune(dense: torch.nn.Module, input_shape: tuple, target: float, dense_macs: int):
    """Torch-Pruning global magnitude pruning at the largest channel ratio whose MACs fit ``target``."""
    import torch_pruning as tp

    from prunetune.pruning.macs import count_cost
    from prunetune.pruning.tp_bridge import CUSTOM_PRUNERS

    def pruned_at(ratio: float):
        model = copy.deepcopy(dense)
        example = torch.randn(1, *input_shape)
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(),
                                      global_pruning=True, pruning_ratio=ratio, ignored_layers=[classifier(model)],
                                      customized_pruners=CUSTOM_PRUNERS)
        pruner.step()
        return model, count_cost(model, input_shape).macs / dense_macs

    lo, hi = 0.0, 0.95  # channel ratios; MACs fall as the ratio grows
    best = pruned_at(lo)
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        model, frac = pruned_at(mid)
        if frac <= target:
            hi, best = mid, (model, frac)
        else:
            lo = mid
    return best[0], hi


def run_pool(kind: str, checkpoint: str, finetune: dict, jobs: list) -> dict:
    """The 12 fine-tunes of a baseline, 2 processes × 1 thread (the search's compute), timed end to end."""
    job = _hand_job if kind == "hand" else _tp_job
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=_init_worker,
                                     initargs=(checkpoint, finetune, dict(MODEL))) as pool:
        points = list(pool.map(job, jobs, [finetune] * len(jobs)))
    wall = time.perf_counter() - t0
    print(f"{kind}: {len(points)} fine-tunes in {wall:.1f}s wall", flush=True)
    return {"points": points, "wall_s": wall}


# -- the search -----------------------------------------------------------------------------------
def run_search_once(work: Path, checkpoint: str, finetune: dict, args, seed: int, extra: dict) -> dict:
    from prunetune.search import parse_search_config, run_search
    from prunetune.tracking import load_search

    name = f"front-seed{seed}-{int(time.time())}"
    data = {"recipe": {**recipe_dict(checkpoint, finetune), "seed": seed}, "macs_budget": args.budget,
            "trials": args.trials, "concurrency": 2, "cpus_per_trial": 1, "seed": seed, "experiment": name,
            "tracking_uri": str(work / "mlflow.db"), "storage_path": str(work / "runs"), **extra}
    config = parse_search_config(data)
    t0 = time.perf_counter()
    outcome = run_search(config, resume=False, show_progress=False)
    wall = time.perf_counter() - t0
    records = load_search(outcome.tracking_uri, name, parent_run_id=outcome.parent_run_id)
    points = [{"macs_ratio": t.macs_ratio, "accuracy": t.accuracy, "test_accuracy": t.test_accuracy,
               "proxy_accuracy": t.proxy_accuracy} for t in records.trials]
    from prunetune.tracking.store import client

    parent = client(outcome.tracking_uri).get_run(outcome.parent_run_id).data.metrics
    print(f"search seed {seed}: {len(points)} trials in {wall:.1f}s wall (screening {parent.get('screen_s', 0):.1f}s), "
          f"proxy rank correlation {parent.get('proxy_rank_correlation', math.nan):.2f}", flush=True)
    return {"seed": seed, "points": points, "wall_s": wall, "screen_s": parent.get("screen_s", 0.0),
            "proxy_rho": parent.get("proxy_rank_correlation", math.nan),
            "proxy_rho_test": parent.get("proxy_rank_correlation_test", math.nan)}


# -- the report -----------------------------------------------------------------------------------
def hypervolume(points: list[tuple[float, float]], ref_macs: float = 0.5, ref_acc: float = 0.5,
                low: float = 0.1) -> float:
    """Area dominated by ``(macs, accuracy)`` points within MACs [low, ref_macs] and above ``ref_acc``."""
    pts = sorted((max(m, low), a) for m, a in points if m <= ref_macs and a > ref_acc)
    area, best = 0.0, ref_acc
    for i, (m, a) in enumerate(pts):
        best = max(best, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_macs
        area += (nxt - m) * (best - ref_acc)
    return area


def equal_compute_hypervolume(points: list[dict], fine_tunes: int | None, hypervolume_of) -> tuple[float, int, str]:
    """A baseline's hypervolume at ``fine_tunes`` fine-tunes: its points pooled over as many seeds as
    that allows, averaged over every such choice of seeds (all seeds pooled where ``fine_tunes`` is
    ``None`` or covers them). Pooling more seeds than the search has trials for would compare the
    best of more fine-tunes per target against it. Returns the area, the fine-tunes pooled in each
    choice, and how it was pooled."""
    seeds = sorted({p["seed"] for p in points})
    per_seed = len(points) // len(seeds)
    n = len(seeds) if fine_tunes is None else min(len(seeds), max(1, fine_tunes // per_seed))  # never more
    choices = list(itertools.combinations(seeds, n))
    area = statistics.mean(hypervolume_of([(p["macs_ratio"], p["test_accuracy"]) for p in points if p["seed"] in c])
                           for c in choices)
    pooled = sum(p["seed"] in choices[0] for p in points)
    how = (f"all {n} seeds pooled" if n == len(seeds) else
           f"{n} of {len(seeds)} seeds pooled, mean of {len(choices)} choices")
    if fine_tunes is not None and pooled < fine_tunes:  # the search had more fine-tunes: it is favoured
        how += f"; FEWER fine-tunes than the search's {fine_tunes}"
    return area, pooled, how


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def report(results: dict, targets: list[float], dense: dict) -> None:
    one_image = 1.0 / dense["test_images"]
    budget = results.get("budget", 0.5)  # JSON files written before the budget was recorded: 0.5

    def hypervolume_in(points: list[tuple[float, float]]) -> float:  # over the MACs the search was given
        return hypervolume(points, ref_macs=budget)

    base = {k: [(p["macs_ratio"], p["test_accuracy"]) for p in results[k]["points"]] for k in ("hand", "tp")
            if k in results}
    searches = results.get("search", [])
    # the most trials a search ran (one whose trial failed has fewer, and is judged against the same baseline)
    fine_tunes = max((len(s["points"]) for s in searches), default=None)
    hv, pooled = {}, {}
    for k in base:  # at the search's fine-tune count: more seeds than that would pool more fine-tunes
        hv[k], *pooled[k] = equal_compute_hypervolume(results[k]["points"], fine_tunes, hypervolume_in)

    def ratio(value: float, key: str) -> str:  # a baseline with no point above 50% accuracy has no area
        return f"{value / hv[key]:.3f}" if hv.get(key) else "—"

    print("\n| method | fine-tunes | test-accuracy hypervolume | × hand | × tp | wall s |")
    print("|---|---|---|---|---|---|")
    for k, v in hv.items():
        counted = f"{pooled[k][0]}" if pooled[k][0] == len(base[k]) else f"{pooled[k][0]} (wall s: all {len(base[k])})"
        print(f"| {k} ({pooled[k][1]}) | {counted} | {v:.4f} | "
              f"{ratio(v, 'hand')} | {ratio(v, 'tp')} | {results[k]['wall_s']:.1f} |")
    for s in searches:
        h = hypervolume_in([(p["macs_ratio"], p["test_accuracy"]) for p in s["points"]])
        print(f"| search seed {s['seed']} | {len(s['points'])} | {h:.4f} | {ratio(h, 'hand')} | "
              f"{ratio(h, 'tp')} | {s['wall_s']:.1f} (screening {s['screen_s']:.1f}) |")
    print("\n| target | hand (seed mean ± std) | tp (seed mean ± std) | search: best trial at ≤ target, per seed | "
          "search ≥ hand − 1 image | search ≥ tp − 1 image |")
    print("|---|---|---|---|---|---|")
    for t in targets:
        # a baseline point above its target (Torch-Pruning's bisection found no ratio that reaches it, and
        # kept the dense network) is no point at that target
        row = {k: [p["test_accuracy"] for p in results[k]["points"] if p["target"] == t and p["macs_ratio"] <= t + 1e-9]
               for k in base}
        bests = [max((p["test_accuracy"] for p in s["points"] if p["macs_ratio"] <= t + 1e-9), default=math.nan)
                 for s in searches]
        checks = []
        for k in ("hand", "tp"):
            if row.get(k) and bests:
                floor = statistics.mean(row[k]) - one_image
                checks.append(f"{sum(b >= floor for b in bests)}/{len(bests)}")
            else:
                checks.append("–")
        print(f"| {t:.0%} | {_ms(row.get('hand', []))} | {_ms(row.get('tp', []))} | "
              f"{', '.join(f'{100 * b:.2f}' for b in bests)} | {checks[0]} | {checks[1]} |")
    if searches:
        print("\nproxy rank correlation (Spearman, proxy vs fine-tuned val / test accuracy), per search seed: "
              + ", ".join(f"{s['proxy_rho']:.2f} / {s['proxy_rho_test']:.2f}" for s in searches))
        walls = [s["wall_s"] for s in searches]
        for k in ("hand", "tp"):
            if k in results:
                print(f"search wall time / {k} wall time: "
                      + ", ".join(f"{w / results[k]['wall_s']:.2f}" for w in walls))


if __name__ == "__main__":
    main()
