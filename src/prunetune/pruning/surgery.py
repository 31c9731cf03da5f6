"""Physical channel removal (replaying a :class:`PruningPlan` on a dense model) and soft masks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prunetune.exceptions import InvalidPlanError
from prunetune.pruning import tp_bridge
from prunetune.pruning.groups import ModelGroups, find_groups
from prunetune.pruning.plan import PruningPlan


def apply_plan(model: nn.Module, plan: PruningPlan, groups: ModelGroups | None = None) -> nn.Module:
    """Remove every channel the plan does not keep, in place, and return ``model``.

    ``model`` must be the dense architecture the plan was made for; the result is physically smaller
    (weights, BN statistics and option-A shortcut maps sliced), and computes what the dense model
    masked at the plan's pruned channels computes.
    """
    groups = groups or find_groups(model, plan.input_shape)
    plan.validate(groups)
    removed = {groups[name].out_layers[0]: sorted(set(range(groups[name].channels)) - set(kept))
               for name, kept in plan.kept.items()}
    return tp_bridge.remove_channels(model, removed, plan.input_shape)


def channel_masks(plan: PruningPlan) -> dict[str, Tensor]:
    """0/1 masks per group: 1 where the plan keeps a channel."""
    masks = {}
    for name, kept in plan.kept.items():
        mask = torch.zeros(plan.channels[name])
        mask[list(kept)] = 1.0
        masks[name] = mask
    return masks


class MaskHooks:
    """Multiplies every mask point's output by its group's channel mask (a soft mask after BN).

    Use as a context manager or call :meth:`remove`. ``masks`` maps group names to ``Tensor[C]``;
    the tensors are read at every forward, so editing them in place changes the mask. At a BN over
    a concatenation the mask covers the group's positions only (``Group.mask_index``).
    """

    def __init__(self, model: nn.Module, groups: ModelGroups, masks: Mapping[str, Tensor]) -> None:
        modules = dict(model.named_modules())
        self.masks = dict(masks)
        self._handles = []
        at: dict[str, list[tuple[str, Tensor | None]]] = {}
        for name in masks:
            index = dict(groups[name].mask_index)
            for point in groups[name].mask_points:
                if point not in modules:
                    raise InvalidPlanError(f"mask point {point!r} of group {name!r} is not in the model")
                pos = index.get(point)
                at.setdefault(point, []).append((name, None if pos is None else torch.as_tensor(pos)))
        for point, entries in at.items():
            self._handles.append(modules[point].register_forward_hook(self._hook(entries)))

    def _hook(self, entries: list[tuple[str, Tensor | None]]):
        def hook(_module, _inputs, output: Tensor) -> Tensor:
            mask = torch.ones(output.shape[1], device=output.device, dtype=output.dtype)
            for name, pos in entries:
                group_mask = self.masks[name].to(device=output.device, dtype=output.dtype)
                if pos is None:
                    mask = mask * group_mask
                else:
                    pos = pos.to(output.device)
                    mask[pos] = mask[pos] * group_mask
            return output * mask.view(1, -1, *([1] * (output.dim() - 2)))
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> MaskHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

