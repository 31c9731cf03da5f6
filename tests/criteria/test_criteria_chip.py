"""CHIP: hand-checked identities and the fast routes against the per-image SVD definition."""

from __future__ import annotations

import math

import pytest
import torch

import prunetune.pruning.criteria.activation  # noqa: F401  (registers chip)
from prunetune.pruning.criteria.base import score
from prunetune.pruning.criteria.chip import chip_scores, chip_scores_svd


def _orthonormal_rows(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q[:k]


def test_orthogonal_rows_score_their_norms() -> None:
    norms = torch.tensor([[3.0, 1.0, 0.5, 2.0], [1.0, 4.0, 2.0, 0.25]], dtype=torch.float64)
    maps = torch.stack(
        [norms[i, :, None] * _orthonormal_rows(16, 4, seed=i) for i in range(2)]
    ).reshape(2, 4, 4, 4)
    per_image = chip_scores(maps)
    torch.testing.assert_close(per_image, norms, atol=1e-12, rtol=0)
    torch.testing.assert_close(score("chip", feature_maps=maps), norms.mean(0), atol=1e-12, rtol=0)


@pytest.mark.parametrize("route", ["auto", "gram", "sample"])
def test_duplicated_channel_scores_sqrt2_minus_1_of_its_norm(route: str) -> None:
    q = _orthonormal_rows(9, 3, seed=3)
    rows = torch.stack([2.0 * q[0], 2.0 * q[0], 5.0 * q[1], 1.5 * q[2]])  # rows 0 and 1 are twins
    ci = chip_scores(rows.reshape(1, 4, 3, 3), route=route)[0]
    expected = torch.tensor(
        [(math.sqrt(2) - 1) * 2.0, (math.sqrt(2) - 1) * 2.0, 5.0, 1.5], dtype=torch.float64
    )
    torch.testing.assert_close(ci, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(5, 6, 4, 4), (5, 12, 2, 2), (3, 1, 3, 3), (4, 7)])
@pytest.mark.parametrize("route", ["auto", "gram", "sample"])
def test_fast_routes_equal_the_svd_reference(shape: tuple[int, ...], route: str) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    maps = torch.relu(torch.randn(*shape, generator=g, dtype=torch.float64))
    ref = chip_scores_svd(maps)
    torch.testing.assert_close(chip_scores(maps, route=route), ref, atol=1e-8, rtol=0)
    torch.testing.assert_close(
        score("chip", feature_maps=maps, route=route), ref.mean(0), atol=1e-8, rtol=0
    )


def test_chunked_equals_unchunked_and_routes_agree() -> None:
    # chunked and whole batches round differently (the batched products block differently): up to
    # 4e-12 of the largest CI over 300 seeds, so the comparison is relative, with room
    maps = torch.randn(4, 10, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = chip_scores(maps)
    torch.testing.assert_close(chip_scores(maps, max_memory_mb=1e-4), full, atol=1e-10 * float(full.abs().max()), rtol=0)
    torch.testing.assert_close(
        chip_scores(maps, route="gram"), chip_scores(maps, route="sample"), atol=1e-8, rtol=0
    )


def test_scores_are_nonnegative_and_zero_channel_scores_zero() -> None:
    maps = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    maps[:, 2] = 0.0
    ci = chip_scores(maps)
    assert bool((ci >= -1e-12).all())
    torch.testing.assert_close(ci[:, 2], torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
