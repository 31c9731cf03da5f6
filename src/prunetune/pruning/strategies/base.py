"""The allocation-strategy registry and what an entry declares.

A strategy is ``fn(groups, *, rule, ratio, ratios, default, macs_budget, params, extras, scores) -> keep``
where ``extras`` are the ScoreTable extras of the criteria it reads (e.g. CMI curves), ``scores``
the recipe's (blended) scores per group, and ``keep`` maps every group to its channel count. Under a
MACs budget every strategy returns a maximal plan: no group can keep one more channel (one more
``round_to`` step) without going over, and none keeps fewer than ``rule.floor(N)``
(:func:`prunetune.testing.check_strategy` is the contract).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prunetune._registry import Registry
from prunetune.exceptions import ConfigError


@dataclass(frozen=True)
class Strategy:
    """A registered allocation strategy and what it declares about itself.

    Attributes:
        fn: the strategy (see the module docstring).
        params: the ``allocation.params`` keys a recipe may give it (checked when the recipe is read).
        criteria: the criteria whose ScoreTable extras it reads (scored with their defaults when the
            recipe's criterion does not name them).
        blend_normalizer: ``(param, default)``: the strategy compares scores across groups, so the
            blend it reads is recomputed with the normaliser named by that parameter.
        scored_with: criterion -> parameters under which that criterion's extras still give this
            strategy the same answer, used when the criterion is scored only for strategies that all
            allow them (``cmi_knee``: ``{"cmi": {"stop_at_knee": True}}``, its greedy may stop once
            the knee is settled).
    """

    name: str
    fn: Callable[..., dict[str, int]]
    params: tuple[str, ...] = ()
    criteria: tuple[str, ...] = ()
    blend_normalizer: tuple[str, str] | None = None
    scored_with: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __call__(self, groups, **kwargs) -> dict[str, int]:
        return self.fn(groups, **kwargs)


STRATEGIES: Registry[Strategy] = Registry("allocation strategy", pluggable=True, entry=Strategy,
                                          how="register a function with @strategies.register(name)")


def register(name: str, *, params: tuple[str, ...] = (), criteria: tuple[str, ...] = (),
             blend_normalizer: tuple[str, str] | None = None,
             scored_with: Mapping[str, Mapping[str, Any]] | None = None) -> Callable[[Callable], Callable]:
    """Register ``fn`` as strategy ``name`` with its declarations; returns ``fn`` unchanged."""
    def deco(fn: Callable[..., dict[str, int]]) -> Callable[..., dict[str, int]]:
        STRATEGIES.register(name, Strategy(name, fn, tuple(params), tuple(criteria), blend_normalizer,
                                           dict(scored_with or {})))
        return fn
    return deco


def strategy_criteria(strategy: str) -> tuple[str, ...]:
    """The criteria a strategy needs scored for its ``extras`` (e.g. ``("cmi",)`` for the CMI cut-offs)."""
    return STRATEGIES.get(strategy).criteria


def strategy_scoring(strategies: Iterable[str], scored: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Criteria the ``strategies`` read that are not already ``scored`` (the blend's) -> the
    parameters all strategies reading it allow (:attr:`Strategy.scored_with`; defaults otherwise).
    The caller applies them under the user's own parameters for that criterion, and drops them where
    the two do not go together (:func:`with_allowed`)."""
    taken, out = set(scored), {}
    for entry in (STRATEGIES.get(name) for name in strategies):
        for crit in entry.criteria:
            if crit in taken:
                continue
            allowed = dict(entry.scored_with.get(crit, {}))
            out[crit] = allowed if crit not in out else {k: v for k, v in out[crit].items() if allowed.get(k, object()) == v}
    return out


def read_by_strategies() -> frozenset[str]:
    """Every criterion some registered strategy reads for its extras (``cmi`` for the CMI cut-offs):
    a recipe may give its parameters without blending it."""
    return frozenset(crit for name in STRATEGIES.names() for crit in STRATEGIES.get(name).criteria)


def scoring_params(blend: Iterable[str], strategies: Iterable[str],
                   params: Mapping[str, Mapping[str, Any] | None] | None = None) -> dict[str, dict[str, Any]]:
    """Every criterion to score -> its resolved parameters: the one rule of a recipe
    (:func:`prunetune.recipes.planning.recipe_criteria`) and of a search's ScoreTable
    (:func:`prunetune.spaces.space_criteria`), so a trial's recipe scored on its own gets what the
    search scored for it.

    The ``blend``'s criteria get the user's ``params`` (else their defaults); a criterion only the
    ``strategies`` read (``cmi`` for ``cmi_knee``) gets the user's parameters for it too, under the
    parameters all those strategies allow (:func:`strategy_scoring`: ``stop_at_knee`` when
    ``cmi_knee`` alone reads it), dropped where the criterion refuses the combination (:func:`with_allowed`).
    """
    from prunetune.pruning.criteria import CRITERIA

    params = params or {}
    out = {name: CRITERIA.get(name).resolve(params.get(name)) for name in blend}
    for name, allowed in strategy_scoring(strategies, scored=out).items():
        out[name] = with_allowed(CRITERIA.get(name).resolve, allowed, params.get(name))
    return out


def with_allowed(resolve: Callable[[Mapping[str, Any]], dict[str, Any]], allowed: Mapping[str, Any],
                 own: Mapping[str, Any] | None) -> dict[str, Any]:
    """``resolve(allowed | own)``, or ``resolve(own)`` where the criterion refuses that combination
    (e.g. ``cmi``'s ``stop_at_knee`` with a ``condition``): the user's parameters win."""
    try:
        return resolve({**allowed, **(own or {})})
    except ConfigError:
        return resolve(dict(own or {}))
