"""Blends: weighted sums of per-group normalised scores from several criteria (the recipe's
``criterion:`` section that names them is :class:`prunetune.recipes.criterion.CriterionSpec`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError
from prunetune.pruning.normalize import get_normalizer


def blend_scores(
    table: Mapping[str, Mapping[str, Tensor]], weights: Mapping[str, float], *, normalizer: str = "rank"
) -> dict[str, Tensor]:
    """``{group: Σ_c w_c · normalize(table[c][group])}`` over the criteria with non-zero weight."""
    norm = get_normalizer(normalizer)
    active = {c: float(w) for c, w in weights.items() if w > 0}
    missing = [c for c in active if c not in table]
    if missing:
        raise ConfigError(f"no scores for criterion {missing[0]!r}; scored: {sorted(table)}")
    groups = next(iter(table[c] for c in active)).keys()
    out = {}
    for g in groups:
        out[g] = sum(w * _normalized(norm, normalizer, table[c][g].to(torch.float64), c, g) for c, w in active.items())
    return out


def _normalized(norm, name: str, scores: Tensor, criterion: str, group: str) -> Tensor:
    """``norm(scores)``, refused unless one finite value per score: a normaliser's NaN was blamed on the
    criterion whose (finite) scores it was given."""
    out = norm(scores)
    if not bool(torch.isfinite(scores).all()):  # the criterion's own: its check names it
        return out
    if not isinstance(out, Tensor) or out.shape != scores.shape or not bool(torch.isfinite(out).all()):
        what = "non-finite values" if isinstance(out, Tensor) and out.shape == scores.shape else "another shape"
        raise ConfigError(f"normalizer {name!r} gave {what} for the {scores.numel()} finite {criterion!r} scores of "
                          f"group {group!r}; fix the normalizer or choose another")
    return out
