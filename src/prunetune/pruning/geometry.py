"""Layer geometry: the shape facts that make MACs and params a function of the groups' keep counts.

A layer's output (input) channels are its dense count minus, for every group it writes (reads),
``multiplier · (channels − kept)``: the multiplier is 1 for a conv after a conv, after an add or
through a concatenation (at an offset), and H·W for a Linear that reads a flattened C×H×W map. The
multipliers come from Torch-Pruning's index mappings (:mod:`.tp_bridge`), so the count follows
exactly what physical removal does. A layer this model does not cover (a transposed conv, a
parameter the graph prunes directly, uneven index maps, MACs in functional ops) is reported in
:attr:`Geometry.issues`; the groups it touches are then counted, never estimated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunetune._modes import modes_kept

# per-channel norms: masked after them (a masked channel's β must not leak), γ/β counted analytically
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm1d, nn.InstanceNorm2d)

Part = tuple[str, int, int]  # (group, dense channels of the group, layer channels per group channel)


@dataclass(frozen=True)
class LayerGeometry:
    """Shape facts of one conv/linear/BN layer, enough to count its MACs and params analytically.

    Attributes:
        out_group / in_group: the first group the layer writes / reads (None: none).
        out_parts / in_parts: every group written / read, as ``(group, channels, multiplier)``.
        pixels: output positions per image (conv: H·W; linear: tokens, 1 after a flatten).
    """

    name: str
    kind: str  # "conv" | "linear" | "norm"
    out_group: str | None
    in_group: str | None
    out_channels: int
    in_channels: int
    conv_groups: int = 1
    kernel: int = 1  # kernel area (conv), 1 (linear)
    pixels: int = 1
    bias: bool = False
    depthwise: bool = False
    out_parts: tuple[Part, ...] = ()
    in_parts: tuple[Part, ...] = ()

    def channels(self, keep: Mapping[str, int]) -> tuple[int, int]:
        """``(out, in)`` channels of this layer when group ``g`` keeps ``keep[g]`` (absent: dense)."""
        out_c = self.out_channels - _removed(self.out_parts, keep)
        if self.depthwise or self.kind == "norm":
            return out_c, out_c
        return out_c, self.in_channels - _removed(self.in_parts, keep)


def _removed(parts: tuple[Part, ...], keep: Mapping[str, int]) -> int:
    return sum(mult * (n - int(keep.get(g, n))) for g, n, mult in parts)


@dataclass
class Geometry:
    """All layers of one model plus what the analytic count cannot see.

    Attributes:
        layers: conv, linear and affine BN layers in ``named_modules()`` order.
        other_params: parameters outside those layers (constant under pruning).
        other_macs: counted MACs of layers no group touches (constant under pruning).
        issues: ``layer -> reason`` for layers the analytic count does not cover; ``"*"`` = all.
        outside_macs: counted MACs of functional ops outside any layer (``F.conv2d``, ``torch.matmul``).
        unmodelled_macs: ``layer -> counted dense MACs`` of the layers a group touches that the analytic
            count does not model (a transposed conv): in the groups' MACs shares, not in any cost.
    """

    layers: list[LayerGeometry]
    other_params: int
    other_macs: int
    issues: dict[str, str] = field(default_factory=dict)
    outside_macs: int = 0
    unmodelled_macs: dict[str, int] = field(default_factory=dict)


def layer_macs(layer: LayerGeometry, out_c: int, in_c: int) -> int:
    """MACs of one layer for one input at the given channel counts (0 for norms)."""
    if layer.kind == "norm":
        return 0
    return out_c * _in_per_group(layer, in_c) * layer.kernel * layer.pixels


def layer_params(layer: LayerGeometry, out_c: int, in_c: int) -> int:
    """Parameters of one layer at the given channel counts (γ and β for norms)."""
    if layer.kind == "norm":
        return 2 * out_c
    return out_c * _in_per_group(layer, in_c) * layer.kernel + (out_c if layer.bias else 0)


def _in_per_group(layer: LayerGeometry, in_c: int) -> int:
    return 1 if layer.depthwise else in_c // layer.conv_groups


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and 1 < module.groups == module.in_channels == module.out_channels


def measure_geometry(model: nn.Module, example: torch.Tensor, writes: Mapping[str, list[Part]],
                     reads: Mapping[str, list[Part]]) -> Geometry:
    """One counted forward pass of ``model`` on ``example`` → the layer geometry and its gaps.

    ``writes``/``reads`` map layer names to the groups whose channels they produce/consume.
    """
    shapes, macs, outside = _counted_pass(model, example)
    members = set(writes) | set(reads)
    layers, issues, counted, unmodelled = [], {}, set(), {}
    other_macs = 0
    for name, m in model.named_modules():
        geo = _layer(name, m, shapes.get(name), writes, reads)
        if geo is not None:
            layers.append(geo)
            counted.update(id(p) for p in m.parameters(recurse=False))
            if geo.kind != "norm" and name in macs and layer_macs(geo, geo.out_channels, geo.in_channels) != macs[name]:
                issues[name] = f"{type(m).__name__} does {macs[name]} MACs, its shape says otherwise"
        elif name in members and any(True for _ in m.parameters(recurse=False)):
            issues[name] = f"{type(m).__name__} is pruned with the group but not modelled"
            unmodelled[name] = macs.get(name, 0)
        elif name in macs:
            other_macs += macs[name]
    if outside:
        issues["*"] = f"{outside} MACs in functional ops outside layers"
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return Geometry(layers, other, other_macs, issues, outside, unmodelled)


def _layer(name: str, m: nn.Module, shape, writes, reads) -> LayerGeometry | None:
    outs, ins = tuple(writes.get(name, ())), tuple(reads.get(name, ()))
    first = lambda parts: parts[0][0] if parts else None  # noqa: E731
    if isinstance(m, nn.Conv2d):
        kk = m.kernel_size[0] * m.kernel_size[1]
        pixels = int(shape[-1] * shape[-2]) if shape else 0
        dw = is_depthwise(m)
        return LayerGeometry(name, "conv", first(outs), first(outs) if dw else first(ins), m.out_channels,
                             m.in_channels, m.groups, kk, pixels, m.bias is not None, dw, outs, () if dw else ins)
    if isinstance(m, nn.Linear):
        tokens = int(shape.numel() // shape[-1]) if shape else 0  # never ran: no MACs (an eval-skipped aux head)
        return LayerGeometry(name, "linear", first(outs), first(ins), m.out_features, m.in_features,
                             pixels=tokens, bias=m.bias is not None, out_parts=outs, in_parts=ins)
    if isinstance(m, NORM_TYPES) and m.affine:
        return LayerGeometry(name, "norm", first(outs), first(outs), m.num_features, m.num_features,
                             out_parts=outs)
    return None


def _counted_pass(model: nn.Module, example: torch.Tensor) -> tuple[dict, dict[str, int], int]:
    """Output shape (batch 1) and counted MACs of every module, and MACs outside leaf modules."""
    counter = FlopCounterMode(display=False)
    shapes: dict[str, torch.Size] = {}
    macs: dict[str, int] = {}
    start: dict[str, int] = {}
    leaves = {n: m for n, m in model.named_modules() if next(m.children(), None) is None}

    def pre(name):
        def hook(_m, _inputs):
            start[name] = counter.get_total_flops()
        return hook

    def post(name):
        def hook(_m, _inputs, output):
            if isinstance(output, torch.Tensor):
                shapes[name] = output.shape[1:]
            flops = counter.get_total_flops() - start[name]
            if flops:
                macs[name] = macs.get(name, 0) + flops // 2
        return hook

    handles = [m.register_forward_pre_hook(pre(n)) for n, m in leaves.items()]
    handles += [m.register_forward_hook(post(n)) for n, m in leaves.items()]
    try:
        with modes_kept(model), torch.no_grad(), counter:
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return shapes, macs, counter.get_total_flops() // 2 - sum(macs.values())
