"""Export a trial as a recipe that carries its plan, written atomically.

The exported recipe is the trial's own recipe (``recipe.yaml`` artifact: model, data, seed and
pre-training identical to the search's base recipe, so the same dense weights come back) plus the
trial's final plan (``plan.json``) inline. ``prunetune prune --recipe best.yaml`` then rebuilds
exactly the network the trial measured: same kept channels, same MACs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from prunetune.pruning.allocation import check_budget
from prunetune._atomic import write_text_atomic
from prunetune._plugins import replay_flags
from prunetune._registry import unknown_name_message
from prunetune._yaml import parse_yaml
from prunetune._text import command_line, exception_line
from prunetune._spelling import FLAGS, Spelling
from prunetune.exceptions import ConfigError, TrackingError
from prunetune.recipes.schema import Recipe
from prunetune.tracking.pareto import pick_index
from prunetune.tracking.records import SearchRecords, TrialRecord
from prunetune.tracking.store import client


def choose(records: SearchRecords, pick: str = "max-acc", budget: float | None = None, *,
           trial: str | None = None, spelling: Spelling = FLAGS) -> TrialRecord:
    """The trial ``pick`` selects among the finished ones (``budget`` defaults to the search's), or the
    finished trial named ``trial``: its short name (``t07``), Ray trial id or MLflow run id. ``spelling``
    (here and in every function of this module): how errors name the options, flags or keywords
    (:mod:`prunetune._spelling`)."""
    if budget is not None:
        check_budget(budget, "budget")
    if trial is not None:
        record = find_trial(records, trial)
        if budget is not None and record.macs_ratio > budget + 1e-9:
            raise ConfigError(f"trial {record.name} uses {record.macs_ratio:.1%} of the dense MACs, above "
                              f"{spelling.given('budget', budget)}; drop {spelling.name('budget')} to export it "
                              "anyway, or pick a trial within it")
        return record
    budget = records.budget if budget is None else budget
    t = records.trials
    i = pick_index(pick, [r.accuracy for r in t], [r.macs for r in t], [r.macs_ratio for r in t], budget, spelling=spelling)
    return t[i]


def find_trial(records: SearchRecords, trial: str) -> TrialRecord:
    """The finished trial whose short name, Ray trial id or MLflow run id is ``trial``."""
    for record in records.trials:
        if trial in (record.label, record.trial_id, record.run_id):
            return record
    listing = command_line("prunetune", "pareto", ("--experiment", records.experiment), "--all")
    if trial in records.others:
        name, what = records.others[trial]
        raise ConfigError(f"trial {name} {what}, so it has no result to export; pick a finished trial "
                          f"(`{listing}` lists them)")
    known = [r.name for r in records.trials]
    hint = unknown_name_message("finished trial", trial, known)
    raise ConfigError(f"{hint} (experiment {records.experiment!r}); list them with `{listing}`")


def exported_recipe(uri: str, record: TrialRecord, spelling: Spelling = FLAGS) -> Recipe:
    """The trial's recipe with its final plan inline, validated."""
    mlflow_client = client(uri, spelling)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = _artifact(mlflow_client, record, "recipe.yaml", tmp)
        plan = _artifact(mlflow_client, record, "plan.json", tmp)
        data = parse_yaml(recipe.read_bytes(), f"the recipe.yaml artifact of trial run {record.run_id}")
        try:
            plan_data = json.loads(plan.read_bytes().decode("utf-8"))
        except ValueError as exc:  # JSON and UTF-8 errors
            plan_data = exc
    for name, value in (("recipe.yaml", data), ("plan.json", plan_data)):
        if not isinstance(value, dict):
            why = exception_line(value, 120) if isinstance(value, ValueError) else "not a mapping"
            raise TrackingError(f"the {name} artifact of trial run {record.run_id} is damaged ({why}); export "
                                f"another trial ({spelling.name('trial')}; `prunetune pareto --all` lists them)")
    data["plan"] = plan_data
    return Recipe.from_dict(data)


def recipe_text(recipe: Recipe, record: TrialRecord, records: SearchRecords) -> str:
    """YAML of an exported recipe with a provenance header (plan index lists in flow style)."""
    header = (f"# exported by prunetune from experiment {records.experiment!r}, trial {record.name} ({record.trial_id})"
              f" (MLflow run {record.run_id})\n"
              f"# validation accuracy {record.accuracy:.4f}, MACs {record.macs_ratio:.2%} of dense"
              f" ({record.macs / 1e6:.2f}M); replay: prunetune prune --recipe <this file> --out pruned.pt"
              f"{replay_flags(recipe.to_dict())}\n")
    return header + yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None, width=110)


def export_trial(records: SearchRecords, out: str | os.PathLike, *, pick: str = "max-acc",
                 budget: float | None = None, overwrite: bool = False,
                 trial: str | None = None, spelling: Spelling = FLAGS) -> tuple[TrialRecord, Path]:
    """Choose a trial (``pick``, or the one named ``trial``), build its recipe with plan and write it to ``out``."""
    if Path(out).exists() and not overwrite:
        raise ConfigError(f"{str(out)!r} already exists; pass {spelling.switch('overwrite')} to replace it or choose "
                          f"another {spelling.name('out')}")
    record = choose(records, pick, budget, trial=trial, spelling=spelling)
    recipe = exported_recipe(records.uri, record, spelling)
    return record, write_text_atomic(out, recipe_text(recipe, record, records))


def _artifact(mlflow_client: Any, record: TrialRecord, name: str, tmp: str) -> Path:
    try:
        return Path(mlflow_client.download_artifacts(record.run_id, name, tmp))
    except Exception as exc:  # MlflowException or OSError: the artifact is missing
        raise TrackingError(f"trial run {record.run_id} has no readable {name} artifact "
                            f"({type(exc).__name__}); was it logged by `prunetune search`?") from None
