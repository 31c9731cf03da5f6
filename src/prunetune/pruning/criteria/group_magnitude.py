"""``group_l2``: the magnitude of everything a channel owns across its coupled layers.

Torch-Pruning's default importance (``GroupMagnitudeImportance``, Fang et al., "DepGraph", CVPR 2023):
a channel of a group is scored by the squared L2 norm of every weight slice removed with it, the
filters of the producing convs, the BN scales γ, and the input columns of the consuming convs and
linears (at their offset in a concatenation; a flattened Linear contributes its H·W columns of the
channel), averaged over those layers (its ``group_reduction="mean"``, ``p=2``, biases left out;
depthwise convs are left out, as Torch-Pruning leaves them out; transposed convs count with their
weight's in/out axes swapped, as there).
Where the group normaliser of a blend or of the ``global`` allocation divides by the group's mean,
this reproduces Torch-Pruning's global magnitude pruning.

Scored on a single weight tensor (``score("group_l2", weight=w)``) it is the squared L2 norm of each
filter: a group of one layer with nothing else coupled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunetune.pruning.criteria.base import WEIGHT, Criterion, check_weight, register


@dataclass(frozen=True)
class GroupMagnitude(Criterion):
    """Σ‖slice‖₂² of a channel over its group's layers (producers, BN γ, consumers), layer mean."""

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({WEIGHT})

    def weight_source(self, params: Mapping[str, Any]) -> str:
        return "group"

    def from_weight(self, weight: Tensor, **params: Any) -> Tensor:
        return check_weight(weight, self.name).pow(2).sum(dim=1)


def slice_energy(module: nn.Module, role: str, idxs: list[int]) -> Tensor | None:
    """Σ w² of each of ``idxs`` (output rows for ``role == "out"``, input columns for ``"in"``) of
    ``module``'s weight, or None for a layer whose layout this criterion does not read."""
    w = getattr(module, "weight", None)
    if not isinstance(w, Tensor):
        return None
    w = w.detach().to("cpu", torch.float64)
    index = torch.tensor(idxs, dtype=torch.long)
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return w[index].pow(2) if role == "out" else None
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        if isinstance(module, nn.modules.conv._ConvNd):
            if module.groups > 1:  # depthwise: left out, as Torch-Pruning leaves it out (groups with a
                return None        # grouped conv are never prunable groups: find_groups skips them)
            if module.transposed:  # weight (in, out, kH, kW): rows are input channels
                w = w.transpose(0, 1)
        if role == "out":
            return w[index].flatten(1).pow(2).sum(1)
        return w[:, index].transpose(0, 1).flatten(1).pow(2).sum(1)
    return None


def group_energy(members: list[tuple[nn.Module, str, list[int], list[int]]], channels: int) -> Tensor:
    """The ``group_l2`` scores of one Torch-Pruning group (``tp_bridge.raw_groups`` members):
    per channel, the mean over the layers that contribute of their summed squared slices."""
    total = torch.zeros(channels, dtype=torch.float64)
    layers = 0
    for module, role, idxs, roots in members:
        energy = slice_energy(module, role, idxs)
        if energy is None:
            continue
        per_channel = torch.zeros(channels, dtype=torch.float64)
        per_channel.index_add_(0, torch.tensor(roots, dtype=torch.long), energy)
        total += per_channel
        layers += 1
    return total / max(1, layers)


register(GroupMagnitude("group_l2", summary="Σ‖·‖₂² of a channel's filters, BN γ and consumer columns, "
                        "mean over its coupled layers (Torch-Pruning's GroupMagnitudeImportance, DepGraph)"))
