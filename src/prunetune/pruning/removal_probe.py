"""The removal probe of :func:`~prunetune.pruning.groups.find_groups`: which groups' physical removal
is not what masking their channels computes.

Every part of the engine relies on one invariant: the physically pruned network computes what the
dense network computes with the removed channels masked (:class:`~.mask_hooks.MaskHooks`), so that
scores, soft schedules and the accuracy measured while masked are the deployed network's. Torch-Pruning
follows convs, norms, additions, concatenations and flattens, but not every reshape, slice,
permutation or reduction across channels a forward may hold. Removal there may crash (a view that no
longer divides) or, worse, run and compute something else: a channel shuffle whose shape still
divides, ``torch.roll`` or an index permutation over channels, ``x[:, :k]``, a sum over channel
halves, ``x.mean(1, keepdim=True)`` broadcast back.

The probe removes channels of every group from one copy at once and compares its output on
``find_groups``' traced input with the masked dense model's, in eval mode (BN on its running
statistics, no dropout): equal within a float tolerance relative to the output's scale. Only where
that fails are the groups bisected, so a model whose groups all pass costs one copy, one trace and
two forward passes. It draws no random numbers.

Which channels: the first and the second to last (the first where a group has two), so that no slice
from either end, reversal or roll by one leaves them where a true equivalence would hide it
(removing only the last channel before ``x[:, :k]`` *is* masking it, for that plan).

Two documented departures from strict masking: layers that normalise across channels
(``nn.LayerNorm``, a GroupNorm of one group) change every kept channel when one is removed, so no mask
equals removal there (README, "Masking ≠ removal"); the probe makes them the identity in both networks
and checks the graph around them. And a group with a mask point whose output does not hold its
channels at dim 1 (a Linear on channels-last features, as in ConvNeXt) cannot be masked at all; such
groups are only checked to run to outputs of the same shapes, as before this probe compared values.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prunetune.pruning import tp_bridge
from prunetune.pruning.mask_hooks import MaskHooks

__all__ = ["BREAKS", "CHANGES", "unfaithful_groups"]

BREAKS = ("removing its channels breaks the forward pass (a reshape, split or chunk the dependency graph "
          "does not follow, e.g. a channel shuffle?)")
CHANGES = ("removing its channels changes the network's function: the pruned copy's output differs from the "
           "dense network's with those channels masked (a reshape, slice, permutation or reduction across "
           "channels the dependency graph does not follow?)")

Check = Callable[[Sequence[Any]], "str | None"]


def unfaithful_groups(model: nn.Module, example: Tensor, groups: Sequence[Any]) -> dict[str, str]:
    """Names of the ``groups`` (:class:`~prunetune.pruning.groups.Group`) whose removal is not
    masking, each with why (:data:`BREAKS` or :data:`CHANGES`). The groups kept were removed
    together from one copy: their joint removal equals masking them jointly."""
    probed = [g for g in groups if g.channels > 1]
    if not probed:
        return {}
    maskable, shapes_only, dense = _split_maskable(model, example, probed)
    bad: dict[str, str] = {}
    for part, check in ((maskable, lambda gs: _check(model, example, gs, dense, masked=True)),
                        (shapes_only, lambda gs: _check(model, example, gs, dense, masked=False))):
        why = check(part) if part else None
        while why is not None:  # bisect, then probe what is left together again
            bad.update(_bisect(part, why, check))
            part = [g for g in part if g.name not in bad]
            why = check(part) if part else None
    return bad


def _bisect(groups: Sequence[Any], why: str, check: Check) -> dict[str, str]:
    """The groups of a failing set that fail in a half of it (recursively); all of them where each
    half passes alone (they fail only together)."""
    if len(groups) == 1:
        return {groups[0].name: why}
    half = len(groups) // 2
    found: dict[str, str] = {}
    for part in (groups[:half], groups[half:]):
        part_why = check(part)
        if part_why is not None:
            found.update(_bisect(part, part_why, check))
    together = f"{why}, found only with {len(groups) - 1} other groups' channels removed too"
    return found or {g.name: together for g in groups}


def probe_channels(channels: int) -> tuple[int, ...]:
    """The channels the probe removes from a group of ``channels`` (> 1)."""
    return (0,) if channels == 2 else (0, channels - 2)


def _check(model: nn.Module, example: Tensor, groups: Sequence[Any], dense: Any, *, masked: bool) -> str | None:
    """Why removing :func:`probe_channels` of every group in ``groups`` from a copy is not masking
    them (``masked=False``: does not run to outputs of the dense shapes), or None."""
    removed = {g.name: probe_channels(g.channels) for g in groups}
    pruned = copy.deepcopy(model)
    try:
        graph, modules = tp_bridge.build_graph(pruned, example), dict(pruned.named_modules())
        for g in groups:  # traced on `example` in eval mode: no random numbers drawn
            tp_bridge.prune_channels(graph, modules[g.out_layers[0]], list(removed[g.name]))
        if any(_out_width(modules[layer]) != g.channels - len(removed[g.name]) for g in groups for layer in g.out_layers):
            return BREAKS  # e.g. the two halves of a gated unit: removal took channels of each
        with torch.no_grad(), _channel_local_norms(pruned):
            got = _eval_forward(pruned, example)
    except Exception:  # noqa: BLE001 - whatever the user's forward raises on the pruned widths
        return BREAKS
    if _shapes(got) != _shapes(dense):
        return BREAKS
    if not masked:
        return None
    with torch.no_grad(), _channel_local_norms(model), MaskHooks(model, {g.name: g for g in groups}, _masks(removed, groups)):
        want = _eval_forward(model, example)
    return CHANGES if _differs(want, got) else None


def _masks(removed: Mapping[str, tuple[int, ...]], groups: Sequence[Any]) -> dict[str, Tensor]:
    masks = {}
    for g in groups:
        mask = torch.ones(g.channels)
        mask[list(removed[g.name])] = 0.0
        masks[g.name] = mask
    return masks


def _split_maskable(model: nn.Module, example: Tensor, groups: Sequence[Any]) -> tuple[list[Any], list[Any], Any]:
    """Groups every mask point of which holds the group's channels at dim 1 (what MaskHooks
    multiplies), the others, and the dense output: one forward pass with shape-recording hooks."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple[bool, tuple[int, ...]]] = {}

    def record(name: str):
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.dim() >= 2:
                seen[name] = (isinstance(module, nn.Linear) and output.dim() != 2, tuple(output.shape))
        return hook

    points = {p for g in groups for p in g.mask_points if p in modules}
    handles = [modules[p].register_forward_hook(record(p)) for p in points]
    try:
        with torch.no_grad():
            dense = _eval_forward(model, example)
    finally:
        for h in handles:
            h.remove()

    def fits(group: Any) -> bool:
        index = dict(group.mask_index)
        for point in group.mask_points:
            if point not in seen or seen[point][0]:
                return False
            width = seen[point][1][1]
            if (max(index[point]) >= width) if point in index else width != group.channels:
                return False
        return True

    maskable = [g for g in groups if fits(g)]
    return maskable, [g for g in groups if not fits(g)], dense


class _channel_local_norms:  # noqa: N801 - used as a context manager
    """Makes nn.LayerNorm and one-group GroupNorm layers the identity while inside (see module doc)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.handles = model, []

    def __enter__(self) -> _channel_local_norms:
        for m in self.model.modules():
            if isinstance(m, nn.LayerNorm) or (isinstance(m, nn.GroupNorm) and m.num_groups == 1):
                self.handles.append(m.register_forward_hook(lambda _m, inputs, _out: inputs[0], prepend=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _out_width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _eval_forward(model: nn.Module, example: Tensor) -> Any:
    was_training = model.training
    try:
        return model.eval()(example)
    finally:
        model.train(was_training)


def _leaves(out: Any) -> list[Any]:
    """The leaves of a (possibly nested) model output, in a fixed order."""
    if isinstance(out, (tuple, list)):
        return [leaf for o in out for leaf in _leaves(o)]
    if isinstance(out, Mapping):
        return [leaf for _, v in sorted(out.items(), key=lambda kv: str(kv[0])) for leaf in _leaves(v)]
    return [out]


def _shapes(out: Any) -> Any:
    """The shapes of a (possibly nested) model output, comparable with ``==``."""
    if isinstance(out, Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(_shapes(o) for o in out)
    if isinstance(out, Mapping):
        return tuple((k, _shapes(v)) for k, v in sorted(out.items(), key=lambda kv: str(kv[0])))
    return type(out).__name__


def tolerance(dtype: torch.dtype) -> float:
    """Largest difference the probe takes for round-off, relative to an output's largest magnitude:
    the square root of the dtype's epsilon (3.5e-4 in float32, 1.5e-8 in float64). Removal reorders
    no sum that masking does not, so real round-off is far below; a changed function is far above."""
    return float(torch.finfo(dtype).eps) ** 0.5


def _differs(want: Any, got: Any) -> bool:
    """Whether two outputs of equal shapes differ beyond round-off (see :func:`tolerance`)."""
    for a, b in zip(_leaves(want), _leaves(got)):
        if not isinstance(a, Tensor):
            if type(a) is not type(b) or (isinstance(a, (int, float, str, bool)) and a != b):
                return True
            continue
        if a.dtype != b.dtype:
            return True
        if not (a.is_floating_point() or a.is_complex()):
            if not torch.equal(a, b):
                return True
            continue
        finite = a[torch.isfinite(a)].abs()
        scale = float(finite.max()) if finite.numel() else 0.0
        if not torch.isclose(b, a, rtol=0.0, atol=tolerance(a.dtype) * scale, equal_nan=True).all():
            return True
    return False
