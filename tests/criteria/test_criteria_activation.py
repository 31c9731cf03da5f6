"""HRank, DFS, SFS, DFS+SFS and Taylor on hand-checked cases."""

from __future__ import annotations

import math

import torch

import prunetune.pruning.criteria.activation  # noqa: F401  (registers the criteria)
from prunetune.pruning.criteria.base import score
from prunetune.pruning.criteria.similarity import dfs_order, sfs_order


def _low_rank_maps(b: int, c: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randint(1, size, (b, c), generator=g)
    maps = torch.zeros(b, c, size, size, dtype=torch.float64)
    for i in range(b):
        for j in range(c):
            r = int(ranks[i, j])
            u = torch.randn(size, r, generator=g, dtype=torch.float64)
            v = torch.randn(r, size, generator=g, dtype=torch.float64)
            maps[i, j] = u @ v
    return maps, ranks.to(torch.float64)


def test_hrank_is_the_mean_matrix_rank() -> None:
    maps, ranks = _low_rank_maps(5, 4, 6, seed=0)
    out = score("hrank", feature_maps=maps)
    torch.testing.assert_close(out, ranks.mean(0), atol=0, rtol=0)
    direct = torch.linalg.matrix_rank(maps).to(torch.float64).mean(0)
    torch.testing.assert_close(out, direct, atol=0, rtol=0)


def test_dfs_hand_computed_and_zero_on_constant_maps() -> None:
    maps = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    maps[0, 0] = torch.tensor([[0.0, 2.0], [4.0, 6.0]])  # population std sqrt(5)
    maps[1, 0] = torch.tensor([[1.0, 1.0], [1.0, 3.0]])  # population std sqrt(0.75)
    maps[:, 1] = 7.0  # constant maps
    out = score("dfs", feature_maps=maps)
    expected = torch.tensor([(math.sqrt(5) + math.sqrt(0.75)) / 2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def _twin_maps(scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    maps = torch.relu(torch.randn(6, 5, 4, 4, generator=g, dtype=torch.float64))
    maps[:, 4] = scale * maps[:, 1]  # channel 4 duplicates channel 1 (cosine 1)
    return maps


def test_sfs_ranks_the_weaker_twin_lowest() -> None:
    out = score("sfs", feature_maps=_twin_maps(0.5))  # the twin has half the M-std
    assert int(out.argmin()) == 4
    assert all(out[4] < out[k] for k in (0, 2, 3))
    assert torch.isfinite(out).all() and sorted(out.tolist()) == [k / 5 for k in range(1, 6)]


def test_sfs_exact_duplicate_one_twin_is_lowest() -> None:
    out = score("sfs", feature_maps=_twin_maps(1.0))
    assert int(out.argmin()) in (1, 4)
    low_twin = int(out.argmin())
    assert all(out[low_twin] < out[k] for k in (0, 2, 3))


def test_sfs_zero_channel_gives_finite_scores() -> None:
    maps = _twin_maps(0.5)
    maps[:, 2] = 0.0
    out = score("sfs", feature_maps=maps)
    assert torch.isfinite(out).all()


def test_sfs_order_hand_example() -> None:
    cos = torch.tensor(
        [[1.0, 0.9, 0.1, 0.2], [0.9, 1.0, 0.3, 0.8], [0.1, 0.3, 1.0, 0.5], [0.2, 0.8, 0.5, 1.0]],
        dtype=torch.float64,
    )
    mstd = torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    # pairs: (0,1) 0.9 -> remove 0 (lower M-std); (1,3) 0.8 -> remove 3; (1,2) 0.3 -> remove 1
    assert sfs_order(cos, mstd) == [0, 3, 1, 2]
    assert sfs_order(cos, mstd, [1, 2, 3]) == [3, 1, 2]


def test_dfs_sfs_drops_the_lowest_m_std_first_then_sfs() -> None:
    maps = _twin_maps(0.5)
    maps[:, 0] *= 0.01  # lowest M-std
    maps[:, 3] *= 0.1  # second lowest
    out = score("dfs_sfs", feature_maps=maps, dfs_fraction=0.4)  # floor(0.4 * 5) = 2 by DFS
    assert out[0] == 1 / 5 and out[3] == 2 / 5
    # survivors 1, 2, 4: the weaker twin (4) goes first among them
    assert out[4] == 3 / 5 and {float(out[1]), float(out[2])} == {4 / 5, 1.0}
    torch.testing.assert_close(
        score("dfs_sfs", feature_maps=maps, dfs_fraction=0.0), score("sfs", feature_maps=maps)
    )
    mstd = score("dfs", feature_maps=maps)
    by_dfs = score("dfs_sfs", feature_maps=maps, dfs_fraction=1.0)
    assert torch.argsort(by_dfs).tolist() == torch.argsort(mstd).tolist() == dfs_order(mstd)


def test_taylor_hand_computed() -> None:
    z = torch.tensor(
        [[[[1.0, 2.0]], [[0.5, -1.0]]], [[[3.0, 0.0]], [[2.0, 2.0]]]], dtype=torch.float64
    )
    grad = torch.tensor(
        [[[[0.1, 0.2]], [[1.0, 1.0]]], [[[-0.1, 5.0]], [[0.5, -0.5]]]], dtype=torch.float64
    )
    labels = torch.tensor([0, 1])
    out = score(
        "taylor", feature_maps=torch.relu(z), preactivations=z, gradients=grad, labels=labels
    )
    # channel 0: 0.1 + 0.4 - 0.3 + 0 = 0.2; channel 1: 0.5 - 1 + 1 - 1 = -0.5
    torch.testing.assert_close(
        out, torch.tensor([0.04, 0.25], dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_two_dimensional_inputs_are_accepted() -> None:
    x = torch.relu(torch.randn(8, 6, dtype=torch.float64))
    for name in ("hrank", "chip", "dfs", "sfs", "dfs_sfs"):
        out = score(name, feature_maps=x)
        assert out.shape == (6,) and torch.isfinite(out).all()
