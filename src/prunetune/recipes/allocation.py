"""The recipe's ``allocation:`` section: which strategy sizes the groups, under which budget and keep rule."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prunetune._checks import integer, section
from prunetune._text import short
from prunetune.exceptions import ConfigError
from prunetune.pruning.allocation import DEFAULT_MAX_RATIO, KeepRule, MacsBudget, check_budget, check_ratio


ALLOCATION_KEYS = {"strategy", "ratio", "ratios", "default", "macs_budget", "flops_budget", "min_keep",
                   "round_to", "max_ratio"}


def strategy_params() -> tuple[str, ...]:
    """Every parameter some registered strategy declares (``register(params=...)``: ``rho``,
    ``epsilon``, ``scale``, ``normalizer`` for the built-in ones, and a plugin strategy's own): an
    allocation section may hold them, and :meth:`AllocationSpec.check` refuses the ones its own
    strategy does not take."""
    from prunetune.pruning.strategies import STRATEGIES

    declared = (p for name in STRATEGIES.in_order() for p in STRATEGIES.get(name).params)
    return tuple(p for p in dict.fromkeys(declared) if p not in ALLOCATION_KEYS)


@dataclass(frozen=True)
class AllocationSpec:
    """How many channels each group keeps.

    ``{ratio: p}`` prunes every group at p; ``{ratios: {group: p}, default: q}`` per group;
    ``{macs_budget: f}`` scales keep fractions in the shape the ratios give (uniform unless
    ``ratios`` are given) to the closest plan not above ``f`` of the dense MACs. ``strategy`` picks
    ``global`` (one threshold over normalised scores) or an information cut-off instead of ratios.
    No allocation prunes more than ``max_ratio`` of any group.
    """

    strategy: str = "ratios"
    ratio: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    default: float | None = None
    macs_budget: float | None = None
    min_keep: int = 1
    round_to: int | None = None
    max_ratio: float = DEFAULT_MAX_RATIO
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def rule(self) -> KeepRule:
        """The keep rule every strategy of this allocation follows."""
        return KeepRule(self.min_keep, self.round_to, self.max_ratio)

    @property
    def budget(self) -> MacsBudget | None:
        """The MACs budget as the validated value the pruning core takes (None: no budget)."""
        return None if self.macs_budget is None else MacsBudget(self.macs_budget, "allocation.macs_budget")

    def dense_groups(self, names: Iterable[str]) -> set[str]:
        """Of ``names``, the groups a MACs budget leaves whole: a relative ratio of exactly 0 (named, or
        by ``default`` next to named ratios, as the ``ratios`` strategy reads them)."""
        if self.strategy != "ratios" or self.macs_budget is None or not self.ratios:
            return set()
        fallback = self.default if self.default is not None else 0.5
        return {name for name in names if self.ratios.get(name, fallback) == 0}

    @classmethod
    def parse(cls, value: Any, *, sized: bool = True) -> AllocationSpec:
        """Validate an ``allocation:`` section; ``sized=False`` (a search's base recipe, whose trials size
        their own plans) lets it hold only the keep rule (``min_keep``, ``round_to``, ``max_ratio``)."""
        if isinstance(value, Mapping) and "strategy" in value:  # an unknown (plugin) strategy is named as
            from prunetune.pruning.strategies import STRATEGIES  # such, not its parameters as unknown keys

            STRATEGIES.get(value["strategy"])
        declared = strategy_params()
        d = section("allocation", value, ALLOCATION_KEYS | set(declared))
        if "flops_budget" in d:  # the papers' "FLOPs" are MACs
            if "macs_budget" in d:
                raise ConfigError("give one of allocation.macs_budget or allocation.flops_budget (a synonym)")
            d["macs_budget"] = d.pop("flops_budget")
        params = {k: d.pop(k) for k in declared if k in d}
        if "round_to" in d:  # a multiple, or a hardware preset (cpu, gpu)
            from prunetune.pruning.rounding import resolve_round_to

            d["round_to"] = resolve_round_to(d["round_to"], what="allocation.round_to")
        spec = cls(**d, params=params)
        spec.check(sized=sized)
        return spec

    def check(self, *, sized: bool = True) -> None:
        if isinstance(self.max_ratio, bool) or not isinstance(self.max_ratio, (int, float)) or not 0 < self.max_ratio <= 1:
            raise ConfigError(f"allocation.max_ratio must be a fraction in (0, 1], got {self.max_ratio!r}")
        if not isinstance(self.ratios, Mapping):
            raise ConfigError(f"allocation.ratios must map group names to prune ratios, got {short(self.ratios)}")
        if self.ratio is not None:
            self._check_ratio(self.ratio, "allocation.ratio")
            if self.ratios or self.default is not None:
                raise ConfigError("give allocation.ratio or allocation.ratios (+ default), not both")
            if self.macs_budget is not None:
                raise ConfigError(f"give allocation.ratio ({short(self.ratio)}) or allocation.macs_budget "
                                  f"({short(self.macs_budget)}), not both: with a budget the ratios are scaled to "
                                  "reach it (use ratios: {group: r} for relative ratios)")
        for name, r in self.ratios.items():
            self._check_ratio(r, f"allocation.ratios[{short(name)}]")
        if self.default is not None:
            self._check_ratio(self.default, "allocation.default")
        if self.macs_budget is not None:
            check_budget(self.macs_budget, "allocation.macs_budget")
        from prunetune.pruning.strategies import STRATEGIES

        allowed = STRATEGIES.get(self.strategy).params
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ConfigError(f"allocation strategy {self.strategy!r} takes no parameter {unknown[0]!r}; "
                              f"its parameters: {', '.join(allowed) or 'none'}")
        if "normalizer" in self.params:
            from prunetune.pruning.normalize import NORMALIZERS

            NORMALIZERS.get(self.params["normalizer"])
        if sized:
            self.check_sized()
        integer(self.min_keep, "allocation.min_keep", minimum=1)
        if self.round_to is not None:
            integer(self.round_to, "allocation.round_to", minimum=1)

    def check_sized(self) -> None:
        """It says how much to prune: a ratio, ratios, a budget or a strategy that needs none."""
        if self.strategy == "ratios" and self.ratio is None and not self.ratios and self.default is None and self.macs_budget is None:
            raise ConfigError("allocation needs one of: ratio, ratios (+ default), macs_budget, or a strategy")
        if self.strategy == "global" and self.ratio is None and self.macs_budget is None:
            raise ConfigError("allocation strategy 'global' needs macs_budget (or one global ratio)")

    def _check_ratio(self, ratio: object, what: str) -> None:
        check_ratio(ratio, what)
        if self.macs_budget is None and ratio > self.max_ratio:  # with a budget, ratios are only a shape
            raise ConfigError(f"{what} = {ratio!r} prunes more than allocation.max_ratio = {self.max_ratio:g} "
                              "of a group; lower it or raise allocation.max_ratio")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.strategy != "ratios":
            out["strategy"] = self.strategy
        for key in ("ratio", "default", "macs_budget", "round_to"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.ratios:
            out["ratios"] = dict(self.ratios)
        if self.min_keep != 1:
            out["min_keep"] = self.min_keep
        if self.max_ratio != DEFAULT_MAX_RATIO:
            out["max_ratio"] = self.max_ratio
        out.update(self.params)
        return out
