"""Progress of long steps: the hook algorithms report to, and the reporters a front end installs.

The algorithms (TF-IDF over documents, tree levels, ranker levels by parents, prediction
batches, fine-tuning steps, synthetic documents) call :func:`task` and update it; they never
write anything themselves. What a report becomes is the installed reporter's business:

* :class:`Silent` (the default, so a library call prints nothing);
* :class:`TerminalReporter`: a tqdm bar with rate and time left, on a terminal;
* :class:`LogReporter`: a plain line every `interval` seconds, for logs and pipes;
* :func:`for_stream` picks one of them for a stream (stderr) and a ``--quiet`` flag.

Reporters write to the stream they are given (the CLI gives stderr), so progress never mixes
with the JSON lines on stdout. The installed reporter is process-wide (not per thread): a task
opened in the main thread may be updated from worker threads.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from typing import IO, Iterator

__all__ = ["Task", "Silent", "TerminalReporter", "LogReporter", "task", "reporting", "install", "for_stream"]

#: seconds between two plain progress lines of one task (LogReporter)
LOG_INTERVAL_S = 10.0
#: a terminal bar appears only for a task that is still running after this many seconds
BAR_DELAY_S = 0.5


class Task:
    """One long step: `total` units of work (None: unknown), advanced by :meth:`update`.

    Usable as a context manager (closed on exit). Thread-safe: workers may update it.
    """

    def __init__(self, desc: str, total: int | None, unit: str):
        self.desc, self.total, self.unit = desc, total, unit
        self.n = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        """Advance by `n` units (int >= 0)."""
        with self._lock:
            self.n += n
            self._advanced(n)

    def _advanced(self, n: int) -> None:  # reporters override (called under the lock)
        pass

    def close(self) -> None:
        """The step ended (idempotent)."""

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Silent:
    """Reports nothing (the default for library calls, and ``--quiet``)."""

    def task(self, desc: str, total: int | None, unit: str) -> Task:
        """A task that records its count and writes nothing (`desc`, `total`, `unit` as :func:`task`)."""
        return Task(desc, total, unit)


class _BarTask(Task):
    def __init__(self, desc, total, unit, stream, delay):
        super().__init__(desc, total, unit)
        from tqdm import tqdm

        # delay: a step that ends within BAR_DELAY_S never draws a bar; leave=False: the
        # finished bar is erased, so the stage lines after it read cleanly
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, delay=delay, leave=False,
                         dynamic_ncols=True, unit_scale=True, mininterval=0.25)

    def _advanced(self, n):
        self._bar.update(n)

    def close(self):
        self._bar.close()


class TerminalReporter:
    """tqdm bars (description, count/total, rate, elapsed and time left) on a terminal stream;
    a bar is drawn once its task has run `delay` seconds."""

    def __init__(self, stream: IO[str] | None = None, delay: float = BAR_DELAY_S):
        self.stream = stream or sys.stderr
        self.delay = float(delay)

    def task(self, desc: str, total: int | None, unit: str) -> Task:
        """A task drawn as a bar on this reporter's stream (`desc`, `total`, `unit` as :func:`task`)."""
        return _BarTask(desc, total, unit, self.stream, self.delay)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class _LogTask(Task):
    def __init__(self, desc, total, unit, reporter: "LogReporter"):
        super().__init__(desc, total, unit)
        self._reporter = reporter
        self._last = self.started
        self._lines = 0

    def _line(self, now: float, final: bool = False) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.n / elapsed
        if self.total:
            head = f"{self.n}/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            head = f"{self.n} {self.unit}"
        tail = f"{rate:.1f} {self.unit}/s, {_clock(elapsed)} elapsed"
        if final:
            tail += ", done"
        elif self.total and rate > 0 and math.isfinite(rate):
            tail += f", {_clock((self.total - self.n) / rate)} left"
        return f"xmc: {self.desc}: {head}, {tail}"

    def _advanced(self, n):
        now = time.monotonic()
        if self.total is not None and self.n >= self.total:
            return  # close() says it is done
        if now - self._last >= self._reporter.interval:
            self._last = now
            self._lines += 1
            self._reporter.write(self._line(now))

    def close(self):
        with self._lock:
            now = time.monotonic()
            # a task that said it was running, or ran for an interval, says it ended (once)
            if self._lines >= 0 and (self._lines or now - self.started >= self._reporter.interval):
                self._lines = -1
                self._reporter.write(self._line(now, final=True))


class LogReporter:
    """Plain lines ("xmc: <step>: n/total unit (p%), rate unit/s, elapsed, time left") at most
    every `interval` seconds per task, for output that is not a terminal (logs, CI, pipes)."""

    def __init__(self, stream: IO[str] | None = None, interval: float | None = None):
        self.stream = stream or sys.stderr
        self.interval = float(LOG_INTERVAL_S if interval is None else interval)
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        """Write one progress line (`line`, no newline) and flush."""
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def task(self, desc: str, total: int | None, unit: str) -> Task:
        """A task reported by periodic lines (`desc`, `total`, `unit` as :func:`task`)."""
        return _LogTask(desc, total, unit, self)


_reporter = Silent()


def task(desc: str, total: int | None = None, unit: str = "it") -> Task:
    """Open a progress task on the installed reporter.

    Args:
        desc: what runs, in the user's words ("rankers level 2", "tf-idf").
        total: units of work in all (None: unknown).
        unit: what one unit is ("doc", "parent", "step"), singular.

    Returns:
        A :class:`Task` (a context manager); call ``update(n)`` as work gets done.
    """
    return _reporter.task(desc, total, unit)


def install(reporter) -> object:
    """Make `reporter` (Silent, TerminalReporter, LogReporter or alike) the process-wide
    reporter; returns the one it replaces."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


@contextlib.contextmanager
def reporting(reporter) -> Iterator[None]:
    """Context manager: `reporter` installed inside the block, the previous one restored after."""
    previous = install(reporter)
    try:
        yield
    finally:
        install(previous)


def for_stream(stream: IO[str] | None = None, quiet: bool = False, interval: float | None = None):
    """The reporter for a front end writing progress to `stream` (default stderr).

    Args:
        stream: where progress goes; never stdout when stdout carries results.
        quiet: True: :class:`Silent`.
        interval: seconds between plain lines (None: :data:`LOG_INTERVAL_S`, or
            $XMC_PROGRESS_INTERVAL when set).

    Returns:
        Silent when quiet; a TerminalReporter when `stream` is a terminal; else a LogReporter.
    """
    import os

    stream = stream or sys.stderr
    if quiet:
        return Silent()
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return TerminalReporter(stream)
    if interval is None:
        interval = float(os.environ.get("XMC_PROGRESS_INTERVAL", LOG_INTERVAL_S))
    return LogReporter(stream, interval)
