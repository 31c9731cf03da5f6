"""Writers and runners for each deploy format: ONNX (onnxruntime), TorchScript, torch.export."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from prunetune._imports import require

Runner = Callable[[Tensor], Tensor]


EXPORT_MAX_BATCH = 65536  # the largest batch a torch.export program's dynamic batch dimension takes


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=EXPORT_MAX_BATCH)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Only errors from these loggers while the block runs (the ONNX exporter warns about optional
    operator libraries and graph rewrites that say nothing about the user's model)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # torch's own deprecations inside the exporter
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def write_onnx(model: nn.Module, example: Tensor, out: Path) -> Runner:
    """ONNX through the dynamo exporter (needs onnx + onnxscript), batch dimension dynamic."""
    for module in ("onnx", "onnxscript"):
        require(module, extra="deploy", purpose="ONNX export")
    chatter = io.StringIO()  # the exporter prints its progress; keep the command's output to the result
    with contextlib.redirect_stdout(chatter), _quiet_loggers("torch.onnx", "onnxscript", "onnx_ir"):
        torch.onnx.export(model, (example,), str(out), input_names=["input"], output_names=["output"],
                          dynamic_shapes=({0: _batch_dim()},), dynamo=True, verbose=False,
                          external_data=False)  # one file: the weights inside, not in a <out>.data beside it
    ort = require("onnxruntime", extra="deploy", purpose="checking the ONNX file")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(np.asarray(session.run(None, {"input": x.cpu().numpy()})[0]))
    return run


def write_torchscript(model: nn.Module, example: Tensor, out: Path) -> Runner:
    """TorchScript by tracing (sizes are read from the input, so any batch works)."""
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(traced, str(out))
    loaded = torch.jit.load(str(out), map_location=example.device)
    return lambda x: loaded(x)


def write_export(model: nn.Module, example: Tensor, out: Path) -> Runner:
    """A ``torch.export`` program (``.pt2``; ``torch.export.load(path).module()`` runs it)."""
    program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, str(out))
    loaded = torch.export.load(str(out)).module()
    return lambda x: loaded(x)


WRITERS: dict[str, Callable[[nn.Module, Tensor, Path], Runner]] = {
    "onnx": write_onnx, "torchscript": write_torchscript, "export": write_export,
}
