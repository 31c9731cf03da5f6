"""The trust boundary of resuming a search: the files the search left in its storage path.

Ray keeps ``tuner.pkl``, the searcher and callback state (``*.pkl``) and the experiment state (JSON
holding cloudpickled trials) in ``<storage_path>/<experiment>``; unpickling can run code. A resumed
search unpickles none of them (it starts a fresh Tuner on the Optuna study and MLflow's record, and
the searcher refuses ``restore``), but it reuses what prunetune wrote there (``screening.json``,
the screened pool), and that folder is where a planted file would wait for whoever resumes. Before a
resume the runner therefore checks, with :func:`check`:

- **owner**: the folder and every file and folder in it belong to the user resuming and are not
  writable by everybody (a planted ``tuner.pkl`` in a shared storage path is refused);
- **checksum**: when the search stopped (finished, interrupted, failed) it recorded the sha256 of
  every file there (:func:`seal`, kept in the search's state file ``prunetune-search.json``); a
  file changed, added or removed since is refused.

A search killed outright (``kill -9``, power loss) could not record its checksums; its state is
then checked for ownership only, and a warning says so. This does not protect against someone who
can write files *as you* (they could rewrite the state file too), nor against a storage folder
copied from elsewhere: resume only searches you ran.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prunetune._atomic import write_text_atomic
from prunetune.exceptions import UntrustedStateError
from prunetune.search.lock import LOCK_FILE

log = logging.getLogger("prunetune")
SEAL_KEY = "sealed"
_CHUNK = 1 << 20


def seal(exp_dir: str | os.PathLike, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every regular file under ``exp_dir`` but those named in ``skip`` and
    the experiment's lock file (it comes and goes with the search process)."""
    exp_dir = Path(exp_dir)
    skip = (*skip, LOCK_FILE)
    return {rel: _sha256(exp_dir / rel) for rel in sorted(_files(exp_dir)) if rel not in skip}


def seal_state(exp_dir: str | os.PathLike, state_file: str) -> None:
    """Record :func:`seal` of ``exp_dir`` in its state file (JSON); nothing when there is no state file."""
    path = Path(exp_dir) / state_file
    if not path.is_file():
        return
    state = json.loads(path.read_text())
    state[SEAL_KEY] = seal(exp_dir, skip=(state_file,))
    write_text_atomic(path, json.dumps(state, indent=1, default=str))


def check_and_unseal(exp_dir: str | os.PathLike, state_file: str, *, written: tuple[str, ...] = ()) -> None:
    """:func:`check` the state right before it is restored, then drop its checksums from the state file.

    A resumed search changes the files until it stops and seals them again; a stale seal would
    refuse the next resume after a ``kill -9``. ``written``: files this run wrote itself since the
    check on loading (the pool it screened again after a stop in screening), left out of this one.
    """
    path = Path(exp_dir) / state_file
    state = json.loads(path.read_text())
    check(exp_dir, state, state_file=state_file, warn=False, written=written)
    state.pop(SEAL_KEY, None)
    write_text_atomic(path, json.dumps(state, indent=1, default=str))


def check(exp_dir: str | os.PathLike, state: dict[str, Any], *, state_file: str, warn: bool = True,
          written: tuple[str, ...] = ()) -> None:
    """Refuse to resume from ``exp_dir`` unless it is yours and unchanged since the search stopped.

    Raises:
        UntrustedStateError: a file or folder owned by another user or writable by everybody, or a
            file changed, added or removed since the search recorded its checksums.
    """
    exp_dir = Path(exp_dir)
    _check_owner(exp_dir)
    sealed = state.get(SEAL_KEY)
    if sealed is None:
        if warn:
            log.warning("search state in %s carries no checksums (the search did not stop cleanly, e.g. kill -9); "
                        "resuming after checking only that its files are yours", exp_dir)
        return
    now = seal(exp_dir, skip=(state_file, *written))
    for rel in sorted((set(sealed) | set(now)) - set(written)):
        if sealed.get(rel) != now.get(rel):
            what = "appeared" if rel not in sealed else "was removed" if rel not in now else "changed"
            raise UntrustedStateError(
                f"refusing to resume from {str(exp_dir)!r}: {rel!r} {what} after the search stopped, and a "
                "resume reuses what is there; if you did not change it, start a new "
                "search with another --experiment (or --storage-path)")


def _check_owner(exp_dir: Path) -> None:
    uid = os.getuid()
    for path in (exp_dir, *_walk(exp_dir)):
        try:
            st = path.stat()  # follows links: what a resume would read
        except OSError as exc:
            raise UntrustedStateError(f"refusing to resume from {str(exp_dir)!r}: {str(path)!r} cannot be read "
                                      f"({exc.strerror or exc}); start a new search with another --experiment") from None
        bad = None
        if st.st_uid != uid:
            bad = f"belongs to uid {st.st_uid}, not to you (uid {uid})"
        elif st.st_mode & stat.S_IWOTH:
            bad = "is writable by every user"
        if bad:
            raise UntrustedStateError(
                f"refusing to resume from {str(exp_dir)!r}: {str(path)!r} {bad}, and a resume reuses "
                "what is there; resume only a search you ran, from a folder only you "
                "can write, or start a new one with another --experiment")


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            yield Path(dirpath) / name


def _files(root: Path) -> Iterator[str]:
    for path in _walk(root):
        if path.is_file():
            yield path.relative_to(root).as_posix()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
