"""Live progress of a search: phases, trials running / finished / failed, the best accuracy, ETA.

A :class:`Progress` is fed by the runner (phases, screening) and by the tracking callback on the
driver (trials, epochs). It reports two ways:

- **plain lines** through :mod:`logging` (logger ``prunetune``, level INFO): one per phase, per
  screening quarter, per ended trial, and a heartbeat with the running trials every
  ``heartbeat_s`` seconds, so a CI log shows the search moving;
- an optional **callback** that receives a :class:`ProgressEvent` for every change and every
  second (``tick``): a terminal display redraws its status line from ``event.status``.

No Ray, Optuna or MLflow here. Times are ``m:ss`` (``h:mm:ss`` past an hour).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prunetune._text import exception_line

log = logging.getLogger("prunetune")
PHASES = ("loading", "scoring", "starting Ray", "screening", "trials", "done")


@dataclass(frozen=True)
class ProgressEvent:
    """One change of a search's progress.

    Attributes:
        kind: ``phase``, ``screening``, ``trial`` (started or ended), ``epoch``, ``tick`` (a second
            passed) or ``done``.
        phase: the current phase (one of :data:`PHASES`).
        line: the plain line logged for this event, or None (epochs, ticks).
        status: the one-line summary of the whole search now (what a live display shows).
        running: running trials, label -> what they are doing (``"epoch 2/3"``).
        eta_s: estimated seconds left in the phase (screening or trials), None until measurable.
        best_accuracy: the best validation accuracy within the MACs budget so far.
    """

    kind: str
    phase: str
    line: str | None
    status: str
    elapsed_s: float
    eta_s: float | None = None
    total: int = 0
    finished: int = 0
    failed: int = 0
    stopped: int = 0
    running: dict[str, str] = field(default_factory=dict)
    best_accuracy: float | None = None
    trial: str | None = None


Callback = Callable[[ProgressEvent], Any]


class Progress:
    """The progress of one search; thread-safe (a ticker thread and Ray's callbacks both call it).

    Args:
        callback: receives every :class:`ProgressEvent`; exceptions in it are logged, never raised.
        budget: the MACs budget (a fraction): "best accuracy" counts only trials within it.
        epochs: fine-tune epochs of a trial (shown as ``epoch e/E``).
        heartbeat_s: seconds between status lines while nothing else is logged (0: none).
        hold: keep the plain lines back until :meth:`release` (the search calls it once its input
            has passed every check), so a refused input stays one error line; the callback still
            sees every event. Lines held when the search ends unreleased are dropped.
    """

    def __init__(self, callback: Callback | None = None, *, budget: float | None = None, epochs: int | None = None,
                 heartbeat_s: float = 30.0, clock: Callable[[], float] = time.monotonic, hold: bool = False) -> None:
        self.callback, self.budget, self.epochs, self.heartbeat_s = callback, budget, epochs, heartbeat_s
        self._held: list[str] | None = [] if hold else None
        self._clock = clock
        self._t0 = self._phase_t0 = self._last_line = clock()
        self._lock = threading.RLock()
        self._phase, self._screen = "loading", (0, 0)
        self.total = self.finished = self.failed = self.stopped = self._done_before = 0
        self.running: dict[str, str] = {}
        self.best: float | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._callback_failed = False

    # -- what the runner reports -------------------------------------------------------------
    def release(self) -> None:
        """Log the held lines and every line from now on."""
        with self._lock:
            held, self._held = self._held or [], None
            for line in held:
                log.info("%s", line)

    def phase(self, name: str, detail: str = "") -> None:
        with self._lock:
            self._phase, self._phase_t0 = name, self._clock()
            self._emit("phase", f"{name}: {detail}" if detail else name)

    def screening(self, done: int, total: int, *, line: bool = False) -> None:
        with self._lock:
            self._screen = (done, total)
            self._emit("screening", f"screening: {done}/{total} candidates{self._eta_text()}" if line else None)

    def start_trials(self, total: int, *, done: int = 0, detail: str = "",
                     earlier: Iterable[tuple[float, float]] = ()) -> None:
        """The fine-tune phase: ``total`` trials in all, ``done`` of them finished by an earlier run,
        whose ``(val accuracy, MACs ratio)`` pairs (``earlier``) count towards the best accuracy."""
        with self._lock:
            self.total, self._done_before = total, done
            for accuracy, macs_ratio in earlier:
                self._count_best(accuracy, macs_ratio)
            self.phase("trials", detail or f"{total - done} of {total} trials to fine-tune")

    def _count_best(self, accuracy: float, macs_ratio: float) -> None:
        if _finite(accuracy) and (self.budget is None or macs_ratio <= self.budget + 1e-9):
            self.best = accuracy if self.best is None else max(self.best, accuracy)

    # -- what the tracking callback reports ----------------------------------------------------
    def trial_started(self, label: str) -> None:
        with self._lock:
            self.running[label] = "starting"
            self._emit("trial", None, trial=label)

    def trial_epoch(self, label: str, epoch: int, accuracy: float | None = None) -> None:
        with self._lock:
            total = f"/{self.epochs}" if self.epochs else ""
            acc = f", val acc {accuracy:.4f}" if _finite(accuracy) else ""
            self.running[label] = f"epoch {epoch}{total}{acc}"
            self._emit("epoch", None, trial=label)

    def trial_finished(self, label: str, accuracy: float, macs_ratio: float, seconds: float) -> None:
        with self._lock:
            self.running.pop(label, None)
            self.finished += 1
            self._count_best(accuracy, macs_ratio)
            self._emit("trial", f"{label} finished: val acc {accuracy:.4f}, MACs {100 * macs_ratio:.1f}%, "
                       f"{_clock_text(seconds)} | {self._counts()}", trial=label)

    def trial_failed(self, label: str, error: str) -> None:
        with self._lock:
            self.running.pop(label, None)
            self.failed += 1
            self._emit("trial", f"{label} FAILED: {error} | {self._counts()}", trial=label)

    def trial_stopped(self, label: str, epochs: int) -> None:
        with self._lock:
            self.running.pop(label, None)
            self.stopped += 1
            self._emit("trial", f"{label} stopped early after {epochs} epoch(s) | {self._counts()}", trial=label)

    def close(self, status: str) -> None:
        """The search ended (``status``: FINISHED, KILLED, FAILED); stops the ticker. Once."""
        self._stop.set()
        with self._lock:
            if self._phase == "done":
                return
            self._phase = "done"
            best = f"; best val acc {self.best:.4f} within budget" if self.best is not None else ""
            self._emit("done", f"done ({status.lower()}): {self.finished} finished, {self.failed} failed, "
                       f"{self.stopped} stopped early in this run{best}")

    # -- time ----------------------------------------------------------------------------------
    def start_ticker(self, interval_s: float = 1.0) -> None:
        """A daemon thread that ticks every ``interval_s`` until :meth:`close`."""
        if self._ticker is not None:
            return

        def run() -> None:
            while not self._stop.wait(interval_s):
                self.tick()
        self._ticker = threading.Thread(target=run, name="prunetune-progress", daemon=True)
        self._ticker.start()

    def tick(self) -> None:
        with self._lock:
            beat = self.heartbeat_s and self._clock() - self._last_line >= self.heartbeat_s
            self._emit("tick", self.status() if beat else None)

    def status(self) -> str:
        """``phase: ... | elapsed, ETA``: the one line a live display shows."""
        with self._lock:
            if self._phase == "screening" and self._screen[1]:
                body = f"screening: {self._screen[0]}/{self._screen[1]} candidates"
            elif self._phase in ("trials", "done") and self.total:
                body = f"trials: {self._running_text()} | {self._counts()}"
            else:
                body = f"{self._phase}..."
            return f"{body} | {_clock_text(self._clock() - self._t0)} elapsed{self._eta_text()}"

    # -- internals -----------------------------------------------------------------------------
    def _emit(self, kind: str, line: str | None, *, trial: str | None = None) -> None:
        now = self._clock()
        if line is not None:
            self._last_line = now
            text = f"[{_clock_text(now - self._t0)}] {line}"
            if self._held is None:
                log.info("%s", text)
            elif kind != "done":
                self._held.append(text)
        if self.callback is None:
            return
        event = ProgressEvent(kind, self._phase, line, self.status(), now - self._t0, self._eta(), self.total,
                              self._done_before + self.finished, self.failed, self.stopped, dict(self.running),
                              self.best, trial)
        try:
            self.callback(event)
        except Exception as exc:  # a broken display must not stop a search, nor hide that it broke
            if self._callback_failed:
                log.debug("progress callback failed", exc_info=True)
            else:
                self._callback_failed = True
                log.warning("the progress callback raised %s: %s; the search goes on (later errors of the "
                            "callback are logged at DEBUG)", type(exc).__name__, exception_line(exc, 200))

    def _counts(self) -> str:
        done = self._done_before + self.finished
        best = f" | best val acc {self.best:.4f} within budget" if self.best is not None else ""
        return f"{done}/{self.total} finished, {self.failed} failed, {len(self.running)} running{best}"

    def _running_text(self) -> str:
        if not self.running:
            return "none running"
        shown = [f"{k} {v}" for k, v in list(self.running.items())[:4]]
        more = f", +{len(self.running) - 4}" if len(self.running) > 4 else ""
        return ", ".join(shown) + more

    def _eta(self) -> float | None:
        elapsed = self._clock() - self._phase_t0
        if self._phase == "screening":
            done, total = self._screen
        elif self._phase == "trials":
            done = self.finished + self.failed + self.stopped
            total = self.total - self._done_before
        else:
            return None
        if done <= 0 or total <= 0:
            return None
        return max(0.0, elapsed / done * (total - done))

    def _eta_text(self) -> str:
        eta = self._eta()
        return "" if eta is None else f", ETA {_clock_text(eta)}"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _clock_text(seconds: float) -> str:
    s = int(max(0.0, seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
