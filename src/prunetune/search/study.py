"""The fine-tune study in an RDB storage: where it lives, its name, and what a resume repairs in it.

prunetune's searcher (:mod:`prunetune.search.optuna_bridge`) keeps its Optuna study in an
RDB storage (an SQLAlchemy URL), so that

- ``optuna-dashboard <url>`` shows the study while the search runs and after;
- the study survives the driver: after ``kill -9`` the rerun loads it, with every told trial and the
  enqueued (screened) candidates that had not started yet.

The default is an sqlite file beside the MLflow store (``sqlite:///<dir>/<db stem>-optuna.db``; for a
tracking server, ``<storage_path>/optuna.db``). It is not the MLflow database itself: MLflow and
Optuna both keep their schema version in an ``alembic_version`` table of their own, which one
database cannot hold twice. Optuna is imported only inside the functions.

A database server (``postgresql://...``, ``mysql+pymysql://...``) is checked before any work: its
driver must import and the server must take a connection within :data:`CONNECT_TIMEOUT_S`
(:func:`check_study_storage`); errors show the URL with its password masked (:func:`masked_url`).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunetune._database import first_line, url_problem
from prunetune._paths import check_creatable, input_file_problem
from prunetune._text import masked_url, short
from prunetune.exceptions import ConfigError
from prunetune.tracking.store import MLFLOW_TABLES, SQLITE, sqlite_path, sqlite_prefix, sqlite_tables

log = logging.getLogger("prunetune")
RAY_TRIAL_ATTR = "ray_trial_id"  # user attribute of an Optuna trial: the Ray trial it belongs to
SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
CONNECT_TIMEOUT_S = 5.0  # a database server that takes no connection by then is reported before any work
# the connect argument that bounds a driver's own connection attempt, in seconds (the others are
# bounded by waiting on the attempt in a thread, :func:`_answers`)
_TIMEOUT_ARG = {"psycopg2": "connect_timeout", "psycopg": "connect_timeout", "psycopg2cffi": "connect_timeout",
                "pg8000": "timeout", "pymysql": "connect_timeout", "mysqldb": "connect_timeout",
                "mariadbconnector": "connect_timeout", "mysqlconnector": "connection_timeout",
                "oracledb": "tcp_connect_timeout", "pyodbc": "timeout", "pymssql": "login_timeout"}


def default_study_storage(tracking_uri: str, storage_path: str | os.PathLike) -> str:
    """``sqlite:///<mlflow db dir>/<db stem>-optuna.db``, or ``<storage_path>/optuna.db`` for a server store."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        return SQLITE + str(db.with_name(f"{db.stem}-optuna.db"))
    return SQLITE + str(Path(storage_path) / "optuna.db")


def resolve_study_storage(value: Any, *, cwd: str | os.PathLike) -> str:
    """An absolute storage URL: a bare path is an sqlite file (relative to ``cwd``), URLs pass through."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"study_storage must be an RDB URL (sqlite:///optuna.db, postgresql://...) or an sqlite "
                          f"file path, got {short(value)}")
    if prefix := sqlite_prefix(value):
        path = value[len(prefix):]
        if path == ":memory:":  # SQLAlchemy's in-memory database; made relative, it became a file named so
            raise ConfigError(f"study_storage {value!r} is an in-memory database: the study and its resume state "
                              "would be lost; write sqlite:///relative/path.db or sqlite:////absolute/path.db")
        return value if path.startswith("/") else prefix + str((Path(cwd) / path).resolve())
    if "://" not in value:
        return SQLITE + str((Path(cwd) / value).resolve())
    scheme = value.split("://", 1)[0].split("+", 1)[0]
    if scheme not in SCHEMES:
        raise ConfigError(f"study_storage {short(masked_url(value))} is not an RDB URL Optuna can open; use "
                          "sqlite:///FILE, postgresql://... or mysql://...")
    return value


def check_study_storage(url: str, tracking_uri: str | None = None) -> None:
    """Before any work: an sqlite study file must be an sqlite database or creatable, and no MLflow store
    (``tracking_uri``'s, or any other: both keep their schema version in a table named alembic_version);
    a database server must have its driver installed and take a connection within
    :data:`CONNECT_TIMEOUT_S` (nothing is written to it)."""
    db = sqlite_path(url)
    if db is None and _backend(url) == "sqlite":  # sqlite:// (in memory), sqlite://user@host/...
        raise ConfigError(f"study_storage {short(masked_url(url))} names no sqlite file (an in-memory study, or "
                          "an sqlite URL with a host or user), so the study and its resume state would be lost; "
                          "write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if db is None or not url.startswith(SQLITE):  # a server, or an sqlite file through a named driver
        _check_driver(url)
    if db is None:
        _check_server(url)
        return
    if db.is_dir():
        raise ConfigError(f"study_storage {str(db)!r} is a directory; give a database file name")
    problem = input_file_problem(db)
    if problem not in (None, "does not exist"):  # a FIFO or a device: sqlite would block or fail after the work
        raise ConfigError(f"study_storage {str(db)!r} {problem}; pass --study-storage with a database file name")
    store = sqlite_path(tracking_uri) if tracking_uri else None
    mlflow_store = store is not None and os.path.abspath(store) == os.path.abspath(db)
    if db.is_file():
        with db.open("rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise ConfigError(f"study_storage {str(db)!r} is not an sqlite database; pass --study-storage with "
                              "another file name")
        mlflow_store = mlflow_store or (bool(head) and MLFLOW_TABLES <= sqlite_tables(db))
    if mlflow_store:
        raise ConfigError(f"study_storage {str(db)!r} is an MLflow store: the Optuna study needs a database of its "
                          "own (both keep their schema version in a table named alembic_version); pass "
                          "--study-storage with another file name, or leave it out (mlflow-optuna.db)")
    check_creatable(db.parent, "study_storage (the Optuna study)", target=db)


def _backend(url: str) -> str | None:
    """The SQLAlchemy backend of ``url`` (``sqlite`` for ``sqlite+pysqlite://...``), None if it does not parse."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).get_backend_name()
    except Exception:  # noqa: BLE001 - ArgumentError, ValueError (a port that is no number): _check_driver says so
        return None


def _check_driver(url: str) -> None:
    """A database URL must parse and its SQLAlchemy dialect and driver import (a missing one failed
    after the training)."""
    problem = url_problem(url)
    if problem is not None:
        raise ConfigError(f"study_storage {short(masked_url(url))} cannot be opened: {problem}, or give an "
                          "sqlite file")


def _check_server(url: str, timeout_s: float | None = None) -> None:
    """The database server of ``url`` must take a connection within ``timeout_s`` (default
    :data:`CONNECT_TIMEOUT_S`): one connection, opened and closed, no table created. A server that is
    not there, a wrong password or database failed after the dense training, the scores and Ray."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    shown = short(masked_url(url))
    fix = ("start the database server or correct the URL (host, port, user, password, database), or leave "
           "--study-storage out for an sqlite file beside the MLflow store")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":  # a file (sqlite+pysqlite:///...), no server; connecting would create it
        return
    arg = _TIMEOUT_ARG.get(parsed.get_driver_name())
    connect_args = {arg: max(1, math.ceil(timeout_s))} if arg else {}
    try:
        engine = create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    except Exception as exc:  # noqa: BLE001 - e.g. an option the dialect refuses
        raise ConfigError(f"study_storage {shown} cannot be opened ({type(exc).__name__}: "
                          f"{first_line(exc, url)}); {fix}") from None
    try:
        answered, error = _answers(lambda: engine.connect().close(), timeout_s + 1)
    finally:
        if answered:  # a connection attempt still running keeps its engine; it ends with its timeout
            engine.dispose()
    if not answered:
        raise ConfigError(f"study_storage {shown}: no database server answered within {timeout_s:g} s; {fix}")
    if error is not None:
        raise ConfigError(f"study_storage {shown} cannot be opened ({type(error).__name__}: "
                          f"{first_line(error, url)}); {fix}") from None


def _answers(connect: Any, timeout_s: float) -> tuple[bool, BaseException | None]:
    """Run ``connect()`` in a daemon thread for at most ``timeout_s``: (finished, the error it raised)."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            connect()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=attempt, name="prunetune-study-storage-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return (True, outcome[0]) if outcome else (False, None)


def open_storage(url: str) -> Any:
    """An ``optuna.storages.RDBStorage`` for ``url`` (sqlite waits for a reader such as the dashboard)."""
    import optuna

    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    db = sqlite_path(url)
    if db is not None:  # checked creatable before the work (check_study_storage); sqlite makes no folders
        db.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def study_exists(storage: Any, name: str) -> bool:
    import optuna

    return name in {s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)}


def new_study_name(storage: Any, experiment: str, parent_run_id: str) -> str:
    """The experiment's name, or (taken by an earlier search) the name with the MLflow parent run's id."""
    return experiment if not study_exists(storage, experiment) else f"{experiment}-{parent_run_id[:8]}"


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {shlex.quote(url)}"


def repair(storage: Any, name: str, finished: Mapping[str, tuple[float, float]], ended: Mapping[str, str]) -> int:
    """Bring the study in line with MLflow, the record of what finished, after the driver died.

    Trials left RUNNING in the study are told what MLflow recorded for their Ray trial
    (``finished``: values; ``ended``: FAIL or PRUNED); those MLflow has no end for were lost with the
    driver: their enqueued parameters (a screened candidate) are enqueued again and they are told
    FAIL. Returns how many trials were enqueued again.
    """
    import optuna

    State = optuna.trial.TrialState
    study = optuna.load_study(study_name=name, storage=storage)
    again = 0
    for trial in study.get_trials(deepcopy=False, states=(State.RUNNING,)):
        ray_id = trial.user_attrs.get(RAY_TRIAL_ATTR)
        values = finished.get(ray_id)
        if values is not None and all(math.isfinite(v) for v in values):
            study.tell(trial.number, list(values), skip_if_finished=True)
            continue
        if ray_id in ended:
            study.tell(trial.number, state=State[ended[ray_id]], skip_if_finished=True)
            continue
        fixed = trial.system_attrs.get("fixed_params")
        if fixed:
            study.enqueue_trial(dict(fixed))
            again += 1
        study.tell(trial.number, state=State.FAIL, skip_if_finished=True)
    return again
