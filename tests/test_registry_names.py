"""Registry names are non-empty strings and unique; a bad one is a ConfigError naming the registry."""

from __future__ import annotations

import re

import pytest

from prunetune._registry import Registry
from prunetune.exceptions import ConfigError, UnknownNameError


@pytest.mark.parametrize("name", [5, None, "", "  ", ("a",)])
def test_a_name_that_is_not_a_non_empty_string_is_refused(name) -> None:
    reg = Registry("schedule")
    reg.register("linear", object())
    with pytest.raises(ConfigError, match=re.escape(f"a schedule name must be a non-empty string, got {name!r}")):
        reg.register(name, object())
    with pytest.raises(ConfigError, match="a schedule name must be"):
        reg.register(name)  # the decorator form refuses it before decorating anything
    assert reg.names() == ["linear"]
    with pytest.raises(UnknownNameError, match="unknown schedule 'lineer'; did you mean 'linear'"):
        reg.get("lineer")


def test_a_duplicate_name_is_a_config_error() -> None:
    reg = Registry("normalizer")
    reg.register("max", object())
    with pytest.raises(ConfigError, match="normalizer 'max' is already registered") as err:
        reg.register("max")(lambda s: s)
    assert isinstance(err.value, ValueError)


def test_a_name_differing_only_in_case_is_refused_and_suggested() -> None:
    """'L1' could sit beside 'l1', and a recipe naming 'L1' got no suggestion (too short for difflib)."""
    reg = Registry("criterion")
    reg.register("l1", object())
    with pytest.raises(ConfigError, match="criterion 'L1' differs from the registered 'l1' only in case"):
        reg.register("L1", object())
    with pytest.raises(ConfigError, match="differs from the registered 'l1' only in case or character form"):
        reg.register("l\uff11", object())  # a full-width digit one
    assert reg.names() == ["l1"]
    with pytest.raises(UnknownNameError, match="unknown criterion 'L1'; did you mean 'l1'\\?"):
        reg.get("L1")
