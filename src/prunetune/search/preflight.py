"""What a search checks before any work: where it will write (results, resume state, MLflow store, Optuna study),
and that its trials' processes will know every entry it names.

A search that trains for minutes and then cannot write its results (``storage_path`` under a
regular file, a tracking store under ``/proc``, an MLflow server that is not there) loses them; these
checks fail first, in one line, and create nothing.
"""

from __future__ import annotations

from typing import Any

from prunetune._paths import check_output_dir
from prunetune._plugins import plugin_registries, strings_in
from prunetune.exceptions import ConfigError
from prunetune.search.config import SearchSettings
from prunetune.search.study import check_study_storage
from prunetune.tracking.store import check_writable_store


def check_outputs(settings: SearchSettings) -> None:
    """Raise a :class:`~prunetune.exceptions.PrunetuneError` if the search could not write its results."""
    check_output_dir(settings.storage_path, "storage_path (Ray results and resume state)")
    check_output_dir(settings.experiment_dir, "the search's results folder (storage_path/experiment)")
    check_writable_store(settings.tracking_uri)
    check_study_storage(settings.study_url, settings.tracking_uri)


def check_plugins(config: Any) -> None:
    """A :class:`ConfigError` where the search's recipe or space names an entry (criterion,
    normaliser, schedule, strategy, ratio preset) that code outside prunetune registered in this
    process, other than by importing one of the search's ``plugins`` modules (or in that module's
    own code): the trials run in Ray worker processes, which import prunetune and those modules
    only, so every candidate and trial failed on the unknown name after the scoring and Ray's start."""
    plugins = config.settings.plugins
    named = strings_in(config.recipe.to_dict()) | strings_in(config.space.to_dict())
    # models and datasets reach the workers as objects (the model pickled, the data loaded here), not names
    for registry in (r for r in plugin_registries() if r.kind not in ("model", "dataset")):
        for name, module in sorted(registry.plugins().items()):
            if name in named and module not in plugins:
                fix = (f"name the module in the search config's plugins (plugins: [{module}], with allow_code: "
                       f"true) or pass --plugin {module} --allow-code; the workers then import it"
                       if module != "__main__" else "move the registration into a module of its own and name "
                       "that in the search config's plugins (with allow_code: true); the workers then import it")
                raise ConfigError(
                    f"{registry.kind} {name!r} is registered by {module!r} in this process only; a search's trials run "
                    f"in Ray worker processes, which import prunetune but not {module!r}, so every trial would fail "
                    f"on the name. To search with it, {fix}")
