"""Plans round-trip and replay deterministically; budgets are met or refused with the floor named."""

from __future__ import annotations

import copy

import pytest
import torch

from prunetune.exceptions import BudgetInfeasibleError, ConfigError, InvalidPlanError, UnknownNameError
from prunetune.models import create_model
from prunetune.pruning.allocation import KeepRule, keep_for_budget, keep_from_ratios, smallest_fraction
from prunetune.pruning.groups import find_groups
from prunetune.pruning.macs import analytic_cost
from prunetune.pruning.plan import PruningPlan, make_plan, top_k
from prunetune.pruning.surgery import apply_plan

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def resnet56():
    model = create_model("resnet56").eval()
    return model, find_groups(model, SHAPE)


def test_plan_json_round_trip(tmp_path, resnet56) -> None:
    model, groups = resnet56
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups},
                     keep_from_ratios(groups, {}, default=0.3), meta={"criterion": "l1"})
    again = PruningPlan.load(plan.save(tmp_path / "plan.json"))
    assert again == plan
    assert PruningPlan.from_json(plan.to_json()).to_dict() == plan.to_dict()


def test_replay_is_deterministic(resnet56) -> None:
    model, groups = resnet56
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups}, keep_from_ratios(groups, {}, default=0.5))
    a = apply_plan(copy.deepcopy(model), plan)
    b = apply_plan(copy.deepcopy(model), PruningPlan.from_json(plan.to_json()))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_top_k_keeps_highest_and_breaks_ties_by_index() -> None:
    assert top_k(torch.tensor([0.1, 0.9, 0.5, 0.9]), 2) == (1, 3)
    assert top_k(torch.tensor([1.0, 1.0, 1.0]), 2) == (0, 1)


@pytest.mark.parametrize("budget", [0.9, 0.5, 0.3, 0.12])
def test_budget_gives_the_closest_plan_not_above(resnet56, budget: float) -> None:
    _, groups = resnet56
    keep = keep_for_budget(groups, budget)
    dense = analytic_cost(groups).macs
    frac = analytic_cost(groups, keep).macs / dense
    assert frac <= budget
    # Closest not above: no group can keep one more channel without going over the budget.
    for g in groups:
        if keep[g.name] < g.channels:
            assert analytic_cost(groups, {**keep, g.name: keep[g.name] + 1}).macs > budget * dense
    assert frac > budget - 0.01


def test_budget_with_relative_ratios_prunes_weighted_groups_more(resnet56) -> None:
    _, groups = resnet56
    relative = {g.name: (0.8 if g.name.startswith("layer3") else 0.2) for g in groups}  # relative prune ratios
    keep = keep_for_budget(groups, 0.5, relative=relative)
    assert keep["layer3.1.conv1"] / 64 < keep["layer1.1.conv1"] / 16
    zero = keep_for_budget(groups, 0.6, relative={"conv1": 0.0})
    assert zero["conv1"] == 16


def test_impossible_budget_names_the_smallest_fraction(resnet56) -> None:
    _, groups = resnet56
    floor = smallest_fraction(groups, KeepRule(min_keep=4))
    with pytest.raises(BudgetInfeasibleError, match=f"{floor:.4f}"):
        keep_for_budget(groups, floor / 2, rule=KeepRule(min_keep=4))


def test_bad_ratios_and_names(resnet56) -> None:
    _, groups = resnet56
    with pytest.raises(ConfigError, match="1.2"):
        keep_from_ratios(groups, {"conv1": 1.2})
    with pytest.raises(UnknownNameError, match="did you mean 'layer1.0.conv1'"):
        keep_from_ratios(groups, {"layer1.0.conv": 0.2})
    with pytest.raises(ConfigError, match="macs_budget"):
        keep_for_budget(groups, 1.5)


def test_plan_from_bad_json() -> None:
    with pytest.raises(InvalidPlanError, match="not valid JSON"):
        PruningPlan.from_json("{")
    with pytest.raises(InvalidPlanError, match="format"):
        PruningPlan.from_dict({"format": 99})
