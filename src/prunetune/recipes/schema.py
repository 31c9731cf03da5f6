"""The recipe: one YAML file that says how to prune one model, validated strictly.

Unknown keys are errors that name the key and list the allowed ones. An exported recipe also carries
the pruning plan the search measured, so replaying it rebuilds exactly that network.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from prunetune._checks import boolean, integer, mapping, text
from prunetune._numbers import is_finite_number
from prunetune._text import short
from prunetune._yaml import load_yaml_file
from prunetune.data import DATASETS
from prunetune.exceptions import ConfigError, UntrustedCodeError
from prunetune.models import check_model_name
from prunetune.pruning.allocation import DEFAULT_MAX_RATIO, KeepRule, MacsBudget, check_budget, check_ratio
from prunetune.pruning.finetune import FinetuneConfig
from prunetune.pruning.points import check_point
from prunetune.recipes.criterion import CriterionSpec


def _strict(section: str, value: Any, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"recipe section {short(section)} must be a mapping, got {short(value)}")
    unknown = sorted(set(value) - allowed, key=str)
    if unknown:
        raise ConfigError(f"unknown key {short(unknown[0])} in recipe section {short(section)}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(value))
    if missing:
        raise ConfigError(f"recipe section {short(section)} needs the key {short(missing[0])}")
    return dict(value)


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """Parse a YAML file, or raise a one-line :class:`ConfigError` naming ``what`` and the path.

    See :func:`prunetune._yaml.load_yaml_file`: size cap, UTF-8, no duplicate keys, bounded aliases.
    """
    return load_yaml_file(path, what)


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
        text(d["name"], "model.name")
        check_model_name(d["name"])  # an unknown registered name fails here, before the data is loaded
        for key in ("num_classes", "in_channels"):
            if key in d:
                integer(d[key], f"model.{key}", minimum=1)
        text(d.get("checkpoint"), "model.checkpoint", optional=True)
        d["kwargs"] = mapping(d.get("kwargs"), "model.kwargs")
        return cls(**d)


@dataclass(frozen=True)
class DataSpec:
    """``name`` plus ``root``/``download`` for file-based data; other keys are the dataset's parameters.

    ``split_seed`` (default 0) fixes every random choice of the data itself (hold-out splits,
    synthetic samples); the recipe's ``seed`` only drives training, so recipes with different seeds
    see the same train/val/test images.
    """

    name: str
    root: str | None = None
    download: bool = False
    batch_size: int = 128
    split_seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any) -> DataSpec:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping) or "name" not in value:
            raise ConfigError(f"recipe section 'data' needs the key 'name', got {short(value)}")
        own = {"name", "root", "download", "batch_size", "split_seed"}
        params = {k: v for k, v in value.items() if k not in own}
        params.update(mapping(params.pop("params", None), "data.params"))
        text(value["name"], "data.name")
        DATASETS.get(value["name"]).check_params(params)  # a bad name or parameter fails here, before any work
        text(value.get("root"), "data.root", optional=True)
        boolean(value.get("download", False), "data.download")
        integer(value.get("batch_size", 128), "data.batch_size", minimum=1)
        integer(value.get("split_seed", 0), "data.split_seed")
        return cls(**{k: v for k, v in value.items() if k in own}, params=params)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, **self.params}
        if self.root is not None:
            out["root"] = self.root
        if self.download:
            out["download"] = True
        if self.batch_size != 128:
            out["batch_size"] = self.batch_size
        if self.split_seed:
            out["split_seed"] = self.split_seed
        return out


@dataclass(frozen=True)
class CalibrationSpec:
    """The calibration images and where activation criteria read them.

    ``point``: ``block_output`` (default; the official CHIP/HRankPlus point: a residual block's
    output after the addition and ReLU, for the groups of a residual stream) or ``bn`` (every BN
    output, before the addition); see :mod:`prunetune.pruning.points`. Taylor always reads BN.
    """

    size: int = 512
    batch_size: int = 128
    seed: int = 0
    activation: str = "relu"
    point: str = "block_output"
    split: str = "train"
    cache_dir: str | None = None
    use_cache: bool = True

    @classmethod
    def parse(cls, value: Any) -> CalibrationSpec:
        d = _strict("calibration", value, {f.name for f in fields(cls)})
        spec = cls(**d)
        integer(spec.size, "calibration.size", minimum=1)
        integer(spec.batch_size, "calibration.batch_size", minimum=1)
        integer(spec.seed, "calibration.seed")
        text(spec.activation, "calibration.activation")
        text(spec.cache_dir, "calibration.cache_dir", optional=True)
        boolean(spec.use_cache, "calibration.use_cache")
        if spec.split not in ("train", "val"):
            raise ConfigError(f"calibration.split must be 'train' or 'val', got {short(spec.split)}")
        check_point(spec.point)
        return spec


ALLOCATION_KEYS = {"strategy", "ratio", "ratios", "default", "macs_budget", "flops_budget", "min_keep",
                   "round_to", "max_ratio", "rho", "epsilon", "scale", "normalizer"}
STRATEGY_PARAMS = ("rho", "epsilon", "scale", "normalizer")


@dataclass(frozen=True)
class AllocationSpec:
    """How many channels each group keeps.

    ``{ratio: p}`` prunes every group at p; ``{ratios: {group: p}, default: q}`` per group;
    ``{macs_budget: f}`` scales keep fractions in the shape the ratios give (uniform unless
    ``ratios`` are given) to the closest plan not above ``f`` of the dense MACs. ``strategy`` picks
    ``global`` (one threshold over normalised scores) or an information cut-off instead of ratios.
    No allocation prunes more than ``max_ratio`` of any group.
    """

    strategy: str = "ratios"
    ratio: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    default: float | None = None
    macs_budget: float | None = None
    min_keep: int = 1
    round_to: int | None = None
    max_ratio: float = DEFAULT_MAX_RATIO
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def rule(self) -> KeepRule:
        """The keep rule every strategy of this allocation follows."""
        return KeepRule(self.min_keep, self.round_to, self.max_ratio)

    @property
    def budget(self) -> MacsBudget | None:
        """The MACs budget as the validated value the pruning core takes (None: no budget)."""
        return None if self.macs_budget is None else MacsBudget(self.macs_budget, "allocation.macs_budget")

    def dense_groups(self, names: Iterable[str]) -> set[str]:
        """Of ``names``, the groups a MACs budget leaves whole: a relative ratio of exactly 0 (named, or
        by ``default`` next to named ratios, as the ``ratios`` strategy reads them)."""
        if self.strategy != "ratios" or self.macs_budget is None or not self.ratios:
            return set()
        fallback = self.default if self.default is not None else 0.5
        return {name for name in names if self.ratios.get(name, fallback) == 0}

    @classmethod
    def parse(cls, value: Any) -> AllocationSpec:
        d = _strict("allocation", value, ALLOCATION_KEYS)
        if "flops_budget" in d:  # the papers' "FLOPs" are MACs
            if "macs_budget" in d:
                raise ConfigError("give one of allocation.macs_budget or allocation.flops_budget (a synonym)")
            d["macs_budget"] = d.pop("flops_budget")
        params = {k: d.pop(k) for k in STRATEGY_PARAMS if k in d}
        if "round_to" in d:  # a multiple, or a hardware preset (cpu, gpu)
            from prunetune.pruning.rounding import resolve_round_to

            d["round_to"] = resolve_round_to(d["round_to"], what="allocation.round_to")
        spec = cls(**d, params=params)
        spec.check()
        return spec

    def check(self) -> None:
        if isinstance(self.max_ratio, bool) or not isinstance(self.max_ratio, (int, float)) or not 0 < self.max_ratio <= 1:
            raise ConfigError(f"allocation.max_ratio must be a fraction in (0, 1], got {self.max_ratio!r}")
        if not isinstance(self.ratios, Mapping):
            raise ConfigError(f"allocation.ratios must map group names to prune ratios, got {short(self.ratios)}")
        if self.ratio is not None:
            self._check_ratio(self.ratio, "allocation.ratio")
            if self.ratios or self.default is not None:
                raise ConfigError("give allocation.ratio or allocation.ratios (+ default), not both")
            if self.macs_budget is not None:
                raise ConfigError(f"give allocation.ratio ({short(self.ratio)}) or allocation.macs_budget "
                                  f"({short(self.macs_budget)}), not both: with a budget the ratios are scaled to "
                                  "reach it (use ratios: {group: r} for relative ratios)")
        for name, r in self.ratios.items():
            self._check_ratio(r, f"allocation.ratios[{short(name)}]")
        if self.default is not None:
            self._check_ratio(self.default, "allocation.default")
        if self.macs_budget is not None:
            check_budget(self.macs_budget, "allocation.macs_budget")
        from prunetune.pruning.strategies import STRATEGIES

        allowed = STRATEGIES.get(self.strategy).params
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ConfigError(f"allocation strategy {self.strategy!r} takes no parameter {unknown[0]!r}; "
                              f"its parameters: {', '.join(allowed) or 'none'}")
        if "normalizer" in self.params:
            from prunetune.pruning.normalize import NORMALIZERS

            NORMALIZERS.get(self.params["normalizer"])
        if self.strategy == "ratios" and self.ratio is None and not self.ratios and self.default is None and self.macs_budget is None:
            raise ConfigError("allocation needs one of: ratio, ratios (+ default), macs_budget, or a strategy")
        if self.strategy == "global" and self.ratio is None and self.macs_budget is None:
            raise ConfigError("allocation strategy 'global' needs macs_budget (or one global ratio)")
        integer(self.min_keep, "allocation.min_keep", minimum=1)
        if self.round_to is not None:
            integer(self.round_to, "allocation.round_to", minimum=1)

    def _check_ratio(self, ratio: object, what: str) -> None:
        check_ratio(ratio, what)
        if self.macs_budget is None and ratio > self.max_ratio:  # with a budget, ratios are only a shape
            raise ConfigError(f"{what} = {ratio!r} prunes more than allocation.max_ratio = {self.max_ratio:g} "
                              "of a group; lower it or raise allocation.max_ratio")

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
        if self.max_ratio != DEFAULT_MAX_RATIO:
            out["max_ratio"] = self.max_ratio
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
            raise ConfigError(f"recipe section 'schedule' must be a name or {{name: ..., <params>}}, got {short(value)}")
        from prunetune.pruning.schedules import SCHEDULES

        params = {k: v for k, v in value.items() if k != "name"}
        SCHEDULES.get(text(value["name"], "schedule.name")).validate(params)
        return cls(value["name"], params)

    def to_value(self) -> Any:
        return {"name": self.name, **self.params} if self.params else self.name


@dataclass(frozen=True)
class PretrainSpec:
    """Brief dense training, used only when the model has no checkpoint (so examples run anywhere).

    It has its own ``seed``: recipes that differ only in their training ``seed`` prune the same
    dense model.
    """

    epochs: int = 8
    lr: float = 0.1
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0

    @classmethod
    def parse(cls, value: Any) -> PretrainSpec:
        spec = cls(**_strict("pretrain", value, {f.name for f in fields(cls)}))
        integer(spec.epochs, "pretrain.epochs", minimum=0)
        integer(spec.batch_size, "pretrain.batch_size", minimum=1)
        for key in ("lr", "weight_decay"):
            number = getattr(spec, key)
            if not is_finite_number(number) or number < 0 or (key == "lr" and number == 0):
                want = "a number > 0" if key == "lr" else "a number >= 0"
                raise ConfigError(f"pretrain.{key} must be {want}, got {short(number)}")
        return spec

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                              batch_size=self.batch_size, warmup_epochs=min(1.0, self.epochs / 4))


RECIPE_KEYS = {"model", "data", "calibration", "criterion", "allocation", "schedule", "finetune",
               "pretrain", "plan", "seed", "device", "threads"}


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
    threads: int | None = None  # CPU threads of the fine-tune and evaluation (a search trial's cpus_per_trial)
    source: str | None = field(default=None, compare=False)
    allow_code: bool = field(default=False, compare=False)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None, allow_code: bool = False) -> Recipe:
        """Validate a recipe mapping.

        Args:
            source: the recipe file (relative paths in the recipe are relative to it).
            allow_code: let a ``package.module:function`` model name import and run that code. Never
                read from the recipe itself: a shared recipe must not grant itself that right.
        """
        if isinstance(data, Mapping) and "allow_code" in data:
            raise UntrustedCodeError("allow_code is not read from a recipe (a shared recipe must not grant itself "
                                     "the right to run code); pass --allow-code, or set allow_code: true in your "
                                     "own search config")
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
            raise ConfigError(f"seed must be an integer, got {short(seed)}")
        threads = d.get("threads")
        if threads is not None:
            integer(threads, "threads", minimum=1)
        device = d.get("device", "auto")
        if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {short(device)}")
        return cls(
            model=ModelSpec.parse(d["model"]), data=DataSpec.parse(d["data"]),
            criterion=CriterionSpec.parse(d.get("criterion", "l1")),
            allocation=AllocationSpec.parse(d.get("allocation", {"ratio": 0.0})),
            calibration=CalibrationSpec.parse(d.get("calibration")),
            schedule=ScheduleSpec.parse(d.get("schedule")), finetune=finetune,
            pretrain=PretrainSpec.parse(d.get("pretrain")), plan=d.get("plan"),
            seed=seed, device=device, threads=threads, source=source, allow_code=bool(allow_code),
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, *, allow_code: bool = False) -> Recipe:
        """Read and validate a recipe file (``allow_code``: see :meth:`from_dict`)."""
        path = Path(path)
        data = read_yaml(path, "recipe file")
        if data is None:
            raise ConfigError(f"recipe file {str(path)!r} is empty; a recipe needs at least model and data "
                              "(and criterion + allocation, or a plan)")
        return cls.from_dict(data, source=str(path.resolve()), allow_code=allow_code)

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
        if self.threads is not None:
            out["threads"] = self.threads
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
