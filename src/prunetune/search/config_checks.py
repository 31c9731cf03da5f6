"""What a search config's parts must agree on, checked once its base recipe, space and settings are
read: the recipe's lr inside a screened space, its criterion parameters read by some searched
criterion, its device one the trials have; and what of the recipe the trials do not use (said).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from prunetune._spelling import Spelling
from prunetune.exceptions import ConfigError
from prunetune.pruning.strategies import STRATEGIES, strategy_criteria
from prunetune.recipes.schema import Recipe
from prunetune.search.screening import ScreenSpec
from prunetune.spaces import SpaceSpec

log = logging.getLogger("prunetune")


def check_train_params(recipe: Recipe, space: SpaceSpec, screen: ScreenSpec) -> None:
    """Screened trials fine-tune with the recipe's lr under ``train_params: recipe``: it must lie in an
    explicit ``space.lr`` (Optuna would otherwise take it with a warning, outside the space)."""
    if not screen.enabled or screen.train_params != "recipe" or not isinstance(space.lr, tuple):
        return
    low, high = space.lr
    if not low <= recipe.finetune.lr <= high:
        raise ConfigError(f"screened trials fine-tune with the recipe's lr {recipe.finetune.lr:g} (screen.train_params: "
                          f"recipe), outside space.lr [{low:g}, {high:g}]; widen space.lr, change finetune.lr, or "
                          "set screen.train_params: sampled")


def check_criterion_params(recipe: Recipe, space: SpaceSpec) -> None:
    """The base recipe's criterion parameters reach the scores and the trials only for the criteria the
    search scores: the space's, and those its allocations read (``cmi`` for a ``cmi_*`` cut-off); any
    other's would be dropped without a word (a typo'd or forgotten space entry)."""
    used = {*space.criteria, *(c for a in space.allocations for c in strategy_criteria(a))}
    unused = sorted(set(recipe.criterion.params) - used)
    if unused:
        name = unused[0]
        readers = [a for a in STRATEGIES.names() if name in strategy_criteria(a)]
        fix = f"add {name!r} to space.criteria" + (f" or an allocation that reads it ({', '.join(readers)}) to "
                                                   "space.allocations" if readers else "")
        raise ConfigError(f"the base recipe gives criterion params for {name!r}, which this search does not use "
                          f"(it scores {', '.join(sorted(used))}); remove them or {fix}")


def check_device(recipe: Recipe, gpus: float, spelling: Spelling) -> None:
    """A trial that asks Ray for GPUs sees only those, numbered from 0 (``ceil(gpus_per_trial)`` of
    them), so ``cuda:N`` past them is no GPU it has: refused before anything is trained. With
    ``gpus_per_trial: 0`` Ray reserves none, and (Ray 2.60, the pinned version) leaves the machine's
    GPUs visible, so the trials share them uncounted: said, not refused. ``gpus``: the config's
    ``gpus_per_trial``."""
    device = str(recipe.device)
    if not device.startswith("cuda"):
        return
    if not gpus:
        log.warning("device %r with gpus_per_trial 0: Ray reserves no GPU for the trials, which then share the "
                    "machine's GPUs uncounted (%s lets Ray count them, e.g. 0.25 for four trials on one GPU)",
                    device, spelling.given("gpus_per_trial", 0.25))
        return
    index = int(device.partition(":")[2] or 0)
    visible = math.ceil(gpus - 1e-9)
    if index >= visible:
        raise ConfigError(f"device {device!r}: a trial sees the {visible} GPU(s) Ray gives it (gpus_per_trial "
                          f"{gpus:g}) as cuda:0{'' if visible == 1 else f'..cuda:{visible - 1}'}; write device: cuda "
                          "(Ray picks the GPUs; CUDA_VISIBLE_DEVICES limits them)")


KEEP_RULE = ("min_keep", "round_to", "max_ratio")  # what the trials take from the base recipe's allocation


def warn_unsearched(given: Mapping[str, Any], recipe: Recipe, space: SpaceSpec) -> None:
    """Say what of the base recipe the trials do not use (a reused recipe file): its criterion, where the
    space's are searched instead and it carries no ``params`` for them, and its allocation beyond the
    keep rule (every trial gets its own under the search's budget)."""
    crit = given.get("criterion")
    if crit is not None and not (isinstance(crit, Mapping) and crit.get("params")):
        names = sorted(recipe.criterion.weights)
        if set(names) != set(space.criteria):
            log.warning("the base recipe's criterion (%s) is not what the trials use: they blend the space's "
                        "criteria (%s); to search %s alone, set space.criteria: [%s]", ", ".join(names),
                        ", ".join(space.criteria), " and ".join(names), ", ".join(names))
    alloc = given.get("allocation")
    unused = sorted(k for k in alloc if k not in KEEP_RULE) if isinstance(alloc, Mapping) else []
    if unused:
        log.warning("the base recipe's allocation %s %s not used: every trial gets its own allocation under the "
                    "search's macs_budget and space.allocations; only %s apply there", ", ".join(unused),
                    "is" if len(unused) == 1 else "are", ", ".join(KEEP_RULE))
