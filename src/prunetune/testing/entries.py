"""Contracts of the registered entries: criteria, normalisers, schedules, ratio presets, strategies.

Every check looks its entry up by name in the registry, so an entry a plugin registers is checked
exactly as the built-in ones are.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping

import torch

from prunetune.pruning.allocation import KeepRule
from prunetune.pruning.groups import ModelGroups

C = 6
BUDGETS = (0.6, 0.35, 0.15)
RULES = (KeepRule(max_ratio=0.8), KeepRule(min_keep=2, round_to=4, max_ratio=0.9))


def evidence(seed: int = 0, channels: int = C) -> dict[str, torch.Tensor]:
    """Random weights, feature maps, labels and gradients of one ``channels``-channel layer."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randn(channels, 3, 3, 3, generator=gen),
        "feature_maps": torch.randn(8, channels, 5, 5, generator=gen).relu(),
        "labels": torch.randint(0, 3, (8,), generator=gen),
        "gradients": torch.randn(8, channels, 5, 5, generator=gen),
    }


def score_evidence(name: str, ev: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Score ``ev`` with criterion ``name`` at its defaults, giving it the evidence it needs."""
    from prunetune.pruning.criteria import CRITERIA, GRADIENT, LABELS, WEIGHT, score

    needs = CRITERIA.get(name).needs(CRITERIA.get(name).resolve(None))
    if WEIGHT in needs:
        return score(name, weight=ev["weight"])
    kwargs = {"feature_maps": ev["feature_maps"]}
    if LABELS in needs:
        kwargs["labels"] = ev["labels"]
    if GRADIENT in needs:
        kwargs["gradients"] = ev["gradients"]
    return score(name, **kwargs)


def check_criterion(name: str) -> None:
    """Finite, one score per channel, deterministic."""
    a, b = score_evidence(name, evidence()), score_evidence(name, evidence())
    assert a.shape == (C,) and torch.isfinite(a).all(), f"criterion {name!r}: not one finite score per channel"
    assert torch.equal(a, b), f"criterion {name!r}: two runs on the same evidence differ"


def check_normalizer(name: str) -> None:
    """Keeps shape and order; constant scores give no NaN."""
    from prunetune.pruning.normalize import get_normalizer

    s = torch.tensor([3.0, -1.0, 2.0, 10.0])
    out = get_normalizer(name)(s)
    assert out.shape == s.shape and torch.isfinite(out).all(), f"normalizer {name!r}: shape or finiteness"
    assert torch.equal(torch.argsort(out), torch.argsort(s)), f"normalizer {name!r}: changes the order"
    assert torch.isfinite(get_normalizer(name)(torch.ones(3))).all(), f"normalizer {name!r}: NaN on constant scores"


def check_schedule_states(name: str, totals: Iterable[int] = (1, 4, 10), **params) -> None:
    """States in the unit range; prune and hard fractions never fall."""
    from prunetune.pruning.schedules import SCHEDULES

    for total in totals:
        states = [SCHEDULES.get(name).state(e, total, **params) for e in range(total)]
        for s in states:
            assert 0.0 <= s.prune <= 1.0 and 0.0 <= s.hard <= 1.0 and 0.0 <= s.soft_scale <= 1.0, (name, total, s)
        assert all(a.prune <= b.prune for a, b in zip(states, states[1:])), f"schedule {name!r}: prune falls"
        assert all(a.hard <= b.hard for a, b in zip(states, states[1:])), f"schedule {name!r}: hard falls"


def check_schedule_end(name: str, total: int, **params) -> None:
    """The last epoch is fully pruned and hard (what it measures is what removal keeps)."""
    from prunetune.pruning.schedules import SCHEDULES

    last = SCHEDULES.get(name).state(total - 1, total, **params)
    assert last.prune == 1.0 and last.hard == 1.0, f"schedule {name!r} {params}: ends at {last} after {total}"


def check_schedule(name: str, seeds: int = 8) -> None:
    """States, endings, and the declared search space: every sampled parameter set is one the
    schedule accepts at parse time and that keeps the state contract."""
    from prunetune.pruning.schedules import SCHEDULES
    from prunetune.spaces.base import RandomTrial

    schedule = SCHEDULES.get(name)
    check_schedule_states(name)
    for total in (1, 2, 3, 4, 10):
        check_schedule_end(name, total)
    undeclared = sorted(set(schedule.space) - set(schedule.defaults))
    assert not undeclared, f"schedule {name!r} searches {undeclared[0]!r}, which is not one of its parameters"
    for seed in range(seeds if schedule.space else 0):
        trial = RandomTrial(seed)
        params = {key: searched.suggest(trial, key) for key, searched in schedule.space.items()}
        schedule.validate(params)
        check_schedule_states(name, **params)
    if schedule.one_shot:
        assert all(schedule.state(e, 4).hard == 1.0 for e in range(4)), f"one-shot schedule {name!r} has soft epochs"


@functools.lru_cache(maxsize=1)
def contract_groups() -> ModelGroups:
    """The groups the preset and strategy contracts run on: a 1-channel ResNet-20 at 16×16."""
    from prunetune.models import create_model
    from prunetune.pruning.groups import find_groups

    return find_groups(create_model("resnet20", in_channels=1), (1, 16, 16))


def check_ratio_preset(name: str, groups: ModelGroups | None = None, seeds: int = 4) -> None:
    """The preset's space samples what its decoding reads: every group gets a ratio in [floor, 1)
    (or none at all: uniform), and every sampled ``ratio.*`` is read by some group."""
    from prunetune.spaces.base import RandomTrial, SearchSpace
    from prunetune.spaces.presets import RATIO_FLOOR, RATIO_PREFIX, RATIO_SPACES
    from prunetune.spaces.translate import relative_ratios

    groups = groups or contract_groups()
    space = SearchSpace((("ratios", RATIO_SPACES.get(name)(groups, 0.0, 0.8)),))
    for seed in range(seeds):
        config = space.define(RandomTrial(seed))
        ratios = relative_ratios(config, groups)
        assert not ratios or set(ratios) == set(groups.names), f"ratio preset {name!r}: not every group has a ratio"
        assert all(RATIO_FLOOR <= r < 1.0 for r in ratios.values()), f"ratio preset {name!r}: ratio out of range"
        read = set(RATIO_SPACES.get(name).keys(groups).values())
        unread = sorted(k for k in config if k.startswith(RATIO_PREFIX) and k not in read)
        assert not unread, f"ratio preset {name!r} samples {unread[0]!r}, which no group reads"


def strategy_inputs(groups: ModelGroups, seed: int = 0) -> tuple[dict, dict]:
    """Scores per group and CMI-like curves (``extras``) for the strategies that read them."""
    gen = torch.Generator().manual_seed(seed)
    scores = {g.name: torch.rand(g.channels, generator=gen) * (1 + i) for i, g in enumerate(groups)}
    extras = {g.name: {"cmi_values": torch.sort(torch.rand(g.channels, generator=gen) ** 3, descending=True).values}
              for g in groups}
    return scores, extras


def check_keep(groups: ModelGroups, keep: Mapping[str, int], budget: float, rule: KeepRule) -> None:
    """Within the budget, within [floor, C] per group (and the max ratio), and maximal: no group can
    keep one more step without going over."""
    from prunetune.pruning.macs import analytic_cost

    target = budget * analytic_cost(groups).macs
    assert analytic_cost(groups, keep).macs <= target
    for g in groups:
        assert rule.floor(g.channels) <= keep[g.name] <= g.channels
        assert keep[g.name] >= math.ceil((1 - rule.max_ratio) * g.channels - 1e-9)
    for g in groups:
        grown = rule.clamp(g.channels, keep[g.name] + 1)
        if grown > keep[g.name]:
            assert analytic_cost(groups, {**keep, g.name: grown}).macs > target, g.name


def check_strategy(name: str, groups: ModelGroups | None = None, budgets: Iterable[float] = BUDGETS,
                   rules: Iterable[KeepRule] = RULES) -> None:
    """Every budget and keep rule: a plan within budget and [floor, C], maximal (:func:`check_keep`)."""
    from prunetune.pruning.strategies import STRATEGIES

    groups = groups or contract_groups()
    scores, extras = strategy_inputs(groups)
    for budget in budgets:
        for rule in rules:
            keep = STRATEGIES.get(name)(groups, rule=rule, macs_budget=budget, extras=extras, scores=scores)
            check_keep(groups, keep, budget, rule)
