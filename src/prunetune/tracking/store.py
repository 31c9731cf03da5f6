"""Where runs live: the tracking URI (absolute), the MLflow client, experiments by name.

The default store is ``sqlite:///<cwd>/mlflow.db``; a relative sqlite path or a bare ``*.db`` path is
made absolute, since Ray trials run in their own directories. Artifacts of experiments created here
go next to the database (``<db dir>/mlartifacts/<experiment>``) so a local store is one folder.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from prunetune._imports import require
from prunetune._registry import unknown_name_message
from prunetune.exceptions import TrackingError

SQLITE = "sqlite:///"
DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(uri: str | None = None, *, cwd: str | os.PathLike | None = None) -> str:
    """An absolute tracking URI: default ``sqlite:///<cwd>/mlflow.db``; servers pass through."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    if uri is None or uri == "":
        return SQLITE + str((base / DEFAULT_DB).resolve())
    if uri.startswith(SQLITE):
        path = uri[len(SQLITE):]
        return SQLITE + str((base / path).resolve()) if not path.startswith("/") else uri
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        return SQLITE + str((base / uri).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def quiet_mlflow() -> None:
    """MLflow and alembic log table creation at INFO on every new database; keep stderr readable."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` (extra: tracking)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars on export
    tracking = require("mlflow.tracking", extra="tracking", purpose="MLflow tracking")
    quiet_mlflow()
    return tracking.MlflowClient(tracking_uri=uri)


def ui_command(uri: str) -> str:
    """The light ``mlflow ui`` command line for this store (bound to 127.0.0.1)."""
    return (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri {uri} "
            "--workers 1 --host 127.0.0.1")


def ensure_experiment(mlflow_client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created (driver side, once) when missing."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active":
            raise TrackingError(f"MLflow experiment {name!r} is deleted in {uri}; restore it in MLflow "
                                "or choose another --experiment")
        return found.experiment_id
    db = sqlite_path(uri)
    location = None
    if db is not None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        location = (db.parent / "mlartifacts" / safe).resolve().as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


def check_store(uri: str) -> None:
    """Raise :class:`TrackingError` if ``uri`` is a sqlite store that does not exist (reading one must
    not create an empty database as a side effect)."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"no MLflow store at {db}; run `prunetune search` first, or pass --tracking-uri "
                            "pointing at the store the search wrote")


def find_experiment(mlflow_client: Any, uri: str, name: str) -> str:
    """The id of an existing experiment, or a :class:`TrackingError` naming close matches."""
    check_store(uri)
    found = mlflow_client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage != "active":
        known = [e.name for e in mlflow_client.search_experiments() if e.name != "Default"]
        hint = (unknown_name_message("MLflow experiment", name, known) if known
                else f"unknown MLflow experiment {name!r}; the store has none yet")
        raise TrackingError(f"{hint} (store {uri}); pass the --experiment name that `prunetune search` "
                            "used, or --tracking-uri for another store")
    return found.experiment_id
