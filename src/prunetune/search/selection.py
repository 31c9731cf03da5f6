"""Which screened candidates are fine-tuned: the proxy front, spread over log-MACs.

A :class:`Candidate` is one screened plan and what screening measured of it. :func:`select` takes
the best candidate at the budget, then the non-dominated candidates of the proxy front (maximise
proxy, minimise MACs; a plan less than :data:`MACS_TOLERANCE` cheaper than a better one does not
count), then the next fronts if the first is too small, spread over log-MACs from the cheapest. :func:`spearman` is the rank correlation the
search reports between proxy and fine-tuned accuracy.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Candidate:
    """One screened plan: the parameters a fine-tune trial is enqueued with (``params``: what the space
    suggested), the whole plan config they give (``config``: with the space's constants, what the
    trial's plan is built from), and what screening measured."""

    number: int
    params: dict[str, Any]
    source: str  # "hand" (a hand recipe: one criterion, uniform ratios or a global threshold) or "sampled"
    macs_ratio: float = math.nan
    proxy: float = math.nan  # what ranks candidates: the proxy likelihood (prunetune.pruning.proxy)
    error: str | None = None
    selected: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    plan_id: str | None = None  # the plan it gave (screening.plan_identity); candidates giving one plan are one
    proxy_accuracy: float = math.nan  # the proxy network's accuracy, for people (NaN in pools screened before it)

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.proxy) and math.isfinite(self.macs_ratio)


def proxy_metrics(candidate: Candidate) -> dict[str, float]:
    """What a fine-tune trial of ``candidate`` logs of its screening: ``proxy_likelihood`` and
    ``proxy_accuracy``; from a pool screened before the likelihood existed (its ``proxy`` an accuracy,
    ``proxy_accuracy`` NaN) the accuracy alone."""
    if math.isnan(candidate.proxy_accuracy):
        return {"proxy_accuracy": candidate.proxy}
    return {"proxy_likelihood": candidate.proxy, "proxy_accuracy": candidate.proxy_accuracy}


def select(candidates: Sequence[Candidate], k: int, *, by_order: bool = True,
           budget: float | None = None) -> list[Candidate]:
    """``k`` candidates to fine-tune: the proxy front (maximise proxy, minimise MACs) first, then the
    next fronts; within a front, spread over log-MACs (farthest point first, from the cheapest). No
    two give the same plan (``plan_id``, else the same parameters): the fine-tunes of one plan were
    one network trained twice, and both on the front. ``by_order=False`` where the trials' schedule is
    one-shot: the kept channels alone make the plan, not the order of the pruned ones.

    With a ``budget`` (the top of the MACs range the space samples) the first trial goes to the best
    proxy among the candidates within :data:`MACS_TOLERANCE` below it (:func:`at_budget`), whatever
    cheaper plan the proxy prefers. That plan is the one a user exports most, and near the budget the
    proxy saturates at the dense network's: plans there tie with cheaper ones or differ by noise (read
    as accuracy, by an image), a cheaper plan wins such a tie, and the front could end well below the
    budget."""
    pool = [c for c in candidates if c.ok]
    chosen: list[Candidate] = []
    seen: set[str] = set()
    top = at_budget(pool, budget) if budget is not None and k > 0 else None
    if top is not None:  # it stays in the pool: the fronts are those of the plain selection
        chosen.append(top)
        seen.add(_plan_of(top, by_order))
    while pool and len(chosen) < k:
        front = _front(pool)
        for c in _spread([c for c in front if c is not top], k - len(chosen), chosen):
            key = _plan_of(c, by_order)  # one fine-tune per distinct plan, not per parameter set
            if key not in seen:
                seen.add(key)
                chosen.append(c)
        pool = [c for c in pool if c not in front]
    for c in chosen:
        c.selected = True
    return sorted(chosen, key=lambda c: c.macs_ratio)


def at_budget(pool: Sequence[Candidate], budget: float) -> Candidate | None:
    """The best-proxy candidate of ``pool`` with MACs within :data:`MACS_TOLERANCE` below ``budget``
    (ties: the more MACs, then the earlier candidate); ``None`` if there is none."""
    near = [c for c in pool if c.ok and budget / (1 + MACS_TOLERANCE) <= c.macs_ratio <= budget * (1 + 1e-9)]
    return max(near, key=lambda c: (c.proxy, c.macs_ratio, -c.number), default=None)


def _plan_of(c: Candidate, by_order: bool) -> str:
    if c.plan_id is None:
        return plan_key(c.params)
    return c.plan_id if by_order else c.plan_id.split(":")[0]


MACS_TOLERANCE = 0.02  # relative MACs differences below this do not make a worse proxy worth a trial


def _front(pool: Sequence[Candidate]) -> list[Candidate]:
    """The proxy front, thinned to points at least :data:`MACS_TOLERANCE` apart in MACs.

    The front: candidates no other candidate beats in both proxy (≥) and MACs (≤), strictly in one.
    Thinning walks it from the best proxy (the most expensive point) down and keeps a point only if it
    is more than the tolerance cheaper than the last one kept: a plan 0.3% cheaper than another but
    worse by the proxy is not worth one of the few fine-tunes, and a front of points 1% apart keeps
    every other one rather than collapsing. The best-proxy candidate is always kept (never empty)."""
    ordered = sorted(pool, key=lambda c: (c.macs_ratio, -c.proxy, c.number))
    front, best = [], -math.inf
    for c in ordered:
        if c.proxy > best:
            front.append(c)
            best = c.proxy
    kept = [front[-1]] if front else []
    for c in reversed(front[:-1]):
        if c.macs_ratio * (1 + MACS_TOLERANCE) < kept[-1].macs_ratio:
            kept.append(c)
    return kept[::-1]


def _spread(front: list[Candidate], n: int, chosen: Sequence[Candidate]) -> list[Candidate]:
    if len(front) <= n:
        return front
    picked: list[Candidate] = []
    taken = [math.log(c.macs_ratio) for c in chosen]
    rest = list(front)
    if not taken:  # start from the cheapest: the low end is where trials are scarcest and accuracy moves most
        picked.append(rest.pop(0))
        taken.append(math.log(picked[0].macs_ratio))
    while len(picked) < n and rest:
        best = max(rest, key=lambda c: (min(abs(math.log(c.macs_ratio) - t) for t in taken), c.proxy))
        rest.remove(best)
        picked.append(best)
        taken.append(math.log(best.macs_ratio))
    return picked


def plan_key(params: Mapping[str, Any]) -> str:
    """A canonical key of a candidate's parameters (to find a fine-tune trial's proxy)."""
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=str)


def table_csv(candidates: Sequence[Candidate]) -> str:
    """The screened pool as CSV: number, source, selected, MACs ratio, proxy likelihood and accuracy, error,
    parameters (JSON)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "source", "selected", "macs_ratio", "proxy_likelihood", "proxy_accuracy", "error",
                     "params"])
    for c in candidates:
        writer.writerow([c.number, c.source, int(c.selected), f"{c.macs_ratio:.6f}", f"{c.proxy:.6f}",
                         f"{c.proxy_accuracy:.6f}", c.error or "", json.dumps(c.params, sort_keys=True)])
    return buf.getvalue()


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than 3 pairs or no spread."""
    if len(x) != len(y) or len(x) < 3:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else math.nan


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2
        i = j + 1
    return ranks
