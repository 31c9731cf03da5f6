"""Batch-norm folding: a conv (or linear) whose only consumer is an eval-mode BN absorbs it.

``y = γ·(W·x + b − μ)/σ + β`` is the conv with ``W' = W·γ/σ`` and ``b' = β + (b − μ)·γ/σ``, so the BN
becomes an identity and inference skips one memory pass per layer. A producer whose output also
goes elsewhere (a DenseNet conv read by a concatenation) keeps its BN.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunetune.pruning import tp_bridge

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_batchnorm(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every foldable BN folded; returns it and the count folded."""
    model = copy.deepcopy(model).eval()
    graph = tp_bridge.build_graph(model, tp_bridge.example_for(model, input_shape))  # (its own generator)
    names = {m: n for n, m in model.named_modules()}
    pairs = []
    for module, node in graph.module2node.items():
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or len(node.outputs) != 1:
            continue
        nxt = node.outputs[0].module
        if isinstance(nxt, NORMS) and nxt.track_running_stats and len(node.outputs[0].inputs) == 1:
            pairs.append((module, nxt))
    with torch.no_grad():
        for layer, norm in pairs:
            _fold(layer, norm)
            _replace(model, names[norm], nn.Identity())
    return model.eval(), len(pairs)


def _fold(layer: nn.Module, norm: nn.Module) -> None:
    scale = (norm.weight if norm.affine else torch.ones_like(norm.running_var)) / torch.sqrt(
        norm.running_var + norm.eps)
    shift = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(norm.running_mean)
    layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
    new_bias = shift + (bias - norm.running_mean) * scale
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
