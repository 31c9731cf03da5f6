"""Progress of a search: plain lines per phase and trial, a status line, ETA, the best accuracy within budget."""

from __future__ import annotations

import io
import logging

import pytest

from prunetune.cli.live import LiveStatus
from prunetune.search.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def lines(caplog):
    caplog.set_level(logging.INFO, logger="prunetune")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "prunetune"]


def test_phases_trials_best_within_budget_and_eta(lines) -> None:
    clock, events = Clock(), []
    p = Progress(events.append, budget=0.5, epochs=3, clock=clock, heartbeat_s=0)
    p.phase("loading", "resnet20 on digits")
    clock.now = 5
    p.phase("scoring", "2 criteria")
    p.phase("starting Ray")
    p.phase("screening", "32 candidates")
    p.screening(16, 32, line=True)
    clock.now = 10
    p.start_trials(4)
    p.trial_started("t01")
    p.trial_started("t02")
    p.trial_epoch("t01", 1, 0.5)
    assert "t01 epoch 1/3, val acc 0.5000" in p.status() and "t02 starting" in p.status()
    clock.now = 20
    p.trial_finished("t01", 0.9, 0.6, 10.0)  # over budget: not the best within it
    p.trial_finished("t02", 0.8, 0.4, 10.0)
    p.trial_failed("t03", "RuntimeError: boom")
    assert p.best == 0.8 and events[-1].eta_s == pytest.approx(10 / 3 * 1)
    clock.now = 30
    p.trial_stopped("t04", 1)
    p.close("FINISHED")
    p.close("FINISHED")  # once
    out = lines()
    assert [m.split("] ", 1)[1].split(":")[0].split(" ")[0] for m in out][:5] == [
        "loading", "scoring", "starting", "screening", "screening"]
    assert out[0] == "[0:00] loading: resnet20 on digits" and out[1].startswith("[0:05] scoring")
    assert any("t02 finished: val acc 0.8000, MACs 40.0%" in m and "2/4 finished" in m and
               "best val acc 0.8000 within budget" in m for m in out)
    assert any("t03 FAILED: RuntimeError: boom" in m for m in out)
    assert out[-1] == "[0:30] done (finished): 2 finished, 1 failed, 1 stopped early in this run; best val acc 0.8000 within budget"
    assert [e.kind for e in events].count("done") == 1 and events[-1].finished == 2


def test_resumed_trials_count_the_earlier_ones_and_a_heartbeat_repeats_the_status(lines) -> None:
    clock = Clock()
    p = Progress(clock=clock, heartbeat_s=30)
    p.start_trials(10, done=6)
    p.trial_started("t07")
    clock.now = 29
    p.tick()
    clock.now = 31
    p.tick()
    out = lines()
    assert out[0] == "[0:00] trials: 4 of 10 trials to fine-tune"
    assert out[-1].startswith("[0:31] trials: t07 starting | 6/10 finished, 0 failed, 1 running") and len(out) == 2


def test_a_resumed_search_counts_the_earlier_trials_in_its_best_accuracy(lines) -> None:
    p = Progress(budget=0.5, clock=Clock(), heartbeat_s=0)
    p.start_trials(4, done=2, earlier=[(0.9, 0.45), (0.95, 0.7)])  # the second is over the budget
    p.trial_finished("t03", 0.8, 0.4, 1.0)
    p.close("FINISHED")
    assert p.best == 0.9
    assert lines()[-1].endswith("; best val acc 0.9000 within budget")


def test_a_broken_callback_does_not_stop_the_search(caplog) -> None:
    calls = []

    def broken(event):
        calls.append(event.phase)
        raise RuntimeError("display gone")

    p = Progress(broken)
    with caplog.at_level(logging.DEBUG, logger="prunetune"):
        p.phase("loading")  # raises nothing
        p.phase("scoring")  # and the progress goes on being reported
    assert calls == ["loading", "scoring"] and "scoring" in p.status()
    # the first failure is a warning the user sees (it was a DEBUG line only: a silent broken callback)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["the progress callback raised RuntimeError: display gone; the search goes on (later errors "
                      "of the callback are logged at DEBUG)"]


def test_live_status_keeps_one_line_below_the_log() -> None:
    stream = io.StringIO()
    live = LiveStatus(stream)
    p = Progress(live.update)
    p.phase("loading")
    live.emit(logging.LogRecord("prunetune", logging.INFO, "", 0, "a log line", (), None))
    text = stream.getvalue()
    assert "\r\x1b[2Ka log line\n" in text and text.endswith("loading... | 0:00 elapsed")
    live.close()
    assert stream.getvalue().endswith("\r\x1b[2K")


def test_held_lines_come_out_only_once_the_input_passed_its_checks(lines) -> None:
    events = []
    refused = Progress(events.append, hold=True)
    refused.phase("loading", "config")
    refused.close("FAILED")  # refused input: the error stays the only line
    assert lines() == [] and [e.kind for e in events] == ["phase", "done"]
    ok = Progress(hold=True)
    ok.phase("loading", "config")
    ok.release()
    ok.phase("scoring")
    assert [m.split("] ")[1] for m in lines()] == ["loading: config", "scoring"]
