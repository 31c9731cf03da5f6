"""Schedules: shapes, soft regrowth, hard filters staying at zero, and masked == physical at the end."""

from __future__ import annotations

import pytest
import torch

from prunetune.exceptions import ConfigError
from prunetune.models import create_model
from prunetune.pruning.finetune import FinetuneConfig, finetune
from prunetune.pruning.groups import find_groups
from prunetune.pruning.masking import ScheduleMasks, plan_ranking, run_schedule
from prunetune.pruning.plan import make_plan
from prunetune.pruning.schedules import SCHEDULES, asfp_fraction, hard_ramp, srfp_alpha
from prunetune.pruning.surgery import MaskHooks, channel_masks
from prunetune.testing.entries import check_schedule_states
from tests.conftest import randomize_bn

SHAPE = (3, 16, 16)


@pytest.mark.parametrize("name", SCHEDULES.names())
@pytest.mark.parametrize("total", [1, 4, 10])
def test_every_schedule_maps_into_unit_range_and_is_monotone(name, total) -> None:
    check_schedule_states(name, totals=(total,))  # prunetune.testing: unit range, prune and hard never fall


def test_schedule_endpoints() -> None:
    E = 16
    assert SCHEDULES.get("hard").state(0, E).hard == 1.0
    sfp = [SCHEDULES.get("sfp").state(e, E) for e in range(E)]
    assert all(s.prune == 1.0 and s.hard == 0.0 and s.rescore for s in sfp[: E // 2])
    assert all(s.hard == 1.0 for s in sfp[E // 2:])  # the second half fine-tunes with every pruned filter hard
    assert [SCHEDULES.get("sfp").state(e, 4, hard_fraction=0.25).hard for e in range(4)] == [0, 0, 0, 1]
    published = [SCHEDULES.get("sfp").state(e, E, hard_fraction=0.0) for e in range(E)]
    assert all(s.hard == 0.0 for s in published)
    assert SCHEDULES.get("sfp").state(0, 1).hard == 1.0  # one epoch: no soft phase to spare, simply hard
    assert SCHEDULES.get("sfp").state(0, 1, hard_fraction=0.0).hard == 0.0  # published: soft, then removal
    asfp = [SCHEDULES.get("asfp").state(e, E) for e in range(E)]
    assert asfp[E // 2 - 1].hard == 0.0 and asfp[E // 2].hard == 1.0
    assert asfp_fraction(0, E) == 0.0
    assert asfp_fraction(E // 8, E) == pytest.approx(0.75)  # 3/4 of P at E/8
    assert SCHEDULES.get("asfp").state(E - 1, E).prune > 0.99
    assert hard_ramp(0, E, "cubic") == pytest.approx(1 - (1 - 1 / E) ** 3)
    assert hard_ramp(E - 1, E, "cubic") == 1.0 and hard_ramp(E - 1, E, "cosine") == pytest.approx(1.0)
    assert srfp_alpha(0, E, 1.0) == 1.0 and srfp_alpha(int(0.9 * E) + 1, E, 1.0) == 0.0
    iterative = SCHEDULES.get("iterative")
    assert [iterative.state(e, 6, steps=3, hard_fraction=0).prune for e in range(6)] == [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1]
    assert [iterative.state(e, 6, steps=3).prune for e in range(6)] == [1 / 3, 2 / 3, 1, 1, 1, 1]  # last half at target


def test_schedule_parameter_errors() -> None:
    with pytest.raises(ConfigError, match="'rampp'"):
        SCHEDULES.get("ghfp").resolve({"rampp": "cubic"})
    with pytest.raises(ConfigError, match="ramp must be one of"):
        SCHEDULES.get("ghfp").resolve({"ramp": "linear"})
    with pytest.raises(ConfigError, match="steps"):
        SCHEDULES.get("iterative").state(0, 3, steps=0)


def _setup(name="tiny_convnet"):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name))
    groups = find_groups(model, SHAPE)
    plan = make_plan(groups, {g.name: torch.rand(g.channels) for g in groups},
                     {g.name: max(1, g.channels // 2) for g in groups})
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, *SHAPE, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(3)]
    return model, groups, plan, data


def test_sfp_lets_a_zeroed_filter_regrow() -> None:
    model, groups, plan, data = _setup()
    masks = ScheduleMasks(model, groups, plan, lambda e, t: SCHEDULES.get("sfp").state(e, t), plan_ranking(plan))
    masks.on_epoch_start(1, 4)  # a soft epoch, re-scored by weights
    name = "conv2"
    soft = masks.pruned[name]
    weight = model.conv2.weight
    assert soft and not masks.hard[name] and float(weight.detach()[soft].abs().sum()) == 0.0
    finetune(model, data, FinetuneConfig(epochs=1, lr=0.1, amp=False), callbacks=[], show_progress=False)
    masks.hooks.remove()
    assert float(weight.detach()[soft].abs().sum()) > 0.0  # trained back from zero


def test_the_hard_channels_index_is_made_once_per_epoch_on_the_gates_device() -> None:
    """Zeroing the hard channels after every step reuses one index tensor per group and device (on a
    GPU each new one is a copy from the host, a synchronisation) until the next epoch's sets."""
    model, groups, plan, data = _setup("tiny_resnet")
    masks = ScheduleMasks(model, groups, plan, lambda e, t: SCHEDULES.get("ghfp").state(e, t), plan_ranking(plan))
    device = next(model.parameters()).device
    assert all(g.device == device for g in masks.gates.values())
    masks.on_epoch_start(1, 4)
    name = next(n for n, hard in masks.hard.items() if hard)
    masks.after_step(model, None)
    first = masks._hard_index[name][device]
    masks.after_step(model, None)
    assert masks._hard_index[name][device] is first and first.tolist() == masks.hard[name]
    masks.on_epoch_start(2, 4)  # more channels hard: the index is made again
    assert masks.hard[name] != first.tolist()
    masks.after_step(model, None)
    again = masks._hard_index[name][device]
    assert again is not first and again.tolist() == masks.hard[name]
    masks.hooks.remove()


def test_ghfp_hard_filters_stay_exactly_zero_and_end_fully_hard() -> None:
    model, groups, plan, data = _setup("tiny_resnet")
    masks = ScheduleMasks(model, groups, plan, lambda e, t: SCHEDULES.get("ghfp").state(e, t), plan_ranking(plan))
    modules = dict(model.named_modules())
    seen_hard = []

    class Check:
        def after_step(self, m, optimizer):
            for name, hard in masks.hard.items():
                if not hard:
                    continue
                seen_hard.append(len(hard))
                for layer in groups[name].out_layers + groups[name].norms:
                    w = modules[layer].weight
                    assert torch.count_nonzero(w.detach()[hard]) == 0, (name, layer)
                    buf = optimizer.state.get(w, {}).get("momentum_buffer")
                    assert buf is None or torch.count_nonzero(buf[hard]) == 0

    cfg = FinetuneConfig(epochs=4, lr=0.1, momentum=0.9, weight_decay=5e-3, amp=False)
    finetune(model, data, cfg, callbacks=[masks, Check()], show_progress=False)
    final = masks.finish()
    assert seen_hard and final.keep_counts == plan.keep_counts
    assert all(len(masks.hard[n]) == plan.channels[n] - len(plan.kept[n]) for n in masks.targets)


@pytest.mark.parametrize("schedule", [n for n in SCHEDULES.names() if n != "hard"])  # hard: test_surgery
def test_masked_equals_physical_at_the_end_of_each_schedule(schedule) -> None:
    cfg = FinetuneConfig(epochs=3, lr=0.05, amp=False)
    model, groups, plan, data = _setup("tiny_resnet")
    pruned, history, final = run_schedule(schedule, {}, model, groups, plan, cfg, train_batches=data,
                                          show_progress=False)
    assert len(history) == 3 and final.keep_counts == plan.keep_counts
    # The same run again (CPU training on fixed batches is deterministic), stopped before removal.
    masked, groups, plan, data = _setup("tiny_resnet")
    masks = ScheduleMasks(masked, groups, plan, lambda e, t: SCHEDULES.get(schedule).state(e, t), plan_ranking(plan))
    finetune(masked, data, cfg, callbacks=[masks], show_progress=False)
    assert masks.finish().kept == final.kept
    x = torch.randn(4, *SHAPE)
    with torch.no_grad(), MaskHooks(masked.eval(), groups, channel_masks(final)):
        reference = masked(x)
        assert torch.allclose(reference, pruned.eval()(x), atol=1e-5)


def test_first_epoch_follows_the_plan_ranking_then_rescoring_takes_over() -> None:
    model, groups, plan, _ = _setup()
    name = "conv2"
    norms = model.conv2.weight.detach().flatten(1).norm(dim=1)
    strongest_first = sorted(range(norms.numel()), key=lambda i: -float(norms[i]))
    ranking = {**plan_ranking(plan), name: strongest_first[: len(plan_ranking(plan)[name])]}
    masks = ScheduleMasks(model, groups, plan, lambda e, t: SCHEDULES.get("sfp").state(e, t), ranking)
    masks.on_epoch_start(0, 3)
    assert masks.pruned[name] == ranking[name]  # the recipe's criterion chose, not the weights
    masks.hooks.remove()


class _NonAffineNorm(torch.nn.Module):
    """A BN without γ and β (``affine=False``) after a conv with bias."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8, affine=False),
                                     torch.nn.ReLU())
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.a(x).mean((2, 3)))


def test_a_norm_without_affine_parameters_scores_and_runs_a_soft_schedule() -> None:
    # the group's BN has no weight: bn_scale and the soft schedule's zeroing of its γ/β crashed on None
    from prunetune.pruning.scores import weight_scores

    torch.manual_seed(0)
    model = _NonAffineNorm()
    groups = find_groups(model, SHAPE)
    scores = weight_scores(model, groups, "bn_scale", {})["a.0"]
    assert torch.allclose(scores, weight_scores(model, groups, "l1", {})["a.0"])  # no γ: the conv's L1
    plan = make_plan(groups, {"a.0": scores}, {"a.0": 5})
    data = [(torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))) for _ in range(2)]
    pruned, _, final = run_schedule("sfp", {}, model, groups, plan, FinetuneConfig(epochs=2, lr=0.05, amp=False),
                                    train_batches=data, show_progress=False)
    assert final.keep_counts == {"a.0": 5} and pruned.a[0].out_channels == 5
