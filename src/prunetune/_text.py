"""Short, bounded renderings of user values for error messages, and URLs without their passwords."""

from __future__ import annotations

import difflib
import re
import reprlib
from collections.abc import Iterable
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


# a number with an exponent, which YAML 1.1 (PyYAML) reads as a float only with a '.' in the mantissa
# and a sign on the exponent (1.0e+5): 1e5, 5e-1 and 1.0e5 are strings there
_EXPONENT_NUMBER = re.compile(r"^([-+]?[0-9][0-9_]*)(\.[0-9_]*)?[eE]([-+]?)([0-9]+)$")


def _yaml_number_hint(value: str) -> str:
    """How to write ``value`` (a number YAML read as text) so that YAML reads a number; '' if it is not one."""
    m = _EXPONENT_NUMBER.match(value)
    if m is None or (m.group(2) and m.group(3)):  # both there: YAML reads it as a number already
        return ""
    written = f"{m.group(1)}{m.group(2) or '.0'}e{m.group(3) or '+'}{m.group(4)}"
    plain = repr(float(value.replace("_", "")))
    also = f"{plain} or " if "e" not in plain and "inf" not in plain else ""  # repr(1e-05) is text again
    return f" (text: YAML reads a number with an exponent only with a '.' and a signed exponent, e.g. {also}{written})"


def close_names(name: Any, known: Iterable[str], n: int = 1) -> list[str]:
    """Up to ``n`` of ``known`` that ``name`` was likely meant to be, for a "did you mean": the same
    name in another case first ('L1' for 'l1', too short for difflib's ratio to find), then difflib's
    close matches (ratio 0.6). None for a name that is not a string."""
    if not isinstance(name, str):
        return []
    known = sorted(known)
    same = [k for k in known if k.casefold() == name.casefold() and k != name]
    return (same + [c for c in difflib.get_close_matches(name, known, n=n, cutoff=0.6) if c not in same])[:n]


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, without building the whole repr first.

    Error messages echo the bad value; a value built from YAML aliases can be enormous, so the
    rendering looks at a bounded part of it only.
    """
    text = _REPR.repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    if isinstance(value, str):  # `5e-1` in a YAML file is the text '5e-1'
        text += _yaml_number_hint(value)
    return text


def listed(items: Any, shown: int = 8) -> str:
    """``a, b, ... N more``: the first ``shown`` of ``items``, each clipped, for a one-line message."""
    items = list(items)
    more = f", ... {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(short(i, 40) for i in items[:shown]) + more


def clip_line(message: str, limit: int = 800) -> str:
    """``message`` on one line (its lines joined), cut to ``limit`` characters: what the CLI prints."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def exception_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message cut to ``limit`` characters, or its type's name if it has none."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def masked_url(url: str) -> str:
    """``url`` with its password shown as ``***`` (for messages, logs and anything written down): the
    one after ``user:`` (which may hold '/', ':' or '@': it ends at the last '@' before the query, as
    SQLAlchemy reads it) and any ``password=``, ``passwd=`` or ``pwd=`` in the query."""
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*://)(.*)", url, re.S)
    if m is None:
        return url
    scheme, rest = m.groups()
    head, sep, query = rest.partition("?")
    at = head.rfind("@")
    colon = head.find(":", 0, max(at, 0))
    if at >= 0 and colon >= 0:
        head = head[: colon + 1] + "***" + head[at:]
    query = re.sub(r"(?i)((?:^|[&;])(?:password|passwd|pwd)=)[^&;#]*", r"\1***", query)
    return scheme + head + sep + query


def command_line(*parts: str | tuple[str, str]) -> str:
    """A command to print for the user to run: each part a word or a ``(flag, value)`` pair, every word
    quoted for the shell, and a value that starts with ``-`` joined to its flag (``--experiment=-x``),
    which argparse would otherwise take for a flag."""
    import shlex

    words: list[str] = []
    for part in parts:
        if isinstance(part, tuple):
            flag, value = part
            words += [f"{flag}={value}"] if value.startswith("-") else [flag, value]
        else:
            words.append(part)
    return shlex.join(words)
