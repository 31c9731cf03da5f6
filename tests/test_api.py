"""The Python API as the README documents it: import prunetune stays light; search → pareto → export → prune,
and a replayed exported recipe reproduces its trial's test accuracy (its thread count is in the recipe)."""

from __future__ import annotations

import copy
import faulthandler
import logging
import os
import signal
import subprocess
import sys

import pytest

import prunetune


def test_import_prunetune_and_its_api_names_load_no_ray_optuna_or_mlflow() -> None:
    code = ("import sys, prunetune; prunetune.search, prunetune.prune, prunetune.pareto, prunetune.export; "
            "import prunetune.search as s; s.run_search; "
            "bad = [m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_search_is_both_the_subpackage_and_the_function() -> None:
    import prunetune.search as package

    assert prunetune.search is package and callable(prunetune.search)
    assert package.run_search.__module__ == "prunetune.search.runner"
    for name in ("search", "prune", "pareto", "export"):
        assert name in prunetune.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        prunetune.nope  # noqa: B018


@pytest.mark.slow
@pytest.mark.ray
def test_search_pareto_export_prune_and_the_replay_equals_the_trial(tmp_path, monkeypatch, caplog) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("mlflow")
    import torch

    from search.conftest import TINY_RECIPE

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    caplog.set_level(logging.INFO, logger="prunetune")
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["finetune"]["epochs"] = 3
    events = []
    process = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.excepthook,
               faulthandler.is_enabled(), dict(os.environ))
    torch.manual_seed(123)
    stream = torch.random.get_rng_state()
    outcome = prunetune.search({"recipe": recipe, "space": {"ratios": "uniform", "criteria": ["l1"]},
                                "screen": {"candidates": 8}}, macs_budget=0.6, trials=2, experiment="api",
                               progress=events.append)
    assert outcome.status == "FINISHED" and outcome.counts == {"FINISHED": 2}
    # what the local Ray changed in this process (its SIGTERM handler sys.exit, its excepthook, faulthandler,
    # PYTHONBREAKPOINT and RAY_* variables) and the caller's random stream are as they were
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.excepthook,
            faulthandler.is_enabled(), dict(os.environ)) == process
    assert torch.equal(torch.random.get_rng_state(), stream)
    phases = [e.phase for e in events if e.kind == "phase"]
    assert phases == ["loading", "scoring", "starting Ray", "screening", "trials"]
    assert f"optuna-dashboard {outcome.study_storage}" in caplog.text and events[-1].kind == "done"

    front = prunetune.pareto("api")
    assert front.front and set(front.front) <= set(front.trials) and len(front.trials) == 2
    assert front.plot(tmp_path / "front.html").read_text().startswith("<!DOCTYPE html>")
    slowest = max(front.trials, key=lambda t: t.macs)
    record, path = prunetune.export("api", tmp_path / "best.yaml", trial=slowest.name)
    assert record == slowest
    torch.set_num_threads(2)  # the test session's count; the recipe says the trial's (1)
    result = prunetune.prune(path, out=tmp_path / "pruned.pt")
    assert result.pruned["macs"] == record.macs
    assert result.pruned["accuracy"] == record.test_accuracy
    from prunetune.tracking.store import client

    losses = [m.value for m in sorted(client(outcome.tracking_uri).get_metric_history(record.run_id, "epoch_loss"),
                                      key=lambda m: m.step)]
    # the training loss is sensitive to the last bit of every weight: with 2 threads it differs
    assert [h["loss"] for h in result.history] == losses
    assert torch.get_num_threads() == 2  # restored after the replay


@pytest.mark.parametrize("call", [
    lambda: prunetune.create_model("evilmod:build", allow_code="false"),
    lambda: prunetune.load_pruned("x.pt", allow_code="False"),
    lambda: prunetune.deploy("x.pt", "torchscript", "x.ts", allow_code="off"),
    lambda: prunetune.prune({"model": "evilmod:build", "data": "digits"}, allow_code="false"),
    lambda: prunetune.prune({"model": "tiny_convnet", "data": "digits"}, out="p.pt", overwrite="no"),
    lambda: prunetune.deploy("x.pt", "torchscript", "x.ts", overwrite=1),
])
def test_opt_ins_from_python_must_be_booleans(call) -> None:
    """Any truthy value opted in: allow_code="false" (from a config string or an environment variable)
    ran the factory, overwrite="no" replaced the file."""
    with pytest.raises(prunetune.PrunetuneError, match=r"^(allow_code|overwrite) must be true or false, got "):
        call()


def test_allow_code_counts_for_a_recipe_object_built_without_it(monkeypatch) -> None:
    """prune(Recipe, allow_code=True) said "... or call with allow_code=True" while the caller just did."""
    from prunetune.exceptions import UntrustedCodeError
    from prunetune.recipes import pipeline
    from prunetune.recipes.schema import Recipe

    recipe = Recipe.from_dict({"model": {"name": "evilmod:build", "in_channels": 1}, "data": "digits", "criterion": "l1",
                               "allocation": {"ratio": 0.5}})
    with pytest.raises(UntrustedCodeError):
        prunetune.prune(recipe)
    seen = []
    monkeypatch.setattr(pipeline, "run_recipe", lambda r, **kw: seen.append(r.allow_code))
    prunetune.prune(recipe, allow_code=True)
    assert seen == [True] and recipe.allow_code is False  # the caller's object is left as it was


def test_search_names_its_plugins_keyword_in_the_opt_in_error(tmp_path) -> None:
    """search(config, plugins=[...]) without allow_code said "--plugin 'm' would import ...", a flag the
    caller never typed; the keyword it typed is named, before any work."""
    from prunetune.exceptions import UntrustedCodeError

    config = {"recipe": {"model": {"name": "tiny_resnet", "in_channels": 1}, "data": "digits"},
              "space": {"ratios": "uniform", "criteria": ["l1"]}, "macs_budget": 0.5}
    for given in (config, _write_yaml(tmp_path / "search.yaml", config)):
        with pytest.raises(UntrustedCodeError, match=r"^plugins 'json' would import and run Python code; if you "
                                                     "trust it, "):
            prunetune.search(given, plugins=["json"])


def test_search_allow_code_false_over_a_config_that_opts_in_says_so() -> None:
    """search(config with allow_code: true, allow_code=False) blamed the config's plugins and advised
    setting allow_code: true, which the config already had; the caller's False is what refuses."""
    from prunetune.exceptions import UntrustedCodeError

    config = {"recipe": {"model": {"name": "tiny_resnet", "in_channels": 1}, "data": "digits"},
              "space": {"ratios": "uniform", "criteria": ["l1"]}, "macs_budget": 0.5, "plugins": ["json"],
              "allow_code": True}
    with pytest.raises(UntrustedCodeError, match=r"^the search config's plugins 'json' would import and run Python "
                                                 r"code; if you trust it, drop allow_code=False, which overrides the "
                                                 r"config's allow_code: true, or pass allow_code=True$"):
        prunetune.search(config, allow_code=False)
    with pytest.raises(UntrustedCodeError, match=r"^plugins 'json' would .* drop allow_code=False, which overrides"):
        prunetune.search({**config, "plugins": []}, plugins=["json"], allow_code=False)  # the caller's plugins
    # a model that is code: refused at once, with the same advice (it used to fail later, in the dense
    # training, advising the config setting)
    model = {**config["recipe"], "model": {"name": "json:loads", "in_channels": 1}}
    with pytest.raises(UntrustedCodeError, match=r"^model 'json:loads' would import and run Python code from 'json'; "
                                                 r"if you trust it, drop allow_code=False, which overrides"):
        prunetune.search({**config, "plugins": [], "recipe": model}, allow_code=False)
    with pytest.raises(UntrustedCodeError, match=r"set allow_code: true in your own search config"):
        prunetune.search({**config, "allow_code": False})  # the config's own False: the usual advice


def test_search_config_errors_name_the_keywords_a_python_caller_passes() -> None:
    """The API said "pass --macs-budget F" and "(or --allow-code)", flags of the command line."""
    recipe = {"model": {"name": "tiny_resnet", "in_channels": 1}, "data": "digits"}
    space = {"ratios": "uniform", "criteria": ["l1"]}
    with pytest.raises(prunetune.PrunetuneError, match=r"needs a MACs budget: pass macs_budget=0\.5 or set "):
        prunetune.search({"recipe": recipe, "space": space})
    with pytest.raises(prunetune.PrunetuneError, match=r"^allow_code belongs in the search config itself \(or "
                                                       r"allow_code=True\), not in its base recipe"):
        prunetune.search({"recipe": {**recipe, "allow_code": True}, "space": space, "macs_budget": 0.5})


def _write_yaml(path, data):
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def test_a_plan_that_removes_nothing_is_warned_about(caplog) -> None:
    """allocation {ratio: 0.3, min_keep: 10**9} kept every channel (100% of the MACs) without a word."""
    recipe = {"model": {"name": "tiny_convnet", "in_channels": 1}, "data": "digits", "criterion": "l1",
              "allocation": {"ratio": 0.3, "min_keep": 10**9}, "pretrain": {"epochs": 1},
              "finetune": {"epochs": 0}, "calibration": {"use_cache": False}}
    with caplog.at_level(logging.WARNING, logger="prunetune"):
        result = prunetune.prune(recipe)
    assert result.plan.pruned.macs == result.plan.dense.macs
    assert any("the plan removes no channel (min_keep 1000000000" in r.getMessage() for r in caplog.records)


def test_prune_leaves_the_callers_random_streams_and_gives_the_model_in_eval_mode() -> None:
    """prune seeded torch with the recipe's seed and left it so: the caller's next torch.rand was the
    recipe's stream. The model came back in train mode, so calling it moved its BN statistics."""
    import random

    import numpy as np
    import torch

    recipe = {"model": {"name": "tiny_convnet", "in_channels": 1}, "data": "digits", "criterion": "l1",
              "allocation": {"ratio": np.float32(0.5)}, "pretrain": {"epochs": np.int64(1)},
              "finetune": {"epochs": np.int64(1)}, "calibration": {"use_cache": False}, "seed": np.int64(3)}
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    states = torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    result = prunetune.prune(recipe)  # numpy scalars are the numbers they hold
    assert torch.equal(torch.random.get_rng_state(), states[0])
    assert random.getstate() == states[1] and (np.random.get_state()[1] == states[2]).all()
    assert not result.model.training


@pytest.mark.parametrize(("call", "message"), [
    (lambda: prunetune.prune([{}]), r"recipe must be a recipe file, a mapping or a Recipe, got \[\{\}\] \(of type list\)$"),
    (lambda: prunetune.prune(None), "recipe must be a recipe file, a mapping or a Recipe, got None"),
    (lambda: prunetune.prune(b"r.yaml"), "got b'r.yaml' \\(of type bytes\\)"),
    (lambda: prunetune.prune({"model": "tiny_convnet", "data": "digits", "criterion": "l1", "allocation": {"ratio": 0.5}},
                             out=123), "out must be a file name or None"),
    (lambda: prunetune.search([{}]), "config must be a search config file, a mapping or a SearchConfig"),
    (lambda: prunetune.search({"macs_budget": 0.5}, progress="print"),
     "progress must be a function of one ProgressEvent \\(or None\\), got 'print'"),
    (lambda: prunetune.search({"macs_budget": 0.5}, resume="yes"), "resume must be None, True or False, got 'yes'"),
    (lambda: prunetune.export("exp", None), "out must be a file name, got None"),
    (lambda: prunetune.deploy("x.pt", "torchscript", None), "out must be a file name, got None"),
    (lambda: prunetune.deploy("x.pt", "torchscript", "x.ts", fold_bn="no"), "fold_bn must be true or false"),
])
def test_wrong_types_from_python_are_one_line(call, message) -> None:
    """Each was a TypeError from pathlib (or accepted as truthy) rather than a PrunetuneError naming the argument."""
    with pytest.raises(prunetune.PrunetuneError, match=message):
        call()


def test_pareto_and_export_errors_name_keyword_arguments_not_flags(tmp_path) -> None:
    """From Python, 'pass --tracking-uri ...' and 'pass --overwrite' named flags there is no way to give;
    the commands they quote in backquotes stay commands."""
    pytest.importorskip("mlflow")
    from prunetune.exceptions import ConfigError, PrunetuneError

    with pytest.raises(PrunetuneError) as err:
        prunetune.pareto("exp", tracking_uri=tmp_path / "missing.db")
    message = str(err.value)
    assert "or pass tracking_uri pointing at the store" in message and "--tracking-uri" not in message, message
    assert "run `prunetune search` first" in message  # a command stays as it is
    with pytest.raises(PrunetuneError, match=r"pass tracking_uri='sqlite:///path/mlflow\.db'$"):
        prunetune.pareto("exp", tracking_uri="sqlite:///:memory:")
    with pytest.raises(PrunetuneError, match=r"is not a URL .*; pass tracking_uri='sqlite:///path/mlflow\.db' or an"):
        prunetune.pareto("exp", tracking_uri="http://[::1")
    with pytest.raises(PrunetuneError, match=r"or pass another tracking_uri$"):
        prunetune.pareto("exp", tracking_uri="http://127.0.0.1:1")
    import sqlite3

    study = tmp_path / "study.db"  # an Optuna study beside the store: named, and left unchanged
    with sqlite3.connect(study) as conn:
        conn.execute("CREATE TABLE studies (id INTEGER)")
        conn.execute("CREATE TABLE trials (id INTEGER)")
    with pytest.raises(PrunetuneError, match=r"is an Optuna study, not an MLflow store, and is left unchanged; pass "
                                             r"tracking_uri with the store"):
        prunetune.pareto("exp", tracking_uri=study)

    from prunetune.tracking import SearchTracker, resolve_tracking_uri

    uri = resolve_tracking_uri("mlflow.db", cwd=tmp_path)
    tracker = SearchTracker(uri, "exp")
    tracker.start_search(params={"macs_budget": 0.5}, metrics={}, tags={}, texts={})
    tracker.start_trial("a", {"target_macs": 0.4})
    tracker.finish_trial("a", {"accuracy": 0.9, "test_accuracy": 0.9, "macs": 400.0, "params": 50.0,
                               "macs_ratio": 0.4, "params_ratio": 0.5, "final": True})
    tracker.end_search("FINISHED")
    cases = [
        (lambda: prunetune.pareto("exq", tracking_uri=uri),
         r"pass the experiment name that `prunetune search` used, or tracking_uri for another store$"),
        (lambda: prunetune.pareto("exp", tracking_uri=uri, search_run="nope"), r"pass a search run id"),
        (lambda: prunetune.pareto("exp", tracking_uri=uri, search_run=tracker.children()[0].info.run_id),
         r"or leave search_run out for the latest search$"),
        (lambda: prunetune.export("exp", tmp_path / "b.yaml", tracking_uri=uri, budget=0.3),
         r"raise budget to at least that$"),
        (lambda: prunetune.export("exp", tmp_path / "b.yaml", tracking_uri=uri, budget=0.3, pick="knee"),
         r"raise budget to at least that$"),
        (lambda: prunetune.export("exp", tmp_path / "b.yaml", tracking_uri=uri, budget=0.3, trial="t01"),
         r"above budget=0\.3; drop budget to export it anyway"),
    ]
    for call, message in cases:
        with pytest.raises(PrunetuneError, match=message) as err:
            call()
        assert "--" not in str(err.value).replace("`prunetune", ""), err.value
    from prunetune.tracking import export_trial, load_search

    (tmp_path / "taken.yaml").write_text("mine")  # the API checks first; the function says it in its caller's words
    with pytest.raises(ConfigError, match=r"already exists; pass --overwrite to replace it or choose another --out$"):
        export_trial(load_search(uri, "exp"), tmp_path / "taken.yaml")
