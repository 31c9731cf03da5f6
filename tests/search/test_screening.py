"""Screening without Ray: the adaptive-BN proxy, the hand recipes in the pool, the selection of the
proxy front, and what screened trials are enqueued with."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prunetune.exceptions import ConfigError
from prunetune.models import create_model
from prunetune.pruning.finetune import evaluate, recalibrate_bn
from prunetune.pruning.groups import find_groups
from prunetune.pruning.plan import make_plan
from prunetune.pruning.proxy import bn_proxy
from prunetune.pruning.surgery import apply_plan
from prunetune.search.screening import (
    LocalPool,
    ScreenSpec,
    evaluate_candidates,
    hand_params,
    run_screening,
    spread_targets,
    startup_trials,
    trial_points,
)
from prunetune.search.selection import Candidate, at_budget, select, spearman
from prunetune.spaces import SpaceSpec, build_space, plan_space, target_range, trial_recipe
from tests.conftest import randomize_bn

optuna = pytest.importorskip("optuna")


def test_proxy_equals_evaluating_the_pruned_model_after_recalibrating_bn() -> None:
    torch.manual_seed(0)
    model = randomize_bn(create_model("tiny_resnet"))
    groups = find_groups(model, (3, 16, 16))
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups}, {g.name: max(1, g.channels // 2) for g in groups})
    gen = torch.Generator().manual_seed(1)
    train = [(torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(4)]
    val = [(torch.randn(32, 3, 16, 16, generator=gen), torch.randint(0, 10, (32,), generator=gen)) for _ in range(2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    proxy = bn_proxy(model, groups, plan, bn_batches=train, val_batches=val, max_bn_batches=3)
    pruned = apply_plan(copy.deepcopy(model), plan, groups)
    recalibrate_bn(pruned, train, max_batches=3)
    assert proxy.accuracy == evaluate(pruned, val)
    with torch.no_grad():  # the likelihood: exp(−mean cross-entropy) over all images, by hand
        pruned.eval()
        logp = torch.cat([torch.log_softmax(pruned(x), 1).gather(1, y[:, None])[:, 0] for x, y in val])
    assert proxy.likelihood == pytest.approx(math.exp(float(logp.mean())), rel=1e-6)
    assert 0 < proxy.likelihood <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the dense model is untouched
    stale = evaluate(apply_plan(copy.deepcopy(model), plan, groups), val)
    assert isinstance(stale, float)


def _candidates(points):
    return [Candidate(i, {"target_macs": m, "i": i}, "sampled", m, p) for i, (m, p) in enumerate(points)]


def test_selection_is_the_proxy_front_spread_over_log_macs() -> None:
    front = [(0.12, 0.30), (0.15, 0.40), (0.2, 0.55), (0.25, 0.6), (0.3, 0.7), (0.4, 0.8), (0.5, 0.85)]
    dominated = [(0.2, 0.50), (0.245, 0.2), (0.4, 0.7), (0.45, 0.79)]  # 0.245: the log-middle
    pool = _candidates(front + dominated) + [Candidate(99, {"x": 1}, "sampled", math.nan, math.nan, "error")]
    chosen = select(pool, 4)
    assert len(chosen) == 4 and all(c.selected for c in chosen)
    picked = [(c.macs_ratio, c.proxy) for c in chosen]
    assert set(picked) <= set(front)  # only non-dominated candidates
    assert picked[0] == (0.12, 0.30) and (0.5, 0.85) in picked  # the cheapest first, then the far end
    logs = sorted(math.log(m) for m, _ in picked)
    assert min(b - a for a, b in zip(logs, logs[1:])) > 0.15 * math.log(0.5 / 0.12)  # spread, not clustered
    more = select(_candidates(front + dominated), 9)  # the front is too small: the next front fills in
    assert {(c.macs_ratio, c.proxy) for c in more} >= set(front) and len(more) == 9


def test_spread_targets_and_spearman() -> None:
    targets = spread_targets(0.125, 0.5, 5)
    assert targets[0] == pytest.approx(0.125) and targets[-1] == pytest.approx(0.5)
    ratios = [b / a for a, b in zip(targets, targets[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # even in log-MACs
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2], [1, 2]))


def test_random_start_up_follows_the_hand_recipes() -> None:
    assert startup_trials(192, 48) == 48 + 36 and startup_trials(20, 16) == 16 + 8


def test_screen_spec_parsing() -> None:
    assert ScreenSpec.parse(None).enabled and not ScreenSpec.parse(False).enabled
    assert ScreenSpec.parse({"candidates": 40}).count(12) == 40 and ScreenSpec().count(12) == 192
    for bad, match in [({"candidate": 3}, "unknown key 'candidate'"), ({"bn_batches": 0}, "bn_batches"),
                       ({"train_params": "x"}, "train_params"), ("yes", "screen must be")]:
        with pytest.raises(ConfigError, match=match):
            ScreenSpec.parse(bad)


@pytest.fixture(scope="module")
def resnet20_groups():
    return find_groups(create_model("resnet20", in_channels=1), (1, 16, 16))


def test_hand_params_are_the_uniform_and_global_recipes_of_each_criterion(resnet20_groups) -> None:
    from prunetune.pruning.allocation import KeepRule, keep_for_budget
    from prunetune.recipes.schema import Recipe

    spec = SpaceSpec(criteria=("l1", "fpgm"), allocations=("ratios", "global"))
    space = plan_space(build_space(spec, resnet20_groups, budget=0.5))
    low, high = target_range(spec, resnet20_groups, 0.5)
    hand = hand_params(spec, space, low, high, 4)
    assert len(hand) == 16
    assert [h["allocation"] for h in hand] == ["ratios"] * 8 + ["global"] * 8
    base = Recipe.from_dict({"model": {"name": "resnet20", "in_channels": 1}, "data": "digits", "criterion": "l1",
                             "allocation": {"macs_budget": 0.5}})
    for h in hand:
        weights = {k: v for k, v in h.items() if k.startswith("weight.")}
        assert sorted(weights.values()) == [0.0, 1.0]  # one criterion alone
        assert space.replay(h)
        a = trial_recipe(base, h, resnet20_groups).allocation
        if h["allocation"] == "global":
            assert a.strategy == "global" and a.macs_budget == pytest.approx(h["target_macs"])
            continue
        assert len({v for k, v in h.items() if k.startswith("ratio.")}) == 1  # one ratio for every stage
        uniform = keep_for_budget(resnet20_groups, h["target_macs"], rule=KeepRule(max_ratio=a.max_ratio))
        assert keep_for_budget(resnet20_groups, a.macs_budget, relative=a.ratios, rule=a.rule) == uniform
    only_global = hand_params(SpaceSpec(allocations=("global",)), space, low, high, 4)
    assert {h["allocation"] for h in only_global} == {"global"}
    assert hand_params(SpaceSpec(allocations=("cmi_knee",)), space, low, high, 4) == []


def test_screening_pool_holds_the_hand_recipes_and_only_plans_within_their_targets(shared) -> None:
    config, base, table, space = shared
    plans = plan_space(space)
    low, high = target_range(config.space, base.groups, 0.5, config.recipe.rule)
    hand = hand_params(config.space, plans, low, high, 3)
    pool = LocalPool(lambda params: evaluate_candidates(params, base, table, bn_batches=2, val_images=64))
    candidates = run_screening(plans, hand, 14, pool, seed=0, chunk=3)
    assert len(candidates) == 14 and [c.source for c in candidates[:len(hand)]] == ["hand"] * len(hand)
    assert [c.params for c in candidates[:len(hand)]] == hand
    ok = [c for c in candidates if c.ok]
    assert len(ok) == 14
    assert {c.params["allocation"] for c in candidates if c.source == "sampled"} == set(config.space.allocations)
    for c in ok:
        assert c.macs_ratio <= c.params["target_macs"] + 1e-9 <= 0.5 + 1e-9
        assert 0.0 <= c.proxy <= 1.0
    chosen = select(candidates, 4)

    def dominated(c):
        return any(o.proxy >= c.proxy and o.macs_ratio <= c.macs_ratio and (o.proxy, o.macs_ratio) !=
                   (c.proxy, c.macs_ratio) for o in ok)

    front = [c for c in ok if not dominated(c)]
    if len(front) >= 4:  # a front large enough: only non-dominated candidates
        assert not any(dominated(c) for c in chosen)
    else:  # the whole front, then the next one
        assert {c.number for c in front} <= {c.number for c in chosen} and len(chosen) == 4


def test_screened_trials_take_the_recipes_lr_and_first_schedule_or_leave_them_to_the_study(shared) -> None:
    config, base, table, space = shared
    full = build_space(SpaceSpec(criteria=("l1",), schedules=("ghfp", "hard"), lr=(0.01, 0.1)), base.groups,
                       budget=0.5)
    chosen = [Candidate(0, {"target_macs": 0.3, "ratio.stage1": 0.2, "ratio.stage2": 0.3, "ratio.stage3": 0.4},
                        "sampled", 0.3, 0.5)]
    fixed = {"finetune.lr": 0.05, "schedule": "ghfp", "schedule.ghfp.ramp": "cubic", "schedule.ghfp.base": "sfp",
             "schedule.ghfp.alpha": 0.0}
    (point,) = trial_points(chosen, full, fixed)
    assert point["finetune.lr"] == 0.05 and point["schedule"] == "ghfp" and point["target_macs"] == 0.3
    assert full.replay(point)["schedule.ghfp.base"] == "sfp"
    assert trial_points(chosen, full, {}) == [chosen[0].params]


def test_screening_evaluates_the_plan_its_trial_will_fine_tune(shared) -> None:
    """A single-choice part of the space (here the allocation) is a constant the trial gets from the
    space: the candidate is evaluated with it, not with the base recipe's fallback."""
    from prunetune.recipes.planning import build_plan

    config, base, table, _ = shared
    spec = SpaceSpec(criteria=("capacity", "l1"), normalizers=("rank",), allocations=("global",))
    plans = plan_space(build_space(spec, base.groups, budget=0.5, rule=config.recipe.rule))
    pool = LocalPool(lambda configs: evaluate_candidates(configs, base, table, bn_batches=1, val_images=64))
    for c in run_screening(plans, [], 3, pool, seed=0, chunk=3):
        trial_config = plans.replay(c.params)  # what the trial is built from: constants included
        assert trial_config["allocation"] == "global" and c.config == trial_config
        plan = build_plan(trial_recipe(base.recipe, trial_config, base.groups), base, table)
        assert c.macs_ratio == pytest.approx(plan.macs_ratio)


def test_the_proxy_of_a_class_sorted_val_dataset_sees_every_class(shared, monkeypatch) -> None:
    """A folder's val split lists its images class by class: the proxy's subset is random, not a prefix."""
    import dataclasses

    import prunetune.data as data_mod

    _, base, table, _ = shared
    val = base.splits.val
    order = torch.argsort(val.y, stable=True)
    by_class = torch.utils.data.TensorDataset(val.x[order], val.y[order])
    seen = {}
    real = data_mod.make_loader

    def spy(dataset, **kw):
        seen.setdefault("labels", {int(dataset[i][1]) for i in range(len(dataset))})
        return real(dataset, **kw)

    monkeypatch.setattr(data_mod, "make_loader", spy)
    shifted = dataclasses.replace(base, splits=dataclasses.replace(base.splits, val=by_class))
    evaluate_candidates([{"target_macs": 0.5}], shifted, table, bn_batches=1, val_images=60)
    assert len(seen["labels"]) == 10


def test_a_failing_candidate_is_recorded_not_raised(shared) -> None:
    config, base, table, space = shared
    results = evaluate_candidates([{"target_macs": 0.5, "allocation": "nonsense"}], base, table, bn_batches=1,
                                  val_images=32)
    (macs, proxy, error), = results
    assert math.isnan(macs) and math.isnan(proxy) and "nonsense" in error
    (macs, proxy, error, _, accuracy), = evaluate_candidates([{"target_macs": 0.5}], base, table, bn_batches=1,
                                                             val_images=32)
    assert error is None and 0 < proxy < 1 and 0 <= accuracy <= 1
    assert proxy != accuracy  # the likelihood ranks candidates, the accuracy rides along


def test_a_plan_cheaper_by_a_hair_but_worse_by_the_proxy_is_not_fine_tuned() -> None:
    from prunetune.search.selection import MACS_TOLERANCE

    front = [(0.12, 0.30), (0.2, 0.55), (0.3, 0.7), (0.5, 0.85)]
    hair = (0.12 * (1 - MACS_TOLERANCE / 4), 0.10)  # strictly non-dominated, 0.5% cheaper, 20 points worse
    chosen = select(_candidates([hair, *front]), 4)
    assert [(c.macs_ratio, c.proxy) for c in chosen] == front  # the cheapest worth a trial comes first
    far = (0.12 * (1 - 4 * MACS_TOLERANCE), 0.10)  # 8% cheaper: a real point of the front
    assert (far[0], far[1]) in [(c.macs_ratio, c.proxy) for c in select(_candidates([far, *front]), 4)]


def test_one_trial_goes_to_the_best_plan_at_the_budget() -> None:
    """A zoo_vgg search's case: near the budget the proxy saturates, so the plans at 49.9% tie with
    one at 40.9%, the tie goes to the cheaper plan, and the proxy front ended at 40.9% of a 50% budget.
    With the budget the best candidate within the MACs tolerance below it is fine-tuned too."""
    points = [(0.12, 0.55), (0.15, 0.78), (0.2, 0.87), (0.3, 0.94), (0.409, 0.9591),
              (0.499, 0.9591), (0.4995, 0.9591), (0.5, 0.9294), (0.486, 0.9405), (0.45, 0.944)]
    assert max(c.macs_ratio for c in select(_candidates(points), 4)) == 0.409  # the front stops short
    chosen = select(_candidates(points), 4, budget=0.5)
    picked = [(c.macs_ratio, c.proxy) for c in chosen]
    assert (0.4995, 0.9591) in picked  # the best proxy within 2% below the budget, ties to more MACs
    assert picked[:3] == [(0.12, 0.55), (0.2, 0.87), (0.3, 0.94)]  # then the front, spread from the cheapest
    assert at_budget(_candidates([*points, (0.485, 0.99)]), 0.5).macs_ratio == 0.4995  # 3% below: not at it
    assert [(c.macs_ratio, c.proxy) for c in select(_candidates(points), 1, budget=0.5)] == [(0.4995, 0.9591)]
    assert len({c.number for c in chosen}) == 4
    # the budget's plan is the front's own top where the proxy prefers it: nothing changes then
    plain = [(0.12, 0.55), (0.2, 0.87), (0.3, 0.94), (0.495, 0.97)]
    assert ([c.number for c in select(_candidates(plain), 3, budget=0.5)]
            == [c.number for c in select(_candidates(plain), 3)])
    assert select(_candidates([(0.3, 0.9)]), 2, budget=0.5)[0].macs_ratio == 0.3  # none near it: the front


def test_a_dense_front_is_thinned_not_collapsed() -> None:
    """Points 1.5% apart in MACs, proxy rising with MACs: every other one stays, and the selection
    still spans the range from the cheapest."""
    points = [(0.30 * 1.015 ** i, 0.5 + 0.01 * i) for i in range(35)]
    chosen = [c.macs_ratio for c in select(_candidates(points), 4)]
    assert min(chosen) <= 0.31 and max(chosen) >= 0.49
    logs = sorted(math.log(m) for m in chosen)
    assert min(b - a for a, b in zip(logs, logs[1:])) > 0.1  # spread, not the four most expensive


def test_the_hand_pool_is_at_most_half_the_pool(resnet20_groups) -> None:
    from prunetune.search.screening import hand_pool

    spec = SpaceSpec()  # the default space: 5 criteria, ratios and global: 10 hand recipes
    space = plan_space(build_space(spec, resnet20_groups, budget=0.5))
    low, high = target_range(spec, resnet20_groups, 0.5)
    assert len(hand_pool(spec, space, low, high, trials=12, count=192)) == 10 * 9  # 9 targets each
    small = hand_pool(spec, space, low, high, trials=1, count=16)
    assert len(small) == 8  # half the pool, not one of each of the 10 recipes
    tiny = hand_pool(spec, space, low, high, trials=1, count=4)
    assert [(h["allocation"], max(k for k, v in h.items() if k.startswith("weight.") and v == 1.0)) for h in tiny] \
        == [("ratios", "weight." + spec.criteria[0]), ("global", "weight." + spec.criteria[0])]
    assert len(hand_pool(spec, space, low, high, trials=1, count=1)) == 1
    assert hand_pool(SpaceSpec(allocations=("cmi_knee",)), space, low, high, trials=4, count=64) == []


@pytest.mark.parametrize("text", ['{"seconds": 1, "candidates": [{"bogus": 1}]}', '{"seconds": 1, "cand', "[]",
                                  '{"seconds": 1, "candidates": 3}', '{"seconds": "x", "candidates": []}',
                                  '{"seconds": 1, "candidates": [{"number": 0, "params": 5, "source": "hand"}]}'],
                         ids=["unknown-key", "truncated", "a-list", "candidates-an-int", "seconds-a-string",
                              "params-an-int"])
def test_a_damaged_screened_pool_is_one_error_naming_it(make_config, text) -> None:
    # a damaged screening.json (an interrupted search's pool, reused on resume) was a TypeError or
    # JSONDecodeError traceback
    from prunetune.search.screen_phase import SCREEN_FILE, screen

    config = make_config()
    exp = config.settings.experiment_dir
    exp.mkdir(parents=True)
    (exp / SCREEN_FILE).write_text(text)
    with pytest.raises(ConfigError, match=f"{SCREEN_FILE}.*damaged.*another --experiment"):
        screen(config, None, None, None, None, None)


def test_candidates_that_give_one_plan_are_fine_tuned_once() -> None:
    """A global threshold and uniform ratios at two targets may give one plan: its copies have equal MACs
    and proxy, so the next fronts held them, and each took a fine-tune of the same network."""
    front = [(0.2, 0.5), (0.3, 0.6), (0.4, 0.7)]
    pool = _candidates(front + [(0.3, 0.6), (0.3, 0.6), (0.25, 0.4)])  # two copies of the 0.3 plan, one other
    for c in pool:
        c.plan_id = f"plan-{c.macs_ratio}"
    chosen = select(pool, 4)
    assert [(c.macs_ratio, c.proxy) for c in chosen] == [(0.2, 0.5), (0.25, 0.4), (0.3, 0.6), (0.4, 0.7)]
    assert len({c.plan_id for c in chosen}) == 4
    assert [c.number for c in select(pool, 6)] == [0, 5, 1, 2]  # fewer than asked: no plan twice
    same_kept = _candidates([(0.2, 0.5), (0.2, 0.5)])
    same_kept[0].plan_id, same_kept[1].plan_id = "kept:order-a", "kept:order-b"  # the pruned ones in other orders
    assert len(select(same_kept, 2)) == 2  # a gradual schedule prunes them in that order: two trials
    assert len(select(same_kept, 2, by_order=False)) == 1  # one-shot: one network


def test_screening_records_what_identifies_a_plan(shared) -> None:
    """The identity of the plan each candidate gave: its kept channels and the order of the pruned ones,
    whatever parameters produced it."""
    from prunetune.pruning.plan import PruningPlan
    from prunetune.recipes.planning import build_plan
    from prunetune.search.screening import plan_identity

    _, base, table, _ = shared
    configs = [{"target_macs": 0.5}, {"target_macs": 0.3}]
    (_, _, _, a, _), (_, _, _, b, _) = evaluate_candidates(configs, base, table, bn_batches=1, val_images=32)
    assert a != b and a == plan_identity(build_plan(trial_recipe(base.recipe, configs[0], base.groups), base, table))
    kept, channels = {"g": (0, 1)}, {"g": 4}
    one = PruningPlan(kept, channels, None, None, (3, 8, 8), order={"g": (2, 3)})
    other_order = plan_identity(PruningPlan(kept, channels, None, None, (3, 8, 8), order={"g": (3, 2)}))
    assert plan_identity(one) != other_order and plan_identity(one).split(":")[0] == other_order.split(":")[0]
    assert plan_identity(one) == plan_identity(PruningPlan(kept, channels, None, None, (3, 8, 8)))  # index order
    assert plan_identity(one) != plan_identity(PruningPlan({"g": (0, 2)}, channels, None, None, (3, 8, 8)))


def test_a_pool_screened_before_the_likelihood_still_loads_and_logs_its_accuracy() -> None:
    """screening.json of an interrupted search written when the proxy was the accuracy (no
    ``proxy_accuracy`` field): it resumes, its trials log ``proxy_accuracy`` and no likelihood; the CSV
    has both columns."""
    import json

    from prunetune.search.screening import ScreenOutcome
    from prunetune.search.selection import proxy_metrics, table_csv

    old = {"seconds": 1.0, "candidates": [{"number": 0, "params": {"target_macs": 0.5}, "source": "hand",
                                           "macs_ratio": 0.49, "proxy": 0.8, "error": None, "selected": True,
                                           "config": {"target_macs": 0.5}, "plan_id": "a:b"}]}
    outcome = ScreenOutcome.from_json(json.dumps(old))
    (c,) = outcome.selected
    assert proxy_metrics(c) == {"proxy_accuracy": 0.8}
    new = Candidate(1, {"target_macs": 0.4}, "sampled", 0.39, 0.3, proxy_accuracy=0.7)
    assert proxy_metrics(new) == {"proxy_likelihood": 0.3, "proxy_accuracy": 0.7}
    assert ScreenOutcome.from_json(ScreenOutcome([new], [], 1.0).to_json()).candidates[0].proxy_accuracy == 0.7
    header, row = table_csv([new]).splitlines()[:2]
    assert header == "number,source,selected,macs_ratio,proxy_likelihood,proxy_accuracy,error,params"
    assert row.startswith("1,sampled,0,0.390000,0.300000,0.700000,,")


def test_the_tracking_callback_logs_the_proxy_metrics_of_a_trial_and_reads_an_older_pickled_number() -> None:
    from prunetune.search.ray_parts import TrackingCallback

    callback = TrackingCallback.__new__(TrackingCallback)
    callback.proxies = [({"target_macs": 0.5}, {"proxy_likelihood": 0.3, "proxy_accuracy": 0.7}),
                        ({"target_macs": 0.4}, 0.6)]  # the second as a callback pickled before stored it
    assert callback.proxy_of({"target_macs": 0.5, "lr": 0.1}) == {"proxy_likelihood": 0.3, "proxy_accuracy": 0.7}
    assert callback.proxy_of({"target_macs": 0.4}) == {"proxy_accuracy": 0.6}
    assert callback.proxy_of({"target_macs": 0.3}) == {}
