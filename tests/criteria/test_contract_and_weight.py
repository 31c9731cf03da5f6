"""Contract over every registered criterion and normaliser; hand-checked weight criteria; blends."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from prunetune.exceptions import ConfigError, UnknownNameError
from prunetune.pruning.blend import blend_scores
from prunetune.recipes.criterion import CriterionSpec
from prunetune.pruning.criteria import CRITERIA, score
from prunetune.pruning.normalize import NORMALIZERS, get_normalizer
from prunetune.testing import check_criterion, check_normalizer



@pytest.mark.parametrize("name", CRITERIA.names())
def test_every_criterion_is_finite_one_per_channel_and_deterministic(name: str) -> None:
    check_criterion(name)  # prunetune.testing: one finite score per channel, deterministic


@pytest.mark.parametrize("name", NORMALIZERS.names())
def test_every_normalizer_keeps_order_and_shape(name: str) -> None:
    check_normalizer(name)  # prunetune.testing: shape, order, no NaN on constant scores


def test_weight_criteria_by_hand() -> None:
    w = torch.tensor([[3.0, -4.0], [0.0, 1.0], [1.0, 1.0]])
    assert torch.allclose(score("l1", weight=w), torch.tensor([7.0, 1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(score("l2", weight=w), torch.tensor([5.0, 1.0, math.sqrt(2)], dtype=torch.float64))
    d01, d02, d12 = math.dist([3, -4], [0, 1]), math.dist([3, -4], [1, 1]), math.dist([0, 1], [1, 1])
    expected = torch.tensor([d01 + d02, d01 + d12, d02 + d12], dtype=torch.float64)
    assert torch.allclose(score("fpgm", weight=w), expected)
    assert torch.allclose(score("bn_scale", weight=torch.tensor([-0.5, 2.0])), torch.tensor([0.5, 2.0], dtype=torch.float64))
    r = score("random", weight=w, seed=1)
    assert torch.equal(r, score("random", weight=w, seed=1)) and not torch.equal(r, score("random", weight=w, seed=2))


def test_normalizers_by_hand() -> None:
    s = torch.tensor([1.0, 3.0, 2.0, 2.0])
    assert torch.allclose(get_normalizer("rank")(s), torch.tensor([0.0, 1.0, 0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(get_normalizer("max")(s), s.double() / 3)
    assert torch.allclose(get_normalizer("minmax")(s), torch.tensor([0.0, 1.0, 0.5, 0.5], dtype=torch.float64))
    z = get_normalizer("zscore")(s)
    assert abs(float(z.mean())) < 1e-12 and abs(float(z.std(unbiased=False)) - 1) < 1e-12


def test_blend_is_the_weighted_sum_of_normalised_scores() -> None:
    table = {"a": {"g": torch.tensor([1.0, 2.0, 3.0])}, "b": {"g": torch.tensor([30.0, 10.0, 20.0])}}
    out = blend_scores(table, {"a": 0.7, "b": 0.3}, normalizer="rank")["g"]
    assert torch.allclose(out, torch.tensor([0.3, 0.35, 1.0 - 0.15], dtype=torch.float64))
    only_a = blend_scores(table, {"a": 1.0, "b": 0.0}, normalizer="none")["g"]
    assert torch.equal(only_a, table["a"]["g"].double())


def test_criterion_spec_parsing_and_errors() -> None:
    spec = CriterionSpec.parse({"blend": {"capacity": 0.7, "independence": 0.3}, "normalizer": "rank",
                                "params": {"capacity": {"bins": 64}}})
    assert spec.criteria == ["capacity", "independence"] and spec.resolved_params("capacity")["bins"] == 64
    assert CriterionSpec.parse(spec.to_value()) == spec
    assert CriterionSpec.parse("chip").to_value() == "chip"
    with pytest.raises(UnknownNameError, match="did you mean 'chip'"):
        CriterionSpec.parse("chipp")
    with pytest.raises(ConfigError, match="'bins'"):
        CriterionSpec.parse({"name": "l1", "params": {"bins": 3}})
    with pytest.raises(ConfigError, match="all be 0"):
        CriterionSpec.parse({"blend": {"l1": 0, "l2": 0}})
    with pytest.raises(UnknownNameError, match="normalizer"):
        CriterionSpec.parse({"blend": {"l1": 1}, "normalizer": "ranks"})


def test_core_imports_no_ray_optuna_or_mlflow() -> None:
    code = ("import sys, prunetune, prunetune.pruning, prunetune.models, prunetune.data, prunetune.recipes.pipeline; "
            "bad = [m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _official_fpgm_mix_kept(w: torch.Tensor, rate_norm: float, rate_dist: float) -> set[int]:
    """FPGM's official get_filter_similar, step by step: keep the int(N·rate_norm) largest-L2
    filters, then drop the int(N·rate_dist) of them with the smallest distance sum among them."""
    n = w.shape[0]
    flat = w.reshape(n, -1).double()
    large = sorted(range(n), key=lambda j: -float(flat[j].norm()))[: int(n * rate_norm)]
    sums = {j: sum(float((flat[j] - flat[k]).norm()) for k in large) for j in large}
    small = sorted(large, key=lambda j: sums[j])[: int(n * rate_dist)]
    return set(large) - set(small)


def test_fpgm_mix_hand_case_drops_the_small_norm_outlier_first() -> None:
    # four filters clustered near (3, 0) and one tiny filter far from them: FPGM-only keeps the
    # tiny one longest (largest distance sum), FPGM-mix drops it first (lowest norm)
    w = torch.tensor([[0.1, 0.0], [3.0, 0.0], [3.2, 0.1], [2.9, -0.2], [3.0, 0.3]])
    assert int(score("fpgm", weight=w).argmax()) == 0
    mix = score("fpgm", weight=w, norm_ratio=0.2)
    rest = w[1:].double()
    sums = torch.cdist(rest, rest).sum(dim=1)  # among the four survivors only
    expected_order = [0] + (1 + torch.argsort(sums)).tolist()
    assert torch.argsort(mix).tolist() == expected_order
    torch.testing.assert_close(mix.sort().values, torch.arange(1, 6, dtype=torch.float64) / 5)


@pytest.mark.parametrize("rate_norm, rate_dist", [(0.9, 0.3), (0.7, 0.1), (1.0, 0.4), (0.75, 0.0)])
def test_fpgm_mix_top_k_reproduces_the_official_selection(rate_norm: float, rate_dist: float) -> None:
    gen = torch.Generator().manual_seed(3)
    for n in (8, 10, 16):
        w = torch.randn(n, 3, 3, 3, generator=gen)
        kept = _official_fpgm_mix_kept(w, rate_norm, rate_dist)
        s = score("fpgm", weight=w, norm_ratio=1.0 - rate_norm)
        top = set(torch.argsort(s, descending=True)[: len(kept)].tolist())
        assert top == kept, (n, rate_norm, rate_dist)


def test_fpgm_norm_ratio_is_validated_and_zero_is_plain_fpgm() -> None:
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(score("fpgm", weight=w, norm_ratio=0.0), score("fpgm", weight=w))
    with pytest.raises(ConfigError, match="norm_ratio"):
        score("fpgm", weight=w, norm_ratio=1.5)
