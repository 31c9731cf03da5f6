"""Keep counts: from one ratio, per-group ratios, or a MACs budget reached by scaling relative ratios.

Ratios are always *prune* ratios. Keep rule (DESIGN.md): ``max(min_keep, floor(N·(1−p)))``, then
rounded up to a multiple of ``round_to`` when set (capped at N).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prunetune.exceptions import BudgetInfeasibleError, ConfigError
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.macs import analytic_cost


@dataclass(frozen=True)
class KeepRule:
    """How a prune ratio becomes a channel count."""

    min_keep: int = 1
    round_to: int | None = None

    def __post_init__(self) -> None:
        if self.min_keep < 1:
            raise ConfigError(f"min_keep must be >= 1, got {self.min_keep}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1 or null, got {self.round_to}")

    def keep(self, channels: int, ratio: float) -> int:
        check_ratio(ratio, "prune ratio")
        return self.clamp(channels, math.floor(channels * (1.0 - ratio) + 1e-9))

    def clamp(self, channels: int, kept: int) -> int:
        """``kept`` raised to ``min_keep``, rounded up to ``round_to``, capped at ``channels``."""
        kept = max(self.min_keep, kept)
        if self.round_to:
            kept = math.ceil(kept / self.round_to) * self.round_to
        return min(channels, kept)


def check_ratio(ratio: object, what: str) -> float:
    """Return ``ratio`` as a float in [0, 1) or raise a :class:`ConfigError` naming it."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"{what} must be a number in [0, 1) (the fraction of channels removed), got {ratio!r}")
    return float(ratio)


def infeasible_budget(macs_budget: float, floor: float, rule: KeepRule, *,
                      flag: str = "the budget") -> BudgetInfeasibleError:
    """The error for a MACs budget below ``floor``, the smallest fraction of dense MACs reachable."""
    return BudgetInfeasibleError(
        f"MACs budget {macs_budget:g} is below the smallest reachable fraction {floor:.4f} of dense MACs "
        f"under min_keep={rule.min_keep}, round_to={rule.round_to}; raise {flag} to at least {floor:.4f}")


def keep_from_ratios(
    groups: ModelGroups, ratios: Mapping[str, float], *, default: float = 0.0, rule: KeepRule = KeepRule()
) -> dict[str, int]:
    """Keep counts for per-group prune ratios; groups not named get ``default``."""
    for name in ratios:
        groups[name]  # raises UnknownNameError with close matches
    return {g.name: rule.keep(g.channels, ratios.get(g.name, default)) for g in groups}


def keep_for_budget(
    groups: ModelGroups,
    macs_budget: float,
    *,
    relative: Mapping[str, float] | None = None,
    rule: KeepRule = KeepRule(),
    tolerance: float = 1e-4,
) -> dict[str, int]:
    """The closest plan not above ``macs_budget`` (a fraction of dense MACs).

    Group ``g`` is pruned at ratio ``min(s·relative[g], max_ratio)`` and the scale ``s`` is found by
    bisection: MACs only fall as ``s`` grows, so the smallest feasible ``s`` keeps the most. Groups
    missing from ``relative`` get 1 (uniform); a relative weight of 0 leaves a group dense.

    Raises:
        BudgetInfeasibleError: when even the thinnest plan is above budget; the message names the
            smallest reachable fraction.
    """
    if isinstance(macs_budget, bool) or not isinstance(macs_budget, (int, float)) or not 0 < macs_budget <= 1:
        raise ConfigError(f"macs_budget must be a fraction of dense MACs in (0, 1], got {macs_budget!r}")
    relative = {g.name: float((relative or {}).get(g.name, 1.0)) for g in groups}
    for name, weight in relative.items():
        if weight < 0 or not math.isfinite(weight):
            raise ConfigError(f"relative ratio of group {name!r} must be >= 0, got {weight}")
    dense = analytic_cost(groups).macs
    target = macs_budget * dense

    def keep_at(scale: float) -> dict[str, int]:
        return {g.name: rule.keep(g.channels, min(scale * relative[g.name], 1.0 - 1e-12)) for g in groups}

    def macs_at(scale: float) -> int:
        return analytic_cost(groups, keep_at(scale)).macs

    top = 1.0 / max(min((w for w in relative.values() if w > 0), default=1.0), 1e-12)
    if macs_at(top) > target:
        raise infeasible_budget(macs_budget, macs_at(top) / dense, rule)
    if macs_at(0.0) <= target:
        return keep_at(0.0)
    lo, hi = 0.0, top  # macs_at(lo) > target >= macs_at(hi)
    while hi - lo > tolerance * top:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if macs_at(mid) <= target else (mid, hi)
    ideal = {g.name: g.channels * (1.0 - min(hi * relative[g.name], 1.0)) for g in groups}
    return _fill(groups, keep_at(hi), ideal, target, rule)


def _fill(groups: ModelGroups, keep: dict[str, int], ideal: Mapping[str, float], target: float,
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


def smallest_fraction(groups: ModelGroups, rule: KeepRule = KeepRule()) -> float:
    """The smallest MACs fraction any plan can reach (every group at its minimum keep)."""
    thinnest = {g.name: rule.keep(g.channels, 1.0 - 1e-12) for g in groups}
    return analytic_cost(groups, thinnest).macs / analytic_cost(groups).macs
