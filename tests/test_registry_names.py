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
