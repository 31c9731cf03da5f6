"""How a search's MLflow experiment opens and what its runs table shows.

MLflow 3 decides an experiment's first page from its ``mlflow.experimentKind`` tag: without one a
new experiment opens on the GenAI "Overview" (traces). prunetune marks its experiments
``custom_model_development`` (the classic ML workflow), so they open on the runs.

MLflow's runs table shows no metric or param column until a user picks them, and its charts hide
all runs after the first ten. MLflow's own "share view" stores a table layout in an experiment tag
``mlflow.sharedViewState.<key>`` (JSON) that the URL ``#/experiments/<id>?viewStateShareKey=<key>``
opens; prunetune writes one such view, ``prunetune``: the key metrics and the sampled parameters as
columns, every run visible, sorted by validation accuracy. :func:`view_url` gives its address; the
experiment's description (``mlflow.note.content``) links it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from prunetune._text import masked_url

KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"
VIEW_KEY = "prunetune"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
KEY_METRICS = ("accuracy", "test_accuracy", "macs_ratio", "params", "proxy_accuracy")
FRONT_TAG = "on_front"
MAX_VIEW_PARAMS = 24


def column(kind: str, key: str) -> str:
    """MLflow's column id: ``metrics.`accuracy```, ``params.`lr```, ``tags.`on_front```."""
    return f"{kind}.`{key}`"


def view_state(params: Iterable[str] = ()) -> dict[str, Any]:
    """The shared view: key metrics, ``on_front``, up to 24 sampled params; all runs; best first."""
    params = [p for p in params if not p.startswith("ratio.")][:MAX_VIEW_PARAMS]
    columns = [column("metrics", m) for m in KEY_METRICS] + [column("tags", FRONT_TAG)]
    columns += [column("params", p) for p in params]
    return {"selectedColumns": columns, "runsHiddenMode": "SHOW_ALL", "orderByKey": column("metrics", "accuracy"),
            "orderByAsc": False, "hideEmptyCharts": True}


def set_view(mlflow_client: Any, experiment_id: str, params: Iterable[str] = ()) -> None:
    mlflow_client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view_state(params)))


def prepare_experiment(mlflow_client: Any, experiment_id: str) -> None:
    """Mark the experiment as classic ML (opens on its runs), write the view and a description,
    leaving a kind or description the user set alone."""
    tags = mlflow_client.get_experiment(experiment_id).tags
    if KIND_TAG not in tags:
        mlflow_client.set_experiment_tag(experiment_id, KIND_TAG, KIND)
    if NOTE_TAG not in tags:
        mlflow_client.set_experiment_tag(experiment_id, NOTE_TAG, note(experiment_id))
    if VIEW_TAG not in tags:
        set_view(mlflow_client, experiment_id)


def note(experiment_id: str) -> str:
    return (f"prunetune search. Open the [prunetune view](#/experiments/{experiment_id}?viewStateShareKey={VIEW_KEY}) "
            "for accuracy, test accuracy, MACs ratio, params and the sampled parameters of every trial. Trial runs "
            "are named `tNN · MACs · acc`; the tag `on_front` marks the Pareto front (accuracy vs MACs); the "
            "search run holds `front.html` (interactive) and `front.png`.")


def view_url(tracking_uri: str, experiment_id: str) -> str:
    """The view's address on the tracking server (``mlflow ui``'s default address for a local store)."""
    return f"{_base(tracking_uri)}/#/experiments/{experiment_id}?viewStateShareKey={VIEW_KEY}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def _base(tracking_uri: str) -> str:
    """The server's address (its password, if the URI holds one, as ``***``); ``mlflow ui``'s default
    for a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return masked_url(tracking_uri.rstrip("/"))
    return "http://127.0.0.1:5000"
