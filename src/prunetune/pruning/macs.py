"""MACs and parameter counts: analytic (from keep counts, microseconds) and counted (by a forward pass).

MACs are the multiply-accumulates of conv and linear layers for one input, what the papers' tables
call "FLOPs" (FLOPs = 2·MACs where a paper uses that convention). Params include BN's γ and β.
Counting uses :class:`torch.utils.flop_counter.FlopCounterMode`, so it sees every convolution and
matrix product, whichever module (or functional call) runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

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

    Groups absent from ``keep`` stay dense. Pure arithmetic on the layer geometry, no forward pass;
    where the geometry does not cover a layer (``groups.counted``), the pruned network is counted
    instead, so the number is never an estimate.
    """
    if groups.counted and groups.counter is not None:
        return groups.counter(groups, keep)
    keep = keep or {}
    macs, params = groups.other_macs, groups.other_params
    for layer in groups.layers:
        out_c, in_c = layer.channels(keep)
        macs += layer_macs(layer, out_c, in_c)
        params += layer_params(layer, out_c, in_c)
    return Cost(macs, params)


def count_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """Count the MACs of one input (every convolution and matrix product) and all parameter elements."""
    counter = FlopCounterMode(display=False)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(torch.zeros(1, *input_shape, device=_device_of(model)))
    finally:
        model.train(was_training)
    return Cost(counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters()))


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
