"""`prune --out p.pt` writes two files, the model and ``p.plan.json``: they appear together or not at
all. A Ctrl-C (or an error) between the two writes left a model file without its plan; with
``--overwrite`` it could leave the new plan beside the old model.

The interrupt is simulated where it hurts: at the second of the two renames that put the files in
place (``os.link`` without ``--overwrite``, ``os.replace`` with it), and while the model is written.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from prunetune.recipes.pipeline import prepare, run_recipe
from prunetune.recipes.schema import Recipe
from reliability_helpers import TINY_RECIPE


@pytest.fixture(scope="module")
def tiny():
    recipe = Recipe.from_dict(copy.deepcopy({**TINY_RECIPE, "finetune": {"epochs": 0}}))
    return recipe, prepare(recipe, show_progress=False)


def _interrupt_second_placement(monkeypatch, folder) -> list[str]:
    """``os.link``/``os.replace`` onto a file of ``folder`` (not a temporary): the second one raises
    KeyboardInterrupt, as a Ctrl-C between the two would."""
    placed: list[str] = []
    real = {"link": os.link, "replace": os.replace}

    def placing(name):
        def call(src, dst, *args, **kwargs):
            if os.path.dirname(os.path.abspath(dst)) == str(folder) and not os.path.basename(dst).startswith("."):
                placed.append(os.path.basename(dst))
                if len(placed) == 2:
                    raise KeyboardInterrupt
            return real[name](src, dst, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "link", placing("link"))
    monkeypatch.setattr(os, "replace", placing("replace"))
    return placed


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_ctrl_c_between_the_two_writes_leaves_no_half_pair(tiny, tmp_path, monkeypatch, overwrite) -> None:
    recipe, base = tiny
    out = tmp_path / "p.pt"
    placed = _interrupt_second_placement(monkeypatch, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, out=out, overwrite=overwrite, show_progress=False, base=base)
    assert placed == ["p.plan.json", "p.pt"]  # the plan first, the model last
    assert _files(tmp_path) == {}  # no model without its plan, no plan without its model, no temporaries


def test_ctrl_c_while_overwriting_keeps_the_earlier_pair(tiny, tmp_path, monkeypatch) -> None:
    recipe, base = tiny
    out = tmp_path / "p.pt"
    (tmp_path / "p.pt").write_bytes(b"earlier model")
    (tmp_path / "p.plan.json").write_bytes(b"earlier plan")
    before = _files(tmp_path)
    _interrupt_second_placement(monkeypatch, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, out=out, overwrite=True, show_progress=False, base=base)
    assert _files(tmp_path) == before  # the old pair, as it was; not the new plan beside the old model


def test_ctrl_c_while_the_model_is_written_leaves_nothing(tiny, tmp_path, monkeypatch) -> None:
    recipe, base = tiny
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "plan" in obj:  # the pruned model's payload
            f.write(b"half a model")
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, out=tmp_path / "p.pt", overwrite=False, show_progress=False, base=base)
    assert _files(tmp_path) == {}


def test_a_plan_that_appeared_meanwhile_is_kept_and_nothing_is_written(tiny, tmp_path) -> None:
    # checked before the work, but another run wrote the plan since: refused, and without a model left
    # behind (the model was written first and stayed, without its plan)
    from prunetune.exceptions import ConfigError

    recipe, base = tiny
    (tmp_path / "p.plan.json").write_bytes(b"another run's plan")
    with pytest.raises(ConfigError, match=r"p.plan.json' appeared while pruning .* not saved"):
        run_recipe(recipe, out=tmp_path / "p.pt", overwrite=False, show_progress=False, base=base)
    assert _files(tmp_path) == {"p.plan.json": b"another run's plan"}


def test_the_pair_is_written_and_loads(tiny, tmp_path) -> None:
    from prunetune import load_pruned
    from prunetune.pruning.plan import PruningPlan

    recipe, base = tiny
    result = run_recipe(recipe, out=tmp_path / "p.pt", overwrite=False, show_progress=False, base=base)
    assert (result.out, result.plan_path) == (tmp_path / "p.pt", tmp_path / "p.plan.json")
    assert sorted(_files(tmp_path)) == ["p.plan.json", "p.pt"]
    assert PruningPlan.load(result.plan_path).kept == result.plan.kept
    load_pruned(result.out)
    again = run_recipe(recipe, out=tmp_path / "p.pt", overwrite=True, show_progress=False, base=base)
    assert sorted(_files(tmp_path)) == ["p.plan.json", "p.pt"] and again.out == result.out


def test_a_ctrl_c_during_the_renames_waits_for_them(tmp_path, monkeypatch) -> None:
    """A real SIGINT between the two renames is held until both are done, then raised."""
    import signal

    from prunetune._atomic import write_together

    real_replace, kills = os.replace, []

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if not kills:
            kills.append(dst)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the first file is in place

    monkeypatch.setattr(os, "replace", replace)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (a test before may differ)
    try:
        with pytest.raises(KeyboardInterrupt):
            write_together([(tmp_path / "p.plan.json", lambda f: f.write(b"plan")),
                            (tmp_path / "p.pt", lambda f: f.write(b"model"))])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _files(tmp_path) == {"p.plan.json": b"plan", "p.pt": b"model"}


def _killed_pair(folder, *, new_plan_placed: bool):
    """The folder as a kill -9 inside write_together's renames leaves it: the old pair moved aside
    (the model first), and, if ``new_plan_placed``, the new plan already in place."""
    from prunetune._atomic import write_together

    plan, model = folder / "p.plan.json", folder / "p.pt"
    write_together([(plan, lambda f: f.write(b"old plan")), (model, lambda f: f.write(b"old model"))])
    for path in (model, plan):
        os.replace(path, folder / f".{path.name}.k1ll3d0_.old")
    if new_plan_placed:
        plan.write_bytes(b"new plan")
    return plan, model


@pytest.mark.parametrize("new_plan_placed", [False, True], ids=["both-aside", "new-plan-placed"])
@pytest.mark.parametrize("replace", [False, True], ids=["new", "overwrite"])
def test_a_pair_a_hard_kill_left_aside_is_put_back(tmp_path, replace, new_plan_placed, caplog, monkeypatch) -> None:
    """kill -9 between moving the old pair aside and placing the new one (no cleanup runs) leaves the
    user's files under hidden ``.<name>.<random>.old`` names, maybe with the new plan already in place:
    the next write puts the old pair back first (over that plan, never one file of each), so without
    --overwrite it is kept, with it it is replaced as usual."""
    from prunetune import _atomic

    monkeypatch.setattr(_atomic, "BACKUP_SETTLED_S", 0.0)
    plan, model = _killed_pair(tmp_path, new_plan_placed=new_plan_placed)
    (tmp_path / f".{model.name}.0ld3r000.old").write_bytes(b"")  # a reserved name never filled: not a backup
    new = [(plan, lambda f: f.write(b"new plan 2")), (model, lambda f: f.write(b"new model 2"))]
    if not replace:
        with pytest.raises(FileExistsError):
            _atomic.write_together(new, replace=False)
        assert plan.read_bytes() == b"old plan" and model.read_bytes() == b"old model"
        assert "interrupted write" in caplog.text
    else:
        _atomic.write_together(new)
        assert plan.read_bytes() == b"new plan 2" and model.read_bytes() == b"new model 2"
    assert sorted(p.name for p in tmp_path.iterdir() if p.stat().st_size) == ["p.plan.json", "p.pt"]


def test_the_output_check_puts_the_pair_back_before_any_work_and_says_so(tmp_path, monkeypatch) -> None:
    from prunetune import _atomic
    from prunetune._paths import check_output_file
    from prunetune.exceptions import ConfigError

    monkeypatch.setattr(_atomic, "BACKUP_SETTLED_S", 0.0)
    plan, model = _killed_pair(tmp_path, new_plan_placed=True)
    with pytest.raises(ConfigError, match=r"already exists \(just put back from \.p\.pt\.k1ll3d0_\.old, where an "
                                          r"interrupted write had left it\); pass --overwrite"):
        check_output_file(model, "--out", written_with=[plan])
    assert plan.read_bytes() == b"old plan" and model.read_bytes() == b"old model"


def test_backups_of_other_files_and_writes_in_flight_are_not_taken(tmp_path, monkeypatch) -> None:
    from prunetune import _atomic

    model = tmp_path / "m"
    (tmp_path / ".m.plan.json.abcdefgh.old").write_bytes(b"another file's backup")  # not m's
    assert _atomic.restore_interrupted([model]) == [] and not model.exists()
    (tmp_path / ".m.abcdefgh.old").write_bytes(b"m, moved aside just now")  # a live write's, in flight
    assert _atomic.restore_interrupted([model]) == [] and not model.exists()
    monkeypatch.setattr(_atomic, "BACKUP_SETTLED_S", 0.0)  # once settled, it is m's to put back
    assert _atomic.restore_interrupted([model]) == [(model, tmp_path / ".m.abcdefgh.old")]
    assert model.read_bytes() == b"m, moved aside just now"


def test_a_sigint_handler_installed_from_c_is_left_alone(tmp_path, monkeypatch) -> None:
    """``signal.getsignal`` says ``None`` for a handler installed from C (an embedding program): it
    could not be put back (``signal.signal(SIGINT, None)`` is a TypeError, which rolled the pair
    back), so the renames then run without holding Ctrl-C and the pair is written."""
    import signal

    from prunetune._atomic import write_together

    set_to = []
    monkeypatch.setattr(signal, "getsignal", lambda signum: None)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: set_to.append(handler))
    write_together([(tmp_path / "p.plan.json", lambda f: f.write(b"plan")), (tmp_path / "p.pt", lambda f: f.write(b"model"))])
    assert set_to == []
    assert _files(tmp_path) == {"p.plan.json": b"plan", "p.pt": b"model"}


def test_a_stale_backup_of_the_file_still_in_place_is_not_paired_with_the_missing_one(tmp_path, monkeypatch) -> None:
    """Pair A was moved aside by a write killed after its renames (its backups stayed), pair B took its
    place; a later write killed after moving B's model aside left B's plan in place. Putting back
    every newest backup paired A's plan with B's model and lost B's plan."""
    import time

    from prunetune import _atomic

    monkeypatch.setattr(_atomic, "BACKUP_SETTLED_S", 0.0)
    plan, model = tmp_path / "p.plan.json", tmp_path / "p.pt"
    plan.write_bytes(b"A plan")
    model.write_bytes(b"A model")
    os.replace(model, tmp_path / ".p.pt.aaaaaaaa.old")
    os.replace(plan, tmp_path / ".p.plan.json.aaaaaaaa.old")
    time.sleep(0.05)
    plan.write_bytes(b"B plan")
    model.write_bytes(b"B model")
    time.sleep(0.05)
    os.replace(model, tmp_path / ".p.pt.cccccccc.old")
    assert _atomic.restore_interrupted([plan, model]) == [(model, tmp_path / ".p.pt.cccccccc.old")]
    assert plan.read_bytes() == b"B plan" and model.read_bytes() == b"B model"


def test_a_plan_file_that_differs_from_the_model_files_plan_is_named_on_load(tiny, tmp_path, caplog) -> None:
    """The ``.plan.json`` beside the model was never compared with the plan inside it: an edit there
    passed without a word. The model file's own plan is still the one used (its weights fit it)."""
    import json
    import logging

    from prunetune import load_pruned

    recipe, base = tiny
    result = run_recipe(recipe, out=tmp_path / "p.pt", overwrite=False, show_progress=False, base=base)
    with caplog.at_level(logging.WARNING, logger="prunetune"):
        load_pruned(result.out)
    assert not caplog.records  # the pair as written: silent
    plan = json.loads(result.plan_path.read_text())
    group = next(iter(plan["groups"]))
    plan["groups"][group]["kept"] = plan["groups"][group]["kept"][:-1]  # one channel fewer
    result.plan_path.write_text(json.dumps(plan))
    with caplog.at_level(logging.WARNING, logger="prunetune"):
        model = load_pruned(result.out)
    [record] = caplog.records
    assert "p.plan.json differs from the plan inside pruned model" in record.getMessage()
    assert "the plan inside the model file is used" in record.getMessage()
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in load_pruned(result.out).parameters())
    caplog.clear()
    result.plan_path.write_text("{trunc")
    with caplog.at_level(logging.WARNING, logger="prunetune"):
        load_pruned(result.out)
    assert "p.plan.json beside pruned model" in caplog.records[0].getMessage() and "cannot be read" in caplog.records[0].getMessage()
    result.plan_path.unlink()  # no plan beside it: loads, silently
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prunetune"):
        load_pruned(result.out)
    assert not caplog.records
