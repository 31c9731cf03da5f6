"""Keep counts: from one ratio, per-group ratios, or a MACs budget reached by scaling keep fractions.

Ratios are always *prune* ratios. Keep rule (DESIGN.md): ``max(min_keep, floor(N·(1−p)))``, then
rounded up to a multiple of ``round_to`` when set (capped at N). ``max_ratio`` bounds what any
allocation may take from one group: every group keeps at least ``ceil((1 − max_ratio)·N)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prunetune._numbers import is_finite_number
from prunetune._text import short
from prunetune.exceptions import BudgetInfeasibleError, ConfigError
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.macs import analytic_cost


DEFAULT_MAX_RATIO = 0.8  # measured: benchmarks/README.md, "allocation"


@dataclass(frozen=True)
class KeepRule:
    """How a prune ratio becomes a channel count.

    Attributes:
        min_keep: every group keeps at least this many channels.
        round_to: kept counts are rounded up to a multiple of this (capped at the group's size).
        max_ratio: the largest share of one group any allocation may prune (1 = no bound but
            ``min_keep``); every group keeps at least ``ceil((1 − max_ratio)·N)``.
    """

    min_keep: int = 1
    round_to: int | None = None
    max_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.min_keep < 1:
            raise ConfigError(f"min_keep must be >= 1, got {self.min_keep}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1 or null, got {self.round_to}")
        if isinstance(self.max_ratio, bool) or not isinstance(self.max_ratio, (int, float)) or not 0 < self.max_ratio <= 1:
            raise ConfigError(f"max_ratio must be a fraction in (0, 1], got {self.max_ratio!r}")

    def keep(self, channels: int, ratio: float) -> int:
        check_ratio(ratio, "prune ratio")
        return self.clamp(channels, math.floor(channels * (1.0 - ratio) + 1e-9))

    def floor(self, channels: int) -> int:
        """The fewest channels a group of ``channels`` may keep (``min_keep``, ``max_ratio``, ``round_to``)."""
        return self.clamp(channels, 0)

    def clamp(self, channels: int, kept: int) -> int:
        """``kept`` raised to ``min_keep`` and ``ceil((1 − max_ratio)·channels)``, rounded up to
        ``round_to``, capped at ``channels``."""
        kept = max(self.min_keep, math.ceil((1.0 - self.max_ratio) * channels - 1e-9), kept)
        if self.round_to:
            kept = math.ceil(kept / self.round_to) * self.round_to
        return min(channels, kept)


def check_ratio(ratio: object, what: str) -> float:
    """Return ``ratio`` as a float in [0, 1) or raise a :class:`ConfigError` naming it."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"{what} must be a number in [0, 1) (the fraction of channels removed), got {ratio!r}")
    return float(ratio)


def check_budget(value: Any, what: str = "macs_budget") -> float:
    """The one range check of a MACs budget: a number in (0, 1], a fraction of dense MACs."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{what} must be a fraction of dense MACs in (0, 1], got {short(value)}")
    return value


@dataclass(frozen=True)
class MacsBudget:
    """A MACs budget: a fraction of dense MACs in (0, 1], validated once, when it is made.

    ``what`` names it in errors (``allocation.macs_budget``, ``macs_budget``); :meth:`reachable`
    is the one feasibility check on a model's groups.
    """

    fraction: float
    what: str = field(default="macs_budget", compare=False, repr=False)

    def __post_init__(self) -> None:
        check_budget(self.fraction, self.what)

    def target(self, dense_macs: float) -> float:
        """The MACs a plan may have on a network of ``dense_macs``."""
        return self.fraction * dense_macs

    def reachable(self, groups: ModelGroups, rule: KeepRule, *, dense: Iterable[str] = (),
                  flag: str = "the budget") -> float:
        """The smallest reachable fraction; raises :class:`BudgetInfeasibleError` when the budget is below it."""
        floor = smallest_fraction(groups, rule, dense=dense)
        if self.fraction < floor:
            raise infeasible_budget(self.fraction, floor, rule, flag=flag, dense=dense)
        return floor


def infeasible_budget(macs_budget: float, floor: float, rule: KeepRule, *, flag: str = "the budget",
                      dense: Iterable[str] = ()) -> BudgetInfeasibleError:
    """The error for a MACs budget below ``floor``, the smallest fraction of dense MACs reachable."""
    whole = sorted(dense)
    why = (f"with {len(whole)} group(s) kept whole by a relative ratio of 0 ({', '.join(whole[:3])}"
           f"{', ...' if len(whole) > 3 else ''}) and min_keep={rule.min_keep}, round_to={rule.round_to}, "
           f"max_ratio={rule.max_ratio:g}" if whole else
           f"under min_keep={rule.min_keep}, round_to={rule.round_to}, max_ratio={rule.max_ratio:g}")
    # what can still move the floor: max_ratio only below 1, else min_keep and round_to
    lower = "lower allocation.min_keep or round_to" if rule.max_ratio >= 1 else "raise allocation.max_ratio"
    fix = "give those groups a ratio above 0" if whole else lower
    return BudgetInfeasibleError(
        f"MACs budget {macs_budget:g} is below the smallest reachable fraction {floor:.4f} of dense MACs {why}; "
        f"raise {flag} to at least {floor:.4f} (or {fix})")


def keep_from_ratios(
    groups: ModelGroups, ratios: Mapping[str, float], *, default: float = 0.0, rule: KeepRule = KeepRule()
) -> dict[str, int]:
    """Keep counts for per-group prune ratios; groups not named get ``default``.

    Raises:
        ConfigError: a ratio above ``rule.max_ratio`` (it would be silently raised otherwise).
    """
    for name in ratios:
        groups[name]  # raises UnknownNameError with close matches
    for name, ratio in [*ratios.items(), ("default", default)]:
        if check_ratio(ratio, f"prune ratio of {name!r}") > rule.max_ratio:
            raise ConfigError(f"prune ratio {ratio!r} of {name!r} is above max_ratio={rule.max_ratio:g}; lower it "
                              "or raise max_ratio")
    return {g.name: rule.keep(g.channels, ratios.get(g.name, default)) for g in groups}


def keep_for_budget(
    groups: ModelGroups,
    macs_budget: float,
    *,
    relative: Mapping[str, float] | None = None,
    rule: KeepRule = KeepRule(),
    tolerance: float = 1e-4,
) -> dict[str, int]:
    """The closest plan not above ``macs_budget`` (a fraction of dense MACs), shaped by ``relative``.

    ``relative`` holds relative prune ratios in [0, 1): the allocation's *shape*. The projection
    scales keep fractions, not prune ratios: group ``g`` keeps the fraction ``c·(1 − relative[g])``
    of its channels (clamped by ``rule``), one scale ``c`` for all, found by bisection (MACs only
    grow with ``c``), then channels are given back while the budget allows. Scaling keep fractions
    spreads the cut over every group in proportion to the shape; scaling prune ratios would saturate
    the groups with the largest ratios at their minimum long before the others move. Groups missing
    from ``relative`` share one ratio (uniform when it is empty); a relative ratio of exactly 0
    leaves a group dense.

    Raises:
        BudgetInfeasibleError: when even the thinnest plan is above budget; the message names the
            smallest reachable fraction.
    """
    check_budget(macs_budget)
    given = dict(relative or {})
    for name, ratio in given.items():
        groups[name]  # raises UnknownNameError with close matches (a typo was silently a uniform ratio)
        if not is_finite_number(ratio) or not 0 <= ratio < 1:
            raise ConfigError(f"relative ratio of group {name!r} must be a number in [0, 1), got {short(ratio)}")
    shape = {g.name: 1.0 - given.get(g.name, 0.5) for g in groups}  # keep fraction at c = 1
    dense = analytic_cost(groups).macs
    target = macs_budget * dense

    def ideal(c: float) -> dict[str, float]:
        return {g.name: g.channels * (1.0 if shape[g.name] >= 1.0 else min(1.0, c * shape[g.name])) for g in groups}

    def keep_at(c: float) -> dict[str, int]:
        return {name: rule.clamp(groups[name].channels, math.floor(x + 1e-9)) for name, x in ideal(c).items()}

    def macs_at(c: float) -> int:
        return analytic_cost(groups, keep_at(c)).macs

    if macs_at(0.0) > target:
        raise infeasible_budget(macs_budget, macs_at(0.0) / dense, rule)
    top = 1.0 / min(shape.values())  # every group dense
    lo, hi = 0.0, top  # macs_at(lo) <= target < macs_at(hi), unless dense fits
    if macs_at(hi) <= target:
        return keep_at(hi)
    while hi - lo > tolerance * top:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if macs_at(mid) <= target else (lo, mid)
    return fill_to_budget(groups, keep_at(lo), ideal(hi), target, rule)


def fill_to_budget(groups: ModelGroups, keep: dict[str, int], ideal: Mapping[str, float], target: float,
          rule: KeepRule) -> dict[str, int]:
    """Give channels back, largest shortfall against the continuous target first, while under budget.

    Scaling moves every group in whole-channel steps at once, which can undershoot the budget by
    several percent on narrow networks; this makes the plan maximal: no group can keep one more
    step of channels without going over.
    """
    step = rule.round_to or 1
    keep = dict(keep)
    changed = True
    while changed:
        changed = False
        for name in sorted(keep, key=lambda n: (keep[n] - ideal[n]) / groups[n].channels):
            grown = min(groups[name].channels, keep[name] + step)
            if grown == keep[name]:
                continue
            if analytic_cost(groups, {**keep, name: grown}).macs <= target:
                keep[name] = grown
                changed = True
    return keep


def smallest_fraction(groups: ModelGroups, rule: KeepRule = KeepRule(), *, dense: Iterable[str] = ()) -> float:
    """The smallest MACs fraction any plan can reach: every group at its minimum keep, but the groups
    in ``dense`` (a relative ratio of 0 keeps a group whole) at full width."""
    whole = set(dense)
    thinnest = {g.name: g.channels if g.name in whole else rule.floor(g.channels) for g in groups}
    return analytic_cost(groups, thinnest).macs / analytic_cost(groups).macs
