"""PruningPlan: the contract between scoring, search and deployment.

``{group: sorted kept channel indices}`` plus the dense and pruned MACs/params. It is JSON, keyed
by module names, and replaying it on the dense model gives the same network every time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prunetune._atomic import write_text_atomic
from prunetune._paths import input_file_problem
from prunetune.exceptions import InvalidPlanError
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.macs import Cost, analytic_cost

PLAN_FORMAT = 1


@dataclass(frozen=True)
class PruningPlan:
    """Kept channel indices per group, with the costs before and after.

    Attributes:
        kept: group name -> sorted kept indices (dense numbering).
        channels: group name -> dense channel count.
        dense: dense MACs/params; pruned: MACs/params after removal (one input).
        input_shape: the (C, H, W) the costs refer to.
        meta: free-form provenance (model name, criterion, ...), JSON-serialisable.
        order: group name -> its pruned indices, least important first (the order in which a
            gradual schedule prunes them; optional: absent means index order).
    """

    kept: dict[str, tuple[int, ...]]
    channels: dict[str, int]
    dense: Cost
    pruned: Cost
    input_shape: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    order: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def pruned_order(self, name: str) -> list[int]:
        """The pruned channels of ``name``, least important first (index order when not recorded)."""
        if name in self.order:
            return list(self.order[name])
        return sorted(set(range(self.channels[name])) - set(self.kept[name]))

    @property
    def keep_counts(self) -> dict[str, int]:
        return {name: len(idx) for name, idx in self.kept.items()}

    @property
    def macs_ratio(self) -> float:
        return self.pruned.macs / self.dense.macs

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "input_shape": list(self.input_shape),
            "dense": self.dense.as_dict(),
            "pruned": self.pruned.as_dict(),
            "groups": {n: {"channels": self.channels[n], "kept": list(idx),
                           **({"order": list(self.order[n])} if n in self.order else {})}
                       for n, idx in self.kept.items()},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        try:
            if data.get("format") != PLAN_FORMAT:
                raise InvalidPlanError(f"plan format {data.get('format')!r} is not supported (expected {PLAN_FORMAT})")
            groups = data["groups"]
            return cls(
                kept={n: _indices(g["kept"], n, "kept") for n, g in groups.items()},
                channels={n: _indices([g["channels"]], n, "channels", minimum=1)[0] for n, g in groups.items()},
                dense=Cost(**data["dense"]), pruned=Cost(**data["pruned"]),
                input_shape=_indices(data["input_shape"], "input_shape", "", minimum=1, empty=False),
                meta=dict(data.get("meta", {})),
                order={n: _indices(g["order"], n, "order") for n, g in groups.items() if "order" in g},
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise InvalidPlanError(f"malformed pruning plan: missing or bad field {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidPlanError(f"pruning plan is not valid JSON: {exc}") from None

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write the plan as JSON, atomically (a unique temporary file, then a rename; ``overwrite=False``:
        ``FileExistsError`` rather than replace a file that exists)."""
        return write_text_atomic(path, self.to_json(), replace=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        path = Path(path)
        problem = input_file_problem(path)  # a FIFO or a device is never opened (reading one would block)
        if problem == "does not exist":
            raise InvalidPlanError(f"plan file {str(path)!r} does not exist")
        if problem is not None:
            raise InvalidPlanError(f"plan file {str(path)!r} {problem}; give the .plan.json file")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidPlanError(f"plan file {str(path)!r} is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def validate(self, groups: ModelGroups) -> None:
        """Raise :class:`InvalidPlanError` unless the plan fits ``groups`` (input, names, sizes, indices)."""
        if tuple(self.input_shape) != tuple(groups.input_shape):
            raise InvalidPlanError(f"plan was made for inputs of shape {tuple(self.input_shape)}, this model's are "
                                   f"{tuple(groups.input_shape)}; use a plan made for this model and data")
        for name, idx in self.kept.items():
            if name not in groups:
                raise InvalidPlanError(f"plan prunes group {name!r}, which this model does not have")
            n = groups[name].channels
            if n != self.channels[name]:
                raise InvalidPlanError(f"plan expects {self.channels[name]} channels in {name!r}, the model has {n}")
            if not idx or list(idx) != sorted(set(idx)) or idx[0] < 0 or idx[-1] >= n:
                raise InvalidPlanError(f"plan keeps invalid indices in {name!r}: need sorted unique 0..{n - 1}")
            if name in self.order and sorted(self.order[name]) != sorted(set(range(n)) - set(idx)):
                raise InvalidPlanError(f"plan's order for {name!r} must list exactly its pruned channels")
        missing = [name for name in groups.names if name not in self.kept]
        if missing:
            raise InvalidPlanError(f"plan has no entry for group {missing[0]!r} of this model ({len(missing)} "
                                   "missing): a plan for another model, or an edited one; make the plan again")


def _indices(values: Any, name: str, what: str, *, minimum: int = 0, empty: bool = True) -> tuple[int, ...]:
    """``values`` as a tuple of integers >= ``minimum`` (no floats, no bools); a ValueError naming the field."""
    field_name = f"{name}.{what}" if what else name
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (list, tuple)) \
            or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values) \
            or (not empty and not values):
        raise ValueError(f"{field_name!r}: expected a list of integers >= {minimum}, got {str(values)[:60]}")
    return tuple(values)


def _ranked(scores: Tensor) -> list[int]:
    """All indices, highest score first; ties go to the lower index."""
    return sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))


def top_k(scores: Tensor, k: int) -> tuple[int, ...]:
    """Indices of the ``k`` highest scores, sorted ascending; ties go to the lower index."""
    return tuple(sorted(_ranked(scores)[:k]))


def make_plan(
    groups: ModelGroups,
    scores: Mapping[str, Tensor],
    keep: Mapping[str, int],
    *,
    meta: Mapping[str, Any] | None = None,
) -> PruningPlan:
    """Keep the ``keep[g]`` best-scored channels of every group; groups absent from ``keep`` stay dense."""
    groups.check_keep(keep)
    kept: dict[str, tuple[int, ...]] = {}
    order: dict[str, tuple[int, ...]] = {}
    for g in groups:
        k = int(keep.get(g.name, g.channels))
        if k == g.channels:
            kept[g.name] = tuple(range(g.channels))
            continue
        if g.name not in scores:
            raise InvalidPlanError(f"no scores for group {g.name!r}, which keeps {k}/{g.channels} channels")
        s = torch.as_tensor(scores[g.name]).detach().flatten().cpu()
        if s.numel() != g.channels:
            raise InvalidPlanError(f"scores for {g.name!r} have {s.numel()} entries, the group has {g.channels}")
        if s.is_floating_point() and not bool(s.isfinite().all()):  # NaN compares false: no ranking at all
            bad = int((~s.isfinite()).sum())
            raise InvalidPlanError(f"scores for {g.name!r} have {bad} non-finite value(s) (NaN or inf) of "
                                   f"{g.channels}; a criterion that gives them cannot rank this group's channels")
        ranked = _ranked(s)  # most important first
        kept[g.name] = tuple(sorted(ranked[:k]))
        order[g.name] = tuple(reversed(ranked[k:]))
    counts = {n: len(i) for n, i in kept.items()}
    return PruningPlan(
        kept=kept, channels={g.name: g.channels for g in groups},
        dense=analytic_cost(groups), pruned=analytic_cost(groups, counts),
        input_shape=groups.input_shape, meta=dict(meta or {}), order=order,
    )
