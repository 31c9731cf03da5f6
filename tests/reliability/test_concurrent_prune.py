"""Two runs that fill one cache at once: no crash, one entry, no temporary file left behind.

The dense-model cache used a fixed temporary name (``dense/<key>.pt.tmp``): a second run renamed the
first one's half-written file away and the first crashed on its own rename.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import torch
import yaml

from prunetune import load_pruned
from prunetune._atomic import write_atomic_with, write_bytes_atomic
from prunetune.recipes.pipeline import prepare
from prunetune.recipes.schema import Recipe
from reliability_helpers import TINY_RECIPE


def test_a_write_interleaved_with_another_of_the_same_file(tmp_path) -> None:
    target = tmp_path / "dense" / "key.pt"

    def first(f) -> None:  # while this write is in flight, another writer completes the same file
        write_bytes_atomic(target, b"second")
        f.write(b"first")

    write_atomic_with(target, first)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["key.pt"]


def test_two_runs_training_the_same_dense_model_into_one_cache(tmp_path, monkeypatch) -> None:
    """The second run saves and renames its copy while the first is between its save and its rename."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRUNETUNE_CACHE_DIR", str(cache))
    recipe = Recipe.from_dict(copy.deepcopy(TINY_RECIPE))
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        saves.append(f)
        real_save(obj, f, *args, **kwargs)
        if len(saves) == 1:  # the other run: finds no cached model yet, trains and saves it
            prepare(recipe, show_progress=False)

    monkeypatch.setattr(torch, "save", save)
    prepare(recipe, show_progress=False)
    assert len(saves) == 2
    assert [p.suffix for p in (cache / "dense").iterdir()] == [".pt"]


def test_two_prune_processes_share_an_empty_cache(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    env = {**os.environ, "PRUNETUNE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PRUNETUNE_PROGRESS": "0"}
    runs = [subprocess.Popen([sys.executable, "-m", "prunetune.cli", "-q", "prune", "--recipe", str(recipe),
                              "--out", str(tmp_path / f"{name}.pt")], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
    left = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".pt")]
    assert not left, left  # no temporary file left behind
    assert len(list((tmp_path / "cache" / "dense").glob("*.pt"))) == 1
    a, b = load_pruned(tmp_path / "a.pt"), load_pruned(tmp_path / "b.pt")
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(a(x), b(x), atol=1e-5)  # the same recipe, the same network


def test_a_damaged_cached_dense_model_is_trained_again(tmp_path, monkeypatch) -> None:
    # a torn cache entry (a run killed in a non-atomic copy, a full disk) failed every later run with
    # "cannot read checkpoint '<cache>/dense/....pt'", a checkpoint the recipe never named
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRUNETUNE_CACHE_DIR", str(cache))
    recipe = Recipe.from_dict(copy.deepcopy(TINY_RECIPE))
    first = prepare(recipe, show_progress=False)
    (entry,) = (cache / "dense").glob("*.pt")
    for damage in (entry.read_bytes()[:200], b"", None):
        if damage is None:
            torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, entry)
        else:
            entry.write_bytes(damage)
        again = prepare(recipe, show_progress=False)
        assert again.dense == first.dense
        assert torch.load(entry, weights_only=True)["format"] == "prunetune-dense/1"  # replaced


def test_an_out_file_that_appears_while_pruning_is_not_replaced(tmp_path, monkeypatch) -> None:
    # --out was checked only at the start: a file written there during the fine-tune (another run with the
    # same --out, the user's own) was replaced at the end without --overwrite
    import prunetune
    from prunetune.exceptions import ConfigError
    from prunetune.recipes import pipeline

    monkeypatch.setenv("PRUNETUNE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "p.pt"
    real = pipeline.train_pruned

    def meanwhile(*args, **kwargs):
        result = real(*args, **kwargs)
        out.write_bytes(b"written by another run")
        return result

    monkeypatch.setattr(pipeline, "train_pruned", meanwhile)
    try:
        prunetune.prune(copy.deepcopy(TINY_RECIPE), out=out)
    except ConfigError as exc:
        assert "--overwrite" in str(exc) and str(out) in str(exc)
    else:
        raise AssertionError("the file that appeared was replaced")
    assert out.read_bytes() == b"written by another run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "p.pt"]  # no temporary file, no plan
    result = prunetune.prune(copy.deepcopy(TINY_RECIPE), out=out, overwrite=True)  # asked for: replaced
    assert result.out == out and load_pruned(out) is not None


def test_a_missing_folder_is_created_and_named_once(tmp_path, caplog) -> None:
    """A mistyped ``--out`` folder is made, as ``mkdir -p`` would, and the log says so (once)."""
    import logging

    from prunetune._atomic import write_together

    caplog.set_level(logging.INFO, logger="prunetune._atomic")
    write_bytes_atomic(tmp_path / "new" / "deeper" / "a.bin", b"a")
    write_together([(tmp_path / "new" / "deeper" / "b.json", lambda f: f.write(b"b")),
                    (tmp_path / "other" / "c.pt", lambda f: f.write(b"c"))])
    made = [r.getMessage() for r in caplog.records if r.getMessage().startswith("created folder")]
    assert made == [f"created folder {tmp_path / 'new' / 'deeper'}", f"created folder {tmp_path / 'other'}"]
    assert (tmp_path / "other" / "c.pt").read_bytes() == b"c"
