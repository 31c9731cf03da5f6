"""A model's output as leaves: a forward may return a tensor or nested tuples, lists and dicts of them
(and of other values), which the removal probe, the dependency-graph trace and ``check_model`` walk
the same way, in one fixed order (dict entries by their key's text)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def output_paths(out: Any, path: str = "the output") -> list[tuple[str, Any]]:
    """``(where, leaf)`` of every leaf of ``out``: ``("the output['aux'][0]", tensor)``."""
    if isinstance(out, (tuple, list)):
        return [leaf for i, o in enumerate(out) for leaf in output_paths(o, f"{path}[{i}]")]
    if isinstance(out, Mapping):
        return [leaf for k, v in sorted(out.items(), key=lambda kv: str(kv[0]))
                for leaf in output_paths(v, f"{path}[{k!r}]")]
    return [(path, out)]


def output_leaves(out: Any) -> list[Any]:
    """The leaves of ``out`` in :func:`output_paths`' order."""
    return [leaf for _, leaf in output_paths(out)]
