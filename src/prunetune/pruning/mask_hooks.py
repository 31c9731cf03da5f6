"""Soft channel masks: a forward hook at each mask point of a group multiplies its output by the
group's 0/1 (or fractional) channel mask, after BN, so BN's bias never leaks through a masked channel.

Kept apart from :mod:`.surgery` (which re-exports it) because it needs no groups module: the removal
probe of :func:`~prunetune.pruning.groups.find_groups` masks with it while the groups are being found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from prunetune.exceptions import InvalidPlanError

__all__ = ["GroupsByName", "MaskHooks", "channel_dim"]


class GroupsByName(Protocol):
    """What :class:`MaskHooks` reads of the groups: a :class:`~prunetune.pruning.groups.ModelGroups`,
    or any mapping of group names to :class:`~prunetune.pruning.groups.Group`."""

    def __getitem__(self, name: str, /) -> Any: ...


def channel_dim(module: nn.Module, output: Tensor) -> int:
    """Where a mask point's output holds its channels: the last dimension for a Linear (its features,
    also on channels-last maps as in ConvNeXt's MLP); dim 1 for convolutions and the channel norms.
    (LayerNorm is never a mask point: it normalises across channels; and torchvision's LayerNorm2d
    is a LayerNorm over the last dimension of NCHW maps, so its type would not tell the layout.)"""
    if isinstance(module, nn.Linear):
        return output.dim() - 1
    return 1


class MaskHooks:
    """Multiplies every mask point's output by its group's channel mask (a soft mask after BN).

    Use as a context manager or call :meth:`remove`. ``masks`` maps group names to ``Tensor[C]``;
    the tensors are read at every forward, so editing them in place changes the mask. At a BN over
    a concatenation the mask covers the group's positions only (``Group.mask_index``; a tensor
    concatenated with itself, ``cat([a, a])``, has each of its channels at several of them). The
    channels are at :func:`channel_dim` of each output.
    """

    def __init__(self, model: nn.Module, groups: GroupsByName, masks: Mapping[str, Tensor]) -> None:
        modules = dict(model.named_modules())
        device = next(model.parameters(), torch.empty(0)).device  # positions there: no copy per forward
        self.masks = dict(masks)
        self._handles = []
        at: dict[str, list[tuple[str, Tensor | None, int]]] = {}
        for name in masks:
            index = dict(groups[name].mask_index)
            for point in groups[name].mask_points:
                if point not in modules:
                    raise InvalidPlanError(f"mask point {point!r} of group {name!r} is not in the model")
                pos = index.get(point)
                # positions sorted by group channel: a channel concatenated k times has k positions in a row
                copies = 1 if pos is None else max(1, len(pos) // groups[name].channels)
                at.setdefault(point, []).append((name, None if pos is None else torch.as_tensor(pos, device=device),
                                                 copies))
        for point, entries in at.items():
            self._handles.append(modules[point].register_forward_hook(self._hook(entries)))

    def _hook(self, entries: list[tuple[str, Tensor | None, int]]):
        def hook(module: nn.Module, _inputs, output: Tensor) -> Tensor:
            dim = channel_dim(module, output)
            mask = torch.ones(output.shape[dim], device=output.device, dtype=output.dtype)
            for name, pos, copies in entries:
                group_mask = self.masks[name].to(device=output.device, dtype=output.dtype)
                if pos is None:
                    mask = mask * group_mask
                else:
                    pos = pos.to(output.device)
                    mask[pos] = mask[pos] * (group_mask if copies == 1 else group_mask.repeat_interleave(copies))
            shape = [1] * output.dim()
            shape[dim] = -1
            return output * mask.view(shape)
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> MaskHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

