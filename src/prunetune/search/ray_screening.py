"""The Ray side of the screening: actors that hold the dense model and the ScoreTable once and
evaluate chunks of candidate plans (:class:`Screener`), and the pool the screening draws them from.

Apart from :mod:`prunetune.search.ray_parts` on purpose: a screening actor's worker imports this
module to build the actor, and Ray Tune (about 1.4 s of a worker's start-up on a 2-core machine)
is not needed there. Imported by :mod:`prunetune.search.runner` inside a function (extra
``search``): this module imports Ray at import time.
"""

from __future__ import annotations

import math
from typing import Any

import ray
import torch

from prunetune._plugins import import_plugins
from prunetune.exceptions import ConfigError
from prunetune.recipes.pipeline import Base, resolve_device
from prunetune.pruning.scores import ScoreTable
from prunetune.search.objective import base_to
from prunetune.search.screening import Result, evaluate_candidates


@ray.remote
class Screener:
    """Holds the dense model and the ScoreTable once; evaluates chunks of screening candidates."""

    def __init__(self, base: Base, table: ScoreTable, threads: int, bn_batches: int, val_images: int,
                 plugins: tuple[str, ...] = ()) -> None:
        # the search's plugin modules (see ray_parts.trainable); one this worker cannot import fails
        # each candidate with the reason, which the screening reports in one line (raised here, the
        # actor died with a traceback at the driver)
        try:
            import_plugins(plugins)
            self.fault = None
        except ConfigError as exc:
            self.fault = f"{type(exc).__name__}: {exc}"
        torch.set_num_threads(max(1, threads))
        self.base, self.table = base_to(base, resolve_device(base.recipe.device)), table
        self.bn_batches, self.val_images = bn_batches, val_images

    def evaluate(self, params: list[dict[str, Any]]) -> list[Result]:
        if self.fault is not None:
            return [(math.nan, math.nan, self.fault) for _ in params]
        return evaluate_candidates(params, self.base, self.table, bn_batches=self.bn_batches,
                                   val_images=self.val_images)


def placeable(wanted: int, cpus: float, gpus: float) -> int:
    """How many actors of ``cpus``/``gpus`` each the cluster can hold at once now, at most ``wanted``
    (at least 1): an actor Ray cannot place would never run, and its chunk would be waited for forever."""
    free = ray.available_resources()
    fits = [math.floor(free.get("CPU", 0.0) / cpus + 1e-9)] if cpus > 0 else []
    if gpus > 0:
        fits.append(math.floor(free.get("GPU", 0.0) / gpus + 1e-9))
    return max(1, min([wanted, *fits]))


class RayPool:
    """A :class:`~prunetune.search.screening.Pool` of ``slots`` screening actors on the Ray cluster,
    each with one trial's resources; :meth:`close` frees them for the fine-tune trials."""

    def __init__(self, base_ref: Any, table_ref: Any, *, slots: int, cpus: float, gpus: float, bn_batches: int,
                 val_images: int, plugins: tuple[str, ...] = ()) -> None:
        make = Screener.options(num_cpus=cpus, num_gpus=gpus)
        self.actors = [make.remote(base_ref, table_ref, max(1, int(cpus)), bn_batches, val_images, plugins)
                       for _ in range(slots)]
        self.slots, self._free, self._owner = slots, list(self.actors), {}

    def submit(self, params: list[dict[str, Any]]) -> Any:
        actor = self._free.pop()
        ref = actor.evaluate.remote(params)
        self._owner[ref] = actor
        return ref

    def next_done(self, handles: list[Any]) -> tuple[Any, list[Result]]:
        (ref,), _ = ray.wait(handles, num_returns=1)
        self._free.append(self._owner.pop(ref))
        try:
            return ref, ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # the worker process died (an exit or a crash in user
            # code, out of memory): one line, not Ray's traceback
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise ConfigError(f"a screening worker died ({lines[-1][:300] if lines else type(exc).__name__}); "
                              "if a plugin or your model's code exits or crashes in a worker, fix it (the trials run "
                              "the same code); if it ran out of memory, lower concurrency") from None

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self._free = [], []
