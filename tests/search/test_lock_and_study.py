"""One search per experiment (a pid lock file), and the fine-tune study's storage and repair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from prunetune.exceptions import ConfigError
from prunetune.search import study
from prunetune.search.lock import LOCK_FILE, ExperimentLock


def test_lock_refuses_a_second_holder_and_cleans_up(tmp_path) -> None:
    exp = tmp_path / "runs" / "exp"
    with ExperimentLock(exp, "exp"):
        held = json.loads((exp / LOCK_FILE).read_text())
        assert held["pid"] == os.getpid()
        code = textwrap.dedent(f"""
            from prunetune.search.lock import ExperimentLock
            ExperimentLock({str(exp)!r}, "exp").acquire()
        """)
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert other.returncode != 0
        assert f"search 'exp' is already running in {exp} (pid {os.getpid()}" in other.stderr
        assert f"kill {os.getpid()}" in other.stderr
    assert not (tmp_path / "runs").exists()  # the folders it made are gone again


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "x", "since": "then"}))  # kill -9'd holder
    (exp / "keep.json").write_text("{}")
    with ExperimentLock(exp, "exp"):
        assert json.loads((exp / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (exp / LOCK_FILE).exists() and (exp / "keep.json").exists()


def test_study_storage_defaults_and_urls(tmp_path) -> None:
    assert study.default_study_storage(f"sqlite:///{tmp_path}/m/mlflow.db", tmp_path / "runs") == \
        f"sqlite:///{tmp_path}/m/mlflow-optuna.db"
    assert study.default_study_storage("http://127.0.0.1:5000", tmp_path / "runs") == \
        f"sqlite:///{tmp_path}/runs/optuna.db"
    assert study.resolve_study_storage("s.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/s.db"
    assert study.resolve_study_storage("sqlite:///x/s.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/x/s.db"
    assert study.resolve_study_storage("postgresql://u@h/db", cwd=tmp_path) == "postgresql://u@h/db"
    with pytest.raises(ConfigError, match="not an RDB URL"):
        study.resolve_study_storage("redis://h", cwd=tmp_path)
    (tmp_path / "bad.db").write_text("not sqlite")
    with pytest.raises(ConfigError, match="not an sqlite database"):
        study.check_study_storage(f"sqlite:///{tmp_path}/bad.db")


def test_an_sqlite_url_with_a_driver_gets_the_sqlite_file_checks(tmp_path) -> None:
    driver = "sqlite+pysqlite:///"  # SQLAlchemy's spelling of sqlite with its driver named: the same file
    assert study.resolve_study_storage(driver + "x/s.db", cwd=tmp_path) == f"{driver}{tmp_path}/x/s.db"
    assert study.default_study_storage(f"{driver}{tmp_path}/m/mlflow.db", tmp_path / "runs") == \
        f"sqlite:///{tmp_path}/m/mlflow-optuna.db"
    (tmp_path / "bad.db").write_text("not sqlite")
    with pytest.raises(ConfigError, match="not an sqlite database"):
        study.check_study_storage(f"{driver}{tmp_path}/bad.db")
    with pytest.raises(ConfigError, match="is a directory"):
        study.check_study_storage(f"{driver}{tmp_path}")
    with pytest.raises(ConfigError, match="is an MLflow store"):
        study.check_study_storage(f"{driver}{tmp_path}/m.db", f"sqlite:///{tmp_path}/m.db")
    url = f"{driver}{tmp_path}/new/o.db"
    study.check_study_storage(url)
    study.open_storage(url)  # sqlite makes no folders: the missing one is created
    assert (tmp_path / "new" / "o.db").is_file()


@pytest.mark.parametrize("url", ["sqlite://bob:hunter2@/x.db", "sqlite://", "sqlite+pysqlite://"])
def test_an_sqlite_url_that_names_no_file_is_refused_before_any_work(url) -> None:
    """``sqlite://user:pw@/x.db`` passed the checks and failed with an ArgumentError traceback after the
    scoring and Ray; an in-memory study ran, and took the resume state with it when the search ended."""
    with pytest.raises(ConfigError, match="names no sqlite file") as caught:
        study.check_study_storage(url)
    assert "hunter2" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite+pysqlite:///:memory:"])
def test_an_in_memory_sqlite_study_is_refused_not_made_a_file(url, tmp_path) -> None:
    """Made relative to the working folder, ``sqlite:///:memory:`` became a file named ``:memory:``."""
    with pytest.raises(ConfigError, match="in-memory database"):
        study.resolve_study_storage(url, cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_search_config_takes_study_storage(tmp_path) -> None:
    from prunetune.search import parse_search_config
    from search.conftest import TINY_RECIPE

    base = {"recipe": TINY_RECIPE, "macs_budget": 0.5}
    default = parse_search_config(base, cwd=tmp_path).settings
    assert default.study_url == f"sqlite:///{tmp_path}/mlflow-optuna.db"
    given = parse_search_config(base, cwd=tmp_path, overrides={"study_storage": "o.db"}).settings
    assert given.study_url == f"sqlite:///{tmp_path}/o.db"
    assert "study_storage" in parse_search_config(base, cwd=tmp_path).identity()


def test_repair_tells_what_mlflow_recorded_and_queues_lost_candidates(tmp_path) -> None:
    optuna = pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path}/o.db"
    storage = study.open_storage(url)
    s = optuna.create_study(study_name="exp", storage=storage, directions=["maximize", "minimize"])
    s.enqueue_trial({"x": 1.0})
    s.enqueue_trial({"x": 2.0})
    s.enqueue_trial({"x": 3.0})
    trials = []
    for ray_id in ("done", "failed", "lost"):
        t = s.ask()
        t.suggest_float("x", 0, 10)
        t.set_user_attr(study.RAY_TRIAL_ATTR, ray_id)
        trials.append(t)
    lonely = s.ask()  # sampled, never reached MLflow
    lonely.suggest_float("x", 0, 10)
    again = study.repair(storage, "exp", {"done": (0.9, 100.0)}, {"failed": "FAIL"})
    assert again == 1  # the screened candidate of "lost"; the sampled one is simply failed
    by_ray = {t.user_attrs.get(study.RAY_TRIAL_ATTR): t for t in s.get_trials()}
    assert by_ray["done"].state.name == "COMPLETE" and by_ray["done"].values == [0.9, 100.0]
    assert by_ray["failed"].state.name == "FAIL" and by_ray["lost"].state.name == "FAIL"
    waiting = [t.system_attrs["fixed_params"] for t in s.get_trials() if t.state.name == "WAITING"]
    assert waiting == [{"x": 3.0}]  # "lost" ran the third enqueued candidate
    assert study.new_study_name(storage, "exp", "abcdef123456") == "exp-abcdef12"
    assert study.new_study_name(storage, "other", "abcdef123456") == "other"


@pytest.mark.parametrize("content", ['{"version": 3, "identity": {"recipe"', "", "[1, 2]", '{"version": 3}',
                                     '{"version": 3, "identity": [1]}', b"\xff\xfe\x00"],
                         ids=["truncated", "empty", "a-list", "no-identity", "identity-a-list", "binary"])
def test_a_damaged_state_file_is_one_error_naming_it(make_config, content) -> None:
    # a torn or edited prunetune-search.json was a JSONDecodeError / KeyError / AttributeError traceback
    from prunetune.exceptions import PrunetuneError
    from prunetune.search.resume import STATE_FILE, resume_state

    config = make_config()
    exp = config.settings.experiment_dir
    exp.mkdir(parents=True)
    (exp / STATE_FILE).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(PrunetuneError, match=f"{STATE_FILE}.*damaged.*another --experiment"):
        resume_state(config, exp, None)


def test_the_searcher_never_unpickles_a_saved_state(tmp_path) -> None:
    """A resume starts a fresh Tuner on the Optuna study: the searcher's restore refuses the pickle
    Ray saved (a planted one would run code) instead of loading it."""
    import pickle

    from prunetune.search.optuna_bridge import FinalOnlySearch

    planted = tmp_path / "searcher-state.pkl"
    planted.write_bytes(pickle.dumps({"study": None}))
    searcher = FinalOnlySearch.__new__(FinalOnlySearch)
    with pytest.raises(RuntimeError, match="does not restore its searcher"):
        searcher.restore(str(planted))
