"""``score()`` refuses bad evidence with one ConfigError naming the argument, before any criterion
runs: wrong rank or length, an empty dimension, NaN or inf, a complex dtype, the meta device."""

from __future__ import annotations

import pytest
import torch

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria import CRITERIA, GRADIENT, LABELS, WEIGHT, score

GEN = torch.Generator().manual_seed(0)
FM = torch.randn(8, 6, 5, 5, generator=GEN).relu()
W = torch.randn(6, 3, 3, 3, generator=GEN)
LAB = torch.randint(0, 3, (8,), generator=GEN)
GRAD = torch.randn(8, 6, 5, 5, generator=GEN)


def _with(x: torch.Tensor, index: tuple[int, ...], value: float) -> torch.Tensor:
    x = x.clone()
    x[index] = value
    return x


def _score(name: str, fm=FM, w=W, lab=LAB, grad=GRAD) -> torch.Tensor:
    needs = CRITERIA.get(name).needs(CRITERIA.get(name).resolve(None))
    if WEIGHT in needs:
        return score(name, weight=w)
    extra = {"labels": lab} if LABELS in needs else {}
    return score(name, feature_maps=fm, **extra, **({"gradients": grad} if GRADIENT in needs else {}))


def _reads(arg: str) -> list[str]:
    kind = WEIGHT if arg == "weight" else LABELS if arg == "labels" else GRADIENT if arg == "gradients" else None
    out = []
    for name in CRITERIA.names():
        needs = CRITERIA.get(name).needs(CRITERIA.get(name).resolve(None))
        if (kind in needs) if kind else WEIGHT not in needs:
            out.append(name)
    return out


BAD = {
    "feature_maps": [
        (FM[0], r"got \(6, 5, 5\) float32"),  # rank 3: one sample without its batch dimension
        (FM[:0], r"got \(0, 6, 5, 5\) float32"),
        (FM[:, :0], r"got \(8, 0, 5, 5\) float32"),
        (_with(FM, (0, 0, 0, 0), float("nan")), "holding NaN or inf"),
        (_with(FM, (1, 2, 3, 4), float("inf")), "holding NaN or inf"),
        (FM.to(torch.complex64), r"got \(8, 6, 5, 5\) complex64"),
        (FM.to("meta"), "on the meta device"),
        (FM.tolist(), "got list"),
    ],
    "weight": [
        (W[:, :0], r"got \(6, 0, 3, 3\) float32"),
        (W[0, 0, 0, 0], r"got \(\) float32"),
        (_with(W, (0, 0, 0, 0), float("nan")), "holding NaN or inf"),
        (_with(W, (1, 0, 0, 0), float("-inf")), "holding NaN or inf"),
        (W.to("meta"), "on the meta device"),
    ],
    "labels": [
        (LAB[:, None].expand(8, 2), r"an integer Tensor\[8\] .*got \(8, 2\) int64"),
        (LAB[:7], r"got \(7,\) int64"),
        (LAB.float(), r"got \(8,\) float32"),
    ],
    "gradients": [
        (GRAD[:, :3], r"a finite real Tensor\[8, 6, 5, 5\] .*got \(8, 3, 5, 5\) float32"),
        (_with(GRAD, (0, 0, 0, 0), float("nan")), "holding NaN or inf"),
    ],
}
CASES = [(name, arg, bad, message) for arg, cases in BAD.items() for name in _reads(arg) for bad, message in cases]


@pytest.mark.parametrize("name, arg, bad, message", CASES,
                         ids=[f"{n}-{a}-{i}" for i, (n, a, _, _) in enumerate(CASES)])
def test_bad_evidence_is_one_config_error_naming_the_argument(name, arg, bad, message) -> None:
    kwargs = {"feature_maps": "fm", "weight": "w", "labels": "lab", "gradients": "grad"}
    with pytest.raises(ConfigError, match=f"^criterion {name!r}: {arg} must be .*{message}") as err:
        _score(name, **{kwargs[arg]: bad})
    assert "\n" not in str(err.value)


def test_every_criterion_reads_each_kind_of_evidence_checked() -> None:
    assert all(_reads(arg) for arg in BAD) and "cmi" in _reads("labels") and "hrank" in _reads("feature_maps")


@pytest.mark.parametrize("name", CRITERIA.names())
def test_what_worked_still_works(name: str) -> None:
    for fm, w, grad in ((FM, W, GRAD), (FM.mean((2, 3)), W[:, 0, 0, 0], GRAD.mean((2, 3))),
                        ((FM * 10).long(), (W * 10).long(), (GRAD * 10).long()), (FM.half(), W.half(), GRAD.half())):
        out = _score(name, fm=fm, w=w, grad=grad)
        assert out.shape == (6,) and torch.isfinite(out).all()
