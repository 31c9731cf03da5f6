"""Progress on the terminal: log lines scroll, one status line stays at the bottom and is redrawn.

On a terminal (stderr is a TTY) :func:`install` replaces the CLI's log handler with
:class:`LiveStatus`; its :meth:`~LiveStatus.update` is the search's progress callback. Elsewhere (CI
logs, files, pipes) nothing changes: the search logs plain lines, one per event, and a heartbeat.
"""

from __future__ import annotations

import logging
import shutil
import sys
from typing import Any, TextIO

CLEAR = "\r\x1b[2K"


class LiveStatus(logging.Handler):
    """A logging handler that keeps a status line below the log lines it writes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.status = ""
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)
            return
        self.stream.write(CLEAR + text + "\n")
        self._draw()

    def update(self, event: Any) -> None:
        """The progress callback: redraw the status line from ``event.status``."""
        self.acquire()
        try:
            self.status = event.status
            self.stream.write(CLEAR)
            self._draw()
        finally:
            self.release()

    def close(self) -> None:
        self.acquire()
        try:
            if self.status:
                self.stream.write(CLEAR)
                self.stream.flush()
            self.status = ""
        finally:
            self.release()
        super().close()

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = self.status if len(self.status) <= width else self.status[: max(0, width - 1)] + "…"
        self.stream.write(line)
        self.stream.flush()


def install(quiet: bool, stream: TextIO | None = None) -> LiveStatus | None:
    """A :class:`LiveStatus` on stderr as the root log handler when stderr is a terminal and not ``quiet``."""
    stream = stream or sys.stderr
    if quiet or not stream.isatty():
        return None
    live = LiveStatus(stream)
    root = logging.getLogger()
    live.saved = list(root.handlers)
    for handler in live.saved:
        root.removeHandler(handler)
    root.addHandler(live)
    return live


def uninstall(live: LiveStatus | None) -> None:
    """Clear the status line and give the root logger its handlers back."""
    if live is None:
        return
    root = logging.getLogger()
    root.removeHandler(live)
    live.close()
    for handler in getattr(live, "saved", []):
        root.addHandler(handler)
