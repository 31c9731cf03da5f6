"""A recipe's plan: which criteria it scores, its allocation checked before any work, and the plan
itself (its carried plan, or scores → blend → strategy → top-k per group).

:func:`build_plan` is what a search's trial runs after the shared :func:`~prunetune.recipes.pipeline.prepare`
and :func:`~prunetune.recipes.pipeline.score_table`; :func:`check_allocation` what every entry point runs on
the groups before training anything.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from prunetune.exceptions import BudgetExceededError, ConfigError
from prunetune.pruning.blend import blend_scores
from prunetune.pruning.budget_check import ROUNDING
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.macs import analytic_cost
from prunetune.pruning.plan import PruningPlan, make_plan
from prunetune.pruning.scores import ScoreTable
from prunetune.pruning.strategies import STRATEGIES, scoring_params, strategy_criteria
from prunetune.recipes.schema import Recipe


class Prepared(Protocol):
    """What :func:`build_plan` reads of a prepared :class:`~prunetune.recipes.pipeline.Base` (the
    pipeline imports this module, not the other way round)."""

    groups: ModelGroups


def check_allocation(recipe: Recipe, groups: ModelGroups) -> None:
    """Raise on unknown group names or an unreachable MACs budget, before any expensive work (a
    search's base recipe without allocation has neither: its space checks the search's budget)."""
    a = recipe.allocation
    if a is not None:
        for name in a.ratios:
            groups[name]
        if a.budget is not None:
            a.budget.reachable(groups, a.rule, dense=a.dense_groups(groups.names))
    if recipe.plan is not None:
        plan = _carried_plan(recipe)
        plan.validate(groups)
        budget = a.macs_budget if a is not None else None
        if budget is not None:  # counted after training too; an over-budget plan fails here, in seconds
            dense, kept = analytic_cost(groups).macs, analytic_cost(groups, plan.keep_counts).macs
            if kept > budget * dense * (1.0 + ROUNDING):
                raise BudgetExceededError(
                    f"the recipe's plan keeps {kept / dense:.4f} of the dense MACs, above its allocation.macs_budget "
                    f"{budget:g}; give a plan within the budget, or raise or remove allocation.macs_budget")


def recipe_criteria(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Criteria a recipe needs scored: its criterion (or blend), plus those its strategy reads (``cmi``,
    with the recipe's own parameters for it and those the strategy allows: ``cmi_knee`` lets the greedy
    stop at the settled knee). The rule a search's ScoreTable follows too
    (:func:`~prunetune.pruning.strategies.scoring_params`)."""
    return scoring_params(recipe.criterion.criteria, [recipe.sized().strategy], recipe.criterion.params)


def build_plan(recipe: Recipe, base: Prepared, table: ScoreTable | None) -> PruningPlan:
    """The plan a recipe asks for: its carried plan, or scores → allocation → top-k per group."""
    if recipe.plan is not None:
        plan = _carried_plan(recipe)
        plan.validate(base.groups)
        return plan
    spec, a = recipe.criterion, recipe.sized()
    scores = blended_scores(recipe, table)
    extras = {}
    for name in {*spec.criteria, *strategy_criteria(a.strategy)} & set(table.extras):
        for group, values in table.extras[name].items():
            extras.setdefault(group, {}).update(values)
    strategy = STRATEGIES.get(a.strategy)
    own = strategy.blend_normalizer  # a strategy comparing scores across groups
    counted = scores  # blended once; again only where the strategy needs another normaliser
    if own is not None and a.params.get(*own) != spec.normalizer:
        counted = blend_scores(table.scores, spec.weights, normalizer=a.params.get(*own))
    keep = strategy(base.groups, rule=a.rule, ratio=a.ratio, ratios=a.ratios, default=a.default,
                    macs_budget=a.macs_budget, params=a.params, extras=extras, scores=counted)
    for g in base.groups:  # a strategy that ignores the recipe's round_to (or min_keep, max_ratio)
        k = keep.get(g.name, g.channels)
        if isinstance(k, int) and 1 <= k <= g.channels and a.rule.clamp(g.channels, k) != k:
            raise ConfigError(f"allocation strategy {a.strategy!r} keeps {k} of the {g.channels} channels of "
                              f"{g.name!r}, which the keep rule (min_keep {a.rule.min_keep}, round_to "
                              f"{a.rule.round_to}, max_ratio {a.rule.max_ratio:g}) does not allow; a strategy "
                              "must apply it (KeepRule.clamp; prunetune.testing.check_strategy checks it)")
    plan = make_plan(base.groups, scores, keep, meta={"model": recipe.model.name, "criterion": spec.to_value(),
                                                       "allocation": a.to_dict(), "fingerprint": table.fingerprint})
    if a.macs_budget is not None and plan.macs_ratio > a.macs_budget * (1.0 + ROUNDING):
        # before any training: a plugin strategy over its budget was found only by the count after the fine-tune
        raise BudgetExceededError(
            f"allocation strategy {a.strategy!r} keeps {plan.macs_ratio:.4f} of the dense MACs, above "
            f"allocation.macs_budget {a.macs_budget:g}; a strategy must stay within the budget "
            "(prunetune.testing.check_strategy checks it)")
    return plan


def blended_scores(recipe: Recipe, table: ScoreTable) -> dict[str, torch.Tensor]:
    """The recipe's criterion (one, or a normalised blend) evaluated on the table, per group."""
    spec = recipe.criterion
    return blend_scores(table.scores, spec.weights, normalizer=spec.normalizer)


def _carried_plan(recipe: Recipe) -> PruningPlan:
    if isinstance(recipe.plan, str):
        return PruningPlan.load(recipe.resolve_path(recipe.plan))
    return PruningPlan.from_dict(recipe.plan)
