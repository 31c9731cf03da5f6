"""One-line validation of scalar settings: the error names the setting and echoes the value, shortened."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from prunetune._text import close_names, exception_line, short
from prunetune.exceptions import ConfigError


def integer(value: Any, what: str, *, minimum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) ``>= minimum``, else a :class:`ConfigError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        want = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ConfigError(f"{what} must be {want}, got {short(value)}")
    return value


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed takes


def input_shape(value: Any, what: str = "input_shape") -> tuple[int, ...]:
    """``value`` as a tuple of 1 to 3 positive integers ``(C, H, W)`` (numpy integers too), else a
    :class:`ConfigError` naming ``what``."""
    ok = isinstance(value, (tuple, list)) and 1 <= len(value) <= 3 and all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in value)
    if not ok:
        raise ConfigError(f"{what} must be (C, H, W): 1 to 3 positive integers, got {short(value)}")
    return tuple(int(d) for d in value)


def unrunnable(model: Any, shape: tuple[int, ...], exc: BaseException) -> ConfigError:
    """The one-line error for a model whose forward pass raised ``exc`` on one input of ``shape``."""
    return ConfigError(f"the model ({type(model).__name__}) cannot run on an input of shape {tuple(shape)} "
                       f"({exception_line(exc, 200)}); check the input size and in_channels")


def torch_seed(value: Any, what: str) -> int:
    """``value`` if it is an integer torch can seed with, else a :class:`ConfigError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise ConfigError(f"{what} must be an integer in [-2**63, 2**64 - 1], got {short(value)}")
    return value


def boolean(value: Any, what: str) -> bool:
    """``value`` if it is true or false, else a :class:`ConfigError` naming ``what``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {short(value)}")
    return value


def text(value: Any, what: str, *, optional: bool = False) -> str | None:
    """``value`` if it is a non-empty string (or None when ``optional``), else a :class:`ConfigError`."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {short(value)}")
    return value


def mapping(value: Any, what: str) -> dict[str, Any]:
    """``value`` as a dict if it is a mapping (None: empty), else a :class:`ConfigError` naming ``what``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {short(value)}")
    return dict(value)


def unknown_key(key: Any, where: str, allowed: Iterable[str]) -> ConfigError:
    """``unknown key 'epoch' in <where> (did you mean 'epochs'?); allowed: ...``: the closest allowed
    key, where one is close, for a typo."""
    allowed = sorted(allowed)
    close = close_names(key, allowed)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {short(key)} in {where}{hint}; allowed: {', '.join(allowed)}")


def section(section: str, value: Any, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
    """A recipe section as a dict: a mapping with only ``allowed`` keys and every ``required`` one."""
    where = "the recipe" if section == "recipe" else f"recipe section {short(section)}"
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {short(value)}")
    unknown = sorted(set(value) - allowed, key=str)
    if unknown:
        raise unknown_key(unknown[0], where, allowed)
    missing = sorted(required - set(value))
    if missing:
        raise ConfigError(f"{where} needs the key {short(missing[0])}")
    return dict(value)
