"""One search per experiment at a time: a lock file with the owner's pid in the experiment folder.

Two searches on one experiment would share Ray's folder, the Optuna study and the MLflow parent run
and silently merge. :class:`ExperimentLock` takes an exclusive ``flock`` on
``<experiment folder>/prunetune.lock`` and writes its pid there. The kernel drops the lock when the
process ends, however it ends (``kill -9`` too), so a lock whose pid is gone is stale and simply
taken over; a second search on a running experiment fails at once with one line naming the pid.
Folders the lock had to create are removed again on release when nothing else was written there
(a search refused for bad input leaves no trace).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from prunetune.exceptions import SearchLockedError

LOCK_FILE = "prunetune.lock"


class ExperimentLock:
    """``with ExperimentLock(exp_dir, name):`` holds the experiment for this process."""

    def __init__(self, exp_dir: str | os.PathLike, name: str) -> None:
        self.exp_dir, self.name = Path(exp_dir), name
        self.path = self.exp_dir / LOCK_FILE
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> ExperimentLock:
        self._created = _make_dirs(self.exp_dir)
        while True:  # the file may be replaced between open and flock by a releasing owner: retry
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._remove_created()
                raise SearchLockedError(self._busy_message()) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: a waiting opener re-checks the inode
        finally:
            os.close(self._fd)
            self._fd = None
        self._remove_created()

    def __enter__(self) -> ExperimentLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def _busy_message(self) -> str:
        holder = owner(self.exp_dir)
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
               if holder else "another process")
        stop = f" (kill {holder['pid']})" if holder.get("pid") else ""
        return (f"search {self.name!r} is already running in {self.exp_dir} ({who}); wait for it to end or "
                f"stop it{stop}, then run the same command to continue it, or choose another --experiment")

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
        self._created = []


def owner(exp_dir: str | os.PathLike) -> dict:
    """What the lock file of ``exp_dir`` says about its holder (``{}`` when there is none)."""
    try:
        return json.loads((Path(exp_dir) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _make_dirs(folder: Path) -> list[Path]:
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    for parent in reversed(missing):
        parent.mkdir(exist_ok=True)
    return list(reversed(missing))


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)
