"""A search's screening phase: candidate plans ranked by the adaptive-BN proxy on the Ray cluster
before any fine-tune, or the pool an interrupted search screened, reloaded from ``screening.json``
in its experiment folder (:mod:`prunetune.search.runner` runs the phases in turn; the pool and its
proxies are :mod:`prunetune.search.screening`, the front that is fine-tuned
:mod:`prunetune.search.selection`, the actors :mod:`prunetune.search.ray_screening`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prunetune._atomic import write_text_atomic
from prunetune._text import exception_line
from prunetune.exceptions import ConfigError
from prunetune.pruning.schedules import SCHEDULES
from prunetune.search.config import SearchConfig
from prunetune.search.progress import Progress
from prunetune.search.screening import ScreenOutcome, hand_pool, run_screening
from prunetune.search.selection import select, table_csv
from prunetune.spaces import SearchSpace, plan_space, space_target_range
from prunetune.spaces.presets import LR, SCHEDULE, SCHEDULE_PARAM_PREFIX
from prunetune.tracking.tracker import SearchTracker

log = logging.getLogger("prunetune")

SCREEN_FILE = "screening.json"


def screened_pool(config: SearchConfig) -> ScreenOutcome | None:
    """The pool an interrupted search screened (None when it screened none); damaged, a one-line error."""
    path = config.settings.experiment_dir / SCREEN_FILE
    if not path.is_file():
        return None
    try:
        return ScreenOutcome.from_json(path.read_bytes().decode("utf-8"))
    except ValueError as exc:  # JSON and UTF-8 errors too
        raise ConfigError(f"screened pool {str(path)!r} is damaged ({exception_line(exc, 120)}), so the "
                          "search cannot be resumed; its finished trials stay in MLflow: start a new search with "
                          f"another --experiment (or move {str(config.settings.experiment_dir)!r} away)") from None


def screen(config: SearchConfig, space: SearchSpace, base: Any, table: Any, tracker: SearchTracker,
            progress: Progress) -> ScreenOutcome:
    """Screen candidate plans on the Ray cluster (or reload the pool an interrupted search screened)."""
    s, spec = config.settings, config.screen
    path = s.experiment_dir / SCREEN_FILE
    outcome = screened_pool(config)
    if outcome is not None:
        log.info("screening: reusing the %d screened candidates in %s", len(outcome.candidates), path)
        return outcome
    import ray

    from prunetune.search import ray_screening

    low, high = space_target_range(space)  # the range the space was built with
    plans = plan_space(space)
    count = spec.count(s.trials)
    hand = hand_pool(config.space, plans, low, high, trials=s.trials, count=count)
    slots = ray_screening.placeable(s.concurrency, s.cpus_per_trial, s.gpus_per_trial)
    progress.phase("screening", f"{count} candidate plans ({len(hand)} of them hand recipes: each criterion alone, uniform or global) by "
                   f"adaptive-BN proxy, {slots} at a time")
    t0 = time.perf_counter()
    pool = ray_screening.RayPool(ray.put(base), ray.put(table), slots=slots, cpus=s.cpus_per_trial,
                                 gpus=s.gpus_per_trial, bn_batches=spec.bn_batches, val_images=spec.val_images,
                                 plugins=s.plugins)
    try:
        chunk = max(1, min(8, count // (4 * slots)))
        candidates = run_screening(plans, hand, count, pool, seed=s.seed, chunk=chunk,
                                   progress=_screen_progress(progress))
    finally:
        pool.close()
    fixed = recipe_train_params(config).get(SCHEDULE)  # the trials' schedule, when screening fixes it
    selected = select(candidates, s.trials, by_order=fixed is None or not SCHEDULES.get(fixed).one_shot,
                      budget=high)
    outcome = ScreenOutcome(candidates, selected, time.perf_counter() - t0, fresh=True)
    failed = sum(1 for c in candidates if not c.ok)
    if not selected:
        first = next((c.error for c in candidates if c.error), "no candidate")
        # a plugin the workers cannot import fails the trials alike: screen: false would not help
        fix = "fix the cause (the trials would meet it too)" if first.startswith("ConfigError: plugin module '") else \
            "fix the cause, or run with screen: false"
        raise ConfigError(f"screening evaluated none of its {len(candidates)} candidates (first error: {first}); {fix}")
    if len(selected) < s.trials:
        # select stops short only when it has taken every distinct plan
        log.warning("screening: only %d distinct plans could be evaluated (%d candidates failed, %d gave a plan "
                    "another had given); fine-tuning those %d of the %d trials asked for (raise screen.candidates "
                    "for more)", len(selected), failed, len(candidates) - failed - len(selected), len(selected),
                    s.trials)
    log.info("screening: %d candidates in %.1fs (%d failed); fine-tuning %d of the proxy front, MACs %s",
             len(candidates), outcome.seconds, failed, len(selected),
             ", ".join(f"{100 * c.macs_ratio:.1f}%" for c in selected))
    s.experiment_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, outcome.to_json())
    tracker.log_search(metrics={"screen_s": outcome.seconds, "screen_candidates": len(candidates),
                                "screen_failed": failed, "screen_selected": len(selected)},
                       texts={"screening.csv": table_csv(candidates)})
    return outcome


def recipe_train_params(config: SearchConfig) -> dict[str, Any]:
    """The values screened trials fine-tune with under ``train_params: recipe``: the recipe's lr, the
    space's first schedule and that schedule's own defaults (empty under ``sampled``)."""
    if config.screen.train_params != "recipe":
        return {}
    name = config.space.schedules[0]
    fixed: dict[str, Any] = {LR: config.recipe.finetune.lr, SCHEDULE: name}
    fixed.update({f"{SCHEDULE_PARAM_PREFIX}{name}.{k}": v for k, v in SCHEDULES.get(name).defaults.items()})
    return fixed


def _screen_progress(progress: Progress) -> Callable[[int, int], None]:
    marks: set[int] = set()

    def report(done: int, total: int) -> None:
        quarter = 4 * done // total
        line = quarter not in marks and 0 < quarter < 4
        marks.add(quarter)
        progress.screening(done, total, line=line)
    return report
