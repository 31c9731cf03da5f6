"""Tracking: MLflow runs of a search (one parent, one nested run per trial), the Pareto front, its
plot, and export of a trial as a recipe with its plan.

Never imports Ray; MLflow and matplotlib are imported only when a function needs them (extra
``tracking``).
"""

from prunetune.tracking.export import choose, export_trial, exported_recipe, find_trial
from prunetune.tracking.pareto import front_mask, knee_index, max_acc_index, pareto_mask, pick_index
from prunetune.tracking.plot import log_front, plot_front
from prunetune.tracking.plot_html import front_html
from prunetune.tracking.records import SearchRecords, TrialRecord, load_search
from prunetune.tracking.store import resolve_tracking_uri, ui_command
from prunetune.tracking.tracker import SearchTracker

__all__ = [
    "SearchRecords", "SearchTracker", "TrialRecord", "choose", "export_trial", "exported_recipe", "find_trial",
    "front_html", "front_mask", "log_front",
    "knee_index", "load_search", "max_acc_index", "pareto_mask", "pick_index", "plot_front",
    "resolve_tracking_uri", "ui_command",
]
