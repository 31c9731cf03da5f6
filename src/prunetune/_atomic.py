"""Atomic file writes with a unique temporary name per write.

A fixed temporary name (``x.pt.tmp``) breaks when two processes write the same file at once (two
``prunetune prune`` runs filling one cache): one renames the other's half-written file away. Here
every write goes to its own ``mkstemp`` file in the target's folder, then ``os.replace`` puts it in
place, so readers see the old file or the new one, never a mix, and concurrent writers never collide
(the last rename wins; both wrote the same content when they computed the same thing).

:func:`write_together` puts several files in place as one: a pruned model and its plan appear
together or not at all, even under Ctrl-C (or a SIGTERM, which the command line turns into an
interrupt: :mod:`prunetune._signals`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def write_atomic_with(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, replace: bool = True) -> Path:
    """Create ``path``'s folder (:func:`make_folder`), call ``write(file)`` on a fresh temporary file
    next to it, rename it over ``path``.

    ``replace=False``: never replace a file that exists by then (``FileExistsError``): an output checked
    before minutes of work may have appeared meanwhile (another run writing the same ``--out``).
    """
    path = Path(path)
    make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file written in place would follow the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make_folder(folder: Path) -> None:
    """Create ``folder`` and its missing parents, and say so (a mistyped ``--out`` folder is seen at once)."""
    if folder.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    log.info("created folder %s", folder)


def write_together(files: Sequence[tuple[str | os.PathLike, Callable[[IO[bytes]], Any]]], *,
                   replace: bool = True) -> list[Path]:
    """Write several files so that they appear together: the last one never without the others.

    Each ``(path, write)`` is first written to a fresh temporary file in its folder (in the order
    given); only then are they renamed into place, in the order given, the last one last (a pruned
    model after its plan). If anything fails or is interrupted (Ctrl-C), the temporaries are removed,
    the files this call had put in place are removed, and the files they replaced are put back, so
    the folder is as it was; a Ctrl-C during the renames themselves waits until they are done.

    ``replace=False``: ``FileExistsError`` (naming the file) if any target exists by then; then none
    of them is written.
    """
    targets = [Path(path) for path, _ in files]
    restore_interrupted(targets)
    temps: list[str] = []
    placed: list[Path] = []
    aside: list[tuple[str, Path]] = []  # (where an existing target was moved, the target)
    held = _HeldInterrupt()
    try:
        for path, (_, write) in zip(targets, files):
            make_folder(path.parent)
            temps.append(_write_temporary(path, write))
        with held:  # a Ctrl-C now waits until every file is in place (or the renames failed)
            if replace:  # move the old files aside, the last one first, so it is never left without the others
                for path in reversed(targets):
                    if os.path.lexists(path):
                        aside.append((_reserve(path, ".old"), path))
                        os.replace(path, aside[-1][0])
            for tmp, path in zip(temps, targets):
                if replace:
                    os.replace(tmp, path)
                else:
                    _link_new(tmp, path)
                placed.append(path)
    except BaseException:
        for path in reversed(placed):  # the last one first
            path.unlink(missing_ok=True)
        for backup, path in reversed(aside):  # the last one back last
            with contextlib.suppress(FileNotFoundError):  # taken meanwhile: the real error is the one to raise
                os.replace(backup, path)
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    for backup, _ in aside:
        Path(backup).unlink(missing_ok=True)
    held.deliver()
    return targets


BACKUP_SETTLED_S = 5.0
"""Seconds a hidden backup must have been where it is before :func:`restore_interrupted` takes it:
a live :func:`write_together` holds its backups for far less (they go as soon as the new files are
in place), so one of another process's writes in flight is never taken."""


def restore_interrupted(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Put back the files a hard-killed :func:`write_together` of ``paths`` had moved aside.

    The renames hold Ctrl-C, but a ``kill -9`` or a power cut between moving the old files aside and
    putting the new ones in place leaves the old ones under hidden names beside their targets
    (``.<name>.<8 random characters>.old``), and maybe some of the new ones in place. Where one of
    ``paths`` is missing and has such a backup, every one of ``paths`` that the interrupted write moved
    aside gets its backup back, over a new file that write had already placed: the earlier set, as it
    was. A backup moved aside before that write began (a stale one of an earlier write) is not taken.
    A missing target is linked back, never over a file that appeared meanwhile. Nothing is done while
    every target exists (stale backups are left as they are), and a backup younger than
    :data:`BACKUP_SETTLED_S` is never taken. Returns ``(target, backup it came from)`` per file put back.
    """
    targets = [Path(p) for p in paths]
    newest = {t: _newest_backup(t) for t in targets}
    missing = [b for t, b in newest.items() if b is not None and not os.path.lexists(t)]
    if not missing:
        return []
    # The interrupted write moved its files aside within an instant, the missing target's first; an
    # older backup of a target that exists is a stale one of an earlier write (killed after its renames),
    # and putting it back would pair it with the wrong file and lose the one in place.
    began = min(ctime for ctime, _ in missing)
    restored = []
    for target, found in newest.items():
        if found is None:
            continue
        ctime, backup = found
        if os.path.lexists(target) and ctime < began:
            continue
        if os.path.lexists(target):
            os.replace(backup, target)  # placed by the interrupted write: its pair is gone
        else:
            try:
                os.link(backup, target)
            except FileExistsError:  # appeared meanwhile: left alone, and so is the backup
                continue
            except OSError:  # no hard links on this file system
                os.replace(backup, target)
            else:
                os.unlink(backup)
        log.warning("%s: put back from %s, where an interrupted write had left it", target, backup.name)
        restored.append((target, backup))
    return restored


def _newest_backup(target: Path) -> tuple[float, Path] | None:
    """``(when it was moved aside, path)`` of the last non-empty settled backup ``write_together`` made of
    ``target``, or None."""
    if not target.parent.is_dir():
        return None
    now, found = time.time(), []
    for b in target.parent.glob(f".{glob.escape(target.name)}.????????.old"):
        try:
            st = b.stat()
        except OSError:
            continue
        if _RANDOM.fullmatch(b.name[len(target.name) + 2 : -4]) and stat.S_ISREG(st.st_mode) and st.st_size \
                and now - st.st_ctime >= BACKUP_SETTLED_S:
            found.append((st.st_ctime, b))  # a rename sets the ctime (and keeps the mtime of the content)
    return max(found) if found else None


_RANDOM = re.compile(r"[a-z0-9_]{8}")  # tempfile's random part of a name


def _write_temporary(path: Path, write: Callable[[IO[bytes]], Any]) -> str:
    """A fresh temporary file beside ``path`` holding what ``write`` wrote (removed again if it fails)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _reserve(path: Path, suffix: str) -> str:
    """A fresh unused name beside ``path`` (an empty file, to be renamed over)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return name


class _HeldInterrupt:
    """A block during which a SIGINT (Ctrl-C) or a SIGTERM is held; :meth:`deliver` raises it afterwards.

    Only in the main thread (where Python runs signal handlers), and only for a signal whose handler
    in place was installed from Python: one installed from C (``signal.getsignal`` gives ``None``)
    could not be put back, so that signal keeps its handler during the block.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.caught: list[tuple[int, Any]] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _HeldInterrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not None:
                    self.previous[signum] = signal.signal(signum, lambda s, frame: self.caught.append((s, frame)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def deliver(self) -> None:
        """Hand the first held signal to the handler that was in place for it: Python's own raises
        KeyboardInterrupt for a SIGINT; the default action of a SIGTERM ends the process."""
        if not self.caught:
            return
        signum, frame = self.caught[0]
        handler = self.previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)


def _link_new(tmp: str, path: Path) -> None:
    """Put ``tmp`` at ``path`` unless ``path`` exists (atomically where hard links work), then drop ``tmp``."""
    try:
        os.link(tmp, path)  # fails with FileExistsError, whoever created path first
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None  # naming path, not tmp
    except OSError:  # no hard links here (some network or FAT file systems): check, then rename
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _umask() -> int:
    """The process umask, read without changing it where the platform allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (``replace``: see :func:`write_atomic_with`)."""
    return write_atomic_with(path, lambda f: f.write(data), replace=replace)


def write_text_atomic(path: str | os.PathLike, text: str, *, replace: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (``replace``: see :func:`write_atomic_with`)."""
    return write_bytes_atomic(path, text.encode("utf-8"), replace=replace)


def torch_save_atomic(obj: Any, path: str | os.PathLike, *, replace: bool = True) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (``replace``: see :func:`write_atomic_with`)."""
    import torch

    return write_atomic_with(path, lambda f: torch.save(obj, f), replace=replace)
