"""The Pareto front and the picks on hand-made points: ties, duplicates, one point, NaN, budgets."""

from __future__ import annotations

import numpy as np
import pytest

from prunetune.exceptions import ConfigError
from prunetune.tracking.pareto import front_mask, knee_index, max_acc_index, pareto_mask, pick_index


def test_front_of_hand_made_points() -> None:
    acc = [0.90, 0.95, 0.80, 0.93, 0.70]
    macs = [50, 80, 30, 90, 30]
    # (0.93, 90) is dominated by (0.95, 80); (0.70, 30) by (0.80, 30)
    assert front_mask(acc, macs).tolist() == [True, True, True, False, False]


def test_identical_points_are_all_on_the_front() -> None:
    acc = [0.9, 0.9, 0.8]
    macs = [50, 50, 60]
    assert front_mask(acc, macs).tolist() == [True, True, False]


def test_ties_in_one_objective() -> None:
    # same accuracy, more MACs: dominated; same MACs, less accuracy: dominated
    assert front_mask([0.9, 0.9, 0.85], [40, 50, 40]).tolist() == [True, False, False]


def test_one_point_is_its_own_front_and_empty_is_empty() -> None:
    assert front_mask([0.5], [10]).tolist() == [True]
    assert front_mask([], []).tolist() == []
    assert knee_index([0.5], [10]) == 0


def test_nan_rows_are_never_on_the_front() -> None:
    assert front_mask([np.nan, 0.5, 0.6], [10, 20, np.nan]).tolist() == [False, True, False]


def test_directions_are_normalised() -> None:
    values = [[1, 1], [2, 2], [0, 3]]
    assert pareto_mask(values, (False, False)).tolist() == [True, False, True]
    assert pareto_mask(values, (True, True)).tolist() == [False, True, True]
    with pytest.raises(ConfigError, match="directions"):
        pareto_mask(values, (True,))


def test_knee_is_the_point_farthest_from_the_chord() -> None:
    # a front bending at (macs 30, acc 0.9); a dominated point that must not matter
    macs = [10, 30, 60, 100, 70]
    acc = [0.50, 0.90, 0.95, 0.97, 0.60]
    assert knee_index(acc, macs) == 1


def test_knee_of_two_points_or_a_straight_front_is_the_most_accurate() -> None:
    assert knee_index([0.8, 0.9], [10, 20]) == 1
    assert knee_index([0.7, 0.8, 0.9], [10, 20, 30]) == 2


def test_max_acc_within_budget_prefers_cheaper_on_ties() -> None:
    acc = [0.9, 0.95, 0.95, 0.97]
    ratio = [0.3, 0.45, 0.40, 0.6]
    assert max_acc_index(acc, ratio, 0.5) == 2
    assert max_acc_index(acc, ratio, None) == 3
    with pytest.raises(ConfigError, match=r"cheapest trial keeps 0\.3000 .* raise --budget"):
        max_acc_index(acc, ratio, 0.1)


def test_pick_dispatch_and_knee_within_budget() -> None:
    macs = [10, 30, 60, 100]
    acc = [0.50, 0.90, 0.95, 0.97]
    ratio = [0.1, 0.3, 0.6, 1.0]
    assert pick_index("knee", acc, macs, ratio, 1.0) == 1
    assert pick_index("knee", acc, macs, ratio, 0.2) == 0
    assert pick_index("max-acc", acc, macs, ratio, 0.7) == 2
    with pytest.raises(ConfigError, match="unknown pick 'best'"):
        pick_index("best", acc, macs, ratio)
    with pytest.raises(ConfigError, match="no finished trial within"):
        pick_index("knee", acc, macs, ratio, 0.05)
