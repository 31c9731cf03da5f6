"""SIGTERM handled like Ctrl-C, so that a scheduler's kill cleans up as an interrupt does.

A SIGTERM (``kill``, ``timeout``, a batch scheduler ending a job) ends a Python process at once by
default: no ``finally`` runs, and a file being written stays behind under its hidden temporary name.
:func:`terminate_as_interrupt` makes it raise :class:`Terminated` instead, a ``KeyboardInterrupt``,
so every path that cleans up after a Ctrl-C (temporary files removed, a search marked killed, a
pair of files put back) does the same after a SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler :func:`terminate_as_interrupt` installs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, a SIGTERM raises :class:`Terminated` in the main thread.

    Only where Python can (the main thread) and only over the default action: a handler someone
    else installed (an embedding program, a test runner) is left alone. The previous handler is put
    back afterwards.
    """
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def sigterm_kept() -> Iterator[None]:
    """Put :func:`terminate_as_interrupt`'s handler back if the block replaced it.

    ``ray.init`` installs its own SIGTERM handler in the driver (it exits with a ``SystemExit``): a
    search killed by a scheduler would then be recorded as failed, not as killed, and the command
    would exit 15 without its line. A SIGTERM that meets Ray's handler inside the block (during
    ``ray.init`` itself, seconds) comes out as :class:`Terminated` too: Ray's handler is
    ``sys.exit(signum)``, the only ``SystemExit`` with that code.
    """
    ours = threading.current_thread() is threading.main_thread() \
        and signal.getsignal(signal.SIGTERM) is _raise_terminated
    try:
        yield
    except SystemExit as exc:
        if ours and exc.code == signal.SIGTERM:
            raise Terminated(f"terminated by signal {exc.code}") from None
        raise
    finally:
        if ours and signal.getsignal(signal.SIGTERM) is not _raise_terminated:
            signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def handlers_restored(*signums: int) -> Iterator[None]:
    """Put the handlers of ``signums`` back as they were once the block ends.

    Ray Tune's ``Tuner.fit`` installs a SIGINT (and SIGUSR1) handler that stops the experiment and
    leaves it in place afterwards: the next Ctrl-C, in the demo's export or in the program that
    called :func:`prunetune.search`, only logged "Stop signal received" and was otherwise lost.
    Main thread only; a handler installed from C (``getsignal`` gives ``None``) is not touched.
    """
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        saved = {n: h for n in signums if (h := signal.getsignal(n)) is not None}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)


@contextlib.contextmanager
def sigint_kept_ignored() -> Iterator[None]:
    """While inside, Ray Tune's fit leaves an ignored SIGINT ignored.

    A program started with SIGINT ignored (``nohup``, ``cmd &`` in a script) is not meant to stop on
    a Ctrl-C at its terminal, but ``Tuner.fit`` installs its stop handler whatever was there: the
    background search ended at the first Ctrl-C given to the shell in front. Tune reads
    ``TUNE_DISABLE_SIGINT_HANDLER`` for this; it is set only while inside, and only where SIGINT is
    ignored when the block starts (main thread)."""
    name = "TUNE_DISABLE_SIGINT_HANDLER"
    ignored = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    before = os.environ.get(name)
    if ignored:
        os.environ[name] = "1"
    try:
        yield
    finally:
        if ignored:
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before


def keep_exit_status(code: int) -> None:
    """From now on a SIGINT or SIGTERM ends the process at once with ``code``.

    For the moment a command has ended and the interpreter is exiting (threads joined, ``atexit``
    callbacks, modules torn down): everything it wrote is in place, and an interrupt there only
    turned the command's own status into 130 (or killed it with no line). Standard output and error
    are flushed first; the rest of the exit is skipped. Python puts the default action back late in
    its exit, so the last moments still meet it. Main thread only, as any signal handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def leave(_signum: int, _frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, leave)
