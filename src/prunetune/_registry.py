"""A small generic name registry with did-you-mean errors."""

from __future__ import annotations

import contextlib
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from prunetune._text import close_names
from prunetune.exceptions import ConfigError, UnknownNameError

T = TypeVar("T")

# the plugin module being imported by name (prunetune._plugins), innermost last: what code outside
# prunetune registers meanwhile is that plugin's, wherever its registering helper lives
_LOADING: list[str] = []
_CREDITED: set[str] = set()  # the plugins something was credited to


def credited() -> frozenset[str]:
    """The plugin modules whose import registered at least one entry (:func:`crediting`)."""
    return frozenset(_CREDITED)


@contextlib.contextmanager
def crediting(plugin: str) -> Iterator[None]:
    """Entries registered by code outside prunetune inside this block are recorded as ``plugin``'s
    (:meth:`Registry.plugins`), not as the module whose frame registers them (a helper decorator in
    another module of the package)."""
    _LOADING.append(plugin)
    try:
        yield
    finally:
        _LOADING.pop()


def unknown_name_message(kind: str, name: object, known: Iterable[str]) -> str:
    """``unknown <kind> 'x'; did you mean 'y'? known: ...`` for any list of names."""
    known = sorted(known)
    close = close_names(str(name), known, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint or ';'} known: {', '.join(known)}"


class Registry(Generic[T]):
    """Maps names to objects of one kind (criteria, models, datasets, ...).

    Args:
        kind: what the entries are, used in error messages ("criterion", "model", ...).
    """

    def __init__(self, kind: str, *, entry: type | Callable[[object], bool] | None = None, how: str = "",
                 pluggable: bool = False) -> None:
        self.kind = kind
        self.pluggable = pluggable  # plugin modules add entries (prunetune._plugins): unknown names say how
        # what an entry must be (a class, or a test such as ``callable``; None: anything), and how to make one
        self.entry, self.how = entry, how
        self._items: dict[str, T] = {}
        self._plugins: dict[str, str] = {}  # name -> the module outside prunetune that registered it

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj`` return a decorator.

        Raises:
            ConfigError: ``name`` is not a non-empty string, or is already registered (also in another
                case or character form: ``"L1"`` or a full-width ``"l１"`` beside ``"l1"``).
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def _add(item: T) -> T:
            if self.entry is not None and not (isinstance(item, self.entry) if isinstance(self.entry, type)
                                               else self.entry(item)):
                want = f"a {self.entry.__name__}" if isinstance(self.entry, type) else self.entry.__name__
                raise ConfigError(f"{self.kind} {name!r}: an entry must be {want}, got {type(item).__name__}"
                                  f"{'; ' + self.how if self.how else ''}")
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered; register it under another name")
            twin = next((k for k in self._items if _folded(k) == _folded(name)), None)
            if twin is not None:  # 'L1' (or a full-width 'l１') beside 'l1': a recipe could name either by mistake
                raise ConfigError(f"{self.kind} {name!r} differs from the registered {twin!r} only in case or "
                                  "character form, and would be confused with it; register it under another name")
            self._items[name] = item
            origin = _registering_module()
            if origin is not None:  # prunetune's own entries (imported by a plugin, too) stay its own
                self._plugins[name] = _LOADING[-1] if _LOADING else origin
                _CREDITED.update(_LOADING[-1:])
            return item

        return _add if obj is None else _add(obj)

    def plugins(self) -> dict[str, str]:
        """Entries registered by code outside prunetune (name -> that module: the plugin module whose
        import by name registered it, else the module whose code did): a process that imports only
        prunetune, such as a search's Ray worker, does not have them."""
        return dict(self._plugins)

    def get(self, name: str) -> T:
        """Return the entry called ``name`` or raise :class:`UnknownNameError` with close matches."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        message = unknown_name_message(self.kind, name, self._items)
        if self.pluggable:
            message += (f". A plugin's {self.kind}? Import its module first (--plugin MODULE --allow-code on the "
                        "command line, plugins: in a search config)")
        return message

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """All registered names, in the order they were registered."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def _folded(name: str) -> str:
    """``name`` as a reader would confuse it: compatibility forms (full-width digits) and case folded."""
    return unicodedata.normalize("NFKC", name).casefold()


def _registering_module() -> str | None:
    """The module outside prunetune whose code registers an entry now, or None where prunetune's own
    module code does (at its import): walking out from the registry, the first frame of a module
    outside the package, before any prunetune module's top level, is the plugin's."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module == "prunetune" or module.startswith("prunetune."):
            if frame.f_code.co_name == "<module>":
                return None
        else:
            return module
        frame = frame.f_back
    return None
