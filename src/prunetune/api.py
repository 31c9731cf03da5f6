"""The Python API: the four things the ``prunetune`` command does, as functions.

>>> import prunetune
>>> outcome = prunetune.search("search.yaml", macs_budget=0.5, trials=12)     # doctest: +SKIP
>>> front = prunetune.pareto(outcome.experiment)                               # doctest: +SKIP
>>> record, path = prunetune.export(outcome.experiment, "best.yaml")           # doctest: +SKIP
>>> result = prunetune.prune(path, out="pruned.pt")                            # doctest: +SKIP

They take the same settings as the command's flags and raise the same errors (subclasses of
:class:`prunetune.PrunetuneError`, one-line messages). Progress goes to the ``prunetune`` logger
(INFO; configure :mod:`logging` to see it) and, for :func:`search`, to an optional callback.
Ray, Optuna and MLflow are imported only when a function runs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunetune._numbers import plain
from prunetune._spelling import KEYWORDS
from prunetune._text import short
from prunetune.exceptions import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from prunetune.recipes.pipeline import PruneResult
    from prunetune.recipes.schema import Recipe
    from prunetune.search.config import SearchConfig
    from prunetune.search.progress import ProgressEvent
    from prunetune.search.runner import SearchOutcome
    from prunetune.tracking.records import SearchRecords, TrialRecord

PathLike = str | os.PathLike


def search(config: PathLike | Mapping[str, Any] | SearchConfig, /, *, resume: bool | None = None,
           progress: Callable[[ProgressEvent], Any] | None = None, show_progress: bool = False,
           **overrides: Any) -> SearchOutcome:
    """Run a search (or continue an interrupted one) and return where its results are.

    Args:
        config: a search config file, its content as a mapping (relative paths are relative to the
            working directory), or a parsed :class:`~prunetune.search.SearchConfig`.
        resume: None (default): continue an interrupted search of the same experiment if there is
            one; True: only continue (an error if there is none); False: never (an error if it exists).
        progress: called with a :class:`~prunetune.search.progress.ProgressEvent` on every change
            (phase, trial started / ended, epoch) and once a second; ``event.status`` is a one-line
            summary. Status lines also go to the ``prunetune`` logger either way. It runs in the
            search's own threads: keep it quick (hand slow work to a queue), as the search waits
            for it; an exception it raises is logged once as a warning and does not stop the search.
        show_progress: progress bars of the dense training and scoring (tqdm, on stderr).
        **overrides: search settings that win over the config, as the command's flags do:
            ``macs_budget``, ``trials``, ``concurrency``, ``experiment``, ``tracking_uri``,
            ``storage_path``, ``study_storage``, ``ray_address``, ``cpus_per_trial``,
            ``gpus_per_trial``, ``sampler``, ``seed``, ``time_budget_s``, ``asha``, ``allow_code``,
            ``plugins`` (modules the Ray workers import: your registered entries), ...

    Returns:
        :class:`~prunetune.search.SearchOutcome`: ``experiment``, ``tracking_uri``,
        ``parent_run_id``, ``status`` (FINISHED; KILLED when interrupted; FAILED when no trial
        finished and one failed, ``error`` then holding the first failed one's error line),
        ``counts`` of trial runs by status, ``study_storage`` / ``study_name`` of the Optuna study.
    """
    from prunetune._caller_state import process_state_kept, random_state_kept
    from prunetune._checks import boolean
    from prunetune.search.config import SearchConfig, load_search_config, parse_search_config
    from prunetune.search.runner import run_search

    if resume is not None and not isinstance(resume, bool):
        raise ConfigError(f"resume must be None, True or False, got {_kind(resume)}")
    boolean(show_progress, "show_progress")
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress must be a function of one ProgressEvent (or None), got {_kind(progress)}")
    overrides = plain(overrides)  # numpy scalars as the numbers they hold
    if isinstance(config, SearchConfig):
        if overrides:
            config = parse_search_config(config.to_dict(), source=config.source, overrides=overrides,
                                         spelling=KEYWORDS)
    elif isinstance(config, Mapping):
        config = parse_search_config(plain(config), overrides=overrides, spelling=KEYWORDS)
    else:
        config = load_search_config(_path(config, "config", "a search config file, a mapping or a SearchConfig"),
                                    overrides, spelling=KEYWORDS)
    with random_state_kept(), process_state_kept():  # the caller's streams; what a local Ray changes
        return run_search(config, resume=resume, progress=progress, show_progress=show_progress)


def prune(recipe: PathLike | Mapping[str, Any] | Recipe, /, *, out: PathLike | None = None,
          overwrite: bool = False, allow_code: bool = False, show_progress: bool = False) -> PruneResult:
    """Prune one model as ``recipe`` says: score, allocate, prune, fine-tune, remove, evaluate.

    An exported recipe (:func:`export`) carries its trial's plan and thread count: the replay is
    the network the trial measured, with its test accuracy.

    Args:
        recipe: a recipe file, its content as a mapping, or a :class:`~prunetune.recipes.schema.Recipe`.
        out: save the pruned model here (state dict + plan; ``<out stem>.plan.json`` beside it).
        overwrite: replace an existing ``out`` (and its plan file).
        allow_code: let a ``package.module:function`` model name run that code.

    Returns:
        :class:`~prunetune.recipes.pipeline.PruneResult`: ``dense`` and ``pruned`` metrics (MACs, params,
        test ``accuracy``), the ``plan``, the fine-tune ``history``, the pruned ``model``.
    """
    from prunetune._caller_state import random_state_kept
    from prunetune._checks import boolean
    from prunetune._paths import check_file_name, check_output_file
    from prunetune.recipes.pipeline import run_recipe
    from prunetune.recipes.schema import Recipe

    boolean(allow_code, "allow_code")
    boolean(overwrite, "overwrite")
    boolean(show_progress, "show_progress")
    if isinstance(recipe, Mapping):
        recipe = Recipe.from_dict(plain(recipe), allow_code=allow_code)
    elif isinstance(recipe, Recipe):
        if allow_code and not recipe.allow_code:  # the caller's opt-in counts for a Recipe built without it
            recipe = dataclasses.replace(recipe, allow_code=True)
    else:
        recipe = Recipe.from_yaml(_path(recipe, "recipe", "a recipe file, a mapping or a Recipe"),
                                  allow_code=allow_code)
    if out is not None:
        out = check_file_name(_path(out, "out", "a file name or None"), "out", flag="out")
        out = check_output_file(out, "out", overwrite=overwrite, flag="out", overwrite_flag="overwrite=True",
                                written_with=[Path(out).with_suffix(".plan.json")])
        check_output_file(Path(out).with_suffix(".plan.json"), "the plan file next to out", overwrite=overwrite,
                          flag="out", overwrite_flag="overwrite=True")
    with random_state_kept():  # the recipe's seed is its own; the caller's random streams stay theirs
        return run_recipe(recipe, out=out, overwrite=overwrite, show_progress=show_progress)


def _kind(value: object) -> str:
    return f"{short(value)} (of type {type(value).__name__})"


def _path(value: object, what: str, expected: str) -> str | os.PathLike:
    """``value`` if it is a path (str or os.PathLike, not bytes); else a one-line error naming what it was."""
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        return value
    raise ConfigError(f"{what} must be {expected}, got {_kind(value)}")


@dataclass(frozen=True)
class Front:
    """A search's finished trials and its Pareto front (validation accuracy ↑, MACs ↓)."""

    records: SearchRecords

    @property
    def trials(self) -> tuple[TrialRecord, ...]:
        """Every finished trial, cheapest first."""
        return self.records.trials

    @property
    def front(self) -> tuple[TrialRecord, ...]:
        """The non-dominated trials, cheapest first (identical points are all kept)."""
        from prunetune.tracking.pareto import front_mask

        mask = front_mask([t.accuracy for t in self.trials], [t.macs for t in self.trials])
        return tuple(t for t, on in zip(self.trials, mask) if on)

    def plot(self, path: PathLike, *, budget: float | None = None, picked: str | None = None,
             overwrite: bool = False) -> Path:
        """Save the plot (``.png``, ``.svg``, ...; ``.html``: the interactive page); a file already at
        ``path`` is an error unless ``overwrite=True``."""
        from prunetune.tracking.plot import plot_front

        return plot_front(self.records, path, budget=budget, picked=picked, overwrite=overwrite)


def pareto(experiment: str, *, tracking_uri: str | None = None, search_run: str | None = None) -> Front:
    """The finished trials and the Pareto front of the latest search in ``experiment``.

    Args:
        tracking_uri: the MLflow store the search wrote (default ``sqlite:///mlflow.db`` in the
            working directory; ``http://host:port`` for a server).
        search_run: a search's parent run id (default: the latest search of the experiment).
    """
    from prunetune.tracking import load_search, resolve_tracking_uri

    if isinstance(tracking_uri, os.PathLike):  # a path of the sqlite store
        tracking_uri = os.fspath(tracking_uri)
    return Front(load_search(resolve_tracking_uri(tracking_uri, spelling=KEYWORDS), experiment, parent_run_id=search_run,
                             spelling=KEYWORDS))


def export(experiment: str, out: PathLike, *, pick: str = "max-acc", trial: str | None = None,
           budget: float | None = None, tracking_uri: str | None = None, search_run: str | None = None,
           overwrite: bool = False) -> tuple[TrialRecord, Path]:
    """Write a finished trial's recipe, with its plan inline, to ``out``; :func:`prune` replays it.

    Args:
        pick: ``max-acc`` (the most accurate trial within the budget) or ``knee`` (the knee of the
            front within the budget); ignored when ``trial`` is given.
        trial: a trial's name (``t07``, as its MLflow run is named), Ray trial id or MLflow run id.
        budget: a MACs fraction for ``pick`` (default: the search's budget).

    Returns:
        The exported trial's :class:`~prunetune.tracking.TrialRecord` and the path written.
    """
    from prunetune._paths import check_output_file
    from prunetune.tracking import export_trial

    check_output_file(_path(out, "out", "a file name"), "out", overwrite=overwrite, flag="out",
                      overwrite_flag="overwrite=True")
    records = pareto(experiment, tracking_uri=tracking_uri, search_run=search_run).records
    return export_trial(records, out, pick=pick, budget=budget, overwrite=overwrite, trial=trial, spelling=KEYWORDS)
