"""What a library call leaves as it found it in the caller's process.

:func:`random_state_kept`: torch's, Python's and numpy's global random streams. A recipe is seeded
(``torch.manual_seed(recipe.seed)``) so that its replay is exact; without this the program that
called :func:`prunetune.prune` went on with the recipe's stream instead of its own.

:func:`process_state_kept`: what a local Ray changes in the driver process when a search starts it
and leaves behind after ``ray.shutdown``: the SIGTERM handler (``sys.exit``), ``sys.excepthook``,
``faulthandler`` and environment variables (``PYTHONBREAKPOINT`` sends a later ``breakpoint()`` to
Ray's debugger).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import random
import signal
import sys
from collections.abc import Iterator

from prunetune._signals import handlers_restored


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """torch's CPU (and initialised CUDA) generators, ``random`` and ``numpy.random`` as they were."""
    import torch

    py_state = random.getstate()
    numpy = sys.modules.get("numpy")
    np_state = numpy.random.get_state() if numpy is not None else None
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        if np_state is not None:
            numpy.random.set_state(np_state)


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """The SIGTERM and SIGINT handlers (main thread), ``sys.excepthook``, whether ``faulthandler`` is
    on, and ``os.environ`` as they were once the block ends."""
    hook, faulting, environ = sys.excepthook, faulthandler.is_enabled(), dict(os.environ)
    try:
        with handlers_restored(signal.SIGTERM, signal.SIGINT):
            yield
    finally:
        sys.excepthook = hook
        if faulthandler.is_enabled() and not faulting:
            faulthandler.disable()
        for name in [n for n in os.environ if n not in environ]:
            del os.environ[name]
        for name, value in environ.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
