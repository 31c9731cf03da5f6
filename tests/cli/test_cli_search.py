"""CLI: search / pareto / export errors exit 2 with one line; pareto and export on a hand-made store."""

from __future__ import annotations

import csv
import io
import json
import shlex

import pytest
import yaml

pytest.importorskip("mlflow")

from prunetune.cli import main  # noqa: E402
from prunetune.tracking import SearchTracker, resolve_tracking_uri  # noqa: E402

PLAN = {"format": 1, "input_shape": [1, 8, 8], "dense": {"macs": 1000, "params": 100},
        "pruned": {"macs": 400, "params": 50}, "groups": {"conv1": {"channels": 4, "kept": [0, 2]}}, "meta": {}}
RECIPE = {"model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1}, "data": "digits",
          "criterion": "l1", "allocation": {"macs_budget": 0.4}}
POINTS = {"a": (0.80, 0.20), "b": (0.90, 0.35), "c": (0.85, 0.40), "d": (0.95, 0.50), "e": (0.95, 0.50)}


def _store(tmp_path, points=POINTS, name: str = "exp", tags: dict[str, str] | None = None) -> str:
    uri = resolve_tracking_uri("mlflow.db", cwd=tmp_path)
    tracker = SearchTracker(uri, name)
    tracker.start_search(params={"macs_budget": 0.5}, metrics={"dense_accuracy": 0.97, "dense_macs": 1000.0,
                                                                 "dense_params": 100.0, "dense_val_accuracy": 0.96},
                         tags=tags or {}, texts={})
    for trial, (acc, ratio) in points.items():
        tracker.start_trial(trial, {"target_macs": ratio})
        tracker.finish_trial(trial, {"accuracy": acc, "test_accuracy": acc, "macs": 1000 * ratio, "params": 50.0,
                                     "macs_ratio": ratio, "params_ratio": 0.5, "final": True, "plan": PLAN,
                                     "recipe": RECIPE})
    tracker.end_search("FINISHED")
    return uri


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    return err


def test_pareto_table_json_csv_and_plot(tmp_path, capsys) -> None:
    uri = _store(tmp_path)
    assert main(["pareto", "--experiment", "exp", "--tracking-uri", uri, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(t["trial_id"] for t in out["trials"]) == ["a", "b", "d", "e"]  # c dominated; d, e identical
    assert out["budget"] == 0.5 and out["counts"] == {"FINISHED": 5}
    assert main(["pareto", "--experiment", "exp", "--tracking-uri", uri, "--format", "csv", "--all"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["trial_id"]: r["front"] for r in rows}["c"] == "False" and len(rows) == 5
    plot = tmp_path / "front.png"
    assert main(["pareto", "--experiment", "exp", "--tracking-uri", uri, "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "4 of 5 finished trials on the front" in table and "val acc" in table
    assert plot.stat().st_size > 1000
    from prunetune.tracking import load_search
    from prunetune.tracking.store import client

    parent = load_search(uri, "exp").parent_run_id
    assert "front.png" in {a.path for a in client(uri).list_artifacts(parent)}


def test_pareto_prints_the_export_command_this_search_needs(tmp_path, capsys) -> None:
    """The store, the search run and the search's plugin modules as given: the bare command failed on
    another store, and on a plugin search's recipes (their entries are unknown without the plugin)."""
    from prunetune.tracking.tracker import PLUGINS_TAG

    uri = _store(tmp_path)
    assert main(["pareto", "--experiment", "exp"]) == 2  # not the store in the working directory
    capsys.readouterr()
    assert main(["pareto", "--experiment", "exp", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        f"export one with `prunetune export --experiment exp --tracking-uri {shlex.quote(uri)} --out best.yaml`")
    (tmp_path / "two").mkdir()
    uri = _store(tmp_path / "two", name="my exp", tags={PLUGINS_TAG: "mypkg.crit,other"})
    from prunetune.tracking import load_search

    run = load_search(uri, "my exp").parent_run_id
    assert main(["pareto", "--experiment", "my exp", "--tracking-uri", uri, "--search-run", run]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        f"`prunetune export --experiment 'my exp' --tracking-uri {shlex.quote(uri)} --search-run {run} "
        "--plugin mypkg.crit --plugin other --allow-code --out best.yaml`")
    # a server's password is not printed; a value that starts with '-' is joined to its flag; odd tags quoted
    import argparse

    from prunetune.cli.pareto import export_command
    from prunetune.tracking.records import SearchRecords

    out = tmp_path / "b.yaml"  # the commands quoted in errors and printed commands are copy-pasteable too
    line = _error_line(capsys, ["export", "--experiment", "my exp", "--tracking-uri", uri, "--trial", "t9",
                                "--out", str(out)])
    assert line.endswith("list them with `prunetune pareto --experiment 'my exp' --all`"), line
    from prunetune.search.study import dashboard_command
    from prunetune.tracking import ui_command

    assert "--backend-store-uri 'sqlite:////data/a b/mlflow.db' " in ui_command("sqlite:////data/a b/mlflow.db")
    assert dashboard_command("sqlite:////data/a b/o.db") == "optuna-dashboard 'sqlite:////data/a b/o.db'"
    records = SearchRecords("-x", "", "", None, {}, (), plugins=("a;rm",))
    args = argparse.Namespace(tracking_uri="http://alice:s3cret@host:5000", search_run=None)
    assert export_command(args, records) == ("prunetune export --experiment=-x --tracking-uri 'http://alice:***@host:5000' "
                                             "--plugin 'a;rm' --allow-code --out best.yaml")
    from prunetune.exceptions import PrunetuneError
    from prunetune.tracking.export import find_trial

    with pytest.raises(PrunetuneError, match=r"list them with `prunetune pareto --experiment=-x --all`$"):
        find_trial(records, "t9")  # the commands in errors too (they said `--experiment -x`)


def test_export_picks_writes_and_refuses_to_overwrite(tmp_path, capsys) -> None:
    uri = _store(tmp_path)
    out = tmp_path / "best.yaml"
    base = ["export", "--experiment", "exp", "--tracking-uri", uri, "--out", str(out)]
    assert main(base + ["--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["trial"]["trial_id"] == "d"  # max acc, ties: cheaper, then first
    exported = yaml.safe_load(out.read_text())
    assert exported["plan"] == PLAN and exported["model"]["name"] == "tiny_resnet"
    assert "already exists; pass --overwrite" in _error_line(capsys, base)
    assert main(base + ["--overwrite", "--budget", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "exported trial t01 (a;" in printed
    # the replay writes beside the recipe, named after it (every export printed --out pruned.pt)
    assert f"prunetune prune --recipe {shlex.quote(str(out))} --out {shlex.quote(str(tmp_path / 'best.pt'))}" in printed
    assert main(base + ["--overwrite", "--pick", "knee"]) == 0
    assert "exported trial t02 (b;" in capsys.readouterr().out
    assert "raise --budget to at least that" in _error_line(capsys, base + ["--overwrite", "--budget", "0.1"])


def test_unknown_missing_and_empty_experiments(tmp_path, capsys) -> None:
    missing = resolve_tracking_uri("none.db", cwd=tmp_path)
    assert "no MLflow store at" in _error_line(capsys, ["pareto", "--experiment", "exp", "--tracking-uri", missing])
    uri = _store(tmp_path, name="resnet-search")
    err = _error_line(capsys, ["pareto", "--experiment", "resnet-serch", "--tracking-uri", uri])
    assert err.startswith("prunetune pareto: error: unknown MLflow experiment 'resnet-serch'; did you mean 'resnet-search'")
    empty = resolve_tracking_uri("empty.db", cwd=tmp_path)
    tracker = SearchTracker(empty, "empty")
    tracker.start_search(params={"macs_budget": 0.5}, metrics={}, tags={}, texts={})
    tracker.end_search("KILLED")
    err = _error_line(capsys, ["export", "--experiment", "empty", "--tracking-uri", empty, "--out",
                               str(tmp_path / "x.yaml")])
    assert "has no finished trials yet" in err and not (tmp_path / "x.yaml").exists()


def test_search_errors_before_any_trial(tmp_path, capsys) -> None:
    pytest.importorskip("ray")
    import ray

    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"recipe": {"model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1},
                                                 "data": {"name": "digits", "image_size": 8}}, "macs_budget": 0.5}))
    argv = ["search", "--config", str(config), "--storage-path", str(tmp_path / "runs"),
            "--tracking-uri", str(tmp_path / "m.db")]
    err = _error_line(capsys, argv + ["--macs-budget", "0.001"])
    assert "below the smallest reachable fraction" in err and "raise --macs-budget to at least" in err
    assert not ray.is_initialized() and not (tmp_path / "m.db").exists()
    assert "nothing to resume" in _error_line(capsys, argv + ["--resume"])
    config.write_text(yaml.safe_dump({"recipe": "r.yaml", "macs_budget": 0.5, "concurency": 2}))
    assert "unknown key 'concurency' in the search config" in _error_line(capsys, argv)
    assert "does not exist" in _error_line(capsys, ["search", "--config", str(tmp_path / "nope.yaml")])


def test_export_trial_by_name_ray_id_or_run_id(tmp_path, capsys) -> None:
    uri = _store(tmp_path)
    out = tmp_path / "best.yaml"
    base = ["export", "--experiment", "exp", "--tracking-uri", uri, "--out", str(out), "--overwrite", "--format", "json"]
    assert main(base + ["--trial", "t03"]) == 0  # c: dominated, yet exported when named
    first = json.loads(capsys.readouterr().out)["trial"]
    assert first["trial_id"] == "c" and first["label"] == "t03"
    assert main(base + ["--trial", "c"]) == 0
    assert json.loads(capsys.readouterr().out)["trial"]["run_id"] == first["run_id"]
    assert main(base + ["--trial", first["run_id"]]) == 0
    assert json.loads(capsys.readouterr().out)["trial"]["label"] == "t03"
    err = _error_line(capsys, base + ["--trial", "t30"])
    assert "unknown finished trial 't30'; did you mean" in err and "known: t01, t02, t03, t04, t05" in err and "pareto --experiment exp --all" in err
    with pytest.raises(SystemExit, match="2"):
        main(base + ["--trial", "t03", "--pick", "knee"])
    assert "argument --pick: not allowed with argument --trial" in capsys.readouterr().err
    macs = first["macs_ratio"]
    err = _error_line(capsys, base + ["--trial", "t03", "--budget", f"{macs * 0.9:.6f}"])  # a budget it exceeds
    assert "error: trial t03 uses 40.0% of the dense MACs, above --budget" in err and "drop --budget" in err
    assert main(base + ["--trial", "t03", "--budget", f"{min(1.0, macs * 1.1):.6f}"]) == 0  # within it: exported


def test_every_flag_of_every_command_has_help() -> None:
    import argparse

    from prunetune.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {a.option_strings[0]}" for name, sub in commands.items() for a in sub._actions
               if a.option_strings and not (a.help and a.help.strip())]
    missing += [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert missing == []


def _search_cli(tmp_path, experiment: str, *flags: str) -> int:
    """``prunetune search`` on a tiny config in ``tmp_path`` (its run_search patched by the caller)."""
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"recipe": {"model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1},
                                                 "data": {"name": "digits", "image_size": 8}}, "macs_budget": 0.5,
                                      "experiment": experiment}))
    return main(["search", "--config", str(config), "--storage-path", str(tmp_path / "runs"),
                 "--tracking-uri", str(tmp_path / "m.db"), *flags])


def test_a_search_interrupted_before_its_trials_says_how_to_continue(tmp_path, capsys, monkeypatch) -> None:
    """A Ctrl-C in scoring or screening printed only "interrupted"; one in the trials already said how to
    continue (Tune reports that stop itself)."""
    import prunetune.search as search_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_mod, "run_search", interrupted)
    code = _search_cli(tmp_path, "cut")
    err = capsys.readouterr().err
    assert code == 130 and "prunetune search: interrupted" in err
    assert "search cut was interrupted; run the same command again to continue" in err


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_search_whose_every_trial_failed_exits_1_with_the_first_error(tmp_path, capsys, monkeypatch, fmt) -> None:
    """It printed nothing but the search's end, exit 0, as if it had finished."""
    import prunetune.search as search_mod
    from prunetune.search.runner import SearchOutcome

    def all_failed(config, **kwargs):
        return SearchOutcome("broken", tmp_path / "runs" / "broken", resolve_tracking_uri("m.db", cwd=tmp_path),
                             "0" * 32, "FAILED", {"FAILED": 3}, error="RuntimeError: CUDA out of memory")

    monkeypatch.setattr(search_mod, "run_search", all_failed)
    code = _search_cli(tmp_path, "broken", "--format", fmt)
    out, err = capsys.readouterr()
    assert code == 1
    assert ("search broken: no trial finished (3 failed); the first error: RuntimeError: CUDA out of memory. "
            "Fix it and start again with another --experiment") in err
    assert "interrupted" not in err
    if fmt == "json":
        data = json.loads(out)
        assert data["status"] == "FAILED" and data["error"] == "RuntimeError: CUDA out of memory"


def test_a_finished_searchs_export_hint_carries_its_plugin_modules(tmp_path, capsys) -> None:
    """The export of a search with plugins needs them (its recipes name their entries)."""
    from prunetune.cli.search import report
    from prunetune.search.runner import SearchOutcome

    from prunetune.tracking import load_search

    uri = _store(tmp_path)
    parent = load_search(uri, "exp").parent_run_id
    outcome = SearchOutcome("exp", tmp_path / "runs" / "exp", uri, parent, "FINISHED", {"FINISHED": 5})
    assert report(outcome, plugins=("mypkg.criteria",)) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "prunetune export" in x)
    assert line.endswith(" --plugin mypkg.criteria --allow-code"), line
    # a name that starts with '-' is joined to its flag in both commands (argparse took it for a flag)
    (tmp_path / "two").mkdir()
    uri = _store(tmp_path / "two", name="-x y")
    parent = load_search(uri, "-x y").parent_run_id
    assert report(SearchOutcome("-x y", tmp_path / "runs" / "x", uri, parent, "FINISHED", {"FINISHED": 5})) == 0
    out = capsys.readouterr().out
    assert f"next: prunetune pareto '--experiment=-x y' --plot front.png --tracking-uri {shlex.quote(uri)}\n" in out
    assert f"      prunetune export '--experiment=-x y' --out best.yaml --tracking-uri {shlex.quote(uri)}\n" in out
