"""Filter-importance criteria, by name (higher score = keep).

``score(name, feature_maps=..., weight=..., labels=...)`` scores tensors directly; calibration and
:mod:`prunetune.pruning.scores` score whole models.
"""

from prunetune.pruning.criteria import activation as _activation  # noqa: F401  hrank, chip, dfs, sfs, dfs_sfs, taylor
from prunetune.pruning.criteria import information as _information  # noqa: F401  capacity, independence
from prunetune.pruning.criteria import cmi as _cmi  # noqa: F401  cmi
from prunetune.pruning.criteria import weight as _weight  # noqa: F401  l1, l2, fpgm, bn_scale, random
from prunetune.pruning.criteria import group_magnitude as _group  # noqa: F401  group_l2
from prunetune.pruning.criteria.base import (
    ACTIVATION, CRITERIA, GRADIENT, LABELS, WEIGHT, Accumulator, Criterion, FeatureBatch,
    get_criterion, register, score,
)

__all__ = [
    "ACTIVATION", "CRITERIA", "GRADIENT", "LABELS", "WEIGHT", "Accumulator", "Criterion",
    "FeatureBatch", "get_criterion", "register", "score",
]
