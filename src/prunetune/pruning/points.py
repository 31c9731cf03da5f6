"""Where calibration reads a group's feature maps, and which group comes before or after another.

Two reading points (``calibration.point``):

* ``"bn"``: every feature point of the group (:attr:`Group.feature_points`): its BN outputs, or the
  layer output where there is no BN. In a residual stream that is relu(BN2) of each block, *before*
  the residual addition.
* ``"block_output"``: the official CHIP/HRankPlus point. A BN whose output reaches the output of an
  enclosing module (a residual block) through a residual addition and elementwise activations only
  is read at that module's output, i.e. relu(BN2 + shortcut) of a CIFAR ResNet block (after the
  addition and the ReLU), relu(BN3 + downsample) of a torchvision bottleneck. Other points (block
  internals, stems, plain chains) are read where ``"bn"`` reads them. Several BNs mapped to one block
  (a bottleneck's conv3 BN and its downsample BN) give that block once, so a stream group's score is
  the mean of its blocks' official scores.

The block is found once per model by a probe forward pass: the nearest enclosing module (not the
model itself) whose output is not the BN's own output tensor is taken if the autograd graph leads
from its output back to the BN's output through additions and activations only, with at least one
addition. Residual code written in the model's own ``forward`` (no block module) keeps the BN point.

:func:`neighbour_groups` gives the previous / next group of each group for the cross-layer CMI forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunetune._modes import modes_kept
from prunetune.exceptions import ConfigError
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.mask_hooks import channel_dim

POINTS = ("block_output", "bn")
# autograd nodes a residual block may apply between its last BN and its output
_PASS = ("Add", "Relu", "Threshold", "Hardtanh", "Clamp", "LeakyRelu", "Gelu", "Silu", "Hardswish", "Elu")


def check_point(point: str) -> str:
    if point not in POINTS:
        raise ConfigError(f"calibration.point must be one of {', '.join(POINTS)}, got {point!r}")
    return point


def group_points(model: nn.Module, groups: ModelGroups, point: str) -> dict[str, tuple[str, ...]]:
    """Module names whose outputs calibration reads for each group, under ``point``."""
    check_point(point)
    if point == "bn":
        return {g.name: g.feature_points for g in groups}
    blocks = block_outputs(model, groups)
    out = {}
    for g in groups:
        mapped = [blocks.get(p, p) for p in g.feature_points]
        out[g.name] = tuple(dict.fromkeys(mapped))  # each block once, in order
    return out


def block_outputs(model: nn.Module, groups: ModelGroups) -> dict[str, str]:
    """``{BN point: enclosing block}`` for every feature point that feeds a residual addition."""
    channels = {p: g.channels for g in groups for p in g.feature_points}
    ancestors = {p: _ancestors(p) for p in channels}
    watched = set(channels) | {a for chain in ancestors.values() for a in chain}
    seen = _probe(model, watched, groups.input_shape)
    found = {}
    for p, chain in ancestors.items():
        if p not in seen:
            continue
        for a in chain:
            if a not in seen or seen[a][0] is seen[p][0]:
                continue  # a wrapper that returns the BN output itself: look further out
            if seen[a][1] == channels[p] and _through_addition(seen[a][0], seen[p][0]):
                found[p] = a
            break
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _probe(model: nn.Module, names: set[str], input_shape: tuple[int, ...]) -> dict[str, tuple[Any, int]]:
    """One eval-mode forward with gradients on: ``{name: (output grad_fn, channels)}``."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple[Any, int]] = {}

    def hook(name):
        def fn(m, _i, out):
            if isinstance(out, torch.Tensor) and out.dim() >= 2 and out.grad_fn is not None:
                seen[name] = (out.grad_fn, int(out.shape[channel_dim(m, out)]))
        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names if n in modules]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(2, *input_shape, device=device, requires_grad=True)
    try:
        with modes_kept(model), torch.enable_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _through_addition(start: Any, target: Any) -> bool:
    """Whether ``target`` is reached from ``start`` through :data:`_PASS` nodes and ≥ 1 addition."""
    stack = [(start, False)]
    visited = set()
    while stack:
        node, added = stack.pop()
        if node is None or (id(node), added) in visited:
            continue
        visited.add((id(node), added))
        if node is target:
            if added:
                return True
            continue
        name = node.name()
        if not name.startswith(_PASS):
            continue
        added = added or name.startswith("Add")
        stack.extend((nxt, added) for nxt, _ in node.next_functions)
    return False


def neighbour_groups(groups: ModelGroups, direction: str) -> dict[str, str | None]:
    """The group each group conditions on in the cross-layer CMI forms.

    ``"previous"``: the group whose channels the group's first out-layer reads (the layer before it),
    if it comes earlier in ``named_modules`` order. ``"next"``: the group written by the first layer
    (in module order) that reads the group's channels and writes a later group. Groups are in
    module order, so neither relation has a cycle; a group without one (the stem, the last group, a
    residual block's first conv whose only reader writes into the earlier residual stream) maps to
    ``None``.
    """
    index = {g.name: i for i, g in enumerate(groups)}
    reads = {layer.name: layer.in_group for layer in groups.layers}
    writes = {layer.name: layer.out_group for layer in groups.layers}
    out: dict[str, str | None] = {}
    for g in groups:
        if direction == "previous":
            cand = reads.get(g.out_layers[0])
            ok = cand is not None and index.get(cand, len(index)) < index[g.name]
        else:
            later = [writes[layer] for layer in g.in_layers
                     if index.get(writes.get(layer), -1) > index[g.name]]
            cand, ok = (later[0], True) if later else (None, False)
        out[g.name] = cand if ok else None
    return out


def sweep_order(groups: ModelGroups, directions: Mapping[str, str]) -> list[str]:
    """Groups in an order where each is computed after the group it conditions on."""
    forward = [g.name for g in groups if directions.get(g.name) != "next"]
    backward = [g.name for g in reversed(groups.groups) if directions.get(g.name) == "next"]
    return forward + backward
