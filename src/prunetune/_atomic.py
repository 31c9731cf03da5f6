"""Atomic file writes with a unique temporary name per write.

A fixed temporary name (``x.pt.tmp``) breaks when two processes write the same file at once (two
``prunetune prune`` runs filling one cache): one renames the other's half-written file away. Here
every write goes to its own ``mkstemp`` file in the target's folder, then ``os.replace`` puts it in
place, so readers see the old file or the new one, never a mix, and concurrent writers never collide
(the last rename wins; both wrote the same content when they computed the same thing).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic_with(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, replace: bool = True) -> Path:
    """Create ``path``'s folder, call ``write(file)`` on a fresh temporary file next to it, rename it over ``path``.

    ``replace=False``: never replace a file that exists by then (``FileExistsError``): an output checked
    before minutes of work may have appeared meanwhile (another run writing the same ``--out``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
