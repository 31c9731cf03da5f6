"""Information cut-offs: keep counts read off each group's CMI curve (criteria.md §5.4).

The ``cmi`` criterion records, per group, ``cmi_values``: the conditional mutual information
I(Y; X_j | X_S) of each greedily selected channel, in selection order. A cut-off turns that curve
into a keep count:

* ``cmi_cumulative`` — keep until the cumulative CMI reaches a fraction ``rho`` of the layer total;
* ``cmi_marginal`` — stop when the next value falls below ``epsilon`` times the first;
* ``cmi_knee`` — the knee of the sorted curve (largest distance to the chord), times ``scale``.

When the greedy stopped early (the criterion's ``cmi_steps`` extra: the channels it placed), the
rest of the curve is what :class:`~prunetune.pruning.criteria.renyi.CmiRanking` documents: after a
provable vanishing (the default's only early stop) zeros, in increasing channel index, which is the
full greedy's answer up to 1e-12 bits, so every cut-off reads it as it would the full curve (a zero
adds nothing to the cumulative sum, is below any ``epsilon`` > 0 times the first value, and sorts
last for the knee); after ``max_steps`` or ``stop_gain`` the CMIs of the remaining channels at the
last evaluated step, a curve the cut-offs read like any other. ``cmi_knee`` reads only the knee
(:mod:`prunetune.pruning.knee`), so where ``cmi`` is scored for it alone the greedy stops once the
knee is settled (``stop_at_knee``; the strategy declares it in ``scored_with``; not with a
``condition``, ``stop_gain`` or ``max_steps``): the same knee, so the same counts at every scale,
after a fraction of the greedy's work, provided no later CMI is below −1e-9 bits (proved at α = 1,
measured at 1.01 and 2).

With a MACs budget the cut-off parameter is bisected globally (one value for every group) to the
plan with the most MACs not above the budget; the channels that parameter step cannot reach are
then given back where the budget allows (the groups that the next step would grow first), so the
plan meets the sampled target as closely as the ``ratios`` projection does (within one channel per
group).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from prunetune.exceptions import BudgetInfeasibleError, ConfigError
from prunetune.pruning.allocation import KeepRule, fill_to_budget, smallest_fraction
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.knee import knee_keep
from prunetune.pruning.macs import analytic_cost
from prunetune.pruning.strategies.base import register

CURVE = "cmi_values"


def cumulative_keep(values: Tensor, rho: float) -> int:
    """Smallest k whose first k CMI values reach ``rho`` of the total (negatives count as 0)."""
    v = values.to(torch.float64).clamp_min(0)
    total = float(v.sum())
    if total <= 0:
        return 1
    reached = torch.nonzero(torch.cumsum(v, 0) >= rho * total * (1 - 1e-9))
    return int(reached[0]) + 1 if len(reached) else v.numel()


def marginal_keep(values: Tensor, epsilon: float) -> int:
    """Channels before the first value below ``epsilon`` times the first value (at least 1)."""
    v = values.to(torch.float64)
    first = float(v[0])
    if first <= 0:
        return 1
    below = torch.nonzero(v[1:] < epsilon * first)
    return int(below[0]) + 1 if len(below) else v.numel()


def _curves(groups: ModelGroups, extras: Mapping[str, Mapping[str, Any]] | None, strategy: str) -> dict[str, Tensor]:
    curves = {}
    for g in groups:
        curve = (extras or {}).get(g.name, {}).get(CURVE)
        if curve is None:
            raise ConfigError(f"allocation strategy {strategy!r} needs the 'cmi' criterion's curves for group "
                              f"{g.name!r}; score with 'cmi' (the pipeline adds it for the CMI cut-off strategies)")
        curves[g.name] = torch.as_tensor(curve)
    return curves


def _cutoff_strategy(name: str, param: str, param_default: float, low: float, high: float, increasing: bool,
                     count: Callable[[Tensor, float], int], scored_with: Mapping[str, Mapping[str, Any]] | None = None):
    """Register a strategy whose keep counts come from ``count(curve, parameter)``.

    ``increasing``: whether more of the parameter keeps more channels (bisection direction).
    """

    def strategy(groups: ModelGroups, *, rule: KeepRule, macs_budget: float | None = None,
                 params: Mapping[str, Any] | None = None, extras: Mapping[str, Mapping[str, Any]] | None = None,
                 ratio: float | None = None, ratios: Mapping[str, float] | None = None,
                 default: float | None = None, scores: Mapping[str, Any] | None = None) -> dict[str, int]:
        if ratio is not None or ratios or default is not None:
            raise ConfigError(f"allocation strategy {name!r} sets its own counts; drop 'ratio', 'ratios' and 'default'")
        params = dict(params or {})
        unknown = sorted(set(params) - {param})
        if unknown:
            raise ConfigError(f"allocation strategy {name!r} takes only {param!r}, got {unknown[0]!r}")
        curves = _curves(groups, extras, name)

        def keep_at(value: float) -> dict[str, int]:
            return {g: rule.clamp(c.numel(), count(c, value)) for g, c in curves.items()}

        if macs_budget is None:
            value = float(params.get(param, param_default))
            if not low <= value <= high:
                raise ConfigError(f"allocation.{param} for {name!r} must be in [{low}, {high}], got {value!r}")
            return keep_at(value)
        if param in params:
            raise ConfigError(f"with allocation.macs_budget, {name!r} finds {param!r} itself; drop allocation.{param}")
        return _bisect(groups, keep_at, macs_budget, rule, low, high, increasing, name)

    strategy.__name__ = name
    strategy.__doc__ = f"Keep counts from each group's CMI curve by {name} ({param}, default {param_default})."
    return register(name, params=(param,), criteria=("cmi",), scored_with=scored_with)(strategy)


def _bisect(groups, keep_at, budget, rule, low, high, increasing, name, steps: int = 40) -> dict[str, int]:
    target = budget * analytic_cost(groups).macs

    def macs(value: float) -> int:
        return analytic_cost(groups, keep_at(value)).macs

    thin, fat = (low, high) if increasing else (high, low)
    if macs(thin) > target:
        floor = max(macs(thin) / analytic_cost(groups).macs, smallest_fraction(groups, rule))
        raise BudgetInfeasibleError(f"MACs budget {budget:g} is below the smallest fraction {floor:.4f} that "
                                    f"{name!r} reaches; raise the budget to at least {floor:.4f}")
    if macs(fat) <= target:
        return keep_at(fat)
    for _ in range(steps):  # invariant: macs(thin) <= target < macs(fat)
        mid = 0.5 * (thin + fat)
        thin, fat = (mid, fat) if macs(mid) <= target else (thin, mid)
    return fill_to_budget(groups, keep_at(thin), {g: float(k) for g, k in keep_at(fat).items()}, target, rule)


cmi_cumulative = _cutoff_strategy("cmi_cumulative", "rho", 0.95, 0.0, 1.0, True, cumulative_keep)
cmi_marginal = _cutoff_strategy("cmi_marginal", "epsilon", 0.05, 0.0, 1.0, False, marginal_keep)
# the knee is all cmi_knee reads: the greedy may stop once it is settled (renyi.cmi_greedy, stop_at_knee)
cmi_knee = _cutoff_strategy("cmi_knee", "scale", 1.0, 0.0, 64.0, True,
                            lambda c, s: max(1, math.floor(knee_keep(c) * s + 1e-9)),
                            scored_with={"cmi": {"stop_at_knee": True}})
