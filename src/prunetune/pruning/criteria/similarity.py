"""The SFS and DFS+SFS removal orders (Li et al., "Feature Statistics Guided Efficient Filter
Pruning", arXiv 2005.12193), as plain functions of a cosine matrix and the M-std.

Both return a removal order: a list of all C channel indices, least important (removed first)
first, the last survivor last.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def sfs_order(cos: Tensor, mstd: Tensor, candidates: list[int] | None = None) -> list[int]:
    """Iterative SFS removal among ``candidates`` (default: all channels).

    Repeatedly take the most similar remaining pair (largest cosine; ties: lowest row index, then
    lowest column index) and remove the member with the lower M-std (equal M-std: the higher
    index), until one channel is left, which comes last.

    Args:
        cos: ``Tensor[C, C]`` symmetric similarity.
        mstd: ``Tensor[C]`` M-std of each channel.
        candidates: the channel indices to rank.

    Returns:
        The candidates in removal order.
    """
    idx = list(range(cos.shape[0])) if candidates is None else list(candidates)
    if len(idx) <= 1:
        return idx
    # NOTE: C is small (≤ a few thousand) and the loop is sequential: numpy keeps the per-step
    # overhead at a few µs; argmax/max take the first maximum, as torch's do
    sel = np.asarray(idx, dtype=np.int64)
    sim = cos.detach().to("cpu", torch.float64).numpy()[np.ix_(sel, sel)].copy()
    std = mstd.detach().to("cpu", torch.float64).numpy()[sel].tolist()
    np.fill_diagonal(sim, -math.inf)
    alive = np.ones(len(idx), dtype=bool)
    row_arg = sim.argmax(axis=1)
    row_max = sim[np.arange(len(idx)), row_arg]
    removed: list[int] = []
    for _ in range(len(idx) - 1):
        i = int(row_max.argmax())
        j = int(row_arg[i])
        a, b = min(i, j), max(i, j)
        r = a if std[a] < std[b] else b
        removed.append(r)
        alive[r] = False
        sim[r, :] = -math.inf
        sim[:, r] = -math.inf
        row_max[r] = -math.inf
        # NOTE: only rows whose best partner was r lose their maximum; refresh just those
        stale = np.flatnonzero(alive & (row_arg == r))
        if stale.size:
            row_arg[stale] = sim[stale].argmax(axis=1)
            row_max[stale] = sim[stale, row_arg[stale]]
    removed.append(int(np.flatnonzero(alive)[0]))
    return [idx[k] for k in removed]


def dfs_order(mstd: Tensor) -> list[int]:
    """All channels by ascending M-std (equal M-std: the higher index first)."""
    std = mstd.detach().to("cpu", torch.float64)
    c = std.numel()
    # sort by (M-std, −index): sort descending index first, then a stable sort by M-std
    rev = torch.arange(c - 1, -1, -1)
    return rev[torch.argsort(std[rev], stable=True)].tolist()


def dfs_sfs_order(cos: Tensor, mstd: Tensor, dfs_fraction: float) -> list[int]:
    """DFS then SFS: the floor(dfs_fraction·C) lowest-M-std channels first (by M-std), then the
    survivors in SFS removal order."""
    c = mstd.numel()
    n_dfs = min(c, math.floor(dfs_fraction * c + 1e-9))
    by_std = dfs_order(mstd)
    dropped = by_std[:n_dfs]
    survivors = sorted(by_std[n_dfs:])
    return dropped + sfs_order(cos, mstd, survivors)
