"""Space components and the registered ratio presets (``uniform``, ``per_stage``, ``per_group``).

Every component is a small frozen dataclass (picklable, cheap). The keys they write into the trial
config are the names below; :func:`prunetune.spaces.translate.trial_recipe` reads them back.

Ratios are *relative* prune ratios: the shape of the allocation. The trial's MACs target
(``target_macs``) sets its level: the budget projection scales every group's keep fraction
(1 − ratio) by one factor until the plan fits the target, then gives back channels that still fit
(:func:`prunetune.pruning.allocation.keep_for_budget`). A sampled ratio below
:data:`RATIO_FLOOR` is raised to it, so that every group can be thinned and every target down to the
smallest reachable fraction stays feasible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prunetune._registry import Registry
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.schedules import SCHEDULES
from prunetune.spaces.base import Component, Config, TrialLike, check_name

TARGET = "target_macs"
RATIOS = "ratios"
RATIO_PREFIX = "ratio."
WEIGHT_PREFIX = "weight."
NORMALIZER = "normalizer"
SCHEDULE = "schedule"
ALLOCATION = "allocation"
LR = "finetune.lr"
RATIO_FLOOR = 0.01


def stages(groups: ModelGroups) -> dict[str, tuple[str, ...]]:
    """Groups sharing one output resolution, ``stage1``, ``stage2``, ... in network order.

    A group's resolution is the output pixel count of its first out-layer (1 for linear layers, 0 for
    a layer the counted forward never runs, such as an auxiliary head):
    the three stages of a CIFAR ResNet, the five pooling stages of a VGG.
    """
    geometry = {layer.name: layer for layer in groups.layers}
    by_pixels: dict[int, list[str]] = {}
    for group in groups:
        pixels = geometry[group.out_layers[0]].pixels if group.out_layers[0] in geometry else 1
        by_pixels.setdefault(pixels, []).append(group.name)
    return {f"stage{i}": tuple(names) for i, names in enumerate(by_pixels.values(), start=1)}


def stage_of(groups: ModelGroups) -> dict[str, str]:
    """Group name -> its stage name (see :func:`stages`)."""
    return {g: stage for stage, names in stages(groups).items() for g in names}


def _ratios_apply(config: Mapping[str, Any]) -> bool:
    return config.get(ALLOCATION, "ratios") == "ratios"


@dataclass(frozen=True)
class TargetFraction:
    """The trial's MACs target, a fraction of dense MACs in ``[low, high]`` (high = the budget)."""

    low: float
    high: float

    def __call__(self, trial: TrialLike, config: Mapping[str, Any]) -> Config:
        return {TARGET: trial.suggest_float(TARGET, self.low, self.high)}


@dataclass(frozen=True)
class Choice:
    """A categorical parameter; a single choice is a constant (not suggested)."""

    name: str
    choices: tuple[Any, ...]

    def __call__(self, trial: TrialLike, config: Mapping[str, Any]) -> Config:
        if len(self.choices) == 1:
            return {self.name: self.choices[0]}
        return {self.name: trial.suggest_categorical(check_name(self.name), list(self.choices))}


SCHEDULE_PARAM_PREFIX = "schedule."


@dataclass(frozen=True)
class ScheduleParams:
    """The chosen schedule's own parameters, sampled only when that schedule is picked (conditional).

    What is sampled, and how, is the schedule's own declaration (``Schedule.space`` in
    :mod:`prunetune.pruning.schedules`): e.g. ``ghfp`` samples ramp, base and alpha, ``hard`` nothing.
    Names are ``schedule.<name>.<param>`` so they do not collide across schedules' conditional branches.
    """

    def __call__(self, trial: TrialLike, config: Mapping[str, Any]) -> Config:
        name = config.get(SCHEDULE, "hard")
        p = SCHEDULE_PARAM_PREFIX + name + "."
        return {p + key: searched.suggest(trial, p + key) for key, searched in SCHEDULES.get(name).space.items()}


def schedule_params(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The sampled parameters of schedule ``name`` in a trial config (see :class:`ScheduleParams`)."""
    prefix = SCHEDULE_PARAM_PREFIX + name + "."
    return {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class LogUniform:
    """A positive float sampled log-uniformly in ``[low, high]`` (e.g. the fine-tune learning rate)."""

    name: str
    low: float
    high: float

    def __call__(self, trial: TrialLike, config: Mapping[str, Any]) -> Config:
        return {self.name: trial.suggest_float(check_name(self.name), self.low, self.high, log=True)}


@dataclass(frozen=True)
class BlendWeights:
    """``weight.<criterion>`` in ``[low, high]`` per criterion; one criterion gets the constant 1."""

    criteria: tuple[str, ...]
    low: float = 0.0
    high: float = 1.0

    def __call__(self, trial: TrialLike, config: Mapping[str, Any]) -> Config:
        if len(self.criteria) == 1:
            return {WEIGHT_PREFIX + self.criteria[0]: 1.0}
        return {WEIGHT_PREFIX + c: trial.suggest_float(check_name(WEIGHT_PREFIX + c), self.low, self.high)
                for c in self.criteria}


@dataclass(frozen=True)
class UniformRatios:
    """One relative ratio for all groups: the MACs target alone sets the plan (no parameter)."""

    def __call__(self, trial: TrialLike, config: Mapping[str, Any]) -> Config:
        return {RATIOS: "uniform"} if _ratios_apply(config) else {}


@dataclass(frozen=True)
class NamedRatios:
    """``ratio.<name>`` in ``[low, high]`` for each name (stages or groups), preset ``preset``."""

    preset: str
    names: tuple[str, ...]
    low: float
    high: float

    def __call__(self, trial: TrialLike, config: Mapping[str, Any]) -> Config:
        if not _ratios_apply(config):
            return {}
        out: Config = {RATIOS: self.preset}
        for name in self.names:
            key = check_name(RATIO_PREFIX + name)
            out[key] = trial.suggest_float(key, self.low, self.high)
        return out


@dataclass(frozen=True)
class RatioPreset:
    """A registered ratio preset: which sampled name (``ratio.<name>``) each group reads.

    ``owners(groups)`` maps every group to the name whose ratio it takes; ``None`` is the uniform
    preset (no parameter). The entry builds its space component (calling it) and decodes a trial
    config (:meth:`keys`, used by :func:`prunetune.spaces.translate.relative_ratios`), so adding a
    preset is one registration here.
    """

    name: str
    owners: Callable[[ModelGroups], Mapping[str, str]] | None = None
    summary: str = ""

    def __call__(self, groups: ModelGroups, low: float, high: float) -> Component:
        if self.owners is None:
            return UniformRatios()
        return NamedRatios(self.name, tuple(dict.fromkeys(self.keys(groups, prefix="").values())), low, high)

    def keys(self, groups: ModelGroups, prefix: str = RATIO_PREFIX) -> dict[str, str]:
        """Group name -> the trial config key of its ratio, in network order (empty: uniform)."""
        if self.owners is None:
            return {}
        owner = self.owners(groups)
        return {g.name: prefix + owner[g.name] for g in groups}


def each_group(groups: ModelGroups) -> dict[str, str]:
    """Every group its own ratio (the ``per_group`` preset)."""
    return {g: g for g in groups.names}


RATIO_SPACES: Registry[RatioPreset] = Registry("ratio space", pluggable=True)
RATIO_SPACES.register("uniform", RatioPreset(
    "uniform", None, "Every group pruned at the same ratio, scaled to the trial's MACs target."))
RATIO_SPACES.register("per_stage", RatioPreset(
    "per_stage", stage_of, "One relative ratio per stage (groups sharing an output resolution): ``ratio.stage<i>``."))
RATIO_SPACES.register("per_group", RatioPreset(
    "per_group", each_group, "One relative ratio per prunable group: ``ratio.<group name>``."))
