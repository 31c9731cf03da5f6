"""The recipe: one YAML file that says how to prune one model, validated strictly.

Unknown keys are errors that name the key and list the allowed ones. An exported recipe also carries
the pruning plan the search measured, so replaying it rebuilds exactly that network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from prunetune.exceptions import ConfigError
from prunetune.pruning.allocation import check_ratio
from prunetune.pruning.blend import CriterionSpec
from prunetune.pruning.finetune import FinetuneConfig


def _strict(section: str, value: Any, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"recipe section {section!r} must be a mapping, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in recipe section {section!r}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(value))
    if missing:
        raise ConfigError(f"recipe section {section!r} needs the key {missing[0]!r}")
    return dict(value)


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """Parse a YAML file, or raise a one-line :class:`ConfigError` naming ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}".splitlines()[0]) from None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_classes: int = 10
    in_channels: int = 3
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any) -> ModelSpec:
        if isinstance(value, str):
            value = {"name": value}
        d = _strict("model", value, {f.name for f in fields(cls)}, {"name"})
        return cls(**d)


@dataclass(frozen=True)
class DataSpec:
    """``name`` plus ``root``/``download`` for file-based data; other keys are the dataset's parameters."""

    name: str
    root: str | None = None
    download: bool = False
    batch_size: int = 128
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any) -> DataSpec:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping) or "name" not in value:
            raise ConfigError(f"recipe section 'data' needs the key 'name', got {value!r}")
        own = {"name", "root", "download", "batch_size"}
        params = {k: v for k, v in value.items() if k not in own}
        params.update(params.pop("params", None) or {})
        return cls(**{k: v for k, v in value.items() if k in own}, params=params)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, **self.params}
        if self.root is not None:
            out["root"] = self.root
        if self.download:
            out["download"] = True
        if self.batch_size != 128:
            out["batch_size"] = self.batch_size
        return out


@dataclass(frozen=True)
class CalibrationSpec:
    size: int = 512
    batch_size: int = 128
    seed: int = 0
    activation: str = "relu"
    split: str = "train"
    cache_dir: str | None = None
    use_cache: bool = True

    @classmethod
    def parse(cls, value: Any) -> CalibrationSpec:
        d = _strict("calibration", value, {f.name for f in fields(cls)})
        spec = cls(**d)
        if not isinstance(spec.size, int) or spec.size < 1:
            raise ConfigError(f"calibration.size must be an integer >= 1, got {spec.size!r}")
        if spec.split not in ("train", "val"):
            raise ConfigError(f"calibration.split must be 'train' or 'val', got {spec.split!r}")
        return spec


ALLOCATION_KEYS = {"strategy", "ratio", "ratios", "default", "macs_budget", "flops_budget", "min_keep",
                   "round_to", "rho", "epsilon", "scale"}


@dataclass(frozen=True)
class AllocationSpec:
    """How many channels each group keeps.

    ``{ratio: p}`` prunes every group at p; ``{ratios: {group: p}, default: q}`` per group;
    ``{macs_budget: f}`` scales the ratios (uniform unless ``ratios`` are given) to the closest plan
    not above ``f`` of the dense MACs. ``strategy`` picks an information cut-off instead of ratios.
    """

    strategy: str = "ratios"
    ratio: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    default: float | None = None
    macs_budget: float | None = None
    min_keep: int = 1
    round_to: int | None = None
    params: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any) -> AllocationSpec:
        d = _strict("allocation", value, ALLOCATION_KEYS)
        if "flops_budget" in d:  # the papers' "FLOPs" are MACs
            if "macs_budget" in d:
                raise ConfigError("give one of allocation.macs_budget or allocation.flops_budget (a synonym)")
            d["macs_budget"] = d.pop("flops_budget")
        params = {k: d.pop(k) for k in ("rho", "epsilon", "scale") if k in d}
        if "round_to" in d:  # a multiple, or a hardware preset (cpu, gpu)
            from prunetune.pruning.rounding import resolve_round_to

            d["round_to"] = resolve_round_to(d["round_to"], what="allocation.round_to")
        spec = cls(**d, params=params)
        spec.check()
        return spec

    def check(self) -> None:
        if self.ratio is not None:
            check_ratio(self.ratio, "allocation.ratio")
            if self.ratios or self.default is not None:
                raise ConfigError("give allocation.ratio or allocation.ratios (+ default), not both")
        for name, r in self.ratios.items():
            check_ratio(r, f"allocation.ratios[{name!r}]")
        if self.default is not None:
            check_ratio(self.default, "allocation.default")
        if self.macs_budget is not None and (isinstance(self.macs_budget, bool) or not isinstance(self.macs_budget, (int, float)) or not 0 < self.macs_budget <= 1):
            raise ConfigError(f"allocation.macs_budget must be a fraction of dense MACs in (0, 1], got {self.macs_budget!r}")
        from prunetune.pruning.strategies import STRATEGIES

        STRATEGIES.get(self.strategy)
        if self.strategy == "ratios" and self.ratio is None and not self.ratios and self.default is None and self.macs_budget is None:
            raise ConfigError("allocation needs one of: ratio, ratios (+ default), macs_budget, or a strategy")
        if not isinstance(self.min_keep, int) or self.min_keep < 1:
            raise ConfigError(f"allocation.min_keep must be an integer >= 1, got {self.min_keep!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.strategy != "ratios":
            out["strategy"] = self.strategy
        for key in ("ratio", "default", "macs_budget", "round_to"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.ratios:
            out["ratios"] = dict(self.ratios)
        if self.min_keep != 1:
            out["min_keep"] = self.min_keep
        out.update(self.params)
        return out


@dataclass(frozen=True)
class ScheduleSpec:
    """The soft-to-hard schedule: a registered name and its parameters."""

    name: str = "hard"
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any) -> ScheduleSpec:
        if value is None:
            return cls()
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping) or "name" not in value:
            raise ConfigError(f"recipe section 'schedule' must be a name or {{name: ..., <params>}}, got {value!r}")
        return cls(value["name"], {k: v for k, v in value.items() if k != "name"})

    def to_value(self) -> Any:
        return {"name": self.name, **self.params} if self.params else self.name


@dataclass(frozen=True)
class PretrainSpec:
    """Brief dense training, used only when the model has no checkpoint (so examples run anywhere)."""

    epochs: int = 8
    lr: float = 0.1
    weight_decay: float = 5e-4
    batch_size: int = 64

    @classmethod
    def parse(cls, value: Any) -> PretrainSpec:
        return cls(**_strict("pretrain", value, {f.name for f in fields(cls)}))

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                              batch_size=self.batch_size, warmup_epochs=min(1.0, self.epochs / 4))


RECIPE_KEYS = {"model", "data", "calibration", "criterion", "allocation", "schedule", "finetune",
               "pretrain", "plan", "seed", "device"}


@dataclass(frozen=True)
class Recipe:
    model: ModelSpec
    data: DataSpec
    criterion: CriterionSpec
    allocation: AllocationSpec
    calibration: CalibrationSpec = CalibrationSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    finetune: FinetuneConfig = FinetuneConfig()
    pretrain: PretrainSpec = PretrainSpec()
    plan: dict[str, Any] | str | None = None
    seed: int = 0
    device: str = "auto"
    source: str | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Recipe:
        d = _strict("recipe", data, RECIPE_KEYS, {"model", "data"})
        if "criterion" not in d and "plan" not in d:
            raise ConfigError("recipe needs 'criterion' (e.g. criterion: l1) unless it carries a 'plan'")
        if "allocation" not in d and "plan" not in d:
            raise ConfigError("recipe needs 'allocation' (e.g. allocation: {ratio: 0.5}) unless it carries a 'plan'")
        try:
            finetune = FinetuneConfig(**_strict("finetune", d.get("finetune"), {f.name for f in fields(FinetuneConfig)}))
        except TypeError as exc:
            raise ConfigError(f"recipe section 'finetune': {exc}") from None
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        device = d.get("device", "auto")
        if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
        return cls(
            model=ModelSpec.parse(d["model"]), data=DataSpec.parse(d["data"]),
            criterion=CriterionSpec.parse(d.get("criterion", "l1")),
            allocation=AllocationSpec.parse(d.get("allocation", {"ratio": 0.0})),
            calibration=CalibrationSpec.parse(d.get("calibration")),
            schedule=ScheduleSpec.parse(d.get("schedule")), finetune=finetune,
            pretrain=PretrainSpec.parse(d.get("pretrain")), plan=d.get("plan"),
            seed=seed, device=device, source=source,
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Recipe:
        path = Path(path)
        return cls.from_dict(read_yaml(path, "recipe file"), source=str(path.resolve()))

    def to_dict(self) -> dict[str, Any]:
        model = {"name": self.model.name, "num_classes": self.model.num_classes, "in_channels": self.model.in_channels}
        if self.model.checkpoint:
            model["checkpoint"] = self.model.checkpoint
        if self.model.kwargs:
            model["kwargs"] = dict(self.model.kwargs)
        out: dict[str, Any] = {
            "model": model, "data": self.data.to_dict(),
            "calibration": {f.name: getattr(self.calibration, f.name) for f in fields(CalibrationSpec)},
            "criterion": self.criterion.to_value(), "allocation": self.allocation.to_dict(),
            "schedule": self.schedule.to_value(), "finetune": self.finetune.to_dict(),
            "pretrain": {f.name: getattr(self.pretrain, f.name) for f in fields(PretrainSpec)},
            "seed": self.seed, "device": self.device,
        }
        if self.plan is not None:
            out["plan"] = self.plan
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_changes(self, **changes: Any) -> Recipe:
        return replace(self, **changes)

    def resolve_path(self, value: str | None) -> str | None:
        """Paths in a recipe are relative to the recipe file."""
        if value is None or self.source is None or os.path.isabs(value):
            return value
        return str(Path(self.source).parent / value)
