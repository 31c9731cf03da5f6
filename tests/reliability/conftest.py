"""Fixtures of the reliability suite: a working directory whose files are compared before and after,
and guards that fail a test if a bad input got as far as training or starting Ray."""

from __future__ import annotations

import pytest


@pytest.fixture()
def no_expensive_work(monkeypatch, tmp_path_factory):
    """Training and starting Ray fail the test: a bad input must be refused before either.

    The score/dense cache is empty, so a case that reached the dense model would have to train it.
    """
    monkeypatch.setenv("PRUNETUNE_CACHE_DIR", str(tmp_path_factory.mktemp("empty-cache")))
    import prunetune.recipes.pipeline as pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a bad input got as far as training")

    monkeypatch.setattr(pipeline, "finetune", refuse)
    try:
        import ray
    except ImportError:  # pragma: no cover - search extra missing
        return

    def no_ray(*args, **kwargs):
        raise AssertionError("a bad input got as far as starting Ray")

    monkeypatch.setattr(ray, "init", no_ray)
