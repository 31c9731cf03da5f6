"""What a network costs: :class:`Cost` (MACs and params of one input) and counting it by a forward pass.

MACs are the multiply-accumulates of conv and linear layers for one input, what the papers' tables
call "FLOPs" (FLOPs = 2·MACs where a paper uses that convention). Params include BN's γ and β.
Counting uses :class:`torch.utils.flop_counter.FlopCounterMode`, so it sees every convolution and
matrix product, whichever module (or functional call) runs it. This module knows nothing of groups,
so everything (groups, counting on pruned copies, plans) can use it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunetune._modes import modes_kept
from prunetune._checks import input_shape as check_input_shape
from prunetune._checks import unrunnable


@dataclass(frozen=True)
class Cost:
    """MACs and params of one network for one input."""

    macs: int
    params: int

    def as_dict(self) -> dict[str, int]:
        return {"macs": self.macs, "params": self.params}


def count_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """Count the MACs of one input (every convolution and matrix product) and all parameter elements."""
    input_shape = check_input_shape(input_shape)
    counter = FlopCounterMode(display=False)
    try:
        with modes_kept(model), torch.no_grad(), counter:
            model.eval()(torch.zeros(1, *input_shape, device=_device_of(model)))
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError) as exc:  # a shape the model cannot take (the cause is kept)
        raise unrunnable(model, input_shape, exc) from exc
    return Cost(counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters()))


def shape_cost(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[Cost, int]:
    """:func:`count_cost` from shapes alone, and the most elements one module outputs for one input.

    A copy of ``model`` on the ``meta`` device takes a meta input, so nothing is computed or allocated
    for the activations, whatever the input size (a check before the real work). Raises whatever the
    model raises on such an input (a shape it does not take, or code that needs real values).
    """
    # the copy gets meta stand-ins for the weights and buffers: no second copy of their data (on a GPU)
    memo: dict[int, object] = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                               for p in model.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in model.buffers()})
    meta = copy.deepcopy(model, memo).to("meta").eval()
    largest = [0]

    def seen(_module: nn.Module, _inputs: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel())

    for module in meta.modules():
        module.register_forward_hook(seen)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        meta(torch.zeros(1, *input_shape, device="meta"))
    return Cost(counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())), largest[0]


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
