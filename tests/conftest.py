"""Test-wide settings: a private score/dense-model cache per test session, no progress bars."""

from __future__ import annotations

import os

import pytest
import torch

from prunetune.testing.models import randomize_bn  # noqa: F401  shared by the tests (prunetune.testing owns it)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["PRUNETUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("prunetune-cache"))
    os.environ["PRUNETUNE_PROGRESS"] = "0"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True, scope="session")
def _mlflow_tables_from_a_template(tmp_path_factory: pytest.TempPathFactory):
    """A new MLflow sqlite store in this process gets its tables as a copy of one store migrated once
    per session, not by running MLflow's migrations again (about 3 s a store on a 2-core machine, and
    the suite makes dozens). The copy is MLflow's own output; a file that is not new and empty, and
    stores made by other processes (the command-line tests, Ray workers), take MLflow's own path."""
    try:
        import mlflow.store.db.utils as db_utils
    except ImportError:  # the tracking extra is not installed: nothing to speed up
        yield
        return
    import shutil

    import sqlalchemy

    real = db_utils._initialize_tables
    template = tmp_path_factory.mktemp("mlflow-template") / "tables.db"

    def initialize(engine) -> None:
        path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if not path or path == ":memory:" or not os.path.isfile(path) or os.path.getsize(path) != 0:
            return real(engine)
        if not template.exists():
            made = sqlalchemy.create_engine(f"sqlite:///{template}")
            real(made)
            made.dispose()
        engine.dispose()  # no connection may hold the empty file while it is replaced
        shutil.copyfile(template, path)

    db_utils._initialize_tables = initialize
    yield
    db_utils._initialize_tables = real


def optimistic_channels(monkeypatch) -> None:
    """Break the analytic count on purpose: pruned convs look thinner than they are (dense stays right)."""
    from prunetune.pruning.geometry import LayerGeometry

    real = LayerGeometry.channels

    def channels(self, keep):
        out_c, in_c = real(self, keep)
        return max(1, out_c * out_c // self.out_channels), in_c

    monkeypatch.setattr(LayerGeometry, "channels", channels)
