"""prunetune's own bridge between Ray Tune and an Optuna study (Optuna's public ask/tell API only).

Ray's ``OptunaSearch`` tells Optuna every ending as COMPLETE with whatever the last result held, and
keeps its trials in private fields; changing that meant reaching into those fields, which any Ray
release may rename. :class:`FinalOnlySearch` is instead a plain :class:`ray.tune.search.Searcher`
that owns its study:

- the study is created (or, on a resume, loaded) in the given storage with one direction per
  metric, no pruner, and the given sampler; ``points_to_evaluate`` are enqueued;
- ``suggest`` asks the study for a trial and runs the define-by-run space on it: the config is the
  sampled values followed by the constants the space returns (as Ray's searcher built it);
- only final results are told COMPLETE (see :meth:`FinalOnlySearch.on_trial_complete`).

Imported only by :mod:`prunetune.search.ray_parts` (extra ``search``).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from ray.tune.search import Searcher

from prunetune.search.study import RAY_TRIAL_ATTR

Define = Callable[[Any], Mapping[str, Any] | None]


class FinalOnlySearch(Searcher):
    """A Ray searcher on an Optuna study that tells Optuna only final results.

    A trial stopped early (by ASHA or the time budget: its last result is not marked ``final``) is
    told as PRUNED, not COMPLETE with partial values; a failed or non-finite one as FAIL. Every
    Optuna trial records its Ray trial id (user attribute ``ray_trial_id``), which is how a resume
    matches the study (in its RDB storage) with what MLflow recorded.

    Attributes:
        study: the Optuna study (public: tests and the runner read its trials).
    """

    def __init__(self, space: Define, metric: Sequence[str], mode: Sequence[str], *, sampler: Any,
                 points_to_evaluate: Sequence[Mapping[str, Any]] | None = None, storage: Any = None,
                 study_name: str = "optuna") -> None:
        super().__init__(metric=list(metric), mode=list(mode))
        self.space = space
        directions = ["minimize" if m == "min" else "maximize" for m in mode]
        self.study = optuna.create_study(storage=storage, sampler=sampler, pruner=optuna.pruners.NopPruner(),
                                         study_name=study_name, load_if_exists=True, directions=directions)
        for point in points_to_evaluate or ():
            self.study.enqueue_trial(dict(point))
        self.trials: dict[str, optuna.Trial] = {}
        self.completed: set[str] = set()

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self.trials:
            self.trials[trial_id] = self.study.ask()
        trial = self.trials[trial_id]
        constants = self.space(trial) or {}
        if RAY_TRIAL_ATTR not in trial.user_attrs:
            trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return {**trial.params, **constants}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.completed or trial_id not in self.trials:
            return
        state, values = final_state(result, error, self.metric)
        self.study.tell(self.trials[trial_id], values, state=state)
        self.completed.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Refused: a resumed search starts a fresh Tuner on the Optuna study and MLflow's record and
        never unpickles the searcher state Ray saved (it could run code); only ``Tuner.restore``,
        which prunetune does not call, would ask for it."""
        raise RuntimeError(
            f"prunetune does not restore its searcher from {checkpoint_path!r} (unpickling could run code); "
            "resume a search by running the same `prunetune search` command again"
        )


def final_state(result: Mapping[str, Any] | None, error: bool,
                metrics: Sequence[str]) -> tuple[optuna.trial.TrialState, list[float] | None]:
    """How a Ray trial's ending is told to Optuna: COMPLETE with values only for a finite final result."""
    State = optuna.trial.TrialState
    if error or result is None:
        return State.FAIL, None
    if not result.get("final"):
        return State.PRUNED, None
    values = [result.get(m) for m in metrics]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return State.FAIL, None
    return State.COMPLETE, values
