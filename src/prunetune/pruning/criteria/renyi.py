"""Matrix-based Rényi α-entropy and the greedy CMI channel ranking.

The entropy primitives (kernel widths, Gram matrices, S_α, joint entropies, (conditional) mutual
information, the cross-layer condition's Gram matrix) live in
:mod:`prunetune.pruning.criteria.matrix_entropy` and are re-exported here.

The CMI pruning paper (Vu-Van et al., arXiv 2411.18578) is only verified at abstract level; the
greedy rule in :func:`cmi_ranking` is the reconstruction of criteria.md §5.4 (form (a): same layer,
label as target): at each step j* = argmax_{j∉S} I_α(Y; X_j | X_S, T) with

    I(Y; X_j | X_S) = S(X_j,S) + S(Y,S) − S(Y,X_j,S) − S(S).

How it is computed: the greedy is the straightforward one's (the same order and CMI values up to
rounding as :func:`~prunetune.pruning.criteria.cmi_reference.cmi_ranking_reference`), evaluated a
step at a time by :mod:`prunetune.pruning.criteria.cmi_steps` (label blocks, shared terms, threads
and LAPACK, the provable vanishing); this module holds the greedy itself, its early stops and the
knee stop of a group's feature points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria.cmi_steps import (  # noqa: F401  VANISH_BOUND re-exported
    VANISH_BOUND,
    Evaluator,
    steps_together,
    vanished,
)
from prunetune.pruning.knee import knee_settled
from prunetune.pruning.criteria.matrix_entropy import (  # noqa: F401  re-exported
    JOINTS,
    KERNELS,
    SIGMA_RULES,
    TIE_TOLERANCE,
    _check_alpha,
    check_condition,
    conditional_mutual_information,
    conditioning_gram,
    data_std,
    entropy_of_eigenvalues,
    first_max,
    gram_matrix,
    hadamard_joint,
    joint_entropy,
    kernel_width,
    label_gram,
    mutual_information,
    normalize_gram,
    renyi_entropy,
    unit_trace,
)

KNEE_SLACK = 1e-9
"""Bits: how far below 0 a later CMI may lie for the knee stop to stay exact (:func:`cmi_greedy`)."""

STOPS = ("complete", "vanished", "knee", "max_steps", "stop_gain")


@dataclass(frozen=True)
class CmiRanking:
    """The result of :func:`cmi_greedy`.

    Attributes:
        order: LongTensor[C], most informative first.
        values: float64 Tensor[C], the CMI (bits) of ``order[t]``; after ``steps`` see ``stop``.
        steps: how many channels the greedy argmax placed before it stopped.
        stop: ``"complete"`` (all C), ``"vanished"`` (the rest provably tie: increasing index,
            values 0, exactly what the full greedy returns up to :data:`VANISH_BOUND`),
            ``"knee"`` (the knee of the curve was settled, :func:`cmi_greedy`'s ``stop_at_knee``: the
            rest ordered by their CMI at the last evaluated step, each valued at an equal share of
            the information left, so the values sum to the full greedy's),
            ``"max_steps"`` or ``"stop_gain"`` (the rest ordered by their CMI at the last evaluated
            step, values those CMIs; not the full greedy's order).
    """

    order: Tensor
    values: Tensor
    steps: int
    stop: str


def cmi_ranking(
    maps: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.01,
    sigma_rule: str = "median",
    gamma: float = 1.0,
    max_steps: int | None = None,
    stop_gain: float | None = None,
    max_memory_mb: float = 1024.0,
    condition: Tensor | None = None,
    stop_at_knee: bool = False,
) -> tuple[Tensor, Tensor]:
    """Greedy within-layer CMI ranking: ``(order, values)`` of :func:`cmi_greedy`."""
    result = cmi_greedy(
        maps, labels, alpha=alpha, sigma_rule=sigma_rule, gamma=gamma, max_steps=max_steps,
        stop_gain=stop_gain, max_memory_mb=max_memory_mb, condition=condition, stop_at_knee=stop_at_knee,
    )
    return result.order, result.values


def cmi_greedy(
    maps: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.01,
    sigma_rule: str = "median",
    gamma: float = 1.0,
    max_steps: int | None = None,
    stop_gain: float | None = None,
    max_memory_mb: float = 1024.0,
    condition: Tensor | None = None,
    stop_at_knee: bool = False,
) -> CmiRanking:
    """Greedy within-layer CMI ranking: j* = argmax_{j∉S} I_α(Y; X_j | X_S, T) at each step.

    X_j is channel j's flattened map per sample (Gaussian Gram matrix, σ per channel by
    ``sigma_rule``), Y the delta-kernel label Gram matrix, X_S the Hadamard joint of the selected
    channels (kept as a running product) and T the optional ``condition`` (the cross-layer forms of
    :class:`~prunetune.pruning.criteria.cmi.Cmi`; without it the first step is I(Y; X_j)).
    All candidates of one step are evaluated in one batched call (chunked if the stack would exceed
    ``max_memory_mb``). Ties (values within :data:`TIE_TOLERANCE`) go to the lower channel index.
    See the module docstring for how this equals the straightforward greedy.

    Args:
        maps: ``Tensor[n, C, ...]`` activations of n samples.
        labels: ``Tensor[n]`` class labels.
        max_steps: stop selecting after this many steps; the channels left are appended ordered
            by their CMI at the last evaluated step (their ``values`` are those CMIs; ties again to
            the lower index).
        stop_gain: stop once a step's best CMI falls below ``stop_gain`` times the first pick's
            (the conditional gain "has vanished"); the channels left, that step's best included,
            are appended as with ``max_steps``. ``None`` (default): no such stop. An approximation
            of the full greedy's tail, never of its prefix.
        condition: a unit-trace PSD ``Tensor[n, n]`` (e.g. :func:`normalize_gram` of a Gram
            matrix) joined (Hadamard) to X_S from the first step on.
        stop_at_knee: stop as soon as the knee of the CMI curve (the ``cmi_knee`` cut-off,
            :func:`prunetune.pruning.knee.knee_keep`) is settled: every curve the full greedy could
            still produce has the same knee. What is known then: the values so far, and the sum of
            all later ones, H(Y|X_S) − H(Y|X_all) (the values telescope; one more eigenvalue
            problem, for the joint of all channels), each at least −:data:`KNEE_SLACK`
            (:func:`~prunetune.pruning.knee.knee_settled`). So ``cmi_knee`` keeps the same counts
            at every scale as after the full greedy, provided no later CMI is below −1e-9 bits. At
            α = 1 none is below 0: the added channel's Gram matrix acts as a unital channel that
            commutes with the label blocks, and relative entropy only falls under it; at other α
            this is measured, not proved (benchmarks/README.md, "CMI"). The order after the stop is
            not the full greedy's; use it for the knee only. Several layers read as one mean curve
            (a group's feature points) stop together: :func:`greedy_run` and :func:`finish_runs`.
    """
    run = greedy_run(
        maps, labels, alpha=alpha, sigma_rule=sigma_rule, gamma=gamma, max_steps=max_steps, stop_gain=stop_gain,
        max_memory_mb=max_memory_mb, condition=condition, stop_at_knee=stop_at_knee,
    )
    finish_runs([run])
    return run.result


def greedy_run(
    maps: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.01,
    sigma_rule: str = "median",
    gamma: float = 1.0,
    max_steps: int | None = None,
    stop_gain: float | None = None,
    max_memory_mb: float = 1024.0,
    condition: Tensor | None = None,
    stop_at_knee: bool = False,
) -> GreedyRun:
    """:func:`cmi_greedy`'s greedy, set up and not yet run (:func:`finish_runs` runs it)."""
    alpha = _check_alpha(alpha)
    n, c = maps.shape[0], maps.shape[1]
    if labels.shape[0] != n:
        raise ConfigError(f"cmi needs one label per sample: {n} samples but {labels.shape[0]} labels")
    if stop_gain is not None and (
        isinstance(stop_gain, bool) or not isinstance(stop_gain, (int, float)) or not 0.0 <= stop_gain <= 1.0
    ):
        raise ConfigError(f"parameter 'stop_gain' must be in [0, 1] or None, but got stop_gain={stop_gain!r}")
    if stop_at_knee and (stop_gain is not None or max_steps is not None):
        raise ConfigError("stop_at_knee settles the knee of the full greedy's curve; it cannot be combined with "
                          "stop_gain or max_steps, which change that curve")
    x = maps.detach().reshape(n, c, -1).to(torch.float64).transpose(0, 1)  # C×n×d
    a_ch = normalize_gram(gram_matrix(x, sigma_rule=sigma_rule, gamma=gamma))  # C×n×n
    ev = Evaluator(a_ch, labels.to(x.device), alpha, max_memory_mb)
    steps = c if max_steps is None else max(0, min(int(max_steps), c))
    cond = check_condition(condition, n, x.device)
    return GreedyRun(ev, cond, steps, stop_gain, _information_left(ev, cond) if stop_at_knee else None)


def _information_left(ev: Evaluator, condition: Tensor | None) -> float:
    """H(Y | X_all) = S(Y, all) − S(all): what the label keeps after every channel (and the condition)."""
    a_all = hadamard_joint(*ev.a_ch.unbind(0)) if condition is None else hadamard_joint(condition, *ev.a_ch.unbind(0))
    return float(ev.const(a_all))


def finish_runs(runs: list[GreedyRun]) -> None:
    """Run every greedy of one set to its end (:func:`finish_sets`): those with the knee stop
    together, until the knee of their mean curve is settled (:func:`settle_knees`), the others each
    to its own end."""
    finish_sets([runs])


def finish_sets(sets: list[list[GreedyRun]]) -> None:
    """Run the greedies of several sets (one set per group: its feature points) to their ends, in
    step: each step's eigenvalue problems of every live greedy are solved together
    (:func:`advance_together`). In a set, the runs with the knee stop stop together, when the knee
    of their mean curve is settled (:func:`settle_knees`); the others run to their own ends. The
    results are those of running each set alone, up to rounding (the orders the same unless two
    candidates tie within it; :func:`~prunetune.pruning.criteria.cmi_steps.steps_together`)."""
    knee_sets = [[r for r in runs if r.knee_floor is not None] for runs in sets]
    knee_sets = [k for k in knee_sets if k]
    while True:
        for runs in knee_sets:
            settle_knees(runs)
        live = [r for runs in sets for r in runs if r.result is None]
        if not live:
            return
        advance_together(live)


def advance_together(runs: list[GreedyRun]) -> None:
    """One step of every run (:meth:`GreedyRun.advance`), the label-block steps of runs with equal
    :meth:`~prunetune.pruning.criteria.cmi_steps.Evaluator.together_key` in one batched solve
    (:func:`~prunetune.pruning.criteria.cmi_steps.steps_together`)."""
    together: dict[tuple, list[GreedyRun]] = {}
    for run in runs:
        if not run.needs_step():
            continue
        key = run.ev.together_key()
        if key is None:
            run.advance()
        else:
            together.setdefault(key, []).append(run)
    for group in together.values():
        outs = steps_together([(r.ev, r.remaining, r.a_s, r.const) for r in group])
        for run, out in zip(group, outs):
            run.take(*out)


def settle_knees(runs: list[GreedyRun]) -> None:
    """The knee stop's test, before each step of :func:`finish_sets`: if the knee of the mean curve
    of ``runs`` (one layer each, the same channel count) is settled, stop every live one there
    (``stop="knee"``).

    The mean curve is what a group of several feature points reads (``calibration._reduce``
    averages the curves position by position), and a single run's curve is its own mean. After t
    steps of every run still going, its first t values are known, and the sum of the rest is the
    mean of each run's :meth:`GreedyRun.left`; :func:`~prunetune.pruning.knee.knee_settled` says
    when every completion has one knee. Each stopped run then gives its unplaced channels equal
    shares of what it has left, so the mean curve stored is one of those completions.
    """
    live = [r for r in runs if r.result is None]
    if not live:
        return
    t = len(live[0].order)  # every live run has taken the same number of steps
    if t >= 2:
        total = runs[0].ev.a_ch.shape[0]
        prefix = torch.stack([torch.tensor(r.curve()[:t], dtype=torch.float64) for r in runs]).mean(0)
        left = sum(r.left(t) for r in runs) / len(runs)
        if knee_settled(prefix, left, total, KNEE_SLACK) is not None:
            for r in live:
                r.stop_here()


class GreedyRun:
    """One layer's greedy (:func:`cmi_greedy`), a step at a time; ``result`` once it is over.

    ``knee_floor`` (H(Y|X_all), set with ``stop_at_knee``) lets :func:`settle_knees` stop it.
    """

    def __init__(self, ev: Evaluator, a_s: Tensor | None, steps: int, stop_gain: float | None,
                 knee_floor: float | None = None) -> None:
        self.ev, self.a_s, self.steps, self.stop_gain, self.knee_floor = ev, a_s, steps, stop_gain, knee_floor
        self.remaining = list(range(ev.a_ch.shape[0]))
        self.order: list[int] = []
        self.values: list[float] = []
        self.const = ev.const(a_s)
        self.cmi = torch.empty(0, dtype=torch.float64)
        self.stop = "complete" if steps == len(self.remaining) else "max_steps"
        self.result: CmiRanking | None = None

    def curve(self) -> list[float]:
        """The values placed so far (all of them once the run is over)."""
        return self.result.values.tolist() if self.result is not None else self.values

    def left(self, t: int) -> float:
        """The sum of the values from position ``t`` on: known once the run is over; while it runs
        (``t`` steps taken) H(Y|X_S) − H(Y|X_all), since the values telescope."""
        if self.result is not None:
            return float(self.result.values[t:].sum())
        return float(self.const) - float(self.knee_floor)

    def needs_step(self) -> bool:
        """Whether the run has a step to take; a run with none left is finished here (``result``)."""
        if self.result is not None:
            return False
        if len(self.order) >= self.steps or not self.remaining:
            self.result = self._finish()
            return False
        return True

    def advance(self) -> None:
        """One greedy step; the run is over (``result`` set) after the last, or at an early stop."""
        if self.needs_step():
            self.take(*self.ev.step(self.remaining, self.a_s, self.const))

    def take(self, cmi: Tensor, s_full: Tensor, s_y: Tensor) -> None:
        """Place the step's best candidate, given every remaining candidate's (CPU) CMI and its two
        entropies S(X_j,S), S(Y,X_j,S) (:meth:`~prunetune.pruning.criteria.cmi_steps.Evaluator.step`)."""
        ev = self.ev
        best = first_max(cmi)
        values = self.values
        if self.stop_gain is not None and values and values[0] > 0 and float(cmi[best]) < self.stop_gain * values[0]:
            self.stop, self.cmi = "stop_gain", cmi
            self.result = self._finish()
            return
        j = self.remaining.pop(best)
        self.order.append(j)
        values.append(float(cmi[best]))
        self.cmi = torch.cat([cmi[:best], cmi[best + 1 :]])
        self.a_s = ev.a_ch[j] if self.a_s is None else hadamard_joint(self.a_s, ev.a_ch[j])
        self.const = ev.next_const(self.a_s, s_full[best], s_y[best])
        if self.remaining and len(self.order) < self.steps and vanished(self.a_s, ev.alpha):
            taken = len(self.order)
            self.order += self.remaining
            values += [0.0] * len(self.remaining)
            self.remaining = []
            self.result = _result(self.order, values, taken, "vanished")
        elif not self.remaining or len(self.order) >= self.steps:
            self.result = self._finish()

    def stop_here(self) -> None:
        """The knee stop: the rest by their CMI at this step (ties to the lower index), each valued at
        an equal share of :meth:`left`, so the values still sum to the full greedy's."""
        taken = len(self.order)
        share = self.left(taken) / len(self.remaining)
        while self.remaining:
            best = first_max(self.cmi)
            self.order.append(self.remaining.pop(best))
            self.values.append(share)
            self.cmi = torch.cat([self.cmi[:best], self.cmi[best + 1 :]])
        self.result = _result(self.order, self.values, taken, "knee")

    def _finish(self) -> CmiRanking:
        """All steps taken, or max_steps / stop_gain: the rest by their CMI at the last evaluated step."""
        taken = len(self.order)
        if self.remaining:
            if not self.order:
                self.cmi = self.ev.step(self.remaining, self.a_s, self.const)[0]
            while self.remaining:
                best = first_max(self.cmi)
                self.order.append(self.remaining.pop(best))
                self.values.append(float(self.cmi[best]))
                self.cmi = torch.cat([self.cmi[:best], self.cmi[best + 1 :]])
        return _result(self.order, self.values, taken, self.stop)


def _result(order: list[int], values: list[float], steps: int, stop: str) -> CmiRanking:
    return CmiRanking(torch.tensor(order, dtype=torch.long), torch.tensor(values, dtype=torch.float64),
                      steps, "complete" if steps == len(order) else stop)
