"""Pruned-model files: a pruned network as its state dict, its plan and how to build the dense model.

``prunetune prune --out`` writes one (:func:`save_pruned_with_plan`, the plan beside it as
``<stem>.plan.json``); :func:`load_pruned` rebuilds the dense model, replays the plan and loads the
weights, after checking that the network counts the MACs its plan records at the plan's input
shape (:func:`check_plan_cost`). Never pickled modules. Dense checkpoints are in
:mod:`prunetune.recipes.checkpoint`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunetune._atomic import torch_save_atomic, write_together
from prunetune._checks import boolean
from prunetune._machine import physical_memory
from prunetune._paths import check_output_file, input_file_problem
from prunetune._text import exception_line, short
from prunetune.exceptions import CheckpointError, ConfigError
from prunetune.models import create_model
from prunetune.models.registry import check_model_name
from prunetune.pruning.budget_check import ROUNDING
from prunetune.pruning.cost import count_cost, shape_cost
from prunetune.pruning.plan import PruningPlan
from prunetune.pruning.surgery import apply_plan
from prunetune.recipes.checkpoint import PRUNED_FORMAT, load_weights, unreadable_reason
from prunetune.recipes.schema import MODEL_ARGUMENTS

log = logging.getLogger(__name__)


def save_pruned(path: str | os.PathLike, model: nn.Module, plan: PruningPlan, model_spec: dict[str, Any], *,
                overwrite: bool = False) -> Path:
    """Save a pruned model as its state dict, its plan and how to build the dense architecture.

    An existing ``path`` is a :class:`ConfigError` unless ``overwrite=True`` (a race that creates it
    meanwhile, ``FileExistsError``). What :func:`load_pruned` would refuse is refused here, before
    anything is written: a ``model_spec`` without name, num_classes and in_channels (a ConfigError) or
    naming an unknown model (UnknownNameError), a model whose MACs at the plan's input shape are not the
    plan's (ConfigError), or one that does not run at that shape (CheckpointError).
    """
    boolean(overwrite, "overwrite")
    if not isinstance(model, nn.Module) or not isinstance(plan, PruningPlan):
        raise ConfigError(f"save_pruned needs the pruned nn.Module and its PruningPlan, got {type(model).__name__} "
                          f"and {type(plan).__name__}")
    path = check_output_file(path, "path", overwrite=overwrite, flag="path", overwrite_flag="overwrite=True")
    problem = _spec_problem(model_spec, "model_spec")
    if problem is not None:
        raise ConfigError(f"save_pruned: {problem}")
    check_model_name(str(model_spec["name"]))
    fix = "pass the model the plan was applied to"
    mismatch = _plan_mismatch(model, plan, "save_pruned: the model", fix=fix)
    if mismatch is not None:
        raise ConfigError(f"save_pruned: the model does not match its plan: {mismatch[2]}; {fix}")
    return torch_save_atomic(_pruned_payload(model, plan, model_spec), path, replace=overwrite)


def plan_file(path: str | os.PathLike) -> Path:
    """Where the plan of the pruned model file ``path`` goes: ``<stem>.plan.json`` beside it."""
    return Path(path).with_suffix(".plan.json")


def save_pruned_with_plan(path: str | os.PathLike, model: nn.Module, plan: PruningPlan, model_spec: dict[str, Any],
                          *, overwrite: bool = True) -> tuple[Path, Path]:
    """Save a pruned model (:func:`save_pruned`) and its plan beside it (:func:`plan_file`) as a pair.

    Both are written under temporary names first, then the plan is renamed into place and the model
    last, so a model file never exists without its plan; an error or Ctrl-C leaves the folder as it
    was (earlier files back in place, no temporaries). ``overwrite=False``: ``FileExistsError`` if
    either file exists by then, and neither is written. Returns (model path, plan path).
    """
    payload = _pruned_payload(model, plan, model_spec)
    plan_path = plan_file(path)
    text = plan.to_json().encode("utf-8")
    write_together([(plan_path, lambda f: f.write(text)), (path, lambda f: torch.save(payload, f))],
                   replace=overwrite)
    return Path(path), plan_path


def _pruned_payload(model: nn.Module, plan: PruningPlan, model_spec: dict[str, Any]) -> dict[str, Any]:
    return {"format": PRUNED_FORMAT, "model": dict(model_spec), "plan": plan.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_pruned(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                allow_code: bool = False) -> nn.Module:
    """Rebuild a pruned network saved by ``prunetune prune``: dense model, replay the plan, load weights.

    ``map_location``: the device the returned model is on (``cpu``, ``cuda``, ``cuda:N``).
    ``allow_code`` lets a ``package.module:function`` model name stored in the file import and run
    that code (a shared file must not run code by itself).
    """
    boolean(allow_code, "allow_code")
    data = _read_pruned(Path(path), map_location)
    model = _dense_model(Path(path), data["model"], allow_code)
    plan = PruningPlan.from_dict(data["plan"])
    what = f"pruned model {str(path)!r}"
    _compare_plan_file(Path(path), plan)
    check_plan_cost(model.eval(), plan, what, dense=True)  # before removal traces the model at that shape
    apply_plan(model, plan)
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()[:160]
        raise CheckpointError(f"pruned model {str(path)!r} is damaged (its weights do not fit its plan: {first}); "
                              "write it again with prunetune prune --out") from None
    check_plan_cost(model.eval(), plan, what)
    return model.to(torch.device(map_location))  # rebuilt on the CPU: load_state_dict copied the weights there


def _compare_plan_file(path: Path, plan: PruningPlan) -> None:
    """Warn if the ``.plan.json`` beside a pruned model file says something else than the plan inside it.

    The file's own plan is the one its weights fit, so it is the one used; the copy beside it is for
    reading and for a recipe's ``plan:``. An edit there, or a plan left from another ``prune --out``, would
    otherwise pass without a word.
    """
    side = plan_file(path)
    if not side.is_file():
        return
    try:
        theirs = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("%s beside pruned model %s cannot be read (%s); the plan inside the model file is used",
                    side, path, exception_line(exc))
        return
    if theirs != json.loads(plan.to_json()):
        log.warning("%s differs from the plan inside pruned model %s (edited, or left from another prune); "
                    "the plan inside the model file is used, as its weights fit it; to use the other plan, "
                    "name it under plan: in a recipe and run prunetune prune --recipe", side, path)


PLAN_CHECK_ENV = "PRUNETUNE_PLAN_CHECK"
"""Set to ``warn`` to load a pruned file whose counted MACs differ from its plan's by less than
:data:`NEAR_COUNT` with a warning instead of an error: the escape hatch should a torch upgrade count
some layer differently. Larger differences (an edited shape, a damaged plan) stay errors."""

NEAR_COUNT = 1.15
"""The largest factor between counted and recorded MACs ``PRUNETUNE_PLAN_CHECK=warn`` lets through
(an input side edited by 10% changes the count by 21%)."""

REAL_COUNT_LIMIT = 1 << 20
"""Input elements up to which a network the meta device cannot run is counted for real instead
(above it, such a network's plan is loaded unchecked, with a warning)."""


def check_plan_cost(model: nn.Module, plan: PruningPlan, what: str, *, dense: bool = False) -> None:
    """Raise :class:`CheckpointError` unless ``model`` takes inputs of the plan's ``input_shape`` and
    counts the MACs the plan records there (``plan.pruned``, or ``plan.dense`` for the dense model
    before removal), within the budget check's rounding (:func:`_plan_mismatch`); with
    ``PRUNETUNE_PLAN_CHECK=warn``, a difference under :data:`NEAR_COUNT` is a warning.

    The shape is what a deployed file is exported for and what ``bench`` measures with: an edited or
    damaged one that the network still takes (a 64×64 input for a model trained on 16×16) would give a
    deployed model for the wrong inputs and MACs 16 times the plan's, without a word; a huge one made
    the removal's trace take the machine's memory. Counted from shapes alone
    (:func:`~prunetune.pruning.cost.shape_cost`), so no shape costs memory; a network whose code needs
    real values is counted for real, for inputs up to :data:`REAL_COUNT_LIMIT` elements, and above
    that loaded unchecked with a warning (its file is not damaged for that).
    """
    fix = "write it again with prunetune prune --out"
    mismatch = _plan_mismatch(model, plan, what, dense=dense, fix=fix)
    if mismatch is None:
        return
    counted, recorded, found = mismatch
    # a counting change moves the figure by a few percent; an edited shape or a damaged plan by more
    # (a side 10% longer counts 21% more, twice as long 4×, and its removal trace takes that memory)
    near = recorded > 0 and 1 / NEAR_COUNT <= counted / recorded <= NEAR_COUNT
    if near and os.environ.get(PLAN_CHECK_ENV, "").strip().lower() == "warn":
        log.warning("%s: %s (loaded anyway: %s=warn)", what, found, PLAN_CHECK_ENV)
        return
    hint = (f" (if only the count changed, e.g. after a torch upgrade, {PLAN_CHECK_ENV}=warn loads it "
            "with a warning)") if near else ""
    raise CheckpointError(f"{what} is damaged: {found}; {fix}{hint}")


def _plan_mismatch(model: nn.Module, plan: PruningPlan, what: str, *, dense: bool = False,
                   fix: str) -> tuple[int, int, str] | None:
    """(counted MACs, recorded MACs, the sentence the errors use) where ``model``'s MACs at the plan's
    ``input_shape`` differ from what the plan records; None where they agree (or could not be counted, with a warning; see :func:`check_plan_cost`). A model
    that does not take that shape is a :class:`CheckpointError` ending with ``fix``."""
    shape = tuple(plan.input_shape)
    try:
        counted, _ = shape_cost(model, shape)
    except Exception as exc:  # noqa: BLE001 - whatever the network raises on that shape
        if math.prod(shape) > REAL_COUNT_LIMIT:  # a network the meta device cannot run (a plain tensor
            # attribute, code that reads values): not counted for real at a size that may not fit
            log.warning("%s: its plan's MACs at input_shape %s were not checked (the network cannot run on "
                        "shapes alone: %s)", what, shape, exception_line(exc))
            return None
        try:  # the real error says more than the meta device's ("Invalid channel dimensions")
            counted = count_cost(model, shape)
        except Exception as real:  # noqa: BLE001
            real = real.__cause__ or real  # what the forward pass raised, not count_cost's sentence around it
            raise CheckpointError(f"{what}: the network does not take inputs of its plan's input_shape {shape} "
                                  f"({exception_line(real)}); {fix}") from None
    recorded = (plan.dense if dense else plan.pruned).macs
    if abs(counted.macs - recorded) <= ROUNDING * max(recorded, 1):
        return None
    which = "dense network" if dense else "network"
    return (counted.macs, recorded,
            f"at its plan's input_shape {shape} the {which} counts {counted.macs} MACs, and the plan records {recorded}")


def dense_architecture(path: str | os.PathLike, *, allow_code: bool = False) -> nn.Module:
    """The dense model a pruned model file was cut from, freshly initialised (eval mode)."""
    return _dense_model(Path(path), _read_pruned(Path(path), "cpu")["model"], allow_code).eval()


def _dense_model(path: Path, spec: Mapping[str, Any], allow_code: bool) -> nn.Module:
    """The dense model ``spec`` of a pruned model file names; a refused spec names the file."""
    try:
        return create_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                            allow_code=allow_code, **spec.get("kwargs", {}))
    except ConfigError as exc:
        raise type(exc)(f"pruned model {str(path)!r}: {exc}") from None


def read_pruned_plan(path: str | os.PathLike) -> PruningPlan:
    """The plan stored in a pruned model file (its input shape, dense and pruned costs)."""
    return PruningPlan.from_dict(_read_pruned(Path(path), "cpu")["plan"])


def pruned_input_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The ``(C, H, W)`` a pruned model file was made for."""
    return tuple(read_pruned_plan(path).input_shape)


def _read_pruned(path: Path, map_location) -> dict[str, Any]:
    try:  # a device this machine lacks was reported as a file prunetune did not write
        device = torch.device(map_location) if isinstance(map_location, (str, torch.device)) else None
    except RuntimeError:
        raise ConfigError(f"map_location {short(map_location)} is not a device; give 'cpu', 'cuda' or 'cuda:N'") from None
    if device is None or device.type not in ("cpu", "cuda"):  # meta: no weights to check the plan with
        raise ConfigError(f"map_location {short(map_location)} is not a device a model runs on; give 'cpu', "
                          "'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"map_location {short(map_location)}: CUDA is not available here; load it with "
                          "map_location='cpu'")
    problem = input_file_problem(path)
    if problem == "does not exist":
        raise CheckpointError(f"pruned model {str(path)!r} does not exist")
    if problem is not None:
        raise CheckpointError(f"pruned model {str(path)!r} {problem}; give the .pt file prunetune prune --out wrote")
    try:
        data = load_weights(path, map_location)
    except Exception as exc:
        raise CheckpointError(f"cannot read pruned model {str(path)!r}: it is not a file `prunetune prune --out` "
                              f"wrote ({unreadable_reason(exc, 120, path)})") from None
    if not isinstance(data, dict) or data.get("format") != PRUNED_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a pruned model written by prunetune prune --out (a dense "
                              "checkpoint or another file?); give the .pt file prunetune prune --out wrote")
    damage = _pruned_damage(data)
    if damage:
        raise CheckpointError(f"pruned model {str(path)!r} is damaged ({damage}); write it again with "
                              "prunetune prune --out")
    return data


def _spec_problem(spec: Any, key: str = "model") -> str | None:
    """What is wrong with the model spec of a pruned model file (its ``key`` entry), or None."""
    if not isinstance(spec, Mapping) or not all(k in spec for k in ("name", "num_classes", "in_channels")):
        return f"'{key}' must be a mapping with name, num_classes and in_channels"
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        return f"'{key}.kwargs' must be a mapping of argument names"
    reserved = sorted(MODEL_ARGUMENTS & set(kwargs))
    if reserved:
        return f"'{key}.kwargs' must not set {reserved[0]!r}"
    return None


def _pruned_damage(data: dict[str, Any]) -> str | None:
    """What is wrong with the body of a pruned model file (None: nothing that building it would trip on)."""
    problem = _spec_problem(data.get("model"))
    if problem is not None:
        return problem
    if not isinstance(data.get("plan"), Mapping):
        return "'plan' must be a mapping"
    shape = data["plan"].get("input_shape")
    memory = physical_memory()
    if isinstance(shape, list) and all(isinstance(n, int) and n > 0 for n in shape) and memory \
            and 8 * math.prod(shape) > memory:  # one float64 example input would not fit
        return f"its plan's input_shape {short(shape)} would not fit in this machine's memory"
    state = data.get("state_dict")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "'state_dict' must map names to tensors"
    return None
