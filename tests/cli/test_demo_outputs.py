"""`prunetune demo` run twice keeps both demos' files; `Front.plot` refuses an existing file unless asked.

The demo replaced ``best.yaml``, ``front.png`` and ``front.html`` of the previous demo in its
``--out-dir`` without a word (its MLflow store kept both demos' runs). Each demo is its own MLflow
experiment (``demo-YYYYmmdd-HHMMSS``); its files now go into a new folder of that name. The search
itself is faked here (the real one takes minutes); the plots are the real ones.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("matplotlib")

from prunetune.cli import main  # noqa: E402
from prunetune.exceptions import ConfigError  # noqa: E402
from prunetune.tracking.records import SearchRecords, TrialRecord  # noqa: E402

POINTS = [("t01", 0.80, 0.40), ("t02", 0.90, 0.50), ("t03", 0.70, 0.45)]


def _records(experiment: str = "exp") -> SearchRecords:
    trials = tuple(TrialRecord(f"run{i}", f"ray_{i}", acc, 100 * ratio, 5.0, ratio, test_accuracy=acc - 0.01,
                               label=label) for i, (label, acc, ratio) in enumerate(POINTS))
    return SearchRecords(experiment, "sqlite:///x.db", "parent", 0.5, {"val_accuracy": 0.95}, trials)


@pytest.fixture()
def fake_search(monkeypatch):
    """The demo with its search, MLflow and export faked: each call is a new demo (a new second)."""
    import prunetune.cli.demo as demo
    import prunetune.cli.search as cli_search
    import prunetune.search as search
    import prunetune.tracking as tracking
    import prunetune.tracking.store as store
    from prunetune._atomic import write_text_atomic

    names = iter(f"demo-20260101-00000{i}" for i in range(1, 10))
    now = {"name": None}

    def strftime(fmt):
        now["name"] = next(names)
        return now["name"]

    def export_trial(records, out, *, pick="max-acc", budget=None, overwrite=False, trial=None):
        if Path(out).exists() and not overwrite:  # as the real one
            raise ConfigError(f"{str(out)!r} already exists; pass --overwrite to replace it or choose another --out")
        return records.trials[1], write_text_atomic(out, f"# recipe of {records.experiment}\n")

    monkeypatch.setattr(demo, "time", types.SimpleNamespace(strftime=strftime, perf_counter=lambda: 0.0))
    monkeypatch.setattr(search, "run_search", lambda config, **kw: types.SimpleNamespace(
        tracking_uri=config.settings.tracking_uri, parent_run_id="parent", study_storage="sqlite:///o.db"))
    monkeypatch.setattr(cli_search, "report", lambda outcome: 0)
    monkeypatch.setattr(tracking, "load_search", lambda uri, experiment, parent_run_id=None: _records(experiment))
    monkeypatch.setattr(tracking, "export_trial", export_trial)
    monkeypatch.setattr(store, "client", lambda uri: types.SimpleNamespace(log_artifact=lambda *a: None))
    return now


def test_a_second_demo_keeps_the_first_demos_files(fake_search, tmp_path, capsys) -> None:
    out = tmp_path / "prunetune-demo"
    assert main(["demo", "--out-dir", str(out), "--trials", "2"]) == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {p.name for p in first} == {"best.yaml", "front.png", "front.html"}
    assert main(["demo", "--out-dir", str(out), "--trials", "2"]) == 0
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {k: after.get(k) for k in first} == first  # nothing of the first demo replaced
    second = out / "demo-20260101-000002"
    assert sorted(p.name for p in second.iterdir()) == ["best.yaml", "front.html", "front.png"]
    assert (second / "best.yaml").read_text() == "# recipe of demo-20260101-000002\n"
    printed = capsys.readouterr().out
    assert f"replay it: prunetune prune --recipe {second / 'best.yaml'} --out {second / 'pruned.pt'}" in printed


def test_a_demo_of_the_same_name_is_refused_before_the_search(fake_search, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "d"
    (out / "demo-20260101-000001").mkdir(parents=True)
    (out / "demo-20260101-000001" / "best.yaml").write_text("keep me")
    import prunetune.search as search

    monkeypatch.setattr(search, "run_search", lambda *a, **k: pytest.fail("the search ran"))
    assert main(["demo", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a demo named 'demo-20260101-000001'" in err[0], err
    assert (out / "demo-20260101-000001" / "best.yaml").read_text() == "keep me"


@pytest.mark.parametrize("name", ["front.png", "front.html"])
def test_front_plot_refuses_an_existing_file_unless_overwrite(tmp_path, name) -> None:
    from prunetune.api import Front

    front = Front(_records())
    path = tmp_path / name
    path.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match=rf"plot '{path}' already exists; pass overwrite=True to replace it"):
        front.plot(path)
    assert path.read_bytes() == b"keep me"
    assert front.plot(path, overwrite=True) == path and path.read_bytes() != b"keep me"
    assert front.plot(tmp_path / "new" / name).is_file()  # a new file (and folder) needs no flag
    assert not [p.name for p in tmp_path.rglob(".*")]  # no temporaries left


def test_front_plot_refuses_an_unknown_format_before_drawing(tmp_path) -> None:
    from prunetune.api import Front

    with pytest.raises(ConfigError, match=r"plot '.*front.xyz': the file name must end in .html"):
        Front(_records()).plot(tmp_path / "front.xyz")
