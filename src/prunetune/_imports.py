"""Lazy imports of optional dependencies with install hints."""

from __future__ import annotations

import importlib
from types import ModuleType

from prunetune.exceptions import MissingExtraError


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch raises RuntimeError
        raise MissingExtraError(
            f"{purpose} needs the optional package {module!r}, which failed to import "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"install it with: pip install -c constraints.txt -e '.[{extra}]'"
        ) from exc
