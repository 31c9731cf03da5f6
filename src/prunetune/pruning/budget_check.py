"""The counted check after every prune and every trial: the pruned network against its MACs target.

Plans are sized with the analytic count (or, where a model has layers it does not cover, by counting
pruned copies); this check counts the network that actually came out, so a wrong number can never
pass silently as a result.
"""

from __future__ import annotations

from torch import nn

from prunetune.exceptions import BudgetExceededError
from prunetune.pruning.macs import Cost, count_cost
from prunetune.pruning.plan import PruningPlan

ROUNDING = 0.005  # counted MACs may exceed the target by this fraction (whole-channel rounding)


def macs_target(plan: PruningPlan, macs_budget: float | None, dense_macs: int) -> float:
    """The MACs a pruned network may have: the budget's share of dense, else what its plan promised."""
    return macs_budget * dense_macs if macs_budget is not None else float(plan.pruned.macs)


def check_pruned_macs(model: nn.Module, input_shape: tuple[int, ...], plan: PruningPlan, *,
                      macs_budget: float | None, dense_macs: int) -> Cost:
    """Count ``model`` and return its cost; raise :class:`BudgetExceededError` above the target.

    Args:
        plan: the plan ``model`` was pruned with (its ``pruned`` cost is the target without a budget).
        macs_budget: the recipe's (or trial's) budget, a fraction of ``dense_macs``, or None.
        dense_macs: the dense network's counted MACs.
    """
    cost = count_cost(model, input_shape)
    target = macs_target(plan, macs_budget, dense_macs)
    if cost.macs > target * (1.0 + ROUNDING):
        what = f"budget {macs_budget:g}" if macs_budget is not None else "plan's own count"
        raise BudgetExceededError(
            f"the pruned network counts {cost.macs} MACs ({cost.macs / dense_macs:.4f} of dense), above its "
            f"target of {target:.0f} ({target / dense_macs:.4f}, the {what}) by more than {ROUNDING:.1%} rounding; "
            "the analytic count is wrong for this model: `prunetune groups --model NAME` shows its groups, "
            "please report the model")
    return cost
