"""Shared CLI options and output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from prunetune.exceptions import ConfigError


def add_format(parser: argparse.ArgumentParser, choices: Sequence[str] = ("table", "json")) -> None:
    parser.add_argument("--format", choices=list(choices), default=choices[0], help="output format")


def add_budget(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument("--macs-budget", "--flops-budget", dest="macs_budget", type=fraction, required=required,
                        metavar="F", help="keep at most this fraction of the dense MACs, in (0, 1]. "
                        "--flops-budget is a synonym: the papers' 'FLOPs' are MACs")


def add_allow_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-code", action="store_true",
                        help="let a model named package.module:function, and --plugin modules (a search config's "
                        "plugins:), import and run that code (only for recipes and configs you trust; torch.hub, "
                        "builtins and the like are refused anyway)")


def add_plugins(parser: argparse.ArgumentParser, *, config: bool = False) -> None:
    """``--plugin MODULE`` (repeatable): modules that register criteria, normalisers, schedules,
    strategies, ratio presets, models or datasets, imported before the recipe or model is read (with
    ``--allow-code``)."""
    where = " and in every Ray worker; replaces the config's plugins" if config else ""
    parser.add_argument("--plugin", action="append", default=None, metavar="MODULE",
                        help="import this module first: your own criteria, normalisers, schedules, strategies, "
                        f"ratio presets, models or datasets, registered at its import{where} (repeatable; needs "
                        "--allow-code; the module must be importable, e.g. PYTHONPATH=.)")


def load_cli_plugins(args: argparse.Namespace) -> None:
    """Import the ``--plugin`` modules (checked, with the ``--allow-code`` opt-in)."""
    from prunetune._plugins import load_plugins

    load_plugins(args.plugin, allow_code=args.allow_code, what="--plugin")


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def int_in(low: int, high: int | None = None, *, why: str = ""):
    """An argparse type: an integer in ``[low, high]`` (``high`` None: no upper bound)."""

    def parse(text: str) -> int:
        want = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {want}{why}, got {text!r}")
        return value

    return parse


def prune_ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a prune ratio in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a prune ratio in [0, 1) (fraction removed), got {text!r}")
    return value


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=_plain)
    sys.stdout.write("\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def millions(n: float) -> str:
    return f"{n / 1e6:.2f}M"


def need_file(path: str, what: str, kind: str = "YAML file") -> str:
    """``path`` if it is a regular file; else a :class:`ConfigError` naming ``what`` and the ``kind``
    of file to pass (a FIFO or a device is never opened: reading one would block or read nothing)."""
    from prunetune._paths import input_file_problem

    problem = input_file_problem(path)
    if problem == "is a directory":
        raise ConfigError(f"{what} {path!r} is a directory, not a file; pass the {kind} inside it")
    if problem == "does not exist":
        raise ConfigError(f"{what} {path!r} does not exist")
    if problem is not None:
        raise ConfigError(f"{what} {path!r} {problem}; pass the {kind} itself")
    return path
