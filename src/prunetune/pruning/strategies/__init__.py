"""Allocation strategies: how many channels each group keeps, by name.

One module per family, each registering its entries in :data:`STRATEGIES` (:mod:`.base`) with the
parameters and criteria they declare: ``ratios`` (:mod:`.ratios`), ``global`` (:mod:`.global_threshold`),
``cmi_cumulative``, ``cmi_marginal``, ``cmi_knee`` (:mod:`.cutoffs`). Adding a strategy is one module
imported here.
"""

from prunetune.pruning.strategies.base import (
    STRATEGIES,
    Strategy,
    read_by_strategies,
    register,
    scoring_params,
    strategy_criteria,
    strategy_scoring,
    with_allowed,
)

# registration, in the order the names were registered before the package split
from prunetune.pruning.strategies import ratios  # noqa: E402,F401,I001
from prunetune.pruning.strategies import cutoffs  # noqa: E402,F401
from prunetune.pruning.strategies import global_threshold  # noqa: E402,F401

__all__ = ["STRATEGIES", "Strategy", "read_by_strategies", "register", "scoring_params", "strategy_criteria",
           "strategy_scoring", "with_allowed"]
