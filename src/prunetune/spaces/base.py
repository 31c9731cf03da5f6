"""Search spaces as define-by-run functions of a trial-like object.

A space is a :class:`SearchSpace`: an ordered tuple of components, each a cheap callable
``component(trial, config) -> dict`` that asks ``trial`` for values (``suggest_float``,
``suggest_int``, ``suggest_categorical``) and returns its part of the flat *trial config*. ``config``
is what earlier components returned, so a component may be conditional (ratios are sampled only
when the allocation is ``ratios``). Fixed choices are returned as constants, not suggested.

Call order: :meth:`SearchSpace.define` runs the components in order on one trial and merges their
parts; it does no forward pass, no scoring, nothing that grows with the data. The same space
replays a stored config with :class:`FixedTrial` (:meth:`SearchSpace.replay`), which checks every
value against the space.

Parameter names use dots (``ratio.layer1.0.conv1``), never ``/``: Ray's own searchers unflatten
them into nested dicts (prunetune's own searcher keeps the names as they are).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from prunetune.exceptions import ConfigError

Config = dict[str, Any]


@runtime_checkable
class TrialLike(Protocol):
    """What a space asks of a trial: ``optuna.Trial``, ``optuna.trial.FixedTrial``, Ray's captor,
    :class:`FixedTrial` and :class:`RandomTrial` all fit."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


class Component(Protocol):
    """One part of a space. Must be picklable (Ray pickles the searcher with the space)."""

    def __call__(self, trial: TrialLike, config: Mapping[str, Any]) -> Config: ...


def check_name(name: str) -> str:
    """Parameter names must not contain '/' (Ray unflattens on it)."""
    if "/" in name:
        raise ConfigError(f"search parameter names must not contain '/', got {name!r}; "
                          "use dots, as module names do")
    return name


@dataclass(frozen=True)
class SearchSpace:
    """An ordered composition of named components (see the module docstring).

    Attributes:
        components: ``(name, component)`` pairs, run in this order.
    """

    components: tuple[tuple[str, Component], ...]

    def define(self, trial: TrialLike) -> Config:
        """Run every component on ``trial``; return the full flat trial config."""
        config: Config = {}
        for name, component in self.components:
            part = component(trial, config)
            clash = sorted(set(part) & set(config))
            if clash:
                raise ConfigError(f"space component {name!r} sets {clash[0]!r}, which an earlier component set")
            config.update(part)
        return config

    __call__ = define

    def replay(self, config: Mapping[str, Any]) -> Config:
        """Re-run the space on a stored config: every sampled value must lie in the space.

        Constants the space fixes may be left out of ``config`` (they are filled in) but must match
        when present.

        Raises:
            ConfigError: a value is missing, out of range or not a choice, or ``config`` holds a key
                the space does not produce.
        """
        trial = FixedTrial(config)
        out = self.define(trial)
        extra = sorted(set(config) - set(out))
        if extra:
            raise ConfigError(f"config key {extra[0]!r} is not part of this search space; "
                              f"the space produces: {', '.join(sorted(out))}")
        for key, value in out.items():
            if key not in trial.used and key in config and config[key] != value:
                raise ConfigError(f"config sets {key}={config.get(key)!r}, the space fixes it to {value!r}")
        return out

    @property
    def for_ray(self) -> RayDefine:
        """The define-by-run function for the Ray searcher: suggests, returns only the constants."""
        return RayDefine(self)


@dataclass(frozen=True)
class RayDefine:
    """Ray records the suggested values itself and merges the constants this returns."""

    space: SearchSpace

    def __call__(self, trial: TrialLike) -> Config:
        recorder = _Recorder(trial)
        config = self.space.define(recorder)
        return {k: v for k, v in config.items() if k not in recorder.names}


class _Recorder:
    def __init__(self, trial: TrialLike) -> None:
        self.trial, self.names = trial, set()

    def suggest_float(self, name: str, low: float, high: float, **kw: Any) -> float:
        self.names.add(name)
        return self.trial.suggest_float(name, low, high, **kw)

    def suggest_int(self, name: str, low: int, high: int, **kw: Any) -> int:
        self.names.add(name)
        return self.trial.suggest_int(name, low, high, **kw)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.names.add(name)
        return self.trial.suggest_categorical(name, choices)


@dataclass
class FixedTrial:
    """A dict-backed trial that answers with stored values and checks them against the space
    (like ``optuna.trial.FixedTrial``, without importing Optuna)."""

    params: Mapping[str, Any]
    used: set[str] = field(default_factory=set)

    def _get(self, name: str) -> Any:
        if name not in self.params:
            raise ConfigError(f"config has no value for search parameter {name!r}; "
                              f"it has: {', '.join(sorted(self.params)) or 'nothing'}")
        self.used.add(name)
        return self.params[name]

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"search parameter {name!r} must be a number, got {value!r}")
        span = 1e-9 * max(1.0, abs(high))
        if not low - span <= value <= high + span:
            raise ConfigError(f"search parameter {name}={value!r} is outside the space's range [{low}, {high}]")
        return float(value)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"search parameter {name}={value!r} must be an integer in [{low}, {high}]")
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = self._get(name)
        if value not in list(choices):
            raise ConfigError(f"search parameter {name}={value!r} is not one of the space's choices {list(choices)}")
        return value


class RandomTrial:
    """A seeded trial that samples uniformly (log-uniformly with ``log=True``): tests, benchmarks."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.params: Config = {}

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        value = math.exp(self.rng.uniform(math.log(low), math.log(high))) if log else self.rng.uniform(low, high)
        self.params[name] = min(max(value, low), high)
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self.params[name] = self.rng.randrange(low, high + 1, step)
        return self.params[name]

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.params[name] = self.rng.choice(list(choices))
        return self.params[name]
