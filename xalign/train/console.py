"""A quiet console while Ray runs: Ray's own output (Tune's trial tables, Train's controller
and worker start-up lines, raylet warnings, C++ log lines such as the PreemptionWatcher
``core_worker.cc`` line) goes to a log file in the run's or the sweep's folder; the console
keeps xalign's progress and results. ``--verbose`` (``XALIGN_VERBOSE=1``) shows Ray's output
live as well. A line that matters (out of memory, a node or worker that died) still reaches
the console, once, with the log file's path.

How Ray's output is taken (read in ray 2.60's ray/_private/worker.py): worker and actor
output reaches the driver through ``global_worker_stdstream_dispatcher`` (handler
``ray_print_logs`` -> ``print_to_stdstream`` -> sys.stdout/sys.stderr); raylet errors and
Tune's tables are printed to sys.stdout/sys.stderr; the ``ray`` logger has its own stream
handler. While ``ray_output`` is active the dispatcher handler is ours (it also turns
relayed worker progress, xalign.progress, into the driver's display), sys.stdout and
sys.stderr write into the log file, and the ``ray`` logger's stream handlers too. Inside a
Ray worker (a sweep's trial function) it does nothing: the driver already routes that
process's output.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, TextIO

from xalign import progress
from xalign.errors import XalignError
from xalign.paths import xalign_home

LOG_NAME = "ray_output.log"
#: Lines of Ray's output a user must see even when it goes to the log file.
IMPORTANT = re.compile(
    r"out of memory|OutOfMemoryError|killed due to (the node running )?low (on )?memory|"
    r"(node|raylet) .*(died|is dead|marked as dead|failed)|worker (unexpectedly )?(died|exited|crashed)|"
    r"SYSTEM_ERROR|No space left on device", re.I)
#: ... and lines that look alarming but are not (explained in the README):
#: Train V2's PreemptionWatcher actor is created with max_restarts and actor-handle
#: arguments, so each Train controller's core worker logs an "E ... core_worker.cc" line
#: (ray-project/ray#53727); a sweep's trial functions hold a sliver of CPU, so the raylet
#: warns that many worker processes started.
BENIGN = re.compile(r"PreemptionWatcher|worker processes have been started|"
                    r"Failed to query Ray Train Controller actor state", re.I)
AUTOSCALER_NOISE = re.compile(r"^(=+ Autoscaler status|Node status|Resources|-{5,}|Active:|Pending:|Recent failures:|"
                              r"Total Usage:|Total Constraints:|Total Demands:|From request_resources:|"
                              r"Pending Demands:|\s)|autoscaler\.py:\d+ --")


def verbose() -> bool:
    """``--verbose`` on the command line sets XALIGN_VERBOSE=1."""
    return os.environ.get("XALIGN_VERBOSE", "") not in ("", "0", "false")


def in_ray_worker() -> bool:
    return progress.in_ray_worker()


class _LineWriter(io.TextIOBase):
    """sys.stdout / sys.stderr while Ray runs: whole lines to ``RayOutput.line``."""

    def __init__(self, owner: "RayOutput", name: str, original: TextIO):
        self._owner, self._name, self._original = owner, name, original
        self._pending = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:   # Tune picks its box characters from this
        return getattr(self._original, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self._owner.line(line, source=None)
        return len(text)

    def flush(self) -> None:   # lines go out whole; a partial one waits for its end
        pass

    def finish(self) -> None:
        if self._pending:
            self._owner.line(self._pending, source=None)
            self._pending = ""

    def fileno(self) -> int:   # subprocesses started meanwhile inherit the real descriptor
        return self._original.fileno()


class RayOutput:
    """Where Ray's output goes while a command runs; see the module docstring."""

    def __init__(self, log_path: Path, *, show: bool, console: TextIO, relayed: bool = True):
        self.path = Path(log_path)
        self.show, self.relayed = show, relayed
        self.console = console
        self.surfaced: list[str] = []
        self._lock = threading.RLock()
        self._log: Optional[TextIO] = None    # opened at the first line: a refused run writes nothing
        self._closed = False
        self._attached = False
        self._made: list[Path] = []       # folders the log's opening created (a refused run removes them)

    def _file(self) -> Optional[TextIO]:
        """The log file, opened (and its path printed) when the first line comes."""
        if self._log is None and not self._closed:
            try:
                self._made = _missing_folders(self.path.parent)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._log = open(self.path, "a", encoding="utf-8", buffering=1)
            except OSError:   # the run's folder is not writable: its own check says so, clearly
                self.path = _logs_home_path(self.path.parent.name)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._log = open(self.path, "a", encoding="utf-8", buffering=1)
            self._log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} xalign (pid {os.getpid()}): Ray's output ---\n")
            progress.note(f"Ray's output: {self.path}" + ("" if self.show else "  (--verbose shows it here)"),
                          target=self.console)
        return self._log

    def line(self, text: str, *, source: Optional[str]) -> None:
        """One line of Ray's output (``source``: the worker or actor it came from)."""
        if text.startswith(progress.RELAY_PREFIX):
            if self.relayed and progress.relayed(text, target=self.console):
                return
            text = _relayed_summary(text)   # a sweep shows its own progress; the log keeps each final line
            if text is None:
                return
        shown = f"({source}) {text}" if source else text
        with self._lock:
            try:
                log = self._file()
                if log is not None:      # None: closed, a late line after the command ended
                    log.write(shown + "\n")
            except OSError as exc:       # a full disk: Ray's output is not worth failing the run for
                self._closed, self._log = True, None
                progress.note(f"Ray's output could not be written to {self.path} ({exc}); it is dropped from here on",
                              target=self.console)
        if self.show:
            progress.note(shown, target=self.console)
        elif IMPORTANT.search(text) and not BENIGN.search(text):
            self.surfaced.append(text)
            progress.note(f"Ray: {text.strip()[:240]}  (Ray's output: {self.path})", target=self.console)

    def _worker_output(self, data: dict) -> None:
        """Our handler on Ray's stdstream dispatcher: every line of a worker, actor or raylet."""
        pid = data.get("pid")
        who = data.get("actor_name") or data.get("task_name") or ""
        source = "autoscaler" if pid == "autoscaler" else ("raylet" if pid == "raylet" else f"{who} pid={pid}".strip())
        for text in data.get("lines", []):
            if pid == "autoscaler" and (not text.strip() or AUTOSCALER_NOISE.search(text)):
                continue   # the status table every 5 s; `ray status` shows it on demand
            self.line(text, source=source)

    def attach(self) -> None:
        """Take worker output from Ray (call after ray.init; again is harmless)."""
        from ray._private import worker as ray_worker

        if self._attached or ray_worker.global_worker.mode != ray_worker.SCRIPT_MODE:
            return
        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        self._ray_handlers = [pair for pair in dispatcher.handlers if pair[0] == "ray_print_logs"]
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("xalign_output", self._worker_output)
        self._attached = True

    def detach(self) -> None:
        from ray._private import worker as ray_worker

        if self._attached:   # Ray's own printing back, for whatever this process does next
            dispatcher = ray_worker.global_worker_stdstream_dispatcher
            dispatcher.remove_handler("xalign_output")
            for name, handler in self._ray_handlers:
                dispatcher.add_handler(name, handler)
            self._attached = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._log is not None:
                try:
                    self._log.close()
                except OSError:
                    pass

    def move_aside(self) -> None:
        """A refused run leaves nothing in the folders it would have written to: a log that
        opened in a run folder this run created moves to $XALIGN_HOME/logs, the folders go."""
        if self._log is None or not self._made:
            return
        aside = _logs_home_path(self.path.parent.name)
        try:
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.path), str(aside))
            for folder in self._made:            # deepest first; only if nothing else is there
                folder.rmdir()
        except OSError:
            return
        progress.note(f"Ray's output moved to {aside} (the run was refused)", target=self.console)


def _relayed_summary(line: str) -> Optional[str]:
    """The final state of a relayed progress line, as text for the log; None otherwise."""
    try:
        data = json.loads(line[len(progress.RELAY_PREFIX):])
    except ValueError:
        return line
    if not data.get("final"):
        return None
    fields = ", ".join(f"{k} {progress.fmt_value(v)}" for k, v in (data.get("fields") or {}).items())
    return (f"{data.get('desc')}: {progress.fmt_value(data.get('n'))}/{progress.fmt_value(data.get('total'))} "
            f"{data.get('unit')}" + (f", {fields}" if fields else "") + f", done in {progress.fmt_seconds(data.get('elapsed') or 0)}")


_active: Optional[RayOutput] = None


def log_path_for(folder: str, name: str) -> Path:
    """The log file of a run or sweep: in its folder when that is local, else (s3://, gs://)
    under $XALIGN_HOME/logs."""
    if "://" not in folder:
        return Path(folder) / LOG_NAME
    return _logs_home_path(name)


def _logs_home_path(name: str) -> Path:
    """Where Ray's output goes when the run's folder cannot hold it: $XALIGN_HOME/logs."""
    return xalign_home() / "logs" / f"{name}-{LOG_NAME}"


@contextlib.contextmanager
def ray_output(log_path: Path, *, relayed: bool = True) -> Iterator[Optional[RayOutput]]:
    """Route Ray's output to ``log_path`` (and live to the console with --verbose) for the
    duration; prints the path once. ``relayed``: show Ray workers' progress (xalign.progress)
    on the console (a sweep shows its own instead). Nested or inside a Ray worker: does
    nothing."""
    global _active
    if _active is not None or in_ray_worker():
        yield _active
        return
    console = progress.stream()
    out = RayOutput(log_path, show=verbose(), console=console, relayed=relayed)
    saved = sys.stdout, sys.stderr
    handlers = [h for h in logging.getLogger("ray").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    streams = [h.stream for h in handlers]
    _active = out
    progress.set_stream(console)
    sys.stdout, sys.stderr = _LineWriter(out, "stdout", saved[0]), _LineWriter(out, "stderr", saved[1])
    for h in handlers:
        _set_stream(h, sys.stderr)
    refused = False
    try:
        attach()
        yield out
    except XalignError:
        refused = True
        raise
    finally:
        out.detach()
        for writer in (sys.stdout, sys.stderr):
            if isinstance(writer, _LineWriter):
                writer.finish()
        sys.stdout, sys.stderr = saved
        for h, s in zip(handlers, streams):
            _set_stream(h, s)
        progress.close_relayed()
        progress.set_stream(None)
        _active = None
        out.close()
        if refused:
            out.move_aside()


def _set_stream(handler: logging.StreamHandler, stream) -> None:
    """``handler.setStream(stream)``, also when the handler's current stream is already closed
    (setStream flushes it first): a stream someone else closed (a finished test's captured
    stderr, a closed pipe) must not stop a run from starting."""
    try:
        handler.setStream(stream)
    except ValueError:
        handler.stream = stream


def _missing_folders(folder: Path) -> list[Path]:
    """The folders ``mkdir(parents=True)`` of ``folder`` would create, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def attach() -> None:
    """After ray.init inside ``ray_output``: take the worker output stream too."""
    if _active is None:
        return
    from ray._private import worker as ray_worker

    if ray_worker.global_worker.connected:
        _active.attach()
