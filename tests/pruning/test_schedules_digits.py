"""Every schedule survives a short fine-tune: on digits (ResNet-20, 30% MACs, 3 epochs, 3 seeds) each
ends within 2 points of ``hard`` on the same plan, in mean test accuracy (plain SFP within 4: see
:data:`TOLERANCE`). An accuracy check, not timing."""

from __future__ import annotations

import json
import statistics

import pytest

from prunetune.recipes.pipeline import prepare, run_recipe
from prunetune.recipes.schema import Recipe

SCHEDULES = ["hard", "sfp", "asfp", "ghfp", {"name": "ghfp", "base": "asfp"}, "iterative"]
RECIPE = {
    "model": {"name": "resnet20", "num_classes": 10, "in_channels": 1},
    "data": {"name": "digits", "image_size": 8, "batch_size": 64},
    "pretrain": {"epochs": 6, "lr": 0.1, "batch_size": 64},
    "calibration": {"size": 128},
    "criterion": {"blend": {"capacity": 1.0, "independence": 1.0}, "normalizer": "rank"},
    "allocation": {"macs_budget": 0.3},
    "finetune": {"epochs": 3, "lr": 0.05, "batch_size": 64},
    "device": "cpu",
}
# Plain SFP removes its zeroed filters after the last epoch, in which they regrew, with no epoch left
# to recover (what ASFP and GHFP address). Its gap to hard depends on the machine's arithmetic: within
# 2 points on the machines of stops up to 36, and 2.7-3.1 on a 2-core AMD EPYC (stop 37: seeds 0-4
# at 94.4-96.3% against hard's 97.8-98.5%; means of seeds 0-2 95.0 against 98.1).
TOLERANCE = {"sfp": 0.04}


@pytest.mark.slow
def test_every_schedule_ends_within_two_points_of_hard_on_digits() -> None:
    base = prepare(Recipe.from_dict(RECIPE), show_progress=False)
    means, plans = {}, set()
    for schedule in SCHEDULES:
        accs = []
        for seed in (0, 1, 2):
            result = run_recipe(Recipe.from_dict({**RECIPE, "schedule": schedule, "seed": seed}), base=base,
                                show_progress=False)
            accs.append(result.pruned["accuracy"])
            plans.add(json.dumps(result.plan.kept))
        means[str(schedule)] = statistics.mean(accs)
    assert len(plans) == 1  # the same plan for every schedule and seed
    hard = means.pop("hard")
    assert all(m >= hard - TOLERANCE.get(name, 0.02) for name, m in means.items()), (hard, means)
