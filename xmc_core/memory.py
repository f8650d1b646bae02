"""Resident memory of this process, stage by stage: the peak since the last stage ended.

A stage's peak is the kernel's high-water mark of resident memory (``VmHWM`` in
``/proc/self/status``), reset when the stage starts by writing ``5`` to ``/proc/self/clear_refs``
(Linux >= 4.0, proc(5)). ``getrusage``'s ``ru_maxrss`` cannot be reset, so it gives the whole
run's peak only; it is the fallback where /proc is missing (macOS, or a container that forbids
the write), and `StageMemory.exact` then says the per-stage peaks are cumulative.

``VmHWM`` is also the right figure for a measured child process: a process started from a large
one (fork or vfork, then exec) carries the parent's high-water mark in ``ru_maxrss`` (a child of a
400 MB parent reads 407 MB there and 11 MB in ``VmHWM``), while ``VmHWM`` counts its own pages
since exec only.

No numerics here, and only the standard library: the training and prediction drivers
(`model.train_xr_linear`, the CLI) attach these figures to their stage records, and the bench's
runners use `peak_rss_mb`, the peers' runners in their own environment too.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

__all__ = ["rss_mb", "peak_rss_mb", "reset_peak", "StageMemory", "nbytes_mb"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MB = 1024.0 * 1024.0


def _status_kb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (``VmRSS``; NaN where /proc is missing)."""
    kb = _status_kb("VmRSS")
    return float("nan") if kb is None else kb / 1024.0


def peak_rss_mb() -> float:
    """Peak resident memory since the last `reset_peak` (or since the start), in MiB.

    ``VmHWM`` where /proc is there, else ``ru_maxrss`` (the whole run's peak; KiB on Linux,
    bytes on macOS)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak / 1024.0


def reset_peak() -> bool:
    """Set the peak (``VmHWM``) back to the resident memory now. Returns False where the kernel
    does not allow it (the peak then stays cumulative)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class StageMemory:
    """Per-stage memory figures for stage records: call `add(rec)` when a stage ends.

    `add` puts ``peak_rss_mb`` (the stage's peak resident memory, MiB: the most held at any time
    since the previous record) and ``rss_mb`` (held when the stage ended) into the record, then
    resets the peak for the next stage. ``run_peak_mb`` keeps the largest peak seen.

    Attributes:
        exact: whether peaks are per stage (False: the kernel refused the reset, and each peak
            is the run's so far).
        run_peak_mb: the largest stage peak so far (MiB).
    """

    def __init__(self):
        self.exact = reset_peak()
        self.run_peak_mb = round(peak_rss_mb(), 1)

    def add(self, rec: dict) -> dict:
        """`rec` with ``peak_rss_mb`` and ``rss_mb`` added (rounded to 0.1 MiB); returns it."""
        peak = round(peak_rss_mb(), 1)
        self.run_peak_mb = max(self.run_peak_mb, peak)
        rec["peak_rss_mb"] = peak
        rec["rss_mb"] = round(rss_mb(), 1)
        if self.exact:
            reset_peak()
        return rec


def nbytes_mb(*arrays) -> float:
    """Memory held by numpy arrays and scipy sparse matrices (their data, indices, indptr), MiB."""
    total = 0
    for a in arrays:
        if a is None:
            continue
        if hasattr(a, "indptr"):
            total += a.data.nbytes + a.indices.nbytes + a.indptr.nbytes
        elif hasattr(a, "row") and hasattr(a, "col"):
            total += a.data.nbytes + a.row.nbytes + a.col.nbytes
        else:
            total += a.nbytes
    return round(total / _MB, 1)
