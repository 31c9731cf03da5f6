"""Soft-to-hard pruning schedules as pure functions of ``(epoch, total)``; no hidden counters.

A schedule says, for the fine-tune epoch ``e`` of ``E`` (applied at the start of that epoch):

* ``prune`` — the fraction of each group's planned pruned channels that are pruned now;
* ``hard`` — the fraction of those that are *hard*: gated to zero after BN, weights, BN and
  optimizer momentum zeroed and kept at zero (they can never come back);
* ``soft_scale`` — what the remaining (soft) pruned filters' weights are multiplied by (0 = SFP
  zeroing, > 0 = SRFP-style decay); soft filters keep training and may regrow;
* ``rescore`` — whether the pruned set is re-chosen by the current weights (SFP family); the
  first epoch always starts from the plan's ranking (the recipe's criterion);
* ``pool`` — which channels a re-score may prune: ``plan`` (the planned ones; re-scoring orders
  them, the final architecture is the plan's) or ``all`` (any channel, as published: a pruned
  filter can come back and a kept one go).

Every schedule ends with its last epoch fully pruned and hard, so the accuracy the last epoch
measures on the masked network is the accuracy after physical removal; the one exception is the
published SFP/ASFP end (``hard_fraction: 0``), whose last epoch is soft and whose removal follows
it (see :mod:`prunetune.pruning.masking`). Formulas: criteria.md §2 (SFP, ASFP, SRFP, GHFP).

Measured choices for short fine-tunes (ResNet-20 on digits, 30% MACs, 3 epochs, seeds 0-2; see
``benchmarks/README.md``, "schedules"):

* Behind BN a zeroed filter is back at full strength after one SGD step (BN normalises away the
  weights' scale), so a soft channel is a live channel, and any channel that is live in one epoch
  and removed at the next costs accuracy that a low-learning-rate tail cannot win back. Every soft
  schedule therefore fine-tunes its last ``ceil(hard_fraction·E)`` epochs (at most E−1, at least
  1) with every pruned filter hard; ``hard_fraction`` defaults to 0.5. ``hard_fraction: 0`` gives the published
  schedules (SFP/ASFP: soft to the end; GHFP: the ramp reaches λ = 1 in the last epoch).
* Re-scoring by weight norms on a BN network chooses nearly at random (the norm of a filter before
  BN says little about its channel), so the default ``pool`` is ``plan``: re-scoring decides the
  order in which the planned channels harden, not which channels the network loses.

Epoch convention: the state of epoch ``e`` is applied at its start, so λ_e and P_e come one epoch
ahead of PGMPF, which prunes after training epoch e with (P_e, λ_e) and so trains epoch e+1 under
them. Applied at the start, the last epoch trains under λ = 1, on the final architecture.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prunetune._registry import Registry
from prunetune._text import close_names
from prunetune.exceptions import ConfigError


POOLS = ("plan", "all")


@dataclass(frozen=True)
class EpochState:
    prune: float
    hard: float
    soft_scale: float = 0.0
    rescore: bool = False
    pool: str = "plan"


def checked_state(name: str, state_fn: Callable[..., Any], epoch: int, total: int, **params: Any) -> EpochState:
    """``state_fn(epoch, total, **params)`` of schedule ``name``, refused in one line unless it is an
    :class:`EpochState` of fractions in [0, 1] and a known pool: a (plugin) schedule's tuple, or its
    ``prune=-0.5``, ran silently or failed deep inside the fine-tune."""
    where = f"schedule {name!r} at epoch {epoch + 1} of {total}"
    try:
        state = state_fn(epoch, total, **params)
    except Exception as exc:  # noqa: BLE001 - a plugin's own error, named with its schedule and epoch
        raise ConfigError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    fault = state_fault(state)
    if fault == "type":
        raise ConfigError(f"{where} returned a {type(state).__name__}, not an EpochState")
    if fault is not None:
        raise ConfigError(f"{where} returned {fault}={getattr(state, fault)!r}; it must be {field_range(fault)}")
    return state


def field_range(field: str, number: str = "a fraction") -> str:
    """What a state's ``field`` must hold (``number``: how a fraction field is worded)."""
    return {"rescore": "a bool", "pool": f"one of {', '.join(map(repr, POOLS))}"}.get(field, f"{number} in [0, 1]")


def state_fault(state: Any) -> str | None:
    """What is wrong with a schedule's state: ``"type"`` (not an :class:`EpochState`), the first field
    out of its range (``prune``, ``hard``, ``soft_scale``: a real number in [0, 1]; ``rescore``: a
    bool; ``pool``: one of :data:`POOLS`), or None. The fine-tune (:func:`checked_state`) and the
    contract suite (``prunetune.testing``) both ask it."""
    if not isinstance(state, EpochState):
        return "type"
    for key in ("prune", "hard", "soft_scale"):
        value = getattr(state, key)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
            return key
    if not isinstance(state.rescore, bool):
        return "rescore"
    return None if isinstance(state.pool, str) and state.pool in POOLS else "pool"


@dataclass(frozen=True)
class Floats:
    """A searched float parameter, uniform in ``[low, high]``."""

    low: float
    high: float

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high)


@dataclass(frozen=True)
class Ints:
    """A searched integer parameter in ``low..high``."""

    low: int
    high: int

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high)


@dataclass(frozen=True)
class Choices:
    """A searched categorical parameter."""

    values: tuple[Any, ...]

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))


Searched = Floats | Ints | Choices


@dataclass(frozen=True)
class Schedule:
    """A registered schedule: ``state(epoch, total, **params) -> EpochState`` and its parameters.

    Attributes:
        defaults: every parameter with its default (a parameter not named here is an error).
        choices: the allowed values of categorical parameters.
        space: the parameters a search samples and how (in sampling order); the search space asks
            for ``schedule.<name>.<param>`` (see :class:`prunetune.spaces.presets.ScheduleParams`).
        one_shot: removal before the fine-tune (no masks): the channels are gone from the first epoch.
    """

    name: str
    fn: Callable[..., EpochState]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    summary: str = ""
    space: Mapping[str, Searched] = field(default_factory=dict)
    one_shot: bool = False

    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(unknown_param_message(self.name, unknown[0], self.defaults))
        out = {**self.defaults, **params}
        for key, allowed in self.choices.items():
            if out[key] not in allowed:
                raise ConfigError(f"schedule {self.name!r}: {key} must be one of {list(allowed)}, got {out[key]!r}")
        return out

    def validate(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Parse time: names, choices and values (the schedule's own checks, run on a one-epoch
        fine-tune), so a bad parameter fails when the recipe is read, before any work."""
        resolved = self.resolve(params)
        try:
            self.fn(0, 1, **resolved)
        except (TypeError, ValueError, ArithmeticError) as e:
            raise ConfigError(f"schedule {self.name!r}: parameters {dict(params or {})} do not work ({e})") from None
        return resolved

    def state(self, epoch: int, total: int, **params: Any) -> EpochState:
        if total < 1 or not 0 <= epoch < total:
            raise ConfigError(f"schedule epoch must be in 0..{total - 1}, got {epoch} (total {total})")
        return self.fn(epoch, total, **self.resolve(params))


def unknown_param_message(schedule: str, key: str, known: Iterable[str]) -> str:
    """``schedule 'sfp' has no parameter 'hardfraction'; its parameters: ...`` (+ did you mean)."""
    known = sorted(known)
    close = close_names(key, known)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"schedule {schedule!r} has no parameter {key!r}; its parameters: {', '.join(known) or 'none'}{hint}"


SCHEDULES: Registry[Schedule] = Registry("schedule", pluggable=True, entry=Schedule,
                                       how="register Schedule(name, fn, defaults, choices, summary, space) "
                                           "(prunetune.pruning.schedules)")


def _register(name: str, defaults: Mapping[str, Any], summary: str, choices: Mapping[str, tuple] | None = None,
              *, space: Mapping[str, Searched] | None = None, one_shot: bool = False):
    def deco(fn: Callable[..., EpochState]) -> Callable[..., EpochState]:
        SCHEDULES.register(name, Schedule(name, fn, dict(defaults), dict(choices or {}), summary, dict(space or {}),
                                          one_shot))
        return fn
    return deco


WEIGHT_RESCORE = ("l2", "l1", "fpgm")
SOFT_CHOICES = {"criterion": WEIGHT_RESCORE, "pool": POOLS}
HARD_FRACTION_SPACE = {"hard_fraction": Floats(0.25, 0.75)}
RAMPS, BASES = ("cubic", "cosine"), ("sfp", "asfp")


@_register("hard", {}, "one-shot removal, then fine-tune", one_shot=True)
def hard(epoch: int, total: int) -> EpochState:
    return EpochState(prune=1.0, hard=1.0)


def hard_epochs(total: int, hard_fraction: float) -> int:
    """How many final epochs run fully hard: ``ceil(hard_fraction·total)``, at most ``total − 1`` but
    at least one when ``hard_fraction > 0`` (a one-epoch fine-tune is then simply hard: one soft
    epoch followed by removal would delete live channels untrained)."""
    if isinstance(hard_fraction, bool) or not isinstance(hard_fraction, (int, float)) or not 0 <= hard_fraction <= 1:
        raise ConfigError(f"hard_fraction must be a number in [0, 1], got {hard_fraction!r}")
    n = min(math.ceil(hard_fraction * total - 1e-9), total - 1)
    return max(1 if hard_fraction > 0 else 0, n)


def _final_hard(epoch: int, total: int, hard_fraction: float) -> bool:
    """Whether ``epoch`` falls in the final hard phase (see :func:`hard_epochs`)."""
    return epoch >= total - hard_epochs(total, hard_fraction)


@_register("sfp", {"criterion": "l2", "hard_fraction": 0.5, "pool": "plan"}, "soft filter pruning: re-score and "
           "zero the lowest filters every epoch (He et al., IJCAI 2018)", SOFT_CHOICES, space=HARD_FRACTION_SPACE)
def sfp(epoch: int, total: int, *, criterion: str, hard_fraction: float, pool: str) -> EpochState:
    if _final_hard(epoch, total, hard_fraction):
        return EpochState(prune=1.0, hard=1.0, rescore=True, pool=pool)
    return EpochState(prune=1.0, hard=0.0, soft_scale=0.0, rescore=True, pool=pool)


def asfp_fraction(epoch: int, total: int, d_fraction: float = 1 / 8) -> float:
    """ASFP's asymptotic rate as a fraction of P: 1 − exp(−k·e), k = ln 4 / (d_fraction·E)."""
    k = math.log(4.0) / max(d_fraction * total, 1e-9)
    return 1.0 - math.exp(-k * epoch)


@_register("asfp", {"criterion": "l2", "d_fraction": 1 / 8, "hard_fraction": 0.5, "pool": "plan"},
           "asymptotic SFP: P_e = P(1 − exp(−k e)), k = ln4/(E/8) (He et al., TCYB 2019)", SOFT_CHOICES,
           space=HARD_FRACTION_SPACE)
def asfp(epoch: int, total: int, *, criterion: str, d_fraction: float, hard_fraction: float, pool: str) -> EpochState:
    if not 0 < d_fraction <= 1:
        raise ConfigError(f"schedule 'asfp': d_fraction must be in (0, 1], got {d_fraction!r}")
    if _final_hard(epoch, total, hard_fraction):
        return EpochState(prune=1.0, hard=1.0, rescore=True, pool=pool)
    return EpochState(prune=asfp_fraction(epoch, total, d_fraction), hard=0.0, rescore=True, pool=pool)


def hard_ramp(epoch: int, total: int, kind: str) -> float:
    """GHFP's hard fraction λ_e: ``cubic`` 1 − (1 − (e+1)/E)³, ``cosine`` (1 − cos(π(e+1)/E))/2."""
    t = min(1.0, (epoch + 1) / total)
    if kind == "cubic":
        return 1.0 - (1.0 - t) ** 3
    if kind == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * t))
    raise ConfigError(f"ramp must be 'cubic' or 'cosine', got {kind!r}")


def srfp_alpha(epoch: int, total: int, alpha: float, sigma: float = 1e-5) -> float:
    """SRFP decay of soft-pruned weights: α_e = α₀·exp(−a·e), a = ln((α₀ + 0.01σ)/σ)/E; 0 from 0.9·E on."""
    if alpha <= 0 or epoch >= 0.9 * total:
        return 0.0
    a = math.log((alpha + 0.01 * sigma) / sigma) / total
    return alpha * math.exp(-a * epoch)


@_register("ghfp", {"base": "sfp", "ramp": "cubic", "alpha": 0.0, "sigma": 1e-5, "criterion": "l2",
                    "hard_fraction": 0.5, "pool": "plan"},
           "gradually hard: a growing fraction λ_e of the pruned filters is hard (Cai et al., IJCNN 2021)",
           {"base": BASES, "ramp": RAMPS, **SOFT_CHOICES},
           space={"ramp": Choices(RAMPS), "base": Choices(BASES), "alpha": Floats(0.0, 1.0)})
def ghfp(epoch: int, total: int, *, base: str, ramp: str, alpha: float, sigma: float, criterion: str,
         hard_fraction: float, pool: str) -> EpochState:
    """λ_e ramps to 1 at the first epoch of the final hard phase (the last epoch with ``hard_fraction: 0``,
    as PGMPF); from there on everything planned is pruned and hard."""
    if not 0 <= alpha <= 1:
        raise ConfigError(f"schedule 'ghfp': alpha must be in [0, 1], got {alpha!r}")
    if alpha > 0 and not sigma > 0:
        raise ConfigError(f"schedule 'ghfp': sigma must be > 0, got {sigma!r}")
    hard_n = hard_epochs(total, hard_fraction)
    if hard_n and epoch >= total - hard_n:
        return EpochState(prune=1.0, hard=1.0, rescore=True, pool=pool)
    span = total - hard_n + 1 if hard_n else total  # the epochs over which λ climbs to 1
    prune = 1.0 if base == "sfp" or epoch == total - 1 else asfp_fraction(epoch, total)
    return EpochState(prune=prune, hard=hard_ramp(epoch, span, ramp),
                      soft_scale=srfp_alpha(epoch, total, alpha, sigma), rescore=True, pool=pool)


@_register("iterative", {"steps": 3, "rescore": False, "criterion": "l2", "pool": "plan", "hard_fraction": 0.5},
           "k steps of hard pruning towards the target, fine-tuning between them",
           {"rescore": (False, True), **SOFT_CHOICES}, space={"steps": Ints(2, 4)})
def iterative(epoch: int, total: int, *, steps: int, rescore: bool, criterion: str, pool: str,
              hard_fraction: float) -> EpochState:
    """Step ``i`` prunes ``i/steps`` of the planned channels hard; the steps share the epochs before the
    final phase of ``ceil(hard_fraction·E)`` epochs (see :func:`hard_epochs`), which trains the full target. With
    ``rescore: true`` each step picks its channels by the current weights (``criterion``, within
    ``pool``), otherwise by the plan's ranking."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"schedule 'iterative': steps must be an integer >= 1, got {steps!r}")
    ramp = total - hard_epochs(total, hard_fraction)
    done = steps if epoch >= ramp else min(steps, math.floor(epoch * steps / ramp) + 1)
    return EpochState(prune=done / steps, hard=1.0, rescore=rescore, pool=pool)
