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
from torch import nn

from prunetune._checks import boolean, integer, mapping, section, text, torch_seed
from prunetune._numbers import is_finite_number
from prunetune._text import short
from prunetune._yaml import load_yaml_file
from prunetune.data import DATASETS
from prunetune.exceptions import ConfigError, UntrustedCodeError
from prunetune.models import check_model_name
from prunetune.pruning.allocation import KeepRule
from prunetune.pruning.finetune import FinetuneConfig
from prunetune.pruning.points import check_point
from prunetune.recipes.allocation import AllocationSpec
from prunetune.recipes.criterion import CriterionSpec


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
        if isinstance(value, nn.Module):  # a recipe is data to share and replay: it names its model
            raise ConfigError(f"recipe section 'model' takes a name, not a model object ({type(value).__name__}); "
                              "name your model's function as 'package.module:function' (with allow_code=True), or "
                              "prune the object itself with prunetune.pruning (find_groups, make_plan, apply_plan)")
        d = section("model", value, {f.name for f in fields(cls)}, {"name"})
        text(d["name"], "model.name")
        check_model_name(d["name"])  # an unknown registered name fails here, before the data is loaded
        for key in ("num_classes", "in_channels"):
            if key in d:
                integer(d[key], f"model.{key}", minimum=1)
        text(d.get("checkpoint"), "model.checkpoint", optional=True)
        d["kwargs"] = mapping(d.get("kwargs"), "model.kwargs")
        reserved = sorted(MODEL_ARGUMENTS & set(d["kwargs"]))
        if reserved:  # create_model's own arguments: "got multiple values", a traceback, after the data loaded
            where = "a key of the model section" if reserved[0] != "allow_code" else "--allow-code (never a recipe)"
            raise ConfigError(f"model.kwargs must not set {reserved[0]!r}: it is {where}; move it there")
        return cls(**d)


# create_model's own arguments, which model.kwargs must not repeat
MODEL_ARGUMENTS = frozenset({"name", "num_classes", "in_channels", "allow_code"})


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
        nested = mapping(params.pop("params", None), "data.params")
        both = sorted(set(nested) & set(params))
        if both:  # one of the two values won without a word
            raise ConfigError(f"data.{both[0]} is given twice, in the data section and in data.params; keep one")
        params.update(nested)
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
        d = section("calibration", value, {f.name for f in fields(cls)})
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
        spec = cls(**section("pretrain", value, {f.name for f in fields(cls)}))
        integer(spec.epochs, "pretrain.epochs", minimum=0)
        integer(spec.batch_size, "pretrain.batch_size", minimum=1)
        torch_seed(spec.seed, "pretrain.seed")
        for key in ("lr", "weight_decay"):
            number = getattr(spec, key)
            if not is_finite_number(number) or number < 0 or (key == "lr" and number == 0):
                want = "a number > 0" if key == "lr" else "a number >= 0"
                raise ConfigError(f"pretrain.{key} must be {want}, got {short(number)}")
        return spec

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                              batch_size=self.batch_size, warmup_epochs=min(1.0, self.epochs / 4))


def _allocation(d: Mapping[str, Any], base: bool) -> AllocationSpec | None:
    """The recipe's allocation; None in a search's base recipe without one; none at all beside a plan."""
    if base and "allocation" not in d:
        return None
    return AllocationSpec.parse(d.get("allocation", {"ratio": 0.0}), sized=not base)


RECIPE_KEYS = {"model", "data", "calibration", "criterion", "allocation", "schedule", "finetune",
               "pretrain", "plan", "seed", "device", "threads"}


@dataclass(frozen=True)
class Recipe:
    model: ModelSpec
    data: DataSpec
    criterion: CriterionSpec
    allocation: AllocationSpec | None  # None only in a search's base recipe (``base=True``): trials size themselves
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
    def from_dict(cls, data: Any, *, source: str | None = None, allow_code: bool = False,
                  base: bool = False) -> Recipe:
        """Validate a recipe mapping.

        Args:
            source: the recipe file (relative paths in the recipe are relative to it).
            allow_code: let a ``package.module:function`` model name import and run that code. Never
                read from the recipe itself: a shared recipe must not grant itself that right.
            base: a search's base recipe: no ``plan`` (every trial builds its own), and ``allocation``
                may be left out (None): each trial sizes its plan under the search's MACs budget;
                when given, it may hold only the keep rule (``min_keep``, ``round_to``,
                ``max_ratio``), which becomes the search's.
        """
        boolean(allow_code, "allow_code")
        if isinstance(data, Mapping) and "allow_code" in data:
            raise UntrustedCodeError("allow_code is not read from a recipe (a shared recipe must not grant itself "
                                     "the right to run code); pass --allow-code, or set allow_code: true in your "
                                     "own search config")
        if isinstance(data, Mapping) and "plugins" in data:  # a recipe never makes prunetune import code
            raise ConfigError("plugins are not read from a recipe (a shared recipe must not import code); pass "
                              "--plugin MODULE --allow-code, or set plugins: in your own search config")
        d = section("recipe", data, RECIPE_KEYS, {"model", "data"})
        if base and "plan" in d:
            raise ConfigError("a search's base recipe must not carry a 'plan' (every trial builds its own); remove it")
        if "criterion" not in d and "plan" not in d:
            raise ConfigError("recipe needs 'criterion' (e.g. criterion: l1) unless it carries a 'plan'")
        if "allocation" not in d and "plan" not in d and not base:
            raise ConfigError("recipe needs 'allocation' (e.g. allocation: {ratio: 0.5}) unless it carries a 'plan'")
        try:
            finetune = FinetuneConfig(**section("finetune", d.get("finetune"), {f.name for f in fields(FinetuneConfig)}))
        except TypeError as exc:
            raise ConfigError(f"recipe section 'finetune': {exc}") from None
        training_seed = torch_seed(d.get("seed", 0), "seed")
        threads = d.get("threads")
        if threads is not None:
            integer(threads, "threads", minimum=1)
        device = d.get("device", "auto")
        if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {short(device)}")
        if isinstance(d.get("plan"), str) and not d["plan"].strip():  # was "plan file '<recipe folder>' is a directory"
            raise ConfigError("plan is empty; give the path of a plan JSON (e.g. pruned.plan.json), or leave plan out")
        if d.get("plan") is not None and not isinstance(d["plan"], (str, Mapping)):
            raise ConfigError(f"plan must be the path of a plan JSON (e.g. pruned.plan.json) or the plan itself "
                              f"(a mapping), got {short(d['plan'])}")
        criterion, allocation = CriterionSpec.parse(d.get("criterion", "l1")), _allocation(d, base)
        if allocation is not None and "allocation" in d and not base:  # parameters only a strategy reads (a
            # search's base recipe: every trial picks its own strategy, and the search checks its space)
            criterion.check_read_by(allocation.strategy)
        return cls(
            model=ModelSpec.parse(d["model"]), data=DataSpec.parse(d["data"]),
            criterion=criterion,
            allocation=allocation,
            calibration=CalibrationSpec.parse(d.get("calibration")),
            schedule=ScheduleSpec.parse(d.get("schedule")), finetune=finetune,
            pretrain=PretrainSpec.parse(d.get("pretrain")), plan=d.get("plan"),
            seed=training_seed, device=device, threads=threads, source=source, allow_code=allow_code,
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
            "criterion": self.criterion.to_value(),
        }
        if self.allocation is not None:  # None: a search's base recipe
            out["allocation"] = self.allocation.to_dict()
        out.update({
            "schedule": self.schedule.to_value(), "finetune": self.finetune.to_dict(),
            "pretrain": {f.name: getattr(self.pretrain, f.name) for f in fields(PretrainSpec)},
            "seed": self.seed, "device": self.device,
        })
        if self.threads is not None:
            out["threads"] = self.threads
        if self.plan is not None:
            out["plan"] = self.plan
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def rule(self) -> KeepRule:
        """The keep rule: its allocation's, or the default one where a search's base recipe has none."""
        return (self.allocation or AllocationSpec()).rule

    def sized(self) -> AllocationSpec:
        """The allocation a plan is built with; a :class:`ConfigError` for a search's base recipe (none,
        or only a keep rule)."""
        if self.allocation is None:
            raise ConfigError("this recipe has no 'allocation' (a search's base recipe: each trial sizes its own "
                              "plan); add allocation (e.g. allocation: {macs_budget: 0.5}) to run it alone")
        self.allocation.check_sized()
        return self.allocation

    def with_changes(self, **changes: Any) -> Recipe:
        return replace(self, **changes)

    def resolve_path(self, value: str | None) -> str | None:
        """Paths in a recipe are relative to the recipe file."""
        if value is None or self.source is None or os.path.isabs(value):
            return value
        return str(Path(self.source).parent / value)
