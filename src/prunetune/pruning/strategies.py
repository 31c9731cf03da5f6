"""Allocation strategies: how many channels each group keeps, by name.

A strategy is ``fn(groups, *, rule, ratio, ratios, default, macs_budget, params, extras, scores) -> keep``
where ``extras`` are the ScoreTable extras of the selection criterion (e.g. CMI curves), ``scores``
the recipe's (blended) scores per group, and ``keep`` maps every group to its channel count. Under a
MACs budget every strategy returns a maximal plan: no group can keep one more channel (one more
``round_to`` step) without going over, and none keeps fewer than ``rule.floor(N)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prunetune._registry import Registry
from prunetune.exceptions import ConfigError
from prunetune.pruning.allocation import KeepRule, keep_for_budget, keep_from_ratios
from prunetune.pruning.groups import ModelGroups

Strategy = Callable[..., dict[str, int]]
STRATEGIES: Registry[Strategy] = Registry("allocation strategy")

# strategy -> criteria whose ScoreTable extras it reads (scored with their defaults if not chosen)
STRATEGY_CRITERIA: dict[str, tuple[str, ...]] = {}


def strategy_criteria(strategy: str) -> tuple[str, ...]:
    """The criteria a strategy needs scored for its ``extras`` (e.g. ``("cmi",)`` for the CMI cut-offs)."""
    return STRATEGY_CRITERIA.get(strategy, ())


@STRATEGIES.register("ratios")
def ratios_strategy(
    groups: ModelGroups,
    *,
    rule: KeepRule,
    ratio: float | None = None,
    ratios: Mapping[str, float] | None = None,
    default: float | None = None,
    macs_budget: float | None = None,
    params: Mapping[str, Any] | None = None,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
    scores: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """One ratio, per-group ratios (+ default), or a MACs budget reached by scaling keep fractions
    in the shape the ratios give (see :func:`~prunetune.pruning.allocation.keep_for_budget`)."""
    if params:
        raise ConfigError(f"allocation strategy 'ratios' takes no parameter {sorted(params)[0]!r}")
    if macs_budget is not None:
        relative = dict(ratios or {})
        if relative and default is not None:
            relative = {g.name: relative.get(g.name, default) for g in groups}
        elif ratio is not None:
            relative = {}
        for name in relative:
            groups[name]
        return keep_for_budget(groups, macs_budget, relative=relative or None, rule=rule)
    if ratio is not None:
        return keep_from_ratios(groups, {}, default=ratio, rule=rule)
    return keep_from_ratios(groups, ratios or {}, default=default or 0.0, rule=rule)


ratios_strategy.params_allowed = ()  # type: ignore[attr-defined]  # checked when a recipe is read

from prunetune.pruning import cutoffs as _cutoffs  # noqa: E402,F401  registers cmi_cumulative, cmi_marginal, cmi_knee
from prunetune.pruning import global_threshold as _global  # noqa: E402,F401  registers global
