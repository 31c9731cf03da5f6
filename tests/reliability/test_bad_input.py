"""The bad-input corpus: every case exits 2 with exactly one line on stderr and changes no file.

Each case runs the real command line (``prunetune.cli.main``) in a fresh working directory that holds
a valid recipe (``r.yaml``) and search config (``s.yaml``) unless the case replaces them. The tree is
compared before and after; training and starting Ray fail the test (``no_expensive_work``), so every
refusal must come before any expensive work.
"""

from __future__ import annotations

import contextlib
import copy
import re
import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from prunetune.cli import main
from reliability_helpers import TINY_RECIPE, snapshot

pytest.importorskip("mlflow")
pytest.importorskip("ray")

SEARCH = {
    "recipe": {k: v for k, v in TINY_RECIPE.items() if k not in ("criterion", "allocation")},
    "space": {"ratios": "uniform", "criteria": ["l1"], "normalizers": ["rank"]},
    "macs_budget": 0.5, "trials": 2, "concurrency": 1, "experiment": "e",
}
BAD_DB = b"this is not an sqlite database\n" * 4


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def recipe(**changes: Any) -> str:
    """The tiny recipe with top-level keys replaced (None removes a key)."""
    data = copy.deepcopy(TINY_RECIPE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return dump(data)


def section(which: str, **changes: Any) -> str:
    """The tiny recipe with keys of one section replaced."""
    data = copy.deepcopy(TINY_RECIPE)
    data[which] = {**data.get(which, {}), **changes}
    return dump(data)


def search(recipe_changes: dict | None = None, **changes: Any) -> str:
    data = copy.deepcopy(SEARCH)
    data["recipe"].update(recipe_changes or {})
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return dump(data)


def bomb(depth: int = 9) -> str:
    """A YAML 'billion laughs' value: ``depth`` levels of nine aliases each (9**depth leaves)."""
    levels = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, depth)]
    return "[" + ", ".join(levels) + "]"


def with_line(text: str, line: str) -> str:
    return text + line + "\n"


@dataclass
class Case:
    id: str
    argv: str
    files: dict[str, str | bytes | Callable[[Path], None]] = field(default_factory=dict)
    match: str = ""


R = "prune --recipe r.yaml --out p.pt"
S = "search --config s.yaml"
SB = "search --config s.yaml --macs-budget 0.5"


def _big_yaml(path: Path) -> None:
    with path.open("w") as f:
        f.write("seed: 0\nnotes:\n")
        line = "  - " + "x" * 96 + "\n"
        f.write(line * (11 * 1024 * 1024 // len(line)))


def _hub_repo(path: Path) -> None:
    path.mkdir()
    (path / "hubconf.py").write_text("open('MARKER-hub', 'w').close()\ndef load(**kw):\n    return None\n")


def _checkpoint(state: dict) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import torch

        torch.save({"state_dict": state}, path)
    return write


def _fifo(path: Path) -> None:
    """A named pipe: opening it for reading would block until a writer came (the test's alarm fails it)."""
    import os

    os.mkfifo(path)


def _sqlite_tables(*tables: str):
    """An sqlite database holding empty ``tables`` (an Optuna study: studies, trials)."""

    def make(path: Path) -> None:
        import contextlib
        import sqlite3

        with contextlib.closing(sqlite3.connect(path)) as conn:
            for table in tables:
                conn.execute(f"CREATE TABLE {table} (id INTEGER)")
            conn.commit()

    return make


def _device(path: Path) -> None:
    """A link to the character device /dev/null (reads as empty, stat says it is no regular file)."""
    path.symlink_to("/dev/null")


def _mlflow_like_db(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.executescript("CREATE TABLE alembic_version (version_num TEXT); CREATE TABLE experiments (id INTEGER); "
                         "CREATE TABLE runs (id INTEGER);")


CASES = [
    # --- the recipe file itself -------------------------------------------------------------------
    Case("recipe-missing", "prune --recipe nope.yaml --out p.pt", match="does not exist"),
    Case("recipe-is-directory", "prune --recipe adir --out p.pt", {"adir/x": "1"}, match="is a directory"),
    # devices and FIFOs were reported as "does not exist"; a FIFO must not be opened (it blocks)
    Case("recipe-is-fifo", "prune --recipe f.yaml --out p.pt", {"f.yaml": _fifo},
         match=r"'f.yaml' is a named pipe \(FIFO\), not a regular file; pass the YAML file itself"),
    Case("recipe-is-device", "prune --recipe d.yaml --out p.pt", {"d.yaml": _device},
         match=r"'d.yaml' is a character device, not a regular file"),
    Case("recipe-not-utf8", R, {"r.yaml": "seed: 0\nname: caf\xe9\n".encode("latin-1")}, match="UTF-8"),
    Case("recipe-binary", R, {"r.yaml": bytes(range(256)) * 4}, match="r.yaml"),
    Case("recipe-nul-bytes", R, {"r.yaml": b"seed: 0\x00\x00\n"}, match="r.yaml"),
    Case("recipe-bad-yaml", R, {"r.yaml": "model: [unclosed\n"}, match="not valid YAML"),
    Case("recipe-tab-indent", R, {"r.yaml": "model:\n\tname: x\n"}, match="not valid YAML"),
    Case("recipe-too-big", R, {"r.yaml": _big_yaml}, match="MB"),
    # PyYAML reads 5e-1 as the text '5e-1': "got '5e-1'" alone left the user puzzled
    Case("recipe-number-read-as-text", R, {"r.yaml": recipe().replace("macs_budget: 0.5", "macs_budget: 5e-1")},
         match=r"got '5e-1' \(text: YAML reads a number with an exponent only with a '.' and a signed exponent, "
               r"e.g. 0.5 or 5.0e-1\)"),
    Case("recipe-integer-too-long", R, {"r.yaml": "seed: " + "9" * 5000 + "\n"},  # PyYAML's ValueError, a traceback
         match=r"r.yaml' is not valid YAML: Exceeds the limit \(4300 digits\) for integer string conversion"),
    Case("recipe-alias-bomb-seed", R, {"r.yaml": with_line(recipe(seed=None), f"seed: {bomb()}")}, match="alias"),
    Case("recipe-alias-bomb-model", R, {"r.yaml": with_line(recipe(model=None), f"model: {bomb()}")}, match="alias"),
    Case("recipe-recursive-alias", R, {"r.yaml": with_line(recipe(seed=None), "seed: &s [*s]")}, match="contains itself"),
    Case("recipe-duplicate-top-key", R, {"r.yaml": with_line(recipe(), "seed: 1")}, match="duplicate key 'seed'"),
    Case("recipe-duplicate-nested-key", R, {"r.yaml": recipe(finetune=None) + "finetune:\n  epochs: 1\n  epochs: 2\n"},
         match="duplicate key 'epochs'"),
    Case("recipe-empty", R, {"r.yaml": ""}, match="model"),
    Case("recipe-a-list", R, {"r.yaml": "- 1\n- 2\n"}, match="mapping"),
    Case("recipe-a-scalar", R, {"r.yaml": "42\n"}, match="mapping"),
    Case("recipe-python-tag", R, {"r.yaml": "!!python/object/apply:os.system ['touch MARKER-tag']\n"},
         match="not valid YAML"),
    Case("recipe-unknown-key", R, {"r.yaml": recipe(colour="red")}, match="unknown key 'colour'"),
    Case("recipe-non-string-key", R, {"r.yaml": with_line(recipe(), "1: 2")}, match="unknown key"),
    # --- model -----------------------------------------------------------------------------------
    Case("model-missing", R, {"r.yaml": recipe(model=None)}, match="'model'"),
    Case("model-unknown", R, {"r.yaml": section("model", name="resnet2O")}, match="unknown model 'resnet2O'"),
    Case("model-name-int", R, {"r.yaml": section("model", name=5)}, match="model"),
    Case("model-name-list", R, {"r.yaml": section("model", name=["a"])}, match="model"),
    Case("model-num-classes-0", R, {"r.yaml": section("model", num_classes=0)}, match="num_classes"),
    Case("model-num-classes-str", R, {"r.yaml": section("model", num_classes="ten")}, match="num_classes"),
    Case("model-in-channels-mismatch", R, {"r.yaml": section("model", in_channels=3)}, match="in_channels"),
    Case("model-kwargs-not-mapping", R, {"r.yaml": section("model", kwargs=[1])}, match="kwargs"),
    Case("model-kwargs-unknown", R, {"r.yaml": section("model", kwargs={"depth": 3})}, match="does not accept"),
    Case("model-user-code-no-opt-in", R, {"r.yaml": section("model", name="marker_mod_a:build")}, match="--allow-code"),
    Case("model-torch-hub", R + " --allow-code",
         {"hubrepo": _hub_repo, "r.yaml": section("model", name="torch.hub:load",
                                                  kwargs={"repo_or_dir": "hubrepo", "source": "local",
                                                          "model": "load"})}, match="torch.hub"),
    Case("model-torch-hub-no-opt-in", R,
         {"hubrepo": _hub_repo, "r.yaml": section("model", name="torch.hub:load",
                                                  kwargs={"repo_or_dir": "hubrepo", "source": "local",
                                                          "model": "load"})}, match="torch.hub"),
    Case("model-builtins-eval", R + " --allow-code", {"r.yaml": section("model", name="builtins:eval")},
         match="builtins"),
    Case("model-os-system", R + " --allow-code", {"r.yaml": section("model", name="os:system")}, match="'os'"),
    Case("model-allow-code-in-recipe", R, {"r.yaml": recipe(allow_code=True)}, match="--allow-code"),
    Case("model-checkpoint-missing", R, {"r.yaml": section("model", checkpoint="missing.pt")}, match="does not exist"),
    Case("model-checkpoint-garbage", R, {"r.yaml": section("model", checkpoint="junk.pt"), "junk.pt": b"junk" * 10},
         match="junk.pt"),
    # a JSON or text file given as a checkpoint was said to hold "pickled Python objects"
    Case("model-checkpoint-json", R, {"r.yaml": section("model", checkpoint="p.json"), "p.json": '{"a": 1}'},
         match=r"p\.json.*it is not a file torch\.save wrote"),
    # were AttributeError tracebacks ('int' object has no attribute 'shape' / 'removeprefix')
    Case("model-checkpoint-non-tensor-value", R, {"r.yaml": section("model", checkpoint="c.pt"),
                                                  "c.pt": _checkpoint({"conv1.weight": 5})}, match="conv1.weight"),
    Case("model-checkpoint-non-string-key", R, {"r.yaml": section("model", checkpoint="c.pt"),
                                                "c.pt": _checkpoint({7: 5})}, match="c.pt"),
    Case("model-checkpoint-directory", R, {"r.yaml": section("model", checkpoint="adir"), "adir/x": "1"},
         match="adir"),
    Case("model-checkpoint-fifo", R, {"r.yaml": section("model", checkpoint="c.pt"), "c.pt": _fifo},
         match=r"c.pt' is a named pipe \(FIFO\), not a regular file; give the state-dict file"),
    Case("model-checkpoint-device", R, {"r.yaml": section("model", checkpoint="c.pt"), "c.pt": _device},
         match=r"c.pt' is a character device, not a regular file"),
    # --- data ------------------------------------------------------------------------------------
    Case("data-unknown", R, {"r.yaml": recipe(data={"name": "digit"})}, match="did you mean 'digits'"),
    Case("data-no-name", R, {"r.yaml": recipe(data={"root": "x"})}, match="'name'"),
    Case("data-batch-size-0", R, {"r.yaml": section("data", batch_size=0)}, match="data.batch_size"),
    Case("data-batch-size-str", R, {"r.yaml": section("data", batch_size="big")}, match="data.batch_size"),
    Case("data-batch-size-bool", R, {"r.yaml": section("data", batch_size=True)}, match="data.batch_size"),
    Case("data-image-size-negative", R, {"r.yaml": section("data", image_size=-1)}, match="image_size"),
    Case("data-unknown-param", R, {"r.yaml": section("data", colour="red")}, match="colour"),
    Case("data-cifar-no-root", R, {"r.yaml": recipe(data={"name": "cifar10"})}, match="root"),
    Case("data-cifar-root-missing", R, {"r.yaml": recipe(data={"name": "cifar10", "root": "nowhere"})},
         match="nowhere"),
    Case("data-cifar-garbage-archive", R, {"r.yaml": recipe(data={"name": "cifar10", "root": "c"}),
                                           "c/cifar-10-python.tar.gz": b"not a tarball"}, match="unreadable"),
    # --- criterion, allocation, schedule ---------------------------------------------------------------
    Case("criterion-unknown", R, {"r.yaml": recipe(criterion="l1x")}, match="did you mean 'l1'"),
    Case("criterion-int", R, {"r.yaml": recipe(criterion=3)}, match="criterion"),
    Case("criterion-blend-negative", R, {"r.yaml": recipe(criterion={"blend": {"l1": -1}})}, match="-1"),
    Case("criterion-blend-all-zero", R, {"r.yaml": recipe(criterion={"blend": {"l1": 0}})}, match="all be 0"),
    Case("criterion-normalizer-unknown", R, {"r.yaml": recipe(criterion={"blend": {"l1": 1}, "normalizer": "rnk"})},
         match="normali"),
    Case("criterion-params-unknown", R, {"r.yaml": recipe(criterion={"name": "l1", "params": {"p": 3}})}, match="'p'"),
    Case("allocation-budget-and-ratio", R, {"r.yaml": recipe(allocation={"macs_budget": 0.5, "ratio": 0.3})},
         match="ratio"),
    Case("allocation-budget-0", R, {"r.yaml": recipe(allocation={"macs_budget": 0})}, match="macs_budget"),
    Case("allocation-budget-1.5", R, {"r.yaml": recipe(allocation={"macs_budget": 1.5})}, match="macs_budget"),
    Case("allocation-budget-str", R, {"r.yaml": recipe(allocation={"macs_budget": "half"})}, match="macs_budget"),
    Case("allocation-budget-unreachable", R, {"r.yaml": recipe(allocation={"macs_budget": 0.0001})},
         match="smallest reachable"),
    Case("allocation-ratio-1", R, {"r.yaml": recipe(allocation={"ratio": 1.0})}, match="ratio"),
    Case("allocation-ratio-negative", R, {"r.yaml": recipe(allocation={"ratio": -0.1})}, match="ratio"),
    Case("allocation-ratios-unknown-group", R, {"r.yaml": recipe(allocation={"ratios": {"layer9": 0.3}})},
         match="layer9"),
    Case("allocation-ratios-not-mapping", R, {"r.yaml": recipe(allocation={"ratios": [0.3]})}, match="ratios"),
    Case("allocation-strategy-unknown", R, {"r.yaml": recipe(allocation={"strategy": "cmi_kne"})}, match="cmi_kne"),
    Case("allocation-min-keep-0", R, {"r.yaml": recipe(allocation={"ratio": 0.5, "min_keep": 0})}, match="min_keep"),
    Case("allocation-round-to-0", R, {"r.yaml": recipe(allocation={"ratio": 0.5, "round_to": 0})}, match="round_to"),
    Case("allocation-round-to-str", R, {"r.yaml": recipe(allocation={"ratio": 0.5, "round_to": "cpuu"})},
         match="round_to preset"),  # strings name presets (cpu, gpu); "8" means 8
    Case("allocation-empty", R, {"r.yaml": recipe(allocation={})}, match="allocation needs"),
    Case("schedule-unknown", R, {"r.yaml": recipe(schedule="sftp")}, match="sftp"),
    Case("schedule-int", R, {"r.yaml": recipe(schedule=7)}, match="schedule"),
    # --- calibration, finetune, pretrain, seed, device, plan ------------------------------------------
    Case("calibration-batch-size-0", R, {"r.yaml": section("calibration", batch_size=0)},
         match="calibration.batch_size"),
    Case("calibration-size-0", R, {"r.yaml": section("calibration", size=0)}, match="calibration.size"),
    Case("calibration-split-test", R, {"r.yaml": section("calibration", split="test")}, match="calibration.split"),
    Case("calibration-seed-str", R, {"r.yaml": section("calibration", seed="x")}, match="calibration.seed"),
    Case("calibration-activation-int", R, {"r.yaml": section("calibration", activation=3)},
         match="calibration.activation"),
    Case("calibration-use-cache-str", R, {"r.yaml": section("calibration", use_cache="yes please")},
         match="calibration.use_cache"),
    Case("finetune-epochs-true", R, {"r.yaml": section("finetune", epochs=True)}, match="finetune.epochs"),
    Case("finetune-epochs-negative", R, {"r.yaml": section("finetune", epochs=-1)}, match="finetune.epochs"),
    Case("finetune-lr-0", R, {"r.yaml": section("finetune", lr=0)}, match="finetune.lr"),
    Case("finetune-lr-nan", R, {"r.yaml": section("finetune", lr=float("nan"))}, match="finetune.lr"),
    Case("finetune-recalibrate-batches-negative", R, {"r.yaml": section("finetune", recalibrate_batches=-3)},
         match="finetune.recalibrate_batches"),
    Case("finetune-amp-str", R, {"r.yaml": section("finetune", amp="no")}, match="finetune.amp"),
    Case("finetune-unknown-key", R, {"r.yaml": section("finetune", lrr=0.1)}, match="'lrr'"),
    Case("finetune-not-mapping", R, {"r.yaml": recipe(finetune=[1, 2])}, match="finetune"),
    Case("pretrain-epochs-negative", R, {"r.yaml": section("pretrain", epochs=-1)}, match="pretrain.epochs"),
    Case("pretrain-lr-str", R, {"r.yaml": section("pretrain", lr="fast")}, match="pretrain.lr"),
    Case("pretrain-batch-size-0", R, {"r.yaml": section("pretrain", batch_size=0)}, match="pretrain.batch_size"),
    # was accepted and failed in the dense training with a ValueError traceback
    Case("pretrain-seed-str", R, {"r.yaml": section("pretrain", seed="x")}, match="pretrain.seed must be an integer"),
    Case("pretrain-unknown-key", R, {"r.yaml": section("pretrain", warmup=1)}, match="'warmup'"),
    Case("seed-str", R, {"r.yaml": recipe(seed="abc")}, match="seed"),
    Case("seed-float", R, {"r.yaml": recipe(seed=1.5)}, match="seed"),
    # were accepted and failed in torch.manual_seed with an OverflowError traceback (after the dense training)
    Case("seed-huge", R, {"r.yaml": recipe(seed=10**23)}, match=r"seed must be an integer in .*100000000"),
    Case("pretrain-seed-huge", R, {"r.yaml": section("pretrain", seed=-(10**23))}, match="pretrain.seed must be"),
    # was "malformed pruning plan: missing or bad field 'list' object has no attribute 'get'"
    Case("plan-list", R, {"r.yaml": recipe(plan=[1])}, match=r"plan must be the path of a plan JSON .* got \[1\]"),
    Case("device-tpu", R, {"r.yaml": recipe(device="tpu")}, match="device"),
    Case("device-cuda-unavailable", R, {"r.yaml": recipe(device="cuda")}, match="CUDA"),
    Case("plan-path-missing", R, {"r.yaml": recipe(plan="missing.plan.json")}, match="missing.plan.json"),
    Case("plan-inline-garbage", R, {"r.yaml": recipe(plan={"groups": 3})}, match="plan"),
    Case("plan-file-not-json", R, {"r.yaml": recipe(plan="p.json"), "p.json": "{not json"}, match="p.json"),
    Case("data-param-given-twice", R, {"r.yaml": recipe(data={"name": "digits", "val_fraction": 0.2,
                                                             "params": {"val_fraction": 0.3}})},
         match=r"data.val_fraction is given twice, in the data section and in data.params; keep one"),
    Case("groups-max-ratio-alone", "groups --model resnet20 --max-ratio 0.5",
         match=r"--max-ratio 0.5 caps what --ratio or --macs-budget prunes; give one of them"),
    Case("plan-empty", R, {"r.yaml": recipe(plan="")}, match=r"plan is empty; give the path of a plan JSON"),
    Case("plan-file-fifo", R, {"r.yaml": recipe(plan="in.json"), "in.json": _fifo},
         match=r"in.json' is a named pipe \(FIFO\), not a regular file; give the .plan.json file"),
    # --- prune outputs (items 8 and 11) ---------------------------------------------------------------
    Case("out-exists", R, {"p.pt": b"keep me"}, match="--overwrite"),
    Case("out-plan-json-exists", R, {"p.plan.json": "{}"}, match="p.plan.json"),
    Case("out-under-a-file", "prune --recipe r.yaml --out afile/p.pt", {"afile": "x"}, match="afile"),
    Case("out-is-directory", "prune --recipe r.yaml --out adir", {"adir/x": "1"}, match="adir"),
    # in-memory data built whole: an allocator traceback, or the machine's memory taken
    Case("data-digits-image-size-huge", R, {"r.yaml": recipe(data={"name": "digits", "image_size": 100000})},
         match=r"dataset 'digits' at image_size 100000 needs \d+ GiB .* give a smaller image_size"),
    Case("data-synthetic-train-size-huge", R, {"r.yaml": recipe(data={"name": "synthetic", "train_size": 10**12})},
         match=r"dataset 'synthetic' with \d+ images .* give smaller train_size"),
    Case("model-kwargs-num-classes", R, {"r.yaml": section("model", kwargs={"num_classes": 3})},
         match="model.kwargs must not set 'num_classes': it is a key of the model section; move it there"),
    Case("model-kwargs-allow-code", R, {"r.yaml": section("model", kwargs={"allow_code": True})},
         match=r"model.kwargs must not set 'allow_code': it is --allow-code \(never a recipe\)"),
    # failed only when the dense model's brief training was saved, after the training
    Case("cache-dir-is-a-file", R, {"r.yaml": section("calibration", cache_dir="afile"), "afile": "x"},
         match=r"the cache folder \(calibration.cache_dir\) '.*afile' is a file, not a folder"),
    # the atomic write replaced the node itself with a file (`--out /dev/null --overwrite` as root)
    Case("out-is-fifo-overwrite", "prune --recipe r.yaml --out p.pt --overwrite", {"r.yaml": recipe(), "p.pt": _fifo},
         match=r"'p.pt' is a named pipe \(FIFO\), not a regular file; prunetune writes regular files only"),
    Case("out-is-device-overwrite", "prune --recipe r.yaml --out d.pt --overwrite", {"r.yaml": recipe(), "d.pt": _device},
         match=r"'d.pt' is a character device, not a regular file"),
    Case("out-under-proc", "prune --recipe r.yaml --out /proc/prunetune-test/p.pt", match="/proc"),
    Case("out-plan-json-is-directory", R, {"p.plan.json/x": "1"}, match="p.plan.json"),
    # --- score ------------------------------------------------------------------------------------
    Case("score-criteria-empty", "score --recipe r.yaml --criteria ''", match="--criteria"),
    Case("score-criteria-commas", "score --recipe r.yaml --criteria ,,", match="--criteria"),
    Case("score-criteria-empty-name", "score --recipe r.yaml --criteria l1,,fpgm", match="empty name"),
    Case("score-criteria-trailing-comma", "score --recipe r.yaml --criteria l1,", match="empty name"),
    Case("score-criteria-unknown", "score --recipe r.yaml --criteria l1,chipp", match="did you mean 'chip'"),
    Case("score-recipe-directory", "score --recipe adir", {"adir/x": "1"}, match="is a directory"),
    # --- groups -----------------------------------------------------------------------------------
    Case("groups-input-size-negative", "groups --model resnet20 --input-size -5", match="--input-size"),
    Case("groups-input-size-0", "groups --model resnet20 --input-size 0", match="--input-size"),
    Case("groups-input-size-huge", "groups --model resnet20 --input-size 100000", match="--input-size"),
    Case("groups-input-size-too-small-for-vgg", "groups --model vgg16_bn --input-size 4", match="cannot run on an input"),
    Case("groups-min-keep-too-large", "groups --model resnet20 --min-keep 1000 --ratio 0.5", match="--min-keep"),
    Case("groups-min-keep-0", "groups --model resnet20 --min-keep 0", match="--min-keep"),
    Case("groups-round-to-0", "groups --model resnet20 --round-to 0", match="--round-to"),
    Case("groups-num-classes-0", "groups --model resnet20 --num-classes 0", match="num"),
    Case("groups-in-channels-0", "groups --model resnet20 --in-channels 0", match="in"),
    Case("groups-ratio-1.5", "groups --model resnet20 --ratio 1.5", match="--ratio"),
    Case("groups-budget-0", "groups --model resnet20 --macs-budget 0", match="--macs-budget"),
    Case("groups-model-unknown", "groups --model vgg16", match="did you mean 'vgg16_bn'"),
    Case("groups-user-code-no-opt-in", "groups --model marker_mod_b:build", match="--allow-code"),
    Case("groups-torch-hub", "groups --model torch.hub:load --allow-code", match="torch.hub"),
    Case("groups-budget-unreachable", "groups --model resnet20 --macs-budget 0.0001", match="smallest reachable"),
    # --- search config ----------------------------------------------------------------------------
    Case("search-config-missing", "search --config nope.yaml --macs-budget 0.5", match="does not exist"),
    Case("search-config-directory", "search --config adir --macs-budget 0.5", {"adir/x": "1"},
         match="is a directory"),
    Case("search-config-fifo", "search --config f.yaml --macs-budget 0.5", {"f.yaml": _fifo},
         match=r"'f.yaml' is a named pipe \(FIFO\), not a regular file"),
    Case("search-base-recipe-fifo", S, {"s.yaml": search(recipe=None) + "recipe: base.yaml\n", "base.yaml": _fifo},
         match=r"base.yaml' is a named pipe \(FIFO\), not a regular file"),
    Case("search-config-not-utf8", S, {"s.yaml": b"trials: 2\nexperiment: \xff\xfe\n"}, match="UTF-8"),
    Case("search-config-duplicate-key", S, {"s.yaml": with_line(search(), "trials: 3")}, match="duplicate key"),
    Case("search-alias-bomb-experiment", S, {"s.yaml": with_line(search(experiment=None), f"experiment: {bomb()}")},
         match="alias"),
    Case("search-alias-bomb-space-lr", S,
         {"s.yaml": with_line(search(space=None), f"space: {{ratios: uniform, criteria: [l1], lr: {bomb()}}}")},
         match="alias"),
    Case("search-unknown-key", S, {"s.yaml": search(colour="red")}, match="unknown key 'colour'"),
    Case("search-no-budget", "search --config s.yaml", {"s.yaml": search(macs_budget=None)}, match="budget"),
    Case("search-trials-0", S + " --trials 0", match="trials"),
    Case("search-concurrency-negative", S + " --concurrency -1", match="concurrency"),
    Case("search-experiment-slash", S + " --experiment a/b", match="experiment"),
    Case("search-experiment-list", S, {"s.yaml": search(experiment=["a"])}, match="experiment"),
    # was an OSError traceback (File name too long) from the experiment folder, after creating prunetune-runs/
    Case("search-experiment-too-long", S + " --experiment " + "a" * 300, match="at most 128"),
    Case("search-experiment-dot-dot", S + " --experiment ..", match="experiment"),
    Case("search-sampler-unknown", S, {"s.yaml": search(sampler="random")}, match="sampler"),
    Case("search-asha-bad", S, {"s.yaml": search(asha={"grace": 1})}, match="asha"),
    Case("search-time-budget-negative", S + " --time-budget-s -5", match="time_budget_s"),
    Case("search-recipe-missing-path", S, {"s.yaml": search(recipe=None) + "recipe: nope.yaml\n"},
         match="nope.yaml"),
    Case("search-recipe-with-plan", S, {"s.yaml": search({"plan": "x.json"})}, match="plan"),
    Case("search-space-unknown-key", S, {"s.yaml": search(space={"ratio": "uniform"})}, match="ratio"),
    Case("search-space-criteria-unknown", S, {"s.yaml": search(space={"criteria": ["chipp"]})}, match="chipp"),
    Case("search-space-lr-reversed", S, {"s.yaml": search(space={"lr": [0.1, 0.01]})}, match="space.lr"),
    Case("search-budget-unreachable", S + " --macs-budget 0.0001", match="smallest reachable"),
    Case("search-user-code-no-opt-in", S, {"s.yaml": search({"model": {"name": "marker_mod_c:build",
                                                                        "num_classes": 10, "in_channels": 1}})},
         match="--allow-code"),
    Case("search-allow-code-in-base-recipe", S, {"s.yaml": search({"allow_code": True})}, match="allow_code"),
    Case("search-data-batch-size-0", S, {"s.yaml": search({"data": {"name": "digits", "batch_size": 0}})},
         match="data.batch_size"),
    # --- search outputs, tracking and Ray (items 10 and 11) --------------------------------------------
    Case("search-tracking-unreachable-server", S + " --tracking-uri http://127.0.0.1:1", match="127.0.0.1:1"),
    Case("search-tracking-under-proc", S + " --tracking-uri sqlite:////proc/prunetune-test/mlflow.db",
         match="/proc"),
    Case("search-tracking-under-a-file", S + " --tracking-uri afile/mlflow.db", {"afile": "x"}, match="afile"),
    Case("search-tracking-db-not-sqlite", S, {"mlflow.db": BAD_DB}, match="mlflow.db"),
    Case("search-tracking-db-optuna-study", S + " --tracking-uri sqlite:///mlflow-optuna.db",
         {"mlflow-optuna.db": _sqlite_tables("studies", "trials")}, match="an Optuna study, not an MLflow store"),
    Case("search-tracking-db-is-directory", S, {"mlflow.db/x": "1"}, match="mlflow.db"),
    # a FIFO store passed the checks and blocked or failed in MLflow after the training and Ray
    Case("search-tracking-db-fifo", S, {"mlflow.db": _fifo}, match=r"mlflow.db' is a named pipe \(FIFO\)"),
    Case("search-study-storage-fifo", S + " --study-storage o.db", {"o.db": _fifo},
         match=r"o.db' is a named pipe \(FIFO\), not a regular file; pass --study-storage"),
    Case("search-tracking-uri-in-config-under-file", S, {"s.yaml": search(tracking_uri="afile/m.db"), "afile": "x"},
         match="afile"),
    Case("search-tracking-uri-int", S, {"s.yaml": search(tracking_uri=5)}, match="tracking_uri"),
    # the Optuna study was created inside the MLflow database (its tables added to the user's store), then
    # failed with a RuntimeError traceback about the schema version both keep in alembic_version
    Case("search-study-storage-is-the-tracking-store", S + " --study-storage mlflow.db", match="MLflow store"),
    Case("search-study-storage-is-an-mlflow-store", S + " --study-storage other.db", {"other.db": _mlflow_like_db},
         match="other.db.*MLflow store"),
    # these failed with an ImportError / MlflowException traceback after the dense model, the scores and Ray
    Case("search-study-storage-unknown-dialect", S + " --study-storage nosuchdb://host/db", match="nosuchdb"),
    Case("search-study-storage-driver-missing", S + " --study-storage postgresql+nosuchdriver://host/db",
         match="driver"),
    Case("search-study-storage-password-masked", S + " --study-storage postgresql+nosuchdriver://u:s3cret@host/db",
         match=r"'postgresql\+nosuchdriver://u:\*\*\*@host/db' cannot be opened: no database driver"),
    Case("search-study-storage-under-proc", S + " --study-storage sqlite:////proc/prunetune-test/o.db",
         match="/proc/prunetune-test/o.db"),
    Case("search-study-storage-under-a-file", S + " --study-storage afile/o.db", {"afile": "x"}, match="afile"),
    Case("search-tracking-file-store", S + " --tracking-uri file:mlruns", match="file:mlruns.*sqlite:///"),
    # these failed after the dense model, the scores and Ray: a ModuleNotFoundError traceback, a ValueError
    Case("search-tracking-driver-missing", S + " --tracking-uri postgresql+nosuchdriver://u:s3cret@host/db",
         match=r"MLflow store 'postgresql\+nosuchdriver://u:\*\*\*@host/db' cannot be opened: no database driver"),
    Case("search-tracking-uri-malformed", S + " --tracking-uri postgresql://u:s3cret@[::1:1/db",
         match=r"MLflow store 'postgresql://u:\*\*\*@\[::1:1/db' is not a URL"),
    Case("search-tracking-in-memory", S + " --tracking-uri sqlite:///:memory:", match="in-memory database"),
    Case("search-study-storage-malformed", S + " --study-storage postgresql://u:s3cret@[::1:1/db",
         match=r"cannot be opened: it is not a database URL .*; correct the URL"),
    Case("search-storage-under-a-file", S + " --storage-path afile/runs", {"afile": "x"}, match="afile"),
    Case("search-storage-is-a-file", S + " --storage-path afile", {"afile": "x"}, match="afile"),
    Case("search-storage-under-proc", S + " --storage-path /proc/prunetune-test/runs", match="/proc"),
    Case("search-cpus-per-trial-huge", S + " --cpus-per-trial 100000", match="cpus_per_trial"),
    Case("search-gpus-without-gpu", S + " --gpus-per-trial 1", match="gpus_per_trial"),
    Case("search-ray-address-malformed", S + " --ray-address nonsense", match="ray_address"),
    Case("search-ray-address-unreachable", S + " --ray-address 127.0.0.1:1", match="127.0.0.1:1"),
    Case("search-resume-nothing", S + " --resume", match="nothing to resume"),
    # --- pareto and export ------------------------------------------------------------------------
    Case("pareto-no-store", "pareto --experiment e", match="no MLflow store"),
    Case("pareto-db-not-sqlite", "pareto --experiment e", {"mlflow.db": BAD_DB}, match="mlflow.db"),
    Case("pareto-db-directory", "pareto --experiment e --tracking-uri adir", {"adir/x": "1"}, match="adir"),
    Case("pareto-db-fifo", "pareto --experiment e", {"mlflow.db": _fifo}, match=r"mlflow.db' is a named pipe"),
    Case("pareto-unreachable-server", "pareto --experiment e --tracking-uri http://127.0.0.1:1",
         match="127.0.0.1:1"),
    Case("pareto-file-store", "pareto --experiment e --tracking-uri file:mlruns", match="file:mlruns"),
    Case("pareto-plot-unknown-format", "pareto --experiment e --plot front.xyz", match="front.xyz"),
    Case("pareto-plot-under-a-file", "pareto --experiment e --plot afile/front.png", {"afile": "x"}, match="afile"),
    # was replaced without a word
    Case("pareto-plot-exists", "pareto --experiment e --plot front.png", {"front.png": b"keep me"}, match="--overwrite"),
    # MLflow adds its tables to any database it opens: an Optuna study so changed broke every later search
    Case("pareto-db-optuna-study", "pareto --experiment e --tracking-uri sqlite:///mlflow-optuna.db",
         {"mlflow-optuna.db": _sqlite_tables("studies", "trials")}, match="an Optuna study, not an MLflow store"),
    Case("pareto-db-other-database", "pareto --experiment e", {"mlflow.db": _sqlite_tables("t")},
         match=r"another database \(tables t\)"),
    Case("pareto-db-empty-database", "pareto --experiment e", {"mlflow.db": b""}, match="empty database"),
    Case("export-db-optuna-study", "export --experiment e --out best.yaml --tracking-uri sqlite:///mlflow-optuna.db",
         {"mlflow-optuna.db": _sqlite_tables("studies", "trials")}, match="an Optuna study"),
    Case("pareto-plot-empty", "pareto --experiment e --plot ''", match="--plot"),  # was: no plot, exit 0
    Case("pareto-budget-0", "pareto --experiment e --budget 0", match="--budget"),
    Case("export-no-store", "export --experiment e --out best.yaml", match="no MLflow store"),
    Case("export-out-exists", "export --experiment e --out best.yaml", {"best.yaml": "x: 1\n"}, match="--overwrite"),
    Case("export-out-under-a-file", "export --experiment e --out afile/best.yaml", {"afile": "x"}, match="afile"),
    Case("export-db-not-sqlite", "export --experiment e --out best.yaml", {"mlflow.db": BAD_DB}, match="mlflow.db"),
    Case("export-pick-unknown", "export --experiment e --out best.yaml --pick best", match="--pick"),
    # --- deploy and bench: the pruned model file ---------------------------------------------------
    Case("deploy-model-missing", "deploy --model nope.pt --format onnx --out m.onnx", match="'nope.pt' does not exist"),
    Case("deploy-model-directory", "deploy --model adir --format onnx --out m.onnx", {"adir/x": "1"},
         match="'adir' is a directory"),
    Case("deploy-model-fifo", "deploy --model m.pt --format onnx --out m.onnx", {"m.pt": _fifo},
         match=r"'m.pt' is a named pipe \(FIFO\), not a regular file; pass the pruned model file \(.pt\) itself"),
    Case("bench-model-device", "bench --model m.pt", {"m.pt": _device}, match=r"'m.pt' is a character device"),
    # --- demo and the parser ------------------------------------------------------------------------
    Case("demo-trials-0", "demo --trials 0", match="trials"),
    Case("demo-budget-2", "demo --macs-budget 2", match="--macs-budget"),
    Case("demo-out-dir-under-a-file", "demo --out-dir afile/demo", {"afile": "x"}, match="afile"),
    Case("demo-out-dir-empty", "demo --out-dir ''", match="--out-dir is empty"),
    Case("cli-unknown-command", "prunes", match="prunes"),
    Case("cli-missing-argument", "prune --recipe r.yaml", match="--out"),
    Case("cli-unknown-flag", "groups --model resnet20 --colour red", match="--colour"),
    Case("cli-bad-int", "search --config s.yaml --trials many", match="--trials"),
]


def _write(root: Path, files: dict[str, Any]) -> None:
    base = {"r.yaml": recipe(), "s.yaml": search()}
    base.update(files)
    for name, content in base.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@contextlib.contextmanager
def _alarm(seconds: int):
    """Fail, rather than hang, if the block runs longer than ``seconds`` (a blocking open() is interrupted)."""
    def ring(signum, frame):
        raise AssertionError(f"still running after {seconds}s (a FIFO opened for reading?)")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: Case, tmp_path, monkeypatch, capfd,
                                                          no_expensive_work) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _write(work, case.files)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    (work / "marker_mod_a.py").write_text("open('MARKER-user', 'w').close()\ndef build(**kw):\n    return None\n")
    for name in ("marker_mod_b.py", "marker_mod_c.py"):
        (work / name).write_text((work / "marker_mod_a.py").read_text())
    before = snapshot(tmp_path)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info, _alarm(60):  # a FIFO opened for reading would block forever
        raise SystemExit(main(shlex.split(case.argv)))
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and len(lines[0]) < 1000, lines[0][:2000]
    assert re.search(case.match, lines[0]), lines[0]
    assert snapshot(tmp_path) == before
    assert not list(work.glob("MARKER*"))


@pytest.mark.parametrize("case_id", ["recipe-alias-bomb-seed", "search-tracking-unreachable-server",
                                     "search-storage-under-a-file", "cli-missing-argument"])
def test_the_installed_command_prints_one_line_too(case_id: str, tmp_path) -> None:
    """The same refusals from a real process (warnings, logging set-up and all go to the same stderr)."""
    import os
    import subprocess
    import sys

    case = next(c for c in CASES if c.id == case_id)
    _write(tmp_path, case.files)
    before = snapshot(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "prunetune.cli", *shlex.split(case.argv)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and re.search(case.match, lines[0]), done.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("text", ["5e-1", "1e5", "1.0e5", "1E+5", "1e-5", "1_000e3"])
def test_the_hint_for_a_number_yaml_read_as_text_is_a_spelling_yaml_reads_as_a_number(text) -> None:
    """The first hint suggested 1.0e5 for 1e5, which PyYAML reads as text too (it needs 1.0e+5)."""
    import re

    import yaml

    from prunetune._text import short

    assert isinstance(yaml.safe_load(f"a: {text}")["a"], str)
    suggestions = re.search(r"e\.g\. (.*)\)$", short(text)).group(1).split(" or ")
    for spelled in suggestions:
        assert yaml.safe_load(f"a: {spelled}")["a"] == pytest.approx(float(text.replace("_", ""))), spelled
    assert short("1.0e+5") == "'1.0e+5'" and short("abc") == "'abc'"  # what YAML reads as a number, or no number


def test_the_cache_folder_check_writes_nothing(tmp_path, monkeypatch) -> None:
    """The early check of the cache folder probed it with a file, so a pre-filled cache on a read-only
    mount was refused before any work; it only looks at what is on the path now."""
    import tempfile

    from prunetune._paths import check_folder_shape
    from prunetune.exceptions import ConfigError

    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: pytest.fail("the check wrote a probe file"))
    assert check_folder_shape(tmp_path / "new" / "cache", "the cache folder") == tmp_path / "new" / "cache"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"'.*afile/cache' cannot be created: '.*afile' is a file, not a folder"):
        check_folder_shape(tmp_path / "afile" / "cache", "the cache folder")
