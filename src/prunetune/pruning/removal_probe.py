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
``find_groups``' traced input with the dense model's with the same channels masked, both in eval
mode (BN on its running statistics, no dropout) and in float64 where the model runs in float64 (the
dense model through ``torch.func.functional_call`` with float64 parameters: no second copy), so that
round-off (1e-16 of the output's scale there, 1e-7 in float32) neither hides a small difference nor
fakes one: a deep network's signal may be a small part of its logits. Outputs may be nested
tuples, lists and dicts; each tensor is compared at its own scale (:func:`tolerance`). Only where
that fails are the groups bisected, and what is left probed together again, so a model whose groups
all pass costs one copy, its trace and two more forward passes (the pruned copy's, the masked
model's), as the shape-only probe before it did. It draws no random numbers.

Which channels: the first and the second to last (the first where a group has two), so that no slice
from either end, reversal or roll by one leaves them where a true equivalence would hide it
(removing only the last channel before ``x[:, :k]`` *is* masking it, for that plan). Groups of one
width get different sets (:func:`probe_sets`: the same two, then more channels from between them, one
set per group): two groups whose channels a path the dependency graph does not see pairs index by
index (a residual added through ``detach()``, SegNet's ``max_unpool2d`` indices of another layer) look
like one group when the same channels leave both, and then a plan keeping different channels of each
runs and computes something else, or crashes on unequal counts. With different counts the pruned copy
breaks, or computes something else, and both groups are refused.

Layers the model runs only in train mode (an auxiliary head, deep supervision) are outside the
eval-mode trace, so removal leaves them at the dense width: where the model has such layers
(:func:`train_only_layers`, one forward pass in each mode), the pruned copy must also run in train
mode, and a group whose removal breaks that is not pruned.

Two documented departures from strict masking: layers that normalise across channels
(``nn.LayerNorm``, a GroupNorm of one group) change every kept channel when one is removed, so no mask
equals removal there (README, "Masking ≠ removal"); the probe makes them the identity in both networks
and checks the graph around them. And a group with a mask point whose output does not hold its
channels where :class:`~.mask_hooks.MaskHooks` masks them (:func:`~.mask_hooks.channel_dim`: a
Linear's features are its last dimension, also on channels-last maps as in ConvNeXt) cannot be
masked; such groups are only checked to run to outputs of the same shapes.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunetune._modes import modes_kept
from prunetune._precision import full_float32
from prunetune._text import exception_line
from prunetune.models.registry import train_forward
from prunetune.pruning import tp_bridge
from prunetune.pruning.mask_hooks import MaskHooks, channel_dim
from prunetune.pruning.outputs import output_leaves
from prunetune.pruning.removal_hints import likely_cause

__all__ = ["BREAKS", "CHANGES", "channel_local_norms", "unfaithful_groups"]

BREAKS = ("removing its channels breaks the forward pass (a reshape, split or chunk the dependency graph "
          "does not follow, e.g. a channel shuffle, or channels paired through detach() or pooling indices?)")
CHANGES = ("removing its channels changes the network's function: the pruned copy's output differs from the "
           "dense network's with those channels masked (a reshape, slice, permutation or reduction across "
           "channels the dependency graph does not follow?)")


def broke(exc: BaseException) -> str:
    """:data:`BREAKS` with what the pruned copy raised."""
    return (f"removing its channels breaks the forward pass ({type(exc).__name__}: {exception_line(exc, 300)}; "
            "a reshape, split or chunk the dependency graph does not follow, or channels paired through detach() "
            "or pooling indices?)")


Check = Callable[[Sequence[Any]], "str | None"]


def unfaithful_groups(model: nn.Module, example: Tensor, groups: Sequence[Any]) -> dict[str, str]:
    """Names of the ``groups`` (:class:`~prunetune.pruning.groups.Group`) whose removal is not
    masking, each with why (:data:`BREAKS`, what the pruned copy raised (:func:`broke`), or
    :data:`CHANGES`, and a likely cause where the model holds a tensor of the group's width the
    dependency graph cannot follow). The groups kept were removed together from one copy: their
    joint removal equals masking them jointly."""
    probed = [g for g in groups if g.channels > 1]
    if not probed:
        return {}
    # where float64 fails and float32 is compared, TF32's rounding on CUDA would exceed its tolerance
    with full_float32(example.device):
        removed = probe_sets(probed)
        ref = _Reference.of(model, example, probed, removed)
        widths = {g.name: g.channels for g in probed}
        bad: dict[str, str] = {}
        for part, masked in ((ref.maskable, True), (ref.shapes_only, False)):
            check = functools.partial(_check, model, example, ref, removed, masked=masked)
            why = check(part) if part else None
            while why is not None:  # bisect, then probe what is left together again
                bad.update(_bisect(part, why, check))
                part = [g for g in part if g.name not in bad]
                why = check(part) if part else None
    return {name: why + likely_cause(model, widths[name], why) for name, why in bad.items()}


def _bisect(groups: Sequence[Any], why: str, check: Check) -> dict[str, str]:
    """The groups of a failing set that fail in a half of it (recursively); where each half passes
    alone (they fail only together), a smallest set of them that fails together (:func:`_needed`):
    a group that merely shares a half with them stays prunable."""
    if len(groups) == 1:
        return {groups[0].name: why}
    half = len(groups) // 2
    first, second = list(groups[:half]), list(groups[half:])
    found: dict[str, str] = {}
    for part in (first, second):
        part_why = check(part)
        if part_why is not None:
            found.update(_bisect(part, part_why, check))
    if found:
        return found
    from_second = _needed(first, second, check)
    culprits = _needed(from_second, first, check) + from_second
    others = len(culprits) - 1
    owner = "group's" if others == 1 else "groups'"
    together = f"{why}, found only with {others} other {owner} channels removed too"
    return {g.name: together for g in culprits}


def _needed(fixed: list[Any], candidates: list[Any], check: Check) -> list[Any]:
    """A smallest-by-halving part of ``candidates`` that fails together with ``fixed`` (which passes
    alone, while ``fixed`` + ``candidates`` fails)."""
    if len(candidates) == 1:
        return candidates
    half = len(candidates) // 2
    first, second = candidates[:half], candidates[half:]
    if check(fixed + first) is not None:
        return _needed(fixed, first, check)
    if check(fixed + second) is not None:
        return _needed(fixed, second, check)
    from_second = _needed(fixed + first, second, check)
    return _needed(fixed + from_second, first, check) + from_second


def probe_channels(channels: int) -> tuple[int, ...]:
    """The channels the probe removes from the first group of ``channels`` (> 1)."""
    return (0,) if channels == 2 else (0, channels - 2)


def probe_sets(groups: Sequence[Any]) -> dict[str, tuple[int, ...]]:
    """The channels the probe removes from each group (``channels`` > 1): :func:`probe_channels`, and
    for each further group of the same width, in order, the next set of the channels strictly between
    those two added to them (one more channel, then two, ...), so that no two groups of one width lose
    the same channels. Every set holds the first channel and never the last, so no slice from either
    end, reversal or roll by one maps it onto itself. A width of c has max(1, 2^(c−3)) such sets (one for
    c of 2 or 3, two for 4, four for 5): further groups of that width take the first set again, so a
    pairing among those is not seen (none of the registered or zoo models has such narrow groups)."""
    by_width: dict[int, Any] = {}
    out: dict[str, tuple[int, ...]] = {}
    for g in groups:
        c = g.channels
        if c not in by_width:
            by_width[c] = _sets_of(c)
        out[g.name] = next(by_width[c], probe_channels(c))
    return out


def _sets_of(channels: int):
    base = probe_channels(channels)
    middle = range(1, channels - 2)
    for r in range(len(middle) + 1):
        for extra in itertools.combinations(middle, r):
            yield tuple(sorted((*base, *extra)))


def _check(model: nn.Module, example: Tensor, ref: _Reference, probe: Mapping[str, tuple[int, ...]],
           groups: Sequence[Any], *, masked: bool) -> str | None:
    """Why removing its :func:`probe_sets` channels (``probe``) of every group in ``groups`` from a copy
    of ``model`` is not masking them in ``ref`` (``masked=False``: does not run to outputs of the dense
    shapes), or None."""
    removed = {g.name: probe[g.name] for g in groups}
    pruned = copy.deepcopy(model)
    try:
        graph, modules = tp_bridge.build_graph(pruned, example), dict(pruned.named_modules())
        for g in groups:  # traced on `example` in eval mode: no random numbers drawn
            tp_bridge.prune_channels(graph, modules[g.out_layers[0]], list(removed[g.name]))
        if any(_out_width(modules[layer]) != g.channels - len(removed[g.name]) for g in groups for layer in g.out_layers):
            return BREAKS  # e.g. the two halves of a gated unit: removal took channels of each
        with torch.no_grad(), channel_local_norms(pruned):
            got = _eval_forward(pruned.to(ref.input.dtype) if ref.input.dtype != example.dtype else pruned, ref.input)
    except Exception as exc:  # noqa: BLE001 - whatever the user's forward raises on the pruned widths
        return broke(exc)
    if ref.train_only:  # layers the eval-mode trace never saw (an auxiliary head): the pruned copy must train
        try:
            train_forward(pruned, torch.cat([ref.input, ref.input]))
        except Exception as exc:  # noqa: BLE001
            return (f"removing its channels breaks the forward pass in train mode ({type(exc).__name__}: "
                    f"{exception_line(exc, 300)}); {_listed(ref.train_only)} "
                    f"{'runs' if len(ref.train_only) == 1 else 'run'} only in train mode, which the dependency graph "
                    "does not trace (an auxiliary head? turn it off to prune these channels)")
    if _shapes(got) != ref.dense_shapes:
        return BREAKS
    if not masked:
        return None
    try:
        want = ref.masked(groups)
    except Exception as exc:  # noqa: BLE001 - a mask the hooks cannot apply: the group cannot be scored or soft-pruned
        return (f"masking its channels fails ({type(exc).__name__}: {exception_line(exc, 300)}), so it can be "
                "neither scored nor soft-pruned")
    return CHANGES if _differs(want, got) else None


class _Unmaskable(Exception):
    """A mask point's output does not hold its groups' channels at its channel_dim."""


@dataclass
class _Reference:
    """The network masking is measured on: the model itself, run in float64 where it runs in float64
    (its parameters and buffers swapped for float64 copies, no copy of the model), so that round-off
    neither hides a small difference nor fakes one (a deep network's signal may be a small part of
    its logits); its input, the shapes of its output, and which groups it can mask."""

    model: nn.Module
    tensors: dict[str, Tensor] | None  # float64 parameters and buffers; None: the model's own
    input: Tensor
    removed: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # each group's probe_sets channels
    dense_shapes: Any = None
    maskable: list[Any] = field(default_factory=list)
    shapes_only: list[Any] = field(default_factory=list)
    first: tuple[tuple[str, ...], Any] | None = None  # the masked output of the first check
    train_only: tuple[str, ...] = ()  # layers run in train mode only (:func:`train_only_layers`)

    @classmethod
    def of(cls, model: nn.Module, example: Tensor, groups: Sequence[Any],
           removed: Mapping[str, tuple[int, ...]]) -> _Reference:
        """Masks every group at once, which is the first check's reference; only where a mask point
        does not hold its channels at its channel_dim is one more forward pass run,
        unmasked, to sort the groups."""
        try:
            with torch.no_grad():
                tensors = {n: t.to(torch.float64) if t.is_floating_point() else t
                           for n, t in (*model.named_parameters(), *model.named_buffers())}
            ref = cls(model, tensors, example.to(torch.float64), removed).start(groups)
        except Exception:  # noqa: BLE001 - a forward tied to its dtype, or a device without float64
            ref = cls(model, None, example, removed).start(groups)
        ref.train_only = train_only_layers(model, example)
        return ref

    def start(self, groups: Sequence[Any]) -> _Reference:
        try:
            out = self.masked(groups)
        except Exception:  # noqa: BLE001 - _Unmaskable, or a mask that fails: each group is then checked on its own
            return self.sort(groups)
        self.maskable, self.dense_shapes, self.first = list(groups), _shapes(out), (_names(groups), out)
        return self

    def forward(self) -> Any:
        """The model's output on the probe input, in eval mode (hooks on the model apply)."""
        with modes_kept(self.model), torch.no_grad():
            self.model.eval()
            if self.tensors is None:
                return self.model(self.input)
            return torch.func.functional_call(self.model, self.tensors, (self.input,))

    def masked(self, groups: Sequence[Any]) -> Any:
        """The output with the :func:`probe_sets` channels of each group masked by MaskHooks; raises
        :class:`_Unmaskable` before masking a point whose output does not hold the channels."""
        if self.first is not None and self.first[0] == _names(groups):
            return self.first[1]
        masks = {}
        for g in groups:
            masks[g.name] = torch.ones(g.channels)
            masks[g.name][list(self.removed[g.name])] = 0.0
        modules = dict(self.model.named_modules())

        def guard(name: str, entries: list[tuple[int, tuple[int, ...] | None]]):
            def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
                if not all(_holds(module, output, channels, at) for channels, at in entries):
                    raise _Unmaskable(name)
            return hook

        with channel_local_norms(self.model), MaskHooks(self.model, {g.name: g for g in groups}, masks):
            handles = [modules[p].register_forward_hook(guard(p, entries), prepend=True)
                       for p, entries in _points(groups).items()]
            try:
                return self.forward()
            finally:
                for h in handles:
                    h.remove()

    def sort(self, groups: Sequence[Any]) -> _Reference:
        """One unmasked forward pass: the output shapes, and the groups every mask point of which
        holds the group's channels at its channel_dim (maskable) apart from the others."""
        modules = dict(self.model.named_modules())
        fits: dict[str, set[tuple[int, tuple[int, ...] | None]]] = {}

        def record(name: str, entries: list[tuple[int, tuple[int, ...] | None]]):
            def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
                held = {e for e in entries if _holds(module, output, *e)}
                fits[name] = fits[name] & held if name in fits else held  # every call of a shared module
            return hook

        handles = [modules[p].register_forward_hook(record(p, entries)) for p, entries in _points(groups).items()]
        try:
            self.dense_shapes = _shapes(self.forward())
        finally:
            for h in handles:
                h.remove()
        for g in groups:
            at = dict(g.mask_index)
            ok = all((g.channels, at.get(p)) in fits.get(p, ()) for p in g.mask_points)
            (self.maskable if ok else self.shapes_only).append(g)
        return self


def _names(groups: Sequence[Any]) -> tuple[str, ...]:
    return tuple(g.name for g in groups)


def _points(groups: Sequence[Any]) -> dict[str, list[tuple[int, tuple[int, ...] | None]]]:
    """Each mask point of ``groups``: (channels, positions in a wider tensor or None) per group."""
    points: dict[str, list[tuple[int, tuple[int, ...] | None]]] = {}
    for g in groups:
        at = dict(g.mask_index)
        for p in g.mask_points:
            points.setdefault(p, []).append((g.channels, at.get(p)))
    return points


def _holds(module: nn.Module, output: Any, channels: int, at: tuple[int, ...] | None) -> bool:
    """Whether MaskHooks can mask ``channels`` (at positions ``at``) in a mask point's output: a
    tensor with that many channels at its :func:`~.mask_hooks.channel_dim`."""
    if not isinstance(output, Tensor) or output.dim() < 2:
        return False
    width = output.shape[channel_dim(module, output)]
    return max(at) < width if at else width == channels


class channel_local_norms:  # noqa: N801 - used as a context manager
    """Makes nn.LayerNorm and one-group GroupNorm layers the identity while inside (see module doc)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.handles = model, []

    def __enter__(self) -> channel_local_norms:
        for m in self.model.modules():
            if isinstance(m, nn.LayerNorm) or (isinstance(m, nn.GroupNorm) and m.num_groups == 1):
                self.handles.append(m.register_forward_hook(lambda _m, inputs, _out: inputs[0], prepend=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def train_only_layers(model: nn.Module, example: Tensor) -> tuple[str, ...]:
    """The layers with parameters of their own that ``model`` runs in train mode but not in eval mode
    (an Inception or deep-supervision auxiliary head), on two copies of ``example``: the dependency
    graph, traced in eval mode, never sees them. Empty where the model fails in train mode (refused
    elsewhere, where it matters)."""
    called: dict[bool, set[str]] = {False: set(), True: set()}
    state = {"train": False}
    owners = [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=name: called[state["train"]].add(n)) for name, m in owners]
    batch = torch.cat([example, example])
    try:
        with torch.no_grad():
            _eval_forward(model, batch)
        state["train"] = True
        train_forward(model, batch)
    except Exception:  # noqa: BLE001 - whatever the user's forward raises
        return ()
    finally:
        for h in handles:
            h.remove()
    return tuple(name for name, _m in owners if name in called[True] - called[False])


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _out_width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _eval_forward(model: nn.Module, example: Tensor) -> Any:
    with modes_kept(model):
        return model.eval()(example)


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
    """Largest difference the probe takes for round-off, relative to an output tensor's largest
    magnitude: the square root of the dtype's epsilon (1.5e-8 in float64, 3.5e-4 in float32).
    Masking and removal differ by round-off far below that (1e-16 and 1e-7 of the output's scale on
    the registered models); a changed function differs by percents."""
    return float(torch.finfo(dtype).eps) ** 0.5


def _differs(want: Any, got: Any) -> bool:
    """Whether two outputs of equal shapes differ beyond round-off (see :func:`tolerance`)."""
    for a, b in zip(output_leaves(want), output_leaves(got)):
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
