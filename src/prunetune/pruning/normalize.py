"""Per-group normalisers: put scores of different criteria on one scale before blending."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from prunetune._registry import Registry

Normalizer = Callable[[Tensor], Tensor]
NORMALIZERS: Registry[Normalizer] = Registry("normalizer", pluggable=True, entry=callable,
                                               how="a function of a score tensor to a tensor of its shape")


@NORMALIZERS.register("none")
def identity(scores: Tensor) -> Tensor:
    """Scores unchanged."""
    return scores.to(torch.float64)


@NORMALIZERS.register("max")
def by_max(scores: Tensor) -> Tensor:
    """Divide by the largest absolute score (all-zero stays zero)."""
    s = scores.to(torch.float64)
    top = s.abs().max()
    return s / top if top > 0 else torch.zeros_like(s)


@NORMALIZERS.register("mean")
def by_mean(scores: Tensor) -> Tensor:
    """Divide by the mean absolute score (all-zero stays zero): Torch-Pruning's default group normaliser."""
    s = scores.to(torch.float64)
    mean = s.abs().mean()
    return s / mean if mean > 0 else torch.zeros_like(s)


@NORMALIZERS.register("minmax")
def by_minmax(scores: Tensor) -> Tensor:
    """Scale into [0, 1] (constant scores become 0)."""
    s = scores.to(torch.float64)
    span = s.max() - s.min()
    return (s - s.min()) / span if span > 0 else torch.zeros_like(s)


@NORMALIZERS.register("rank")
def by_rank(scores: Tensor) -> Tensor:
    """Average rank scaled into [0, 1]: lowest 0, highest 1; ties share their mean rank."""
    s = scores.to(torch.float64).flatten()
    n = s.numel()
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    less = (s.unsqueeze(1) > s.unsqueeze(0)).sum(1).to(torch.float64)
    equal = (s.unsqueeze(1) == s.unsqueeze(0)).sum(1).to(torch.float64)
    return (less + (equal - 1) / 2) / (n - 1)


@NORMALIZERS.register("zscore")
def by_zscore(scores: Tensor) -> Tensor:
    """Subtract the mean, divide by the (population) standard deviation; constant scores become 0."""
    s = scores.to(torch.float64)
    std = s.std(unbiased=False) if s.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
    return (s - s.mean()) / std if std > 0 else torch.zeros_like(s)


def get_normalizer(normalizer: str | Normalizer) -> Normalizer:
    """Accept a registered name or a callable."""
    return normalizer if callable(normalizer) else NORMALIZERS.get(normalizer)
