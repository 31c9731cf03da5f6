"""MACs and parameter counts: analytic (from keep counts, microseconds) and counted (by a forward pass).

MACs are the multiply-accumulates of conv and linear layers for one input, what the papers' tables
call "FLOPs" (FLOPs = 2·MACs where a paper uses that convention). Params include BN's γ and β.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from prunetune.pruning.groups import ModelGroups, layer_macs, layer_params


@dataclass(frozen=True)
class Cost:
    """MACs and params of one network for one input."""

    macs: int
    params: int

    def as_dict(self) -> dict[str, int]:
        return {"macs": self.macs, "params": self.params}


def analytic_cost(groups: ModelGroups, keep: Mapping[str, int] | None = None) -> Cost:
    """MACs and params of the network that keeps ``keep[g]`` channels of each group ``g``.

    Groups absent from ``keep`` stay dense. Pure arithmetic on the layer geometry: no forward pass.
    """
    keep = keep or {}
    macs = params = 0
    for layer in groups.layers:
        out_c = keep.get(layer.out_group, layer.out_channels) if layer.out_group else layer.out_channels
        in_c = keep.get(layer.in_group, layer.in_channels) if layer.in_group else layer.in_channels
        macs += layer_macs(layer, out_c, in_c)
        params += layer_params(layer, out_c, in_c)
    return Cost(macs, params + groups.other_params)


def count_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """Count conv/linear MACs with forward hooks on one input, and all trainable-parameter elements."""
    total = 0

    def hook(module: nn.Module, _inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * per_out
        else:
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=_device_of(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Cost(total, sum(p.numel() for p in model.parameters()))


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
