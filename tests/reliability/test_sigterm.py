"""A SIGTERM (``kill``, ``timeout``, a batch scheduler) cleans up as a Ctrl-C does.

By default a SIGTERM ends Python at once: a file being written stayed behind under its hidden
temporary name (``.out.XXXX.tmp``). The command line turns it into :class:`Terminated` (a
``KeyboardInterrupt``), exits 143 with one line, and the renames of a pair of files hold it.
The kills are real signals, sent by the process to itself; the ones that could end the process run
in a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from prunetune._atomic import write_together
from prunetune._signals import Terminated, _raise_terminated, terminate_as_interrupt


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_a_sigterm_during_a_write_leaves_no_temporary_file(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    done = _python("""
        import os, signal, sys
        from prunetune._atomic import write_atomic_with
        from prunetune._signals import Terminated, terminate_as_interrupt

        def write(f):
            f.write(b"half")
            f.flush()
            os.kill(os.getpid(), signal.SIGTERM)
            f.write(b" and the rest")

        try:
            with terminate_as_interrupt():
                write_atomic_with("out/model.pt", write)
        except Terminated:
            sys.exit(143)
        """, tmp_path)
    assert done.returncode == 143, done.stderr
    assert os.listdir(out) == []


def test_the_command_line_exits_143_with_one_line_and_no_temporary(tmp_path) -> None:
    done = _python("""
        import os, signal, sys
        import prunetune.cli.groups as groups
        from prunetune.cli import main

        def run(args):
            def write(f):
                f.write(b"half")
                f.flush()
                os.kill(os.getpid(), signal.SIGTERM)
            from prunetune._atomic import write_atomic_with
            write_atomic_with("report.json", write)

        groups.run = run  # before the parser is built: the command's function
        sys.exit(main(["groups", "--model", "resnet20"]))
        """, tmp_path)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines() == ["prunetune groups: terminated"]
    assert os.listdir(tmp_path) == []


def test_the_default_action_is_put_back_and_a_handler_of_others_left_alone() -> None:
    def theirs(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a Ray started by an earlier test installs its own
    try:
        with terminate_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is _raise_terminated
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        signal.signal(signal.SIGTERM, theirs)
        with terminate_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is theirs
        assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_during_the_renames_waits_for_them(tmp_path, monkeypatch) -> None:
    """A real SIGTERM between the two renames of a pair is held until both are done, then raised."""
    real_replace, kills = os.replace, []

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if not kills:
            kills.append(dst)
            os.kill(os.getpid(), signal.SIGTERM)  # right after the first file is in place

    monkeypatch.setattr(os, "replace", replace)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)  # as the command line installs it
    try:
        with pytest.raises(Terminated):
            write_together([(tmp_path / "p.plan.json", lambda f: f.write(b"plan")),
                            (tmp_path / "p.pt", lambda f: f.write(b"model"))])
        assert signal.getsignal(signal.SIGTERM) is _raise_terminated  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(os.listdir(tmp_path)) == ["p.plan.json", "p.pt"]
    assert (tmp_path / "p.pt").read_bytes() == b"model"


def test_a_local_ray_keeps_the_sigterm_handler_of_the_command_line() -> None:
    """``ray.init`` installs its own SIGTERM handler (a SystemExit): a search killed by a scheduler was
    recorded as failed and exited 15 without its line. What Ray installs is put back to ours."""
    from prunetune._signals import sigterm_kept

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with terminate_as_interrupt(), sigterm_kept():
            signal.signal(signal.SIGTERM, lambda signum, frame: None)  # as ray.init does
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the command line's block put its default back
        with terminate_as_interrupt():
            with sigterm_kept():
                signal.signal(signal.SIGTERM, lambda signum, frame: None)
            assert signal.getsignal(signal.SIGTERM) is _raise_terminated
        with sigterm_kept():  # not ours to keep: left as the block set it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_that_meets_rays_handler_inside_ray_init_is_ours() -> None:
    """Ray's handler is ``sys.exit(signum)``: a SIGTERM during ``ray.init`` itself exited 15 with no
    line and the search recorded as failed. Inside the block it is :class:`Terminated`, as elsewhere;
    another SystemExit, or one outside our handler, goes on as it was."""
    from prunetune._signals import sigterm_kept

    def ray_init() -> None:  # what ray.init does, with the SIGTERM arriving during it
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with terminate_as_interrupt():
            with pytest.raises(Terminated, match="terminated by signal 15"), sigterm_kept():
                ray_init()
            assert signal.getsignal(signal.SIGTERM) is _raise_terminated
            with pytest.raises(SystemExit) as other, sigterm_kept():
                sys.exit(3)
            assert other.value.code == 3
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with pytest.raises(SystemExit), sigterm_kept():  # not ours: Ray's exit stands
            ray_init()
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("console", [True, False])
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_after_the_command_ended_keeps_its_exit_status(tmp_path, signame, console) -> None:
    """A Ctrl-C just after `deploy` printed its success, while Python exited, made the command exit
    130 (or die by the signal, with no line): the command's own status stands now."""
    done = _python(f"""
        import atexit, os, signal, sys, time
        import prunetune.cli.groups as groups
        from prunetune.cli import console, main

        def late():  # the interpreter's exit: the signal lands here
            os.kill(os.getpid(), signal.{signame})
            time.sleep(5)
            print("the rest of the exit ran", flush=True)

        def run(args):
            print("written", flush=True)
            return 0

        groups.run = run
        sys.argv = ["prunetune", "groups", "--model", "resnet20"]
        code = console() if {str(console)!r} == "True" else main()
        atexit.register(late)
        sys.exit(code)
        """, tmp_path)
    if console:
        assert (done.returncode, done.stdout, done.stderr) == (0, "written\n", "")
    else:  # a program that calls main() keeps its own handling: Python's, here (the sleep is cut short)
        assert "the rest of the exit ran" not in done.stdout and "written" in done.stdout
