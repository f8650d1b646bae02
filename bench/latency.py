#!/usr/bin/env python3
"""Single-text prediction latency of a trained XLinearModel: p50 / p99 over one-row calls.

    .venv/bin/python bench/latency.py --ranker DIR --test-X X.tst.npz [--n 2000] [--threads 1] \
        [--pecos-model DIR] [--text-model MODEL --texts FILE]

With --pecos-model (a folder `bench/peer_run.py --peer pecos --model-dir` saved, trained on the
same features), PECOS answers the same rows in the same order, loaded predict-only as it
recommends for real-time use, in its own virtual environment (bench/.venv-peers), 1 thread:
side by side, one row each (system "pecos"). With --text-model and --texts, xmc's whole text
path is timed too (TF-IDF of one raw text, then the beam search; system "xmc-text").

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
    ap.add_argument("--pecos-model", default=None, help="a PECOS model folder trained on the same features")
    ap.add_argument("--text-model", default=None, help="an xmc model folder with a text featurizer")
    ap.add_argument("--texts", default=None, help="with --text-model: raw texts, one per line")
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
    ds = args.dataset or Path(args.test_X).parent.name
    results = {"xmc": np.array(times) * 1000.0}
    if args.pecos_model:
        results["pecos"] = _pecos_latencies(args, rows)
    if args.text_model:
        results["xmc-text"] = _text_latencies(args)
    out = []
    for system, t in results.items():
        p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
        print(f"{ds} {system:<9}: {model.n_labels} labels, {len(t)} single-row calls, threads {args.threads}: "
              f"p50 {p50:.3f} ms, p90 {p90:.3f} ms, p99 {p99:.3f} ms, mean {t.mean():.3f} ms")
        out.append({"bench": "latency", "dataset": ds, "system": system, "threads": args.threads,
                    "n_labels": int(model.n_labels), "n_test": len(t), "predict_s": p50 / 1000.0,
                    "extra": {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(t.mean()),
                              "levels": model.tree.level_sizes(), "beam_size": model.pred_params.beam_size,
                              "input": "text" if system == "xmc-text" else "features"}})
    if "pecos" in results:
        for q in (50, 99):
            ratio = np.percentile(results["xmc"], q) / np.percentile(results["pecos"], q)
            print(f"{ds}: xmc p{q} / PECOS p{q} = {ratio:.2f}")
    run_id = run.run_id
    run.finish(args.db, out)
    print(f"{len(out)} rows appended to {args.db} (table benchmark, run_id {run_id})")
    return 0


#: PECOS's side, run in the peers' environment: the same rows, one at a time, predict-only model
_PECOS_SCRIPT = r"""
import json, sys, time
import numpy as np, scipy.sparse as smat
from pecos.xmc.xlinear.model import XLinearModel
model = XLinearModel.load(sys.argv[1], is_predict_only=True)
X = smat.load_npz(sys.argv[2]).tocsr().astype(np.float32)
rows = json.loads(sys.argv[3])
times = []
for q, i in enumerate(rows):
    x = X[i]
    t0 = time.perf_counter()
    model.predict(x, only_topk=10, threads=1)
    if q >= 50:
        times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


def _pecos_latencies(args, rows):
    import json
    import subprocess

    import numpy as np

    py = REPO / "bench" / ".venv-peers" / "bin" / "python"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(py), "-c", _PECOS_SCRIPT, args.pecos_model, args.test_X, json.dumps(rows.tolist())],
                         capture_output=True, text=True, env=env, check=True)
    return np.array(json.loads(res.stdout.strip().splitlines()[-1])) * 1000.0


def _text_latencies(args):
    """xmc from raw text: each call is TF-IDF of one text plus the beam search (`model.predict`)."""
    import numpy as np

    from xmc_core.model import load_model

    model = load_model(args.text_model)
    with open(args.texts, encoding="utf-8") as fh:
        texts = [line.rstrip("\n") for _, line in zip(range(args.n + 50), fh)]
    times = []
    for q, text in enumerate(texts):
        t0 = time.perf_counter()
        model.predict([text], topk=10)
        if q >= 50:
            times.append(time.perf_counter() - t0)
    return np.array(times) * 1000.0


if __name__ == "__main__":
    sys.exit(main())
