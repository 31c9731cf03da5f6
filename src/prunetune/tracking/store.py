"""Where runs live: the tracking URI (absolute), the MLflow client, experiments by name.

The default store is ``sqlite:///<cwd>/mlflow.db``; a relative sqlite path or a bare ``*.db`` path is
made absolute, since Ray trials run in their own directories. Artifacts of experiments created here
go next to the database (``<db dir>/mlartifacts/<experiment>``) so a local store is one folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prunetune._database import url_problem
from prunetune._imports import require
from prunetune._paths import check_creatable, input_file_problem
from prunetune._text import masked_url
from prunetune._registry import unknown_name_message
from prunetune._spelling import FLAGS, Spelling
from prunetune.exceptions import TrackingError

SQLITE = "sqlite:///"
# an sqlite file, also through a named SQLAlchemy driver (sqlite+pysqlite:///path), which MLflow and Optuna take
SQLITE_FILE = re.compile(r"sqlite(\+\w+)?:///")
DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(uri: str | None = None, *, cwd: str | os.PathLike | None = None,
                         spelling: Spelling = FLAGS) -> str:
    """An absolute tracking URI: default ``sqlite:///<cwd>/mlflow.db``; servers pass through.

    ``spelling`` (here and in every function of this module that raises for the reader's input): how
    an error's fix names the option, the command's flag or the API's keyword (:mod:`prunetune._spelling`).
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    if uri is None or uri == "":
        return SQLITE + str((base / DEFAULT_DB).resolve())
    if prefix := sqlite_prefix(uri):
        path = uri[len(prefix):]
        if path == ":memory:":  # SQLAlchemy's in-memory database; made relative, it became a file named so
            raise TrackingError(f"MLflow store {uri!r} is an in-memory database: every result would be lost when "
                                f"the command ends; pass {spelling.given('tracking_uri', 'sqlite:///path/mlflow.db')}")
        return prefix + str((base / path).resolve()) if not path.startswith("/") else uri
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        return SQLITE + str((base / uri).resolve())
    return uri


def sqlite_prefix(uri: str) -> str | None:
    """``sqlite:///`` or ``sqlite+<driver>:///`` when ``uri`` names an sqlite file that way, else None."""
    found = SQLITE_FILE.match(uri)
    return found.group(0) if found else None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` (or ``sqlite+<driver>:///``) URI, else None."""
    prefix = sqlite_prefix(uri)
    return Path(uri[len(prefix):]) if prefix else None


def quiet_mlflow() -> None:
    """MLflow and alembic log table creation at INFO on every new database; keep stderr readable."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client(uri: str, spelling: Spelling = FLAGS) -> Any:
    """An ``MlflowClient`` for ``uri`` (extra: tracking)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars on export
    # against a server, MLflow prints "View run ... at: URL" on stdout per ended run (breaks --format json)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    tracking = require("mlflow.tracking", extra="tracking", purpose="MLflow tracking")
    quiet_mlflow()
    from mlflow.exceptions import MlflowException

    db = sqlite_path(uri)
    if db is not None:  # MLflow makes a missing folder for sqlite:/// only, not sqlite+<driver>:///
        db.parent.mkdir(parents=True, exist_ok=True)
    try:
        return tracking.MlflowClient(tracking_uri=uri)
    except MlflowException as exc:  # e.g. its file store, refused unless MLFLOW_ALLOW_FILE_STORE=true
        first = str(exc).strip().split(". ")[0][:200]
        raise TrackingError(f"MLflow cannot use the store {masked_url(uri)!r} ({first}); pass "
                            f"{spelling.given('tracking_uri', 'sqlite:///path/mlflow.db')} or an http(s) server") from None


def ui_command(uri: str) -> str:
    """The light ``mlflow ui`` command line for this store (bound to 127.0.0.1; a password in the URI
    shown as ``***``)."""
    return (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri {shlex.quote(masked_url(uri))} "
            "--workers 1 --host 127.0.0.1")


def ensure_experiment(mlflow_client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created (driver side, once) when missing."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active":
            raise TrackingError(f"MLflow experiment {name!r} is deleted in {masked_url(uri)}; restore it in MLflow "
                                "or choose another --experiment")
        return found.experiment_id
    db = sqlite_path(uri)
    location = None
    if db is not None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        location = (db.parent / "mlartifacts" / safe).resolve().as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


def check_store(uri: str, spelling: Spelling = FLAGS) -> None:
    """Raise :class:`TrackingError` unless ``uri`` is a store to read from: an existing sqlite database
    (reading one must not create an empty database as a side effect), or a server that answers."""
    db = sqlite_path(uri)
    if db is not None:
        if db.is_dir():
            raise TrackingError(f"MLflow store {str(db)!r} is a directory; pass {spelling.name('tracking_uri')} with "
                                "the database file the search wrote (e.g. mlflow.db)")
        problem = input_file_problem(db)
        if problem == "does not exist":
            raise TrackingError(f"no MLflow store at {db}; run `prunetune search` first, or pass "
                                f"{spelling.name('tracking_uri')} pointing at the store the search wrote")
        if problem is not None:
            raise TrackingError(f"MLflow store {str(db)!r} {problem}; pass {spelling.name('tracking_uri')} with the "
                                "database file the search wrote (e.g. mlflow.db)")
        _check_sqlite(db, reading=True, spelling=spelling)
    check_server(uri, spelling=spelling)


def check_writable_store(uri: str) -> None:
    """Raise before any work unless a search can write to ``uri``: a sqlite database that exists and is
    one, or can be created; a database URL that parses and whose driver imports; a server that answers.
    Other stores are left to MLflow."""
    try:
        urlsplit(uri)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise TrackingError(f"MLflow store {masked_url(uri)!r} is not a URL ({exc}); pass --tracking-uri "
                            "sqlite:///path/mlflow.db or an http(s) server") from None
    db = sqlite_path(uri)
    if db is not None:
        if db.is_dir():
            raise TrackingError(f"MLflow store {str(db)!r} is a directory; give a database file name "
                                "(--tracking-uri sqlite:///path/mlflow.db)")
        problem = input_file_problem(db)
        if problem is None:
            _check_sqlite(db)
        elif problem != "does not exist":  # a FIFO or a device: sqlite would block or fail after the work
            raise TrackingError(f"MLflow store {str(db)!r} {problem}; give a database file name "
                                "(--tracking-uri sqlite:///path/mlflow.db)")
        check_creatable(db.parent, "MLflow store", target=db)
    elif urlsplit(uri).scheme == "file":
        client(uri)  # MLflow refuses its file store by default: say so now, not after the training
    elif uri.split("://", 1)[0].split("+", 1)[0] in DATABASE_ENGINES:  # a database server (or sqlite+driver://)
        problem = url_problem(uri)
        if problem is not None:
            raise TrackingError(f"MLflow store {masked_url(uri)!r} cannot be opened: {problem}, or pass "
                                "--tracking-uri sqlite:///path/mlflow.db")
    check_server(uri)


DATABASE_ENGINES = ("postgresql", "mysql", "mssql", "sqlite")  # the SQLAlchemy stores MLflow opens


SQLITE_HEADER = b"SQLite format 3\x00"


MLFLOW_TABLES = frozenset({"experiments", "runs"})  # in every MLflow sqlite store, whatever its schema version


def _check_sqlite(db: Path, *, reading: bool = False, spelling: Spelling = FLAGS) -> None:
    """An sqlite file given as the MLflow store must be one: MLflow adds its tables (some 60) to any
    database it opens, so another database (an Optuna study beside the store, whose URL a search prints
    next to the store's) would be changed, and a study so changed breaks every later search there.
    ``reading``: the file must already hold an MLflow store (a reader never creates one); otherwise an
    empty database (no tables) is a new store."""
    try:
        with db.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise TrackingError(f"cannot read MLflow store {str(db)!r} ({exc.strerror or exc})") from None
    if head and head != SQLITE_HEADER:  # an empty file is a new database to sqlite
        raise TrackingError(f"MLflow store {str(db)!r} is not an sqlite database; pass {spelling.name('tracking_uri')} "
                            "with the store a search wrote, or a new file name")
    tables = sqlite_tables(db) if head else set()
    if MLFLOW_TABLES <= tables or (not tables and not reading):
        return
    if not tables:
        why = "is an empty database" if not head else "holds no tables (an empty database, or one locked or damaged)"
        raise TrackingError(f"MLflow store {str(db)!r} {why}, not a store a search wrote; pass "
                            f"{spelling.name('tracking_uri')} with the store the search wrote (e.g. mlflow.db)")
    listed = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
    what = "an Optuna study" if {"studies", "trials"} <= tables else f"another database (tables {listed})"
    raise TrackingError(f"{str(db)!r} is {what}, not an MLflow store, and is left unchanged; pass "
                        f"{spelling.name('tracking_uri')} with the store the search wrote (e.g. mlflow.db)"
                        + ("" if reading else " or a new file name"))


def sqlite_tables(db: Path) -> set[str]:
    """The table names of the sqlite database ``db``, read without writing it (empty when unreadable)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return set()


def check_server(uri: str, *, timeout_s: float = 5.0, spelling: Spelling = FLAGS) -> None:
    """Fail fast if an ``http(s)://`` tracking server takes no connections (MLflow would retry for minutes)."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise TrackingError(f"MLflow store {masked_url(uri)!r} is not a URL ({exc}); pass "
                            f"{spelling.given('tracking_uri', 'sqlite:///path/mlflow.db')} or an http(s) server") from None
    if parts.scheme not in ("http", "https"):
        return
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port that is not a number
        host = None
    if not host:
        raise TrackingError(f"tracking URI {masked_url(uri)!r} names no server host:port; e.g. http://127.0.0.1:5000")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TrackingError(f"no MLflow server answers at {masked_url(uri)} ({reason}); start it (mlflow server --host "
                            f"{host} --port {port}) or pass another {spelling.name('tracking_uri')}") from None


def find_experiment(mlflow_client: Any, uri: str, name: str, spelling: Spelling = FLAGS) -> str:
    """The id of an existing experiment, or a :class:`TrackingError` naming close matches."""
    check_store(uri, spelling)
    found = mlflow_client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage != "active":
        known = [e.name for e in mlflow_client.search_experiments() if e.name != "Default"]
        hint = (unknown_name_message("MLflow experiment", name, known) if known
                else f"unknown MLflow experiment {name!r}; the store has none yet")
        raise TrackingError(f"{hint} (store {masked_url(uri)}); pass the {spelling.name('experiment')} name that "
                            f"`prunetune search` used, or {spelling.name('tracking_uri')} for another store")
    return found.experiment_id
