"""The Ray Tune side of a search: the trainable, the Optuna sampler of the fine-tune study, the
scheduler and the tracking callback. The searcher itself is
:class:`prunetune.search.optuna_bridge.FinalOnlySearch`; the screening actors are in
:mod:`prunetune.search.ray_screening`.

Imported by :mod:`prunetune.search.runner` and, for its log filter, by
:func:`prunetune.search.cluster.connect`, both inside functions (extra ``search``): this module
imports Ray and Optuna at import time.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from prunetune._plugins import import_plugins
from prunetune.recipes.pipeline import Base, resolve_device
from prunetune.pruning.scores import ScoreTable
from prunetune.search.config import AshaSpec
from prunetune.search.objective import TrialResult, base_to, check_finite
from prunetune.search.progress import Progress
from prunetune.search.selection import spearman
from prunetune.tracking.tracker import FAILED, FINISHED, KILLED, SearchTracker

log = logging.getLogger("prunetune")
METRICS = ["accuracy", "macs"]
MODES = ["max", "min"]


def trainable(config: dict[str, Any], base: Base | None = None, table: ScoreTable | None = None,
              objective: Callable[..., TrialResult] | None = None, threads: int = 1, latency: bool = False,
              plugins: tuple[str, ...] = ()) -> None:
    """One trial in a Ray worker: ``base`` and ``table`` arrive once through the object store.

    ``plugins``: the search's plugin modules (:mod:`prunetune._plugins`), imported first, so the
    entries they register are known here too (the driver checked the opt-in).

    It runs with the base recipe's ``threads`` (the runner sets it to ``cpus_per_trial``), which the
    trial's exported recipe records, so a replay computes exactly what the trial computed.
    """
    import_plugins(plugins)
    torch.set_num_threads(max(1, base.recipe.threads or threads))
    base = base_to(base, resolve_device(base.recipe.device))
    result = objective(config, base, table, report=tune.report)
    check_finite(result.metrics)
    if latency:  # after the trial's work, on its own threads
        from prunetune.deployment.bench import plan_latency

        result.metrics["latency_ms"] = plan_latency(base.model, result.plan, threads=max(1, threads),
                                                   groups=base.groups)
    tune.report(result.report())


def make_sampler(name: str, *, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """``tpe``: multivariate, grouped TPE with a constant liar (parallel trials); ``nsga2``: NSGA-II.

    The random start-up phase and NSGA-II's population scale with the number of trials.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 4)))
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=max(4, min(10, trials // 3)))


def make_scheduler(asha: AshaSpec | None, epochs: int) -> Any:
    """ASHA on validation accuracy over fine-tune epochs (one rung per epoch), else FIFO."""
    if asha is None:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric="accuracy", mode="max", max_t=max(1, epochs),
                         grace_period=min(asha.grace_period, max(1, epochs)), reduction_factor=asha.reduction_factor)


class TrackingCallback(tune.Callback):
    """Logs trials to MLflow from the driver and reports them to the search's :class:`Progress`.

    Statuses: FINISHED (a final result), KILLED (stopped early, or still open when the experiment
    ends: interrupted or out of time), FAILED (an error). After every finished trial the search run's
    ``front.html`` is rewritten. At the end it closes the parent run: KILLED when trials were left
    unfinished (an interrupted search), FAILED when no trial of the whole search finished and one failed
    (the others stopped early or cut by the time budget), else
    FINISHED, with the trial counts of the whole search, the
    rank correlation of the screening proxy and the fine-tuned validation accuracy, and ``front.png``.

    Args:
        total: trials of the whole search; ``expected``: trials this run of it starts (fewer when
            it resumes an interrupted search).
        proxies: ``(params, proxy metrics)`` of the screened candidates (:func:`proxy_metrics`); a
            trial whose config holds one's params logs them.
    """

    def __init__(self, tracker: SearchTracker, total: int, *, time_limited: bool = False,
                 proxies: list[tuple[dict[str, Any], Any]] | None = None, progress: Progress | None = None,
                 expected: int | None = None, time_budget_s: float | None = None) -> None:
        self.tracker, self.total, self.time_limited = tracker, total, time_limited or time_budget_s is not None
        self.time_budget_s = time_budget_s
        self.expected = total if expected is None else expected
        self.proxies = list(proxies or [])
        self.progress = progress or Progress()
        self._started: dict[str, float] = {}
        self._t0 = time.time()  # before the fit, so before Tune's clock of the time budget starts

    def __getstate__(self) -> dict[str, Any]:
        return {"tracker": self.tracker, "total": self.total, "time_limited": self.time_limited,
                "proxies": self.proxies, "expected": self.expected, "time_budget_s": self.time_budget_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracker"], state["total"], time_limited=state["time_limited"],  # type: ignore[misc]
                      proxies=state.get("proxies"), expected=state.get("expected"),
                      time_budget_s=state.get("time_budget_s"))

    def _cut_short(self) -> bool:
        """A trial started and never completed, and not because the time budget ran out: Tune ends the
        running trials as TERMINATED, without a completion, both on Ctrl-C and when the budget is spent."""
        if not self._started:
            return False
        if not self.time_limited:
            return True
        return self.time_budget_s is not None and time.time() - self._t0 < self.time_budget_s

    def proxy_of(self, config: Mapping[str, Any]) -> dict[str, float]:
        """The proxy metrics of the candidate ``config`` holds the params of ({} for none). A callback
        pickled before the likelihood existed holds the accuracy alone, as a number."""
        for params, proxy in self.proxies:
            if all(config.get(k) == v for k, v in params.items()):
                return dict(proxy) if isinstance(proxy, Mapping) else {"proxy_accuracy": float(proxy)}
        return {}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._started[trial.trial_id] = time.time()
        self.tracker.start_trial(trial.trial_id, trial.config)
        self.progress.trial_started(self.tracker.label(trial.trial_id))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        if not result.get("final") and "epoch" in result:
            self.tracker.log_epoch(trial.trial_id, result, int(result["epoch"]))
            self.progress.trial_epoch(self.tracker.label(trial.trial_id), int(result["epoch"]), result.get("accuracy"))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        result = dict(trial.last_result or {})
        wall = time.time() - self._started.pop(trial.trial_id, time.time())
        label = self.tracker.label(trial.trial_id)
        if result.get("final"):
            self.tracker.finish_trial(trial.trial_id, {**result, "wall_s": wall, **self.proxy_of(trial.config)})
            self.progress.trial_finished(label, result["accuracy"], result["macs_ratio"], wall)
            self._log_front(png=False)
        else:
            self.tracker.stop_trial(trial.trial_id, KILLED, early=True)
            self.progress.trial_stopped(label, int(result.get("training_iteration", 0)))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._started.pop(trial.trial_id, None)
        error = _error_text(trial)
        label = self.tracker.label(trial.trial_id)
        self.tracker.stop_trial(trial.trial_id, FAILED, error=error)
        last = error.strip().splitlines()[-1] if error.strip() else "error"
        self.progress.trial_failed(label, f"{last} (trace: {trial.error_file})")

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        done = (Trial.TERMINATED, Trial.ERROR)
        # a search stopped by Ctrl-C in its last trial (every trial started) read as finished
        interrupted = (any(t.status not in done for t in trials) or self._cut_short()
                       or (len(trials) < self.expected and not self.time_limited))
        runs = self.tracker.children()
        statuses = [r.info.status for r in runs]
        metrics = {"trials_finished": statuses.count(FINISHED), "trials_failed": statuses.count(FAILED),
                   "trials_started": len(runs)}
        metrics.update(self._proxy_correlation(runs))
        # no trial finished and one failed (a broken objective, a device out of memory): no result, not FINISHED
        failed = not interrupted and FAILED in statuses and FINISHED not in statuses
        self.tracker.end_search(KILLED if interrupted else FAILED if failed else FINISHED, metrics)
        self._log_front(png=True)

    def _proxy_correlation(self, runs: list[Any]) -> dict[str, float]:
        """Spearman's ρ of the proxy that ranked the candidates (the likelihood; the accuracy in a search
        screened before it) vs fine-tuned val (and test) accuracy over the finished trials (all runs,
        so a resumed search counts the trials of its first part too)."""
        rows = [r.data.metrics for r in runs if r.info.status == FINISHED]
        proxy = "proxy_likelihood" if any("proxy_likelihood" in m for m in rows) else "proxy_accuracy"
        rows = [m for m in rows if math.isfinite(m.get(proxy, math.nan))]
        out = {}
        for key, name in (("accuracy", "proxy_rank_correlation"), ("test_accuracy", "proxy_rank_correlation_test")):
            rho = spearman([m[proxy] for m in rows], [m.get(key, math.nan) for m in rows])
            if math.isfinite(rho):
                out[name] = rho
        return out

    def _log_front(self, *, png: bool) -> None:
        """``front.html`` (and ``front.png``) on the search run; a failure here never stops the search."""
        from prunetune.exceptions import TrackingError
        from prunetune.tracking import load_search, log_front
        from prunetune.tracking.views import run_url

        t = self.tracker
        try:
            records = load_search(t.uri, t.experiment, parent_run_id=t.parent_run_id)
            log_front(records, t.client, png=png, run_url=lambda run_id: run_url(t.uri, t.experiment_id, run_id))
        except TrackingError:  # no finished trial yet
            return
        except Exception as exc:  # noqa: BLE001
            log.warning("could not log the front plot to the search run (%s: %s)", type(exc).__name__, exc)


def _error_text(trial: Trial) -> str:
    """The trial's error trace (Ray writes it to the trial's local ``error.txt`` before callbacks)."""
    try:
        path = trial.error_file
        if path and os.path.isfile(path):
            with open(path) as f:
                return f.read()
        error = trial.get_error()
    except Exception:  # an unreadable error file must not stop the search
        error = None
    return str(error) if error is not None else ""


class QuietTrialErrors(logging.Filter):
    """Drop Ray's per-trial tracebacks (the progress line and the MLflow run's ``prunetune.error`` tag
    carry the error, the trial directory's ``error.txt`` the full trace) and its ``Tuner.restore``
    hint (prunetune resumes by running the same command)."""

    PREFIXES = ("Trial task failed for trial", "Trials did not complete", "Experiment has been interrupted")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


def resources(cpus: float, gpus: float) -> Mapping[str, float]:
    return {"cpu": cpus, "gpu": gpus}


def trial_dirname(trial: Trial) -> str:
    """Short trial directories (Ray's default name lists every parameter)."""
    return f"trial_{trial.trial_id}"
