"""Progress of every long step, shown the way people know it: a tqdm bar on a terminal,
plain lines at a steady rate otherwise (a log file, `ray job logs`, a pipe). A leaf module:
any layer may import it; it imports nothing of xalign (and tqdm only when a bar is drawn).

    from xalign import progress

    with progress.bar("base model", total=600, unit="step") as p:
        for step in range(600):
            ...
            p.update(1, loss=3.41, tok_s=5200.0)   # fields shown after the count
    progress.note("Built world in 12.3s")          # a line that does not break a bar

- On a terminal: ``base model:  20%|███▌      | 120/600 [00:10<00:40, 12.0step/s, loss=3.41, tok_s=5.2k]``.
- Otherwise: ``base model: 120/600 step (20%), loss 3.41, tok_s 5.2k, 12 step/s, 40s left``
  at the start, then at most every ``XALIGN_PROGRESS_INTERVAL`` seconds (default 10) and
  once at the end (``done in ...``). ``XALIGN_PROGRESS=bars|lines|off`` forces a form.
- In a Ray worker (a Train worker, a Ray task) nothing is drawn there. With ``relay=True``
  (training on rank 0, the final evaluation) each update, at most one a second, is one
  marker line (``RELAY_PREFIX`` + JSON) on the worker's stdout, which
  Ray forwards to the driver; the driver's console (xalign.console) hands it to
  ``relayed()``, which shows it there as a bar or plain lines. So rank 0's training
  progress appears where the user started the command, on a laptop or a cluster.

Output goes to ``stream()``: stderr, or the real terminal while xalign.console has sent
Ray's output to a log file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from typing import Any, Optional, TextIO

RELAY_PREFIX = "[xalign-progress] "
RELAY_INTERVAL_S = 1.0
_lock = threading.RLock()
_relayed_bars: dict[str, "Bar"] = {}   # bars shown on the driver for relayed worker progress
_stream: Optional[TextIO] = None       # set by xalign.console while it captures stdout/stderr


def stream() -> TextIO:
    """Where progress and notes go: the terminal the user sees."""
    return _stream or sys.stderr


def set_stream(target: Optional[TextIO]) -> None:
    """Send progress to ``target`` (None: back to stderr). Used by xalign.console."""
    global _stream
    _stream = target


def interval() -> float:
    """Seconds between plain progress lines (``XALIGN_PROGRESS_INTERVAL``, default 10)."""
    try:
        return max(0.0, float(os.environ.get("XALIGN_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


def mode_for(target: TextIO) -> str:
    """``bars`` on a terminal, ``lines`` otherwise, or what ``XALIGN_PROGRESS`` forces."""
    forced = os.environ.get("XALIGN_PROGRESS", "").strip().lower()
    if forced in ("bars", "lines", "off"):
        return forced
    try:
        return "bars" if target.isatty() and os.environ.get("TERM") != "dumb" else "lines"
    except (AttributeError, ValueError):
        return "lines"


def _columns(target: TextIO) -> int:
    """The width of the terminal ``target`` writes to; 0 when it reports none."""
    try:
        return os.get_terminal_size(target.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def quiet_library_bars() -> None:
    """Hugging Face's own tqdm bars (weights loading, shards written, datasets mapped) off
    when ours are plain lines: a bar drawn into a log file is a wall of carriage returns.
    Call before transformers / datasets are imported (the CLI does)."""
    if mode_for(stream()) != "bars":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def in_ray_worker() -> bool:
    """True inside a Ray worker process (not the driver). Never imports ray itself."""
    worker = sys.modules.get("ray._private.worker")
    if worker is None:
        return False
    try:
        return worker.global_worker.mode == worker.WORKER_MODE
    except AttributeError:
        return False


def fmt_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.1f}k"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.4g}"


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Bar:
    """One long step. Create with ``bar(...)``; ``update`` is cheap enough for every step."""

    def __init__(self, desc: str, total: Optional[float] = None, unit: str = "it", *,
                 target: Optional[TextIO] = None, mode: Optional[str] = None, initial: float = 0,
                 relay: bool = False, relay_id: Optional[str] = None, every_update: bool = False,
                 smoothing: float = 0.1):
        worker = mode is None and target is None and in_ray_worker()
        self.desc, self.total, self.unit = desc, total, unit
        self.target = target or (sys.stdout if worker else stream())
        self.mode = ("relay" if relay else "off") if worker else (mode or mode_for(self.target))
        self.n = self.initial = initial
        self.fields: dict[str, Any] = {}
        self.start = time.monotonic()
        self._last_emit = float("-inf")
        self._closed = False
        self._relay_id = relay_id or f"{os.getpid()}-{id(self)}"
        self._tqdm = None
        if self.mode == "bars":
            from tqdm import tqdm

            # every_update (a relayed bar, whose worker already sends at most one update a second):
            # draw each update. tqdm's own throttle (mininterval, and miniters, which it grows from
            # the rate it has seen) would drop them: a short run's only updates, its first and its
            # last, often come within 0.25 s of each other on the driver.
            # A terminal that reports a size of 0 x 0 (a pty nobody sized: `script` run from a
            # pipe, some CI runners and editor shells) makes tqdm hide every bar (0 rows): then a
            # fixed size, from $COLUMNS / $LINES or 80 x 24, instead of the terminal's.
            sized = _columns(self.target) > 0
            fixed = None if sized else shutil.get_terminal_size((80, 24))
            self._tqdm = tqdm(total=total, desc=desc, unit=unit, file=self.target, dynamic_ncols=sized,
                              ncols=fixed and fixed.columns, nrows=fixed and fixed.lines, initial=initial,
                              smoothing=smoothing, mininterval=0 if every_update else 0.25,
                              miniters=0 if every_update else None)
        self._emit(force=True)

    def update(self, n: float = 1, **fields: Any) -> None:
        """``n`` more done; ``fields`` (loss=..., tok_s=...) replace the shown values."""
        with _lock:
            self.n += n
            self.fields.update(fields)
            if self._tqdm is not None:
                if fields:
                    self._tqdm.set_postfix({k: fmt_value(v) for k, v in self.fields.items()}, refresh=False)
                self._tqdm.update(n)
            else:
                self._emit()

    def set(self, n: Optional[float] = None, *, total: Optional[float] = None, **fields: Any) -> None:
        """Set the count (and the total) outright, e.g. from a reported step."""
        with _lock:
            if total is not None and total != self.total:
                self.total = total
                if self._tqdm is not None:
                    self._tqdm.total = total
                    self._tqdm.refresh()
            self.update((n - self.n) if n is not None else 0, **fields)

    def set_description(self, desc: str) -> None:
        with _lock:
            self.desc = desc
            if self._tqdm is not None:
                self._tqdm.set_description(desc, refresh=False)

    def note(self, text: str) -> None:
        """A line above the bar (or between plain lines)."""
        note(text, target=None if self.mode == "relay" else self.target)

    def close(self, *, stopped: bool = False) -> None:
        """The end: a bar's last state stays; plain lines get a last ``done in`` line
        (``stopped``: ``stopped after``, for an error or Ctrl-C)."""
        with _lock:
            if self._closed:
                return
            self._closed = True
            self._stopped = stopped
            if self._tqdm is not None:
                self._tqdm.close()
            else:
                self._emit(force=True, final=True)

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(stopped=exc_type is not None)

    def line(self, *, final: bool = False) -> str:
        """The plain-line form of the current state."""
        elapsed = time.monotonic() - self.start
        count = f"{fmt_value(self.n)}/{fmt_value(self.total)} {self.unit}" if self.total else f"{fmt_value(self.n)} {self.unit}"
        parts = [count + (f" ({self.n / self.total:.0%})" if self.total else "")]
        parts += [f"{k} {fmt_value(v)}" for k, v in self.fields.items()]
        rate = (self.n - self.initial) / elapsed if elapsed > 0 and self.n > self.initial else None
        if rate:
            parts.append(f"{fmt_value(float(rate)) if rate >= 1 else f'{rate:.2g}'} {self.unit}/s")
        if final:
            parts.append(f"{'stopped after' if getattr(self, '_stopped', False) else 'done in'} {fmt_seconds(elapsed)}")
        elif rate and self.total:
            parts.append(f"{fmt_seconds((self.total - self.n) / rate)} left")
        else:
            parts.append(f"{fmt_seconds(elapsed)} so far")
        return f"{self.desc}: " + ", ".join(parts)

    def _emit(self, *, force: bool = False, final: bool = False) -> None:
        if self.mode in ("off", "bars"):
            return
        now = time.monotonic()
        if not force and now - self._last_emit < (RELAY_INTERVAL_S if self.mode == "relay" else interval()):
            return
        self._last_emit = now
        if not final and self.total and self.n >= self.total and self.mode != "relay":
            return   # the final line follows
        if self.mode == "relay":
            text = RELAY_PREFIX + json.dumps({"id": self._relay_id, "desc": self.desc, "n": self.n, "total": self.total,
                                              "unit": self.unit, "fields": self.fields, "final": final,
                                              "elapsed": now - self.start, "initial": self.initial}, default=str)
        else:
            text = self.line(final=final)
        _write(self.target, text)


def bar(desc: str, total: Optional[float] = None, unit: str = "it", **kwargs: Any) -> Bar:
    """A progress display for one long step; use as a context manager (closed at the end)."""
    return Bar(desc, total, unit, **kwargs)


def note(text: str, *, target: Optional[TextIO] = None) -> None:
    """Print one line for the user without breaking a bar on the same terminal."""
    target = target or stream()
    with _lock:
        if mode_for(target) == "bars":
            from tqdm import tqdm

            tqdm.write(text, file=target)
            _flush(target)
        else:
            _write(target, text)


def relayed(line: str, *, target: Optional[TextIO] = None) -> bool:
    """On the driver: when ``line`` is a Ray worker's relayed update, show it (a bar on a
    terminal, plain lines otherwise) and return True; other lines: False."""
    if not line.startswith(RELAY_PREFIX):
        return False
    try:
        data = json.loads(line[len(RELAY_PREFIX):])
        key = str(data["id"])
    except (ValueError, KeyError, TypeError):
        return False
    with _lock:
        shown = _relayed_bars.get(key)
        if shown is None:
            shown = _relayed_bars[key] = Bar(str(data.get("desc", "")), data.get("total"), str(data.get("unit", "it")),
                                             target=target or stream(), initial=data.get("n") or 0, every_update=True)
        if isinstance(data.get("elapsed"), (int, float)):   # the worker's clock: rate and time left as it sees them
            shown.start = time.monotonic() - data["elapsed"]
            shown.initial = data.get("initial") or 0
            if shown._tqdm is not None:
                # tqdm's close() draws the last state only when the bar was drawn after start_t
                # (last_print_t >= start_t): moved to the worker's start, start_t can fall after the
                # last draw when this line came later after its worker's start than the first one
                # did; then close() drew nothing and the bar stayed at its first state (0/12).
                # Each update below draws (every_update), so last_print_t moves past start_t.
                shown._tqdm.start_t = time.time() - max(0.0, data["elapsed"])
        if data.get("desc") is not None and str(data["desc"]) != shown.desc:   # e.g. the task/language now scored
            shown.set_description(str(data["desc"]))
        shown.set(data.get("n"), total=data.get("total"), **(data.get("fields") or {}))
        if data.get("final"):
            shown.close()
            del _relayed_bars[key]
    return True


def close_relayed() -> None:
    """Close the bars of relayed progress still open (a worker that died mid-step)."""
    with _lock:
        for shown in list(_relayed_bars.values()):
            shown.close()
        _relayed_bars.clear()


def _write(target: TextIO, text: str) -> None:
    with _lock:
        try:
            target.write(text + "\n")
        except (ValueError, OSError):   # a closed stream: progress is never worth a crash
            return
        _flush(target)


def _flush(target: TextIO) -> None:
    try:
        target.flush()
    except (ValueError, OSError, AttributeError):
        pass
