"""The ``ratios`` allocation: one ratio, per-group ratios (+ default), or a MACs budget reached by
scaling keep fractions in the shape the ratios give."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunetune.exceptions import ConfigError
from prunetune.pruning.allocation import KeepRule, keep_for_budget, keep_from_ratios
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.strategies.base import register


@register("ratios")
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
