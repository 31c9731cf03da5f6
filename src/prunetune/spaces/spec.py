"""The ``space:`` section of a search config, validated strictly, and the space it builds.

Schema (every key optional; the values shown are the defaults, the space a search uses without a
``space:`` section)::

    space:
      ratios: per_stage            # uniform | per_stage | per_group (relative prune ratios)
      ratio_range: [0.0, 0.8]      # range of each relative ratio, within [0, 1)
      min_fraction: null           # lowest MACs target sampled; default budget/4, never below the
                                   # smallest reachable fraction
      criteria: [l1, fpgm, group_l2, capacity, independence]   # blend weights weight.<c> in [0, 1]; one name = no blend
      normalizers: [rank]          # normalisers tried for the blend
      lr: {around: 2}              # fine-tune lr, log-uniform in [lr/2, 2·lr] of the recipe's lr;
                                   # or [low, high]; null keeps the recipe's lr
      schedules: [hard, ghfp]      # soft-to-hard schedules tried (their own parameters sampled)
      allocations: [ratios, global]  # allocation strategies; ratios are sampled only for 'ratios'

Why these defaults (measured on digits, benchmarks/README.md "front"): magnitude criteria next to
the information ones, among them ``group_l2`` (Torch-Pruning's group magnitude: with ``global`` it
is TP's global pruning, which on an inverted-residual net beat uniform ratios by up to 20 points at
15% MACs); schedules and allocations that survive a 3-epoch fine-tune; an lr range that
stays where the recipe's lr works (its ±4× ends cost 1.5–2 points after 3 epochs, ±2× about 0.5).

With screening on (the default) and ``screen.train_params: recipe`` (its default), a search samples
only the plan part of this space: screened trials fine-tune with the recipe's lr and the first
schedule listed. ``schedules``, their parameters and ``lr`` are sampled with ``train_params:
sampled`` or ``screen: false``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from prunetune._checks import unknown_key
from prunetune.exceptions import ConfigError
from prunetune.pruning.allocation import KeepRule, MacsBudget
from prunetune.pruning.criteria import CRITERIA
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.normalize import NORMALIZERS
from prunetune.pruning.schedules import SCHEDULES
from prunetune.pruning.strategies import STRATEGIES, scoring_params
from prunetune.spaces.base import SearchSpace

LR_AROUND = 2.0
from prunetune.spaces.presets import (
    ALLOCATION,
    LR,
    NORMALIZER,
    RATIO_SPACES,
    SCHEDULE,
    BlendWeights,
    ScheduleParams,
    Choice,
    LogUniform,
    TargetFraction,
)


@dataclass(frozen=True)
class SpaceSpec:
    """What a search samples (see the module docstring for the YAML form)."""

    ratios: str = "per_stage"
    ratio_range: tuple[float, float] = (0.0, 0.8)
    min_fraction: float | None = None
    criteria: tuple[str, ...] = ("l1", "fpgm", "group_l2", "capacity", "independence")
    normalizers: tuple[str, ...] = ("rank",)
    lr: tuple[float, float] | float | None = LR_AROUND  # a float f: [lr/f, f·lr] of the recipe's lr
    schedules: tuple[str, ...] = ("hard", "ghfp")
    allocations: tuple[str, ...] = ("ratios", "global")

    def __post_init__(self) -> None:
        RATIO_SPACES.get(self.ratios)
        lo, hi = self.ratio_range
        if not 0.0 <= lo <= hi < 1.0:
            raise ConfigError(f"space.ratio_range must be [low, high] with 0 <= low <= high < 1, got {list(self.ratio_range)}")
        if self.min_fraction is not None and not 0.0 < self.min_fraction <= 1.0:
            raise ConfigError(f"space.min_fraction must be a fraction of dense MACs in (0, 1], got {self.min_fraction!r}")
        if isinstance(self.lr, float) and not (math.isfinite(self.lr) and self.lr >= 1.0):
            raise ConfigError(f"space.lr: {{around: F}} needs a finite F >= 1 (the range [lr/F, F·lr]), got {self.lr!r}")
        if isinstance(self.lr, tuple) and not 0.0 < self.lr[0] <= self.lr[1]:
            raise ConfigError(f"space.lr must be [low, high] with 0 < low <= high, got {list(self.lr)}")
        for key, registry in (("criteria", CRITERIA), ("normalizers", NORMALIZERS), ("schedules", SCHEDULES),
                              ("allocations", STRATEGIES)):
            names = getattr(self, key)
            if not names:
                raise ConfigError(f"space.{key} must name at least one entry; known: {', '.join(registry.names())}")
            if len(set(names)) != len(names):
                raise ConfigError(f"space.{key} lists a name twice: {list(names)}")
            for name in names:
                registry.get(name)

    @classmethod
    def parse(cls, value: Any) -> SpaceSpec:
        """From the config's ``space:`` mapping; unknown keys are errors naming the key."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigError(f"search config section 'space' must be a mapping, got {value!r}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - allowed, key=str)
        if unknown:
            raise unknown_key(unknown[0], "search config section 'space'", allowed)
        d: dict[str, Any] = dict(value)
        for key in ("criteria", "normalizers", "schedules", "allocations"):
            if key in d:
                d[key] = _names(key, d[key])
        if isinstance(d.get("lr"), Mapping):
            if set(d["lr"]) != {"around"}:
                raise ConfigError(f"space.lr must be [low, high], {{around: F}} or null, got {d['lr']!r}")
            d["lr"] = _number("lr", d["lr"]["around"])
        if "ratio_range" in d:  # a list only: a bare number here is no range (a float means {around: F} for lr)
            d["ratio_range"] = _range("ratio_range", d["ratio_range"])
        if d.get("lr") is not None and not isinstance(d["lr"], float):
            d["lr"] = _range("lr", d["lr"])
        if d.get("min_fraction") is not None:
            d["min_fraction"] = _number("min_fraction", d["min_fraction"])
        if "ratios" in d and not isinstance(d["ratios"], str):
            raise ConfigError(f"space.ratios must be a name ({', '.join(RATIO_SPACES.names())}), got {d['ratios']!r}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        if isinstance(self.lr, float):
            out["lr"] = {"around": self.lr}
        return out

    def lr_range(self, recipe_lr: float) -> tuple[float, float] | None:
        """The sampled lr range for a recipe whose lr is ``recipe_lr`` (None: the recipe's lr)."""
        if isinstance(self.lr, float):
            return (recipe_lr / self.lr, recipe_lr * self.lr)
        return self.lr


def _names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"space.{key} must be a name or a list of names, got {value!r}")
    return tuple(value)


def _range(key: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"space.{key} must be a list [low, high], got {value!r}")
    return (_number(key, value[0]), _number(key, value[1]))


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"space.{key} must hold finite numbers, got {value!r}")
    return float(value)


def target_range(spec: SpaceSpec, groups: ModelGroups, budget: MacsBudget | float,
                 rule: KeepRule = KeepRule()) -> tuple[float, float]:
    """``[low, budget]`` for the sampled MACs target.

    ``low = max(smallest reachable fraction, space.min_fraction or budget/4)``.

    Raises:
        BudgetInfeasibleError: the budget is below the smallest reachable fraction (before any trial).
    """
    if not isinstance(budget, MacsBudget):
        budget = MacsBudget(budget, "the MACs budget")
    floor = budget.reachable(groups, rule, flag="--macs-budget")
    high = budget.fraction
    wanted = spec.min_fraction if spec.min_fraction is not None else high / 4
    if wanted > high:
        raise ConfigError(f"space.min_fraction {wanted:g} must not exceed the MACs budget {high:g}; "
                          "lower it or raise the budget")
    low = max(floor * (1 + 1e-9), wanted)  # a hair above the floor: float round-off in the projection
    return (min(low, float(high)), float(high))


def space_target_range(space: SearchSpace) -> tuple[float, float]:
    """The ``[low, high]`` MACs-target range a space built by :func:`build_space` samples."""
    target = dict(space.components)["target"]
    return target.low, target.high


# The components that decide a trial's plan; the others (schedule, its parameters, lr) only shape
# its fine-tune. Screening samples and ranks plans by the first part alone.
PLAN_PARTS = ("target", "allocation", "ratios", "blend", "normalizer")


def plan_space(space: SearchSpace) -> SearchSpace:
    """The part of ``space`` that decides the plan (see :data:`PLAN_PARTS`)."""
    return SearchSpace(tuple((name, c) for name, c in space.components if name in PLAN_PARTS))


def build_space(spec: SpaceSpec, groups: ModelGroups, *, budget: MacsBudget | float, rule: KeepRule = KeepRule(),
                recipe_lr: float = 0.05) -> SearchSpace:
    """The search space of ``spec`` on a model's groups, under a MACs budget (``recipe_lr``: the base
    recipe's fine-tune lr, the centre of a ``{around: F}`` lr range)."""
    low, high = target_range(spec, groups, budget, rule)
    parts: list[tuple[str, Any]] = [
        ("target", TargetFraction(low, high)),
        ("allocation", Choice(ALLOCATION, spec.allocations)),
        ("ratios", RATIO_SPACES.get(spec.ratios)(groups, *spec.ratio_range)),
        ("blend", BlendWeights(spec.criteria)),
        ("normalizer", Choice(NORMALIZER, spec.normalizers)),
        ("schedule", Choice(SCHEDULE, spec.schedules)),
        ("schedule_params", ScheduleParams()),
    ]
    lr = spec.lr_range(recipe_lr)
    if lr is not None:
        parts.append(("lr", LogUniform(LR, *lr)))
    return SearchSpace(tuple(parts))


def space_criteria(spec: SpaceSpec, params: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Every criterion the space can sample -> its resolved parameters (``params`` override defaults).

    The ScoreTable computed once for a search must hold all of them, plus ``cmi`` (whose per-group
    curves the ``cmi_*`` cut-offs read) when the space can pick a CMI cut-off; scored only for
    ``cmi_knee``, with the greedy's stop at the settled knee (``stop_at_knee``).
    """
    return scoring_params(spec.criteria, spec.allocations, params)  # a recipe's rule too (recipe_criteria)
