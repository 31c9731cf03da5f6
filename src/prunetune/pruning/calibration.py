"""The calibration pass: one forward pass over a calibration set feeds every activation criterion.

Forward hooks sit on each group's feature points (its BN outputs, or the layer output where there is
no BN). Each hook applies the activation (ReLU by default) and folds the batch into one streaming
accumulator per (criterion, group, point); nothing of a batch is kept after it. When a criterion
needs gradients (``taylor``) the pass also runs a backward pass per batch. Hooks are removed at the
end, also on error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria import GRADIENT, Accumulator, FeatureBatch, get_criterion
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.progress import progress

ACTIVATIONS = {"relu": F.relu, "none": lambda x: x}


def calibrate(
    model: nn.Module,
    groups: ModelGroups,
    criteria: Mapping[str, Mapping[str, Any]],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    activation: str = "relu",
    device: str | torch.device = "cpu",
    show_progress: bool = True,
) -> dict[str, dict[str, tuple[Tensor, dict[str, Tensor]]]]:
    """Run the calibration pass for activation criteria.

    Args:
        model: the dense model (put in eval mode for the pass, restored afterwards).
        groups: its groups.
        criteria: criterion name -> resolved parameters (activation criteria only).
        batches: ``(images, labels)`` batches; their total is the calibration set.
        activation: applied to each feature point's output before the statistics (``relu``/``none``).

    Returns:
        ``{criterion: {group: (scores Tensor[C], extras)}}``, scores averaged over the group's points.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"calibration activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    act = ACTIVATIONS[activation]
    modules = dict(model.named_modules())
    accs: dict[str, dict[str, list[Accumulator]]] = {c: {} for c in criteria}
    by_point: dict[str, list[tuple[str, Accumulator]]] = {}
    for crit, params in criteria.items():
        criterion = get_criterion(crit)
        for g in groups:
            accs[crit][g.name] = []
            for point in g.feature_points:
                acc = criterion.accumulator(g.channels, **params)
                accs[crit][g.name].append(acc)
                by_point.setdefault(point, []).append((crit, acc))
    needs_grad = any(GRADIENT in get_criterion(c).needs(p) for c, p in criteria.items())
    state: dict[str, Any] = {}
    pending: list[tuple[list[tuple[str, Accumulator]], Tensor]] = []

    def make_hook(point: str):
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            pre = output.detach()
            if needs_grad and output.requires_grad:
                output.retain_grad()
                pending.append((by_point[point], output))
                return
            batch = FeatureBatch(act(pre), pre, state.get("labels"), None)
            for _crit, acc in by_point[point]:
                acc.update(batch)
        return hook

    handles = [modules[p].register_forward_hook(make_hook(p)) for p in by_point]
    was_training = model.training
    model.eval()
    try:
        for x, y in progress(batches, desc="calibration", enabled=show_progress):
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
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return {c: {g: _reduce(a) for g, a in per_group.items()} for c, per_group in accs.items()}


def _forward_backward(model, x, y, pending, act) -> None:
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    for entries, out in pending:
        pre = out.detach()
        batch = FeatureBatch(act(pre), pre, y, out.grad.detach() if out.grad is not None else torch.zeros_like(pre))
        for _crit, acc in entries:
            acc.update(batch)
    pending.clear()
    model.zero_grad(set_to_none=True)


def _reduce(accs: list[Accumulator]) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean of the member points' scores (Torch-Pruning's group reduction).

    Floating extras (curves) are averaged across points too; integer extras (an order) cannot be
    averaged, so the first point's is kept.
    """
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
