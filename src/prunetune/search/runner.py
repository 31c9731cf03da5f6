"""Run a search: Ray Tune + an Optuna study (multi-objective: accuracy ↑, MACs ↓) under a MACs budget.

The driver prepares the dense model and the ScoreTable once and ships them to every trial through
Ray's object store (``tune.with_parameters``). MLflow logging happens on the driver
(:class:`~prunetune.search.ray_parts.TrackingCallback`). An interrupted search leaves its state in
``<storage_path>/<experiment>`` and the fine-tune Optuna study in its RDB storage; running the same
command again (or with ``resume=True``) continues it: MLflow's record of the finished trials is
kept, exactly the missing trials run (:mod:`prunetune.search.resume`). One process at a time holds
an experiment (:mod:`prunetune.search.lock`). Progress goes to :mod:`prunetune.search.progress`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunetune._imports import require
from prunetune._signals import handlers_restored, sigint_kept_ignored
from prunetune._text import masked_url
from prunetune.recipes.pipeline import dense_base, load_inputs, score_table
from prunetune.recipes.planning import check_allocation
from prunetune.pruning.groups import ModelGroups
from prunetune.search import cluster, preflight, trust
from prunetune.search import study as study_mod
from prunetune.search.config import SearchConfig
from prunetune.search.lock import ExperimentLock
from prunetune.search.objective import TrialResult, base_to, run_trial
from prunetune.search.progress import Callback, Progress
from prunetune.search.resume import STATE_FILE, done_trials, recorded_config, resume_state, write_state
from prunetune.search.screen_phase import SCREEN_FILE, recipe_train_params, screen, screened_pool
from prunetune.search.study import dashboard_command
from prunetune.search.screening import ScreenOutcome, trial_points
from prunetune.search.selection import proxy_metrics
from prunetune.spaces import SearchSpace, build_space, space_criteria, space_target_range
from prunetune.tracking.store import ui_command
from prunetune.tracking.tracker import ERROR_TAG, FAILED, FINISHED, KILLED, PLUGINS_TAG, SearchTracker
from prunetune.tracking.views import view_url
from prunetune.version import __version__

log = logging.getLogger("prunetune")

# the handlers Ray Tune's Tuner.fit replaces (to stop an experiment) and does not put back
TUNE_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGUSR1") if hasattr(signal, name))


@dataclass(frozen=True)
class SearchOutcome:
    """Where a search's results are and how it ended (``status``: FINISHED; KILLED if interrupted;
    FAILED if no trial finished and one failed, ``error`` then holding the first failed trial's error line).

    Attributes:
        experiment, tracking_uri, parent_run_id: the MLflow experiment, store and search run.
        experiment_dir: Ray's results and the resume state (``storage_path/experiment``).
        study_storage, study_name: the fine-tune Optuna study (``optuna-dashboard <study_storage>``).
        counts: trial runs by status (FINISHED, FAILED, KILLED), over the whole search.
        resumed: this call continued an interrupted search.
    """

    experiment: str
    experiment_dir: Path
    tracking_uri: str
    parent_run_id: str
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    resumed: bool = False
    seconds: float = 0.0
    study_storage: str | None = None
    study_name: str | None = None
    error: str | None = None

    @property
    def interrupted(self) -> bool:
        """Stopped before its trials ran (Ctrl-C, a signal): the same call continues it."""
        return self.status == KILLED

    @property
    def failed(self) -> bool:
        """Every trial failed: there is no result, and resuming would run nothing."""
        return self.status == FAILED


def probe_groups(config: SearchConfig) -> ModelGroups:
    """The model's groups at the data's input size, without training anything (budget checks)."""
    return load_inputs(config.recipe).groups


def make_space(config: SearchConfig, groups: ModelGroups) -> SearchSpace:
    """The search space on ``groups``; raises BudgetInfeasibleError for an unreachable budget."""
    return build_space(config.space, groups, budget=config.settings.budget, rule=config.recipe.rule,
                       recipe_lr=config.recipe.finetune.lr)


def run_search(config: SearchConfig, *, resume: bool | None = None,
               objective: Callable[..., TrialResult] = run_trial, callbacks: Sequence[Any] = (),
               show_progress: bool = True, progress: Progress | Callback | None = None) -> SearchOutcome:
    """Run (or resume) the search ``config`` describes.

    Args:
        resume: True: continue an interrupted search (error if there is none); False: never resume;
            None: resume when an interrupted search of this name exists, else start.
        objective: the trial function (``run_trial``); tests inject failures here.
        callbacks: extra Ray Tune callbacks.
        show_progress: progress bars of the dense training and scoring.
        progress: a :class:`~prunetune.search.progress.Progress`, or a callback that receives its
            :class:`~prunetune.search.progress.ProgressEvent` objects; status lines go to the
            ``prunetune`` logger either way.

    Raises:
        SearchLockedError: another process runs this experiment now.
    """
    require("ray.tune", extra="search", purpose="prunetune search")
    require("optuna", extra="search", purpose="prunetune search")
    t0 = time.perf_counter()
    s = config.settings
    reporter = progress if isinstance(progress, Progress) else Progress(progress, hold=True)
    reporter.budget, reporter.epochs = s.macs_budget, config.recipe.finetune.epochs
    preflight.check_outputs(s)  # where results go: before anything is read, trained or written
    preflight.check_plugins(config)  # entries the trials' Ray workers would not know
    status = FAILED
    with ExperimentLock(s.experiment_dir, s.experiment):
        state = resume_state(config, s.experiment_dir, resume)
        if state is not None and config.screen.enabled:
            screened_pool(config)  # damaged: an error now, before anything is trained
        config = recorded_config(config, state)
        reporter.start_ticker()
        try:
            tracker, study = _run(config, state, objective, list(callbacks), show_progress, reporter)
            status = tracker.client.get_run(tracker.parent_run_id).info.status
            if status in (FINISHED, FAILED):  # still under the lock: no second process resumes it; every
                # trial of a failed one ended, so a resume would run nothing
                write_state(s.experiment_dir, {"identity": config.identity(), "parent_run_id": tracker.parent_run_id,
                                               "study_name": study, "finished": True,
                                               **({"failed": True} if status == FAILED else {})})
        except KeyboardInterrupt:
            status = KILLED
            raise
        finally:
            reporter.close(status)
    runs = tracker.children()
    counts = dict(Counter(run.info.status for run in runs))
    error = None
    if status == FAILED:  # the first trial's error (by start time), as its run's tag holds it
        failed = sorted((r for r in runs if r.info.status == FAILED), key=lambda r: r.info.start_time or 0)
        error = next((r.data.tags[ERROR_TAG] for r in failed if r.data.tags.get(ERROR_TAG)), None)
    return SearchOutcome(s.experiment, s.experiment_dir, s.tracking_uri, tracker.parent_run_id, status, counts,
                         resumed=state is not None, seconds=time.perf_counter() - t0, study_storage=s.study_url,
                         study_name=study, error=error)


def _run(config: SearchConfig, state: dict[str, Any] | None, objective: Callable[..., Any], callbacks: list[Any],
         show_progress: bool, progress: Progress) -> tuple[SearchTracker, str]:
    """Prepare, score, start Ray, screen, fine-tune: the search itself (the caller holds the lock)."""
    s = config.settings
    # A named cluster is reached first, so a wrong address fails before anything is trained; a local
    # Ray starts (seconds) only once the recipe, the budget and the trial resources have passed.
    ray_cluster = cluster.Cluster.of(s.ray_address)
    started_ray = False
    try:
        if ray_cluster.named is not None:
            progress.phase("starting Ray", f"connecting to the Ray cluster at {ray_cluster.named}")
            started_ray = cluster.connect(ray_cluster)
        cluster.check_resources(ray_cluster, s.cpus_per_trial, s.gpus_per_trial)
        r = config.recipe
        progress.phase("loading", f"{r.model.name} on {r.data.name}: data and the dense model")
        # groups → space (and its MACs range) → allocation check, before any training: an impossible
        # budget or a bad input is one error line (the progress lines held back until here)
        inputs = load_inputs(config.recipe)
        groups = inputs.groups
        space = make_space(config, groups)
        check_allocation(config.recipe, groups)
        progress.release()
        base = dense_base(config.recipe, inputs, show_progress=show_progress)
        criteria = space_criteria(config.space, config.recipe.criterion.params)
        progress.phase("scoring", f"{len(criteria)} criteria ({', '.join(criteria)}), one calibration pass")
        t_score = time.perf_counter()
        table = score_table(base, criteria, show_progress=show_progress, blended=config.space.criteria)
        timings = {"score_s": time.perf_counter() - t_score}
        if ray_cluster.named is None:
            t_ray = time.perf_counter()
            progress.phase("starting Ray", "a local Ray on 127.0.0.1" if not _ray_running() else "the running Ray")
            started_ray = cluster.connect(ray_cluster)
            cluster.check_resources(ray_cluster, s.cpus_per_trial, s.gpus_per_trial)
            timings["ray_start_s"] = time.perf_counter() - t_ray
        tracker, study = _open_tracking(config, state, base, groups, table, timings)
        try:
            _announce(config, space, tracker, study)
            shipped = base_to(base, "cpu")
            # the device copies of the data go, and what the dense training and the scoring left in torch's
            # GPU cache: trials sharing this GPU (gpus_per_trial < 1) need the memory
            base = inputs = None
            _release_gpu_cache()
            threads = config.recipe.threads or max(1, int(s.cpus_per_trial))
            shipped = dataclasses.replace(shipped, recipe=shipped.recipe.with_changes(threads=threads))
            screened = screen(config, space, shipped, table, tracker, progress) if config.screen.enabled else None
            _fine_tune(config, space, shipped, table, objective, tracker, callbacks, progress,
                       state=state, screened=screened, study=study)
        except BaseException as exc:
            tracker.end_search(KILLED if isinstance(exc, KeyboardInterrupt) else FAILED)
            if isinstance(exc, KeyboardInterrupt):  # a stop in screening, before the fit seals the state
                trust.seal_state(s.experiment_dir, STATE_FILE)
            raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return tracker, study


def _release_gpu_cache() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _fine_tune(config: SearchConfig, space: SearchSpace, base: Any, table: Any, objective: Callable[..., Any],
               tracker: SearchTracker, callbacks: list[Any], progress: Progress, *, state: dict[str, Any] | None,
               screened: ScreenOutcome | None, study: str) -> None:
    """The fine-tune trials: all of them, or (resuming) those MLflow does not record as done."""
    from prunetune.search import ray_parts

    s = config.settings
    storage = study_mod.open_storage(s.study_url)
    exists = study_mod.study_exists(storage, study)
    earlier_runs = tracker.children() if state is not None else []
    done = done_trials(earlier_runs) if state is not None else None
    if done is not None and exists:
        again = study_mod.repair(storage, study, done.finished, done.ended)
        if again:
            log.info("resume: %d screened candidate(s) lost with the interrupted run are queued again", again)
    total = len(screened.selected) if screened is not None else s.trials  # with screening: exactly those
    left = total - (done.count if done else 0)
    if state is not None:  # checked again right before Ray writes there, then unsealed
        trust.check_and_unseal(s.experiment_dir, STATE_FILE,  # after a stop in screening, this run screened again
                               written=(SCREEN_FILE,) if screened is not None and screened.fresh else ())
        log.info("resume: %d of %d trials done, %d to run", total - left, total, max(0, left))
    proxies = [(dict(c.params), proxy_metrics(c)) for c in screened.selected] if screened is not None else None
    tracking = ray_parts.TrackingCallback(tracker, total, time_budget_s=s.time_budget_s,
                                          proxies=proxies, progress=progress, expected=max(0, left))
    earlier = [(r.data.metrics.get("accuracy", math.nan), r.data.metrics.get("macs_ratio", math.nan))
               for r in earlier_runs if r.info.status == FINISHED]
    progress.start_trials(total, done=total - max(0, left), earlier=earlier,
                          detail=f"{max(0, left)} of {total} to fine-tune, {s.concurrency} at a time")
    if left <= 0:
        tracking.on_experiment_end([])
        return
    points = None
    if screened is not None and not exists:  # an existing study keeps its queue of screened candidates
        points = trial_points(screened.selected, space, recipe_train_params(config))
    tuner = _tuner(config, space, base, table, objective, [tracking, *callbacks], storage=storage, study=study,
                   points=points, samples=left)
    try:
        # Tune leaves its stop handler in place, and would install it where SIGINT is ignored
        with handlers_restored(*TUNE_SIGNALS), sigint_kept_ignored():
            tuner.fit()
    finally:  # checksums of what Ray left, checked before a resume
        trust.seal_state(s.experiment_dir, STATE_FILE)


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()


def _open_tracking(config: SearchConfig, state: dict[str, Any] | None, base: Any, groups: ModelGroups, table: Any,
                   timings: dict[str, float]) -> tuple[SearchTracker, str]:
    """Reopen the parent run of an interrupted search, or start one (and the resume state); the
    tracker and the name of the fine-tune study."""
    s = config.settings
    tracker = SearchTracker(s.tracking_uri, s.experiment, budget=s.macs_budget)
    if state is not None:
        tracker.resume_search(state["parent_run_id"], trials=s.trials)
        if s.plugins:  # a resume may add plugins (the identity allows it); the record names the ones it has now
            tracker.client.set_tag(tracker.parent_run_id, PLUGINS_TAG, ",".join(s.plugins))
        log.info("search %s: resuming the interrupted search in %s", s.experiment, s.experiment_dir)
        return tracker, state.get("study_name") or s.experiment
    tracker.start_search(params=_parent_params(config), tags=_parent_tags(config, table, s.experiment_dir),
                         metrics=_parent_metrics(config, base, groups, timings), trials=s.trials,
                         texts={"search.yaml": config.to_yaml(), "base_recipe.yaml": config.recipe.to_yaml()})
    study = study_mod.new_study_name(study_mod.open_storage(s.study_url), s.experiment, tracker.parent_run_id)
    tracker.client.set_tag(tracker.parent_run_id, "prunetune.optuna_study", study)
    write_state(s.experiment_dir, {"identity": config.identity(), "parent_run_id": tracker.parent_run_id,
                                   "study_name": study, "finished": False})
    return tracker, study


def _tuner(config: SearchConfig, space: SearchSpace, base: Any, table: Any, objective: Callable[..., Any],
           callbacks: list[Any], *, storage: Any, study: str, points: list[dict[str, Any]] | None, samples: int) -> Any:
    """A Ray Tuner of ``samples`` trials on the fine-tune study ``study`` in ``storage`` (``points``:
    candidates to enqueue first; None when the study already holds its queue)."""
    from ray import tune

    from prunetune.search import ray_parts
    from prunetune.search.optuna_bridge import FinalOnlySearch

    s = config.settings
    fn = tune.with_parameters(ray_parts.trainable, base=base, table=table, objective=objective,
                              threads=max(1, int(s.cpus_per_trial)), latency=s.latency, plugins=s.plugins)
    fn = tune.with_resources(fn, ray_parts.resources(s.cpus_per_trial, s.gpus_per_trial))
    # with screening, another seed than the screening study's (its first draws would repeat them)
    seed = s.seed + 1 if config.screen.enabled else s.seed
    searcher = FinalOnlySearch(space=space.for_ray, metric=ray_parts.METRICS, mode=ray_parts.MODES,
                               sampler=ray_parts.make_sampler(s.sampler, seed=seed, trials=s.trials),
                               points_to_evaluate=points, storage=storage, study_name=study)
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=ray_parts.make_scheduler(s.asha, config.recipe.finetune.epochs),
        num_samples=samples, max_concurrent_trials=s.concurrency, reuse_actors=s.reuse_actors,
        time_budget_s=s.time_budget_s, trial_dirname_creator=ray_parts.trial_dirname)
    run_config = tune.RunConfig(name=s.experiment, storage_path=s.storage_path, verbose=0, log_to_file=False,
                                callbacks=callbacks, failure_config=tune.FailureConfig(max_failures=0))
    return tune.Tuner(fn, tune_config=tune_config, run_config=run_config)


def _announce(config: SearchConfig, space: SearchSpace, tracker: SearchTracker, study: str) -> None:
    s = config.settings
    low, high = space_target_range(space)
    log.info("search %s: %d trials, %d at a time, MACs targets in [%.1f%%, %.1f%%] of dense, sampler %s%s",
             s.experiment, s.trials, s.concurrency, 100 * low, 100 * high, s.sampler, ", ASHA" if s.asha else "")
    log.info("tracking: %s   Ray results: %s", masked_url(s.tracking_uri), s.experiment_dir)
    local = s.tracking_uri.startswith("sqlite")
    log.info("browse: %s%s", f"{ui_command(s.tracking_uri)}   then " if local else "",
             view_url(s.tracking_uri, tracker.experiment_id))
    log.info("Optuna study %r: %s", study, dashboard_command(masked_url(s.study_url)))


def _parent_params(config: SearchConfig) -> dict[str, Any]:
    r, s = config.recipe, config.settings
    params: dict[str, Any] = {k: v for k, v in config.public_dict().items() if k not in ("recipe", "space")}
    params["asha"] = "off" if s.asha is None else f"grace {s.asha.grace_period}, rf {s.asha.reduction_factor}"
    params.update({f"space.{k}": v for k, v in config.space.to_dict().items()})
    params.update({"model": r.model.name, "data": r.data.name, "checkpoint": r.model.checkpoint or "(brief training)",
                   "finetune.epochs": r.finetune.epochs, "finetune.lr": r.finetune.lr, "recipe.seed": r.seed,
                   "min_keep": r.rule.min_keep, "round_to": r.rule.round_to})
    return {k: v for k, v in params.items() if v is not None}


def _parent_tags(config: SearchConfig, table: Any, exp_dir: Path) -> dict[str, str]:
    plugins = {PLUGINS_TAG: ",".join(config.settings.plugins)} if config.settings.plugins else {}
    return {"prunetune.score_fingerprint": table.fingerprint, "prunetune.storage": str(exp_dir),
            "prunetune.version": __version__, "prunetune.ui": ui_command(config.settings.tracking_uri),
            "prunetune.optuna_storage": masked_url(config.settings.study_url),
            "prunetune.dashboard": dashboard_command(masked_url(config.settings.study_url)), **plugins}


def _parent_metrics(config: SearchConfig, base: Any, groups: ModelGroups, timings: dict[str, float]) -> dict[str, float]:
    """The parent run's figures: the dense network's, and seconds spent preparing (data, dense model),
    scoring (the ScoreTable) and starting a local Ray (``ray_start_s``, absent on a named cluster)."""
    from prunetune.pruning.finetune import evaluate

    val = evaluate(base.model, base.loader("val"), device=base.device)
    return {"dense_accuracy": base.dense["accuracy"], "dense_val_accuracy": val, "dense_macs": base.dense["macs"],
            "dense_params": base.dense["params"], "prepare_s": sum(base.timings.values()), **timings,
            "groups": len(groups)}
