"""Matrix-based Rényi entropy identities and the greedy CMI ranking."""

from __future__ import annotations

import math

import pytest
import torch

from prunetune.pruning.criteria.renyi import (
    cmi_ranking,
    conditional_mutual_information,
    gram_matrix,
    joint_entropy,
    kernel_width,
    label_gram,
    mutual_information,
    normalize_gram,
    renyi_entropy,
)

ALPHAS = [0.5, 1.0, 1.01, 2.0, 3.0]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("n", [2, 7, 16])
def test_entropy_of_identity_over_n_is_log2_n(alpha: float, n: int) -> None:
    a = torch.eye(n, dtype=torch.float64) / n
    assert renyi_entropy(a, alpha).item() == pytest.approx(math.log2(n), abs=1e-10)


def test_alpha_two_frobenius_shortcut_equals_the_eigenvalue_formula() -> None:
    x = torch.randn(20, 3, dtype=torch.float64)
    a = normalize_gram(gram_matrix(x))
    lam = torch.linalg.eigvalsh(a).clamp(min=0)
    assert renyi_entropy(a, 2.0).item() == pytest.approx(
        -math.log2(float((lam**2).sum())), abs=1e-10
    )
    # alpha close to 1 approaches the Shannon form
    assert renyi_entropy(a, 1.0001).item() == pytest.approx(renyi_entropy(a, 1.0).item(), abs=1e-3)


def test_gram_normalisation_and_widths() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)  # distances 1, 3, 2
    assert kernel_width(x).item() == pytest.approx(2.0)
    # silverman: γ · s · n^(−1/(4+d)), s² = the unbiased variance summed over the dimensions
    assert kernel_width(x, sigma_rule="silverman", gamma=2.0).item() == pytest.approx(
        2.0 * math.sqrt(7 / 3) * 3 ** (-1 / 5)
    )
    x2 = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert kernel_width(x2, sigma_rule="silverman").item() == pytest.approx(
        math.sqrt(8 / 3) * 3 ** (-1 / 6)
    )
    assert kernel_width(torch.ones(4, 3, dtype=torch.float64), sigma_rule="silverman").item() == (
        pytest.approx(4 ** (-1 / 7))
    )  # constant samples: s falls back to 1
    k = gram_matrix(x, sigma=1.0)
    assert k[0, 1].item() == pytest.approx(math.exp(-0.5))
    a = normalize_gram(k)
    assert torch.trace(a).item() == pytest.approx(1.0)
    torch.testing.assert_close(a, a.T)


@pytest.mark.parametrize("alpha", [1.01, 2.0])
def test_information_of_a_variable_with_itself_is_its_entropy(alpha: float) -> None:
    y = torch.randint(0, 5, (60,), generator=torch.Generator().manual_seed(0))
    a = label_gram(y)
    assert mutual_information(a, a, alpha).item() == pytest.approx(
        renyi_entropy(a, alpha).item(), abs=1e-9
    )
    assert joint_entropy(a, alpha=alpha).item() == pytest.approx(
        renyi_entropy(a, alpha).item(), abs=1e-12
    )


def test_information_about_a_function_is_the_functions_entropy() -> None:
    x = torch.randint(0, 6, (80,), generator=torch.Generator().manual_seed(1))
    fx = x // 2
    i = mutual_information(label_gram(x), label_gram(fx), 1.01).item()
    assert i == pytest.approx(renyi_entropy(label_gram(fx), 1.01).item(), abs=1e-9)


def test_independent_draws_have_near_zero_information() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (400,), generator=g)
    ax, ay = label_gram(x), label_gram(y)
    assert abs(mutual_information(ax, ay, 1.01).item()) < 0.05 * renyi_entropy(ax, 1.01).item()
    xs = torch.randn(500, 1, generator=g, dtype=torch.float64)
    ys = torch.randn(500, 1, generator=g, dtype=torch.float64)
    gx, gy = normalize_gram(gram_matrix(xs)), normalize_gram(gram_matrix(ys))
    assert abs(mutual_information(gx, gy, 1.01).item()) < 0.05 * renyi_entropy(gx, 1.01).item()
    # and a dependent pair is far from zero
    gz = normalize_gram(gram_matrix(xs + 0.05 * ys))
    assert mutual_information(gx, gz, 1.01).item() > 0.5 * renyi_entropy(gx, 1.01).item()


@pytest.mark.parametrize("alpha", [1.01, 2.0])
def test_conditioning_on_the_variable_itself_leaves_nothing(alpha: float) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 4, (50,), generator=g)
    y = (x + torch.randint(0, 2, (50,), generator=g)) % 4  # dependent on x
    ax, ay = label_gram(x), label_gram(y)
    assert mutual_information(ay, ax, alpha).item() > 0.1
    assert conditional_mutual_information(ay, ax, ax, alpha).item() == pytest.approx(0.0, abs=1e-9)
    assert conditional_mutual_information(ay, ax, None, alpha).item() == pytest.approx(
        mutual_information(ay, ax, alpha).item(), abs=1e-12
    )


@pytest.mark.parametrize("alpha", [1.01, 2.0])
def test_greedy_cmi_picks_the_label_channel_first(alpha: float) -> None:
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 4, (64,), generator=g)
    maps = torch.randn(64, 6, 3, 3, generator=g, dtype=torch.float64)
    maps[:, 3] = 2.0 * y[:, None, None].to(torch.float64) + 0.01 * torch.randn(
        64, 3, 3, generator=g, dtype=torch.float64
    )
    order, values = cmi_ranking(maps, y, alpha=alpha)
    assert int(order[0]) == 3
    assert sorted(order.tolist()) == list(range(6))
    assert values.shape == (6,) and torch.isfinite(values).all()
    assert values[0] == values.max()


def test_greedy_cmi_max_steps_keeps_the_first_picks() -> None:
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 3, (40,), generator=g)
    maps = torch.randn(40, 5, 2, 2, generator=g, dtype=torch.float64)
    maps[:, 1] = y[:, None, None].to(torch.float64)
    full, full_values = cmi_ranking(maps, y)
    part, part_values = cmi_ranking(maps, y, max_steps=2)
    assert part[:2].tolist() == full[:2].tolist()
    torch.testing.assert_close(part_values[:2], full_values[:2])
    assert sorted(part.tolist()) == list(range(5))


@pytest.mark.parametrize("sigma_rule", ["silverman", "median"])
def test_cmi_ranking_is_invariant_to_scaling_the_maps(sigma_rule: str) -> None:
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 3, (48,), generator=g)
    maps = torch.relu(torch.randn(48, 6, 4, 4, generator=g, dtype=torch.float64))
    maps[:, 4] += y[:, None, None].to(torch.float64)  # the label channel must come first
    order, values = cmi_ranking(maps, y, sigma_rule=sigma_rule)
    assert int(order[0]) == 4 and order.tolist() != sorted(order.tolist())
    for scale in (5.0, 0.2):
        scaled, scaled_values = cmi_ranking(maps * scale, y, sigma_rule=sigma_rule)
        assert scaled.tolist() == order.tolist(), scale
        torch.testing.assert_close(scaled_values, values, rtol=0, atol=1e-9)


def test_cmi_exact_ties_go_to_the_lower_index() -> None:
    # channels 0 and 1 are the same map: their CMIs tie exactly in exact arithmetic, but a batched
    # eigvalsh may round them differently in the last bits (this case picked 1 over 0 before)
    g = torch.Generator().manual_seed(0)
    hits = 0
    for trial in range(24):
        n = int(torch.randint(5, 50, (1,), generator=g))
        c = int(torch.randint(2, 6, (1,), generator=g))
        y = torch.randint(0, 3, (n,), generator=g)
        maps = torch.randn(n, c, 3, 3, generator=g)
        i, j = sorted(torch.randperm(c, generator=g)[:2].tolist())
        maps[:, j] = maps[:, i]
        for steps in (None, 0):
            order = cmi_ranking(maps, y, alpha=(1.01, 2.0, 1.0)[trial % 3], max_steps=steps)[0]
            assert order.tolist().index(i) < order.tolist().index(j), (trial, steps)
        hits += 1
    assert hits == 24
