"""The ``global`` allocation: one threshold over normalised scores across all groups.

As Torch-Pruning's global pruning and Network Slimming do: channels of every group are ranked
together by their normalised score and the best are kept until the MACs target is met. Each group
keeps at least ``rule.floor(N)`` channels (``min_keep``, ``max_ratio``), its best by score. The
threshold is found by bisection over the global order (MACs only grow as it falls), then the
channels beyond it are offered in order and kept wherever they still fit, so the plan is maximal.

``normalizer`` (default ``mean``: divide by the group's mean absolute score, Torch-Pruning's
default) puts groups of different fan-in on one scale; any registered normaliser may be named. In a
recipe the blend is recomputed with it for the threshold (the entry's ``blend_normalizer``):
a blend normalised by ``rank`` gives every group the same score distribution, which would make one
global threshold a uniform ratio. Which channels each group keeps still follows the recipe's blend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from prunetune.exceptions import BudgetInfeasibleError, ConfigError
from prunetune.pruning.allocation import KeepRule, infeasible_budget
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.macs import analytic_cost
from prunetune.pruning.normalize import NORMALIZERS
from prunetune.pruning.strategies.base import register


@register("global", params=("normalizer",), blend_normalizer=("normalizer", "mean"))
def global_strategy(groups: ModelGroups, *, rule: KeepRule, macs_budget: float | None = None,
                    params: Mapping[str, Any] | None = None, scores: Mapping[str, Any] | None = None,
                    extras: Mapping[str, Any] | None = None, ratio: float | None = None,
                    ratios: Mapping[str, float] | None = None, default: float | None = None) -> dict[str, int]:
    """Keep counts from one global threshold on normalised scores, bisected to ``macs_budget``."""
    if ratios or default is not None:
        raise ConfigError("allocation strategy 'global' sets per-group counts itself; drop 'ratios' and 'default'")
    params = dict(params or {})
    unknown = sorted(set(params) - {"normalizer"})
    if unknown:
        raise ConfigError(f"allocation strategy 'global' takes only 'normalizer', got {unknown[0]!r}")
    name = params.get("normalizer", "mean")
    normalize = _checked(NORMALIZERS.get(name), name)
    if scores is None:
        raise ConfigError("allocation strategy 'global' needs the recipe's scores (pass scores=...)")
    dense = analytic_cost(groups).macs
    if macs_budget is None:
        if ratio is None:
            raise ConfigError("allocation strategy 'global' needs macs_budget (or a global ratio)")
        return _by_count(groups, scores, normalize, rule, ratio)
    if ratio is not None:
        raise ConfigError("give allocation.macs_budget or allocation.ratio for 'global', not both")
    base, order = _order(groups, scores, normalize, rule)
    target = macs_budget * dense
    if analytic_cost(groups, base).macs > target:
        raise infeasible_budget(macs_budget, analytic_cost(groups, base).macs / dense, rule)
    lo, hi = 0, len(order)  # the longest prefix of the global order that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _macs(groups, base, order[:mid], rule) <= target else (lo, mid - 1)
    keep = _counts(groups, base, order[:lo], rule)
    full: set[str] = set()  # a group whose next channel did not fit: its later ones cost no less
    for name in order[lo:]:  # then whatever still fits, best first: a maximal plan
        if name in full:
            continue
        grown = rule.clamp(groups[name].channels, keep[name] + 1)
        if grown > keep[name] and analytic_cost(groups, {**keep, name: grown}).macs <= target:
            keep[name] = grown
        else:
            full.add(name)
            if len(full) == len(groups):
                break
    return keep



def _checked(normalize, name: str):
    """``normalize`` whose output is refused unless it is one finite score per channel: a normaliser
    giving NaN (or fewer values) made the threshold's order arbitrary, with no error."""
    def checked(scores: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(normalize(scores), dtype=torch.float64).flatten()
        if out.shape != scores.shape or not bool(torch.isfinite(out).all()):
            bad = "non-finite values" if out.shape == scores.shape else f"{out.numel()} values"
            raise ConfigError(f"normalizer {name!r} gave {bad} for a group of {scores.numel()} scores; the global "
                              "threshold needs one finite score per channel (fix the normalizer or choose another)")
        return out
    return checked


def _order(groups, scores, normalize, rule) -> tuple[dict[str, int], list[str]]:
    """Each group's floor, and the remaining channels as group names in global score order (best first)."""
    base, entries = {}, []
    for g in groups:
        if g.name not in scores:
            raise BudgetInfeasibleError(f"no scores for group {g.name!r}")
        s = torch.as_tensor(scores[g.name], dtype=torch.float64).flatten()
        norm = normalize(s)
        base[g.name] = rule.floor(g.channels)
        ranked = sorted(norm.tolist(), reverse=True)[base[g.name]:]  # the floor keeps the group's best
        entries += [(-v, g.name, i) for i, v in enumerate(ranked)]
    entries.sort()
    return base, [name for _, name, _ in entries]


def _counts(groups, base, taken, rule) -> dict[str, int]:
    keep = dict(base)
    for name in taken:
        keep[name] += 1
    return {n: rule.clamp(groups[n].channels, k) for n, k in keep.items()}


def _macs(groups, base, taken, rule) -> int:
    return analytic_cost(groups, _counts(groups, base, taken, rule)).macs


def _by_count(groups, scores, normalize, rule, ratio: float) -> dict[str, int]:
    """Without a budget: prune ``ratio`` of all channels together by one threshold."""
    base, order = _order(groups, scores, normalize, rule)
    total = sum(g.channels for g in groups)
    wanted = max(0, round(total * (1.0 - ratio)) - sum(base.values()))
    return _counts(groups, base, order[:wanted], rule)
