"""The knee of a CMI curve (the ``cmi_knee`` cut-off), and when a partial curve already settles it.

:func:`knee_keep` is the cut-off's rule. :func:`knee_settled` lets the greedy CMI ranking
(:func:`prunetune.pruning.criteria.renyi.cmi_greedy`, ``stop_at_knee``) stop as soon as every curve
that can still follow its first steps has the same knee, so ``cmi_knee`` keeps the same counts at
every scale without the rest of the greedy.
"""

from __future__ import annotations

import torch
from torch import Tensor

STRAIGHT = 1e-9
"""A sorted curve whose largest distance to its chord is below this has no knee (keep all)."""

MARGIN = 1e-12
"""How much farther than every other point the settled knee must be (float64 rounding of the
distances, which :func:`knee_keep` compares)."""


def knee_keep(values: Tensor) -> int:
    """Index of the knee (max distance to the chord of the descending-sorted curve) plus one."""
    v = torch.sort(values.to(torch.float64), descending=True).values
    n = v.numel()
    if n <= 2:
        return n
    x = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    span = float(v[0] - v[-1])
    if span <= 0:
        return n
    y = (v - v[-1]) / span
    distance = ((1.0 - x) - y).abs()  # to the chord from (0, 1) to (1, 0)
    if float(distance.max()) < STRAIGHT:  # a straight line has no knee: no point where information drops off
        return n
    return int(torch.argmax(distance)) + 1


def knee_settled(prefix: Tensor, remainder: float, total: int, slack: float) -> int | None:
    """The knee every completion of a partial curve has, or ``None`` if completions can differ.

    ``prefix`` holds the first values of a curve of ``total`` values; the other ``total − k`` values
    are unknown, but each is at least ``−slack`` and they sum to ``remainder``, so each is at most
    hi = ``remainder`` + (``total`` − k − 1)·``slack``. The prefix values above hi take the first
    sorted positions whatever the unknown values are (the largest of them is the curve's top); every
    other point sits further right and no higher than hi. The curve's minimum u lies between
    −``slack`` (or the prefix's minimum) and the unknown values' mean, and moves each fixed
    point's height y_i = (p_i − u)/(top − u) monotonically, so each fixed point's distance to the
    chord lies in an interval, and no other point lies farther than max(1 − x, its height bound).
    The knee is settled when one fixed point is farther than all of these by :data:`MARGIN`; then
    :func:`knee_keep` returns the same count for every completion.
    """
    k = prefix.numel()
    rest = total - k
    if k < 2 or rest < 1 or total <= 2:
        return None
    p = torch.sort(prefix.to(torch.float64), descending=True).values
    hi = remainder + (rest - 1) * slack  # largest unknown value
    fixed = int((p > hi).sum())  # prefix points whose sorted position the unknown values cannot move
    if fixed < 1 or hi < -slack:
        return None
    top = float(p[0])
    low_u = min(-slack, float(p[-1]))  # the curve's minimum u lies in [low_u, high_u]
    high_u = min(remainder / rest + slack, float(p[-1]))
    if top - high_u <= 0:
        return None
    x = torch.arange(fixed, dtype=torch.float64) / (total - 1)
    q = p[:fixed]
    y_high, y_low = (q - low_u) / (top - low_u), (q - high_u) / (top - high_u)
    a_low, a_high = 1.0 - x - y_high, 1.0 - x - y_low  # signed distance to the chord, both ends
    d_high = torch.maximum(a_low.abs(), a_high.abs())
    d_low = torch.where((a_low <= 0) & (a_high >= 0), torch.zeros_like(a_low), torch.minimum(a_low.abs(), a_high.abs()))
    loose = max(1.0 - fixed / (total - 1), (hi - low_u) / (top - low_u))  # any point not fixed
    best = int(torch.argmax(d_low))
    others = torch.cat([d_high[:best], d_high[best + 1 :], torch.tensor([loose], dtype=torch.float64)])
    if float(d_low[best]) < STRAIGHT or float(d_low[best]) <= float(others.max()) + MARGIN:
        return None
    return best + 1
