"""What a search checks before any work: where it will write (results, resume state, MLflow store, Optuna study).

A search that trains for minutes and then cannot write its results (``storage_path`` under a
regular file, a tracking store under ``/proc``, an MLflow server that is not there) loses them; these
checks fail first, in one line, and create nothing.
"""

from __future__ import annotations

from prunetune._paths import check_output_dir
from prunetune.search.config import SearchSettings
from prunetune.search.study import check_study_storage
from prunetune.tracking.store import check_writable_store


def check_outputs(settings: SearchSettings) -> None:
    """Raise a :class:`~prunetune.exceptions.PrunetuneError` if the search could not write its results."""
    check_output_dir(settings.storage_path, "storage_path (Ray results and resume state)")
    check_output_dir(settings.experiment_dir, "the search's results folder (storage_path/experiment)")
    check_writable_store(settings.tracking_uri)
    check_study_storage(settings.study_url, settings.tracking_uri)
