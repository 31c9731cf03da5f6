"""Screening: many candidate plans ranked by a cheap proxy; only the promising few are fine-tuned.

A *candidate* is the plan part of a trial config (MACs target, allocation, ratios, blend weights,
normaliser: :data:`prunetune.spaces.PLAN_PARTS`). Its *proxy* is the validation likelihood
(exp of minus the mean cross-entropy) of the physically pruned network after its BN statistics are
re-estimated on a few training batches, with no weight update (:func:`prunetune.pruning.proxy.bn_proxy`;
adaptive BN as in EagleEye, ECCV 2020, which reads accuracy; the accuracy is recorded beside it): a few
forward passes instead of a fine-tune.

How the proxy informs Optuna: a *screening study* (multi-objective TPE: proxy ↑, MACs ↓) samples
the candidates over the plan space, told each proxy as it arrives, so later candidates concentrate
where the proxy front is. The pool always holds the hand recipes (each criterion of the space alone,
with uniform ratios and with one global threshold, at targets spread over the MACs range), enqueued
first. From the pool, :func:`prunetune.search.selection.select` takes the best proxy just under the
budget, then the non-dominated candidates of the proxy front (then the next fronts, if the first is
too small), spread over log-MACs, one per fine-tune trial. They are enqueued into the fine-tune
study. What the proxy cannot judge (schedule, its parameters, lr) follows
``screen.train_params``: ``recipe`` (the default) gives every trial the recipe's lr and the space's
first schedule at its defaults; ``sampled`` leaves them to the fine-tune study.

Nothing here imports Ray: the runner passes a pool that evaluates chunks of candidates in parallel
(Ray actors holding the dense model and the ScoreTable once), or evaluates them in this process.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prunetune._checks import unknown_key
from prunetune.exceptions import ConfigError
from prunetune.spaces import SearchSpace, SpaceSpec
from prunetune.search.selection import Candidate
from prunetune.spaces.presets import RATIO_PREFIX, TARGET, WEIGHT_PREFIX

CANDIDATES_PER_TRIAL = 16
TRAIN_PARAMS = ("recipe", "sampled")
# (MACs ratio, proxy likelihood, error[, the plan's identity: plan_identity[, proxy accuracy]]); a pool may
# leave out the last ones
Result = tuple[Any, ...]


@dataclass(frozen=True)
class ScreenSpec:
    """The ``screen:`` setting of a search config: ``false``, ``true`` or a mapping of these.

    Attributes:
        candidates: plans screened in all, hand recipes included (default 16 × trials).
        bn_batches: training batches BN statistics are re-estimated on, per candidate.
        val_images: validation images a proxy is measured on (the first ones of the split).
        train_params: how a screened trial gets what the proxy cannot judge (schedule, its
            parameters, lr): ``recipe`` (the recipe's lr and the space's first schedule at its
            defaults) or ``sampled`` (the fine-tune study samples them).
    """

    candidates: int | None = None
    bn_batches: int = 4  # as good as 8 or 16 at ranking plans, measured: benchmarks/README.md "proxy"
    val_images: int = 2048
    train_params: str = "recipe"
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.train_params not in TRAIN_PARAMS:
            raise ConfigError(f"screen.train_params must be one of {', '.join(TRAIN_PARAMS)}, got {self.train_params!r}")
        for key in ("candidates", "bn_batches", "val_images"):
            value = getattr(self, key)
            if (value is not None or key != "candidates") and (isinstance(value, bool) or not isinstance(value, int)
                                                               or value < 1):
                raise ConfigError(f"screen.{key} must be an integer >= 1, got {value!r}")

    @classmethod
    def parse(cls, value: Any) -> ScreenSpec:
        if value is None or value is True:
            return cls()
        if value is False:
            return cls(enabled=False)
        if not isinstance(value, Mapping):
            raise ConfigError(f"screen must be true, false or {{candidates: N, bn_batches: B, val_images: V}}, "
                              f"got {value!r}")
        allowed = {"candidates", "bn_batches", "val_images", "train_params"}
        unknown = sorted(set(value) - allowed, key=str)
        if unknown:
            raise unknown_key(unknown[0], "screen", allowed)
        return cls(**value)

    def count(self, trials: int) -> int:
        return self.candidates if self.candidates is not None else CANDIDATES_PER_TRIAL * trials

    def to_value(self) -> Any:
        if not self.enabled:
            return False
        return {"candidates": self.candidates, "bn_batches": self.bn_batches, "val_images": self.val_images,
                "train_params": self.train_params}




class Pool(Protocol):
    """Evaluates chunks of candidate parameters, possibly in parallel."""

    slots: int

    def submit(self, params: list[dict[str, Any]]) -> Any: ...
    def next_done(self, handles: list[Any]) -> tuple[Any, list[Result]]: ...


@dataclass
class LocalPool:
    """Evaluates each chunk at once, in this process (tests, benchmarks)."""

    evaluate: Callable[[list[dict[str, Any]]], list[Result]]
    slots: int = 1
    _done: dict[int, list[Result]] = field(default_factory=dict)

    def submit(self, params: list[dict[str, Any]]) -> Any:
        handle = len(self._done) + 1
        self._done[handle] = self.evaluate(params)
        return handle

    def next_done(self, handles: list[Any]) -> tuple[Any, list[Result]]:
        return handles[0], self._done.pop(handles[0])


class _Preset:
    """A trial that answers from fixed values (the rest: categorical first choice, float/int low)."""

    def __init__(self, fixed: Mapping[str, Any], ratio: float) -> None:
        self.fixed, self.ratio, self.params = dict(fixed), ratio, {}

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        value = self.fixed.get(name, self.ratio if name.startswith(RATIO_PREFIX) else low)
        self.params[name] = float(value)
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        self.params[name] = int(self.fixed.get(name, low))
        return self.params[name]

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.params[name] = self.fixed.get(name, choices[0])
        return self.params[name]


HAND_ALLOCATIONS = ("ratios", "global")


def hand_allocations(spec: SpaceSpec) -> tuple[str, ...]:
    """The allocations a user applies by hand that the space can express: one ratio for every group
    (``ratios`` with uniform ratios) and one global threshold (``global``, Torch-Pruning's default)."""
    return tuple(a for a in HAND_ALLOCATIONS if a in spec.allocations)


def hand_params(spec: SpaceSpec, space: SearchSpace, low: float, high: float, count: int) -> list[dict[str, Any]]:
    """The hand recipes in the space's terms: every criterion alone, with uniform ratios (``ratios``)
    and with one global threshold (``global``), each at ``count`` targets spread evenly over log-MACs
    in ``[low, high]``.

    Empty when the space can express neither allocation.
    """
    ratio = 0.5 * (spec.ratio_range[0] + spec.ratio_range[1])  # one value for every group: uniform
    out = []
    for allocation in hand_allocations(spec):
        for criterion in spec.criteria:
            weights = {WEIGHT_PREFIX + c: float(c == criterion) for c in spec.criteria}
            for target in spread_targets(low, high, count):
                trial = _Preset({TARGET: target, "allocation": allocation, **weights}, ratio)
                space.define(trial)
                out.append(trial.params)
    return out


def hand_pool(spec: SpaceSpec, space: SearchSpace, low: float, high: float, *, trials: int,
              count: int) -> list[dict[str, Any]]:
    """The hand recipes of a screening pool of ``count`` candidates: each recipe (criterion ×
    :func:`hand_allocations`) at ``max(4, trials)`` targets, at most half the pool. A pool too small
    for one target of every recipe holds as many as half of it does (at least one), at the top of the
    range, in criterion order with both allocations of a criterion side by side."""
    allocations = hand_allocations(spec)
    recipes = len(spec.criteria) * len(allocations)
    if recipes == 0:
        return []
    per = min(max(4, trials), count // (2 * recipes))
    if per >= 1:
        return hand_params(spec, space, low, high, per)
    one_each = hand_params(spec, space, low, high, 1)  # allocation-major: [a0 c0, a0 c1, ..., a1 c0, ...]
    criterion_major = [one_each[a * len(spec.criteria) + c] for c in range(len(spec.criteria))
                       for a in range(len(allocations))]
    return criterion_major[:max(1, count // 2)]


def trial_points(selected: Sequence[Candidate], space: SearchSpace, fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What each screened candidate is enqueued with in the fine-tune study: its plan parameters, plus
    ``fixed`` values for the rest of the space (empty: the study samples the rest)."""
    if not fixed:
        return [dict(c.params) for c in selected]
    out = []
    for c in selected:
        trial = _Preset({**fixed, **c.params}, 0.5)
        space.define(trial)
        out.append(trial.params)
    return out


def spread_targets(low: float, high: float, count: int) -> list[float]:
    """``count`` MACs targets evenly spaced in log-MACs from ``low`` to ``high`` (both included)."""
    if count <= 1 or high <= low:
        return [high]
    step = math.log(high / low) / (count - 1)
    return [min(high, max(low, low * math.exp(i * step))) for i in range(count)]


def run_screening(space: SearchSpace, hand: list[dict[str, Any]], count: int, pool: Pool, *, seed: int,
                  chunk: int, progress: Callable[[int, int], None] | None = None) -> list[Candidate]:
    """Screen ``count`` candidates (the ``hand`` ones first) with a multi-objective TPE study on the
    plan space; returns them all, in the order they were asked."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, constant_liar=True,
        n_startup_trials=startup_trials(count, len(hand))))
    for params in hand:
        study.enqueue_trial(params, skip_if_exists=True)
    total = max(count, len(hand))
    candidates: list[Candidate] = []
    in_flight: dict[Any, list[tuple[Any, Candidate]]] = {}
    asked = 0
    while asked < total or in_flight:
        while asked < total and len(in_flight) < pool.slots:
            batch = []
            for _ in range(min(chunk, total - asked)):
                trial = study.ask()
                config = space.define(trial)
                candidate = Candidate(len(candidates), dict(trial.params), "hand" if asked < len(hand) else "sampled",
                                      config=config)
                candidates.append(candidate)
                batch.append((trial, candidate))
                asked += 1
            in_flight[pool.submit([c.config for _, c in batch])] = batch
        handle, results = pool.next_done(list(in_flight))
        for (trial, candidate), (macs, proxy, error, *rest) in zip(in_flight.pop(handle), results):
            candidate.macs_ratio, candidate.proxy, candidate.error = macs, proxy, error
            candidate.plan_id = rest[0] if rest else None
            candidate.proxy_accuracy = rest[1] if len(rest) > 1 else math.nan
            if candidate.ok:
                study.tell(trial, [proxy, macs])
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if progress is not None:
            progress(sum(1 for c in candidates if c.error is not None or math.isfinite(c.proxy)), total)
    return candidates


def startup_trials(count: int, hand: int) -> int:
    """TPE's random start-up: a quarter of the sampled candidates (at least 8), *after* the ``hand``
    ones. Counted among the hand recipes it would be over before TPE had seen anything but uniform
    ratios, and TPE would all but never try the other allocations of the space."""
    return hand + max(8, (count - hand) // 4)


def evaluate_candidates(params: list[dict[str, Any]], base: Any, table: Any, *, bn_batches: int,
                        val_images: int) -> list[Result]:
    """Plan and proxy of each candidate config (in a worker): ``(MACs ratio, proxy likelihood, error,
    plan identity, proxy accuracy)``.

    The proxy is measured on a seeded random subset of ``val_images`` validation images (a folder's
    val split lists its images class by class, so its first images would be its first classes).
    """
    from prunetune.data import calibration_subset, make_loader
    from prunetune.recipes.planning import build_plan
    from prunetune.pruning.proxy import bn_proxy
    from prunetune.spaces import trial_recipe

    val = base.splits.val
    if len(val) > val_images:
        val = calibration_subset(val, size=val_images, seed=0)
    val_loader = make_loader(val, batch_size=max(256, base.recipe.data.batch_size), device=base.device)
    out: list[Result] = []
    for config in params:
        try:
            recipe = trial_recipe(base.recipe, config, base.groups)
            plan = build_plan(recipe, base, table)
            bn = base.loader("train", train=True, seed=recipe.seed + 1)
            proxy = bn_proxy(base.model, base.groups, plan, bn_batches=bn, val_batches=val_loader,
                             max_bn_batches=bn_batches, device=base.device)
            out.append((plan.macs_ratio, proxy.likelihood, None, plan_identity(plan), proxy.accuracy))
        except Exception as exc:  # noqa: BLE001 - one candidate's failure (a target its strategy cannot
            # reach, a numerical error) must not end the screening: it is recorded and never selected
            out.append((math.nan, math.nan, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    return out


def plan_identity(plan: Any) -> str:
    """What makes two candidates one trial, whatever parameters produced them (a ``global`` threshold
    and ``ratios`` at two targets may give one plan): ``"<kept>:<order>"``, digests of the channels the
    plan keeps and of the order in which a gradual schedule prunes the rest
    (:class:`~prunetune.pruning.plan.PruningPlan`). Under a one-shot schedule the kept channels
    alone decide the trial (:func:`~prunetune.search.selection.select`'s ``by_order``)."""
    kept = json.dumps({k: list(v) for k, v in plan.kept.items()}, sort_keys=True)
    order = json.dumps({name: plan.pruned_order(name) for name in plan.kept}, sort_keys=True)
    return f"{_digest(kept)}:{_digest(order)}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ScreenOutcome:
    """What screening did: the pool, what was selected, and how long it took."""

    candidates: list[Candidate]
    selected: list[Candidate]
    seconds: float
    fresh: bool = False  # screened by this run (not read back from an interrupted one's file)

    def to_json(self) -> str:
        return json.dumps({"seconds": self.seconds, "candidates": [c.__dict__ for c in self.candidates]},
                          default=str)

    @classmethod
    def from_json(cls, text: str) -> ScreenOutcome:
        """The outcome :meth:`to_json` wrote; a ``ValueError`` saying what is wrong for anything else."""
        data = json.loads(text)
        try:
            candidates = [Candidate(**c) for c in data["candidates"]]
            seconds = float(data["seconds"])
        except (TypeError, KeyError) as exc:
            raise ValueError(f"not a screened pool: {type(exc).__name__}: {exc}") from None
        if not all(isinstance(c.params, dict) and isinstance(c.config, dict) for c in candidates):
            raise ValueError("not a screened pool: a candidate's params or config is not a mapping")
        return cls(candidates, [c for c in candidates if c.selected], seconds)

