"""Contracts of the registered entries: criteria, normalisers, schedules, ratio presets, strategies.

Every check looks its entry up by name in the registry, so an entry a plugin registers is checked
exactly as the built-in ones are.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Iterable, Mapping

import torch

from prunetune._text import short
from prunetune.pruning.allocation import KeepRule
from prunetune.pruning.groups import ModelGroups

C = 6
BUDGETS = (0.6, 0.35, 0.15)
RULES = (KeepRule(max_ratio=0.8), KeepRule(min_keep=2, round_to=4, max_ratio=0.9))


def ensure(ok: object, message: str) -> None:
    """An ``assert`` that ``python -O`` keeps: raise :class:`AssertionError` with ``message`` unless ``ok``."""
    if not ok:
        raise AssertionError(message)


def show(value: object) -> str:
    """A returned value as a failure message shows it: a small tensor's values, else its shape."""
    if isinstance(value, torch.Tensor):
        small = value.numel() <= 8 and not value.is_meta
        return f"tensor {short(value.tolist())}" if small else f"Tensor{tuple(value.shape)} {value.dtype}"
    return f"{type(value).__name__} {short(value)}"


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
    """One finite real score per channel, deterministic, the evidence left as it was (a criterion
    writing into a layer's weight would change the model it scores), and the same for a Linear
    layer's 2-D weight and its ``[B, C]`` outputs, which groups hold too."""
    ev = evidence()
    before = {key: value.clone() for key, value in ev.items()}
    a, b = score_evidence(name, ev), score_evidence(name, evidence())
    ensure(_real_scores(a), f"criterion {name!r}: not one finite real score per channel of {C}, got {show(a)}")
    ensure(torch.equal(a, b), f"criterion {name!r}: two runs on the same evidence differ: {show(a)} and {show(b)}")
    changed = [key for key in ev if not torch.equal(ev[key], before[key])]
    ensure(not changed, f"criterion {name!r}: changes the {changed[0] if changed else ''} it scores (in place); "
           "score a copy")
    linear = evidence(seed=1)
    linear["weight"] = linear["weight"].reshape(C, -1)  # a Linear layer: out × in
    linear["feature_maps"] = linear["feature_maps"].mean(dim=(2, 3))  # its outputs, [B, C]
    linear["gradients"] = linear["gradients"].mean(dim=(2, 3))
    where = f"criterion {name!r}: a Linear layer's {tuple(linear['weight'].shape)} weight (or [B, C] outputs)"
    try:
        out = score_evidence(name, linear)
    except Exception as exc:  # noqa: BLE001 (a contract failure, with what the criterion raised)
        raise AssertionError(f"{where} raises {type(exc).__name__}: {exc}") from exc
    ensure(_real_scores(out), f"{where} does not give one finite real score per channel of {C}, got {show(out)}")


def _real_scores(scores: object) -> bool:
    """One finite real (floating-point) score per channel of the contract's layer."""
    return (isinstance(scores, torch.Tensor) and scores.shape == (C,) and scores.is_floating_point()
            and bool(torch.isfinite(scores).all()))


def check_normalizer(name: str) -> None:
    """Keeps shape and order; constant scores, a single score, zeros and a wide group (64 scores in
    float64, as allocation passes them) give no NaN."""
    from prunetune.pruning.normalize import get_normalizer

    wide = torch.linspace(-2.0, 5.0, 64, dtype=torch.float64)[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    for s in (torch.tensor([3.0, -1.0, 2.0, 10.0]), torch.ones(3), torch.ones(1), torch.zeros(5), wide):
        out = get_normalizer(name)(s)
        ensure(isinstance(out, torch.Tensor) and out.shape == s.shape and torch.isfinite(out).all(),
               f"normalizer {name!r}: scores {s.tolist()} give {show(out)}, not {len(s)} finite scores")
    s = torch.tensor([3.0, -1.0, 2.0, 10.0])
    out = get_normalizer(name)(s)
    ensure(torch.equal(torch.argsort(out), torch.argsort(s)),
           f"normalizer {name!r}: changes the order: scores {s.tolist()} give {show(out)}")


def schedule_state(name: str, epoch: int, total: int, **params):
    """The state of ``epoch`` of ``total``, checked: an ``EpochState`` whose fractions are numbers in
    [0, 1], ``rescore`` a bool and ``pool`` one of the pools."""
    from prunetune.pruning.schedules import SCHEDULES, field_range, state_fault

    s = SCHEDULES.get(name).state(epoch, total, **params)
    where = f"schedule {name!r}{f' {params}' if params else ''} at epoch {epoch} of {total}"
    fault = state_fault(s)
    ensure(fault != "type", f"{where}: returns {show(s)}, not an EpochState")
    if fault is not None:
        raise AssertionError(f"{where}: {fault}={getattr(s, fault)!r} is not {field_range(fault, 'a number')}")
    return s


def check_schedule_states(name: str, totals: Iterable[int] = (1, 4, 10), **params) -> None:
    """States in the unit range; prune and hard fractions never fall."""
    for total in totals:
        states = [schedule_state(name, e, total, **params) for e in range(total)]
        for e, (a, b) in enumerate(zip(states, states[1:]), start=1):
            for key in ("prune", "hard"):
                ensure(getattr(a, key) <= getattr(b, key), f"schedule {name!r}{f' {params}' if params else ''}: "
                       f"{key} falls from {getattr(a, key)} to {getattr(b, key)} at epoch {e} of {total}")


def check_schedule_end(name: str, total: int, **params) -> None:
    """The last epoch is fully pruned and hard (what it measures is what removal keeps)."""
    last = schedule_state(name, total - 1, total, **params)
    ensure(last.prune == 1.0 and last.hard == 1.0, f"schedule {name!r} {params}: ends at {last} after {total}")


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
    if undeclared:
        raise AssertionError(f"schedule {name!r} searches {undeclared[0]!r}, which is not one of its parameters")
    for seed in range(seeds if schedule.space else 0):
        trial = RandomTrial(seed)
        params = {key: searched.suggest(trial, key) for key, searched in schedule.space.items()}
        schedule.validate(params)
        check_schedule_states(name, **params)
    if schedule.one_shot:
        soft = [e for e in range(4) if schedule.state(e, 4).hard != 1.0]
        ensure(not soft, f"one-shot schedule {name!r} has soft epochs: {soft} of 4")


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
        for g in groups.names if ratios else ():
            ensure(g in ratios, f"ratio preset {name!r}: group {g!r} has no ratio")
            ensure(RATIO_FLOOR <= ratios[g] < 1.0,
                   f"ratio preset {name!r}: group {g!r} has ratio {ratios[g]!r}, outside [{RATIO_FLOOR}, 1)")
        read = set(RATIO_SPACES.get(name).keys(groups).values())
        unread = sorted(k for k in config if k.startswith(RATIO_PREFIX) and k not in read)
        if unread:
            raise AssertionError(f"ratio preset {name!r} samples {unread[0]!r}, which no group reads")


def strategy_inputs(groups: ModelGroups, seed: int = 0) -> tuple[dict, dict]:
    """Scores per group and CMI-like curves (``extras``) for the strategies that read them."""
    gen = torch.Generator().manual_seed(seed)
    scores = {g.name: torch.rand(g.channels, generator=gen) * (1 + i) for i, g in enumerate(groups)}
    extras = {g.name: {"cmi_values": torch.sort(torch.rand(g.channels, generator=gen) ** 3, descending=True).values}
              for g in groups}
    return scores, extras


def check_keep(groups: ModelGroups, keep: Mapping[str, int], budget: float, rule: KeepRule, *,
               what: str = "plan") -> None:
    """One integer keep count (not a bool) per group and no other name; within the budget, within
    [floor, C] per group (and the max ratio), and maximal: no group can keep one more step without
    going over. ``what`` names the plan in failure messages."""
    from prunetune.pruning.macs import analytic_cost

    ensure(isinstance(keep, Mapping), f"{what}: keep counts are {show(keep)}, not a mapping of group to count")
    known = set(groups.names)
    unknown = [name for name in keep if name not in known]
    if unknown:
        raise AssertionError(f"{what}: keeps {unknown[0]!r}, which is not a group")
    for g in groups:
        ensure(g.name in keep, f"{what}: group {g.name!r} has no keep count")
        k = keep[g.name]
        ensure(isinstance(k, numbers.Integral) and not isinstance(k, bool),
               f"{what}: group {g.name!r} keeps {show(k)}, not an integer channel count")
        floor = rule.floor(g.channels)  # min_keep, max_ratio and round_to
        ensure(floor <= k <= g.channels, f"{what}: group {g.name!r} keeps {k}, outside [{floor}, {g.channels}]")
        ensure(rule.clamp(g.channels, k) == k, f"{what}: group {g.name!r} keeps {k} of {g.channels}, not a count "
               f"the keep rule allows (round_to={rule.round_to}: {rule.clamp(g.channels, k)})")
    dense = analytic_cost(groups).macs
    target = budget * dense
    macs = analytic_cost(groups, keep).macs
    ensure(macs <= target, f"{what}: {macs} MACs, over the budget {budget:g} of {dense} dense MACs")
    for g in groups:
        grown = rule.clamp(g.channels, keep[g.name] + 1)
        ensure(grown == keep[g.name] or analytic_cost(groups, {**keep, g.name: grown}).macs > target,
               f"{what}: not maximal: group {g.name!r} could keep {grown} instead of {keep[g.name]} within budget")


def check_strategy(name: str, groups: ModelGroups | None = None, budgets: Iterable[float] = BUDGETS,
                   rules: Iterable[KeepRule] = RULES) -> None:
    """Every budget and keep rule: a plan within budget and [floor, C], maximal (:func:`check_keep`)."""
    from prunetune.pruning.strategies import STRATEGIES

    groups = groups or contract_groups()
    scores, extras = strategy_inputs(groups)
    for budget in budgets:
        for rule in rules:
            keep = STRATEGIES.get(name)(groups, rule=rule, macs_budget=budget, extras=extras, scores=scores)
            check_keep(groups, keep, budget, rule, what=f"strategy {name!r} at macs_budget={budget:g} and {rule}")
