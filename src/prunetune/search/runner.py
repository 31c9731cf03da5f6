"""Run a search: Ray Tune + OptunaSearch (multi-objective: accuracy ↑, MACs ↓) under a MACs budget.

The driver prepares the dense model and the ScoreTable once and ships them to every trial through
Ray's object store (``tune.with_parameters``). MLflow logging happens on the driver
(:class:`~prunetune.search.ray_parts.TrackingCallback`). An interrupted search leaves its state in
``<storage_path>/<experiment>``; running the same command again (or with ``resume=True``) continues
it with ``Tuner.restore``: finished trials are kept, unfinished ones start again.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunetune._imports import require
from prunetune.exceptions import ConfigError
from prunetune.models import create_model
from prunetune.pipeline import load_data, prepare, score_table
from prunetune.pruning.groups import ModelGroups, find_groups
from prunetune.search import cluster, preflight, trust
from prunetune.search.config import SearchConfig
from prunetune.search.objective import TrialResult, base_to, run_trial
from prunetune.pruning.schedules import SCHEDULES
from prunetune.search.screening import ScreenOutcome, hand_params, run_screening, select, table_csv, trial_points
from prunetune.spaces.presets import LR, SCHEDULE, SCHEDULE_PARAM_PREFIX
from prunetune.spaces import SearchSpace, build_space, plan_space, space_criteria, target_range
from prunetune.tracking.export import write_atomic
from prunetune.tracking.store import ui_command
from prunetune.tracking.tracker import FAILED, FINISHED, KILLED, SearchTracker
from prunetune.version import __version__

log = logging.getLogger("prunetune")
STATE_FILE = "prunetune-search.json"
SCREEN_FILE = "screening.json"


@dataclass(frozen=True)
class SearchOutcome:
    """Where a search's results are and how it ended (``status``: FINISHED, or KILLED if interrupted)."""

    experiment: str
    experiment_dir: Path
    tracking_uri: str
    parent_run_id: str
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    resumed: bool = False
    seconds: float = 0.0

    @property
    def interrupted(self) -> bool:
        return self.status != FINISHED


def probe_groups(config: SearchConfig) -> ModelGroups:
    """The model's groups at the data's input size, without training anything (budget checks)."""
    recipe = config.recipe
    splits = load_data(recipe)
    spec = recipe.model
    model = create_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                         allow_code=recipe.allow_code, **spec.kwargs)
    return find_groups(model, (splits.in_channels, splits.image_size, splits.image_size))


def make_space(config: SearchConfig, groups: ModelGroups) -> SearchSpace:
    """The search space on ``groups``; raises BudgetInfeasibleError for an unreachable budget."""
    a = config.recipe.allocation
    return build_space(config.space, groups, budget=config.settings.macs_budget, rule=a.rule,
                       recipe_lr=config.recipe.finetune.lr)


def run_search(config: SearchConfig, *, resume: bool | None = None,
               objective: Callable[..., TrialResult] = run_trial, callbacks: Sequence[Any] = (),
               show_progress: bool = True) -> SearchOutcome:
    """Run (or resume) the search ``config`` describes.

    Args:
        resume: True: continue an interrupted search (error if there is none); False: never resume;
            None: resume when an interrupted search of this name exists, else start.
        objective: the trial function (``run_trial``); tests inject failures here.
        callbacks: extra Ray Tune callbacks.
    """
    require("ray.tune", extra="search", purpose="prunetune search")
    require("optuna", extra="search", purpose="prunetune search")
    t0 = time.perf_counter()
    s = config.settings
    preflight.check_outputs(s)  # where results go: before anything is read, trained or written
    state = _resume_state(config, s.experiment_dir, resume)
    # A named cluster is reached first, so a wrong address fails before anything is trained; a local
    # Ray starts (seconds) only once the recipe, the budget and the trial resources have passed.
    ray_cluster = cluster.Cluster.of(s.ray_address)
    started_ray = False
    try:
        if ray_cluster.named is not None:
            started_ray = cluster.connect(ray_cluster)
        cluster.check_resources(ray_cluster, s.cpus_per_trial, s.gpus_per_trial)
        # the space is checked on the groups before any training (an impossible budget fails there)
        base = prepare(config.recipe, show_progress=show_progress, check=lambda g: make_space(config, g))
        groups = base.groups
        space = make_space(config, groups)
        t_score = time.perf_counter()
        table = score_table(base, space_criteria(config.space, config.recipe.criterion.params),
                            show_progress=show_progress)
        if ray_cluster.named is None:
            started_ray = cluster.connect(ray_cluster)
            cluster.check_resources(ray_cluster, s.cpus_per_trial, s.gpus_per_trial)
        tracker = _open_tracking(config, state, base, groups, table, time.perf_counter() - t_score)
        try:
            _announce(config, groups)
            shipped = base_to(base, "cpu")
            screened = _screen(config, space, shipped, table, tracker) if config.screen.enabled else None
            if state is not None:  # checked again right before Ray unpickles it, then unsealed
                trust.check_and_unseal(s.experiment_dir, STATE_FILE)
            tuner = _tuner(config, space, shipped, table, objective, tracker, list(callbacks),
                           restore=state is not None, screened=screened)
            try:
                tuner.fit()
            finally:  # checksums of what Ray left, checked before a resume unpickles it
                trust.seal_state(s.experiment_dir, STATE_FILE)
        except BaseException as exc:
            tracker.end_search(KILLED if isinstance(exc, KeyboardInterrupt) else FAILED)
            raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    status = tracker.client.get_run(tracker.parent_run_id).info.status
    if status == FINISHED:
        _write_state(s.experiment_dir, {"identity": config.identity(), "parent_run_id": tracker.parent_run_id,
                                        "finished": True})
    counts = dict(Counter(run.info.status for run in tracker.children()))
    return SearchOutcome(s.experiment, s.experiment_dir, s.tracking_uri, tracker.parent_run_id, status, counts,
                         resumed=state is not None, seconds=time.perf_counter() - t0)


def _open_tracking(config: SearchConfig, state: dict[str, Any] | None, base: Any, groups: ModelGroups, table: Any,
                   score_s: float) -> SearchTracker:
    """Reopen the parent run of an interrupted search, or start one (and the resume state)."""
    s = config.settings
    tracker = SearchTracker(s.tracking_uri, s.experiment)
    if state is not None:
        tracker.resume_search(state["parent_run_id"])
        log.info("search %s: resuming the interrupted search in %s", s.experiment, s.experiment_dir)
        return tracker
    tracker.start_search(params=_parent_params(config), tags=_parent_tags(config, table, s.experiment_dir),
                         metrics=_parent_metrics(config, base, groups, score_s),
                         texts={"search.yaml": config.to_yaml(), "base_recipe.yaml": config.recipe.to_yaml()})
    _write_state(s.experiment_dir, {"identity": config.identity(), "parent_run_id": tracker.parent_run_id,
                                    "finished": False})
    return tracker


def _screen(config: SearchConfig, space: SearchSpace, base: Any, table: Any, tracker: SearchTracker) -> ScreenOutcome:
    """Screen candidate plans on the Ray cluster (or reload the pool an interrupted search screened)."""
    s, spec = config.settings, config.screen
    path = s.experiment_dir / SCREEN_FILE
    if path.is_file():
        outcome = ScreenOutcome.from_json(path.read_text())
        log.info("screening: reusing the %d screened candidates in %s", len(outcome.candidates), path)
        return outcome
    import ray

    from prunetune.search import ray_parts

    a = config.recipe.allocation
    low, high = target_range(config.space, base.groups, s.macs_budget, a.rule)
    plans = plan_space(space)
    # one hand recipe per criterion at each of max(4, trials) targets, at most half the pool (at least one)
    per = max(1, min(max(4, s.trials), spec.count(s.trials) // (2 * len(config.space.criteria))))
    hand = hand_params(config.space, plans, low, high, per)
    count = max(spec.count(s.trials), len(hand))
    log.info("screening %d candidate plans (%d of them the uniform hand recipe) by adaptive-BN proxy, %d at a time",
             count, len(hand), s.concurrency)
    t0 = time.perf_counter()
    slots = ray_parts.placeable(s.concurrency, s.cpus_per_trial, s.gpus_per_trial)
    pool = ray_parts.RayPool(ray.put(base), ray.put(table), slots=slots, cpus=s.cpus_per_trial,
                             gpus=s.gpus_per_trial, bn_batches=spec.bn_batches, val_images=spec.val_images)
    try:
        chunk = max(1, min(8, count // (4 * slots)))
        candidates = run_screening(plans, hand, count, pool, seed=s.seed, chunk=chunk, progress=_screen_progress())
    finally:
        pool.close()
    selected = select(candidates, s.trials)
    outcome = ScreenOutcome(candidates, selected, time.perf_counter() - t0)
    failed = sum(1 for c in candidates if not c.ok)
    if not selected:
        first = next((c.error for c in candidates if c.error), "no candidate")
        raise ConfigError(f"screening evaluated none of its {len(candidates)} candidates (first error: {first}); "
                          "fix the cause, or run with screen: false")
    if len(selected) < s.trials:
        log.warning("screening: only %d candidates could be evaluated (%d failed); fine-tuning those %d of "
                    "the %d trials asked for (raise screen.candidates for more)", len(selected), failed,
                    len(selected), s.trials)
    log.info("screening: %d candidates in %.1fs (%d failed); fine-tuning %d of the proxy front, MACs %s",
             len(candidates), outcome.seconds, failed, len(selected),
             ", ".join(f"{100 * c.macs_ratio:.1f}%" for c in selected))
    s.experiment_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, outcome.to_json(), overwrite=True)
    tracker.log_search(metrics={"screen_s": outcome.seconds, "screen_candidates": len(candidates),
                                "screen_failed": failed, "screen_selected": len(selected)},
                       texts={"screening.csv": table_csv(candidates)})
    return outcome


def _recipe_train_params(config: SearchConfig) -> dict[str, Any]:
    """The values screened trials fine-tune with under ``train_params: recipe``: the recipe's lr, the
    space's first schedule and that schedule's own defaults (empty under ``sampled``)."""
    if config.screen.train_params != "recipe":
        return {}
    name = config.space.schedules[0]
    fixed: dict[str, Any] = {LR: config.recipe.finetune.lr, SCHEDULE: name}
    fixed.update({f"{SCHEDULE_PARAM_PREFIX}{name}.{k}": v for k, v in SCHEDULES.get(name).defaults.items()})
    return fixed


def _screen_progress() -> Callable[[int, int], None]:
    marks: set[int] = set()

    def report(done: int, total: int) -> None:
        quarter = 4 * done // total
        if quarter not in marks and quarter > 0:
            marks.add(quarter)
            log.info("screening: %d/%d candidates", done, total)
    return report


def _tuner(config: SearchConfig, space: SearchSpace, base: Any, table: Any, objective: Callable[..., Any],
           tracker: SearchTracker, callbacks: list[Any], *, restore: bool, screened: ScreenOutcome | None = None) -> Any:
    from ray import tune

    from prunetune.search import ray_parts

    s = config.settings
    fn = tune.with_parameters(ray_parts.trainable, base=base, table=table, objective=objective,
                              threads=max(1, int(s.cpus_per_trial)), latency=s.latency)
    fn = tune.with_resources(fn, ray_parts.resources(s.cpus_per_trial, s.gpus_per_trial))
    if restore:
        return tune.Tuner.restore(str(s.experiment_dir), trainable=fn, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    points, trials, seed = None, s.trials, s.seed
    if screened is not None:  # exactly the screened trials; another seed than the screening study's
        points = trial_points(screened.selected, space, _recipe_train_params(config))
        trials, seed = len(points), s.seed + 1
    searcher = ray_parts.FinalOnlySearch(space=space.for_ray, metric=ray_parts.METRICS, mode=ray_parts.MODES,
                                         sampler=ray_parts.make_sampler(s.sampler, seed=seed, trials=trials),
                                         points_to_evaluate=points)
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=ray_parts.make_scheduler(s.asha, config.recipe.finetune.epochs),
        num_samples=trials, max_concurrent_trials=s.concurrency, reuse_actors=s.reuse_actors,
        time_budget_s=s.time_budget_s, trial_dirname_creator=ray_parts.trial_dirname)
    proxies = [(dict(c.params), c.proxy) for c in screened.selected] if screened is not None else None
    tracking = ray_parts.TrackingCallback(tracker, trials, time_limited=s.time_budget_s is not None,
                                          proxies=proxies)
    run_config = tune.RunConfig(name=s.experiment, storage_path=s.storage_path, verbose=0, log_to_file=False,
                                callbacks=[tracking, *callbacks], failure_config=tune.FailureConfig(max_failures=0))
    return tune.Tuner(fn, tune_config=tune_config, run_config=run_config)


def _resume_state(config: SearchConfig, exp_dir: Path, resume: bool | None) -> dict[str, Any] | None:
    """The saved state to resume from, None to start; errors when resuming is impossible or unsafe."""
    from ray import tune

    path = exp_dir / STATE_FILE
    state = json.loads(path.read_text()) if path.is_file() else None
    restorable = state is not None and tune.Tuner.can_restore(str(exp_dir))
    name = config.settings.experiment
    if not restorable:
        if resume:
            raise ConfigError(f"nothing to resume: no interrupted search {name!r} in {exp_dir}; "
                              "drop --resume to start it, or pass the --experiment and --storage-path it used")
        return None
    if resume is False:
        raise ConfigError(f"search {name!r} already exists in {exp_dir}; resume it (same command) or choose "
                          "another --experiment")
    identity = json.loads(json.dumps(config.identity(), default=str))
    for key, old in state["identity"].items():
        if identity.get(key) != old:
            raise ConfigError(f"search {name!r} in {exp_dir} was started with another {key!r} "
                              f"({_short(old)}, now {_short(identity.get(key))}); resume with the same config, "
                              "or start a new search with another --experiment")
    if state.get("finished"):
        raise ConfigError(f"search {name!r} already finished ({config.settings.trials} trials) in {exp_dir}; "
                          f"inspect it with `prunetune pareto --experiment {name}`, or start a new one with "
                          "another --experiment")
    trust.check(exp_dir, state, state_file=STATE_FILE)  # Ray unpickles what is there: ours, unchanged?
    return state


def _write_state(exp_dir: Path, state: dict[str, Any]) -> None:
    write_atomic(exp_dir / STATE_FILE, json.dumps({"version": 1, **state}, indent=1, default=str), overwrite=True)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _announce(config: SearchConfig, groups: ModelGroups) -> None:
    s, a = config.settings, config.recipe.allocation
    low, high = target_range(config.space, groups, s.macs_budget, a.rule)
    log.info("search %s: %d trials, %d at a time, MACs targets in [%.1f%%, %.1f%%] of dense, sampler %s%s",
             s.experiment, s.trials, s.concurrency, 100 * low, 100 * high, s.sampler, ", ASHA" if s.asha else "")
    log.info("tracking: %s   Ray results: %s", s.tracking_uri, s.experiment_dir)


def _parent_params(config: SearchConfig) -> dict[str, Any]:
    r, s = config.recipe, config.settings
    params: dict[str, Any] = {k: v for k, v in config.to_dict().items() if k not in ("recipe", "space")}
    params["asha"] = "off" if s.asha is None else f"grace {s.asha.grace_period}, rf {s.asha.reduction_factor}"
    params.update({f"space.{k}": v for k, v in config.space.to_dict().items()})
    params.update({"model": r.model.name, "data": r.data.name, "checkpoint": r.model.checkpoint or "(brief training)",
                   "finetune.epochs": r.finetune.epochs, "finetune.lr": r.finetune.lr, "recipe.seed": r.seed,
                   "min_keep": r.allocation.min_keep, "round_to": r.allocation.round_to})
    return {k: v for k, v in params.items() if v is not None}


def _parent_tags(config: SearchConfig, table: Any, exp_dir: Path) -> dict[str, str]:
    return {"prunetune.score_fingerprint": table.fingerprint, "prunetune.storage": str(exp_dir),
            "prunetune.version": __version__, "prunetune.ui": ui_command(config.settings.tracking_uri)}


def _parent_metrics(config: SearchConfig, base: Any, groups: ModelGroups, score_s: float) -> dict[str, float]:
    from prunetune.pruning.finetune import evaluate

    val = evaluate(base.model, base.loader("val"), device=base.device)
    return {"dense_accuracy": base.dense["accuracy"], "dense_val_accuracy": val, "dense_macs": base.dense["macs"],
            "dense_params": base.dense["params"], "prepare_s": sum(base.timings.values()), "score_s": score_s,
            "groups": len(groups)}
