"""Fixtures for the search tests: a tiny search (ResNet-8 width 4 on 8×8 digits) and its shared parts."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest

TINY_RECIPE: dict[str, Any] = {
    "model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1},
    "data": {"name": "digits", "image_size": 8, "batch_size": 128},
    "calibration": {"size": 64, "batch_size": 64},
    "pretrain": {"epochs": 2, "lr": 0.1, "batch_size": 128},
    "finetune": {"epochs": 2, "lr": 0.05, "batch_size": 128},
    "device": "cpu",
    "seed": 0,
}
TINY_SPACE: dict[str, Any] = {"ratios": "per_stage", "criteria": ["capacity", "l1"], "normalizers": ["rank", "zscore"],
                              "lr": [0.01, 0.1]}


def tiny_config(cwd, recipe: dict | None = None, space: dict | None = None, **settings: Any):
    """A tiny search config whose store and results live in ``cwd`` (for fixtures of any scope).

    One trial at a time on 2 CPUs, the test Ray's whole capacity (tests about parallel trials say
    ``concurrency=2, cpus_per_trial=1``). With a CPU left free, Ray Tune starts an actor for the
    trial it stages next, then gives that trial the cached actor of the one that just ended (the
    tests' trials take milliseconds, less than an actor's start-up), and at the end of the search
    waits up to 5 s for the unused actor to start so that it can stop it: about 5 s a search."""
    from prunetune.search import parse_search_config

    data = {"recipe": copy.deepcopy(recipe or TINY_RECIPE), "space": copy.deepcopy(space or TINY_SPACE),
            "macs_budget": 0.5, "trials": 4, "concurrency": 1, "cpus_per_trial": 2, "experiment": "tiny",
            **settings}
    return parse_search_config(data, cwd=cwd)


@pytest.fixture()
def make_config(tmp_path):
    """``make_config(**settings)``: a tiny search config whose store and results live in ``tmp_path``."""
    return functools.partial(tiny_config, tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """``(config, base, table, space)`` of the tiny search, prepared once per module."""
    from prunetune.recipes.pipeline import prepare, score_table
    from prunetune.search import make_space, parse_search_config, probe_groups
    from prunetune.spaces import space_criteria

    config = parse_search_config({"recipe": copy.deepcopy(TINY_RECIPE), "space": copy.deepcopy(TINY_SPACE),
                                  "macs_budget": 0.5, "experiment": "tiny"}, cwd=tmp_path_factory.mktemp("shared"))
    space = make_space(config, probe_groups(config))
    base = prepare(config.recipe, show_progress=False)
    table = score_table(base, space_criteria(config.space), show_progress=False)
    return config, base, table, space
