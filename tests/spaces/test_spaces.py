"""Search spaces: presets, stages, replay with a fixed trial, conditionals, picklability, spec parsing."""

from __future__ import annotations

import pickle

import pytest

from prunetune.exceptions import ConfigError, UnknownNameError
from prunetune.models import create_model
from prunetune.pruning.groups import find_groups
from prunetune.spaces import RandomTrial, SpaceSpec, build_space, space_criteria, stages
from prunetune.spaces.presets import RATIO_SPACES


@pytest.fixture(scope="module")
def resnet20():
    return find_groups(create_model("resnet20", num_classes=10, in_channels=1), (1, 16, 16))


@pytest.fixture(scope="module")
def tiny():
    return find_groups(create_model("tiny_convnet", num_classes=10, in_channels=3), (3, 16, 16))


def test_stages_of_a_cifar_resnet_are_its_three_resolutions(resnet20) -> None:
    found = stages(resnet20)
    assert list(found) == ["stage1", "stage2", "stage3"]
    assert "conv1" in found["stage1"] and "layer1.0.conv1" in found["stage1"]
    assert all(name.startswith("layer2") for name in found["stage2"])
    assert all(name.startswith("layer3") for name in found["stage3"])
    assert sorted(sum(found.values(), ())) == sorted(resnet20.names)


def test_stages_split_by_resolution_linear_layers_last(tiny) -> None:
    found = stages(tiny)
    assert found == {"stage1": ("conv1", "conv2"), "stage2": ("conv3",), "stage3": ("fc1",)}


@pytest.mark.parametrize("preset", RATIO_SPACES.names())
def test_every_preset_defines_flat_slash_free_configs(resnet20, preset: str) -> None:
    spec = SpaceSpec(ratios=preset, normalizers=("rank", "zscore"), lr=(0.01, 0.1))
    space = build_space(spec, resnet20, budget=0.5)
    config = space.define(RandomTrial(3))
    assert all("/" not in k for k in config)
    assert all(isinstance(v, (int, float, str)) for v in config.values())
    assert 0.5 / 4 <= config["target_macs"] <= 0.5
    assert config["ratios"] == preset
    ratio_keys = [k for k in config if k.startswith("ratio.")]
    expected = {"uniform": 0, "per_stage": 3, "per_group": len(resnet20)}[preset]
    assert len(ratio_keys) == expected
    assert all(0.0 <= config[k] <= 0.8 for k in ratio_keys)
    assert 0.01 <= config["finetune.lr"] <= 0.1 and config["normalizer"] in ("rank", "zscore")


def test_single_choices_are_constants_not_parameters(resnet20) -> None:
    space = build_space(SpaceSpec(criteria=("l1",), normalizers=("rank",), schedules=("hard",), allocations=("ratios",),
                                  lr=None), resnet20, budget=0.5)
    trial = RandomTrial(0)
    config = space.define(trial)
    assert config["weight.l1"] == 1.0 and config["schedule"] == "hard" and config["allocation"] == "ratios"
    assert set(trial.params) == {"target_macs", "ratio.stage1", "ratio.stage2", "ratio.stage3"}
    assert space.for_ray(RandomTrial(0)) == {k: v for k, v in config.items() if k not in trial.params}


def test_ratios_are_sampled_only_for_the_ratios_allocation(resnet20) -> None:
    spec = SpaceSpec(allocations=("ratios", "cmi_cumulative"))
    space = build_space(spec, resnet20, budget=0.5)
    configs = [space.define(RandomTrial(seed)) for seed in range(20)]
    by_alloc = {c["allocation"]: c for c in configs}
    assert set(by_alloc) == {"ratios", "cmi_cumulative"}
    assert "ratio.stage1" in by_alloc["ratios"]
    assert not any(k.startswith("ratio") for k in by_alloc["cmi_cumulative"])
    assert "cmi" in space_criteria(spec)


def test_cmi_scored_only_for_the_knee_cut_off_may_stop_at_the_knee() -> None:
    """cmi_knee reads only the knee, so cmi scored for it alone stops at the settled knee; another
    cut-off reading the whole curve, or cmi in the blend, gets the full greedy."""
    def stop(criteria, allocations, params=None):
        return space_criteria(SpaceSpec(criteria=criteria, allocations=allocations), params)["cmi"]["stop_at_knee"]

    assert stop(("capacity", "independence"), ("ratios", "cmi_knee")) is True
    assert stop(("l1",), ("cmi_knee", "cmi_cumulative")) is False
    assert stop(("l1",), ("cmi_marginal",)) is False
    assert stop(("cmi", "l1"), ("cmi_knee",)) is False
    assert stop(("l1",), ("cmi_knee",), {"cmi": {"stop_at_knee": False}}) is False  # asked for explicitly
    # a condition reads the neighbour's order past its knee, stop_gain changes the curve: full greedy
    assert stop(("l1",), ("cmi_knee",), {"cmi": {"condition": "previous"}}) is False
    assert stop(("l1",), ("cmi_knee",), {"cmi": {"stop_gain": 0.01}}) is False


def test_a_recipe_scores_cmi_for_its_cut_off_as_a_search_does() -> None:
    from prunetune.recipes.planning import recipe_criteria
    from prunetune.recipes.schema import Recipe

    def cmi(criterion, strategy):
        recipe = Recipe.from_dict({"model": {"name": "resnet20"}, "data": {"name": "digits"}, "criterion": criterion,
                                   "allocation": {"strategy": strategy, "macs_budget": 0.5}})
        return recipe_criteria(recipe)["cmi"]["stop_at_knee"]

    assert cmi("l1", "cmi_knee") is True
    assert cmi("l1", "cmi_cumulative") is False
    assert cmi("cmi", "cmi_knee") is False


def test_replay_gives_back_the_config_and_checks_it(resnet20) -> None:
    space = build_space(SpaceSpec(ratios="per_group", lr=(0.01, 0.1), normalizers=("rank", "max"), schedules=("hard",),
                                  allocations=("ratios",)), resnet20, budget=0.5)
    config = space.define(RandomTrial(7))
    assert space.replay(config) == config
    sampled_only = {k: v for k, v in config.items() if k not in ("ratios", "allocation", "schedule")}
    assert space.replay(sampled_only) == config  # constants are filled in
    with pytest.raises(ConfigError, match="outside the space's range"):
        space.replay({**config, "target_macs": 0.9})
    with pytest.raises(ConfigError, match="no value for search parameter 'ratio.conv1'"):
        space.replay({k: v for k, v in config.items() if k != "ratio.conv1"})
    with pytest.raises(ConfigError, match="not one of the space's choices"):
        space.replay({**config, "normalizer": "zscore"})
    with pytest.raises(ConfigError, match="'bogus' is not part of this search space"):
        space.replay({**config, "bogus": 1})


def test_optunas_fixed_trial_replays_too(resnet20) -> None:
    optuna = pytest.importorskip("optuna")
    space = build_space(SpaceSpec(lr=(0.01, 0.1), schedules=("hard",), allocations=("ratios",)), resnet20, budget=0.5)
    config = space.define(RandomTrial(1))
    sampled = {k: v for k, v in config.items() if k.startswith(("ratio.", "weight.", "target", "finetune"))}
    assert space.define(optuna.trial.FixedTrial(sampled)) == config


def test_space_and_ray_function_pickle(resnet20) -> None:
    space = build_space(SpaceSpec(ratios="per_stage", lr=(0.01, 0.1)), resnet20, budget=0.5)
    again = pickle.loads(pickle.dumps(space.for_ray))
    assert again(RandomTrial(2)) == space.for_ray(RandomTrial(2))


def test_optuna_ask_runs_the_space(resnet20) -> None:
    optuna = pytest.importorskip("optuna")
    space = build_space(SpaceSpec(ratios="per_stage", normalizers=("rank", "zscore"), schedules=("hard",),
                                  allocations=("ratios",), lr=None), resnet20, budget=0.5)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    config = space.define(trial)
    assert set(trial.params) == set(config) - {"ratios", "allocation", "schedule"}  # constants are not suggested


@pytest.mark.parametrize("value, match", [
    ({"ratio": "per_stage"}, "unknown key 'ratio' in search config section 'space'"),
    ({"ratios": "per_stag"}, "did you mean 'per_stage'"),
    ({"ratio_range": [0.5, 0.2]}, "0 <= low <= high < 1"),
    ({"ratio_range": [0.0, 1.0]}, "0 <= low <= high < 1"),
    ({"ratio_range": 0.5}, r"ratio_range must be a list \[low, high\], got 0.5"),  # was a TypeError traceback
    ({"ratio_range": None}, r"ratio_range must be a list \[low, high\], got None"),
    ({"criteria": ["capacty"]}, "did you mean 'capacity'"),
    ({"criteria": []}, "at least one"),
    ({"normalizers": ["rank", "rank"]}, "twice"),
    ({"lr": [0.1]}, r"\[low, high\]"),
    ({"lr": [0.0, 0.1]}, "0 < low <= high"),
    ({"lr": float("inf")}, "needs a finite F >= 1"),  # was accepted: a log-uniform lr range [0, inf]
    ({"schedules": ["sfpp"]}, "did you mean 'sfp'"),
    ({"min_fraction": 0}, r"\(0, 1\]"),
])
def test_spec_errors_name_the_problem(value, match: str) -> None:
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        SpaceSpec.parse(value)


def test_spec_round_trips_through_its_dict() -> None:
    spec = SpaceSpec.parse({"ratios": "per_group", "criteria": "l1", "lr": [0.01, 0.1], "schedules": ["hard", "sfp"]})
    assert spec.criteria == ("l1",) and spec.lr == (0.01, 0.1)
    assert SpaceSpec.parse(spec.to_dict()) == spec
