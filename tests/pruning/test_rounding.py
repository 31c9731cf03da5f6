"""round_to presets: names resolve to multiples in recipes and on the command line; bad values are clear."""

from __future__ import annotations

import json

import pytest

from prunetune.cli import main
from prunetune.exceptions import ConfigError, UnknownNameError
from prunetune.pruning.rounding import ROUND_TO_PRESETS, resolve_round_to
from prunetune.recipes.schema import Recipe


def test_presets_and_numbers_resolve() -> None:
    assert resolve_round_to("cpu") == ROUND_TO_PRESETS["cpu"] and resolve_round_to("gpu") == ROUND_TO_PRESETS["gpu"]
    assert resolve_round_to(4) == 4 and resolve_round_to("16") == 16 and resolve_round_to(None) is None
    with pytest.raises(UnknownNameError, match="did you mean 'cpu'"):
        resolve_round_to("cpuu")
    with pytest.raises(ConfigError, match="positive integer"):
        resolve_round_to(0)


def test_recipe_round_to_preset_becomes_the_multiple() -> None:
    recipe = Recipe.from_dict({"model": {"name": "resnet20"}, "data": {"name": "digits"}, "criterion": "l1",
                               "allocation": {"macs_budget": 0.5, "round_to": "cpu"}})
    assert recipe.allocation.round_to == ROUND_TO_PRESETS["cpu"]
    assert recipe.allocation.to_dict()["round_to"] == ROUND_TO_PRESETS["cpu"]  # exported as the number


def test_groups_command_takes_a_preset(capsys) -> None:
    assert main(["groups", "--model", "resnet56", "--macs-budget", "0.5", "--round-to", "cpu", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    step = ROUND_TO_PRESETS["cpu"]
    assert all(g["kept"] % step == 0 or g["kept"] == g["channels"] for g in data["groups"])
    assert data["pruned"]["macs"] <= 0.5 * data["dense"]["macs"]
    assert main(["groups", "--model", "resnet56", "--round-to", "fpga"]) == 2
