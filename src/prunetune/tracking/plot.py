"""The accuracy-vs-MACs plot of a search: dominated trials grey, the front as a staircase, the budget.

Front points are labelled with their trial's name (``t07``, as the MLflow run is named); with few
trials every point is. ``front.html`` (:mod:`prunetune.tracking.plot_html`) is the interactive
version.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from prunetune.pruning.allocation import check_budget
from prunetune._atomic import write_bytes_atomic, write_text_atomic
from prunetune._imports import require
from prunetune._paths import check_output_file
from prunetune._text import short
from prunetune.exceptions import ConfigError
from prunetune.tracking.pareto import front_mask
from prunetune.tracking.plot_html import front_html
from prunetune.tracking.records import SearchRecords

LABEL_ALL = 16  # label every point up to this many trials


def check_plot_path(path: str | os.PathLike, *, overwrite: bool = False, what: str = "--plot",
                    flag: str | None = None, overwrite_flag: str = "--overwrite") -> Path:
    """``path`` if a plot can be written there: ``.html`` or a format matplotlib writes, a folder that
    can be created, no file there unless ``overwrite``; else a one-line :class:`ConfigError` naming
    ``what`` and the fixes (``flag``, default ``what``; ``overwrite_flag``: ``--overwrite``, or
    ``overwrite=True`` from Python)."""
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix != "html":  # the interactive page needs no matplotlib
        backend = require("matplotlib.backend_bases", extra="tracking", purpose="the Pareto plot")
        formats = sorted(backend.FigureCanvasBase.get_supported_filetypes())
        if suffix not in formats:
            raise ConfigError(f"{what} {str(path)!r}: the file name must end in .html or a plot format matplotlib "
                              f"writes ({', '.join('.' + f for f in formats)}), e.g. front.png")
    return check_output_file(path, what, overwrite=overwrite, flag=flag or what, overwrite_flag=overwrite_flag)


def plot_front(records: SearchRecords, path: str | os.PathLike, *, budget: float | None = None,
               picked: str | None = None, overwrite: bool = False) -> Path:
    """Save the plot of ``records`` to ``path`` (format from the suffix, e.g. ``.png``; ``.html``: the
    interactive page of :func:`~prunetune.tracking.plot_html.front_html`), atomically.

    Args:
        budget: MACs fraction drawn as a vertical line (default: the search's budget).
        picked: run id of a trial to circle (e.g. the exported one).
        overwrite: replace a file at ``path``; without it an existing file is a :class:`ConfigError`
            (checked first, and again when the file is put in place: ``FileExistsError``).
    """
    if budget is not None:
        check_budget(budget, "budget")
    if picked is not None and picked not in {t.run_id for t in records.trials}:
        raise ConfigError(f"picked {short(picked)} is not the run id of a finished trial of this search")
    path = check_plot_path(path, overwrite=overwrite, what="plot", flag="path", overwrite_flag="overwrite=True")
    if path.suffix.lower() == ".html":
        return write_text_atomic(path, front_html(records, budget=budget, picked=picked), replace=overwrite)
    matplotlib = require("matplotlib", extra="tracking", purpose="the Pareto plot")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    trials = records.trials
    x = np.array([t.macs_ratio for t in trials]) * 100
    y = np.array([t.accuracy for t in trials]) * 100
    on = front_mask(y, x)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        ax.scatter(x[~on], y[~on], s=22, color="0.7", label="dominated trials", zorder=2)
        order = np.argsort(x[on])
        ax.step(x[on][order], y[on][order], where="post", color="tab:blue", alpha=0.5, zorder=3)
        ax.scatter(x[on], y[on], s=34, color="tab:blue", label="Pareto front", zorder=4)
        budget = records.budget if budget is None else budget
        if budget is not None:
            ax.axvline(budget * 100, color="tab:red", linestyle="--", linewidth=1, label=f"budget {budget:.0%}")
        if "val_accuracy" in records.dense:
            ax.axhline(records.dense["val_accuracy"] * 100, color="0.4", linestyle=":", linewidth=1,
                       label="dense model")
        _decorate(ax, records, x, y, int(on.sum()), picked)
        fig.tight_layout()
        image = io.BytesIO()
        fig.savefig(image, format=path.suffix.lstrip(".").lower())
    finally:
        plt.close(fig)
    return write_bytes_atomic(path, image.getvalue(), replace=overwrite)


def _decorate(ax, records: SearchRecords, x: np.ndarray, y: np.ndarray, on_front: int, picked: str | None) -> None:
    on = front_mask(y, x)
    label_all = len(records.trials) <= LABEL_ALL
    for t, xi, yi, front in zip(records.trials, x, y, on):
        if front or label_all or t.run_id == picked:  # front points always carry their trial's name
            ax.annotate(t.name, (xi, yi), xytext=(4, 4), textcoords="offset points", fontsize=7,
                        color="tab:blue" if front else "0.45", zorder=6)
        if t.run_id == picked:
            ax.scatter([xi], [yi], s=140, facecolors="none", edgecolors="tab:orange", linewidths=2,
                       label="picked", zorder=5)
    ax.set_xlabel("MACs (% of dense)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{records.experiment}: {len(records.trials)} trials, {on_front} on the front")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def log_front(records: SearchRecords, mlflow_client: Any, *, png: bool = True,
              run_url: Callable[[str], str] | None = None) -> None:
    """Log ``front.html`` (and ``front.png``) of ``records`` to the search's parent run."""
    mlflow_client.log_text(records.parent_run_id, front_html(records, run_url=run_url), "front.html")
    if png and records.trials:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow_client.log_artifact(records.parent_run_id, str(plot_front(records, Path(tmp) / "front.png")))
