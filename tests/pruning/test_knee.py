"""When a partial CMI curve settles its knee: every completion the bounds allow has that knee."""

from __future__ import annotations

import pytest
import torch

from prunetune.pruning.knee import knee_keep, knee_settled


def _completions(remainder: float, rest: int, slack: float, gen: torch.Generator, count: int = 60):
    """Unknown values of sum ``remainder``, each at least ``-slack``: extreme and random ones."""
    hi = remainder + (rest - 1) * slack
    yield torch.full((rest,), remainder / rest)
    if rest > 1:
        yield torch.cat([torch.tensor([hi]), torch.full((rest - 1,), -slack)])  # one takes all
        yield torch.cat([torch.full((rest - 1,), (remainder + slack) / (rest - 1)), torch.tensor([-slack])])
    for _ in range(count):
        w = torch.rand(rest, generator=gen, dtype=torch.float64) ** 4
        yield -slack + (remainder + rest * slack) * w / w.sum()


def _geometric(ratio: float, total: int) -> torch.Tensor:
    return ratio ** torch.arange(total, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(6))
def test_a_settled_knee_is_the_knee_of_every_completion(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    total = int(torch.randint(6, 40, (1,), generator=gen))
    ratio = 0.35 + 0.4 * float(torch.rand(1, generator=gen, dtype=torch.float64))
    curve = _geometric(ratio, total) * (1 + 0.3 * torch.rand(total, generator=gen, dtype=torch.float64))
    settled_at = None
    for k in range(2, total):
        knee = knee_settled(curve[:k], float(curve[k:].sum()), total, 1e-9)
        if knee is None:
            continue
        settled_at = settled_at or k
        assert knee == knee_keep(curve)  # the full curve is one completion
        for tail in _completions(float(curve[k:].sum()), total - k, 1e-9, gen):
            assert knee_keep(torch.cat([curve[:k], tail])) == knee
    assert settled_at is not None and settled_at < total - 1  # it does settle before the end


def test_nothing_is_settled_while_an_unknown_value_could_move_the_knee() -> None:
    # a flat start: whether the curve drops at 3 or later depends on the unknown values
    assert knee_settled(torch.tensor([1.0, 0.99, 0.98]), 5.0, 10, 1e-9) is None
    # the rest could still be the largest values
    assert knee_settled(torch.tensor([0.5, 0.4]), 1.0, 6, 1e-9) is None
    # a near-tie that float64 does not settle (float32-rounded, the same prefix looked settled)
    near = [1.0, 0.45000000028322806, 0.19999999909550675, 0.1]
    assert knee_settled(torch.tensor(near, dtype=torch.float64), 0.0, 5, 1e-9) is None
    # too little known, or nothing unknown
    assert knee_settled(torch.tensor([1.0]), 0.1, 6, 1e-9) is None
    assert knee_settled(torch.tensor([1.0, 0.5, 0.1]), 0.0, 3, 1e-9) is None
    # a sharp drop after two values, the rest provably small: the knee (the point farthest from the
    # chord, the third) is settled whatever follows
    assert knee_settled(torch.tensor([1.0, 0.95, 0.05]), 0.01, 20, 1e-9) == 3
    assert knee_keep(torch.tensor([1.0, 0.95, 0.05] + [0.01 / 17] * 17)) == 3


def test_a_knee_that_needs_the_slack_is_not_settled() -> None:
    """Unknown values below -slack would be outside the bounds: a larger slack settles later."""
    curve = _geometric(0.5, 24)
    first = [next(k for k in range(2, 24) if knee_settled(curve[:k], float(curve[k:].sum()), 24, s) is not None)
             for s in (1e-9, 1e-3, 1e-2)]
    assert first == sorted(first) and first[0] < first[-1]


def test_random_partial_curves_settle_only_when_every_completion_agrees() -> None:
    """Short curves of any shape, remainders up to three times the prefix's largest value: whenever a
    knee is settled, the extreme completions (one unknown value takes all, even shares) and random
    ones give it."""
    gen = torch.Generator().manual_seed(1)
    settled = 0
    for _ in range(4000):
        total = int(torch.randint(4, 12, (1,), generator=gen))
        k = int(torch.randint(2, total, (1,), generator=gen))
        prefix = torch.rand(k, generator=gen, dtype=torch.float64) ** 2
        remainder = 3 * float(prefix.max()) * float(torch.rand(1, generator=gen, dtype=torch.float64))
        knee = knee_settled(prefix, remainder, total, 1e-9)
        if knee is None:
            continue
        settled += 1
        for tail in _completions(remainder, total - k, 1e-9, gen, count=5):
            assert knee_keep(torch.cat([prefix, tail])) == knee
    assert settled > 50
