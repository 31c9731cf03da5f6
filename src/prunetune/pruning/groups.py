"""Prunable groups: sets of channels that must be removed together.

Found once per architecture with Torch-Pruning's dependency graph (see :mod:`.tp_bridge`) and turned
into plain data keyed by module names: :class:`Group` and :class:`ModelGroups`. A group is named
after the first conv or linear layer, in ``named_modules()`` order, whose output channels it holds.
The network's output layers are never pruned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunetune._checks import input_shape as check_input_shape
from prunetune._checks import unrunnable
from prunetune._machine import check_input_fits
from prunetune._registry import unknown_name_message
from prunetune.exceptions import ConfigError, UnknownNameError
from prunetune.pruning import removal_probe, tp_bridge
from prunetune.pruning.counting import CountedCost
from prunetune.pruning.geometry import (
    NORM_TYPES, Geometry, LayerGeometry, Part, is_depthwise, layer_macs, layer_params, measure_geometry,
)

__all__ = ["NORM_TYPES", "Group", "LayerGeometry", "ModelGroups", "find_groups", "layer_macs", "layer_params"]


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
        mask_index: mask points where the group's channels sit inside a wider tensor (a BN over a
            concatenation), as ``(point, positions)``: channel ``i`` is at ``positions[i]``, or, where
            the tensor is concatenated with itself k times (``cat([a, a])``), at ``positions[k·i : k·(i+1)]``.
        analytic: False where a layer the group touches is not covered by the analytic count
            (see :attr:`ModelGroups.counted`).
    """

    name: str
    channels: int
    out_layers: tuple[str, ...]
    in_layers: tuple[str, ...]
    norms: tuple[str, ...]
    mask_points: tuple[str, ...]
    macs_share: float = 0.0
    mask_index: tuple[tuple[str, tuple[int, ...]], ...] = ()
    analytic: bool = True

    @property
    def feature_points(self) -> tuple[str, ...]:
        """Mask points that are the group's own outputs (BN or layer), where statistics are read."""
        own = set(self.norms) | set(self.out_layers)
        return tuple(p for p in self.mask_points if p in own)


@dataclass(frozen=True)
class ModelGroups:
    """The prunable groups of one architecture at one input size, plus its layer geometry.

    Attributes:
        other_params / other_macs: parameters and MACs no group changes.
        counted: why costs of this model are counted rather than computed (empty: analytic).
        skipped: groups left unpruned, with the reason.
        counter: ``counter(keep) -> Cost`` counting a pruned copy (only where ``counted``).
    """

    groups: tuple[Group, ...]
    layers: tuple[LayerGeometry, ...]
    input_shape: tuple[int, ...]
    other_params: int = 0
    other_macs: int = 0
    counted: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    counter: Any = field(default=None, repr=False, compare=False)
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
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)):  # 3.5 was kept as 3, silently
                raise ConfigError(f"group {name!r} keeps {k!r} channels; a channel count is an integer")
            if not 1 <= int(k) <= group.channels:
                raise ConfigError(f"group {name!r} keeps {k} channels; it must keep 1..{group.channels}")


def find_groups(model: nn.Module, input_shape: tuple[int, ...]) -> ModelGroups:
    """Trace ``model`` on one input of ``input_shape`` (C, H, W) and return its prunable groups.

    Groups that touch a grouped (not depthwise) conv or a GroupNorm of several groups are left out:
    removing single channels would break its group structure; so are groups whose removal, tried on
    a copy, breaks the forward pass or computes something else than masking the same channels (a
    reshape, slice, permutation or reduction across channels the graph does not follow; see
    :mod:`.removal_probe`). Where the analytic count cannot cover a layer, the groups touching it are
    marked ``analytic=False`` and every cost of this model is counted instead.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"find_groups needs a torch.nn.Module, got {type(model).__name__}")
    input_shape = check_input_shape(input_shape)
    check_input_fits(1, input_shape, f"one input of shape {tuple(input_shape)}", "give a smaller input_shape")
    tp_bridge.check_traceable(model)
    with torch.inference_mode(False):  # the trace, and the probe's copies, are normal tensors in any mode
        return _find_groups(model, input_shape)


def _find_groups(model: nn.Module, input_shape: tuple[int, ...]) -> ModelGroups:
    example = tp_bridge.example_for(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    try:
        graph = tp_bridge.build_graph(model, example)
    except ConfigError:  # said already (an output the trace cannot take)
        raise
    except (RuntimeError, ValueError) as exc:  # the forward pass failed: a shape the model cannot take
        # (ValueError: a batch norm given 3-D maps, where a conv took a (C, H) input as unbatched)
        raise unrunnable(model, input_shape, exc) from None
    found, skipped = [], []
    for members in tp_bridge.raw_groups(graph, tp_bridge.output_layers(graph)):
        made = _make_group(members, names, order, graph)
        if isinstance(made, str):
            skipped.append(made)
        elif made is not None:
            found.append(made)
    found.sort(key=lambda m: order[m.group.name])
    unfaithful = removal_probe.unfaithful_groups(model, example, [m.group for m in found])
    skipped += [f"{m.group.name}: {unfaithful[m.group.name]}, left unpruned" for m in found if m.group.name in unfaithful]
    found = [m for m in found if m.group.name not in unfaithful]
    writes, reads = _parts(found)
    geo = measure_geometry(model, example, writes, reads)
    for made in found:
        geo.issues.update({layer: why for layer, why in made.issues.items() if layer not in geo.issues})
    groups = _finish(found, geo)
    return ModelGroups(tuple(groups), tuple(geo.layers), tuple(input_shape), geo.other_params,
                       other_macs=geo.other_macs, counted=_counted_reasons(geo.issues), skipped=tuple(skipped),
                       counter=_counter(model, input_shape, geo.issues))


def _width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _parts(found: list[_Made]) -> tuple[dict[str, list[Part]], dict[str, list[Part]]]:
    writes: dict[str, list[Part]] = {}
    reads: dict[str, list[Part]] = {}
    for made in found:
        g = made.group
        for layer, mult in made.writes.items():
            writes.setdefault(layer, []).append((g.name, g.channels, mult))
        for layer, mult in made.reads.items():
            reads.setdefault(layer, []).append((g.name, g.channels, mult))
    return writes, reads


def _finish(found: list[_Made], geo: Geometry) -> list[Group]:
    """Groups with their MACs shares and whether the analytic count covers every layer they touch."""
    # every dense MAC, functional ops outside the layers too: the total `groups` prints beside the shares
    layers = sum(layer_macs(l, l.out_channels, l.in_channels) for l in geo.layers)
    total = layers + geo.other_macs + geo.outside_macs + sum(geo.unmodelled_macs.values()) or 1
    shares: dict[str, int] = {}
    for layer in geo.layers:
        for gname in {p[0] for p in (*layer.out_parts, *layer.in_parts)}:
            shares[gname] = shares.get(gname, 0) + layer_macs(layer, layer.out_channels, layer.in_channels)
    out = []
    for made in found:
        touched = set(made.writes) | set(made.reads)
        for layer in touched & set(geo.unmodelled_macs):  # a transposed conv's MACs: counted, not modelled
            shares[made.group.name] = shares.get(made.group.name, 0) + geo.unmodelled_macs[layer]
        analytic = "*" not in geo.issues and not touched & set(geo.issues)
        out.append(dataclasses.replace(made.group, macs_share=shares.get(made.group.name, 0) / total,
                                       analytic=analytic))
    return out


def _counted_reasons(issues: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(why if layer == "*" else f"{layer}: {why}" for layer, why in sorted(issues.items()))


def _counter(model: nn.Module, input_shape: tuple[int, ...], issues: Mapping[str, str]):
    if not issues:
        return None
    return CountedCost(model, tuple(input_shape))


@dataclass
class _Made:
    group: Group
    writes: dict[str, int]  # layer -> output channels per group channel
    reads: dict[str, int]  # layer -> input channels (features) per group channel
    issues: dict[str, str]


def _make_group(members, names, order, graph) -> _Made | str | None:
    """One raw Torch-Pruning group → a :class:`Group` (None: nothing prunable; str: why it is skipped)."""
    module_by_name = {n: m for m, n in names.items()}
    outs = sorted({names[m] for m, role, *_ in members if role == "out" and names.get(m) is not None
                   and isinstance(m, tp_bridge.PRUNABLE_TYPES)}, key=order.__getitem__)
    if not outs:
        return None
    first = module_by_name[outs[0]]
    channels = _width(first)
    ins, norms, sources, consumers = [], [], [], []
    made = _Made(None, {}, {}, {})  # type: ignore[arg-type]
    for module, role, idxs, roots in members:
        name = names.get(module)
        if name is None:
            if isinstance(module, nn.Parameter):
                made.issues["*"] = "a parameter outside any layer is pruned with a group"
            continue
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not is_depthwise(module):
            per = (f"{module.in_channels // module.groups} input and {module.out_channels // module.groups} "
                   "output channels each")
            kind = ("a depthwise conv with a channel multiplier: only depthwise convs with as many outputs as "
                    "inputs are pruned through" if module.groups == module.in_channels else
                    "removing single channels would break its groups")
            return f"{outs[0]}: touches grouped conv {name!r} ({module.groups} groups of {per}; {kind}), left unpruned"
        if isinstance(module, nn.GroupNorm) and module.num_groups > 1:
            # a pruned count need not divide into its groups, and removal would regroup the channels
            return f"{outs[0]}: touches GroupNorm {name!r} ({module.num_groups} groups), left unpruned"
        mult = _multiplier(roots, channels)
        if mult is None and role == "out" and isinstance(module, tp_bridge.PRUNABLE_TYPES):
            # e.g. convs concatenated into a depthwise conv: each writes only a slice of the group's
            # channels, which a group named after one out-layer (its channel count) cannot hold
            return (f"{outs[0]}: coupled with {name!r}, which holds other channels than {outs[0]} (e.g. "
                    "a concatenation into a depthwise conv, a split or chunk of the channels, a channel shuffle, "
                    "a reduction across channels, or a feature map flattened with its positions into a "
                    "concatenation, which the dependency graph does not follow), left unpruned")
        if mult is None:
            made.issues[name] = "reads the group's channels unevenly"
            continue
        if isinstance(module, tp_bridge.PRUNABLE_TYPES):
            (made.writes if role == "out" else made.reads)[name] = mult
            if role == "in":
                ins.append(name)
        elif isinstance(module, NORM_TYPES):
            made.writes[name] = mult
            positions = tuple(i for _, i in sorted(zip(roots, idxs)))
            own = module.num_features == channels and positions == tuple(range(channels))
            norms.append(name) if own else consumers.append((name, positions))
        elif role == "out" and isinstance(module, tp_bridge.CUSTOM_LAYER_TYPES):
            sources.append(name)  # e.g. an option-A shortcut writing into this stream
        elif any(True for _ in module.parameters(recurse=False)):
            made.writes[name] = mult  # reported by the geometry as not modelled
    made.group = Group(
        name=outs[0], channels=channels, out_layers=tuple(outs),
        in_layers=tuple(sorted(set(ins) - set(outs), key=order.__getitem__)),
        norms=tuple(sorted(set(norms), key=order.__getitem__)),
        mask_points=_mask_points(outs, norms, sources, consumers, names, module_by_name, graph, order),
        mask_index=tuple(sorted(consumers, key=lambda c: order[c[0]])),
    )
    return made


def _multiplier(roots: list[int], channels: int) -> int | None:
    """How many target indices each group channel maps to, if every channel maps to the same number."""
    if not roots or len(roots) % channels:
        return None
    mult = len(roots) // channels
    counts = [0] * channels
    for r in roots:
        if not 0 <= r < channels:
            return None
        counts[r] += 1
    return mult if all(c == mult for c in counts) else None


def _mask_points(outs, norms, sources, consumers, names, module_by_name, graph, order) -> tuple[str, ...]:
    """BNs of the group, sources, BNs over a concatenation that hold the group, and every out-layer
    whose output is not read by the group's own BNs alone (masked before a concatenation)."""
    norm_set = set(norms)
    points = norm_set | set(sources) | {name for name, _ in consumers}
    for name in outs:
        node = graph.module2node[module_by_name[name]]
        follows = [names.get(o.module) for o in node.outputs]
        if not follows or not all(f in norm_set for f in follows):
            points.add(name)
    return tuple(sorted(points, key=order.__getitem__))
