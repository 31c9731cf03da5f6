"""Search spaces: cheap define-by-run functions of a trial-like object returning a flat trial config.

A space never imports Ray or MLflow (nor Optuna: it only calls ``suggest_*`` on what it is given).
Build one from the ``space:`` section of a search config with :func:`build_space`; turn a trial
config into a recipe with :func:`trial_recipe`; replay a stored config with
:meth:`SearchSpace.replay`.
"""

from prunetune.spaces.base import FixedTrial, RandomTrial, SearchSpace, TrialLike
from prunetune.spaces.presets import RATIO_FLOOR, RATIO_SPACES, stage_of, stages
from prunetune.spaces.spec import (
    PLAN_PARTS,
    SpaceSpec,
    build_space,
    plan_space,
    space_criteria,
    space_target_range,
    target_range,
)
from prunetune.spaces.translate import relative_ratios, trial_recipe

__all__ = [
    "PLAN_PARTS", "RATIO_FLOOR", "RATIO_SPACES", "FixedTrial", "RandomTrial", "SearchSpace", "SpaceSpec", "TrialLike",
    "build_space", "plan_space", "relative_ratios", "space_criteria", "space_target_range", "stage_of", "stages",
    "target_range", "trial_recipe",
]
