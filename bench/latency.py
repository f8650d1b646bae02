#!/usr/bin/env python3
"""Single-text prediction latency of a trained XLinearModel: p50 / p99 over one-row calls.

    .venv/bin/python bench/latency.py --ranker DIR --test-X X.tst.npz [--n 2000] [--threads 1]

The model folder comes from `bench/ours_run.py --save-ranker DIR` (or any XLinearModel.save).
Each call predicts one row (beam search over all levels, only_topk 10), as a service answering
one request at a time would; the first 50 calls warm up and are not counted. Prints the
percentiles in milliseconds and appends one row to the DuckDB `benchmark` table
(bench "latency", predict_s = p50 seconds, p99 and the rest in `extra`), exported to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranker", required=True)
    ap.add_argument("--test-X", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default=None, help="name recorded in DuckDB (default: the test file's folder)")
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(REPO))
    import numpy as np
    import scipy.sparse as smat

    sys.path.insert(0, str(REPO / "bench"))
    from record import Run

    from xmc_core.xlinear import XLinearModel

    run = Run("latency", settings=vars(args))

    model = XLinearModel.load(args.ranker)
    model.pred_params.threads = args.threads
    X = smat.load_npz(args.test_X).tocsr().astype(np.float32)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, X.shape[0], size=args.n + 50)
    times = []
    for q, i in enumerate(rows):
        x = X[i]
        t0 = time.perf_counter()
        model.predict(x, only_topk=10)
        if q >= 50:
            times.append(time.perf_counter() - t0)
    t = np.array(times) * 1000.0
    p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
    ds = args.dataset or Path(args.test_X).parent.name
    print(f"{ds}: {model.n_labels} labels, {len(t)} single-row calls, threads {args.threads}: "
          f"p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms, mean {t.mean():.2f} ms")
    run_id = run.run_id
    run.finish(args.db, [{"bench": "latency", "dataset": ds, "system": "xmc",
                                "threads": args.threads, "n_labels": int(model.n_labels), "n_test": len(t),
                                "predict_s": p50 / 1000.0,
                                "extra": {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(t.mean()),
                                          "levels": model.tree.level_sizes(),
                                          "beam_size": model.pred_params.beam_size}}])
    print(f"1 row appended to {args.db} (table benchmark, run_id {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
