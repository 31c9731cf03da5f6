"""Zolotarev rational approximations of √y (prunetune.pruning.criteria.sqrt_rational)."""

from __future__ import annotations

import numpy as np
import pytest

from prunetune.pruning.criteria.sqrt_rational import MAX_LEVEL, RELATIVE_ERROR, sqrt_rational


def _relative_error(level: int, points: int) -> float:
    m, a, b = sqrt_rational(level)
    y = np.logspace(-level, 0.0, points)
    a_, b_ = np.asarray(a), np.asarray(b)
    approx = m * y + (a_ * y[:, None] / (y[:, None] + b_)).sum(axis=1)
    return float(np.abs(approx / np.sqrt(y) - 1.0).max())


@pytest.mark.parametrize("level", range(1, MAX_LEVEL + 1))
def test_every_level_holds_its_relative_error_on_a_ten_times_denser_grid(level: int) -> None:
    m, a, b = sqrt_rational(level)
    assert m > 0 and min(a) > 0 and min(b) > 0 and len(a) == len(b)
    # the construction measures on 4001 points; between them the error may peak a little higher
    assert _relative_error(level, 40001) <= 1.5 * RELATIVE_ERROR


def test_poles_grow_by_about_four_per_decade_well_below_the_trapezoid_rules_116_nodes() -> None:
    counts = [len(sqrt_rational(level)[2]) for level in range(1, MAX_LEVEL + 1)]
    assert counts == sorted(counts) and counts[1] <= 13 and counts[15] <= 70 and counts[-1] < 116


@pytest.mark.parametrize("level", [2, 9, 16])
def test_poles_equal_a_high_precision_evaluation_of_zolotarevs_formula(level: int) -> None:
    mp = pytest.importorskip("mpmath")
    _, _, b = sqrt_rational(level)
    r = len(b)
    with mp.workdps(level + 25):
        d = mp.mpf(10) ** -level
        k_comp = mp.ellipk(1 - d)
        # c_i = δ·sc²(i·K'/(2r+1) | 1 − δ), computed directly (not through the imaginary transformation)
        ref = [d * (mp.ellipfun("sn", i * k_comp / (2 * r + 1), m=1 - d)
                    / mp.ellipfun("cn", i * k_comp / (2 * r + 1), m=1 - d)) ** 2
               for i in range(1, 2 * r + 1, 2)]
    np.testing.assert_allclose(b, [float(v) for v in ref], rtol=1e-12, atol=0)


@pytest.mark.parametrize("level", [0, MAX_LEVEL + 1, True, 2.0])
def test_a_level_outside_the_table_is_refused(level) -> None:
    with pytest.raises(ValueError, match="level must be an int"):
        sqrt_rational(level)


@pytest.mark.parametrize("level", [1, 7, MAX_LEVEL])
def test_below_its_interval_the_approximation_stays_between_zero_and_the_square_root(level: int) -> None:
    """What chip.rational_levels relies on for an eigenvalue below 10^(−level): the error there is at
    most √y itself."""
    m, a, b = sqrt_rational(level)
    y = np.logspace(-level - 30, -level, 3001)
    approx = m * y + (np.asarray(a) * y[:, None] / (y[:, None] + np.asarray(b))).sum(axis=1)
    assert bool((approx >= 0).all()) and bool((approx <= np.sqrt(y) * (1 + RELATIVE_ERROR)).all())
