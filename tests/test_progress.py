"""xalign.progress without a terminal: plain lines at a steady rate (first and last always),
the relay from a Ray worker's marker lines to the driver's display, and the forced modes."""

from __future__ import annotations

import io
import json
import os
import re
import select
import time

import pytest

from xalign import progress

BAR_CHARS = set("█▏▎▍▌▋▊▉|\r")


def test_plain_lines_first_at_once_then_at_the_interval_and_a_final_line(monkeypatch):
    monkeypatch.setenv("XALIGN_PROGRESS_INTERVAL", "3600")
    monkeypatch.delenv("XALIGN_PROGRESS", raising=False)
    out = io.StringIO()
    with progress.bar("base model", total=50, unit="step", target=out) as p:
        for i in range(50):
            p.update(1, loss=3.0 - i / 100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines                       # the start and the end, nothing between
    assert lines[0] == "base model: 0/50 step (0%), 0s so far"
    assert lines[1].startswith("base model: 50/50 step (100%), loss 2.51, ") and "done in" in lines[1]
    assert not BAR_CHARS & set(out.getvalue())


def test_plain_lines_come_at_most_once_per_interval(monkeypatch):
    monkeypatch.setenv("XALIGN_PROGRESS_INTERVAL", "0")
    out = io.StringIO()
    with progress.bar("eval xcopa/qab", total=4, unit="item", target=out) as p:
        for _ in range(4):
            p.update(1)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"eval xcopa/qab: {i}/4 item ({25 * i}%)" for i in range(5)]
    assert "done in" in lines[-1] and "done in" not in lines[-2]    # 100% once, as the final line
    assert "left" in lines[2] and "item/s" in lines[2]


def test_a_relayed_worker_line_becomes_the_drivers_display(monkeypatch):
    monkeypatch.setenv("XALIGN_PROGRESS_INTERVAL", "0")
    worker_out = io.StringIO()
    with progress.bar("train demo", total=10, unit="step", mode="relay", target=worker_out) as p:
        p.update(5, loss=1.25)
    marker_lines = worker_out.getvalue().splitlines()
    assert marker_lines and all(line.startswith(progress.RELAY_PREFIX) for line in marker_lines)
    assert json.loads(marker_lines[-1][len(progress.RELAY_PREFIX):])["final"] is True

    driver_out = io.StringIO()
    assert not progress.relayed("an ordinary line", target=driver_out)
    for line in marker_lines:
        assert progress.relayed(line, target=driver_out)
    shown = driver_out.getvalue().splitlines()
    assert shown[-1].startswith("train demo: 5/10 step (50%), loss 1.25") and "done in" in shown[-1]


def test_a_relayed_bar_shows_the_description_its_worker_moved_on_to(monkeypatch):
    """score_shard names the task and language it is scoring (set_description): the driver's
    display follows, to the last line."""
    monkeypatch.setenv("XALIGN_PROGRESS_INTERVAL", "0")
    worker_out = io.StringIO()
    with progress.bar("dev eval", total=4, unit="item", mode="relay", target=worker_out) as p:
        p.set_description("dev eval xcopa/en")
        p.update(2)
        p.set_description("dev eval xcopa/sw")
        p.update(2)
    driver_out = io.StringIO()
    for line in worker_out.getvalue().splitlines():
        assert progress.relayed(line, target=driver_out)
    assert driver_out.getvalue().splitlines()[-1].startswith("dev eval xcopa/sw: 4/4 item (100%)")


class _Terminal(io.StringIO):
    encoding = "utf-8"   # tqdm draws its unicode blocks, as on a real terminal

    def isatty(self) -> bool:
        return True


def _marker(n: int, elapsed: float, *, final: bool = False) -> str:
    """A worker's relayed update as xalign.progress writes it (the contract between the two)."""
    return progress.RELAY_PREFIX + json.dumps({"id": "w-1", "desc": "train tty", "n": n, "total": 12, "unit": "step",
                                               "fields": {"loss": 2.5}, "final": final, "elapsed": elapsed,
                                               "initial": 0})


def test_a_short_runs_relayed_updates_all_reach_the_drivers_terminal_bar(monkeypatch):
    """Issue 17's terminal bug: a run of 12 fast steps relays its first update (0/12) and,
    well under a second later, its last (12/12). On a terminal the driver's tqdm bar must end
    at 12/12. tqdm's mininterval (0.25 s) dropped the in-between draws, and its close() drew
    nothing because the bar's start, moved back to the worker's clock, fell after its only draw
    (the last line came later after the worker's start than the first one had): the bar stayed
    at 0/12."""
    monkeypatch.delenv("XALIGN_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    screen = _Terminal()
    assert progress.relayed(_marker(0, 0.0), target=screen)
    time.sleep(0.05)     # the later lines arrive 0.05 s after the first, having taken 0.01-0.02 s on the worker
    assert progress.relayed(_marker(5, 0.01), target=screen)
    assert "5/12" in screen.getvalue()                              # each relayed update is drawn
    assert progress.relayed(_marker(12, 0.02, final=True), target=screen)
    drawn = screen.getvalue()
    assert re.search(r"train tty: 100%\|█+\| 12/12 \[", drawn), drawn
    assert drawn.endswith("\n"), drawn                              # closed: the next line starts below it
    assert not progress._relayed_bars


def test_forced_off_prints_nothing_and_notes_still_print(monkeypatch):
    monkeypatch.setenv("XALIGN_PROGRESS", "off")
    out = io.StringIO()
    with progress.bar("quiet", total=3, target=out) as p:
        p.update(3)
    assert out.getvalue() == ""
    progress.note("a result line", target=out)
    assert out.getvalue() == "a result line\n"


def test_numbers_are_short():
    assert progress.fmt_value(5234.7) == "5235" and progress.fmt_value(52347.0) == "52.3k"
    assert progress.fmt_value(0.123456) == "0.1235" and progress.fmt_value(120000) == "120,000"
    assert progress.fmt_seconds(75) == "1m15s" and progress.fmt_seconds(7300) == "2h01m"


def test_a_step_ended_by_an_error_says_stopped_not_done(monkeypatch):
    monkeypatch.setenv("XALIGN_PROGRESS_INTERVAL", "3600")
    out = io.StringIO()
    try:
        with progress.bar("world: corpus", total=7, unit="part", target=out) as p:
            p.update(1)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("world: corpus: 1/7 part (14%)") and "stopped after" in last and "done" not in last


def test_a_refused_run_leaves_no_folder_behind_and_keeps_rays_output_aside(tmp_path, monkeypatch, capsys):
    """Ray writes its first lines (and so opens the log in the run's folder) before checks
    that need the cluster (shared storage) refuse the run: the refusal removes the folders
    the log created and keeps the log under $XALIGN_HOME/logs."""
    from xalign.errors import XalignError
    from xalign.train import console

    monkeypatch.setenv("XALIGN_HOME", str(tmp_path / "home"))
    storage = tmp_path / "storage"
    storage.mkdir()
    with pytest.raises(XalignError):
        with console.ray_output(storage / "run-1" / console.LOG_NAME) as out:
            out.line("Connecting to existing Ray cluster at address: 127.0.0.1:6379", source=None)
            assert (storage / "run-1" / console.LOG_NAME).is_file()
            raise XalignError("checkpoint.storage_path: not shared")
    assert list(storage.iterdir()) == []
    aside = tmp_path / "home" / "logs" / f"run-1-{console.LOG_NAME}"
    assert "Connecting to existing Ray cluster" in aside.read_text()
    # A run that is not refused keeps its log where it was.
    with console.ray_output(storage / "run-2" / console.LOG_NAME) as out:
        out.line("Started a local Ray instance.", source=None)
    assert "Started a local Ray instance." in (storage / "run-2" / console.LOG_NAME).read_text()


def test_rays_output_is_taken_over_even_when_rays_log_handler_holds_a_closed_stream(tmp_path):
    """A Ray log handler whose stream someone already closed (a finished test's captured
    stderr, a closed pipe): routing Ray's output must not fail on flushing it, and the handler
    gets its stream back afterwards."""
    import io
    import logging

    from xalign.train import console

    closed = io.StringIO()
    closed.close()
    handler = logging.StreamHandler(closed)
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(handler)
    try:
        with console.ray_output(tmp_path / "run" / console.LOG_NAME) as out:
            assert handler.stream is not closed
            out.line("Started a local Ray instance.", source=None)
        assert handler.stream is closed
    finally:
        ray_logger.removeHandler(handler)
    assert "Started a local Ray instance." in (tmp_path / "run" / console.LOG_NAME).read_text()


def test_a_terminal_that_reports_no_size_still_shows_the_bar(monkeypatch):
    """A pty nobody sized (0 x 0: `script` started from a pipe, some CI runners) made tqdm hide
    every bar; xalign then draws at a fixed size ($COLUMNS / $LINES, else 80 x 24)."""
    monkeypatch.delenv("XALIGN_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    master, slave = os.openpty()
    try:
        terminal = os.fdopen(slave, "w", encoding="utf-8", closefd=False)
        assert terminal.isatty() and os.get_terminal_size(slave).lines == 0
        with progress.bar("size", total=3, unit="step", target=terminal) as shown:
            shown.update(3)
        terminal.flush()
        drawn, deadline = "", time.monotonic() + 5
        while "3/3" not in drawn and time.monotonic() < deadline:   # the pty hands the bytes over shortly
            if select.select([master], [], [], 0.1)[0]:
                drawn += os.read(master, 65536).decode("utf-8", "replace")
    finally:
        os.close(master)
        os.close(slave)
    assert "size: 100%|" in drawn and "3/3" in drawn, drawn


def test_a_sweep_bar_shows_the_average_pace_not_the_last_gap(monkeypatch):
    """The sweep's bar is refreshed (running/pending) between trials; with tqdm's moving
    average the first trial, done after 81 s, showed '3.57 trial/s, 3 s left' (the gap since
    the last refresh). smoothing=0, as the sweep uses: the average since the start."""
    import tqdm.std

    monkeypatch.delenv("XALIGN_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    shown = {}
    for smoothing in (0.1, 0):
        clock[0] = 1000.0
        bar = progress.bar("sweep s", total=14, unit="trial", target=_Terminal(), smoothing=smoothing)
        for t in (10, 20, 40, 80.72):          # refreshes: trials running, none done
            clock[0] = 1000 + t
            bar.update(0, running=2)
        clock[0] = 1081.0
        bar.update(1)
        shown[smoothing] = re.search(r"1/14 \[[^\]]*\]", str(bar._tqdm)).group(0)
        bar.close()
    assert "81.00s/trial" in shown[0] and "17:33" in shown[0], shown    # 13 trials x 81 s left
    assert "trial/s" in shown[0.1], shown                              # what the sweep showed before
