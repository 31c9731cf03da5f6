"""Reading YAML files that a user (or someone else) wrote, safely and fast.

:func:`load_yaml_file` is the only way prunetune reads recipes and search configs. Compared with
``yaml.safe_load`` it

- uses the C parser (``yaml.CSafeLoader``) when PyYAML was built with libyaml (a 50 MB file took
  minutes and gigabytes with the pure-Python one);
- refuses files over :data:`MAX_BYTES`, files that are not UTF-8 text, and binary files;
- refuses a mapping that names a key twice (YAML would silently keep the last one);
- refuses a document whose aliases expand it beyond :data:`MAX_VALUES` values (a "billion laughs"
  file is small, but echoing or serialising its values is not), and one that refers to itself.

Every refusal is one :class:`~prunetune.exceptions.ConfigError` line naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from prunetune._paths import input_file_problem
from prunetune._text import exception_line, short
from prunetune.exceptions import ConfigError

MAX_BYTES = 10 * 1024 * 1024
MAX_VALUES = 1_000_000

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The safe loader (C parser when present) that refuses duplicate keys in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {short(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)



def load_yaml_file(path: str | os.PathLike, what: str) -> Any:
    """Parse the YAML file ``path``; ``what`` names it in errors ("recipe file", "search config")."""
    path = Path(path)
    shown = repr(str(path))
    problem = input_file_problem(path)  # a FIFO or a device is never opened (reading one would block)
    if problem == "is a directory":
        raise ConfigError(f"{what} {shown} is a directory, not a file; pass the YAML file inside it")
    if problem == "does not exist":
        raise ConfigError(f"{what} {shown} does not exist")
    if problem is not None:
        raise ConfigError(f"{what} {shown} {problem}; pass a YAML file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{what} {shown} is {size / 2**20:.1f} MB; a recipe or config is at most "
                          f"{MAX_BYTES // 2**20} MB of YAML (is it the right file?)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {shown} ({exc.strerror or exc})") from None
    return parse_yaml(raw, f"{what} {shown}")


def parse_yaml(raw: bytes | str, where: str) -> Any:
    """Parse YAML text (bytes must be UTF-8) under the rules of :func:`load_yaml_file`."""
    if isinstance(raw, bytes):
        if b"\x00" in raw:
            raise ConfigError(f"{where} is binary, not YAML text (it holds NUL bytes)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                              "save it as UTF-8") from None
    else:
        text = raw
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {_describe(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests too deeply to be a recipe or config") from None
    except ValueError as exc:  # a constructor's own limit: an integer of more than 4300 digits
        raise ConfigError(f"{where} is not valid YAML: {exception_line(exc, 120).split(';')[0]}") from None
    check_expansion(data, where)
    return data


def check_expansion(data: Any, where: str, limit: int = MAX_VALUES) -> int:
    """Count ``data``'s values as if every alias were copied out; refuse more than ``limit`` or a cycle.

    Shared sub-structures (what aliases create) are counted once per reference, but measured once,
    so this takes time in the number of distinct containers, not in the expanded size.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        value, done = stack.pop()
        if not isinstance(value, (list, dict)):
            continue
        key = id(value)
        children = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
        if done:
            on_path.discard(key)
            total = 1 + sum(sizes.get(id(c), 1) if isinstance(c, (list, dict)) else 1 for c in children)
            sizes[key] = total
            if total > limit:
                raise ConfigError(f"{where} expands to more than {limit} values through YAML aliases "
                                  "(&anchor / *alias); write the values out, or use fewer aliases")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError(f"{where} holds a value that contains itself (a YAML alias inside its own "
                              "anchor); write the value out")
        on_path.add(key)
        stack.append((value, True))
        stack.extend((c, False) for c in children if isinstance(c, (list, dict)) and id(c) not in sizes)
    return sizes.get(id(data), 1)


def _describe(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"
