"""CMI cut-offs on hand-made curves, and budget bisection on the cut-off parameter."""

from __future__ import annotations

import pytest
import torch

from prunetune.exceptions import BudgetInfeasibleError, ConfigError
from prunetune.models import create_model
from prunetune.pruning.allocation import KeepRule
from prunetune.pruning.strategies.cutoffs import cumulative_keep, knee_keep, marginal_keep
from prunetune.pruning.groups import find_groups
from prunetune.pruning.macs import analytic_cost
from prunetune.pruning.strategies import STRATEGIES

CURVE = torch.tensor([4.0, 3.0, 2.0, 0.5, 0.25, 0.125, 0.125, 0.0])  # total 10, exact in binary


def test_cumulative_keeps_until_the_fraction_is_reached() -> None:
    assert cumulative_keep(CURVE, 0.4) == 1  # 4/10
    assert cumulative_keep(CURVE, 0.7) == 2  # 7/10
    assert cumulative_keep(CURVE, 0.9) == 3  # 9/10
    assert cumulative_keep(CURVE, 0.95) == 4  # 9.5/10
    assert cumulative_keep(CURVE, 0.96) == 5  # 9.75/10
    assert cumulative_keep(CURVE, 1.0) == 7
    assert cumulative_keep(torch.tensor([1.0, -0.5, 1.0]), 1.0) == 3  # a negative estimate counts as 0


def test_marginal_stops_below_epsilon_times_the_first() -> None:
    assert marginal_keep(CURVE, 0.6) == 2  # 2.0 < 0.6 * 4
    assert marginal_keep(CURVE, 0.1) == 4  # 0.25 < 0.4
    assert marginal_keep(CURVE, 0.0) == 8  # never below 0
    assert marginal_keep(torch.tensor([0.0, 1.0]), 0.5) == 1


def test_a_vanished_tail_of_zeros_is_read_like_the_full_curve() -> None:
    # the greedy stopped after 4 channels: the rest carry 0 (the full curve has |noise| < 1e-12 there)
    stopped = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    full = stopped + torch.tensor([0.0, 0.0, 0.0, 0.0, 3e-13, 1e-13, 2e-13, 1e-13])
    for rho in (0.5, 0.9, 0.99, 1.0):
        assert cumulative_keep(stopped, rho) == cumulative_keep(full, rho)
    for eps in (0.5, 0.1, 1e-6):
        assert marginal_keep(stopped, eps) == marginal_keep(full, eps) == min(4, marginal_keep(stopped, eps))
    assert knee_keep(stopped) == knee_keep(full) <= 4


def test_knee_of_a_hand_made_curve() -> None:
    elbow = torch.tensor([10.0, 9.0, 8.0, 1.0, 0.8, 0.6, 0.4, 0.2])
    assert knee_keep(elbow) == 4  # the sharp drop after the third channel: the point at 1.0 is farthest from the chord
    assert knee_keep(torch.tensor([3.0, 2.0, 1.0])) == 3  # a straight line has no knee: keep all
    assert knee_keep(torch.tensor([5.0, 5.0, 5.0, 5.0])) == 4


@pytest.fixture(scope="module")
def groups():
    return find_groups(create_model("resnet20"), (3, 32, 32))


def _extras(groups, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {g.name: {"cmi_values": torch.sort(torch.rand(g.channels, generator=gen) ** 3, descending=True).values}
            for g in groups}


@pytest.mark.parametrize("strategy", ["cmi_cumulative", "cmi_marginal", "cmi_knee"])
@pytest.mark.parametrize("budget", [0.8, 0.5, 0.25])
def test_budget_bisection_is_always_feasible_and_tight(groups, strategy, budget) -> None:
    keep = STRATEGIES.get(strategy)(groups, rule=KeepRule(), macs_budget=budget, extras=_extras(groups))
    dense = analytic_cost(groups).macs
    frac = analytic_cost(groups, keep).macs / dense
    assert frac <= budget
    assert frac > budget - 0.15  # the parameter is bisected, not left at its extreme


def test_cutoff_without_budget_uses_the_parameter(groups) -> None:
    extras = _extras(groups)
    loose = STRATEGIES.get("cmi_cumulative")(groups, rule=KeepRule(), params={"rho": 0.99}, extras=extras)
    tight = STRATEGIES.get("cmi_cumulative")(groups, rule=KeepRule(), params={"rho": 0.5}, extras=extras)
    assert all(tight[g] <= loose[g] for g in loose) and sum(tight.values()) < sum(loose.values())
    expected = {g: cumulative_keep(extras[g]["cmi_values"], 0.5) for g in extras}
    assert tight == expected


def test_cutoff_errors(groups) -> None:
    with pytest.raises(ConfigError, match="needs the 'cmi' criterion"):
        STRATEGIES.get("cmi_knee")(groups, rule=KeepRule(), extras={})
    with pytest.raises(ConfigError, match="rho"):
        STRATEGIES.get("cmi_cumulative")(groups, rule=KeepRule(), params={"rho": 1.5}, extras=_extras(groups))
    with pytest.raises(ConfigError, match="'ratio'"):
        STRATEGIES.get("cmi_marginal")(groups, rule=KeepRule(), ratio=0.3, extras=_extras(groups))
    with pytest.raises(BudgetInfeasibleError, match="smallest fraction"):
        STRATEGIES.get("cmi_knee")(groups, rule=KeepRule(min_keep=8), macs_budget=0.05, extras=_extras(groups))
