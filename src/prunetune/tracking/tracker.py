"""Driver-side MLflow logging of a search: one parent run, one nested run per trial.

Call order: :meth:`SearchTracker.start_search` (or :meth:`~SearchTracker.resume_search`), then per
trial :meth:`~SearchTracker.start_trial`, any number of :meth:`~SearchTracker.log_epoch`, and one of
:meth:`~SearchTracker.finish_trial` (FINISHED) or :meth:`~SearchTracker.stop_trial` (KILLED when
stopped early or interrupted, FAILED on an error); last :meth:`~SearchTracker.end_search`.

Everything is written from the driver with an ``MlflowClient`` (one writer for the sqlite store; a
nested run carries an explicit ``mlflow.parentRunId`` tag). Params are summaries (at most 100 per
request); per-layer things are artifacts: ``config.json``, ``recipe.yaml``, ``plan.json`` and the
``widths.json`` table (``log_table``: group, channels, kept, kept fraction). Trial runs are named
``tNN · running`` and, when they end, ``t07 · 38.8% MACs · acc 0.996`` (or ``· failed``,
``· stopped early``, ``· interrupted``); finished ones carry ``on_front`` (true/false), kept current
as trials finish. The tracker pickles without its client, so Ray can store it with a callback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import yaml

from prunetune._numbers import is_finite_number
from prunetune.tracking import views
from prunetune.tracking.pareto import front_mask
from prunetune.tracking.store import client, ensure_experiment

PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "prunetune.role"
TRIAL_TAG = "prunetune.trial_id"
LABEL_TAG = "prunetune.trial"  # the short name, t07
ERROR_TAG = "prunetune.error"  # a FAILED trial run's error line
PLUGINS_TAG = "prunetune.plugins"  # a search's plugin modules, comma-separated (absent without any)
ENDED_TAG = "prunetune.ended"  # "stopped early": a KILLED run the scheduler stopped (not an interrupted one)
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
TRIAL_METRICS = ("accuracy", "test_accuracy", "macs", "params", "macs_ratio", "params_ratio", "target_macs",
                 "proxy_likelihood", "proxy_accuracy", "work_s", "wall_s", "latency_ms")
MAX_PARAMS = 100


class SearchTracker:
    """MLflow runs of one search (see the module docstring).

    Args:
        uri: an absolute tracking URI (:func:`prunetune.tracking.store.resolve_tracking_uri`).
        experiment: the MLflow experiment name (the search's name).
        budget: the MACs budget; a trial's ``on_front`` tag and the front plot consider every
            finished trial, the budget is drawn on the plot.
    """

    def __init__(self, uri: str, experiment: str, *, budget: float | None = None) -> None:
        self.uri, self.experiment, self.budget = uri, experiment, budget
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: Any = None
        self._runs: dict[str, str] = {}
        self._epochs: dict[str, int] = {}
        self._labels: dict[str, str] = {}
        self._next = 1
        self._digits = 2
        self._front = FrontTags()
        self._view_params: list[str] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "experiment": self.experiment, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, "budget": self.budget}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], state["experiment"], budget=state.get("budget"))  # type: ignore[misc]
        self.experiment_id, self.parent_run_id = state["experiment_id"], state["parent_run_id"]

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    # -- the search (parent run) -------------------------------------------------------------
    def start_search(self, *, params: Mapping[str, Any], metrics: Mapping[str, float], tags: Mapping[str, str],
                     texts: Mapping[str, str], trials: int = 99) -> str:
        """Create the parent run with the search settings, dense metrics and config artifacts."""
        self.experiment_id = ensure_experiment(self.client, self.uri, self.experiment)
        views.prepare_experiment(self.client, self.experiment_id)
        run = self.client.create_run(self.experiment_id, run_name=self.experiment,
                                     tags={ROLE_TAG: "search", **tags})
        self.parent_run_id = run.info.run_id
        self._digits = max(2, len(str(trials)))
        self._log(self.parent_run_id, params=params, metrics=metrics)
        for name, text in texts.items():
            self.client.log_text(self.parent_run_id, text, name)
        return self.parent_run_id

    def resume_search(self, parent_run_id: str, *, trials: int = 99) -> None:
        """Reopen the parent run of an interrupted search; trial runs left RUNNING become KILLED.

        Trial numbers continue after the highest one recorded, and the ``on_front`` tags continue
        from the finished trials.
        """
        run = self.client.get_run(parent_run_id)
        self.experiment_id, self.parent_run_id = run.info.experiment_id, parent_run_id
        self._digits = max(2, len(str(trials)))
        views.prepare_experiment(self.client, self.experiment_id)
        for child in self.children():
            label = child.data.tags.get(LABEL_TAG)
            if label and label[1:].isdigit():
                self._next = max(self._next, int(label[1:]) + 1)
            if child.info.status == RUNNING:
                self.client.set_terminated(child.info.run_id, KILLED)
                if label:
                    self.client.update_run(child.info.run_id, name=f"{label} · interrupted")
            elif child.info.status == FINISHED:
                m = child.data.metrics
                if is_finite_number(m.get("accuracy")) and is_finite_number(m.get("macs")):
                    self._front.add(child.info.run_id, m["accuracy"], m["macs"],
                                    child.data.tags.get(views.FRONT_TAG) == "true")
        self.client.update_run(parent_run_id, status=RUNNING)

    def end_search(self, status: str, metrics: Mapping[str, float] | None = None) -> None:
        if self.parent_run_id is None:
            return
        for trial_id in list(self._runs):
            self.stop_trial(trial_id, KILLED)
        if metrics:
            self._log(self.parent_run_id, metrics=metrics)
        self.client.set_terminated(self.parent_run_id, status)

    def log_search(self, *, metrics: Mapping[str, float] | None = None, texts: Mapping[str, str] | None = None) -> None:
        """More of the parent run: metrics and text artifacts (e.g. the screened pool)."""
        if metrics:
            self._log(self.parent_run_id, metrics=metrics)
        for name, text in (texts or {}).items():
            self.client.log_text(self.parent_run_id, text, name)

    def children(self) -> list[Any]:
        """The trial runs of this search (any status)."""
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                                       max_results=50000)

    # -- trials (nested runs) ------------------------------------------------------------------
    def start_trial(self, trial_id: str, config: Mapping[str, Any]) -> str:
        """Create the nested run of a trial, named ``tNN · running``, with its config as params
        (summary) and ``config.json``."""
        label = f"t{self._next:0{self._digits}d}"
        self._next += 1
        run = self.client.create_run(self.experiment_id, run_name=f"{label} · running", tags={
            PARENT_TAG: self.parent_run_id, ROLE_TAG: "trial", TRIAL_TAG: trial_id, LABEL_TAG: label})
        run_id = run.info.run_id
        self._runs[trial_id], self._epochs[trial_id], self._labels[trial_id] = run_id, 0, label
        params = trial_params(config)
        self._log(run_id, params=params)
        self.client.log_dict(run_id, dict(config), "config.json")
        if set(params) - set(self._view_params):  # the shared table view shows the sampled params
            self._view_params = list(dict.fromkeys([*self._view_params, *params]))
            views.set_view(self.client, self.experiment_id, self._view_params)
        return run_id

    def label(self, trial_id: str) -> str:
        """The trial's short name (``t07``), or its Ray id before it started."""
        return self._labels.get(trial_id, trial_id)

    def log_epoch(self, trial_id: str, metrics: Mapping[str, Any], epoch: int) -> None:
        """Per-epoch curves: ``epoch_accuracy`` (val) and ``epoch_loss`` at step ``epoch``."""
        run_id = self._runs.get(trial_id)
        if run_id is None or epoch <= self._epochs.get(trial_id, 0):
            return
        curve = {f"epoch_{k}": metrics[k] for k in ("accuracy", "loss") if is_finite_number(metrics.get(k))}
        self._log(run_id, metrics=curve, step=epoch)
        self._epochs[trial_id] = epoch

    def finish_trial(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Final metrics, the rest of the curves, ``recipe.yaml``/``plan.json`` and the ``widths.json``
        table; the run is renamed ``tNN · 38.8% MACs · acc 0.996``, ``on_front`` tags are updated; FINISHED."""
        run_id = self._runs.get(trial_id)
        if run_id is None:
            return
        for entry in result.get("history", []):
            self.log_epoch(trial_id, entry, int(entry.get("epoch", 0)))
        self._log(run_id, metrics={k: result[k] for k in TRIAL_METRICS if is_finite_number(result.get(k))})
        plan = result.get("plan")
        if plan is not None:
            self.client.log_dict(run_id, plan, "plan.json")
            self.client.log_table(run_id, widths_table(plan), "widths.json")
        if result.get("recipe") is not None:
            self.client.log_text(run_id, yaml.safe_dump(result["recipe"], sort_keys=False), "recipe.yaml")
        label = self._labels.get(trial_id, trial_id)
        acc, ratio = result.get("accuracy"), result.get("macs_ratio")
        if is_finite_number(acc) and is_finite_number(ratio):
            self.client.update_run(run_id, name=f"{label} · {100 * ratio:.1f}% MACs · acc {acc:.3f}")
            if is_finite_number(result.get("macs")):
                self._front.add(run_id, acc, result["macs"], None)
        self._close(trial_id, FINISHED)
        for changed, on in self._front.changes():
            self.client.set_tag(changed, views.FRONT_TAG, "true" if on else "false")

    def stop_trial(self, trial_id: str, status: str, *, error: str | None = None, early: bool = False) -> None:
        """End a trial run early: KILLED (``early``: stopped by the scheduler; else interrupted) or
        FAILED (tagged with the error)."""
        run_id = self._runs.get(trial_id)
        if run_id is None:
            return
        if error and error.strip():  # a traceback's last line is the exception and its message
            self.client.set_tag(run_id, ERROR_TAG, error.strip().splitlines()[-1][:4000])
        if early:
            self.client.set_tag(run_id, ENDED_TAG, "stopped early")
        what = "failed" if status == FAILED else "stopped early" if early else "interrupted"
        self.client.update_run(run_id, name=f"{self._labels.get(trial_id, trial_id)} · {what}")
        self._close(trial_id, status)

    def _close(self, trial_id: str, status: str) -> None:
        run_id = self._runs.pop(trial_id)
        self._epochs.pop(trial_id, None)
        self.client.set_terminated(run_id, status)

    def _log(self, run_id: str, *, params: Mapping[str, Any] | None = None,
             metrics: Mapping[str, float] | None = None, step: int = 0) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        items = [Param(k, _param_value(v)) for k, v in (params or {}).items()]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(run_id, params=items[i:i + MAX_PARAMS])
        values = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
        if values:
            self.client.log_batch(run_id, metrics=values)


class FrontTags:
    """Which finished runs are on the accuracy-vs-MACs front, and which tags must change."""

    def __init__(self) -> None:
        self.points: dict[str, tuple[float, float]] = {}
        self.tagged: dict[str, bool | None] = {}

    def add(self, run_id: str, accuracy: float, macs: float, tagged: bool | None) -> None:
        self.points[run_id] = (float(accuracy), float(macs))
        self.tagged[run_id] = tagged

    def changes(self) -> list[tuple[str, bool]]:
        """``(run_id, on_front)`` for each run whose tag is missing or stale; they count as set after."""
        ids = list(self.points)
        mask = front_mask([self.points[i][0] for i in ids], [self.points[i][1] for i in ids])
        out = [(i, bool(on)) for i, on in zip(ids, mask) if self.tagged.get(i) is not bool(on)]
        self.tagged.update(dict(out))
        return out


def widths_table(plan: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Per-group widths of a plan as a table (MLflow ``log_table``): group, channels, kept, kept fraction."""
    groups = plan["groups"]
    names = list(groups)
    channels = [int(groups[g]["channels"]) for g in names]
    kept = [len(groups[g]["kept"]) for g in names]
    return {"group": names, "channels": channels, "kept": kept,
            "kept_fraction": [round(k / c, 4) if c else 0.0 for k, c in zip(kept, channels)]}


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as MLflow params; per-group ratios only when few (they are in ``config.json``)."""
    if len(config) <= MAX_PARAMS:
        return dict(config)
    return {k: v for k, v in config.items() if not k.startswith("ratio.")}


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]
