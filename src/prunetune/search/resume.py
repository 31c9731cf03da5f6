"""Resuming an interrupted search (Ctrl-C, a crash, ``kill -9``): what is done, what is left.

MLflow is the record of what finished: a trial counts as done when its run is FINISHED, FAILED, or
KILLED by the scheduler (tag ``prunetune.ended: stopped early``). Runs left RUNNING by a dead driver
become KILLED (``· interrupted``), like those an interrupt closed; neither is done. The fine-tune
Optuna study lives in its RDB storage; :func:`prunetune.search.study.repair` tells it what MLflow
recorded for trials it still has RUNNING and enqueues again the screened candidates that were lost
with the driver. A fresh Ray Tuner then runs ``trials - done`` more trials on the same study: the
screened candidates still waiting in the study's queue first, then sampled ones. Nothing from Ray's
own experiment state (pickles) is read, so no trial that MLflow recorded as finished runs again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunetune._atomic import write_text_atomic
from prunetune._text import command_line, exception_line, masked_url
from prunetune.exceptions import ConfigError
from prunetune.search import trust
from prunetune.search.config import URL_SETTINGS, SearchConfig
from prunetune.tracking.tracker import ENDED_TAG, FAILED, FINISHED, KILLED, TRIAL_TAG

log = logging.getLogger(__name__)

STATE_FILE = "prunetune-search.json"
STATE_VERSION = 3  # 1 (up to 8c351a4): the identity's base recipe carried the search's budget as its allocation;
# 2 (up to a93fed4): written when finetune.recalibrate_bn defaulted to false
RECALIBRATE_SINCE = 3


@dataclass(frozen=True)
class Done:
    """Trials of a search that ended for good, by Ray trial id (what the study is repaired with)."""

    finished: dict[str, tuple[float, float]] = field(default_factory=dict)  # (accuracy, MACs)
    ended: dict[str, str] = field(default_factory=dict)  # Optuna state: FAIL or PRUNED

    @property
    def count(self) -> int:
        return len(self.finished) + len(self.ended)


def done_trials(runs: list[Any]) -> Done:
    """What ``runs`` (the search's trial runs, after stale ones were closed) say ended for good."""
    finished: dict[str, tuple[float, float]] = {}
    ended: dict[str, str] = {}
    for run in runs:
        trial_id = run.data.tags.get(TRIAL_TAG, run.info.run_id)
        status, m = run.info.status, run.data.metrics
        if status == FINISHED:
            finished[trial_id] = (m.get("accuracy", float("nan")), m.get("macs", float("nan")))
        elif status == FAILED:
            ended[trial_id] = "FAIL"
        elif status == KILLED and run.data.tags.get(ENDED_TAG) == "stopped early":
            ended[trial_id] = "PRUNED"
    return Done(finished, ended)


def resume_state(config: SearchConfig, exp_dir: Path, resume: bool | None) -> dict[str, Any] | None:
    """The saved state to resume from, None to start; errors when resuming is impossible or unsafe."""
    state = read_state(exp_dir)
    name = config.settings.experiment
    if state is None:
        if resume:
            raise ConfigError(f"nothing to resume: no interrupted search {name!r} in {exp_dir}; "
                              "drop --resume to start it, or pass the --experiment and --storage-path it used")
        return None
    if resume is False:
        raise ConfigError(f"search {name!r} already exists in {exp_dir}; resume it (same command) or choose "
                          "another --experiment")
    if state.get("finished"):  # before the identity: a finished search is never resumed, whatever changed
        trials = state.get("identity", {}).get("trials", config.settings.trials)  # as it ran, not as asked now
        if state.get("failed"):
            raise ConfigError(f"search {name!r} in {exp_dir} ended without a finished trial (its trials failed, or "
                              "were stopped early or cut by the time budget); "
                              "their errors are in MLflow (the trial runs' prunetune.error tags): fix the cause and "
                              "start a new search with another --experiment")
        inspect = command_line("prunetune", "pareto", ("--experiment", name))
        raise ConfigError(f"search {name!r} already finished ({trials} trials) in {exp_dir}; inspect it with "
                          f"`{inspect}`, or start a new one (more trials included) with another --experiment")
    # compared as the search ran: the run takes the same config (recorded_config)
    ran = _as_recorded(config, state)
    identity = json.loads(json.dumps(state_identity(ran, state.get("version", 1)), default=str))
    for key, old in state["identity"].items():
        if key in URL_SETTINGS and isinstance(old, str):
            old = masked_url(old)  # state files before the mask held the password
        if identity.get(key) != old:
            where, was, now = first_difference(key, old, identity.get(key))
            raise ConfigError(f"search {name!r} in {exp_dir} was started with another {where!r} "
                              f"({_short(was)}, now {_short(now)}); resume with the same config, "
                              "or start a new search with another --experiment")
    trust.check(exp_dir, state, state_file=STATE_FILE)  # ours, unchanged since it stopped?
    return state


def first_difference(path: str, old: Any, new: Any) -> tuple[str, Any, Any]:
    """The dotted key of the first place where two JSON-like values differ, and the two values there
    (a changed ``recipe.finetune.epochs`` rather than the whole recipe, whose start may be the same)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if key not in old or key not in new:
                return f"{path}.{key}", old.get(key, "absent"), new.get(key, "absent")
            if old[key] != new[key]:
                return first_difference(f"{path}.{key}", old[key], new[key])
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            if a != b:
                return first_difference(f"{path}[{i}]", a, b)
    return path, old, new


def read_state(exp_dir: Path) -> dict[str, Any] | None:
    """The state file of ``exp_dir`` (None when there is none); a damaged one is a one-line error."""
    path = exp_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
        why = None if isinstance(state, dict) and isinstance(state.get("identity"), dict) else \
            "not a mapping with an 'identity'"
    except (OSError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
        why = exception_line(exc, 120)
    if why is not None:
        raise ConfigError(f"search state {str(path)!r} is damaged ({why}), so the search cannot be resumed; its "
                          "finished trials stay in MLflow: start a new search with another --experiment (or move "
                          f"{str(exp_dir)!r} away)")
    return state


def state_identity(config: SearchConfig, version: int) -> dict[str, Any]:
    """``config``'s identity as a state file of ``version`` records it. Version 1 (written up to
    8c351a4) recorded a base recipe without allocation with the search's budget injected as
    ``allocation: {macs_budget: B}``, so a search interrupted then still resumes, and only with the
    same budget."""
    identity = config.identity()
    if version < 2 and config.recipe.allocation is None:
        identity["recipe"] = {**identity["recipe"], "allocation": {"macs_budget": config.settings.macs_budget}}
    return identity


def recorded_config(config: SearchConfig, state: dict[str, Any] | None) -> SearchConfig:
    """``config`` as the interrupted search ran it: a state written before ``finetune.recalibrate_bn``
    defaulted to true resumes with the value it recorded (false unless given), so that every trial of
    one search fine-tunes alike."""
    ran = _as_recorded(config, state)
    if ran is not config and ran.recipe.finetune.recalibrate_bn != config.recipe.finetune.recalibrate_bn:
        log.warning("resuming with finetune.recalibrate_bn: %s, as this search started (before it defaulted "
                    "to true); its remaining trials fine-tune as its first ones did",
                    str(ran.recipe.finetune.recalibrate_bn).lower())
    return ran


def _as_recorded(config: SearchConfig, state: dict[str, Any] | None) -> SearchConfig:
    if state is None or state.get("version", 1) >= RECALIBRATE_SINCE:
        return config
    recorded = bool(state["identity"].get("recipe", {}).get("finetune", {}).get("recalibrate_bn", False))
    finetune = dataclasses.replace(config.recipe.finetune, recalibrate_bn=recorded)
    return dataclasses.replace(config, recipe=config.recipe.with_changes(finetune=finetune))


def write_state(exp_dir: Path, state: dict[str, Any]) -> None:
    write_text_atomic(exp_dir / STATE_FILE, json.dumps({"version": STATE_VERSION, **state}, indent=1, default=str))


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
