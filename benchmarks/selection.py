"""What the screening selection leaves on the table: every plan of a search's pool fine-tuned.

For each seed, ``prunetune search`` runs as in ``benchmarks/front.py`` (default space and screening,
``--trials`` fine-tunes); then every distinct plan of its screened pool is fine-tuned with the
search's seed, as its trial would have been (the selected ones reproduce the search's trials: the
script checks). Judged on test accuracy against the hand recipe of a ``front.py --json`` file run on
the same dense model (``--baselines``; its hypervolume at the search's fine-tune count, as there):

* **search**: the trials the selection chose;
* **ceiling**: ``--trials`` plans of the pool chosen greedily by their *test* hypervolume, what a
  selection that knew the outcome would reach (optimistic: it selects on test noise too);
* **ρ within bins**: the proxy's rank correlation with fine-tuned test accuracy over the whole pool,
  within quartiles of MACs (the question the selection asks of it).

If the ceiling is close to the search, better trial placement cannot win more on this setting; the
pool's plans, or the fine-tunes' noise, decide. Not a test; run by hand (about a minute per seed on
the small nets, 8 minutes on ResNet-20)::

    python benchmarks/front.py --model zoo_se --pretrain-epochs 20 --budget 0.3 --targets 0.1,0.15,0.2,0.3 \\
        --seeds 3 --only hand,tp --workdir W --json W/front.json
    python benchmarks/selection.py --model zoo_se --pretrain-epochs 20 --budget 0.3 --seeds 3 --workdir W \\
        --baselines W/front.json --json W/selection.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import torch

import front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=front.MODEL["name"])
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workdir", required=True, help="the dense model is trained here (as front.py does)")
    parser.add_argument("--baselines", required=True, help="a front.py --json file on the same dense model")
    parser.add_argument("--json", default=None, help="write every fine-tuned plan here")
    parser.add_argument("--report", default=None, help="only report an earlier --json file")
    args = parser.parse_args()
    baselines = json.loads(Path(args.baselines).read_text())
    if args.report:
        report(json.loads(Path(args.report).read_text()), baselines)
        return
    torch.set_num_threads(1)
    front.MODEL["name"] = args.model
    front.PRETRAIN["epochs"] = args.pretrain_epochs
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    dense = front.train_dense(work)
    if abs(dense["accuracy"] - baselines["dense"]["accuracy"]) > 1e-9:
        raise SystemExit(f"the dense model ({dense['accuracy']:.4f}) is not the baselines' "
                         f"({baselines['dense']['accuracy']:.4f}): run both with the same --model and "
                         "--pretrain-epochs")
    results = {"dense": dense, "budget": args.budget, "trials": args.trials, "seeds": {}}
    for seed in range(args.seeds):
        results["seeds"][str(seed)] = pool_of_one_search(work, dense["checkpoint"], args, seed)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=0))
    report(results, baselines)


def pool_of_one_search(work: Path, checkpoint: str, args: argparse.Namespace, seed: int) -> dict:
    from prunetune.recipes.pipeline import dense_base, load_inputs, score_table
    from prunetune.search import parse_search_config, run_search
    from prunetune.search.objective import run_trial
    from prunetune.search.runner import SCREEN_FILE
    from prunetune.search.screening import ScreenOutcome
    from prunetune.spaces import space_criteria
    from prunetune.tracking import load_search

    finetune = {"epochs": 3, "lr": 0.05, "batch_size": 64}
    name = f"selection-seed{seed}-{int(time.time())}"
    config = parse_search_config({
        "recipe": {**front.recipe_dict(checkpoint, finetune), "seed": seed}, "macs_budget": args.budget,
        "trials": args.trials, "concurrency": 2, "cpus_per_trial": 1, "seed": seed, "experiment": name,
        "tracking_uri": str(work / "mlflow.db"), "storage_path": str(work / "runs")})
    outcome = run_search(config, resume=False, show_progress=False)
    trials = load_search(outcome.tracking_uri, name, parent_run_id=outcome.parent_run_id).trials
    pool = ScreenOutcome.from_json((config.settings.experiment_dir / SCREEN_FILE).read_text())
    # the trials' own setting: the search's recipe on one thread per trial
    base = dense_base(config.recipe, load_inputs(config.recipe), show_progress=False)
    base = dataclasses.replace(base, recipe=base.recipe.with_changes(threads=1))
    table = score_table(base, space_criteria(config.space, config.recipe.criterion.params), show_progress=False,
                        blended=config.space.criteria)
    t0, tuned, rows = time.perf_counter(), {}, []
    for c in pool.candidates:
        row = {"macs_ratio": c.macs_ratio, "proxy": c.proxy, "source": c.source, "selected": c.selected,
               "ok": c.ok, "plan": c.plan_id or json.dumps(c.params, sort_keys=True)}
        if c.ok and row["plan"] not in tuned:
            tuned[row["plan"]] = run_trial(c.config, base, table).metrics["test_accuracy"]
        row["test_accuracy"] = tuned.get(row["plan"], math.nan)
        rows.append(row)
    searched = sorted((t.macs_ratio, t.test_accuracy) for t in trials)
    replayed = sorted((r["macs_ratio"], r["test_accuracy"]) for r in rows if r["selected"])
    same = sum(abs(a[1] - b[1]) < 1e-9 for a, b in zip(searched, replayed)) if len(searched) == len(replayed) else 0
    print(f"seed {seed}: {len(tuned)} distinct plans fine-tuned in {time.perf_counter() - t0:.0f}s; "
          f"{same} of {len(searched)} trials reproduced", flush=True)
    if same != len(searched):  # the search column and the ceiling would be two draws of the fine-tunes' noise
        print(f"  WARNING: seed {seed}'s replay differs from its search; its row mixes two fine-tune draws")
    return {"trials": [{"macs_ratio": m, "test_accuracy": a} for m, a in searched], "pool": rows,
            "reproduced": same == len(searched)}


def ceiling(rows: list[dict], k: int, area) -> list[tuple[float, float]]:
    """``k`` distinct plans of the pool chosen greedily by the test hypervolume they add."""
    plans = {r["plan"]: (r["macs_ratio"], r["test_accuracy"]) for r in rows if r["ok"]}
    chosen: list[tuple[float, float]] = []
    for _ in range(min(k, len(plans))):
        now = area(chosen)
        key = max(plans, key=lambda p: area(chosen + [plans[p]]) - now)
        chosen.append(plans.pop(key))
    return chosen


def within_bins_rho(rows: list[dict], bins: int = 4) -> float:
    from prunetune.search.selection import spearman

    plans = sorted({r["plan"]: r for r in rows if r["ok"]}.values(), key=lambda r: r["macs_ratio"])
    size = math.ceil(len(plans) / bins)
    rhos = [spearman([r["proxy"] for r in part], [r["test_accuracy"] for r in part])
            for part in (plans[i:i + size] for i in range(0, len(plans), size))]
    rhos = [r for r in rhos if not math.isnan(r)]
    return statistics.mean(rhos) if rhos else math.nan


def report(results: dict, baselines: dict) -> None:
    budget = results["budget"]

    def area(points):
        return front.hypervolume(points, ref_macs=budget)

    hand, pooled, how = front.equal_compute_hypervolume(baselines["hand"]["points"], results["trials"], area)
    print(f"\nhand recipe: hypervolume {hand:.4f} of {pooled} fine-tunes ({how}); budget {budget:.0%}, "
          f"{results['trials']} trials per search")
    print("\n| seed | distinct plans | search × hand | ceiling × hand | ρ within MACs quartiles (proxy vs test) |")
    print("|---|---:|---:|---:|---:|")
    found, tops = [], []
    for seed, s in results["seeds"].items():
        found.append(area([(t["macs_ratio"], t["test_accuracy"]) for t in s["trials"]]) / hand)
        tops.append(area(ceiling(s["pool"], results["trials"], area)) / hand)
        plans = len({r["plan"] for r in s["pool"] if r["ok"]})
        flag = "" if s.get("reproduced", True) else " (replay differs)"
        print(f"| {seed}{flag} | {plans} | {found[-1]:.3f} | {tops[-1]:.3f} | {within_bins_rho(s['pool']):.2f} |")
    print(f"| mean | | {statistics.mean(found):.3f} | {statistics.mean(tops):.3f} | |")


if __name__ == "__main__":
    main()
