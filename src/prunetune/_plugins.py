"""Plugin modules: code outside prunetune that registers entries when it is imported.

A plugin module registers criteria, normalisers, schedules, allocation strategies, ratio presets,
models or datasets at its import (``prunetune.pruning.criteria.register`` and the like); what it
registers is credited to it (:func:`prunetune._registry.crediting`). A search names such modules in
its config (``plugins: [mypkg.criteria]``) or with ``--plugin``, and every other command that reads a
recipe or a model takes ``--plugin`` too. The driver imports them before it reads the recipe and the
space, and every Ray worker of a search before its first trial or screening chunk: a worker imports
prunetune, not the user's code, so without this every trial failed on the name. Digests of the user's
code key a plugin criterion's cached scores (:func:`user_modules`, :func:`source_digest`) and a
search's identity (:func:`plugin_files_digest`).

Importing a module runs its code, so naming one needs the same opt-in as a user model's
``package.module:function`` (:mod:`prunetune._safety`): ``--allow-code``, ``allow_code: true`` in
the user's own search config, or ``allow_code=True`` from Python. The modules must be importable
(installed, or on ``PYTHONPATH``; the current folder is not searched).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prunetune._checks import boolean
from prunetune._registry import crediting, credited
from prunetune._safety import OPT_IN, refused_module
from prunetune._text import command_line, short
from prunetune.exceptions import ConfigError, UntrustedCodeError

log = logging.getLogger("prunetune")


def plugin_names(value: Any, *, what: str = "plugins") -> tuple[str, ...]:
    """``value`` (None, a module name or a list of them) as a tuple of dotted module names."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, Sequence) or isinstance(names, (bytes, bytearray)):
        raise ConfigError(f"{what} must be a list of module names (e.g. [mypkg.criteria]), got {short(value)}")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name or not all(p.isidentifier() for p in name.split(".")):
            raise ConfigError(f"{what}: {short(name)} is not a module name; give a dotted name such as "
                              "mypkg.criteria (a module, not a file path)")
        if refused_module(name) is not None or name.split(".")[-1] == "__main__":  # a package's script
            raise UntrustedCodeError(f"{what}: {name!r} is refused: it registers no prunetune entry, and its "
                                     "import could run or load arbitrary code")
        if name not in out:
            out.append(name)
    return tuple(out)


def load_plugins(value: Any, *, allow_code: bool, what: str = "plugins", advice: str = OPT_IN) -> tuple[str, ...]:
    """Check ``value`` (:func:`plugin_names`) and the opt-in, import each module; return the names.

    ``advice``: how the caller opts in, ending the error without it (default: every way there is).

    Raises:
        UntrustedCodeError: modules named without ``allow_code``, or a refused module.
        ConfigError: a malformed name, a module that is not importable, or one that fails on import.
    """
    boolean(allow_code, "allow_code")
    names = plugin_names(value, what=what)
    if names and not allow_code:
        raise UntrustedCodeError(f"{what} {', '.join(map(repr, names))} would import and run Python code; if you "
                                 f"trust it, {advice}")
    import_plugins(names)
    return names


def plugin_options(names: Sequence[str]) -> list[str | tuple[str, str]]:
    """The ``--plugin NAME`` options and ``--allow-code`` of a command that needs ``names`` imported
    (none for none), as parts of :func:`~prunetune._text.command_line`; each name once."""
    names = list(dict.fromkeys(names))
    return [*(("--plugin", name) for name in names), *(["--allow-code"] if names else [])]


def plugin_flags(names: Sequence[str]) -> str:
    """`` --plugin a --plugin b --allow-code`` for a command that needs ``names`` imported ('' for none)."""
    options = plugin_options(names)
    return " " + command_line(*options) if options else ""


def strings_in(value: Any) -> set[str]:
    """Every string among the keys and values of nested mappings and sequences."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return {s for k, v in value.items() for s in (*strings_in(k), *strings_in(v))}
    if isinstance(value, (list, tuple, set, frozenset)):
        return {s for v in value for s in strings_in(v)}
    return set()


def plugin_registries() -> list[Any]:
    """The registries plugin modules add entries to (criteria, normalisers, schedules, strategies,
    ratio presets, models, datasets)."""
    from prunetune.data.base import DATASETS
    from prunetune.models.registry import MODELS
    from prunetune.pruning.criteria import CRITERIA
    from prunetune.pruning.normalize import NORMALIZERS
    from prunetune.pruning.schedules import SCHEDULES
    from prunetune.pruning.strategies import STRATEGIES
    from prunetune.spaces.presets import RATIO_SPACES

    return [CRITERIA, NORMALIZERS, SCHEDULES, STRATEGIES, RATIO_SPACES, MODELS, DATASETS]


def plugins_named(data: Any) -> list[str]:
    """The modules that registered (in this process) the plugin entries whose names appear in ``data``
    (a recipe as a mapping): what a replay of it must import, sorted."""
    named = strings_in(data)
    return sorted({module for registry in plugin_registries() for name, module in registry.plugins().items()
                   if name in named})


def replay_flags(recipe: Any) -> str:
    """The flags ``prunetune prune --recipe`` needs for ``recipe`` (a mapping): ``--plugin`` for each
    module that registered an entry it names (:func:`plugins_named`) and ``--allow-code`` with them or
    for the user's own ``package.module:function`` model; '' for none."""
    from prunetune._safety import is_user_code

    model = recipe.get("model") if isinstance(recipe, dict) else None
    user_model = isinstance(model, dict) and is_user_code(model.get("name"))
    return plugin_flags(plugins_named(recipe)) or (" --allow-code" if user_model else "")


def import_plugins(names: Sequence[str]) -> None:
    """Import each of ``names`` (already checked and allowed); a missing or failing module is a
    :class:`ConfigError` naming it, as is one that exits (``sys.exit`` at its top level). Modules
    already imported are not imported again; one whose first import registers nothing is warned about."""
    for name in names:
        fresh = name not in sys.modules
        try:
            with crediting(name):  # what it registers is this plugin's (a search's workers import it)
                importlib.import_module(name)
        except SystemExit as exc:  # an unguarded main(): the command ended without a word
            raise ConfigError(f"plugin module {name!r} exited on import (SystemExit {exc.code!r}); guard its script "
                              "code with `if __name__ == '__main__':`") from None
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                raise ConfigError(f"plugin module {name!r} is not importable ({exc}); install it, or put its "
                                  "folder on PYTHONPATH (the current folder is not searched: PYTHONPATH=. "
                                  "prunetune ...)") from None
            raise ConfigError(f"plugin module {name!r} failed on import: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # the plugin's own code: one line naming it, the cause chained
            raise ConfigError(f"plugin module {name!r} failed on import: {type(exc).__name__}: {exc}") from exc
        if fresh and name not in credited():
            log.warning("plugin module %r registered nothing at its import (no criterion, normaliser, schedule, "
                        "strategy, ratio preset, model or dataset)", name)


def _outside_roots() -> list[Path]:
    """The standard library, the installed packages and prunetune itself: code a version pins."""
    paths = sysconfig.get_paths()
    roots = {Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)}
    roots.add(Path(__file__).resolve().parent)
    return sorted(roots)


def user_modules() -> list[str]:
    """The loaded modules whose source lies outside the standard library, the installed packages and
    prunetune: the user's own code (plugins and what they import, their model), sorted."""
    roots = _outside_roots()
    out = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        if not any(path.is_relative_to(root) for root in roots):
            out.append(name)
    return sorted(out)


def source_digest(modules: Iterable[str]) -> str:
    """A digest of the source files of ``modules`` (loaded ones; unreadable sources are skipped)."""
    digest = hashlib.sha256()
    for name in modules:
        file = getattr(sys.modules.get(name), "__file__", None)
        try:
            digest.update(name.encode() + b"\0" + Path(file).read_bytes())
        except (TypeError, OSError):
            continue
    return digest.hexdigest()[:16]


def plugin_files_digest(names: Iterable[str]) -> str:
    """A digest of the source of the plugin modules ``names``: each module's file and, for a module of
    a package, every ``.py`` file of its top-level package (its helpers), so an edited plugin is seen
    without importing anything. Found through the import system's spec (no import); a module not
    found counts as absent."""
    digest = hashlib.sha256()
    for name in sorted(names):
        try:
            spec = importlib.util.find_spec(name.split(".")[0])
        except (ImportError, ValueError):
            spec = None
        files: list[Path] = []
        if spec is not None and spec.submodule_search_locations:  # a package: all of its files
            for folder in spec.submodule_search_locations:
                files += sorted(Path(folder).rglob("*.py"))
        elif spec is not None and spec.origin and spec.origin.endswith(".py"):
            files.append(Path(spec.origin))
        digest.update(name.encode() + b"\0")
        for file in files:
            try:
                digest.update(str(file).encode() + b"\0" + file.read_bytes())
            except OSError:
                continue
    return digest.hexdigest()[:16]
