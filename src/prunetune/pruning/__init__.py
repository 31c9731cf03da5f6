"""Pruning core: groups, criteria, scores, allocation, plans, schedules, physical removal, fine-tune.

Imports only torch, numpy and Torch-Pruning: never Ray, Optuna or MLflow.
"""

from prunetune.pruning.allocation import KeepRule, keep_for_budget, keep_from_ratios, smallest_fraction
from prunetune.pruning.blend import blend_scores
from prunetune.pruning.criteria import CRITERIA, score
from prunetune.pruning.finetune import FinetuneConfig, evaluate, finetune
from prunetune.pruning.groups import Group, ModelGroups, find_groups
from prunetune.pruning.macs import Cost, analytic_cost, count_cost
from prunetune.pruning.normalize import NORMALIZERS
from prunetune.pruning.plan import PruningPlan, make_plan
from prunetune.pruning.schedules import SCHEDULES
from prunetune.pruning.scores import ScoreTable, compute_scores
from prunetune.pruning.strategies import STRATEGIES
from prunetune.pruning.surgery import MaskHooks, apply_plan, channel_masks

__all__ = [
    "CRITERIA", "NORMALIZERS", "SCHEDULES", "STRATEGIES", "Cost", "FinetuneConfig",
    "Group", "KeepRule", "MaskHooks", "ModelGroups", "PruningPlan", "ScoreTable", "analytic_cost",
    "apply_plan", "blend_scores", "channel_masks", "compute_scores", "count_cost", "evaluate",
    "find_groups", "finetune", "keep_for_budget", "keep_from_ratios", "make_plan", "score",
    "smallest_fraction",
]
