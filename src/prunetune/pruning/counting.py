"""Costs by counting: the fallback where the analytic count does not cover every layer of a model.

:class:`CountedCost` removes channels from a copy of the dense model (the first ``keep[g]`` of each
group: the cost depends only on the counts) and counts the result with one forward pass. Budget
projections call it many times, so results are cached by keep counts; the first use says once, in
the log, why the model is counted and what one count costs.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping

from torch import nn

from prunetune.pruning import tp_bridge
from prunetune.pruning.cost import Cost, count_cost

log = logging.getLogger("prunetune")
_ANNOUNCED: set[tuple[str, tuple[int, ...]]] = set()


class CountedCost:
    """``counter(groups, keep) -> Cost`` of the network keeping ``keep[g]`` channels of group ``g``."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = copy.deepcopy(model).cpu().eval()
        self.input_shape = tuple(input_shape)
        self._cache: dict[tuple[tuple[str, int], ...], Cost] = {}

    def __call__(self, groups, keep: Mapping[str, int] | None = None) -> Cost:
        keep = {g.name: int(keep[g.name]) for g in groups if keep and g.name in keep and keep[g.name] != g.channels}
        key = tuple(sorted(keep.items()))
        if key not in self._cache:
            t0 = time.perf_counter()
            self._cache[key] = self._count(groups, keep)
            if keep:  # the cost worth announcing is that of a pruned copy
                self._announce(groups, time.perf_counter() - t0)
        return self._cache[key]

    def _count(self, groups, keep: Mapping[str, int]) -> Cost:
        model = copy.deepcopy(self.model)
        if keep:  # the first keep[g] channels: the cost depends only on the counts
            removed = {g.out_layers[0]: range(keep[g.name], g.channels) for g in groups if g.name in keep}
            tp_bridge.remove_channels(model, removed, self.input_shape)
        return count_cost(model, self.input_shape)

    def _announce(self, groups, seconds: float) -> None:
        key = (type(self.model).__name__, self.input_shape)
        if key in _ANNOUNCED:
            return
        _ANNOUNCED.add(key)
        more = f"; {len(groups.counted) - 2} more" if len(groups.counted) > 2 else ""
        reasons = "; ".join(groups.counted[:2]) + more
        log.warning("MACs of %s are counted on pruned copies, not computed (%s): %.2f s per plan; "
                    "`prunetune groups` marks the groups concerned", key[0], reasons, seconds)

    def __getstate__(self) -> dict:
        return {"model": self.model, "input_shape": self.input_shape, "_cache": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
