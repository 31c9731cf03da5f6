"""The calibration pass: one forward pass over a calibration set feeds every activation criterion.

Forward hooks sit on each group's reading points (``point``, see :mod:`prunetune.pruning.points`:
its BN outputs, or the residual block outputs after the addition). Each hook applies the activation
(ReLU by default) and folds the batch into one streaming accumulator per (criterion, group, point);
nothing of a batch is kept after it. When a criterion needs gradients (``taylor``) the pass also
runs a backward pass per batch; gradient criteria always read the BN points (the gate of
Taylor-FO-BN sits right after BN). Criteria that ask for BN in train mode (``taylor`` by default)
get a second pass with every BN layer in train mode (batch statistics); the BN running statistics
are restored afterwards, so the model is unchanged. Hooks are removed at the end, also on error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunetune._modes import modes_kept
from prunetune._precision import full_float32
from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria import GRADIENT, Accumulator, FeatureBatch, get_criterion
from prunetune.pruning.criteria._scratch import reuse_scratch
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.mask_hooks import channel_dim
from prunetune.pruning.points import check_point, group_points, neighbour_groups, sweep_order
from prunetune.pruning.progress import progress

ACTIVATIONS = {"relu": F.relu, "none": lambda x: x}
BN_TYPES = (nn.modules.batchnorm._BatchNorm,)

Accs = dict[str, dict[str, list[Accumulator]]]


def calibrate(
    model: nn.Module,
    groups: ModelGroups,
    criteria: Mapping[str, Mapping[str, Any]],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    activation: str = "relu",
    point: str = "block_output",
    device: str | torch.device = "cpu",
    show_progress: bool = True,
) -> dict[str, dict[str, tuple[Tensor, dict[str, Tensor]]]]:
    """Run the calibration pass for activation criteria.

    Args:
        model: the dense model (put in eval mode for the pass, restored afterwards).
        groups: its groups.
        criteria: criterion name -> resolved parameters (activation criteria only).
        batches: ``(images, labels)`` batches; their total is the calibration set. Iterated once
            per BN mode the criteria ask for (a one-shot iterator is kept in memory if twice).
        activation: applied to each feature point's output before the statistics (``relu``/``none``).
        point: where statistics are read, ``"block_output"`` (residual streams at each block's
            output, the official CHIP/HRankPlus point) or ``"bn"``
            (:mod:`prunetune.pruning.points`); gradient criteria always read ``"bn"``.

    Returns:
        ``{criterion: {group: (scores Tensor[C], extras)}}``, scores averaged over the group's points.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"calibration activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    check_point(point)
    act = ACTIVATIONS[activation]
    modes = {name: get_criterion(name).bn_mode(params) for name, params in criteria.items()}
    points = {"bn": group_points(model, groups, "bn")}
    if point != "bn" and any(GRADIENT not in get_criterion(c).needs(p) for c, p in criteria.items()):
        points[point] = group_points(model, groups, point)
    reads = {c: points["bn" if GRADIENT in get_criterion(c).needs(p) else point] for c, p in criteria.items()}
    accs: Accs = {
        c: {g.name: [get_criterion(c).accumulator(g.channels, **p) for _ in reads[c][g.name]] for g in groups}
        for c, p in criteria.items()
    }
    _link(groups, criteria, accs)
    passes = sorted(set(modes.values()))
    if len(passes) > 1 and iter(batches) is batches:
        batches = list(batches)
    with full_float32(device):  # no TF32 on CUDA: _precision's docstring
        for mode in passes:
            chosen = {c: p for c, p in criteria.items() if modes[c] == mode}
            by_point: dict[str, list[Accumulator]] = {}
            for c in chosen:
                for g in groups:
                    for p, acc in zip(reads[c][g.name], accs[c][g.name]):
                        by_point.setdefault(p, []).append(acc)
            with reuse_scratch():  # the maps' large per-batch temporaries, reused point to point
                _run_pass(model, by_point, chosen, batches, act, mode=mode, device=device,
                          show_progress=show_progress)
    return {c: _reduce_all(groups, c, criteria[c], per_group) for c, per_group in accs.items()}


def _link(groups: ModelGroups, criteria: Mapping[str, Mapping[str, Any]], accs: Accs) -> None:
    """Hand cross-layer criteria (``cmi`` with ``condition``) their neighbour group's accumulator."""
    for crit, params in criteria.items():
        directions = get_criterion(crit).cross_layer(params, [g.name for g in groups])
        if not directions:
            continue
        neighbours = {d: neighbour_groups(groups, d) for d in set(directions.values())}
        for g in groups:
            d = directions.get(g.name)
            other = neighbours[d][g.name] if d else None
            for acc in accs[crit][g.name]:
                acc.link(accs[crit][other][0] if other else None)


def _run_pass(model, by_point, criteria, batches, act, *, mode, device, show_progress) -> None:
    needs_grad = any(GRADIENT in get_criterion(c).needs(p) for c, p in criteria.items())
    modules = dict(model.named_modules())
    state: dict[str, Any] = {}
    pending: list[tuple[list[Accumulator], Tensor, list[Tensor]]] = []

    def make_hook(point: str):
        def hook(module: nn.Module, _inputs: Any, output: Tensor) -> None:
            # the criteria read channels at dim 1; a Linear's are its last dimension (channels-last
            # maps, as in ConvNeXt's MLP), moved there (its gradient too, in _forward_backward)
            dim = channel_dim(module, output)
            if needs_grad and output.requires_grad:
                grad: list[Tensor] = []
                # NOTE: a tensor hook gets dL/d(this value) even if a later in-place op (a
                # torchvision block's `out += identity`) changes the tensor; clone the value for
                # the same reason
                output.register_hook(lambda g: grad.append(g.movedim(dim, 1)))
                pending.append((by_point[point], output.detach().movedim(dim, 1).clone(), grad))
                return
            pre = output.detach().movedim(dim, 1)
            batch = FeatureBatch(act(pre), pre, state.get("labels"), None)
            for acc in by_point[point]:
                acc.update(batch)
        return hook

    handles = [modules[p].register_forward_hook(make_hook(p)) for p in by_point]
    try:
        with modes_kept(model), _bn_train_mode(model.eval(), mode == "train"):  # eval, then BN to train
            desc = "calibration" if mode == "eval" else "calibration (BN train mode)"
            for x, y in progress(batches, desc=desc, enabled=show_progress):
                if len(x) == 0:  # an empty batch (a sampler's last one) holds no statistics
                    continue
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                state["labels"] = y
                if needs_grad:
                    _forward_backward(model, x, y, pending, act)
                else:
                    with torch.no_grad():
                        model(x)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)


@contextmanager
def _bn_train_mode(model: nn.Module, enabled: bool) -> Iterator[None]:
    """BN layers in train mode (batch statistics), their running statistics restored afterwards."""
    if not enabled:
        yield
        return
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES)]
    saved = [(m, m.training, {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None})
             for m in bns]
    try:
        for m in bns:
            m.train()
        yield
    finally:
        for m, training, buffers in saved:
            m.train(training)
            for k, b in buffers.items():
                getattr(m, k).copy_(b)


def _forward_backward(model, x, y, pending, act) -> None:
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    for entries, pre, grad in pending:
        g = grad[0].detach() if grad else torch.zeros_like(pre)
        batch = FeatureBatch(act(pre), pre, y, g)
        for acc in entries:
            acc.update(batch)
    pending.clear()
    model.zero_grad(set_to_none=True)


def _reduce_all(groups: ModelGroups, crit: str, params: Mapping[str, Any],
                per_group: dict[str, list[Accumulator]]) -> dict[str, tuple[Tensor, dict[str, Tensor]]]:
    """Reduce every group; cross-layer criteria in sweep order, so each neighbour is ready first."""
    directions = get_criterion(crit).cross_layer(params, [g.name for g in groups]) or {}
    order = sweep_order(groups, directions) if directions else [g.name for g in groups]
    first = next((accs[0] for accs in per_group.values() if accs), None)
    settle_all = getattr(type(first), "settle_groups", None)
    if settle_all is not None and not directions:  # no group waits for a neighbour: all at once
        settle_all([per_group[name] for name in order])
    done = {name: _reduce(per_group[name]) for name in order}
    return {g.name: done[g.name] for g in groups}


def _reduce(accs: list[Accumulator]) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean of the member points' scores (Torch-Pruning's group reduction).

    Floating extras (curves) are averaged across points too; integer extras (an order) cannot be
    averaged, so the first point's is kept. An accumulator class with a ``settle_group(accs)``
    static method is first given all of a group's points together (``cmi``: its knee stop must
    settle the knee of the averaged curve); one with ``settle_groups(groups)`` is given every
    group at once by :func:`_reduce_all` when no group is conditioned on a neighbour (``cmi``: the
    layers' greedies run in step, their eigenvalue problems solved in shared batches).
    """
    settle = getattr(type(accs[0]), "settle_group", None) if accs else None
    if settle is not None:
        settle(accs)
    results = [a.result().detach().to("cpu", torch.float64) for a in accs]
    scores = torch.stack(results).mean(0)
    extras: dict[str, Tensor] = {}
    per_point = [a.extras() for a in accs]
    for key in per_point[0] if per_point else {}:
        values = [e[key].detach().cpu() for e in per_point if key in e]
        if len(values) == 1 or not values[0].is_floating_point():
            extras[key] = values[0]
        else:
            extras[key] = torch.stack([v.to(torch.float64) for v in values]).mean(0)
    return scores, extras
