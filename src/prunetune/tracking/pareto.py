"""The Pareto front of accuracy (maximised) vs MACs (minimised), and picking one trial from it.

Pure numpy over plain numbers. Directions are normalised first (every objective turned into one to
minimise). Point ``a`` dominates ``b`` when it is no worse in every objective and better in one, so
*identical points do not dominate each other: duplicates are all on the front* (none is dropped;
the tables list each trial). One point is its own front; an empty input gives an empty front.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prunetune._spelling import FLAGS, Spelling
from prunetune.exceptions import ConfigError

PICKS = ("max-acc", "knee")


def pareto_mask(values: Sequence[Sequence[float]] | np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Which rows of ``values`` (``[n, k]``) are non-dominated, with ``maximize[j]`` per column.

    Returns:
        ``bool[n]``; True on the front. Rows with a NaN are never on it.
    """
    v = np.asarray(values, dtype=np.float64).reshape(len(values), -1) if len(values) else np.zeros((0, len(maximize)))
    if v.shape[1] != len(maximize):
        raise ConfigError(f"pareto_mask: {v.shape[1]} objectives but {len(maximize)} directions")
    v = np.where(np.asarray(maximize, dtype=bool), -v, v)  # all minimised
    valid = ~np.isnan(v).any(axis=1)
    mask = np.zeros(len(v), dtype=bool)
    others = v[valid]
    for i in np.flatnonzero(valid):
        no_worse = (others <= v[i]).all(axis=1)
        better = (others < v[i]).any(axis=1)
        mask[i] = not (no_worse & better).any()
    return mask


def front_mask(accuracy: Sequence[float], macs: Sequence[float]) -> np.ndarray:
    """Non-dominated trials for accuracy ↑ and MACs ↓."""
    return pareto_mask(np.column_stack([np.asarray(accuracy, float), np.asarray(macs, float)])
                       if len(accuracy) else np.zeros((0, 2)), (True, False))


def knee_index(accuracy: Sequence[float], macs: Sequence[float]) -> int:
    """Index (into the inputs) of the front's knee.

    Both objectives are scaled to [0, 1] over the front; the knee is the front point farthest from
    the chord between its two extremes (the most accurate and the cheapest). With one or two front
    points, or a flat front, it is the most accurate (then cheapest) point.
    """
    acc, cost = np.asarray(accuracy, float), np.asarray(macs, float)
    on = np.flatnonzero(front_mask(acc, cost))
    if len(on) == 0:
        raise ConfigError("knee_index needs at least one point with finite accuracy and MACs")
    best = _best(acc, cost, on)
    a, c = acc[on], cost[on]
    span_a, span_c = np.ptp(a), np.ptp(c)
    if len(on) <= 2 or span_a == 0 or span_c == 0:
        return best
    x, y = (c - c.min()) / span_c, (a - a.min()) / span_a  # x: cheaper = 0, y: better = 1
    hi, lo = np.argmax(y + 1e-12 * (1 - x)), np.argmin(x - 1e-12 * y)  # the two extremes
    dx, dy = x[hi] - x[lo], y[hi] - y[lo]
    distance = np.abs(dy * (x - x[lo]) - dx * (y - y[lo])) / max(np.hypot(dx, dy), 1e-12)
    if distance.max() <= 1e-12:
        return best
    ties = np.flatnonzero(distance >= distance.max() - 1e-12)
    return int(on[min(ties, key=lambda i: (-a[i], c[i]))])


def max_acc_index(accuracy: Sequence[float], macs_ratio: Sequence[float], budget: float | None = None, *,
                  spelling: Spelling = FLAGS) -> int:
    """Index of the most accurate trial whose MACs fraction is within ``budget`` (ties: cheaper).
    ``spelling``: how the error names the budget option (:mod:`prunetune._spelling`).

    Raises:
        ConfigError: no trial within the budget; the message names the cheapest measured fraction.
    """
    acc, ratio = np.asarray(accuracy, float), np.asarray(macs_ratio, float)
    ok = np.isfinite(acc) & np.isfinite(ratio)
    if budget is not None:
        ok &= ratio <= budget + 1e-12
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        cheapest = float(np.nanmin(ratio)) if np.isfinite(ratio).any() else float("nan")
        raise ConfigError(f"no finished trial within MACs budget {budget}; the cheapest trial keeps "
                          f"{cheapest:.4f} of dense MACs; raise {spelling.name('budget')} to at least that")
    return _best(acc, ratio, idx)


def pick_index(how: str, accuracy: Sequence[float], macs: Sequence[float], macs_ratio: Sequence[float],
               budget: float | None = None, *, spelling: Spelling = FLAGS) -> int:
    """``max-acc``: the most accurate trial within ``budget``; ``knee``: the knee of the front of
    the trials within ``budget``."""
    if how not in PICKS:
        raise ConfigError(f"unknown pick {how!r}; choose one of {', '.join(PICKS)}")
    if how == "max-acc":
        return max_acc_index(accuracy, macs_ratio, budget, spelling=spelling)
    ratio = np.asarray(macs_ratio, float)
    within = np.flatnonzero(ratio <= budget + 1e-12) if budget is not None else np.arange(len(ratio))
    if len(within) == 0:
        max_acc_index(accuracy, macs_ratio, budget, spelling=spelling)  # raises the budget message
    sub = knee_index(np.asarray(accuracy, float)[within], np.asarray(macs, float)[within])
    return int(within[sub])


def _best(acc: np.ndarray, cost: np.ndarray, idx: np.ndarray) -> int:
    """Among ``idx``: the highest accuracy, then the lowest cost, then the lowest index."""
    return int(min(idx, key=lambda i: (-acc[i], cost[i], i)))
