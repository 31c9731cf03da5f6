"""Checks of the paths prunetune will read and write, made before any work, so a bad path never loses a result.

A command that trains for minutes and then cannot save (``--out`` under a regular file, a store
under ``/proc``) has wasted the time; these checks fail first, in one line, and create nothing: the
nearest existing folder is probed with a temporary file that is removed at once.

An input file (recipe, search config, checkpoint, plan, pruned model) must be a regular file:
:func:`input_file_problem` tells a missing path from a directory, a named pipe, a device or a
socket by ``stat`` alone, without opening it (opening a FIFO for reading blocks until someone
writes to it).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from prunetune._atomic import restore_interrupted
from prunetune._checks import boolean
from prunetune.exceptions import ConfigError


def check_output_file(path: str | os.PathLike, what: str, *, overwrite: bool = False,
                      flag: str = "--out", overwrite_flag: str = "--overwrite",
                      written_with: Sequence[str | os.PathLike] = ()) -> Path:
    """``path`` if prunetune can write a file there; else a :class:`ConfigError` naming ``what``.

    Refused: an existing directory, an existing file unless ``overwrite``, a folder that cannot be
    created (a regular file on the way, a read-only or virtual file system). ``flag`` and
    ``overwrite_flag`` name the fixes (``"path"`` and ``"overwrite=True"`` from Python). Files a
    hard-killed write of ``path`` and ``written_with`` (written as one set, as a pruned model and its
    plan) left aside are put back first (:func:`prunetune._atomic.restore_interrupted`), so they count
    as existing here, before the work, and the error says where they came from.
    """
    boolean(overwrite, overwrite_flag.split("=")[0].lstrip("-"))  # "no" from a config is not a yes
    path = check_file_name(path, what, flag=flag)
    restored = dict(restore_interrupted([*written_with, path]))
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a directory; give a file name ({flag})")
    problem = input_file_problem(path) if path.exists() else None
    if problem is not None and "not a regular file" in problem:
        # a device, a FIFO, a socket: the atomic write would replace the node itself with a file
        # (`--out /dev/null --overwrite` as root took the system's /dev/null)
        raise ConfigError(f"{what} {str(path)!r} {problem}; prunetune writes regular files only, so choose "
                          f"another {flag} (nothing is replaced)")
    if path.exists() and not overwrite:
        back = (f" (just put back from {restored[path].name}, where an interrupted write had left it)"
                if path in restored else "")
        raise ConfigError(f"{what} {str(path)!r} already exists{back}; pass {overwrite_flag} to replace it or "
                          f"choose another {flag}")
    check_creatable(path.parent, what, target=path)
    return path


def check_file_name(path: str | os.PathLike, what: str, *, flag: str = "--out") -> Path:
    """``path`` as a Path if it names a file; a :class:`ConfigError` for an empty path, one with no name
    (``.``, ``/``: a folder) or one ending in a slash (``newdir/`` would save a file named ``newdir``)."""
    text = os.fspath(path)
    if not text:
        raise ConfigError(f"{what} is empty; give a file name ({flag})")
    if text.endswith(("/", os.sep)) or not Path(text).name or Path(text).name == "..":
        if Path(text).is_dir():
            raise ConfigError(f"{what} {text!r} is a directory; give a file name ({flag})")
        raise ConfigError(f"{what} {text!r} ends in '/', a folder; give a file name ({flag})")
    return Path(text)


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is a folder prunetune can fill (existing, or creatable); else a :class:`ConfigError`.
    An empty path is refused (``Path("")`` would be the working directory, which nobody asked for)."""
    if not os.fspath(path).strip():
        raise ConfigError(f"{what} is empty; give a folder name")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a file, not a folder; choose another path")
    check_creatable(path, what)
    return path


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if something is there (a dangling link too), else its nearest existing ancestor."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_folder_shape(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is a folder or could become one (no file on the way); else a :class:`ConfigError`.
    Nothing is written: a folder only read from (a cache on a read-only mount) passes."""
    path = Path(os.path.abspath(path))
    existing = _nearest_existing(path)
    if not existing.is_dir():
        shown = f"{str(path)!r} is a file, not a folder" if existing == path else \
            f"{str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder"
        raise ConfigError(f"{what} {shown}; choose another path")
    return path


def check_creatable(folder: str | os.PathLike, what: str, *, target: Path | None = None) -> None:
    """Raise a :class:`ConfigError` unless ``folder`` exists or can be created, and files can be written in it."""
    folder = Path(os.path.abspath(folder))
    shown = str(target if target is not None else folder)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ConfigError(f"{what} {shown!r} cannot be created: {str(existing)!r} is a file, not a folder")
    try:  # os.access says yes to root everywhere; a real file tells the truth (/proc, read-only mounts)
        fd, probe = tempfile.mkstemp(prefix=".prunetune-probe-", dir=existing)
    except OSError as exc:
        raise ConfigError(f"{what} {shown!r} cannot be written: no files can be created in {str(existing)!r} "
                          f"({exc.strerror or type(exc).__name__}); choose another path") from None
    os.close(fd)
    os.unlink(probe)


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def input_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an input file, as the rest of a sentence naming it, or None.

    ``"does not exist"``, ``"is a directory"``, ``"is a named pipe (FIFO), not a regular file"`` (a
    character or block device, a socket alike), ``"cannot be read (...)"``. Symbolic links are
    followed (a link to ``/dev/null`` is a character device); nothing is opened.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # a dangling link, or a file on the way
        return "does not exist"
    except OSError as exc:  # permission on a folder, a name too long, a loop of links
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
    return f"is {kind}, not a regular file"
