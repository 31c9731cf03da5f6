"""Everything prunetune asks of Torch-Pruning: the dependency graph and the option-A pruner.

Kept in one module so the rest of :mod:`prunetune.pruning` speaks in module *names* and channel
indices, never in Torch-Pruning objects.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from prunetune._modes import modes_kept
from prunetune.exceptions import ConfigError
from prunetune.models.cifar_resnet import ChannelPadShortcut
from prunetune.pruning.outputs import output_leaves

log = logging.getLogger("prunetune")
# a trace still running after this many seconds says so once: Torch-Pruning's graph fix can take
# minutes on some heads (flattened maps of several scales concatenated), which looked like a hang
SLOW_TRACE_S = 20.0

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


class ChannelPadShortcutPruner(tp.pruner.function.BasePruningFunc):
    """Prunes the option-A shortcut's inputs and outputs *independently*.

    ``prune_out_channels`` and ``prune_in_channels`` are different functions, which tells
    Torch-Pruning there is no in↔out coupling: the residual streams before and after a stage
    transition become separate groups. A pruned input drops its (src, dst) pair; a pruned output
    drops the pair that lands on it (that input's data is discarded, as the masked network would
    add zeros there).
    """

    TARGET_MODULES = ChannelPadShortcut

    def prune_out_channels(self, layer: ChannelPadShortcut, idxs: Sequence[int]) -> nn.Module:
        keep = _keep_mask(layer.out_channels, idxs, layer.dst.device)
        pairs = keep[layer.dst]
        new_pos = torch.cumsum(keep.long(), 0) - 1
        layer.src, layer.dst = layer.src[pairs], new_pos[layer.dst[pairs]]
        layer.out_channels = int(keep.sum())
        return layer

    def prune_in_channels(self, layer: ChannelPadShortcut, idxs: Sequence[int]) -> nn.Module:
        keep = _keep_mask(layer.in_channels, idxs, layer.src.device)
        pairs = keep[layer.src]
        new_pos = torch.cumsum(keep.long(), 0) - 1
        layer.src, layer.dst = new_pos[layer.src[pairs]], layer.dst[pairs]
        layer.in_channels = int(keep.sum())
        return layer

    def get_out_channels(self, layer: ChannelPadShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelPadShortcut) -> int:
        return layer.in_channels


def _keep_mask(n: int, idxs: Sequence[int], device: torch.device) -> Tensor:
    """Which of ``n`` channels stay, on the device of the index buffers it will index (a CPU mask
    indexed by CUDA buffers raises, which left a GPU model's residual streams unprunable)."""
    keep = torch.ones(n, dtype=torch.bool, device=device)
    keep[list(idxs)] = False
    return keep


CUSTOM_PRUNERS = {ChannelPadShortcut: ChannelPadShortcutPruner()}
CUSTOM_LAYER_TYPES: tuple[type[nn.Module], ...] = tuple(CUSTOM_PRUNERS)


def build_graph(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    """Trace ``model`` once and return Torch-Pruning's dependency graph, with autograd on whatever the
    caller's mode (``no_grad``, ``inference_mode``) and every parameter traced (:func:`_all_traced`)."""
    with torch.inference_mode(False), torch.enable_grad(), _all_traced(model), modes_kept(model), \
            warnings.catch_warnings(), _slow_notice(type(model).__name__):
        # "Unwrapped parameters detected ... will prune the last non-singleton dimension": a parameter
        # outside any layer (a layer scale) is what find_groups reports, and the removal probe checks
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected", category=UserWarning)
        try:
            graph = tp.DependencyGraph().build_dependency(  # (an input made in inference mode is cloned out of it)
                model, example_inputs=example_input.clone(), customized_pruners=CUSTOM_PRUNERS
            )
        except TypeError as exc:  # Torch-Pruning cannot flatten an output holding None or a number: trace its tensors
            try:
                graph = tp.DependencyGraph().build_dependency(
                    _TensorOutputs(model), example_inputs=example_input.clone(), customized_pruners=CUSTOM_PRUNERS
                )
            except TypeError:  # the forward's own TypeError, raised again: the first one, unchained
                raise exc from None
    return graph


@contextlib.contextmanager
def _slow_notice(name: str) -> Iterator[None]:
    """Log once, from a timer thread, if the block is still running after :data:`SLOW_TRACE_S`."""
    timer = threading.Timer(SLOW_TRACE_S, lambda: log.warning(
        "tracing %s's channel dependencies (Torch-Pruning) has taken over %.0f s and is still running; large "
        "graphs, and heads that concatenate flattened maps of several scales, can take minutes here", name,
        SLOW_TRACE_S))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class _TensorOutputs(nn.Module):
    """``model`` with only the tensors of its (nested tuple, list or dict) output returned, as a list;
    an output with no tensor there (an object of the user's own type) is a :class:`ConfigError`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.model(x)
        tensors = [t for t in output_leaves(out) if isinstance(t, Tensor)]
        if not tensors:
            raise ConfigError(f"the model ({type(self.model).__name__}) returns a {type(out).__name__}, which holds no "
                              "tensor in a tuple, list or dict; return the logits (or a tuple or dict of tensors)")
        return tensors


def check_traceable(model: nn.Module) -> None:
    """A :class:`ConfigError` if ``model`` holds tensors made under ``torch.inference_mode()``, which
    autograd (and so the dependency graph) cannot trace."""
    if any(t.is_inference() for t in (*model.parameters(), *model.buffers())):
        raise ConfigError(f"the model ({type(model).__name__}) holds tensors created under "
                          "torch.inference_mode(), which autograd cannot trace; build or load it outside "
                          "inference mode")


@contextlib.contextmanager
def _all_traced(model: nn.Module) -> Iterator[None]:
    """Every parameter requires grad while inside, as it was afterwards. Torch-Pruning follows channels
    through autograd, so a frozen parameter (a frozen stem, a head-only fine-tune) was invisible: its
    layers' groups vanished from ``find_groups`` with no reason given, or a group was blamed on it."""
    check_traceable(model)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def output_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Conv/linear layers whose outputs reach the model output with no other conv/linear between."""
    found = []
    for module, node in graph.module2node.items():
        if isinstance(module, PRUNABLE_TYPES) and not _reaches_prunable(node):
            found.append(module)
    return found


def _reaches_prunable(node: object) -> bool:
    seen, stack = set(), list(node.outputs)
    while stack:
        nxt = stack.pop()
        if id(nxt) in seen:
            continue
        seen.add(id(nxt))
        if isinstance(nxt.module, PRUNABLE_TYPES):
            return True
        stack.extend(nxt.outputs)
    return False


def raw_groups(graph: tp.DependencyGraph, ignored: list[nn.Module]) -> list[list[tuple]]:
    """Each coupled group as a list of ``(module, role, idxs, root_idxs)``, role in {"out", "in"}.

    ``idxs`` are the target's channel (or flattened feature) indices that hold the group's
    channels; ``root_idxs[i]`` is the group channel that ``idxs[i]`` belongs to. A layer that reads
    the group through a concatenation has them at an offset; a Linear that reads it flattened has
    H·W indices per channel.
    """
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE_TYPES)):
        members = []
        for item in group:
            dep = item.dep if hasattr(item, "dep") else item[0]
            idxs = item.idxs if hasattr(item, "idxs") else item[1]
            roots = getattr(item, "root_idxs", None)
            role = "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"
            idxs = [int(i) for i in idxs]
            roots = [int(i) for i in roots] if roots is not None else list(idxs)
            members.append((dep.target.module, role, idxs, roots))
        groups.append(members)
    return groups


def prune_channels(
    graph: tp.DependencyGraph, module: nn.Module, removed: Sequence[int]
) -> None:
    """Physically remove the output channels ``removed`` of ``module`` and everything coupled to them."""
    fn = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
    if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
        fn = tp.prune_depthwise_conv_out_channels
    group = graph.get_pruning_group(module, fn, idxs=list(removed))
    group.prune()


def example_input(input_shape: Sequence[int], device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One input of ``input_shape`` to trace a model on: fixed random values from a generator of its
    own, so tracing neither draws from nor depends on the global random state (a user's seeded
    run goes on with the same random numbers)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, *input_shape, generator=g).to(device=device, dtype=dtype)


def example_for(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """:func:`example_input` on the device and in the floating dtype of ``model``'s parameters (a
    float64 or half-precision model traces on an input of its own dtype)."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return example_input(input_shape)
    return example_input(input_shape, param.device, param.dtype)


def remove_channels(model: nn.Module, removed: Mapping[str, Sequence[int]], input_shape: Sequence[int]) -> nn.Module:
    """Physically remove channels ``removed[layer]`` of each named out-layer (and everything that
    depends on them), in place; the one place that drives Torch-Pruning's removal."""
    graph = build_graph(model, example_for(model, input_shape))
    modules = dict(model.named_modules())
    # Torch-Pruning puts a new, trainable nn.Parameter where it slices one: the frozen ones stay frozen
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    with torch.inference_mode(False):  # slices of normal tensors, trainable later, whatever the caller's mode
        for layer, channels in removed.items():
            if channels:
                prune_channels(graph, modules[layer], sorted(channels))
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return model
