"""The ``prunetune`` command: thin commands over the library.

Each command lives in its own module with ``register(subparsers)``; heavy imports (Ray, Optuna,
MLflow) happen inside the command that needs them. User errors print one line and exit 2; a
traceback only with ``--debug``. Ctrl-C exits 130 and a SIGTERM 143, both after the same clean-up.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import select
import signal
import sys
from collections.abc import Iterator, Sequence

from prunetune._signals import Terminated, keep_exit_status, terminate_as_interrupt
from prunetune._text import clip_line
from prunetune.exceptions import PrunetuneError
from prunetune.version import __version__

COMMANDS = ("demo", "groups", "score", "prune", "search", "pareto", "export", "deploy", "bench")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the usage too): the error and where help is."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {clip_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="prunetune", description="Automatic CNN filter pruning under a MACs budget.")
    parser.add_argument("--version", action="version", version=f"prunetune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only prunetune's warnings and errors on stderr (no progress, no Ray Tune warnings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"prunetune.cli.{name}").register(sub)
        # after the command too: `prunetune search --quiet ...` (SUPPRESS: the top-level value stands if absent)
        sub.choices[name].add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                       help="only prunetune's warnings and errors on stderr: no progress lines, no status line")
        sub.choices[name].add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                       help="show tracebacks on errors")
    return parser


def console() -> int:
    """The ``prunetune`` command itself (console script, ``python -m prunetune``): :func:`main` on the
    command line, then a Ctrl-C or SIGTERM that lands while the interpreter exits ends the process at
    once with the command's status (:func:`~prunetune._signals.keep_exit_status`): a finished command
    exited 130 without a word. A program that calls :func:`main` keeps its own signal handling."""
    code = main()
    keep_exit_status(code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: the command line); its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr, force=True)
    try:
        with terminate_as_interrupt(), _ray_tune_quiet(args.quiet):  # a SIGTERM cleans up as a Ctrl-C does
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a reader gone away (`... | head`) is handled below
        return code
    except BrokenPipeError:
        if _stdout_is_open():
            raise  # a broken pipe elsewhere (a socket), not our output
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except PrunetuneError as exc:
        if args.debug:
            raise
        print(f"prunetune {args.command}: error: {clip_line(str(exc))}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"prunetune {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"prunetune {args.command}: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _ray_tune_quiet(quiet: bool) -> Iterator[None]:
    """With ``--quiet``, Ray Tune's own warnings held back too: on Ctrl-C it printed "Stop signal
    received ... Press CTRL+C ... to skip" beside our one line about how to resume. Ray gives its
    loggers a handler of their own, so the root logger's level does not reach them."""
    if not quiet:
        yield
        return
    tune_log = logging.getLogger("ray.tune")
    before = tune_log.level
    tune_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tune_log.setLevel(before)


def _stdout_is_open() -> bool:
    """False when nobody reads our standard output any more (a pipe whose reader closed it)."""
    try:
        poll = select.poll()  # not on Windows: there the error is raised as before
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return not any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
