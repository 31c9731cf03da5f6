"""Running user code only with the user's explicit opt-in.

A model named ``package.module:function`` makes prunetune import that module and call the function.
Recipes are meant to be shared (``prunetune export`` writes them), so a name read from a recipe or
config must not run code by itself: importing user code needs ``--allow-code`` on the command line,
``allow_code: true`` in the user's own search config, or ``allow_code=True`` from Python. A recipe
file cannot grant it to itself.

Some modules are refused even with the opt-in, because no model factory lives there and their
functions load or run arbitrary code (``torch.hub:load`` runs a ``hubconf.py`` from any directory
or repository; ``builtins:eval``, ``os:system``, ...).
"""

from __future__ import annotations

from prunetune._checks import boolean
from prunetune._text import short
from prunetune.exceptions import UntrustedCodeError

OPT_IN = ("pass --allow-code (command line), set allow_code: true in your own search config, or call with "
          "allow_code=True (Python)")
# modules (and their submodules) that hold no model factory and whose functions run or load code
REFUSED_MODULES = frozenset({
    "torch.hub", "torch.package", "torch.serialization", "builtins", "__builtin__", "__main__", "os", "posix",
    "nt", "subprocess", "sys", "importlib", "runpy", "pickle", "_pickle", "marshal", "shutil", "pty", "code",
    "codeop", "ctypes", "multiprocessing", "pdb", "webbrowser", "cloudpickle", "dill", "joblib",
})
# functions that unpickle files when asked to (weights_only=False, allow_pickle=True)
REFUSED_FUNCTIONS = frozenset({("torch", "load"), ("numpy", "load"), ("pandas", "read_pickle")})


def refused_module(module: str) -> str | None:
    """The entry of :data:`REFUSED_MODULES` that ``module`` is or lies under, None if none."""
    return next((m for m in sorted(REFUSED_MODULES) if module == m or module.startswith(m + ".")), None)


def is_user_code(name: object) -> bool:
    """True for a ``package.module:function`` name (the form that imports code)."""
    return isinstance(name, str) and ":" in name and not name.startswith("tv:")


def check_user_code(name: str, *, allow_code: bool, what: str = "model", advice: str = OPT_IN) -> tuple[str, str]:
    """Refuse to import ``name`` (``module:attr``) unless allowed; return ``(module, attr)``.
    ``advice``: how the caller opts in, ending the error without it (default: every way there is).

    Raises:
        UntrustedCodeError: a refused module (always), a malformed name, or no opt-in.
    """
    boolean(allow_code, "allow_code")  # "false" from a config or an environment variable is no opt-in
    module, _, attr = name.partition(":")
    if not module or not attr or not all(part.isidentifier() for part in module.split(".")) \
            or not attr.isidentifier():
        raise UntrustedCodeError(f"{what} {short(name)} is not a 'package.module:function' name; use a "
                                 "registered name or package.module:function")
    refused = [m for m in (refused_module(module),) if m is not None]
    if (module, attr) in REFUSED_FUNCTIONS:
        refused = [f"{module}:{attr}"]
    if refused:
        raise UntrustedCodeError(f"{what} {short(name)} is refused: {refused[0]!r} holds no model factory and "
                                 "would run or load arbitrary code; write a package.module:function that "
                                 "builds the model")
    if attr.startswith("__"):
        raise UntrustedCodeError(f"{what} {short(name)} is refused: {attr!r} is not a model factory")
    if not allow_code:
        raise UntrustedCodeError(f"{what} {short(name)} would import and run Python code from {module!r}; "
                                 f"if you trust it, {advice}")
    return module, attr
