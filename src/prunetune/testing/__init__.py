"""Contract suites for every registered entry, shipped so that a plugin can run them on its own.

Each ``check_*`` function takes a registered name (or, for models, a factory or a module), raises
:class:`AssertionError` naming the entry, what broke and the value, and returns ``None`` otherwise (the
checks are explicit, so ``python -O`` keeps them). They need torch and prunetune only (no pytest). The project's tests run them over every registry; a plugin
that registers, say, a schedule runs the same contract on it::

    from prunetune.pruning.schedules import SCHEDULES
    from prunetune.testing import check_schedule

    SCHEDULES.register("mine", ...)
    check_schedule("mine")

:func:`check_all` runs the criterion, normaliser, schedule, ratio-preset and strategy suites over their
registries (what a plugin's CI can call after importing the plugin). Models are not among them:
:func:`check_model` takes a factory (or a module) and an input shape; datasets have no suite here.
"""

from __future__ import annotations

from prunetune.testing.entries import (
    check_criterion,
    check_normalizer,
    check_ratio_preset,
    check_schedule,
    check_strategy,
)
from prunetune.testing.models import check_model, randomize_bn

__all__ = ["check_all", "check_criterion", "check_model", "check_normalizer", "check_ratio_preset",
           "check_schedule", "check_strategy", "randomize_bn"]


def check_all() -> list[str]:
    """Run the criterion, normaliser, schedule, ratio-preset and strategy contracts over their
    registries; returns the names checked as ``<kind>:<name>``."""
    from prunetune.pruning.criteria import CRITERIA
    from prunetune.pruning.normalize import NORMALIZERS
    from prunetune.pruning.schedules import SCHEDULES
    from prunetune.pruning.strategies import STRATEGIES
    from prunetune.spaces.presets import RATIO_SPACES

    checked = []
    for kind, registry, check in (("criterion", CRITERIA, check_criterion), ("normalizer", NORMALIZERS, check_normalizer),
                                  ("schedule", SCHEDULES, check_schedule), ("ratios", RATIO_SPACES, check_ratio_preset),
                                  ("strategy", STRATEGIES, check_strategy)):
        for name in registry.names():
            try:
                check(name)
            except AssertionError:
                raise  # names its entry already
            except Exception as exc:  # an entry's own error (a criterion without needs()): say whose
                raise AssertionError(f"{registry.kind} {name!r}: its check raised {type(exc).__name__}: {exc}") from exc
            checked.append(f"{kind}:{name}")
    return checked
