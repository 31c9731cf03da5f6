"""Parameter validation names the parameter and the bad value."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import prunetune.pruning.criteria.activation  # registers the activation criteria
import prunetune.pruning.criteria.information  # noqa: F401  (registers the criteria)
from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria.base import FeatureBatch, get_criterion, score
from prunetune.pruning.criteria.renyi import gram_matrix, renyi_entropy

BAD = [
    ("cmi", {"alpha": 0.0}, "'alpha'"),
    ("cmi", {"alpha": -1}, "'alpha'"),
    ("cmi", {"sigma_rule": "scott"}, "'sigma_rule'"),
    ("cmi", {"gamma": 0}, "'gamma'"),
    ("cmi", {"samples": 1}, "'samples'"),
    ("cmi", {"max_spatial": 0}, "'max_spatial'"),
    ("capacity", {"bins": 1}, "'bins'"),
    ("capacity", {"bins": 2.5}, "'bins'"),
    ("capacity", {"source": "weights"}, "'source'"),
    ("capacity", {"range_margin": -0.1}, "'range_margin'"),
    ("independence", {"source": "activations"}, "'source'"),
    ("chip", {"route": "svd"}, "'route'"),
    ("chip", {"max_memory_mb": 0}, "'max_memory_mb'"),
    ("dfs_sfs", {"dfs_fraction": 1.5}, "'dfs_fraction'"),
    ("hrank", {"tolerance": 1e-3}, "'tolerance'"),
]


@pytest.mark.parametrize(("name", "params", "key"), BAD)
def test_bad_parameter_is_named(name: str, params: dict[str, Any], key: str) -> None:
    crit = get_criterion(name)
    with pytest.raises(ConfigError, match=key):
        crit.resolve(params)
    with pytest.raises(ConfigError, match=key):
        score(
            name,
            feature_maps=torch.rand(4, 3, 2, 2),
            weight=torch.rand(3, 4),
            labels=torch.arange(4),
            **params,
        )


def test_accumulator_validates_partial_params() -> None:
    with pytest.raises(ConfigError, match="'route'"):
        get_criterion("chip").accumulator(3, route="fast")
    with pytest.raises(ConfigError, match="'bins'"):
        get_criterion("capacity").from_weight(torch.rand(3, 4), bins=0)


def test_missing_evidence_is_a_clear_error() -> None:
    acc = get_criterion("taylor").accumulator(3)
    with pytest.raises(ConfigError, match="gradients"):
        acc.update(
            FeatureBatch(activations=torch.rand(2, 3, 2, 2), preactivations=torch.rand(2, 3, 2, 2))
        )
    with pytest.raises(ConfigError, match="labels"):
        get_criterion("cmi").accumulator(3).update(FeatureBatch(activations=torch.rand(2, 3, 2, 2)))
    with pytest.raises(ConfigError, match="3 channels"):
        get_criterion("dfs").accumulator(3).update(FeatureBatch(activations=torch.rand(2, 4, 2, 2)))


def test_plain_functions_validate_too() -> None:
    with pytest.raises(ConfigError, match="'alpha'"):
        renyi_entropy(torch.eye(3, dtype=torch.float64) / 3, 0.0)
    with pytest.raises(ConfigError, match="'sigma_rule'"):
        gram_matrix(torch.rand(4, 2), sigma_rule="scott")
    with pytest.raises(ConfigError, match="'kernel'"):
        gram_matrix(torch.rand(4, 2), kernel="cosine")
