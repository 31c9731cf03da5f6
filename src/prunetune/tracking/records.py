"""Trial records read back from MLflow: the latest search of an experiment and its finished trials."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prunetune._numbers import is_finite_number
from prunetune._spelling import FLAGS, Spelling
from prunetune._text import command_line
from prunetune.exceptions import TrackingError
from prunetune.tracking.store import check_store, client, find_experiment
from prunetune.tracking.tracker import (
    ENDED_TAG, FAILED, FINISHED, KILLED, LABEL_TAG, PARENT_TAG, PLUGINS_TAG, ROLE_TAG, RUNNING, TRIAL_TAG,
)


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its objectives and where its artifacts are."""

    run_id: str
    trial_id: str
    accuracy: float
    macs: float
    params: float
    macs_ratio: float
    test_accuracy: float | None = None
    params_ratio: float | None = None
    target_macs: float | None = None
    proxy_accuracy: float | None = None
    label: str | None = None  # the short name of the trial run (t07)

    @property
    def name(self) -> str:
        """``t07``, or the Ray trial id of a run logged before trials had short names."""
        return self.label or self.trial_id

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class SearchRecords:
    """A search as MLflow holds it: the parent run, its budget and dense metrics, finished trials."""

    experiment: str
    uri: str
    parent_run_id: str
    budget: float | None
    dense: dict[str, float]
    trials: tuple[TrialRecord, ...]
    counts: dict[str, int] = field(default_factory=dict)
    # every trial run that is not in ``trials``: its short name, Ray trial id and MLflow run id, each
    # -> (short name, what became of it: "was interrupted", ...), so a command asked for one can say so
    others: dict[str, tuple[str, str]] = field(default_factory=dict)
    # the plugin modules the search imported (its ``plugins:``); commands that read its recipes need them
    plugins: tuple[str, ...] = ()


def load_search(uri: str, experiment: str, *, parent_run_id: str | None = None,
                spelling: Spelling = FLAGS) -> SearchRecords:
    """The latest search of ``experiment`` (or the one with ``parent_run_id``) and its finished trials.
    ``spelling``: how errors name the options (:mod:`prunetune._spelling`).

    Raises:
        TrackingError: unknown experiment, no search in it, or no finished trial yet.
    """
    check_store(uri, spelling)
    mlflow_client = client(uri, spelling)
    experiment_id = find_experiment(mlflow_client, uri, experiment, spelling)
    parent = _parent(mlflow_client, experiment_id, experiment, parent_run_id, spelling)
    children = mlflow_client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                         max_results=50000)
    counts = dict(Counter(run.info.status for run in children))
    trials = tuple(r for r in (_record(run) for run in children if run.info.status == FINISHED) if r is not None)
    kept = {t.run_id for t in trials}
    others = {key: entry for run in children if run.info.run_id not in kept
              for entry in [_other(run)] for key in _names(run) if key}
    if not trials:
        seen = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trial runs"
        search = command_line("prunetune", "search", "--config", "CONFIG", ("--experiment", experiment))
        raise TrackingError(f"experiment {experiment!r} has no finished trials yet ({seen}); run or resume "
                            f"`{search}` and wait for trials to finish")
    metrics, params = parent.data.metrics, parent.data.params
    budget = float(params["macs_budget"]) if "macs_budget" in params else None
    dense = {k[len("dense_"):]: v for k, v in metrics.items() if k.startswith("dense_")}
    plugins = tuple(name for name in parent.data.tags.get(PLUGINS_TAG, "").split(",") if name)
    return SearchRecords(experiment, uri, parent.info.run_id, budget, dense,
                         tuple(sorted(trials, key=lambda t: (t.macs, -t.accuracy, t.trial_id))), counts, others,
                         plugins)


def _names(run: Any) -> tuple[str | None, ...]:
    """The names a user may give a trial run by: short name, Ray trial id, MLflow run id."""
    return (run.data.tags.get(LABEL_TAG), run.data.tags.get(TRIAL_TAG), run.info.run_id)


def _other(run: Any) -> tuple[str, str]:
    """(short name, what became of it) of a trial run without a result."""
    label, trial_id, run_id = _names(run)
    status = run.info.status
    if status == KILLED:
        what = "was stopped early by the scheduler" if run.data.tags.get(ENDED_TAG) == "stopped early" else "was interrupted"
    elif status == FAILED:
        what = "failed"
    elif status == RUNNING:
        what = "is still running (or its search was killed; resume it to close the run)"
    elif status == FINISHED:
        what = "finished without accuracy and MACs"
    else:
        what = f"ended with MLflow status {status}"
    return (label or trial_id or run_id, what)


def _parent(mlflow_client: Any, experiment_id: str, experiment: str, run_id: str | None, spelling: Spelling) -> Any:
    if run_id is not None:
        try:
            run = mlflow_client.get_run(run_id)
        except Exception as exc:  # MlflowException: unknown run
            raise TrackingError(f"no MLflow run {run_id!r} ({type(exc).__name__}); pass a search run id "
                                f"of experiment {experiment!r}") from None
        role = run.data.tags.get(ROLE_TAG)
        if run.info.experiment_id != experiment_id or role != "search":
            what = "of another experiment" if run.info.experiment_id != experiment_id else \
                "a trial run" if PARENT_TAG in run.data.tags else "not a prunetune search run"
            raise TrackingError(f"MLflow run {run_id!r} is {what}, not a search run of experiment {experiment!r}; "
                                f"pass the search run's id (prunetune search prints it), or leave "
                                f"{spelling.name('search_run')} out for the latest search")
        return run
    runs = mlflow_client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'search'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TrackingError(f"experiment {experiment!r} holds no prunetune search run; "
                            "start one with `prunetune search --config ... --experiment NAME`")
    return runs[0]


def _record(run: Any) -> TrialRecord | None:
    m = run.data.metrics
    if not all(is_finite_number(m.get(k)) for k in ("accuracy", "macs", "macs_ratio")):
        return None
    return TrialRecord(
        run_id=run.info.run_id, trial_id=run.data.tags.get(TRIAL_TAG, run.info.run_name or run.info.run_id),
        accuracy=m["accuracy"], macs=m["macs"], params=m.get("params", math.nan), macs_ratio=m["macs_ratio"],
        test_accuracy=m.get("test_accuracy"), params_ratio=m.get("params_ratio"), target_macs=m.get("target_macs"),
        proxy_accuracy=m.get("proxy_accuracy"), label=run.data.tags.get(LABEL_TAG))
