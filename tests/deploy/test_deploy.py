"""Deploy: BN folding keeps the function, each format round-trips with a dynamic batch, errors are clear."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import random

import pytest
import torch
from torch import nn

from prunetune.recipes.pruned_file import save_pruned
from prunetune.cli import main
from prunetune.deployment import deploy, fold_batchnorm
from prunetune.deployment import export as export_mod
from prunetune.exceptions import ConfigError, DeployError, MissingExtraError, UnknownNameError
from prunetune.models import create_model, list_models
from prunetune.pruning.groups import find_groups
from prunetune.pruning.plan import make_plan
from prunetune.pruning.surgery import apply_plan
from tests.conftest import randomize_bn

ZOO = [n for n in list_models() if n.startswith("zoo")]
SHAPE = (3, 16, 16)
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def pruned(name: str, seed: int = 0) -> torch.nn.Module:
    model = randomize_bn(create_model(name))
    groups = find_groups(model, SHAPE)
    rng = random.Random(seed)
    keep = {g.name: rng.randint(1, g.channels) for g in groups}
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups}, keep)
    return apply_plan(model, plan, groups).eval(), plan


@pytest.mark.parametrize("name", [*ZOO, "resnet20", "vgg16_bn"])
def test_folding_batchnorm_keeps_the_function(name: str) -> None:
    model, _ = pruned(name)
    folded, count = fold_batchnorm(model, SHAPE)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-4)
    norms = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert count > 0 and norms == sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                      for m in model.modules()) - count
    if name == "zoo_densenet":  # BNs over concatenations have no single producer: they stay
        assert norms > 0


@pytest.mark.filterwarnings("error::torch.jit.TracerWarning")  # a traced branch on a size is frozen: none may be left
@pytest.mark.parametrize("fmt", ["torchscript", "export"])
@pytest.mark.parametrize("name", ZOO)
def test_torch_formats_round_trip_with_dynamic_batch(name: str, fmt: str, tmp_path) -> None:
    model, _ = pruned(name)
    out = tmp_path / ("m.pt2" if fmt == "export" else "m.pt")
    result = deploy(model, fmt, out, input_shape=SHAPE, check_batch=5)
    assert out.is_file() and result.bytes > 0 and result.rel_diff <= 1e-4 and result.check_batch == 5


@pytest.mark.skipif(not HAS_ONNX, reason="the deploy extra (onnx, onnxscript, onnxruntime) is not installed")
@pytest.mark.parametrize("name", ["zoo_densenet", "zoo_shortcuts", "zoo_vgg"])
def test_onnx_round_trip_checked_by_onnxruntime(name: str, tmp_path) -> None:
    model, _ = pruned(name)
    result = deploy(model, "onnx", tmp_path / "m.onnx", input_shape=SHAPE, check_batch=1)
    assert result.rel_diff <= 1e-4 and result.folded_bn > 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(7, *SHAPE)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        assert torch.allclose(got, model(x), atol=1e-4, rtol=1e-4)


def test_missing_onnx_extra_names_the_install(monkeypatch, tmp_path) -> None:
    def missing(module, *, extra, purpose):
        raise MissingExtraError(f"{purpose} needs {module!r}; install it with: pip install -e '.[{extra}]'")

    monkeypatch.setattr(export_mod, "require", missing)
    with pytest.raises(MissingExtraError, match=r"\[deploy\]"):
        deploy(pruned("zoo_vgg")[0], "onnx", tmp_path / "m.onnx", input_shape=SHAPE)


def test_a_file_that_computes_something_else_is_an_error(monkeypatch, tmp_path) -> None:
    real = export_mod.WRITERS["torchscript"]

    def wrong(model, example, out):
        run = real(model, example, out)
        return lambda x: run(x) * 1.01

    monkeypatch.setitem(export_mod.WRITERS, "torchscript", wrong)
    with pytest.raises(DeployError, match="differs from the PyTorch model"):
        deploy(pruned("zoo_vgg")[0], "torchscript", tmp_path / "m.pt", input_shape=SHAPE)


def test_bad_deploy_arguments(tmp_path) -> None:
    model = pruned("zoo_vgg")[0]
    with pytest.raises(ConfigError, match=r"\.pt2"):
        deploy(model, "export", tmp_path / "m.pt", input_shape=SHAPE)
    with pytest.raises(ConfigError, match="input_shape"):
        deploy(model, "torchscript", tmp_path / "m.pt")
    with pytest.raises(KeyError, match="did you mean 'onnx'"):
        deploy(model, "onnxx", tmp_path / "m.onnx", input_shape=SHAPE)


@pytest.fixture()
def pruned_file(tmp_path):
    model, plan = pruned("zoo_shortcuts")
    return save_pruned(tmp_path / "p.pt", model, plan, {"name": "zoo_shortcuts", "num_classes": 10,
                                                        "in_channels": 3, "kwargs": {}})


def test_deploy_and_bench_commands(pruned_file, tmp_path, capsys) -> None:
    assert main(["deploy", "--model", str(pruned_file), "--format", "torchscript", "--out",
                 str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out
    assert "max abs difference to PyTorch" in out and "N dynamic" in out
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    assert loaded(torch.randn(2, *SHAPE)).shape == (2, 10)
    before = (tmp_path / "m.pt").read_bytes()  # deploying again to the same file: refused, the file kept
    assert main(["deploy", "--model", str(pruned_file), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and (tmp_path / "m.pt").read_bytes() == before
    assert main(["deploy", "--model", str(pruned_file), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                 "--overwrite", "--json"]) == 0
    capsys.readouterr()
    assert main(["bench", "--model", str(pruned_file), "--batch", "1,4", "--threads", "1", "--min-time", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "pruned" in out and "median ms" in out
    assert main(["bench", "--model", str(pruned_file), "--batch", "2", "--min-time", "0.02", "--format", "json",
                 "--no-fold-bn"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in data["rows"]] == ["dense", "pruned"] and data["rows"][1]["speedup"] > 0
    assert data["rows"][1]["macs"] < data["rows"][0]["macs"]


def test_bench_and_deploy_user_errors(pruned_file, tmp_path, capsys) -> None:
    assert main(["bench", "--model", str(tmp_path / "missing.pt")]) == 2
    assert main(["bench", "--model", str(pruned_file), "--threads", "0"]) == 2
    assert main(["deploy", "--model", str(pruned_file), "--format", "export", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count(": error: ") == 3 and "Traceback" not in err
    for bad, why in (("0", "0 < 1"), ("1,,2", "'' is not a whole number"), ("1,x", "'x' is not"),
                     ("4,4", "4 twice"), ("", "'' is not"), ("1.5", "'1.5' is not")):
        with pytest.raises(SystemExit):
            main(["bench", "--model", str(pruned_file), "--batch", bad])
        err = capsys.readouterr().err
        assert why in err and err.count("error:") == 1, err


@pytest.mark.parametrize(("flag", "value", "needle"), [("--threads", "100000", "--threads 100000 is more than"),
                                                    ("--batch", "1," + str(10**12), "--batch 1000000000000 needs")])
def test_bench_beyond_the_machine_is_one_line(pruned_file, flag, value, needle) -> None:
    # --threads 100000 was a segmentation fault (exit 139, no message); a batch whose input alone exceeds
    # the memory an allocator traceback (run in a subprocess: a crash must not take pytest with it)
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "prunetune", "bench", "--model", str(pruned_file), flag, value,
                           "--min-time", "0.01"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr


@pytest.mark.parametrize(("fmt", "value", "needle"), [("export", "70000", "more than a torch.export program's"),
                                                   ("onnx", str(10**12), "needs")])
def test_deploy_check_batch_beyond_the_format_or_machine_is_one_line(pruned_file, tmp_path, capsys, fmt, value,
                                                                     needle) -> None:
    # both were tracebacks: torch.export's guard on its batch dimension, the allocator's refusal
    out = tmp_path / ("m.pt2" if fmt == "export" else "m.onnx")
    assert main(["deploy", "--model", str(pruned_file), "--format", fmt, "--out", str(out), "--check-batch", value]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() and list(tmp_path.glob(".m.*")) == []


def test_recipe_threads_above_the_machine_run_with_its_cpus(monkeypatch, caplog) -> None:
    import os

    from prunetune.recipes.pipeline import torch_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    with caplog.at_level("WARNING", logger="prunetune"), torch_threads(100000):
        inside = torch.get_num_threads()
    assert inside == 2 and torch.get_num_threads() == before
    assert "recipe threads: 100000 is more than this machine's 2 CPUs" in caplog.text
    with torch_threads(1):
        assert torch.get_num_threads() == 1


def test_folding_a_copy_leaves_the_model_alone() -> None:
    model, _ = pruned("zoo_vgg")
    before = copy.deepcopy(model.state_dict())
    fold_batchnorm(model, SHAPE)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_package_level_deploy_reads_the_input_shape_from_a_pruned_file(pruned_file, tmp_path) -> None:
    import prunetune

    result = prunetune.deploy(pruned_file, "export", tmp_path / "m.pt2")
    assert result.input_shape == SHAPE and result.rel_diff <= 1e-4
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert program(torch.randn(3, *SHAPE)).shape == (3, 10)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_deploy_to_a_directory_is_one_line(pruned_file, tmp_path, capsys, fmt) -> None:
    # was an IsADirectoryError traceback from the writer (exit status 1) after the export ran
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    capsys.readouterr()
    assert main(["deploy", "--model", str(pruned_file), "--format", fmt, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory; give a file name (--out)" in err


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
def test_bench_refuses_a_min_time_that_is_no_time(pruned_file, capsys, value) -> None:
    # a negative --min-time was accepted and printed medians with a 0 IQR and meaningless speed-ups
    capsys.readouterr()
    assert main(["bench", "--model", str(pruned_file), "--batch", "1", f"--min-time={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--min-time must be a number of seconds > 0" in err


@pytest.mark.parametrize("content", [b"existing\n", b"model: {name: resnet20}\n"])
def test_a_file_that_is_no_pruned_model_says_so(tmp_path, capsys, content) -> None:
    # a text file gave "cannot read pruned model 'x.pt': pop from empty list"
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    capsys.readouterr()
    assert main(["deploy", "--model", str(path), "--format", "torchscript", "--out", str(tmp_path / "m.ts")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a file `prunetune prune --out` wrote" in err
    assert not (tmp_path / "m.ts").exists()


def _damage(data: dict, how: str) -> None:
    if how == "no-name":
        del data["model"]["name"]
    elif how == "model-a-string":
        data["model"] = "zoo_shortcuts"
    elif how == "kwargs-allow-code":
        data["model"]["kwargs"] = {"allow_code": True}
    elif how == "kwargs-a-list":
        data["model"]["kwargs"] = [1]
    elif how == "state-dict-empty":
        data["state_dict"] = {}
    elif how == "state-dict-bad-shape":
        data["state_dict"][next(iter(data["state_dict"]))] = torch.zeros(1)
    elif how == "state-dict-a-list":
        data["state_dict"] = [1, 2]
    elif how == "plan-a-list":
        data["plan"] = [1, 2]
    elif how == "num-classes-huge":  # a Linear of 10**12 outputs: a memory-allocation traceback, or minutes
        data["model"]["num_classes"] = 10**12
    elif how == "num-classes-negative":
        data["model"]["num_classes"] = -3
    elif how == "input-shape-huge":  # a 10**12-pixel example input for tracing the groups
        data["plan"]["input_shape"] = [3, 10**6, 10**6]


@pytest.mark.parametrize("how", ["no-name", "model-a-string", "kwargs-allow-code", "kwargs-a-list", "state-dict-empty",
                                 "state-dict-bad-shape", "state-dict-a-list", "plan-a-list", "num-classes-huge",
                                 "num-classes-negative", "input-shape-huge"])
@pytest.mark.parametrize("command", ["deploy", "bench"])
def test_a_damaged_pruned_model_is_one_line(pruned_file, tmp_path, capfd, how, command) -> None:
    # a file with the pruned format but a damaged body (a truncated edit, another tool's dict) was a
    # KeyError / TypeError / RuntimeError traceback (exit status 1)
    data = torch.load(pruned_file, weights_only=True)
    _damage(data, how)
    torch.save(data, pruned_file)
    argv = (["deploy", "--model", str(pruned_file), "--format", "torchscript", "--out", str(tmp_path / "m.ts")]
            if command == "deploy" else ["bench", "--model", str(pruned_file), "--batch", "1", "--min-time", "0.01"])
    capfd.readouterr()
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(pruned_file) in err, err
    assert not (tmp_path / "m.ts").exists()


def test_a_pickle_that_torch_refuses_is_one_line(tmp_path, capfd) -> None:
    # torch's UserWarning about the pickle protocol came before the error line
    import pickle
    import warnings

    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps({"format": 1, "x": {1, 2}}, protocol=4))
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["deploy", "--model", str(path), "--format", "torchscript", "--out", str(tmp_path / "m.ts")]) == 2
    assert not caught, caught[0].message
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "is not a file `prunetune prune --out` wrote" in err, err


@pytest.mark.parametrize("failure", [KeyboardInterrupt, "differs"], ids=["interrupted", "check-fails"])
def test_a_failed_overwrite_keeps_the_file_it_would_replace(monkeypatch, tmp_path, failure) -> None:
    # the writers wrote straight into --out: with --overwrite, Ctrl-C in the middle left a truncated file in
    # place of the good one, and a file that failed its check was left there as if deployed
    real = export_mod.WRITERS["torchscript"]

    def failing(model, example, out):
        run = real(model, example, out)
        if failure is KeyboardInterrupt:
            out.write_bytes(out.read_bytes()[:50])
            raise KeyboardInterrupt
        return lambda x: run(x) * 1.01

    out = tmp_path / "m.pt"
    out.write_bytes(b"the deployed model of yesterday")
    monkeypatch.setitem(export_mod.WRITERS, "torchscript", failing)
    with pytest.raises(KeyboardInterrupt if failure is KeyboardInterrupt else DeployError):
        deploy(pruned("zoo_vgg")[0], "torchscript", out, input_shape=SHAPE, overwrite=True)
    assert out.read_bytes() == b"the deployed model of yesterday"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left


@pytest.mark.skipif(not HAS_ONNX, reason="the deploy extra (onnx, onnxscript, onnxruntime) is not installed")
def test_onnx_is_one_self_contained_file(tmp_path) -> None:
    # the exporter put the weights in m.onnx.data beside it: not checked by --out (an existing one was
    # replaced silently), not counted in the size printed, and lost when only m.onnx was copied
    (tmp_path / "m.onnx.data").write_bytes(b"somebody's data")
    result = deploy(pruned("zoo_vgg")[0], "onnx", tmp_path / "m.onnx", input_shape=SHAPE)
    assert (tmp_path / "m.onnx.data").read_bytes() == b"somebody's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert result.bytes == (tmp_path / "m.onnx").stat().st_size
    moved = tmp_path / "elsewhere" / "n.onnx"
    moved.parent.mkdir()
    (tmp_path / "m.onnx").rename(moved)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(moved), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": torch.randn(2, *SHAPE).numpy()})[0].shape == (2, 10)


@pytest.mark.parametrize(("change", "needle"), [
    ({"input_shape": [16, 16]}, "does not take inputs of its plan's input_shape (16, 16) (Given groups=1"),
    ({"input_shape": [3, 64, 64]}, "is damaged: at its plan's input_shape (3, 64, 64) the dense network counts"),
    # was the kernel's OOM kill (exit 137): the removal traced the model at that size (20 GB, 5 minutes)
    ({"input_shape": [3, 4096, 4096]}, "at its plan's input_shape (3, 4096, 4096) the dense network"),
    ({"pruned": {"macs": 1, "params": 1}}, "at its plan's input_shape (3, 16, 16) the network counts"),
])
@pytest.mark.parametrize("command", ["deploy", "bench"])
def test_a_plan_edited_to_another_input_shape_is_refused(pruned_file, tmp_path, capsys, change, needle,
                                                         command) -> None:
    """A 2-D shape was a traceback; one the network takes (64×64 for a 16×16 model) deployed for the
    wrong inputs and benched at 16 times the plan's MACs, without a word."""
    data = torch.load(pruned_file, weights_only=True)
    data["plan"].update(change)
    edited = tmp_path / "edited.pt"
    torch.save(data, edited)
    out = tmp_path / "m.pt"
    argv = (["deploy", "--model", str(edited), "--format", "torchscript", "--out", str(out)] if command == "deploy"
            else ["bench", "--model", str(edited), "--batch", "1", "--min-time", "0.01"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_a_one_channel_plan_edited_to_two_dimensions_is_one_line(tmp_path, capsys) -> None:
    """A (H, W) shape for a 1-channel network: its first conv takes the input as unbatched, and the
    batch norm after it raised a ValueError, a traceback."""
    model = randomize_bn(create_model("resnet20", in_channels=1))
    groups = find_groups(model, (1, 16, 16))
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups}, {g.name: g.channels // 2 for g in groups})
    path = save_pruned(tmp_path / "p.pt", apply_plan(model, plan, groups).eval(), plan,
                       {"name": "resnet20", "num_classes": 10, "in_channels": 1, "kwargs": {}})
    data = torch.load(path, weights_only=True)
    data["plan"]["input_shape"] = [16, 16]
    torch.save(data, path)
    assert main(["deploy", "--model", str(path), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "does not take inputs of its plan's input_shape (16, 16)" in err and err.count("\n") == 1, err


def test_deploy_counts_the_activations_against_the_memory(monkeypatch, tmp_path) -> None:
    """The memory check counted the input alone; a large input's activations then took the machine."""
    import prunetune._machine as machine

    from prunetune.pruning.cost import shape_cost

    model, _ = pruned("zoo_vgg")
    shape, batch = (3, 256, 256), 8
    largest = shape_cost(model, shape)[1]
    alone, total = 4 * batch * 3 * 256 * 256, 4 * batch * (3 * 256 * 256 + 2 * largest)
    assert total > 2 * alone  # the activations decide here, not the input
    monkeypatch.setattr(machine, "physical_memory", lambda: (alone + total) // 2)
    with pytest.raises(ConfigError, match="for its input and largest activations"):
        deploy(model, "torchscript", tmp_path / "m.pt", input_shape=shape, check_batch=batch)
    assert not (tmp_path / "m.pt").exists()


def test_a_network_the_meta_device_cannot_run_is_counted_for_real_or_loaded_with_a_warning(caplog) -> None:
    """A plain tensor attribute (not a buffer) cannot meet a meta input. Small inputs are counted for
    real; above ``REAL_COUNT_LIMIT`` the plan is loaded unchecked with a warning, not refused as damaged."""
    import dataclasses

    from prunetune.recipes.pruned_file import check_plan_cost

    class Normalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mean = torch.full((3, 1, 1), 0.5)  # a plain attribute: stays on the CPU in a meta copy
            self.conv, self.bn, self.fc = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x - self.mean)))
            return self.fc(x.mean(dim=(2, 3)))

    model = Normalised().eval()
    groups = find_groups(model, SHAPE)
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups}, {g.name: 4 for g in groups})
    small = apply_plan(model, plan, groups).eval()
    check_plan_cost(small, plan, "small")  # counted for real: passes
    with pytest.raises(Exception, match="the network counts"):
        check_plan_cost(small, dataclasses.replace(plan, input_shape=(3, 64, 64)), "edited")
    with caplog.at_level("WARNING", logger="prunetune"):
        check_plan_cost(small, dataclasses.replace(plan, input_shape=(3, 1100, 1000)), "large")
    assert "were not checked (the network cannot run on shapes alone" in caplog.text


def test_the_check_always_runs_another_batch_size_than_the_export(monkeypatch, tmp_path) -> None:
    """Exported with batch 2, a --check-batch of 2 tested no other batch size, yet the output said dynamic."""
    from prunetune.deployment import WRITERS

    traced, real = [], WRITERS["torchscript"]
    monkeypatch.setitem(WRITERS, "torchscript", lambda model, example, path: traced.append(len(example)) or
                        real(model, example, path))
    model, _ = pruned("zoo_vgg")
    for check in (1, 2, 3):
        deploy(model, "torchscript", tmp_path / f"m{check}.pt", input_shape=SHAPE, check_batch=check)
    assert traced == [2, 3, 2]


def test_deploy_over_its_own_model_file_is_refused(pruned_file, capsys) -> None:
    before = pruned_file.read_bytes()
    assert main(["deploy", "--model", str(pruned_file), "--format", "torchscript", "--out", str(pruned_file),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is the pruned model file itself" in err and err.count("\n") == 1, err
    assert pruned_file.read_bytes() == before


def test_a_small_count_difference_loads_with_a_warning_when_asked(pruned_file, tmp_path, monkeypatch, caplog) -> None:
    """The plan check had no override: a torch whose counter counted some layer differently would have
    made every earlier file unloadable. PRUNETUNE_PLAN_CHECK=warn lets a difference under 15% through,
    with a warning; an edited shape (a factor of 16 here) stays refused."""
    import logging

    from prunetune.exceptions import CheckpointError
    from prunetune.recipes.pruned_file import load_pruned

    data = torch.load(pruned_file, weights_only=True)
    data["plan"]["pruned"]["macs"] = int(data["plan"]["pruned"]["macs"] * 1.1)  # within NEAR_COUNT
    off = tmp_path / "off.pt"
    torch.save(data, off)
    with pytest.raises(CheckpointError, match="PRUNETUNE_PLAN_CHECK=warn loads it with a warning"):
        load_pruned(off)
    monkeypatch.setenv("PRUNETUNE_PLAN_CHECK", "warn")
    with caplog.at_level(logging.WARNING, logger="prunetune"):
        load_pruned(off)
    assert any("loaded anyway: PRUNETUNE_PLAN_CHECK=warn" in r.getMessage() for r in caplog.records)
    data = torch.load(pruned_file, weights_only=True)
    data["plan"]["input_shape"] = [3, 20, 20]  # a side 25% longer: 56% more MACs, beyond the window
    torch.save(data, off)
    with pytest.raises(CheckpointError, match=r"the dense network counts \d+ MACs, and the plan records \d+; "
                                              r"write it again with prunetune prune --out$"):
        load_pruned(off)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"input_shape": (3, -8, 8)}, r"input_shape must be \(C, H, W\): 1 to 3 positive integers, got \(3, -8, 8\)"),
    ({"input_shape": "3,8,8"}, r"input_shape must be \(C, H, W\)"),
    ({"input_shape": (3, 8, 8), "check_batch": True}, "check_batch must be a positive integer, got True"),
    ({"input_shape": (3, 8, 8), "seed": float("nan")}, "seed must be an integer"),
    ({"input_shape": (3, 8, 8), "format": ["onnx"]}, "unknown deploy format"),
    ({"input_shape": (3, 8, 8), "model": 5}, "model must be a torch.nn.Module or the path of a pruned model file"),
    ({"input_shape": (3, 8, 8), "model": "double"}, "the module given to deploy has float64 parameters"),
    ({"input_shape": (1, 8, 8)}, r"the model \(Sequential\) cannot run on an input of shape \(1, 8, 8\) \(Given "
                                 r"groups=1, .*\); check the input size and in_channels$"),
])
def test_deploy_of_a_module_checks_its_arguments_in_one_line(tmp_path, kwargs, message) -> None:
    """Each was a TypeError, RuntimeError or StopIteration from deep inside (deploy(module) checked
    almost none of its arguments)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    kwargs = dict(kwargs)
    model = kwargs.pop("model", net)
    if model == "double":
        model = net.double()
    fmt = kwargs.pop("format", "torchscript")
    with pytest.raises((ConfigError, UnknownNameError), match=message):
        deploy(model, fmt, tmp_path / "m.pt", **kwargs)
    assert not (tmp_path / "m.pt").exists()


def test_deploy_leaves_the_callers_module_in_its_mode_and_names_a_tuple_output(tmp_path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2)).train()
    net[1].eval()  # a frozen batch norm inside a training model
    deploy(net, "torchscript", tmp_path / "m.pt", input_shape=(3, 8, 8))
    assert net.training and not net[1].training  # deploy left it all in eval mode

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(x.mean((2, 3))), x

    with pytest.raises(ConfigError, match="the model returns a tuple; deploy writes models whose forward returns one"):
        deploy(Pair(), "torchscript", tmp_path / "p.pt", input_shape=(3, 8, 8))
    assert not (tmp_path / "p.pt").exists()


def test_save_pruned_keeps_what_exists_and_refuses_what_load_pruned_would(tmp_path) -> None:
    """It replaced an unrelated existing file by default, and wrote files load_pruned then called
    damaged (an unknown model name, a model that does not match its plan)."""
    from prunetune.exceptions import UnknownNameError
    from prunetune.recipes.pruned_file import load_pruned

    model, plan = pruned("zoo_shortcuts")
    spec = {"name": "zoo_shortcuts", "num_classes": 10, "in_channels": 3, "kwargs": {}}
    precious = tmp_path / "precious.pt"
    precious.write_bytes(b"a user's file")
    with pytest.raises(ConfigError, match="precious.pt' already exists; pass overwrite=True to replace it"):
        save_pruned(precious, model, plan, spec)
    assert precious.read_bytes() == b"a user's file"
    with pytest.raises(UnknownNameError, match="nope"):
        save_pruned(tmp_path / "a.pt", model, plan, {**spec, "name": "nope"})
    with pytest.raises(ConfigError, match="model_spec' must be a mapping with name, num_classes and in_channels"):
        save_pruned(tmp_path / "a.pt", model, plan, {"name": "zoo_shortcuts"})
    dense = create_model("zoo_shortcuts")  # the dense network with the pruned one's plan
    with pytest.raises(ConfigError, match=r"save_pruned: the model does not match its plan: .*; pass the model the "
                                          r"plan was applied to$"):
        save_pruned(tmp_path / "a.pt", dense, plan, spec)
    with pytest.raises(ConfigError, match="is a directory"):
        save_pruned(tmp_path, model, plan, spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.pt"]
    written = save_pruned(tmp_path / "a.pt", model, plan, spec)
    assert sum(p.numel() for p in load_pruned(written).parameters()) == sum(p.numel() for p in model.parameters())
    save_pruned(written, model, plan, spec, overwrite=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_load_pruned_on_a_device_this_machine_lacks_names_the_device(pruned_file) -> None:
    """It said the file was not one prunetune wrote; the file was fine."""
    from prunetune.recipes.pruned_file import load_pruned

    with pytest.raises(ConfigError, match=r"map_location 'cuda': CUDA is not available here; load it with "
                                          r"map_location='cpu'"):
        load_pruned(pruned_file, map_location="cuda")
    with pytest.raises(ConfigError, match="map_location 'gpu' is not a device"):
        load_pruned(pruned_file, map_location="gpu")
    # 'meta' said the file was damaged ("its weights do not fit its plan"); 5 was read as the default
    for where in ("meta", 5):
        with pytest.raises(ConfigError, match=r"is not a device a model runs on; give 'cpu', 'cuda' or 'cuda:N'$"):
            load_pruned(pruned_file, map_location=where)


def test_bench_with_a_pruned_file_as_its_dense_checkpoint_says_so(pruned_file, capsys) -> None:
    """`bench --dense p.pt` (a pruned file) said "check num_classes and in_channels"."""
    assert main(["bench", "--model", str(pruned_file), "--dense", str(pruned_file), "--batch", "1",
                 "--min-time", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "is a pruned model (prunetune prune --out), not a dense state dict" in err and err.count("\n") == 1, err


def test_deploy_refuses_a_non_finite_output_and_leaves_the_global_random_stream(tmp_path, monkeypatch) -> None:
    """A NaN weight gave NaN against NaN: the relative difference was NaN, which `rel > 1e-4` let through,
    and the file was written as checked. A file whose output is NaN where PyTorch's is finite is refused too."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    deploy(net, "torchscript", tmp_path / "ok.pt", input_shape=(3, 8, 8))
    assert torch.equal(torch.random.get_rng_state(), before)  # the example batch has its own generator
    bad = copy.deepcopy(net)
    with torch.no_grad():
        bad[3].weight[0, 0] = float("nan")
    with pytest.raises(DeployError, match="the model's own output on a random batch is not finite"):
        deploy(bad, "torchscript", tmp_path / "nan.pt", input_shape=(3, 8, 8))
    assert not (tmp_path / "nan.pt").exists()
    real = export_mod.WRITERS["torchscript"]

    def nan_file(model, example, path):
        run = real(model, example, path)
        return lambda x: run(x) * float("nan")

    monkeypatch.setitem(export_mod.WRITERS, "torchscript", nan_file)
    with pytest.raises(DeployError, match=r"differs from the PyTorch model by nan \(nan relative"):
        deploy(net, "torchscript", tmp_path / "nanfile.pt", input_shape=(3, 8, 8))
    assert not (tmp_path / "nanfile.pt").exists()


def test_bench_warns_when_its_timings_are_too_noisy_to_compare(pruned_file, capsys, monkeypatch) -> None:
    """On a loaded machine wall-clock medians swung from 0.27 to 82 ms between runs, with no word said."""
    from prunetune.deployment import bench

    real = bench.compare

    def noisy(*args, **kwargs):
        rows = real(*args, **kwargs)
        return [dataclasses.replace(rows[0], iqr_ms=3 * rows[0].median_ms), *rows[1:]]

    monkeypatch.setattr(bench, "compare", noisy)
    assert main(["bench", "--model", str(pruned_file), "--batch", "1", "--threads", "1", "--min-time", "0.02"]) == 0
    out, err = capsys.readouterr()
    assert "the timings are noisy (dense at batch 1: IQR " in err and "--threads 1 --clock cpu" in err
    assert "speed-up" in out  # the table still comes
