"""Lazy imports of optional dependencies with install hints."""

from __future__ import annotations

import importlib
from types import ModuleType

from prunetune.exceptions import MissingExtraError


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the optional package {module!r}, which failed to import ({exc}); "
            f"install it with: pip install -c constraints.txt -e '.[{extra}]'"
        ) from exc
