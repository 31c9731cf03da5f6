"""Trial config -> recipe: a pure function, the same on the driver, in a trial and at export."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from prunetune.exceptions import ConfigError
from prunetune.recipes.criterion import CriterionSpec
from prunetune.pruning.allocation import KeepRule
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.strategies import strategy_criteria
from prunetune.recipes.allocation import AllocationSpec
from prunetune.recipes.schema import Recipe, ScheduleSpec
from prunetune.spaces.presets import (
    ALLOCATION,
    LR,
    NORMALIZER,
    RATIO_FLOOR,
    RATIO_SPACES,
    RATIOS,
    schedule_params,
    SCHEDULE,
    TARGET,
    WEIGHT_PREFIX,
)


def trial_recipe(base: Recipe, config: Mapping[str, Any], groups: ModelGroups) -> Recipe:
    """The full recipe of one trial: ``base`` with the sampled criterion blend and normaliser,
    allocation (MACs target + relative ratios, projected in :func:`prunetune.recipes.planning.build_plan`),
    schedule and fine-tune learning rate. Keys absent from ``config`` keep ``base``'s values.

    Args:
        base: the search's base recipe (model, data, calibration, fine-tune, seed, ...).
        config: a flat trial config from a :class:`~prunetune.spaces.SearchSpace`.
        groups: the model's prunable groups (stages and group names for the ratios).
    """
    if TARGET not in config:
        raise ConfigError(f"trial config needs {TARGET!r} (the MACs target), got keys {sorted(config)}")
    changes: dict[str, Any] = {
        "criterion": _criterion(base, config),
        "allocation": _allocation(base.rule, config, groups),
        "plan": None,
    }
    if SCHEDULE in config:
        name = config[SCHEDULE]
        params = dict(base.schedule.params) if name == base.schedule.name else {}
        params.update(schedule_params(config, name))
        changes["schedule"] = ScheduleSpec(name, params)
    if LR in config:
        changes["finetune"] = dataclasses.replace(base.finetune, lr=float(config[LR]))
    return base.with_changes(**changes)


def _criterion(base: Recipe, config: Mapping[str, Any]) -> CriterionSpec:
    weights = {k[len(WEIGHT_PREFIX):]: float(v) for k, v in config.items() if k.startswith(WEIGHT_PREFIX)}
    if not weights:
        weights = dict(base.criterion.weights)
    if sum(weights.values()) <= 0:  # all sampled at 0: no preference, weigh equally
        weights = {name: 1.0 for name in weights}
    normalizer = config.get(NORMALIZER, base.criterion.normalizer)
    # the base recipe's parameters of the blend's criteria, and of those only the trial's strategy reads
    # (cmi for a CMI cut-off): the trial's recipe, scored on its own, scores what the search scored for it
    reads = strategy_criteria(config.get(ALLOCATION, "ratios"))
    params = {c: dict(p) for c, p in base.criterion.params.items() if c in weights or c in reads}
    return CriterionSpec(weights, normalizer=normalizer, params=params)


def _allocation(rule: KeepRule, config: Mapping[str, Any], groups: ModelGroups) -> AllocationSpec:
    """The trial's own allocation: its sampled MACs target (the budget it is held to) under the base
    recipe's keep rule."""
    target = float(config[TARGET])
    strategy = config.get(ALLOCATION, "ratios")
    keep = {"min_keep": rule.min_keep, "round_to": rule.round_to, "max_ratio": rule.max_ratio}
    if strategy != "ratios":
        return AllocationSpec(strategy=strategy, macs_budget=target, **keep)
    return AllocationSpec(macs_budget=target, ratios=relative_ratios(config, groups), **keep)


def relative_ratios(config: Mapping[str, Any], groups: ModelGroups) -> dict[str, float]:
    """Per-group relative prune ratios of a trial config (empty = uniform), floored at RATIO_FLOOR."""
    preset = config.get(RATIOS, "uniform")
    if preset not in RATIO_SPACES:
        known = RATIO_SPACES.in_order()
        raise ConfigError(f"trial config has ratios={preset!r}; expected {', '.join(known[:-1])} or {known[-1]}")
    keys = RATIO_SPACES.get(preset).keys(groups)
    if not keys:
        return {}
    missing = sorted({k for k in keys.values() if k not in config})
    if missing:
        raise ConfigError(f"trial config with ratios={preset!r} needs {missing[0]!r}; was it sampled for this model?")
    out = {}
    for group, key in keys.items():
        value = float(config[key])
        if not math.isfinite(value) or not 0.0 <= value < 1.0:
            raise ConfigError(f"trial config {key}={value!r} must be a relative prune ratio in [0, 1)")
        out[group] = max(value, RATIO_FLOOR)
    return out
