"""Dense checkpoints: saving, reading and checking them (state dicts, never pickled modules).

Pruned-model files (state dict + plan + dense model spec) are in :mod:`prunetune.recipes.pruned_file`;
a file of one kind given as the other is named as such here and there.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunetune._atomic import torch_save_atomic
from prunetune._paths import input_file_problem
from prunetune._text import short
from prunetune.exceptions import CheckpointError

PRUNED_FORMAT = 1
DENSE_FORMAT = "prunetune-dense/1"

log = logging.getLogger(__name__)


def save_dense(path: str | os.PathLike, model: nn.Module, *, data_split: Mapping[str, Any]) -> Path:
    """Save a dense model's state dict with the data split it was trained on (see :func:`load_checkpoint`)."""
    payload = {"format": DENSE_FORMAT, "data_split": dict(data_split),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return torch_save_atomic(payload, path)


def checkpoint_split(path: str | os.PathLike) -> dict[str, Any] | None:
    """The data split a dense checkpoint records (``None`` for a bare state dict)."""
    data = _read(Path(path), "checkpoint")
    split = data.get("data_split") if isinstance(data, dict) else None
    return dict(split) if isinstance(split, Mapping) else None


def check_split(path: str | os.PathLike, recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """Raise unless the split a checkpoint was trained on (``recorded``) is the data's ``current`` one.

    Pruning a model on another split would evaluate it on images it was trained on.
    """
    if recorded is None or dict(recorded) == dict(current):
        return
    changed = sorted(k for k in {*recorded, *current} if recorded.get(k) != current.get(k))
    if "split_seed" not in current and "split_seed" in changed:  # this split draws nothing (its own val/
        changed.remove("split_seed")  # folder, CIFAR's val_size 0): checkpoints recorded the seed regardless
        if not changed:
            return
    if changed == ["files"] and "files" not in recorded:  # written before splits recorded their files
        log.warning("checkpoint %r predates the file digest of generated splits: that the folder still holds "
                    "the files it was split from cannot be checked (train the dense model again to record it)",
                    str(path))
        return
    if changed == ["files"]:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained on a split of other files: images were added, removed, "
            "renamed or moved between class folders since, so this split's val/test images would overlap the "
            "checkpoint's training images; restore the folder as it was or train the dense model on it")
    raise CheckpointError(
        f"checkpoint {str(path)!r} was trained on the data split {_split_text(recorded)}, this recipe's data gives "
        f"{_split_text(current)} (differs in {', '.join(changed)}): its val/test images would overlap the "
        "checkpoint's training images; set the recipe's data to the checkpoint's split (e.g. data.split_seed) "
        "or train the dense model on this split")


def _split_text(split: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {split[k]}" for k in sorted(split)) + "}"


def _read(path: Path, what: str) -> Any:
    problem = input_file_problem(path)  # a FIFO or a device is never opened (reading one would block)
    if problem == "does not exist":
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    if problem is not None:
        raise CheckpointError(f"{what} {str(path)!r} {problem}; give the state-dict file (.pt)")
    try:
        return load_weights(path, "cpu")
    except Exception as exc:
        raise CheckpointError(f"cannot read {what} {str(path)!r} as a state dict "
                              f"({unreadable_reason(exc, 200, path)})") from None


def load_weights(path: Path, map_location) -> Any:
    """``torch.load(weights_only=True)`` without torch's warnings (a refused file is one error line)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" before a refusal
        return torch.load(path, map_location=map_location, weights_only=True)


def unreadable_reason(exc: Exception, width: int, path: Path) -> str:
    """What went wrong reading ``path`` with :func:`load_weights`, in a few words."""
    if not _looks_like_torch(path):
        return "it is not a file torch.save wrote (neither a zip archive nor a pickle)"
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
        return "it holds pickled Python objects, not only tensors; they are not loaded, as they could run code"
    first = str(exc).strip().splitlines()[0][:width] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"


def _looks_like_torch(path: Path) -> bool:
    """Whether ``path`` starts as ``torch.save`` files do: a zip archive, or (the legacy format) a pickle."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return True  # unreadable: the load's own error says why
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, model_name: str = "model",
                    data_split: Mapping[str, Any] | None = None) -> nn.Module:
    """Load a state dict (bare, or under ``state_dict``/``model``; ``module.`` prefixes stripped).

    ``data_split``: the split the caller's data has; a checkpoint that records another one (see
    :func:`save_dense`) is refused before anything is loaded.

    Raises:
        CheckpointError: missing file, unreadable file, another data split, or weights that do not
            fit ``model``.
    """
    path = Path(path)
    data = _read(path, "checkpoint")
    if data_split is not None:
        recorded = data.get("data_split") if isinstance(data, dict) else None
        check_split(path, recorded if isinstance(recorded, Mapping) else None, data_split)
    if isinstance(data, dict) and data.get("format") == PRUNED_FORMAT and {"plan", "model", "state_dict"} <= set(data):
        # a pruned file: its keys missed the dense model's
        raise CheckpointError(f"checkpoint {str(path)!r} is a pruned model (prunetune prune --out), not a dense "
                              f"state dict for {model_name}; give the dense model's checkpoint")
    state = _find_state_dict(data, path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit {model_name}: {what} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected); check model name, "
                              "num_classes and in_channels")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit {model_name}: {key!r} has shape "
                                  f"{tuple(state[key].shape)}, the model expects {tuple(value.shape)}; "
                                  f"{_shape_hint(model, key, tuple(state[key].shape), tuple(value.shape))}")
    for key, value in state.items():  # a NaN weight reached every activation criterion as a LinAlgError
        if value.is_floating_point() and not bool(value.isfinite().all()):
            bad = int((~value.isfinite()).sum())
            raise CheckpointError(f"checkpoint {str(path)!r} holds {bad} non-finite value(s) (NaN or inf) in "
                                  f"{key!r}; a diverged training? give a checkpoint of finite weights")
    model.load_state_dict(state)
    return model


def _shape_hint(model: nn.Module, key: str, got: tuple[int, ...], want: tuple[int, ...]) -> str:
    """What a weight of another shape most likely means: the input channels at the first conv or linear
    layer's inputs, the classes at the last one's outputs, otherwise another width or architecture."""
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    owner, _, what = key.rpartition(".")
    if layers and owner == layers[0] and what == "weight" and len(got) == len(want) > 1 \
            and got[0] == want[0] and got[1] != want[1]:
        return "check in_channels"
    if layers and owner == layers[-1] and what in ("weight", "bias") and got and want and got[0] != want[0]:
        return "check num_classes"
    return ("the checkpoint is of another width or architecture: check the model name (and any width "
            "argument of your own model's function), num_classes and in_channels")


def _find_state_dict(data: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(data, dict) and data and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in data.items()):
        return data
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            state = data[key]
            bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
            if bad is not None or not state:
                what = "is empty" if not state else f"maps {short(bad)} to {type(state[bad]).__name__}"
                raise CheckpointError(f"checkpoint {str(path)!r} holds no usable state dict: its {key!r} {what}, "
                                      "not parameter names to tensors; give the model's state-dict file")
            return state
    raise CheckpointError(f"checkpoint {str(path)!r} holds no state dict (looked for a tensor dict, "
                          "or one under 'state_dict'/'model')")
