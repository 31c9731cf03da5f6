"""The search config: strict schema, flag overrides, defaults, absolute paths; soft imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prunetune.exceptions import ConfigError, UnknownNameError
from prunetune.pruning.allocation import MacsBudget
from prunetune.search import AshaSpec, load_search_config, parse_search_config
from prunetune.spaces import SpaceSpec

RECIPE = {"model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1}, "data": "digits"}


def test_bundled_demo_config_parses_and_flags_override(tmp_path) -> None:
    from prunetune.cli.demo import demo_config_path

    config = load_search_config(demo_config_path(), {"trials": 5, "sampler": "nsga2", "asha": True, "seed": None},
                                cwd=tmp_path)
    s = config.settings
    assert (s.trials, s.sampler, s.seed, s.macs_budget, s.concurrency) == (5, "nsga2", 0, 0.5, 2)
    assert s.asha == AshaSpec() and s.experiment == "demo"  # the file's stem
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert s.storage_path == str(tmp_path / "prunetune-runs")
    assert config.recipe.model.name == "resnet20" and config.space.ratios == "per_stage"
    assert config.recipe.criterion.weights == {c: 1.0 for c in config.space.criteria}  # filled from the space
    assert config.space == SpaceSpec()  # the demo runs the default space


def test_paths_in_the_file_are_relative_to_the_file(tmp_path) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "base.yaml").write_text(yaml.safe_dump({**RECIPE, "model": {**RECIPE["model"], "checkpoint": "w.pt"}}))
    (folder / "s.yaml").write_text(yaml.safe_dump({"recipe": "base.yaml", "macs_budget": 0.4,
                                                   "tracking_uri": "sqlite:///runs.db", "storage_path": "out"}))
    config = load_search_config(folder / "s.yaml", {"storage_path": "here"}, cwd=tmp_path)
    assert config.recipe.model.checkpoint == str(folder / "w.pt")  # absolute, so export/replay find it
    assert config.settings.tracking_uri == f"sqlite:///{folder / 'runs.db'}"
    assert config.settings.storage_path == str(tmp_path / "here")  # a flag: relative to the working dir
    assert config.settings.experiment == "s"
    # from Python a Path is a path (it was "storage_path must be a string", though the API's hints say PathLike)
    config = load_search_config(folder / "s.yaml", {"storage_path": tmp_path / "here", "tracking_uri": tmp_path / "t.db"},
                                cwd=tmp_path)
    assert config.settings.storage_path == str(tmp_path / "here")
    assert config.settings.tracking_uri == f"sqlite:///{tmp_path / 't.db'}"


@pytest.mark.parametrize("data, match", [
    ({"recipe": RECIPE, "macs_budget": 0.5, "trails": 3}, "unknown key 'trails' in the search config"),
    ({"recipe": RECIPE}, "needs a MACs budget"),
    ({"recipe": RECIPE, "macs_budget": 1.5}, r"macs_budget must be a fraction .* got 1.5"),
    ({"recipe": RECIPE, "macs_budget": 0.5, "flops_budget": 0.5}, "give one of"),
    ({"macs_budget": 0.5}, "needs a base 'recipe'"),
    ({"recipe": {**RECIPE, "plan": "p.json"}, "macs_budget": 0.5}, "must not carry a 'plan'"),
    ({"recipe": {**RECIPE, "modle": 1}, "macs_budget": 0.5}, "unknown key 'modle'"),
    ({"recipe": RECIPE, "macs_budget": 0.5, "sampler": "cmaes"}, "sampler must be one of tpe, nsga2"),
    ({"recipe": RECIPE, "macs_budget": 0.5, "trials": 0}, "trials must be an integer >= 1"),
    ({"recipe": RECIPE, "macs_budget": 0.5, "asha": {"grace": 1}}, "unknown key 'grace' in asha"),
    ({"recipe": RECIPE, "macs_budget": 0.5, "experiment": "a/b"}, "experiment must be a name"),
    ({"recipe": RECIPE, "macs_budget": 0.5, "space": {"criteria": ["l11"]}}, "did you mean 'l1'"),
    # Optuna seeds numpy with it: a negative or too large seed crashed the search with a traceback
    ({"recipe": RECIPE, "macs_budget": 0.5, "seed": -1}, r"seed must be an integer in \[0, 4294967294\], got -1"),
    ({"recipe": RECIPE, "macs_budget": 0.5, "seed": 2**32}, r"seed must be an integer in \[0, 4294967294\]"),
    # a trial sees the GPUs Ray gives it numbered from 0: cuda:1 was no device it had, and every trial failed
    ({"recipe": {**RECIPE, "device": "cuda:1"}, "macs_budget": 0.5, "gpus_per_trial": 1}, r"as cuda:0; write device"),
    ({"recipe": {**RECIPE, "device": "cuda:2"}, "macs_budget": 0.5, "gpus_per_trial": 2}, r"as cuda:0\.\.cuda:1;"),
])
def test_schema_errors_name_the_key(tmp_path, data, match: str) -> None:
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        parse_search_config(data, cwd=tmp_path)


def test_a_gpu_search_names_a_gpu_its_trials_have(tmp_path, caplog) -> None:
    config = parse_search_config({"recipe": {**RECIPE, "device": "cuda"}, "macs_budget": 0.5,
                                  "gpus_per_trial": 0.25}, cwd=tmp_path)
    assert config.recipe.device == "cuda" and config.settings.gpus_per_trial == 0.25
    config = parse_search_config({"recipe": {**RECIPE, "device": "cuda:1"}, "macs_budget": 0.5,
                                  "gpus_per_trial": 2}, cwd=tmp_path)  # the second of the trial's two
    assert config.recipe.device == "cuda:1"
    # the flag counts as the file's key does
    with pytest.raises(ConfigError, match="as cuda:0; write device"):
        load_search_config(_written(tmp_path, {"recipe": {**RECIPE, "device": "cuda:1"}, "macs_budget": 0.5,
                                               "gpus_per_trial": 2}), {"gpus_per_trial": 0.5}, cwd=tmp_path)
    # no GPU reserved: the trials share the machine's uncounted, which is said
    with caplog.at_level("WARNING", logger="prunetune"):
        parse_search_config({"recipe": {**RECIPE, "device": "cuda"}, "macs_budget": 0.5}, cwd=tmp_path)
    assert "Ray reserves no GPU for the trials" in caplog.text and "--gpus-per-trial 0.25" in caplog.text


def _written(folder: Path, data: dict) -> Path:
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_flops_budget_is_a_synonym_and_flags_win(tmp_path) -> None:
    config = parse_search_config({"recipe": RECIPE, "flops_budget": 0.3}, overrides={"macs_budget": 0.25}, cwd=tmp_path)
    # the flag wins in the one place the search's budget lives (the base recipe no longer carries a copy)
    assert config.settings.macs_budget == 0.25 and config.settings.budget == MacsBudget(0.25)
    assert config.recipe.allocation is None
    assert parse_search_config({"recipe": RECIPE, "flops_budget": 0.3}, cwd=tmp_path).settings.macs_budget == 0.3
    with pytest.raises(ConfigError, match="unknown search setting 'budget'"):
        parse_search_config({"recipe": RECIPE}, overrides={"budget": 0.2}, cwd=tmp_path)


def test_missing_files_are_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_search_config(tmp_path / "nope.yaml")
    (tmp_path / "s.yaml").write_text("recipe: missing.yaml\nmacs_budget: 0.5\n")
    with pytest.raises(ConfigError, match="base recipe .*missing.yaml.* does not exist"):
        load_search_config(tmp_path / "s.yaml")


def test_identity_ignores_run_only_settings(tmp_path) -> None:
    a = parse_search_config({"recipe": RECIPE, "macs_budget": 0.5, "concurrency": 1}, cwd=tmp_path)
    b = parse_search_config({"recipe": RECIPE, "macs_budget": 0.5, "concurrency": 4}, cwd=tmp_path)
    c = parse_search_config({"recipe": RECIPE, "macs_budget": 0.4}, cwd=tmp_path)
    assert a.identity() == b.identity() != c.identity()


def test_spaces_search_tracking_import_no_heavy_extras() -> None:
    code = ("import sys, prunetune, prunetune.pruning, prunetune.spaces, prunetune.search, prunetune.tracking, "
            "prunetune.cli.search, prunetune.cli.pareto, prunetune.cli.export, prunetune.cli.demo\n"
            "print(sorted(m for m in ('ray', 'optuna', 'mlflow', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]"
