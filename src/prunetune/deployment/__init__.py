"""Deploying a pruned network: ONNX, TorchScript or ``torch.export``, checked against PyTorch.

:func:`deploy` folds batch norms into their convs (optional), writes the file, loads it back, runs it
on a random batch of another size than the one it was exported with (the batch dimension is
dynamic) and compares with the PyTorch model. ONNX needs the ``deploy`` extra.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from prunetune._atomic import _umask, make_folder
from prunetune._checks import boolean, torch_seed
from prunetune._numbers import plain
from prunetune._precision import full_float32
from prunetune._checks import input_shape as check_input_shape
from prunetune._text import short
from prunetune._machine import check_input_fits
from prunetune.pruning.cost import count_cost, shape_cost
from prunetune._registry import unknown_name_message
from prunetune.deployment.export import EXPORT_MAX_BATCH, WRITERS
from prunetune.deployment.fold import fold_batchnorm
from prunetune.exceptions import ConfigError, DeployError, UnknownNameError
from prunetune._modes import modes_kept
from prunetune.models.registry import check_float32

FORMATS = tuple(WRITERS)
TOLERANCE = 1e-4  # max |exported − PyTorch| relative to max |PyTorch output|


@dataclass(frozen=True)
class DeployResult:
    """What :func:`deploy` wrote and measured."""

    format: str
    path: str
    bytes: int
    input_shape: tuple[int, ...]
    folded_bn: int
    check_batch: int
    max_abs_diff: float
    rel_diff: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def deploy(model: nn.Module | str | os.PathLike, format: str, out: str | os.PathLike, *,  # noqa: A002
           input_shape: tuple[int, ...] | None = None, fold_bn: bool = True, check_batch: int = 3,
           seed: int = 0, allow_code: bool = False, overwrite: bool = False) -> DeployResult:
    """Write ``model`` (a module, or a ``prunetune prune`` output file) as ``format`` to ``out`` and check it.

    Args:
        format: ``onnx``, ``torchscript`` or ``export``.
        input_shape: ``(C, H, W)``; read from the pruned file's plan when ``model`` is a path.
        fold_bn: fold batch norms into the convs before writing.
        check_batch: batch size of the random check (the file is exported with batch 2, or 3 when
            ``check_batch`` is 2, so the check always runs another batch size than the export's).
        allow_code: let a pruned file whose model is a ``package.module:function`` import and run it.
        overwrite: replace an existing ``out`` (otherwise that is an error, before any work).

    Raises:
        DeployError: the written model differs from PyTorch by more than 1e-4 (relative).
    """
    boolean(allow_code, "allow_code")
    boolean(overwrite, "overwrite")
    boolean(fold_bn, "fold_bn")
    seed, check_batch = plain(seed), plain(check_batch)  # numpy scalars as the numbers they hold
    torch_seed(seed, "seed")
    if not isinstance(model, (nn.Module, str, os.PathLike)):
        raise ConfigError(f"model must be a torch.nn.Module or the path of a pruned model file, got {short(model)}")
    if not isinstance(format, str) or format not in WRITERS:
        raise UnknownNameError(unknown_name_message("deploy format", short(format) if not isinstance(format, str)
                                                    else format, FORMATS))
    if isinstance(check_batch, bool) or not isinstance(check_batch, int) or check_batch < 1:
        raise ConfigError(f"check_batch must be a positive integer, got {check_batch!r}")
    if input_shape is not None:
        input_shape = check_input_shape(input_shape)
    if format == "export" and check_batch > EXPORT_MAX_BATCH:
        raise ConfigError(f"check_batch {check_batch} is more than a torch.export program's batch dimension takes "
                          f"({EXPORT_MAX_BATCH}); give at most {EXPORT_MAX_BATCH}")
    if not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"out must be a file name, got {short(out)}")
    out = Path(out)
    if format == "export" and out.suffix != ".pt2":
        raise ConfigError(f"a torch.export program is saved as .pt2 (torch.export.load needs it), got {str(out)!r}")
    from prunetune._paths import check_output_file

    check_output_file(out, "--out", overwrite=overwrite)  # an existing file, a directory, an unwritable place
    if isinstance(model, (str, os.PathLike)) and out.exists() and os.path.exists(model) \
            and os.path.samefile(model, out):
        raise ConfigError(f"--out {str(out)!r} is the pruned model file itself (--model); writing it would replace "
                          "the model the deployed file is made from; choose another --out")
    model, input_shape = _resolve(model, input_shape, allow_code)
    try:
        activation = shape_cost(model, tuple(input_shape))[1]
    except Exception:  # noqa: BLE001 - code that needs real values: the input alone is checked
        activation = 0
    count_cost(model, tuple(input_shape))  # one input, before anything is written: a shape it cannot take
    check_input_fits(max(check_batch, 3), input_shape, f"check_batch {check_batch} of inputs {tuple(input_shape)}",
                     "give a smaller check batch", activation=activation)
    t0 = time.perf_counter()
    make_folder(out.parent)
    # the caller's module is left in the modes it came in; full float32: under TF32 a CUDA model's BN-folded copy
    # differs from it by more than the check's 1e-4
    with modes_kept(model), full_float32(next(model.parameters(), torch.empty(0)).device):
        return _write(model.eval(), format, out, input_shape, fold_bn, check_batch, seed, t0)


def _write(reference: nn.Module, format: str, out: Path, input_shape: tuple[int, ...], fold_bn: bool,  # noqa: A002
           check_batch: int, seed: int, t0: float) -> DeployResult:
    deployed, folded = fold_batchnorm(reference, input_shape) if fold_bn else (reference, 0)
    param = next(reference.parameters(), torch.empty(0))
    # exported with a batch of 2, checked on ``check_batch``: with 2 itself, exported with 3, so the check
    # always runs the file on a batch size it was not traced with (what "the batch is dynamic" promises)
    example = torch.randn(3 if check_batch == 2 else 2, *input_shape,  # the caller's random stream is left alone
                          generator=torch.Generator().manual_seed(seed)).to(param.device)
    # written and checked under a temporary name, renamed over ``out`` only when it passed: an interrupted or
    # failed deploy leaves ``out`` as it was (an --overwrite never trades a good file for a torn one)
    fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)  # writers need the suffix
    os.close(fd)
    written = Path(name)
    try:
        run = WRITERS[format](deployed, example, written)
        x = torch.randn(check_batch, *input_shape, generator=torch.Generator().manual_seed(seed)).to(param.device)
        with torch.no_grad():
            expected = reference(x)
            if not isinstance(expected, torch.Tensor):
                raise ConfigError(f"the model returns a {type(expected).__name__}; deploy writes models whose "
                                  "forward returns one Tensor (return only the logits)")
            expected, got = expected.float().cpu(), run(x).float().cpu()
        if got.shape != expected.shape:
            raise DeployError(f"{format} output has shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
        if not bool(expected.isfinite().all()):
            raise DeployError(f"the model's own output on a random batch is not finite (NaN or inf), so {str(out)!r} "
                              "was not written: check its weights (a NaN there reaches every output)")
        diff = float((got - expected).abs().max())
        rel = diff / max(float(expected.abs().max()), 1e-12)
        if not rel <= TOLERANCE:  # NaN too: a file whose output is NaN where PyTorch's is finite
            raise DeployError(f"{format} file for {str(out)!r} differs from the PyTorch model by {diff:.3g} "
                              f"({rel:.3g} relative, more than {TOLERANCE:g}), so it was not written; try "
                              "--no-fold-bn or another format")
        os.chmod(written, 0o666 & ~_umask())  # mkstemp makes 0600; a file written in place follows the umask
        os.replace(written, out)
    finally:
        written.unlink(missing_ok=True)
    return DeployResult(format, str(out), out.stat().st_size, tuple(input_shape), folded, check_batch, diff, rel,
                        time.perf_counter() - t0)


def _resolve(model, input_shape, allow_code: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    if isinstance(model, nn.Module):
        if input_shape is None:
            raise ConfigError("deploy(module, ...) needs input_shape=(C, H, W); a pruned file carries its own")
        check_float32(model, "the module given to deploy")
        return model, tuple(input_shape)
    from prunetune.recipes.pruned_file import load_pruned, pruned_input_shape

    path = Path(model)
    return load_pruned(path, allow_code=allow_code), tuple(input_shape or pruned_input_shape(path))


__all__ = ["FORMATS", "DeployResult", "deploy", "fold_batchnorm"]
