"""MLflow runs of a search: nested structure, statuses, params vs artifacts, resume, reading back."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlflow")

from prunetune.exceptions import TrackingError  # noqa: E402
from prunetune.tracking import SearchTracker, load_search, resolve_tracking_uri  # noqa: E402
from prunetune.tracking.store import check_store, check_writable_store, client  # noqa: E402
from prunetune.tracking.tracker import PARENT_TAG, trial_params  # noqa: E402

PLAN = {"format": 1, "input_shape": [1, 8, 8], "dense": {"macs": 100, "params": 10},
        "pruned": {"macs": 40, "params": 5}, "groups": {"conv1": {"channels": 4, "kept": [0, 2]}}, "meta": {}}


def _result(acc: float, ratio: float) -> dict:
    return {"accuracy": acc, "test_accuracy": acc - 0.01, "macs": 100 * ratio, "params": 5.0, "macs_ratio": ratio,
            "params_ratio": 0.5, "target_macs": ratio, "work_s": 1.0, "final": True, "plan": PLAN,
            "recipe": {"model": "tiny_resnet", "data": "digits", "criterion": "l1", "allocation": {"ratio": 0.5}},
            "history": [{"epoch": 1, "loss": 2.0, "accuracy": acc - 0.1}, {"epoch": 2, "loss": 1.0, "accuracy": acc}]}


@pytest.fixture()
def uri(tmp_path) -> str:
    return resolve_tracking_uri("mlflow.db", cwd=tmp_path)


def _search(uri: str, name: str = "exp") -> SearchTracker:
    tracker = SearchTracker(uri, name)
    tracker.start_search(params={"macs_budget": 0.5, "trials": 4}, metrics={"dense_accuracy": 0.9, "dense_macs": 100.0},
                         tags={"prunetune.score_fingerprint": "abc"}, texts={"search.yaml": "trials: 4\n"})
    return tracker


def test_tracking_uri_is_made_absolute(tmp_path) -> None:
    assert resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///x/m.db", cwd=tmp_path) == f"sqlite:///{tmp_path / 'x' / 'm.db'}"
    assert resolve_tracking_uri("sqlite:////abs/m.db", cwd=tmp_path) == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000", cwd=tmp_path) == "http://127.0.0.1:5000"


def test_an_in_memory_store_is_refused_not_made_a_file(tmp_path) -> None:
    with pytest.raises(TrackingError, match="in-memory database"):
        resolve_tracking_uri("sqlite:///:memory:", cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_sqlite_uri_with_a_driver_is_an_sqlite_store_too(tmp_path) -> None:
    driver = "sqlite+pysqlite:///"  # MLflow opens it as sqlite; the file checks and the artifacts folder apply
    assert resolve_tracking_uri(driver + "x/m.db", cwd=tmp_path) == f"{driver}{tmp_path / 'x' / 'm.db'}"
    (tmp_path / "bad.db").write_text("not sqlite")
    with pytest.raises(TrackingError, match="not an sqlite database"):
        check_writable_store(f"{driver}{tmp_path}/bad.db")
    with pytest.raises(TrackingError, match="is a directory"):
        check_writable_store(f"{driver}{tmp_path}")
    with pytest.raises(TrackingError, match="no MLflow store at"):
        check_store(f"{driver}{tmp_path}/nowhere.db")
    uri = resolve_tracking_uri(driver + "new folder/ü.db", cwd=tmp_path)  # MLflow made the folder for sqlite:/// only
    tracker = _search(uri)  # MLflow takes the driver's spelling; the artifacts go beside the database
    assert client(uri).get_experiment(tracker.experiment_id).artifact_location == \
        (tmp_path / "new folder" / "mlartifacts" / "exp").as_uri()
    assert (tmp_path / "new folder" / "ü.db").is_file()


def test_nested_runs_statuses_and_artifacts(uri: str, tmp_path) -> None:
    tracker = _search(uri)
    tracker.start_trial("t1", {"target_macs": 0.4, "ratios": "uniform"})
    tracker.log_epoch("t1", {"accuracy": 0.5, "loss": 2.0}, 1)
    tracker.finish_trial("t1", _result(0.8, 0.4))
    tracker.start_trial("t2", {"target_macs": 0.3})
    tracker.stop_trial("t2", "KILLED")
    tracker.start_trial("t3", {"target_macs": 0.2})
    tracker.stop_trial("t3", "FAILED", error="Traceback ...\nFloatingPointError: loss became nan")
    tracker.start_trial("t4", {"target_macs": 0.2})  # still open when the search ends
    tracker.end_search("FINISHED", {"trials_finished": 1})
    c = client(uri)
    parent = c.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["macs_budget"] == "0.5"
    assert parent.data.tags["prunetune.role"] == "search" and PARENT_TAG not in parent.data.tags
    children = {r.data.tags["prunetune.trial_id"]: r for r in tracker.children()}
    assert {k: r.info.status for k, r in children.items()} == {"t1": "FINISHED", "t2": "KILLED", "t3": "FAILED",
                                                              "t4": "KILLED"}
    assert all(r.data.tags[PARENT_TAG] == tracker.parent_run_id for r in children.values())
    assert children["t3"].data.tags["prunetune.error"] == "FloatingPointError: loss became nan"
    t1 = children["t1"]
    assert t1.data.metrics["accuracy"] == 0.8 and t1.data.metrics["macs_ratio"] == 0.4
    assert t1.data.params["target_macs"] == "0.4" and t1.data.params["ratios"] == "uniform"
    curve = c.get_metric_history(t1.info.run_id, "epoch_accuracy")
    assert [(m.step, round(m.value, 3)) for m in curve] == [(1, 0.5), (2, 0.8)]  # epoch 1 not logged twice
    artifacts = {a.path for a in c.list_artifacts(t1.info.run_id)}
    assert artifacts == {"config.json", "plan.json", "recipe.yaml", "widths.json"}
    widths = json.loads(open(c.download_artifacts(t1.info.run_id, "widths.json", str(tmp_path))).read())
    assert widths == {"columns": ["group", "channels", "kept", "kept_fraction"], "data": [["conv1", 4, 2, 0.5]]}


def test_per_group_ratios_go_to_the_artifact_not_params() -> None:
    config = {"target_macs": 0.4, "ratios": "per_group", **{f"ratio.g{i}": 0.1 for i in range(120)}}
    params = trial_params(config)
    assert set(params) == {"target_macs", "ratios"}
    small = {"target_macs": 0.4, "ratio.stage1": 0.2}
    assert trial_params(small) == small


def test_many_params_are_sent_in_batches(uri: str) -> None:
    tracker = _search(uri)
    params = {f"p{i}": i for i in range(150)}
    tracker._log(tracker.parent_run_id, params=params)
    assert len(client(uri).get_run(tracker.parent_run_id).data.params) == 150 + 2


def test_resume_reopens_the_parent_and_kills_stale_trials(uri: str) -> None:
    tracker = _search(uri)
    tracker.start_trial("t1", {"target_macs": 0.4})  # the driver died here: the run stays RUNNING
    again = SearchTracker(uri, "exp")
    again.resume_search(tracker.parent_run_id)
    c = client(uri)
    assert c.get_run(tracker.parent_run_id).info.status == "RUNNING"
    assert [r.info.status for r in again.children()] == ["KILLED"]


def test_tracker_pickles_without_its_client(uri: str) -> None:
    import pickle

    tracker = _search(uri)
    tracker.start_trial("t1", {"target_macs": 0.4})
    again = pickle.loads(pickle.dumps(tracker))
    assert (again.uri, again.parent_run_id, again.experiment_id) == (uri, tracker.parent_run_id, tracker.experiment_id)
    assert again._client is None and again._runs == {}


def test_load_search_reads_finished_trials_only(uri: str) -> None:
    tracker = _search(uri)
    for i, (acc, ratio) in enumerate([(0.8, 0.4), (0.9, 0.5), (0.7, 0.2)]):
        tracker.start_trial(f"t{i}", {"target_macs": ratio})
        tracker.finish_trial(f"t{i}", _result(acc, ratio))
    tracker.start_trial("bad", {"target_macs": 0.3})
    tracker.stop_trial("bad", "FAILED")
    tracker.end_search("FINISHED")
    records = load_search(uri, "exp")
    assert [t.trial_id for t in records.trials] == ["t2", "t0", "t1"]  # by MACs
    assert records.budget == 0.5 and records.dense == {"accuracy": 0.9, "macs": 100.0}
    assert records.counts == {"FINISHED": 3, "FAILED": 1}
    assert load_search(uri, "exp", parent_run_id=tracker.parent_run_id).trials == records.trials
    # a wrong --search-run said "no finished trials yet (no trial runs)" of a search that had three
    with pytest.raises(TrackingError, match="is a trial run, not a search run of experiment 'exp'"):
        load_search(uri, "exp", parent_run_id=records.trials[0].run_id)
    other = _search(uri, "other")
    other.end_search("FINISHED")
    with pytest.raises(TrackingError, match="is of another experiment, not a search run of experiment 'exp'"):
        load_search(uri, "exp", parent_run_id=other.parent_run_id)


def test_export_of_a_trial_without_a_result_says_what_became_of_it(uri: str) -> None:
    """`export --trial t02` of an interrupted trial said "unknown finished trial"; it says why now."""
    from prunetune.exceptions import ConfigError
    from prunetune.tracking.export import find_trial

    tracker = _search(uri)
    tracker.start_trial("a", {"target_macs": 0.4})
    tracker.finish_trial("a", _result(0.8, 0.4))
    ends = {"b": ("KILLED", False), "c": ("KILLED", True), "d": ("FAILED", False)}
    for trial_id, (status, early) in ends.items():
        tracker.start_trial(trial_id, {"target_macs": 0.3})
        tracker.stop_trial(trial_id, status, early=early)
    tracker.start_trial("e", {"target_macs": 0.3})  # left RUNNING: a killed driver
    records = load_search(uri, "exp")
    assert find_trial(records, "t01").trial_id == "a"
    run_of = {r.data.tags["prunetune.trial_id"]: r.info.run_id for r in tracker.children()}
    for name in ("t02", "b", run_of["b"]):  # short name, Ray trial id, MLflow run id
        with pytest.raises(ConfigError, match=r"^trial t02 was interrupted, so it has no result to export; "
                                              r"pick a finished trial \(`prunetune pareto --experiment exp --all`"):
            find_trial(records, name)
    for name, what in [("t03", "was stopped early by the scheduler"), ("t04", "failed"),
                       ("t05", "is still running")]:
        with pytest.raises(ConfigError, match=f"^trial {name} {what}"):
            find_trial(records, name)
    with pytest.raises(ConfigError, match="unknown finished trial 't09'"):
        find_trial(records, "t09")


def test_unknown_experiment_suggests_close_names(uri: str) -> None:
    _search(uri, "resnet-search").end_search("FINISHED")
    with pytest.raises(TrackingError, match="unknown MLflow experiment 'resnet-serach'; did you mean 'resnet-search'"):
        load_search(uri, "resnet-serach")


def test_missing_store_and_empty_experiment(uri: str, tmp_path) -> None:
    with pytest.raises(TrackingError, match="no MLflow store at"):
        load_search(resolve_tracking_uri("nowhere.db", cwd=tmp_path), "exp")
    tracker = _search(uri)
    tracker.start_trial("t1", {"target_macs": 0.4})
    tracker.stop_trial("t1", "FAILED")
    with pytest.raises(TrackingError, match=r"no finished trials yet \(1 FAILED\)"):
        load_search(uri, "exp")
    client(uri).create_experiment("empty")
    with pytest.raises(TrackingError, match="holds no prunetune search run"):
        load_search(uri, "empty")


def test_trial_runs_are_named_numbered_and_tagged_on_the_front(uri: str) -> None:
    tracker = _search(uri)
    names = {}
    for trial_id, (acc, ratio) in {"a": (0.80, 0.4), "b": (0.90, 0.5), "c": (0.70, 0.45)}.items():
        tracker.start_trial(trial_id, {"target_macs": ratio})
        assert client(uri).get_run(tracker._runs[trial_id]).info.run_name == f"{tracker.label(trial_id)} · running"
        tracker.finish_trial(trial_id, _result(acc, ratio))
    tracker.start_trial("d", {"target_macs": 0.3})
    tracker.stop_trial("d", "FAILED", error="boom")
    tracker.start_trial("e", {"target_macs": 0.3})
    tracker.stop_trial("e", "KILLED", early=True)
    runs = {r.data.tags["prunetune.trial_id"]: r for r in tracker.children()}
    names = {k: r.info.run_name for k, r in runs.items()}
    assert names == {"a": "t01 · 40.0% MACs · acc 0.800", "b": "t02 · 50.0% MACs · acc 0.900",
                     "c": "t03 · 45.0% MACs · acc 0.700", "d": "t04 · failed", "e": "t05 · stopped early"}
    assert {k: r.data.tags["prunetune.trial"] for k, r in runs.items()} == {
        "a": "t01", "b": "t02", "c": "t03", "d": "t04", "e": "t05"}
    # c (0.70 at 45%) is dominated by a (0.80 at 40%); the tags follow as trials finish
    assert {k: runs[k].data.tags.get("on_front") for k in "abcde"} == {
        "a": "true", "b": "true", "c": "false", "d": None, "e": None}
    assert runs["e"].data.tags["prunetune.ended"] == "stopped early" and "prunetune.ended" not in runs["d"].data.tags
    tracker.start_trial("f", {"target_macs": 0.3})
    tracker.finish_trial("f", _result(0.95, 0.3))  # dominates everything: the others leave the front
    on = {r.data.tags["prunetune.trial_id"]: r.data.tags.get("on_front") for r in tracker.children()}
    assert on == {"a": "false", "b": "false", "c": "false", "d": None, "e": None, "f": "true"}


def test_experiment_opens_on_runs_with_a_table_view_of_the_key_columns(uri: str) -> None:
    from prunetune.tracking import views

    tracker = _search(uri)
    tracker.start_trial("a", {"target_macs": 0.4, "lr": 0.01, **{f"ratio.g{i}": 0.1 for i in range(3)}})
    tags = client(uri).get_experiment(tracker.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"viewStateShareKey={views.VIEW_KEY}" in tags["mlflow.note.content"]
    view = json.loads(tags[views.VIEW_TAG])
    assert view["selectedColumns"][:6] == ["metrics.`accuracy`", "metrics.`test_accuracy`", "metrics.`macs_ratio`",
                                           "metrics.`params`", "metrics.`proxy_accuracy`", "tags.`on_front`"]
    assert "params.`target_macs`" in view["selectedColumns"] and "params.`lr`" in view["selectedColumns"]
    assert not any("ratio.g" in c for c in view["selectedColumns"])
    assert view["runsHiddenMode"] == "SHOW_ALL"
    c = client(uri)  # a kind the user set stays
    c.set_experiment_tag(tracker.experiment_id, "mlflow.experimentKind", "classification")
    SearchTracker(uri, "exp").start_search(params={}, metrics={}, tags={}, texts={})
    assert c.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == "classification"


def test_resume_continues_numbers_and_names_stale_runs(uri: str) -> None:
    tracker = _search(uri)
    tracker.start_trial("a", {"target_macs": 0.4})
    tracker.finish_trial("a", _result(0.8, 0.4))
    tracker.start_trial("b", {"target_macs": 0.3})  # the driver dies here
    again = SearchTracker(uri, "exp")
    again.resume_search(tracker.parent_run_id)
    again.start_trial("c", {"target_macs": 0.5})
    again.finish_trial("c", _result(0.7, 0.5))  # dominated by a, which it knows from the first part
    runs = {r.data.tags["prunetune.trial_id"]: r for r in again.children()}
    assert runs["b"].info.status == "KILLED" and runs["b"].info.run_name == "t02 · interrupted"
    assert runs["c"].data.tags["prunetune.trial"] == "t03" and runs["c"].data.tags["on_front"] == "false"


@pytest.mark.parametrize("name, content", [("plan.json", "{trunc"), ("plan.json", "[1, 2]"),
                                           ("plan.json", b"\xff\xfe"), ("recipe.yaml", "- 1\n")],
                         ids=["plan-torn", "plan-a-list", "plan-binary", "recipe-a-list"])
def test_export_of_a_trial_with_damaged_artifacts_is_one_line(uri: str, tmp_path, monkeypatch, capsys,
                                                              name, content) -> None:
    # a torn plan.json was a JSONDecodeError traceback, a recipe.yaml that is no mapping a TypeError one
    from prunetune.cli import main

    tracker = _search(uri)
    tracker.start_trial("t1", {"target_macs": 0.4})
    tracker.finish_trial("t1", _result(0.8, 0.4))
    tracker.end_search("FINISHED")
    (run,) = tracker.children()
    (artifact,) = tmp_path.glob(f"mlartifacts/*/{run.info.run_id}/artifacts/{name}")
    artifact.write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["export", "--experiment", "exp", "--out", "best.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and run.info.run_id in err, err
    assert not (tmp_path / "best.yaml").exists()
