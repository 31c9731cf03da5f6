"""Prunable groups: sets of channels that must be removed together.

Found once per architecture with Torch-Pruning's dependency graph (see :mod:`.tp_bridge`) and turned
into plain data keyed by module names: :class:`Group` and :class:`ModelGroups`. A group is named
after the first conv or linear layer, in ``named_modules()`` order, whose output channels it holds.
The network's output layers are never pruned.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from prunetune._registry import unknown_name_message
from prunetune.exceptions import ConfigError, UnknownNameError
from prunetune.pruning import tp_bridge

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Group:
    """One prunable group.

    Attributes:
        name: the first conv/linear (``named_modules`` order) whose output channels are in the group.
        channels: dense number of channels.
        out_layers: conv/linear layers whose output channels are the group's channels.
        in_layers: conv/linear layers whose input channels are the group's channels.
        norms: BN layers over the group's channels.
        mask_points: where the group's channels are observed and masked: every BN of the group,
            each out-layer that has no BN of the group right after it (after BN, so BN's bias
            never leaks through a masked channel), and parameter-free layers that write into the
            group's channels (an option-A shortcut feeding a later stage's stream).
        macs_share: fraction of the dense MACs spent in layers that read or write these channels.
    """

    name: str
    channels: int
    out_layers: tuple[str, ...]
    in_layers: tuple[str, ...]
    norms: tuple[str, ...]
    mask_points: tuple[str, ...]
    macs_share: float = 0.0

    @property
    def feature_points(self) -> tuple[str, ...]:
        """Mask points that are the group's own outputs (BN or layer), where statistics are read."""
        own = set(self.norms) | set(self.out_layers)
        return tuple(p for p in self.mask_points if p in own)


@dataclass(frozen=True)
class LayerGeometry:
    """Shape facts of one conv/linear/BN layer, enough to count its MACs and params analytically."""

    name: str
    kind: str  # "conv" | "linear" | "norm"
    out_group: str | None
    in_group: str | None
    out_channels: int
    in_channels: int
    conv_groups: int = 1
    kernel: int = 1  # kernel area (conv), 1 (linear)
    pixels: int = 1  # output pixels per image (conv), 1 (linear)
    bias: bool = False
    depthwise: bool = False


@dataclass(frozen=True)
class ModelGroups:
    """The prunable groups of one architecture at one input size, plus its layer geometry."""

    groups: tuple[Group, ...]
    layers: tuple[LayerGeometry, ...]
    input_shape: tuple[int, ...]
    other_params: int = 0
    _index: dict[str, Group] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({g.name: g for g in self.groups})

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> Group:
        try:
            return self._index[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message("group", name, self._index)) from None

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def dense_keep(self) -> dict[str, int]:
        return {g.name: g.channels for g in self.groups}

    def check_keep(self, keep: Mapping[str, int]) -> None:
        """Raise :class:`ConfigError` if ``keep`` names unknown groups or counts out of range."""
        for name, k in keep.items():
            group = self[name]
            if not 1 <= int(k) <= group.channels:
                raise ConfigError(f"group {name!r} keeps {k} channels; it must keep 1..{group.channels}")


def find_groups(model: nn.Module, input_shape: tuple[int, ...]) -> ModelGroups:
    """Trace ``model`` on one input of ``input_shape`` (C, H, W) and return its prunable groups."""
    example = torch.randn(1, *input_shape)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    try:
        graph = tp_bridge.build_graph(model, example)
    except RuntimeError as exc:  # the forward pass itself failed: a shape the model cannot take
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"the model ({type(model).__name__}) cannot run on an input of shape "
                          f"{tuple(input_shape)} ({reason}); check the input size and in_channels") from None
    raw = tp_bridge.raw_groups(graph, tp_bridge.output_layers(graph))
    groups = [_make_group(members, names, order, graph) for members in raw]
    groups = [g for g in groups if g is not None]
    groups.sort(key=lambda g: order[g.name])
    layers, other = _geometry(model, example, names, groups)
    total = sum(layer_macs(l, l.out_channels, l.in_channels) for l in layers) or 1
    shares = {g.name: 0 for g in groups}
    for layer in layers:
        for gname in {layer.out_group, layer.in_group} - {None}:
            shares[gname] += layer_macs(layer, layer.out_channels, layer.in_channels)
    groups = [_with_share(g, shares[g.name] / total) for g in groups]
    return ModelGroups(tuple(groups), tuple(layers), tuple(input_shape), other)


def _with_share(group: Group, share: float) -> Group:
    return Group(group.name, group.channels, group.out_layers, group.in_layers, group.norms,
                 group.mask_points, share)


def _make_group(members, names, order, graph) -> Group | None:
    outs, ins, norms, sources = [], [], [], []
    for module, role in members:
        name = names.get(module)
        if name is None:
            continue
        if isinstance(module, tp_bridge.PRUNABLE_TYPES):
            (outs if role == "out" else ins).append(name)
        elif isinstance(module, NORM_TYPES):
            norms.append(name)
        elif role == "out" and isinstance(module, tp_bridge.CUSTOM_LAYER_TYPES):
            sources.append(name)  # e.g. an option-A shortcut writing into this stream
    if not outs:
        return None
    outs = sorted(set(outs), key=order.__getitem__)
    module_by_name = {n: m for m, n in names.items()}
    first = module_by_name[outs[0]]
    channels = first.out_channels if isinstance(first, nn.Conv2d) else first.out_features
    norm_set = set(norms)
    points = set(norms) | set(sources)
    for name in outs:
        node = graph.module2node[module_by_name[name]]
        follows = [names.get(o.module) for o in node.outputs]
        if not any(f in norm_set for f in follows):
            points.add(name)
    return Group(
        name=outs[0], channels=channels, out_layers=tuple(outs),
        in_layers=tuple(sorted(set(ins) - set(outs), key=order.__getitem__)),
        norms=tuple(sorted(norm_set, key=order.__getitem__)),
        mask_points=tuple(sorted(points, key=order.__getitem__)),
    )


def _geometry(model, example, names, groups) -> tuple[list[LayerGeometry], int]:
    out_of = {l: g.name for g in groups for l in (*g.out_layers, *g.norms)}
    in_of = {l: g.name for g in groups for l in g.in_layers}
    spatial: dict[str, int] = {}
    hooks = [m.register_forward_hook(_record_spatial(spatial, names[m]))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    layers, counted = [], set()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            in_group = out_of.get(name) if dw else in_of.get(name)
            kk = m.kernel_size[0] * m.kernel_size[1]
            layers.append(LayerGeometry(name, "conv", out_of.get(name), in_group, m.out_channels,
                                        m.in_channels, m.groups, kk, spatial.get(name, 0),
                                        m.bias is not None, dw))
        elif isinstance(m, nn.Linear):
            layers.append(LayerGeometry(name, "linear", out_of.get(name), in_of.get(name),
                                        m.out_features, m.in_features, bias=m.bias is not None))
        elif isinstance(m, NORM_TYPES) and m.affine:
            layers.append(LayerGeometry(name, "norm", out_of.get(name), out_of.get(name),
                                        m.num_features, m.num_features))
        else:
            continue
        counted.update(id(p) for p in m.parameters(recurse=False))
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return layers, other


def layer_macs(layer: LayerGeometry, out_c: int, in_c: int) -> int:
    """MACs of one layer for one input at the given channel counts (0 for norms)."""
    if layer.kind == "norm":
        return 0
    return out_c * _in_per_group(layer, out_c, in_c) * layer.kernel * layer.pixels


def layer_params(layer: LayerGeometry, out_c: int, in_c: int) -> int:
    """Parameters of one layer at the given channel counts (γ and β for norms)."""
    if layer.kind == "norm":
        return 2 * out_c
    return out_c * _in_per_group(layer, out_c, in_c) * layer.kernel + (out_c if layer.bias else 0)


def _in_per_group(layer: LayerGeometry, out_c: int, in_c: int) -> int:
    if layer.depthwise:
        return 1
    return in_c // layer.conv_groups


def _record_spatial(store: dict[str, int], name: str):
    def hook(_module, _inputs, output):
        store[name] = int(output.shape[-1] * output.shape[-2])
    return hook
