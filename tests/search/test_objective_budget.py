"""A trial whose pruned network counts above its MACs target raises, so Ray records it FAILED."""

from __future__ import annotations

import pytest

from prunetune.exceptions import BudgetExceededError
from prunetune.search import run_trial
from prunetune.spaces import RandomTrial
from tests.conftest import optimistic_channels


def test_trial_above_its_target_fails_with_the_reason(shared, monkeypatch) -> None:
    config, base, table, space = shared
    trial = space.define(RandomTrial(3))
    run_trial(trial, base, table)  # honest count: fine
    optimistic_channels(monkeypatch)
    with pytest.raises(BudgetExceededError, match="above its target"):
        run_trial(trial, base, table)
