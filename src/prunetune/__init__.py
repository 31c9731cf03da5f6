"""prunetune: automatic CNN filter pruning under a MACs budget.

The Python API (:mod:`prunetune.api`)::

    prunetune.search(config_or_path, **overrides) -> SearchOutcome
    prunetune.pareto(experiment) -> Front
    prunetune.export(experiment, out, pick="max-acc" | trial="t07") -> (TrialRecord, Path)
    prunetune.prune(recipe, out=None) -> PruneResult

``prunetune.search`` is also the subpackage that holds the search; calling it runs one.
The core (``prunetune.pruning``, ``prunetune.models``, ``prunetune.data``) needs only torch; the
search (Ray Tune + Optuna) and tracking (MLflow) are imported only when they run.
"""

from prunetune.recipes.pruned_file import load_pruned, save_pruned
from prunetune.deployment import deploy
from prunetune.exceptions import ConfigError, PrunetuneError
from prunetune.models import create_model, list_models
from prunetune.version import __version__

__all__ = ["ConfigError", "PrunetuneError", "__version__", "create_model", "deploy", "export", "list_models", "load_pruned", "pareto", "prune",
           "save_pruned", "search"]
_API = ("prune", "pareto", "export")


def __getattr__(name: str):  # the API, imported on first use (import prunetune stays light)
    if name == "search":
        import importlib

        return importlib.import_module("prunetune.search")  # a callable subpackage: prunetune.search(...)
    if name in _API:
        from prunetune import api

        return getattr(api, name)
    raise AttributeError(f"module 'prunetune' has no attribute {name!r}")
