"""Timing of a prediction call, shared by the bench runners (no dependency beyond the standard
library: `peer_run.py` runs in the peers' own environment)."""

from __future__ import annotations

import statistics
import time

#: rows of the untimed warm-up call: enough to go through a system's batch path once (xmc goes
#: one row at a time up to 8), so lazily loaded code (numba's cached kernels, thread pools) is
#: loaded before the clock starts, as a long-running service has it
WARMUP_ROWS = 64


def timed_predictions(fn, X, repeats: int = 3):
    """fn(X[:WARMUP_ROWS]) once, untimed; then fn(X) `repeats` times.

    Args:
        fn: the prediction, one argument (the rows: a scipy matrix or a list).
        X: the test rows.
        repeats: timed calls (int >= 1); their median is what a table quotes, since one call of a
            second or two moves by a quarter from run to run on a shared 2-core machine.

    Returns:
        (the last call's result, median seconds, every call's seconds).
    """
    n = X.shape[0] if hasattr(X, "shape") else len(X)
    fn(X[:min(WARMUP_ROWS, n)])
    times = []
    for _ in range(max(1, repeats)):
        out = None  # the previous result is freed before the next call, not held beside it
        t0 = time.perf_counter()
        out = fn(X)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), [round(t, 4) for t in times]
