"""Physical channel removal (replaying a :class:`PruningPlan` on a dense model) and soft masks
(:class:`MaskHooks`, re-exported from :mod:`.mask_hooks`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunetune.pruning import tp_bridge
from prunetune.pruning.groups import ModelGroups, find_groups
from prunetune.pruning.mask_hooks import MaskHooks
from prunetune.pruning.plan import PruningPlan

__all__ = ["MaskHooks", "apply_plan", "channel_masks"]


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
