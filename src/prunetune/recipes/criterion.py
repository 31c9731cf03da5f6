"""The recipe's ``criterion:`` section: one criterion or a blend of several, with their parameters.

Validated when the recipe is read (names, weights, normaliser, each criterion's parameters through
its registry entry); :func:`prunetune.pruning.blend.blend_scores` computes the blend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prunetune._checks import unknown_key
from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria import CRITERIA
from prunetune.pruning.normalize import NORMALIZERS
from prunetune.pruning.strategies import read_by_strategies, strategy_criteria


@dataclass(frozen=True)
class CriterionSpec:
    """What to score with: one criterion, or a blend of several, and their parameters.

    Attributes:
        weights: criterion name -> blend weight (one entry with weight 1 for a single criterion).
        normalizer: applied per group to each criterion's scores before the weighted sum.
        params: criterion name -> its parameters (see each criterion's ``defaults``): of the blend's
            criteria, or of one an allocation strategy reads (``cmi`` for the CMI cut-offs; the
            recipe checks that its strategy does, :meth:`check_read_by`).
    """

    weights: dict[str, float]
    normalizer: str = "rank"
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.weights:
            raise ConfigError("a blend needs at least one criterion, e.g. {blend: {l1: 0.5, fpgm: 0.5}}")
        for name, w in self.weights.items():
            CRITERIA.get(name)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or not math.isfinite(w):
                raise ConfigError(f"blend weight of {name!r} must be a number >= 0, got {w!r}")
        if sum(self.weights.values()) <= 0:
            raise ConfigError(f"blend weights must not all be 0, got {self.weights}")
        NORMALIZERS.get(self.normalizer)
        for name, p in self.params.items():
            if name not in self.weights and name not in read_by_strategies():
                raise ConfigError(f"parameters given for {name!r}, which is not in the blend {sorted(self.weights)} "
                                  "and no allocation strategy reads; remove them or add it to the blend")
            CRITERIA.get(name).resolve(p)

    @property
    def criteria(self) -> list[str]:
        return sorted(self.weights)

    def check_read_by(self, strategy: str) -> None:
        """Raise unless every criterion given parameters is in the blend or read by ``strategy``."""
        unread = sorted(set(self.params) - set(self.weights) - set(strategy_criteria(strategy)))
        if unread:
            raise ConfigError(f"parameters given for {unread[0]!r}, which is not in the blend {sorted(self.weights)} "
                              f"and not read by allocation strategy {strategy!r}; remove them, add {unread[0]!r} to "
                              "the blend, or use a strategy that reads it (e.g. cmi_knee)")

    @classmethod
    def parse(cls, value: Any) -> CriterionSpec:
        """From a recipe value: ``"l1"``, or ``{name: l1, params: {...}}``, or
        ``{blend: {capacity: 0.7, independence: 0.3}, normalizer: rank, params: {capacity: {...}}}``."""
        if isinstance(value, CriterionSpec):
            return value
        if isinstance(value, str):
            return cls({value: 1.0}, normalizer="none")
        if not isinstance(value, Mapping):
            raise ConfigError(f"criterion must be a name or a mapping, got {value!r}")
        unknown = set(value) - {"name", "blend", "normalizer", "params"}
        if unknown:
            raise unknown_key(sorted(unknown, key=str)[0], "criterion", ("name", "blend", "normalizer", "params"))
        if ("name" in value) == ("blend" in value):
            raise ConfigError("criterion needs exactly one of 'name' or 'blend'")
        params = dict(value.get("params") or {})
        if "name" in value:
            name = value["name"]
            params = {name: params} if params else {}
            return cls({name: 1.0}, normalizer=value.get("normalizer", "none"), params=params)
        blend = value["blend"]
        if not isinstance(blend, Mapping):
            raise ConfigError(f"blend must map criterion names to weights, got {blend!r}")
        return cls({k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                    for k, v in blend.items()}, normalizer=value.get("normalizer", "rank"), params=params)

    def to_value(self) -> Any:
        """The recipe form (inverse of :meth:`parse`)."""
        if len(self.weights) == 1 and self.normalizer == "none" and set(self.params) <= set(self.weights):
            (name,) = self.weights
            return {"name": name, "params": self.params[name]} if self.params.get(name) else name
        out: dict[str, Any] = {"blend": dict(self.weights), "normalizer": self.normalizer}
        if self.params:
            out["params"] = {k: dict(v) for k, v in self.params.items()}
        return out

    def resolved_params(self, name: str) -> dict[str, Any]:
        return CRITERIA.get(name).resolve(self.params.get(name))
