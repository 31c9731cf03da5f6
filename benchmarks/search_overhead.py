"""Search overhead in the demo setting, and the space's cost per call on ResNet-56 (not a test).

Runs the ``prunetune demo`` search (ResNet-20 on 1×16×16 digits, 12 trials, 2 at a time, local Ray,
sqlite MLflow) and prints:

* per trial: driver-side wall time (trial start → complete) vs the trial's own work (plan +
  fine-tune + evaluation, measured inside :func:`prunetune.search.run_trial`); the rest is Ray,
  Optuna and MLflow orchestration;
* the search loop as a whole: ``1 − Σ work / (concurrency × loop wall)``, trials per hour;
* start-up (Ray, dense model, scores, MLflow) outside the loop;
* the ScoreTable computed once vs what recomputing it in every trial would cost;
* the define-by-run space and the config → recipe → budget projection per call on ResNet-56.

Usage: ``python benchmarks/search_overhead.py [--trials 12] [--concurrency 2] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from ray import tune

from prunetune.cli.demo import demo_config_path
from prunetune.models import create_model
from prunetune.recipes.pipeline import prepare, score_table
from prunetune.pruning.groups import find_groups
from prunetune.pruning.strategies import STRATEGIES
from prunetune.recipes.schema import Recipe
from prunetune.search import load_search_config, run_search
from prunetune.spaces import RandomTrial, SpaceSpec, build_space, space_criteria, trial_recipe
from prunetune.tracking import load_search
from prunetune.tracking.store import client


class LoopClock(tune.Callback):
    """Wall time of Ray Tune's loop (first trial start to experiment end)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.start = self.start or time.perf_counter()

    def on_experiment_end(self, trials, **info) -> None:
        self.end = time.perf_counter()


def search_numbers(trials: int, concurrency: int, out: Path) -> tuple[dict[str, float], object]:
    """Run the demo search with a loop clock; per-trial times come back from MLflow."""
    config = load_search_config(demo_config_path(), {
        "experiment": "bench", "trials": trials, "concurrency": concurrency,
        "tracking_uri": str(out / "mlflow.db"), "storage_path": str(out / "runs")})
    clock = LoopClock()
    t0 = time.perf_counter()
    outcome = run_search(config, resume=False, callbacks=[clock], show_progress=False)
    total = time.perf_counter() - t0
    records = load_search(outcome.tracking_uri, "bench", parent_run_id=outcome.parent_run_id)
    c = client(outcome.tracking_uri)
    runs = [c.get_run(t.run_id).data.metrics for t in records.trials]
    screen = c.get_run(outcome.parent_run_id).data.metrics.get("screen_s", 0.0)
    work = [m["work_s"] for m in runs]
    wall = [m["wall_s"] for m in runs]
    loop = clock.end - clock.start
    return {
        "trials": len(runs), "work_s": statistics.mean(work), "wall_s": statistics.mean(wall),
        "trial_overhead": 1 - sum(work) / sum(wall), "loop_s": loop,
        "loop_overhead": 1 - sum(work) / (concurrency * loop), "per_hour": len(runs) / loop * 3600,
        "per_hour_total": len(runs) / total * 3600, "startup_s": total - loop - screen, "screen_s": screen,
        "total_s": total,
    }, config


def score_numbers(config) -> dict[str, float]:
    """Seconds to compute the ScoreTable without the cache (what a trial would pay to re-score)."""
    recipe = config.recipe.with_changes(calibration=dataclasses.replace(config.recipe.calibration, use_cache=False))
    base = dataclasses.replace(prepare(config.recipe, show_progress=False), recipe=recipe)
    out = {}
    for label, criteria in (("space criteria", space_criteria(config.space)),
                            ("hrank (activation)", {"hrank": None})):
        t0 = time.perf_counter()
        score_table(base, criteria, show_progress=False)
        out[label] = time.perf_counter() - t0
    return out


def space_numbers(calls: int = 2000) -> dict[str, float]:
    groups = find_groups(create_model("resnet56"), (3, 32, 32))
    base = Recipe.from_dict({"model": "resnet56", "data": "digits", "criterion": "l1", "allocation": {"ratio": 0.5}})
    out = {}
    scores = {g.name: torch.rand(g.channels, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)}
    for preset in ("per_stage", "per_group"):
        space = build_space(SpaceSpec(ratios=preset, normalizers=("rank", "zscore"), lr=(0.01, 0.1)), groups, budget=0.5)
        t0 = time.perf_counter()
        configs = [space.define(RandomTrial(i)) for i in range(calls)]
        out[f"space.define ({preset})"] = (time.perf_counter() - t0) / calls
        t0 = time.perf_counter()
        for config in configs[:100]:
            a = trial_recipe(base, config, groups).allocation
            STRATEGIES.get(a.strategy)(groups, rule=a.rule, ratios=a.ratios, macs_budget=a.macs_budget, scores=scores)
        out[f"trial_recipe + budget projection ({preset})"] = (time.perf_counter() - t0) / 100
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--out", default=None, help="where the benchmark's store and Ray results go (default: a temp dir)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    out = Path(args.out or tempfile.mkdtemp(prefix="prunetune-bench-")).resolve()
    s, config = search_numbers(args.trials, args.concurrency, out)
    scores = score_numbers(config)
    space = space_numbers()
    rows = [
        ("finished trials", f"{s['trials']:.0f}"),
        ("trial work (plan + fine-tune + eval), mean", f"{s['work_s']:.2f} s"),
        ("trial wall on the driver, mean", f"{s['wall_s']:.2f} s"),
        ("orchestration share of a trial's wall time", f"{100 * s['trial_overhead']:.0f}%"),
        ("search loop wall", f"{s['loop_s']:.1f} s"),
        ("orchestration share of the loop (x concurrency)", f"{100 * s['loop_overhead']:.0f}%"),
        ("trials per hour (loop)", f"{s['per_hour']:.0f}"),
        ("trials per hour (incl. start-up)", f"{s['per_hour_total']:.0f}"),
        ("start-up: Ray, dense model, scores, MLflow", f"{s['startup_s']:.1f} s"),
        ("screening (candidates by adaptive-BN proxy)", f"{s['screen_s']:.1f} s"),
        ("search wall, start to end", f"{s['total_s']:.1f} s"),
    ]
    for label, seconds in scores.items():
        rows.append((f"ScoreTable once, {label}", f"{seconds:.2f} s"))
        rows.append((f"  ... if recomputed per trial ({s['trials']:.0f} trials)",
                     f"{seconds * s['trials']:.1f} s = {100 * seconds / s['work_s']:.0f}% of a trial's work"))
    for label, seconds in space.items():
        rows.append((f"ResNet-56 {label}, per call", f"{1e3 * seconds:.3f} ms"))
    width = max(len(r[0]) for r in rows)
    print(f"search overhead: demo setting ({args.trials} trials, {args.concurrency} at a time), results in {out}")
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 24}")
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
