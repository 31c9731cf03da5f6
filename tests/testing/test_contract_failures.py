"""The contract checks of :mod:`prunetune.testing` catch broken entries with a one-line message, also
under ``python -O`` (they are explicit checks, not ``assert`` statements)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from prunetune.exceptions import ConfigError
from prunetune.pruning.allocation import KeepRule, keep_for_budget
from prunetune.pruning.normalize import NORMALIZERS
from prunetune.pruning.schedules import SCHEDULES, EpochState, Schedule
from prunetune.pruning.strategies import STRATEGIES
from prunetune.pruning.strategies.base import Strategy
from prunetune.testing import check_model, check_normalizer, check_schedule, check_strategy


def _strategy(monkeypatch, fn) -> str:
    monkeypatch.setitem(STRATEGIES._items, "broken", Strategy("broken", fn))
    return "broken"


def _fitting(groups, *, rule: KeepRule, macs_budget: float, **_) -> dict[str, int]:
    return keep_for_budget(groups, macs_budget, rule=rule)


@pytest.mark.parametrize("fn, message", [
    (lambda groups, **kw: {g.name: g.channels for g in groups}, "MACs, over the budget 0.6"),
    (lambda groups, **kw: {groups.names[0]: 1}, "keeps 1, outside"),
    (lambda groups, **kw: {k: v + 0.5 for k, v in _fitting(groups, **kw).items()}, r"keeps float \d+\.5, not an integer"),
    (lambda groups, **kw: {k: torch.tensor(v) for k, v in _fitting(groups, **kw).items()}, "keeps tensor"),
    (lambda groups, **kw: {k: True for k in _fitting(groups, **kw)}, "keeps bool True"),
    (lambda groups, **kw: {**_fitting(groups, **kw), "bogus_group": 3}, "keeps 'bogus_group', which is not a group"),
    (lambda groups, **kw: {k: v for k, v in list(_fitting(groups, **kw).items())[1:]}, "has no keep count"),
])
def test_a_broken_strategy_fails_naming_itself_and_the_value(monkeypatch, fn, message) -> None:
    with pytest.raises(AssertionError, match=message) as err:
        check_strategy(_strategy(monkeypatch, fn))
    assert str(err.value).startswith("strategy 'broken' at macs_budget=0.6") and "\n" not in str(err.value)


def _schedule(monkeypatch, fn) -> str:
    monkeypatch.setitem(SCHEDULES._items, "broken", Schedule("broken", fn))
    return "broken"


@pytest.mark.parametrize("state, message", [
    (EpochState(prune=1.0, hard=1.0, pool="bogus"), "pool='bogus' is not one of 'plan', 'all'"),
    (EpochState(prune=True, hard=1.0), "prune=True is not a number in"),
    (EpochState(prune=1.0, hard=1.5), "hard=1.5 is not a number in"),
    (EpochState(prune=1.0, hard=1.0, rescore="yes"), "rescore='yes' is not a bool"),
    ({"prune": 1.0, "hard": 1.0}, "returns dict .*, not an EpochState"),
    ("hard", "returns str 'hard', not an EpochState"),
])
def test_a_broken_schedule_fails_naming_itself_and_the_value(monkeypatch, state, message) -> None:
    with pytest.raises(AssertionError, match=message) as err:
        check_schedule(_schedule(monkeypatch, lambda epoch, total: state))
    assert str(err.value).startswith("schedule 'broken' at epoch 0 of 1: ")


def test_a_falling_schedule_names_the_epoch(monkeypatch) -> None:
    name = _schedule(monkeypatch, lambda epoch, total: EpochState(prune=1.0, hard=1.0 if epoch != 1 else 0.5))
    with pytest.raises(AssertionError, match="schedule 'broken': hard falls from 1.0 to 0.5 at epoch 1 of 4"):
        check_schedule(name)


def test_a_normalizer_giving_nan_on_constant_scores_fails(monkeypatch) -> None:
    monkeypatch.setitem(NORMALIZERS._items, "broken", lambda s: s / (s.max() - s.min()))
    with pytest.raises(AssertionError, match=r"normalizer 'broken': scores \[1.0, 1.0, 1.0\] give tensor"):
        check_normalizer("broken")


def test_the_package_has_nothing_python_O_strips() -> None:
    """``python -O`` changes exactly two things in a module: it drops ``assert`` statements and makes
    ``__debug__`` false. The package uses neither, so every check above (and every check of the
    package) behaves the same under ``-O``. This replaced a run of the checks in a ``python -O``
    subprocess, which recompiled torch's modules for their optimised caches (18 s of the suite)."""
    import prunetune

    root = Path(prunetune.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Assert) or (isinstance(node, ast.Name) and node.id == "__debug__"):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert len(list(root.rglob("*.py"))) > 50 and not found, found


class _Flipped(nn.Module):
    """conv → BN → channel flip → conv → linear: only the second conv's group is prunable, so a MACs
    budget of 0.5 is out of reach (the smallest reachable fraction is about 0.66)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 2, 3, padding=1), nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.conv2(self.bn(self.conv1(x)).flip(1)).flatten(1))


def test_check_model_picks_a_budget_the_model_can_reach() -> None:
    check_model(_Flipped, (1, 8, 8))


def _small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))


def test_check_model_takes_a_module_and_leaves_it_as_it_is() -> None:
    model = _small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_model(model, (1, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training


def test_check_model_refuses_what_is_neither_a_factory_nor_a_module() -> None:
    with pytest.raises(ConfigError, match="check_model needs a model factory .*, got str"):
        check_model("resnet20", (1, 8, 8))
    with pytest.raises(AssertionError, match="the factory returned a str, not a torch.nn.Module"):
        check_model(lambda: "resnet20", (1, 8, 8))


def test_check_model_names_a_model_without_prunable_groups() -> None:
    with pytest.raises(AssertionError, match=r"model Conv2d: no prunable channel groups at input shape \(1, 8, 8\)"):
        check_model(nn.Conv2d(1, 2, 3), (1, 8, 8))


class _Heads(nn.Module):
    """Two heads in a dict, with a list holding a number and a None beside a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.cls, self.reg = nn.Linear(8, 3), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        f = torch.relu(self.b(torch.relu(self.a(x))))
        return {"logits": self.cls(f.mean((2, 3))), "aux": [self.reg(f), 3, None]}


class _ChannelsLastNorm(nn.Module):
    """A LayerNorm over the channels (ConvNeXt's): masking is not removal there, as documented."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.LayerNorm(8), nn.Conv2d(8, 4, 1), nn.Linear(4, 3)

    def forward(self, x):
        y = self.norm(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(torch.relu(self.b(y)).mean((2, 3)))


@pytest.mark.parametrize("factory", [_Heads, _ChannelsLastNorm])
def test_check_model_takes_nested_outputs_and_the_documented_norms(factory) -> None:
    check_model(factory, (1, 8, 8))


def test_check_model_still_finds_a_difference_in_one_head(monkeypatch) -> None:
    from prunetune.testing import models

    real = models.apply_plan

    def off_by_a_bit(model, plan, groups):
        pruned = real(model, plan, groups)
        with torch.no_grad():
            pruned.reg.bias.add_(1e-3)  # the second head's output moves; the logits do not
        return pruned

    monkeypatch.setattr(models, "apply_plan", off_by_a_bit)
    with pytest.raises(AssertionError, match=r"masking and removal differ by 0\.001 at the output\['aux'\]\[0\] "):
        check_model(_Heads, (1, 8, 8), seeds=1)


def test_an_output_object_without_tensors_in_containers_is_one_line_not_zero_groups() -> None:
    """A forward returning a dataclass was traced with no outputs: no groups, and no reason given."""
    from dataclasses import dataclass

    from prunetune.pruning.groups import find_groups

    @dataclass
    class Out:
        logits: torch.Tensor

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return Out(self.fc(torch.relu(self.a(x)).mean((2, 3))))

    with pytest.raises(ConfigError, match=r"^the model \(Net\) returns a Out, which holds no tensor in a tuple, list "
                                          r"or dict; return the logits"):
        find_groups(Net(), (1, 8, 8))


def test_a_type_error_of_the_forward_itself_is_raised_once_unchained() -> None:
    from prunetune.pruning.groups import find_groups

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.a(x) + "oops"

    with pytest.raises(TypeError, match="unsupported operand") as info:
        find_groups(Broken(), (1, 8, 8))
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_normalizer_failing_on_wide_groups_fails_its_check_and_the_global_threshold(monkeypatch) -> None:
    """NaN for groups of 5 or more passed check_normalizer (it tried 4 and 3 scores), and `global` then
    sorted the NaNs into an arbitrary plan without a word."""
    from prunetune.models import create_model
    from prunetune.pruning.groups import find_groups

    def nan_when_wide(s: torch.Tensor) -> torch.Tensor:
        return s / s.abs().mean() if s.numel() < 5 else torch.full_like(s, float("nan"))

    monkeypatch.setitem(NORMALIZERS._items, "nan_when_wide", nan_when_wide)
    with pytest.raises(AssertionError, match=r"normalizer 'nan_when_wide': scores \[0\.0, .* not 5 finite scores"):
        check_normalizer("nan_when_wide")
    groups = find_groups(create_model("resnet20", in_channels=1), (1, 16, 16))
    scores = {g.name: torch.rand(g.channels, generator=torch.Generator().manual_seed(1)) for g in groups}
    with pytest.raises(ConfigError, match=r"^normalizer 'nan_when_wide' gave non-finite values for a group of 16 "
                                          r"scores; the global threshold needs one finite score per channel"):
        STRATEGIES.get("global")(groups, rule=KeepRule(), macs_budget=0.5, scores=scores,
                                 params={"normalizer": "nan_when_wide"})


@pytest.mark.parametrize(("registry", "entry", "want"), [
    (NORMALIZERS, "rank", "must be callable, got str"),
    (STRATEGIES, len, "must be a Strategy, got builtin_function_or_method; register a function with"),
    (SCHEDULES, len, "must be a Schedule, got builtin_function_or_method"),
])
def test_an_entry_of_the_wrong_kind_is_refused_when_registered(registry, entry, want) -> None:
    """A string registered as a normaliser was accepted and failed after loading and scoring ('str' object
    is not callable); a plain function as a schedule or strategy failed on a missing attribute."""
    with pytest.raises(ConfigError, match=want):
        registry.register("wrong_kind_for_the_test", entry)
    assert "wrong_kind_for_the_test" not in registry


def test_a_criterion_that_is_not_a_criterion_is_refused_when_registered() -> None:
    from prunetune.pruning.criteria import CRITERIA

    with pytest.raises(ConfigError, match="criterion 'not_one': an entry must be a Criterion, got object; subclass"):
        CRITERIA.register("not_one", object())


@pytest.mark.parametrize(("returned", "message"), [
    ((0.5, 0.5), r"returned a tuple, not an EpochState"),
    (EpochState(prune=-0.5, hard=0.0), r"returned prune=-0\.5; it must be a fraction in \[0, 1\]"),
    (EpochState(prune=0.5, hard=0.0, soft_scale=5.0), r"returned soft_scale=5\.0"),
    (EpochState(prune=0.5, hard=0.0, pool="everything"), r"returned pool='everything'; it must be one of"),
])
def test_a_schedules_state_is_checked_when_the_fine_tune_reads_it(returned, message) -> None:
    """A tuple failed deep in the masks (AttributeError); out-of-range fractions ran without a word."""
    from prunetune.pruning.schedules import checked_state

    with pytest.raises(ConfigError, match=rf"^schedule 'mine' at epoch 2 of 4 {message}"):
        checked_state("mine", lambda epoch, total: returned, 1, 4)
    with pytest.raises(ConfigError, match=r"^schedule 'mine' at epoch 1 of 4 raised KeyError: 'step'"):
        checked_state("mine", lambda epoch, total: {}["step"], 0, 4)
    assert checked_state("sfp", SCHEDULES.get("sfp").state, 0, 4, **SCHEDULES.get("sfp").resolve({})).prune >= 0


def test_a_normalizers_nan_in_a_blend_is_blamed_on_the_normalizer(monkeypatch) -> None:
    from prunetune.pruning.blend import blend_scores

    monkeypatch.setitem(NORMALIZERS._items, "nan_norm", lambda s: torch.full_like(s, float("nan")))
    table = {"l1": {"conv1": torch.rand(8)}, "l2": {"conv1": torch.rand(8)}}
    with pytest.raises(ConfigError, match=r"^normalizer 'nan_norm' gave non-finite values for the 8 finite 'l1' "
                                          r"scores of group 'conv1'; fix the normalizer"):
        blend_scores(table, {"l1": 0.5, "l2": 0.5}, normalizer="nan_norm")
    assert set(blend_scores(table, {"l1": 0.5, "l2": 0.5})) == {"conv1"}


def _weight_criterion(monkeypatch, fn) -> str:
    from dataclasses import dataclass

    from prunetune.pruning.criteria import CRITERIA, WEIGHT, Criterion

    @dataclass(frozen=True)
    class Broken(Criterion):
        def needs(self, params):
            return frozenset({WEIGHT})

        def from_weight(self, weight, **params):
            return fn(weight)

    monkeypatch.setitem(CRITERIA._items, "broken_crit", Broken("broken_crit"))
    return "broken_crit"


@pytest.mark.parametrize("fn, message", [
    # writes into the weight it scores: in a model, the layer's weights change
    (lambda w: w.abs_().sum(dim=(1, 2, 3)).double(), "changes the weight it scores"),
    (lambda w: w.sum(dim=(1, 2, 3)).to(torch.complex64), "not one finite real score per channel of 6"),
    (lambda w: w.sum(dim=(1, 2, 3)) > 0, "not one finite real score per channel of 6"),
    # takes 4-D conv weights only: a Linear layer's group breaks it
    (lambda w: w.abs().sum(dim=(1, 2, 3)).double(), r"a Linear layer's \(6, 27\) weight"),
])
def test_a_broken_criterion_fails_its_check(monkeypatch, fn, message) -> None:
    """Complex or bool scores, a criterion writing into its weight, and one taking 4-D weights only
    passed ``check_criterion``."""
    from prunetune.testing import check_criterion

    with pytest.raises(AssertionError, match=rf"^criterion 'broken_crit': .*{message}"):
        check_criterion(_weight_criterion(monkeypatch, fn))


def test_check_all_names_an_entry_whose_own_method_raises(monkeypatch) -> None:
    """A criterion without needs() failed check_all with a bare NotImplementedError naming nothing."""
    from dataclasses import dataclass

    from prunetune.pruning.criteria import CRITERIA, Criterion
    from prunetune.testing import check_all

    @dataclass(frozen=True)
    class NoNeeds(Criterion):
        def from_weight(self, weight, **params):
            return weight.reshape(weight.shape[0], -1).abs().sum(1).double()

    monkeypatch.setitem(CRITERIA._items, "aaa_no_needs", NoNeeds("aaa_no_needs"))  # checked first
    with pytest.raises(AssertionError, match=r"^criterion 'aaa_no_needs': its check raised NotImplementedError: "
                                             r"criterion 'aaa_no_needs' does not say which evidence it needs; "
                                             r"define needs\(self, params\)"):
        check_all()
