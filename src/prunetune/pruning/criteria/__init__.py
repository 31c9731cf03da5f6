"""Filter-importance criteria, by name (higher score = keep).

``score(name, feature_maps=..., weight=..., labels=...)`` scores tensors directly; calibration and
:mod:`prunetune.pruning.scores` score whole models.
"""

from prunetune.pruning.criteria import weight as _weight  # noqa: F401  (registers l1, l2, fpgm, ...)
from prunetune.pruning.criteria.base import (
    ACTIVATION, CRITERIA, GRADIENT, LABELS, WEIGHT, Accumulator, Criterion, FeatureBatch,
    get_criterion, register, score,
)

__all__ = [
    "ACTIVATION", "CRITERIA", "GRADIENT", "LABELS", "WEIGHT", "Accumulator", "Criterion",
    "FeatureBatch", "get_criterion", "register", "score",
]
