"""``prunetune groups`` / ``prune`` / ``score`` from the command line: outputs and user errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from prunetune import load_pruned
from prunetune.cli import main
from prunetune.models import create_model

FAST = {
    "model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1},
    "data": {"name": "digits", "image_size": 8},
    "criterion": "l1",
    "allocation": {"macs_budget": 0.5},
    "finetune": {"epochs": 1, "lr": 0.05, "batch_size": 64},
    "pretrain": {"epochs": 2, "lr": 0.1},
    "calibration": {"size": 64, "batch_size": 32},
    "seed": 0,
}


def one_error_line(err: str) -> bool:
    """The error is one line (info lines about progress may precede it), with no traceback."""
    return len([line for line in err.splitlines() if ": error: " in line]) == 1 and "Traceback" not in err


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_recipe(tmp_path: Path, **changes) -> Path:
    recipe = {**FAST, **changes}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_groups_resnet56_ratio_0_4_matches_hand_widths(capsys) -> None:
    code, out, _ = run(capsys, "groups", "--model", "resnet56", "--ratio", "0.4", "--format", "json")
    assert code == 0
    data = json.loads(out)
    widths = [g["kept"] for g in data["groups"]]
    hand = [math.floor(16 * 0.6)] * 10 + [math.floor(32 * 0.6)] * 10 + [math.floor(64 * 0.6)] * 10
    assert widths == hand == [9] * 10 + [19] * 10 + [38] * 10
    assert [g["channels"] for g in data["groups"]] == [16] * 10 + [32] * 10 + [64] * 10
    assert data["dense"] == {"macs": 125485696, "params": 853018}
    assert data["pruned"]["macs"] < 0.5 * data["dense"]["macs"]


def test_groups_budget_and_table(capsys) -> None:
    code, out, _ = run(capsys, "groups", "--model", "vgg16_bn", "--macs-budget", "0.5")
    assert code == 0 and "features.0" in out and "14 groups" in out
    code, out, _ = run(capsys, "groups", "--model", "resnet20", "--flops-budget", "0.5", "--format", "json")
    data = json.loads(out)
    assert data["pruned"]["macs"] <= 0.5 * data["dense"]["macs"]


def test_prune_digits_end_to_end(tmp_path, capsys) -> None:
    recipe = write_recipe(tmp_path)
    out_path = tmp_path / "pruned.pt"
    code, out, err = run(capsys, "prune", "--recipe", str(recipe), "--out", str(out_path), "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["pruned"]["macs"] <= 0.5 * data["dense"]["macs"]
    assert 0.0 <= data["pruned"]["accuracy"] <= 1.0 and data["dense"]["accuracy"] > 0.3
    model = load_pruned(out_path)
    plan = json.loads(Path(data["plan"]).read_text())
    assert plan["pruned"]["macs"] == data["pruned"]["macs"]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # Refuses to overwrite what the user saved.
    code, _, err = run(capsys, "prune", "--recipe", str(recipe), "--out", str(out_path))
    assert code == 2 and "--overwrite" in err and one_error_line(err)


def test_exported_plan_replays_to_the_same_network(tmp_path, capsys) -> None:
    first = tmp_path / "a.pt"
    assert run(capsys, "prune", "--recipe", str(write_recipe(tmp_path)), "--out", str(first), "--format", "json")[0] == 0
    plan = json.loads(first.with_suffix(".plan.json").read_text())
    replay = write_recipe(tmp_path, plan=plan)
    second = tmp_path / "b.pt"
    code, out, err = run(capsys, "prune", "--recipe", str(replay), "--out", str(second), "--format", "json")
    assert code == 0, err
    again = json.loads(second.with_suffix(".plan.json").read_text())
    assert again["groups"] == plan["groups"] and again["pruned"] == plan["pruned"]
    # a carried plan's recorded costs are not copied forward: the new pair records what was counted
    edited = write_recipe(tmp_path, plan={**plan, "pruned": {"macs": 1, "params": 1}, "dense": {"macs": 2, "params": 2}})
    third = tmp_path / "c.pt"
    code, out, err = run(capsys, "prune", "--recipe", str(edited), "--out", str(third), "--format", "json")
    assert code == 0, err
    recounted = json.loads(third.with_suffix(".plan.json").read_text())
    assert recounted["pruned"] == plan["pruned"] and recounted["dense"] == plan["dense"]
    assert main(["deploy", "--model", str(third), "--format", "torchscript", "--out", str(tmp_path / "c.ts")]) == 0


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"criterion": "l1x"}, "did you mean 'l1'"),
        ({"model": {"name": "resnet2O", "in_channels": 1}}, "unknown model 'resnet2O'"),
        ({"data": {"name": "digit"}}, "did you mean 'digits'"),
        ({"allocation": {"ratio": 1.5}}, "1.5"),
        ({"allocation": {"ratios": {"layer1.0.conv": 0.3}, "default": 0.2}}, "did you mean 'layer1.0.conv1'"),
        ({"allocation": {"macs_budget": 0.0001}}, "smallest reachable fraction"),
        ({"finetune": {"epochs": 1, "lrr": 0.1}}, "'lrr'"),
        ({"finetune": {"epoch": 1}}, "unknown key 'epoch' in recipe section 'finetune' (did you mean 'epochs'?)"),
        ({"critrion": "l1"}, "unknown key 'critrion' in the recipe (did you mean 'criterion'?)"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1, "checkpoint": "missing.pt"}},
         "does not exist"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys, changes, needle) -> None:
    recipe = write_recipe(tmp_path, **changes)
    code, _, err = run(capsys, "prune", "--recipe", str(recipe), "--out", str(tmp_path / "x.pt"))
    assert code == 2, err
    assert needle in err and one_error_line(err)


@pytest.mark.parametrize(("out", "needle"), [("", "--out is empty"), (".", "is a directory"), ("/", "is a directory"),
                                           ("{tmp}/newdir/", "ends in '/'"), ("{tmp}/p.pt/", "ends in '/'")])
def test_out_that_names_no_file_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, out, needle) -> None:
    """``--out .`` (or ``""``, ``/``) was a ValueError traceback from the plan file's name; ``--out newdir/``
    silently saved a file named ``newdir``."""
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(capsys, "prune", "--recipe", str(recipe), "--out", out.format(tmp=tmp_path))
    assert code == 2 and needle in err and one_error_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_checkpoint_that_does_not_fit(tmp_path, capsys) -> None:
    ckpt = tmp_path / "other.pt"
    torch.save(create_model("tiny_resnet", num_classes=3, in_channels=1).state_dict(), ckpt)
    recipe = write_recipe(tmp_path, model={"name": "tiny_resnet", "num_classes": 10, "in_channels": 1,
                                           "checkpoint": str(ckpt)})
    code, _, err = run(capsys, "prune", "--recipe", str(recipe), "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "does not fit" in err and "fc.weight" in err and one_error_line(err)


def test_a_checkpoint_with_a_nan_weight_is_one_line_before_any_work(tmp_path, capsys) -> None:
    """With an activation criterion it was a LinAlgError traceback from inside the scoring."""
    model = create_model("tiny_resnet", num_classes=10, in_channels=1)
    state = model.state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    ckpt = tmp_path / "diverged.pt"
    torch.save(state, ckpt)
    recipe = write_recipe(tmp_path, model={"name": "tiny_resnet", "num_classes": 10, "in_channels": 1,
                                           "checkpoint": str(ckpt)}, criterion="hrank")
    code, _, err = run(capsys, "prune", "--recipe", str(recipe), "--out", str(tmp_path / "x.pt"))
    assert code == 2 and one_error_line(err)
    assert "holds 1 non-finite value(s) (NaN or inf) in 'conv1.weight'; a diverged training?" in err


def test_missing_recipe_and_unknown_model(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "prune", "--recipe", str(tmp_path / "nope.yaml"), "--out", "x.pt")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "groups", "--model", "vgg16")
    assert code == 2 and "did you mean 'vgg16_bn'" in err


def test_checkpoint_is_used_when_given(tmp_path, capsys) -> None:
    model = create_model("tiny_resnet", num_classes=10, in_channels=1)
    ckpt = tmp_path / "dense.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    recipe = write_recipe(tmp_path, model={"name": "tiny_resnet", "num_classes": 10, "in_channels": 1,
                                           "checkpoint": "dense.pt"})  # relative to the recipe file
    code, out, err = run(capsys, "prune", "--recipe", str(recipe), "--out", str(tmp_path / "p.pt"), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["dense"]["accuracy"] < 0.5  # an untrained checkpoint, not the brief training


def test_groups_marks_groups_it_cannot_count_analytically(capsys) -> None:
    code, out, _ = run(capsys, "groups", "--model", "zoo_transposed", "--macs-budget", "0.5")
    assert code == 0 and "counted*" in out and "ConvTranspose2d" in out
    code, out, _ = run(capsys, "groups", "--model", "zoo_transposed", "--format", "json")
    data = json.loads(out)
    assert [g["analytic"] for g in data["groups"]] == [True, False, True] and data["counted"]
    code, out, _ = run(capsys, "groups", "--model", "zoo_grouped")
    assert "counted*" not in out and "not pruned: grouped.0" in out


def test_output_piped_into_a_reader_that_stops_is_no_traceback() -> None:
    # `prunetune groups --format json | head -1` printed a BrokenPipeError traceback
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "prunetune", "groups", "--model", "resnet56", "--format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command prints
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_holds_back_ray_tunes_own_warnings(monkeypatch, quiet) -> None:
    """On Ctrl-C, `search -q` printed Ray Tune's "Stop signal received ... Press CTRL+C to skip"
    (Ray's loggers have their own handler, which the root level does not reach); without -q it stays."""
    import logging

    import prunetune.cli.groups as groups_cli
    from prunetune.cli import main

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    # a local Ray started earlier in this process leaves the "ray" logger at ERROR: the default, here
    ray_log = logging.getLogger("ray")
    ray_level = ray_log.level
    ray_log.setLevel(logging.NOTSET)
    tune_log = logging.getLogger("ray.tune.tune")
    handler = Keep()
    tune_log.addHandler(handler)
    before = logging.getLogger("ray.tune").level
    monkeypatch.setattr(groups_cli, "run", lambda args: tune_log.warning("Stop signal received") or 0)
    try:
        assert main((["-q"] if quiet else []) + ["groups", "--model", "resnet20"]) == 0
    finally:
        tune_log.removeHandler(handler)
        ray_log.setLevel(ray_level)
    assert seen == ([] if quiet else ["Stop signal received"])
    assert logging.getLogger("ray.tune").level == before  # put back after the command


@pytest.mark.parametrize(("other", "hint"), [
    ({"num_classes": 3, "in_channels": 1}, "check num_classes"),
    ({"num_classes": 10, "in_channels": 3}, "check in_channels"),
])
def test_a_checkpoint_of_other_classes_or_inputs_says_which(tmp_path, other, hint) -> None:
    from prunetune.exceptions import CheckpointError
    from prunetune.recipes.checkpoint import load_checkpoint

    ckpt = tmp_path / "other.pt"
    torch.save(create_model("tiny_resnet", **other).state_dict(), ckpt)
    with pytest.raises(CheckpointError, match=f"; {hint}$"):
        load_checkpoint(create_model("tiny_resnet", num_classes=10, in_channels=1), ckpt)


def test_a_checkpoint_of_another_width_does_not_blame_classes_or_inputs(tmp_path) -> None:
    from prunetune.exceptions import CheckpointError
    from prunetune.recipes.checkpoint import load_checkpoint

    def net(width: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(1, width, 3), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
                                   torch.nn.Conv2d(width, 16, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(16, 10))

    ckpt = tmp_path / "narrow.pt"
    torch.save(net(8).state_dict(), ckpt)
    with pytest.raises(CheckpointError, match=r"'0\.weight' has shape \(8, 1, 3, 3\), the model expects "
                                              r"\(16, 1, 3, 3\); the checkpoint is of another width or architecture"):
        load_checkpoint(net(16), ckpt)


def test_exports_replay_command_adds_allow_code_for_the_users_own_model_and_plugins(tmp_path) -> None:
    from dataclasses import dataclass

    from prunetune._registry import crediting
    from prunetune.cli.export import _code_flags
    from prunetune.pruning.criteria import CRITERIA, WEIGHT, Criterion, register

    (tmp_path / "own.yaml").write_text("model: {name: 'mynet:build', num_classes: 10}\ndata: {name: digits}\n")
    (tmp_path / "zoo.yaml").write_text("model: {name: resnet20, num_classes: 10}\ndata: {name: digits}\n")
    assert _code_flags(tmp_path / "own.yaml") == " --allow-code"
    assert _code_flags(tmp_path / "zoo.yaml") == ""

    @dataclass(frozen=True)
    class Mine(Criterion):
        def needs(self, params):
            return frozenset({WEIGHT})

    try:  # the recipe names an entry the plugin module 'a.b' registered: its replay imports it
        with crediting("a.b"):
            register(Mine("mine_for_the_replay_test"))
        (tmp_path / "plug.yaml").write_text("model: {name: resnet20}\ndata: {name: digits}\n"
                                            "criterion: {blend: {l1: 1.0, mine_for_the_replay_test: 1.0}}\n")
        assert _code_flags(tmp_path / "plug.yaml") == " --plugin a.b --allow-code"
    finally:
        CRITERIA._items.pop("mine_for_the_replay_test", None)
        CRITERIA._plugins.pop("mine_for_the_replay_test", None)


def test_a_dense_checkpoint_given_as_a_pruned_model_says_what_to_give(tmp_path) -> None:
    from prunetune.exceptions import CheckpointError
    from prunetune.recipes.pruned_file import load_pruned

    ckpt = tmp_path / "dense.pt"
    torch.save(create_model("tiny_resnet", num_classes=10, in_channels=1).state_dict(), ckpt)
    with pytest.raises(CheckpointError, match=r"is not a pruned model written by prunetune prune --out \(a dense "
                                              r"checkpoint or another file\?\); give the \.pt file"):
        load_pruned(ckpt)


def test_the_checkpoint_hint_reads_the_first_and_last_layers_not_the_first_and_last_keys(tmp_path) -> None:
    """A model starting with a data BN, or ending in a BatchNorm1d (last key num_batches_tracked), or a
    scalar parameter of another shape: a wrong hint, or a raw IndexError."""
    from prunetune.exceptions import CheckpointError
    from prunetune.recipes.checkpoint import load_checkpoint

    class Net(torch.nn.Module):
        def __init__(self, cin: int, classes: int, scale_shape: tuple[int, ...] = ()) -> None:
            super().__init__()
            self.data_bn = torch.nn.BatchNorm2d(cin)
            self.conv = torch.nn.Conv2d(cin, 8, 3)
            self.fc = torch.nn.Linear(8, classes)
            self.out_bn = torch.nn.BatchNorm1d(classes)
            self.scale = torch.nn.Parameter(torch.ones(scale_shape))

    def fails(saved: torch.nn.Module, loaded: torch.nn.Module) -> str:
        torch.save(saved.state_dict(), tmp_path / "w.pt")
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(loaded, tmp_path / "w.pt")
        return str(info.value)

    message = fails(Net(3, 10), Net(1, 10))  # the data BN's statistics come first: not a layer's inputs
    assert "'data_bn.weight' has shape (3,)" in message and "num_classes and in_channels" in message
    assert fails(Net(1, 3), Net(1, 10)).endswith("'fc.weight' has shape (3, 8), the model expects (10, 8); "
                                                  "check num_classes")
    assert "another width or architecture" in fails(Net(1, 10, (1,)), Net(1, 10))


def test_a_model_object_in_a_recipe_says_how_to_name_it_instead() -> None:
    import prunetune

    with pytest.raises(prunetune.ConfigError, match=r"^recipe section 'model' takes a name, not a model object "
                                                     r"\(CifarResNet\); name your model's function as"):
        prunetune.prune({"model": create_model("resnet20"), "data": {"name": "digits"}, "criterion": "l1",
                         "allocation": {"ratio": 0.5}})


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_goes_before_or_after_the_command_and_shows_the_traceback(where, capsys) -> None:
    """After the command it was 'unrecognized arguments: --debug' (README: before only), as -q once was."""
    from prunetune.exceptions import PrunetuneError

    argv = ["groups", "--model", "no_such_model"]
    assert main(argv) == 2 and "error" in capsys.readouterr().err  # one line without it
    with pytest.raises(PrunetuneError):
        main(["--debug", *argv] if where == "before" else [*argv, "--debug"])
