"""MACs and parameter counts: analytic (from keep counts, microseconds) and counted (by a forward pass).

MACs are the multiply-accumulates of conv and linear layers for one input, what the papers' tables
call "FLOPs" (FLOPs = 2·MACs where a paper uses that convention). Params include BN's γ and β.
Counting (:func:`count_cost`) is :mod:`prunetune.pruning.cost`'s; it is re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping

from prunetune.pruning.cost import Cost, count_cost
from prunetune.pruning.groups import ModelGroups, layer_macs, layer_params

__all__ = ["Cost", "analytic_cost", "count_cost"]  # Cost and count_cost live in prunetune.pruning.cost


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
