"""Plugin modules (``plugins:`` / ``--plugin``): checked, imported with the opt-in, and imported in the
search's Ray workers, whose screening and trials then know the entries they register."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

from prunetune.exceptions import ConfigError, UntrustedCodeError
from prunetune.pruning.criteria import CRITERIA

PLUGIN = "ptplug_criteria"
CRITERION = "ptplug_l1"
SOURCE = textwrap.dedent(f"""
    from dataclasses import dataclass

    from prunetune.pruning.criteria import WEIGHT, Criterion, register


    @dataclass(frozen=True)
    class PlugL1(Criterion):
        def needs(self, params):
            return frozenset({{WEIGHT}})

        def from_weight(self, weight, **params):
            return weight.detach().reshape(weight.shape[0], -1).abs().sum(1).double()


    register(PlugL1({CRITERION!r}, summary="a plugin's L1 norm"))
""")


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """A folder holding the plugin module, on the driver's path; the entry and module gone afterwards."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / f"{PLUGIN}.py").write_text(SOURCE)
    (folder / "ptplug_broken.py").write_text("raise RuntimeError('the plugin is broken')\n")
    (folder / "ptplug_exits.py").write_text("import sys\nsys.exit(0)\n")  # an unguarded main()
    (folder / "ptplug_empty.py").write_text("X = 1\n")  # registers nothing
    package = folder / "ptplugpkg"  # registers through a helper in another module of the package
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "utils.py").write_text(SOURCE.replace(f"register(PlugL1({CRITERION!r}, summary=\"a plugin's L1 norm\"))",
                                                     "def add(name):\n    register(PlugL1(name))"))
    (package / "criteria.py").write_text("from ptplugpkg.utils import add\n\nadd('ptpkg_helper_l1')\n")
    (package / "direct.py").write_text("from ptplugpkg.utils import add\n\nadd('ptpkg_direct_l1')\n")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    _unload_plugins()


@pytest.fixture(autouse=True)
def _no_plugin_loaded_before():
    """Each test starts with none of the plugins imported or registered, whatever ran before it."""
    _unload_plugins()


def _unload_plugins() -> None:
    for name in (PLUGIN, "ptplug_broken", "ptplug_exits", "ptplug_empty", "ptplugpkg", "ptplugpkg.utils", "ptplugpkg.criteria", "ptplugpkg.direct"):
        sys.modules.pop(name, None)
    for name in (CRITERION, "ptpkg_helper_l1", "ptpkg_direct_l1"):
        CRITERIA._items.pop(name, None)
        CRITERIA._plugins.pop(name, None)


def test_plugin_names_need_the_opt_in_and_importable_modules(plugin_dir, caplog) -> None:
    from prunetune._plugins import load_plugins

    assert load_plugins(None, allow_code=False) == ()
    with pytest.raises(UntrustedCodeError, match=rf"^plugins '{PLUGIN}' would import and run Python code; if you "
                                                 "trust it, pass --allow-code"):
        load_plugins([PLUGIN], allow_code=False)
    assert CRITERION not in CRITERIA  # refused before the import
    with pytest.raises(ConfigError, match=r"'plugins/x\.py' is not a module name; give a dotted name"):
        load_plugins(["plugins/x.py"], allow_code=True)
    with pytest.raises(ConfigError, match=r"^plugins must be a list of module names"):
        load_plugins({"a": 1}, allow_code=True)
    with pytest.raises(UntrustedCodeError, match=r"'os\.path' is refused"):
        load_plugins(["os.path"], allow_code=True)
    with pytest.raises(UntrustedCodeError, match=r"'unittest\.__main__' is refused"):  # a package's script
        load_plugins(["unittest.__main__"], allow_code=True)
    with pytest.raises(ConfigError, match=r"^plugin module 'ptplug_missing' is not importable \(No module named "
                                          r"'ptplug_missing'\); install it, or put its folder on PYTHONPATH"):
        load_plugins(["ptplug_missing"], allow_code=True)
    with pytest.raises(ConfigError, match=r"^plugin module 'ptplug_broken' failed on import: RuntimeError: the "
                                          "plugin is broken"):
        load_plugins(["ptplug_broken"], allow_code=True)
    with pytest.raises(ConfigError, match=r"^plugin module 'ptplug_exits' exited on import \(SystemExit 0\); "
                                          "guard its script code"):
        load_plugins(["ptplug_exits"], allow_code=True)  # the command ended with status 0 and no word
    assert load_plugins([PLUGIN, PLUGIN], allow_code=True) == (PLUGIN,)
    assert CRITERIA.plugins()[CRITERION] == PLUGIN
    with caplog.at_level("WARNING", logger="prunetune"):
        load_plugins(["ptplug_empty"], allow_code=True)
    assert "plugin module 'ptplug_empty' registered nothing at its import" in caplog.text


def test_an_unknown_criterion_says_how_a_plugins_entry_is_imported() -> None:
    from prunetune.exceptions import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"A plugin's criterion\? Import its module first \(--plugin MODULE "
                                               "--allow-code"):
        CRITERIA.get("no_such_criterion")


def test_a_search_config_imports_its_plugins_before_reading_the_space(plugin_dir, make_config, tmp_path) -> None:
    from prunetune.search import preflight

    space = {"ratios": "uniform", "criteria": ["l1", CRITERION]}
    with pytest.raises(UntrustedCodeError, match=rf"^the search config's plugins '{PLUGIN}' would import and run"):
        make_config(space=space, plugins=[PLUGIN])
    # given beside the config, the message names what was typed: the flag, or the API's keyword
    from prunetune._spelling import KEYWORDS
    from prunetune.search import parse_search_config

    data = {"recipe": {"model": {"name": "tiny_resnet", "in_channels": 1}, "data": "digits"}, "space": space,
            "macs_budget": 0.5}
    with pytest.raises(UntrustedCodeError, match=rf"^--plugin '{PLUGIN}' would import and run"):
        parse_search_config(data, overrides={"plugins": [PLUGIN]}, cwd=tmp_path)
    with pytest.raises(UntrustedCodeError, match=rf"^plugins '{PLUGIN}' would import and run"):
        parse_search_config(data, overrides={"plugins": [PLUGIN]}, cwd=tmp_path, spelling=KEYWORDS)
    # the command line's other advice names its flags
    with pytest.raises(ConfigError, match=r"needs a MACs budget: pass --macs-budget 0\.5 or set macs_budget"):
        parse_search_config({k: v for k, v in data.items() if k != "macs_budget"}, cwd=tmp_path)
    # (a space of built-in criteria: without the plugin imported, the space would be refused first)
    with pytest.raises(ConfigError, match=r"^allow_code belongs in the search config itself \(or --allow-code\)"):
        parse_search_config({**data, "space": {"ratios": "uniform", "criteria": ["l1"]},
                             "recipe": {**data["recipe"], "allow_code": True}}, cwd=tmp_path)
    config = make_config(space=space, plugins=[PLUGIN], allow_code=True)
    assert config.settings.plugins == (PLUGIN,) and config.to_dict()["plugins"] == [PLUGIN]
    assert config.identity()["plugins"] == [PLUGIN]  # a resume with other plugins is refused (resume_state)
    from prunetune.search.config import SearchSettings

    with pytest.raises(UntrustedCodeError, match="would import and run Python code"):  # from Python, too
        SearchSettings(**{**vars(config.settings), "allow_code": False})
    preflight.check_plugins(config)  # named in plugins: the workers import it
    with pytest.raises(ConfigError, match="^plugins are not read from a recipe"):  # the base recipe's: refused
        make_config(recipe={"model": {"name": "tiny_resnet", "in_channels": 1}, "data": "digits", "plugins": [PLUGIN]},
                    space=space, allow_code=True)
    # the same entry, its module not named: refused before any work, saying how to name it
    bare = make_config(space=space, allow_code=True)
    with pytest.raises(ConfigError, match=rf"is registered by '{PLUGIN}' in this process only.*To search with it, "
                                          rf"name the module in the search config's plugins \(plugins: \[{PLUGIN}\]"):
        preflight.check_plugins(bare)


@pytest.mark.ray
@pytest.mark.slow
def test_a_searchs_workers_import_its_plugins(plugin_dir, make_config) -> None:
    """Screening and trials run in Ray workers that import prunetune only: before ``plugins``, every
    candidate and trial failed on the plugin's criterion name."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("optuna")
    pytest.importorskip("mlflow")
    from prunetune.recipes.planning import build_plan
    from prunetune.search import TrialResult, run_search
    from prunetune.spaces import trial_recipe

    def plan_only(config, base, table, *, report=None) -> TrialResult:
        time.sleep(0.1)
        recipe = trial_recipe(base.recipe, config, base.groups)
        plan = build_plan(recipe, base, table)  # resolves the plugin's criterion name in the worker
        metrics = {"accuracy": 0.5 + config["target_macs"] / 2, "macs": float(plan.pruned.macs),
                   "params": float(plan.pruned.params), "macs_ratio": plan.macs_ratio,
                   "target_macs": config["target_macs"]}
        return TrialResult(metrics, [], plan, recipe)

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    # the workers find the plugin as a user's would, on PYTHONPATH (not on the driver's sys.path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(plugin_dir)}})
    try:
        # the base recipe's criterion: the space's one, the plugin's
        config = make_config(space={"ratios": "uniform", "criteria": [CRITERION]}, plugins=[PLUGIN],
                             allow_code=True, trials=3)
        outcome = run_search(config, objective=plan_only, show_progress=False)
    finally:
        ray.shutdown()
    assert outcome.status == "FINISHED" and outcome.counts == {"FINISHED": 3}, outcome
    from prunetune.tracking import load_search

    # the search's record names its plugins: `prunetune pareto` prints them in its export command
    assert load_search(config.settings.tracking_uri, config.settings.experiment).plugins == (PLUGIN,)


@pytest.mark.ray
@pytest.mark.slow
def test_workers_that_cannot_import_a_plugin_say_so_in_one_line(plugin_dir, make_config) -> None:
    """The driver imports the plugin (its folder on sys.path), the workers cannot (no PYTHONPATH): the
    screening actors died in their constructor, and the driver printed Ray's traceback."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("optuna")
    pytest.importorskip("mlflow")
    from prunetune.search import run_search

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        config = make_config(space={"ratios": "uniform", "criteria": [CRITERION]}, plugins=[PLUGIN],
                             allow_code=True, trials=2)
        with pytest.raises(ConfigError, match=rf"^screening evaluated none of its \d+ candidates \(first error: "
                                              rf"ConfigError: plugin module '{PLUGIN}' is not importable.*\); fix the cause "
                                              r"\(the trials would meet it too\)$"):
            run_search(config, show_progress=False)
    finally:
        ray.shutdown()


def test_score_takes_plugin_modules_with_the_opt_in(plugin_dir, tmp_path, capsys) -> None:
    import yaml

    from prunetune.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1},
        "data": {"name": "digits", "image_size": 8, "batch_size": 128},
        "pretrain": {"epochs": 1, "batch_size": 128}, "finetune": {"epochs": 1, "batch_size": 128},
        "criterion": CRITERION, "allocation": {"ratio": 0.5}, "device": "cpu"}))
    assert main(["score", "--recipe", str(recipe), "--plugin", PLUGIN]) == 2
    err = capsys.readouterr().err
    assert f"--plugin '{PLUGIN}' would import and run Python code; if you trust it, pass --allow-code" in err
    assert main(["score", "--recipe", str(recipe), "--plugin", PLUGIN, "--allow-code", "--format", "json"]) == 0
    assert CRITERION in capsys.readouterr().out


def test_an_entry_is_credited_to_the_plugin_whose_import_registered_it(plugin_dir, make_config) -> None:
    """Credited by the registering frame's module, an entry a package registers through a helper in
    another of its modules was refused although its plugin was named; and a submodule the plugin does
    not import passed the check by its name's prefix, to fail on every worker."""
    import importlib

    from prunetune.search import preflight

    config = make_config(space={"ratios": "uniform", "criteria": ["l1", "ptpkg_helper_l1"]},
                         plugins=["ptplugpkg.criteria"], allow_code=True)
    assert CRITERIA.plugins()["ptpkg_helper_l1"] == "ptplugpkg.criteria"  # not ptplugpkg.utils
    preflight.check_plugins(config)
    importlib.import_module("ptplugpkg.direct")  # the user's own code, not a named plugin
    assert CRITERIA.plugins()["ptpkg_direct_l1"] == "ptplugpkg.utils"
    config = make_config(space={"ratios": "uniform", "criteria": ["l1", "ptpkg_direct_l1"]},
                         plugins=["ptplugpkg"], allow_code=True)
    with pytest.raises(ConfigError, match="'ptpkg_direct_l1' is registered by 'ptplugpkg.utils' in this process only"):
        preflight.check_plugins(config)


def test_a_search_resumed_after_its_plugins_code_changed_is_refused(plugin_dir, make_config) -> None:
    """Resuming after an edit of the plugin took the old screening pool and fine-tuned with the new code."""
    from prunetune.search.resume import resume_state, write_state

    space = {"ratios": "uniform", "criteria": ["l1", CRITERION]}
    config = make_config(space=space, plugins=[PLUGIN], allow_code=True)
    exp = config.settings.experiment_dir
    exp.mkdir(parents=True)
    write_state(exp, {"identity": config.identity(), "parent_run_id": "r", "study_name": "tiny", "finished": False})
    assert resume_state(config, exp, None) is not None  # unchanged: resumes
    source = plugin_dir / f"{PLUGIN}.py"
    text = source.read_text()
    try:
        source.write_text(text + "\n# edited\n")
        with pytest.raises(ConfigError, match="was started with another 'plugins_code'"):
            resume_state(make_config(space=space, plugins=[PLUGIN], allow_code=True), exp, None)
    finally:
        source.write_text(text)


@pytest.mark.ray
@pytest.mark.slow
def test_a_screening_worker_that_dies_ends_the_search_in_one_line(plugin_dir, make_config, monkeypatch) -> None:
    """A plugin that exits in a worker (os._exit, a crash) killed the screening actor, and the driver
    printed Ray's 40-line ActorDiedError."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("optuna")
    pytest.importorskip("mlflow")
    import os

    from prunetune.search import run_search

    (plugin_dir / "ptplug_wexit.py").write_text(
        "import os\nfrom ptplug_criteria import *  # noqa\n"
        "if os.getpid() != int(os.environ['PTPLUG_DRIVER_PID']):\n    os._exit(1)\n")
    monkeypatch.setenv("PTPLUG_DRIVER_PID", str(os.getpid()))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(plugin_dir), "PTPLUG_DRIVER_PID": str(os.getpid())}})
    try:
        config = make_config(space={"ratios": "uniform", "criteria": [CRITERION]},
                             plugins=[PLUGIN, "ptplug_wexit"], allow_code=True, trials=2)
        with pytest.raises(ConfigError, match=r"^a screening worker died \(.*\); if a plugin.*lower concurrency$"):
            run_search(config, show_progress=False)
    finally:
        ray.shutdown()
        sys.modules.pop("ptplug_wexit", None)
