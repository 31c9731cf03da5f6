"""The allocation-strategy registry and what an entry declares.

A strategy is ``fn(groups, *, rule, ratio, ratios, default, macs_budget, params, extras, scores) -> keep``
where ``extras`` are the ScoreTable extras of the criteria it reads (e.g. CMI curves), ``scores``
the recipe's (blended) scores per group, and ``keep`` maps every group to its channel count. Under a
MACs budget every strategy returns a maximal plan: no group can keep one more channel (one more
``round_to`` step) without going over, and none keeps fewer than ``rule.floor(N)``
(:func:`prunetune.testing.check_strategy` is the contract).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prunetune._registry import Registry


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
    """

    name: str
    fn: Callable[..., dict[str, int]]
    params: tuple[str, ...] = ()
    criteria: tuple[str, ...] = ()
    blend_normalizer: tuple[str, str] | None = None

    def __call__(self, groups, **kwargs) -> dict[str, int]:
        return self.fn(groups, **kwargs)


STRATEGIES: Registry[Strategy] = Registry("allocation strategy")


def register(name: str, *, params: tuple[str, ...] = (), criteria: tuple[str, ...] = (),
             blend_normalizer: tuple[str, str] | None = None) -> Callable[[Callable], Callable]:
    """Register ``fn`` as strategy ``name`` with its declarations; returns ``fn`` unchanged."""
    def deco(fn: Callable[..., dict[str, int]]) -> Callable[..., dict[str, int]]:
        STRATEGIES.register(name, Strategy(name, fn, tuple(params), tuple(criteria), blend_normalizer))
        return fn
    return deco


def strategy_criteria(strategy: str) -> tuple[str, ...]:
    """The criteria a strategy needs scored for its ``extras`` (e.g. ``("cmi",)`` for the CMI cut-offs)."""
    return STRATEGIES.get(strategy).criteria
