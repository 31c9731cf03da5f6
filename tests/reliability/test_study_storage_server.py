"""A study storage on a database server is reached before any work: a server that refuses, or does
not answer, is one error line naming the URL (its password masked) and the fix, before the dense
training, the scores and Ray.

No server driver (psycopg, pymysql, ...) is installed with the tests, so the server side is a fake
SQLAlchemy engine; the driver check is skipped for it.
"""

from __future__ import annotations

import json
import shlex
import threading

import pytest
import yaml

from prunetune.cli import main
from prunetune.search import study
from reliability_helpers import TINY_RECIPE, snapshot

pytest.importorskip("mlflow")
pytest.importorskip("ray")
sqlalchemy = pytest.importorskip("sqlalchemy")

URL = "postgresql+psycopg2://prune:s3cret-pw@127.0.0.1:9/studies"
SEARCH = {
    "recipe": {k: v for k, v in TINY_RECIPE.items() if k not in ("criterion", "allocation")},
    "space": {"ratios": "uniform", "criteria": ["l1"], "normalizers": ["rank"]},
    "macs_budget": 0.5, "trials": 2, "concurrency": 1, "experiment": "e",
}


class FakeEngine:
    """What ``create_engine`` returns: ``connect()`` runs ``behaviour`` (raise, or hang)."""

    def __init__(self, behaviour, seen: dict, url, **kwargs) -> None:
        self.behaviour = behaviour
        seen.update(url=str(url), **kwargs)

    def connect(self):
        return self.behaviour()

    def dispose(self) -> None:
        pass


def _refused():
    raise sqlalchemy.exc.OperationalError(
        "connect", {}, Exception('connection to server at "127.0.0.1", port 9 failed: Connection refused\n'
                                 "\tIs the server running on that host and accepting TCP/IP connections?"))


def _wrong_password():
    raise sqlalchemy.exc.OperationalError(
        "connect", {}, Exception('password authentication failed for user "prune" (tried s3cret-pw)'))


def _fake_server(monkeypatch, behaviour) -> dict:
    seen: dict = {}
    monkeypatch.setattr(study, "_check_driver", lambda url: None)  # psycopg2 is not installed here
    monkeypatch.setattr(sqlalchemy, "create_engine", lambda url, **kw: FakeEngine(behaviour, seen, url, **kw))
    return seen


def _run_search(tmp_path, monkeypatch, capfd, url: str = URL) -> str:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SEARCH, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    capfd.readouterr()
    code = main(shlex.split(f"search --config s.yaml --study-storage {url}"))
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert snapshot(tmp_path) == before  # nothing created: no store, no runs folder, no lock
    assert "s3cret" not in err
    return lines[0]


@pytest.mark.parametrize("behaviour, reason", [(_refused, "Connection refused"),
                                               (_wrong_password, "password authentication failed")],
                         ids=["refused", "wrong-password"])
def test_a_study_server_that_refuses_is_one_line_before_any_work(behaviour, reason, tmp_path, monkeypatch, capfd,
                                                                 no_expensive_work) -> None:
    # was accepted: the search trained the dense model, scored it, started Ray and opened MLflow, then
    # failed on the first RDBStorage with an OperationalError traceback
    seen = _fake_server(monkeypatch, behaviour)
    line = _run_search(tmp_path, monkeypatch, capfd)
    assert "study_storage 'postgresql+psycopg2://prune:***@127.0.0.1:9/studies' cannot be opened" in line, line
    assert reason in line and "start the database server or correct the URL" in line, line
    assert "--study-storage out" in line, line
    assert seen["connect_args"] == {"connect_timeout": 5}  # the driver's own bound on the attempt
    assert seen["poolclass"] is sqlalchemy.pool.NullPool  # one connection, closed again


def test_a_study_server_that_does_not_answer_is_reported_within_the_timeout(tmp_path, monkeypatch, capfd,
                                                                          no_expensive_work) -> None:
    release = threading.Event()
    _fake_server(monkeypatch, lambda: release.wait(60))  # a host that drops the packets: the driver hangs
    monkeypatch.setattr(study, "CONNECT_TIMEOUT_S", 0.5, raising=False)
    try:
        line = _run_search(tmp_path, monkeypatch, capfd)
    finally:
        release.set()
    assert line.endswith("study_storage 'postgresql+psycopg2://prune:***@127.0.0.1:9/studies': no database server "
                         "answered within 0.5 s; start the database server or correct the URL (host, port, user, "
                         "password, database), or leave --study-storage out for an sqlite file beside the MLflow "
                         "store"), line


def test_a_missing_driver_error_masks_the_password(tmp_path, monkeypatch, capfd, no_expensive_work) -> None:
    line = _run_search(tmp_path, monkeypatch, capfd, url="postgresql+nosuchdriver://prune:s3cret-pw@127.0.0.1:9/db")
    assert "'postgresql+nosuchdriver://prune:***@127.0.0.1:9/db' cannot be opened: no database driver" in line


def test_an_sqlite_study_in_a_folder_not_made_yet_is_created(tmp_path) -> None:
    # check_study_storage accepts a folder that can be created; opening the study then failed with
    # sqlite's "unable to open database file", after the dense training, the scores and Ray
    pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path}/new/deeper/optuna.db"
    study.check_study_storage(url)
    assert not (tmp_path / "new").exists()  # the check creates nothing
    storage = study.open_storage(url)
    assert not study.study_exists(storage, "e") and (tmp_path / "new" / "deeper" / "optuna.db").is_file()


def test_masked_url() -> None:
    assert study.masked_url("mysql+pymysql://u:p@w:rd@host:3306/db") == "mysql+pymysql://u:***@host:3306/db"
    assert study.masked_url("postgresql://u@host/db") == "postgresql://u@host/db"
    assert study.masked_url("sqlite:////tmp/o.db") == "sqlite:////tmp/o.db"


def test_the_password_is_not_written_down(tmp_path) -> None:
    """What a search records (search.yaml artifact, resume state identity, parent-run tags) shows the
    study storage's password as ***; a state written before the mask still resumes."""
    from prunetune.search.config import parse_search_config
    from prunetune.search.runner import _parent_tags

    config = parse_search_config({**SEARCH, "study_storage": URL, "storage_path": str(tmp_path)}, cwd=tmp_path)
    assert config.settings.study_url == URL  # the search itself connects with it
    from prunetune._text import masked_url
    from prunetune.search.runner import _parent_params
    from prunetune.tracking.store import ui_command
    from prunetune.tracking.views import run_url, view_url

    assert "s3cret-pw" not in ui_command("postgresql://prune:s3cret-pw@127.0.0.1:9/mlflow")
    assert "s3cret-pw" not in repr(_parent_params(config))
    for url in ("http://bob:s3cret-pw@mlflow:5000", "https://bob:s3cret-pw@mlflow/"):
        assert "s3cret-pw" not in view_url(url, "1") + run_url(url, "1", "r")
    for url in ("postgresql://u:s3cret/pw@h/db", "postgresql://u:s3c@ret-pw@h:5/db",  # what SQLAlchemy reads
                "postgresql://u@h/db?password=s3cret-pw", "mysql://h/db?user=u&pwd=s3cret-pw&x=1"):
        assert "s3cret" not in masked_url(url) and "h" in masked_url(url), masked_url(url)
    assert masked_url("sqlite:////tmp/a@b.db") == "sqlite:////tmp/a@b.db"
    recorded = [config.to_yaml(), repr(config.identity()),
                repr(_parent_tags(config, type("T", (), {"fingerprint": "f"})(), tmp_path))]
    for text in recorded:
        assert "s3cret-pw" not in text and "prune:***@127.0.0.1:9/studies" in text
    from prunetune.search import resume
    old = {"version": resume.STATE_VERSION,
           "identity": json.loads(json.dumps({**config.identity(), "study_storage": URL}, default=str))}
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / resume.STATE_FILE).write_text(json.dumps(old))
    assert resume.resume_state(config, exp, None)["identity"]["study_storage"] == URL  # it resumes
