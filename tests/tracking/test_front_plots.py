"""The front plot: labelled PNG points, the interactive HTML page, both logged to the search run."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("matplotlib")

from prunetune.cli import main  # noqa: E402
from prunetune.tracking import SearchTracker, front_html, load_search, log_front, resolve_tracking_uri  # noqa: E402
from prunetune.tracking.records import SearchRecords, TrialRecord  # noqa: E402
from prunetune.tracking.store import client  # noqa: E402

POINTS = [("t01", 0.80, 0.40), ("t02", 0.90, 0.50), ("t03", 0.70, 0.45), ("t04", 0.60, 0.20)]


def _records(budget: float = 0.5) -> SearchRecords:
    trials = tuple(TrialRecord(f"run{i}", f"ray_{i}", acc, 100 * ratio, 5.0, ratio, test_accuracy=acc - 0.01,
                               label=label) for i, (label, acc, ratio) in enumerate(POINTS))
    return SearchRecords("exp", "sqlite:///x.db", "parent", budget, {"val_accuracy": 0.95}, trials)


def test_html_page_has_every_trial_the_front_and_the_budget() -> None:
    page = front_html(_records(), picked="run1", run_url=lambda run_id: f"http://mlflow/#/runs/{run_id}")
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert len(re.findall(r"<circle data-i=", page)) == 4
    assert len(re.findall(r"class='front'", page)) == 3  # t03 is dominated by t01
    for label, _, _ in POINTS:
        assert f">{label}</text>" in page and f"<td>{label}" in page
    assert "budget 50%" in page and "t02 (picked)" in page and "data-url='http://mlflow/#/runs/run0'" in page
    assert "4 finished trials, 3 on the front" in page


def test_png_labels_the_front_points(tmp_path, monkeypatch) -> None:
    import matplotlib.axes

    labels = []
    original = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                        lambda self, text, *a, **k: labels.append(text) or original(self, text, *a, **k))
    from prunetune.tracking import plot_front

    path = plot_front(_records(), tmp_path / "front.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and sorted(labels) == ["t01", "t02", "t03", "t04"]


def test_pareto_plot_html_and_the_search_run_artifacts(tmp_path, capsys) -> None:
    uri = resolve_tracking_uri("mlflow.db", cwd=tmp_path)
    tracker = SearchTracker(uri, "exp")
    tracker.start_search(params={"macs_budget": 0.5}, metrics={"dense_accuracy": 0.9}, tags={}, texts={})
    plan = {"format": 1, "input_shape": [1, 8, 8], "dense": {"macs": 100, "params": 10}, "pruned": {"macs": 40,
            "params": 5}, "groups": {"conv1": {"channels": 4, "kept": [0, 2]}}, "meta": {}}
    for label, acc, ratio in POINTS:
        tracker.start_trial(label, {"target_macs": ratio})
        tracker.finish_trial(label, {"accuracy": acc, "macs": 100 * ratio, "macs_ratio": ratio, "params": 5.0,
                                     "plan": plan, "recipe": {"model": "m"}})
    records = load_search(uri, "exp")
    log_front(records, client(uri))
    assert {"front.html", "front.png"} <= {a.path for a in client(uri).list_artifacts(tracker.parent_run_id)}
    out = tmp_path / "page.html"
    assert main(["pareto", "--experiment", "exp", "--tracking-uri", uri, "--plot", str(out)]) == 0
    assert "<svg" in out.read_text() and "t01" in capsys.readouterr().out


def test_a_plots_budget_and_picked_trial_are_checked(tmp_path) -> None:
    """budget=nan drew no line and picked='t99' circled nothing, both without a word; export's budget
    too ('no finished trial within MACs budget nan ... raise --budget')."""
    from prunetune.exceptions import ConfigError
    from prunetune.tracking import plot_front
    from prunetune.tracking.export import choose

    with pytest.raises(ConfigError, match=r"budget must be a fraction of dense MACs in \(0, 1\], got nan"):
        plot_front(_records(), tmp_path / "front.html", budget=float("nan"))
    with pytest.raises(ConfigError, match="picked 't99' is not the run id of a finished trial of this search"):
        plot_front(_records(), tmp_path / "front.html", picked="t99")
    assert not (tmp_path / "front.html").exists()
    with pytest.raises(ConfigError, match=r"budget must be a fraction of dense MACs in \(0, 1\], got nan"):
        choose(_records(), budget=float("nan"))
    assert choose(_records(), budget=0.45).label == "t01"
