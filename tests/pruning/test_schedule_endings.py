"""How schedules end: the masked network of the last epoch is the removed one, the last pruned set is
what goes, re-scoring stays within the plan by default, and gradual steps follow the plan's order."""

from __future__ import annotations

import copy

import pytest
import torch

from prunetune.models import create_model
from prunetune.pruning.finetune import FinetuneConfig, evaluate, finetune
from prunetune.pruning.groups import find_groups
from prunetune.pruning.masking import ScheduleMasks, plan_ranking, run_schedule
from prunetune.pruning.plan import PruningPlan, make_plan
from prunetune.pruning.schedules import SCHEDULES
from prunetune.pruning.surgery import apply_plan
from prunetune.testing.entries import check_schedule_end
from tests.conftest import randomize_bn

SHAPE = (3, 16, 16)
# every schedule at its defaults, plus the variants whose endings differ
VARIANTS = [(name, {}) for name in SCHEDULES.names()] + [
    ("ghfp", {"base": "asfp"}), ("ghfp", {"ramp": "cosine", "alpha": 0.5}), ("iterative", {"rescore": True}),
    ("sfp", {"pool": "all"}), ("ghfp", {"base": "asfp", "hard_fraction": 0.0})]


def _setup(name: str = "tiny_resnet", seed: int = 0):
    torch.manual_seed(seed)
    model = randomize_bn(create_model(name))
    groups = find_groups(model, SHAPE)
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups},
                     {g.name: max(1, g.channels // 2) for g in groups})
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(16, *SHAPE, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(3)]
    return model, groups, plan, data


def _state_fn(name, params):
    schedule = SCHEDULES.get(name)
    return lambda e, t: schedule.state(e, t, **params)


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("total", [1, 2, 3, 4, 10])
def test_every_schedule_ends_fully_pruned_and_hard(name, params, total) -> None:
    check_schedule_end(name, total, **params)  # prunetune.testing: the last epoch fully pruned and hard


@pytest.mark.parametrize("name", ["sfp", "asfp"])
def test_only_the_published_sfp_end_is_soft(name) -> None:
    last = SCHEDULES.get(name).state(2, 3, hard_fraction=0.0)
    assert last.hard == 0.0  # the published end: soft to the last epoch, removal after it


@pytest.mark.parametrize(("name", "params"), [v for v in VARIANTS if v[0] != "hard"], ids=lambda v: str(v))
def test_a_soft_schedule_ends_with_the_bn_statistics_of_the_pruned_network(name, params) -> None:
    """With ``recalibrate_bn`` (the default) the removed network's BN statistics are re-estimated after
    the fine-tune, as after one-shot removal: the running statistics still held the soft epochs'.
    Without it, the network is the one the last epoch measured."""
    from prunetune.pruning.finetune import recalibrate_bn
    from prunetune.pruning.masking import run_schedule

    runs = {}
    for recalibrate in (False, True):
        model, groups, plan, data = _setup()
        cfg = FinetuneConfig(epochs=3, lr=0.05, amp=False, recalibrate_bn=recalibrate, recalibrate_batches=2)
        runs[recalibrate] = run_schedule(name, params, model, groups, plan, cfg, train_batches=data,
                                         eval_batches=data, recalibration=data, show_progress=False)
    (kept_model, kept_history, _), (final_model, _, _) = runs[False], runs[True]
    assert evaluate(kept_model, data) == kept_history[-1]["accuracy"]
    expected = copy.deepcopy(kept_model)
    recalibrate_bn(expected, data, max_batches=2)
    got, want = final_model.state_dict(), expected.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    norms = [k for k in want if k.endswith("running_var")]
    assert norms and any(not torch.equal(want[k], kept_model.state_dict()[k]) for k in norms)  # it changed them


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=lambda v: str(v))
def test_masked_network_of_the_last_epoch_is_the_removed_network(name, params) -> None:
    model, groups, plan, data = _setup()
    masks = ScheduleMasks(model, groups, plan, _state_fn(name, params), plan_ranking(plan))
    cfg = FinetuneConfig(epochs=3, lr=0.05, amp=False)
    history = finetune(model, data, cfg, callbacks=[masks], eval_batches=data, show_progress=False)
    x = torch.randn(8, *SHAPE)
    with torch.no_grad():
        masked = model.eval()(x)  # the network the last epoch trained and measured, gates on
    final = masks.finish()
    removed = apply_plan(copy.deepcopy(model), final, groups).eval()
    with torch.no_grad():
        assert torch.allclose(masked, removed(x), atol=1e-5)
    assert evaluate(removed, data) == history[-1]["accuracy"]
    assert final.keep_counts == plan.keep_counts


def test_finish_removes_the_last_pruned_set_not_the_first_ranking() -> None:
    """The audit's repro: after a re-score picks other filters, those (not the plan's) are removed."""
    model, groups, plan, _ = _setup("tiny_convnet")
    name = "conv1"  # 8 filters, 4 planned
    planned = plan_ranking(plan)[name]
    kept = list(plan.kept[name])
    state = _state_fn("sfp", {"hard_fraction": 0.0, "pool": "all"})
    masks = ScheduleMasks(model, groups, plan, state, plan_ranking(plan))
    masks.on_epoch_start(0, 2)
    assert sorted(masks.pruned[name]) == sorted(planned)
    with torch.no_grad():  # the zeroed filters regrow big, the kept ones fade
        model.conv1.weight[planned] = 5.0
        model.conv1.weight[kept] = 0.0
    masks.on_epoch_start(1, 2)
    assert sorted(masks.pruned[name]) == kept and not masks.hard[name]
    final = masks.finish()
    assert list(final.kept[name]) == sorted(planned)


@pytest.mark.parametrize("name", ["sfp", "asfp", "ghfp", "iterative"])
def test_rescoring_within_the_plan_keeps_the_plans_architecture(name) -> None:
    model, groups, plan, data = _setup()
    params = {"rescore": True} if name == "iterative" else {}
    with torch.no_grad():  # make the kept filters the weakest by norm: a pool of 'all' would take them
        for g in groups:
            for layer in g.out_layers:
                dict(model.named_modules())[layer].weight[list(plan.kept[g.name])] *= 1e-3
    _, _, final = run_schedule(name, params, model, groups, plan, FinetuneConfig(epochs=3, lr=0.01, amp=False),
                               train_batches=data, show_progress=False)
    assert final.kept == plan.kept


def test_rescoring_over_all_channels_may_change_which_are_kept() -> None:
    model, groups, plan, data = _setup()
    with torch.no_grad():
        for g in groups:
            for layer in g.out_layers:
                dict(model.named_modules())[layer].weight[list(plan.kept[g.name])] *= 1e-3
    _, _, final = run_schedule("sfp", {"pool": "all", "hard_fraction": 0.0}, model, groups, plan,
                               FinetuneConfig(epochs=2, lr=1e-4, amp=False), train_batches=data, show_progress=False)
    assert final.kept != plan.kept and final.keep_counts == plan.keep_counts


def test_plans_record_the_prune_order_and_gradual_steps_follow_it() -> None:
    model, groups, _, data = _setup("tiny_convnet")
    scores = {g.name: torch.arange(g.channels, 0, -1, dtype=torch.float64) for g in groups}  # index 0 best
    plan = make_plan(groups, scores, {g.name: g.channels // 2 for g in groups})
    assert plan.order["conv2"] == tuple(range(15, 7, -1))  # least important (lowest score) first
    again = PruningPlan.from_json(plan.to_json())
    assert again.order == plan.order and again == plan
    masks = ScheduleMasks(model, groups, again, _state_fn("iterative", {"steps": 2, "hard_fraction": 0.0}),
                          plan_ranking(again))
    masks.on_epoch_start(0, 4)
    assert masks.hard["conv2"] == [15, 14, 13, 12]  # by the recorded order, not by index
    masks.hooks.remove()


def test_iterative_rescore_picks_each_step_by_the_current_weights() -> None:
    model, groups, plan, _ = _setup("tiny_convnet")
    planned = plan_ranking(plan)["conv2"]
    masks = ScheduleMasks(model, groups, plan, _state_fn("iterative", {"steps": 2, "rescore": True,
                                                                      "hard_fraction": 0.0}), plan_ranking(plan))
    masks.on_epoch_start(0, 4)
    first = list(masks.hard["conv2"])
    rest = [c for c in planned if c not in first]
    with torch.no_grad():
        model.conv2.weight[rest[-1]] = 0.0  # the plan ranks it last; the weights now say it goes next
    masks.on_epoch_start(2, 4)
    assert masks.hard["conv2"][len(first)] == rest[-1]
    masks.hooks.remove()
