#!/usr/bin/env python3
"""How XR-Linear's training time grows with documents, nonzeros and labels, on one real dataset.

    .venv/bin/python bench/growth.py [--dataset yso-finna-en] [--fractions 0.25 0.5 1]
        [--label-fractions 0.25 0.5 1] [--threads 2]

Reads bench/out/data/<dataset>/xmc/{X,Y}.trn.npz (written by bench/compare_peers.py). Two series, each
fit in a fresh process (bench/ours_run.py, so every point has the same fixed costs):
- documents: the first f of the training documents in a fixed random order (seed 0), all labels;
- labels: all documents, the f·L most frequent labels (a document keeps its labels among them).
Test: the dataset's test split (restricted to the same labels). Prints, per point, documents,
nnz(X), labels, positives, train seconds and its parts (label tree, rankers), seconds per million
nonzeros, and the log-log slope of train seconds against documents / nnz / labels between
consecutive points (1.0 = linear). Rows go to the DuckDB `benchmark` table (bench="growth").
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="yso-finna-en")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    ap.add_argument("--label-fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import numpy as np
    import scipy.sparse as smat

    sys.path.insert(0, str(REPO / "bench"))
    from record import Run

    run = Run("growth", settings=vars(args))

    d = Path(args.out) / "data" / args.dataset / "xmc"  # xmc's own features
    if not (d / "X.trn.npz").is_file():
        raise SystemExit(f"{d}: no cached features; run bench/compare_peers.py --datasets {args.dataset} first")
    Xtr = smat.load_npz(d / "X.trn.npz").tocsr()
    Ytr = smat.load_npz(d / "Y.trn.npz").tocsr()
    Yte = smat.load_npz(d / "Y.tst.npz").tocsr()
    N, L = Ytr.shape
    perm = np.random.default_rng(0).permutation(N)
    by_freq = np.argsort(-np.asarray((Ytr != 0).sum(axis=0)).ravel(), kind="stable")
    run_id = run.run_id
    points = [("documents", f) for f in sorted(args.fractions)] + [("labels", f) for f in sorted(args.label_fractions)]
    header = (f"{'series':<10} {'frac':>5} {'docs':>8} {'nnz_X':>11} {'labels':>7} {'positives':>10} "
              f"{'train_s':>8} {'tree_s':>7} {'rankers_s':>9} {'s/M nnz':>8} {'slope':>6} {'P@1':>6}")
    print(header)
    print("-" * len(header), flush=True)
    rows, prev = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for series, f in points:
            if series == "documents":
                keep = np.sort(perm[: max(1, int(round(f * N)))])
                X, Y, Yt, cols = Xtr[keep], Ytr[keep], Yte, L
            else:
                cols = max(1, int(round(f * L)))
                lab = np.sort(by_freq[:cols])
                X, Y, Yt = Xtr, Ytr[:, lab], Yte[:, lab]
            files = {}
            for name, M in (("X.trn", X), ("Y.trn", Y), ("Y.tst", Yt)):
                files[name] = tmp / f"{name}.npz"
                smat.save_npz(files[name], smat.csr_matrix(M), compressed=False)
            cmd = [sys.executable, str(REPO / "bench" / "ours_run.py"), "--train-X", str(files["X.trn"]),
                   "--train-Y", str(files["Y.trn"]), "--test-X", str(d / "X.tst.npz"), "--test-Y",
                   str(files["Y.tst"]), "--threads", str(args.threads)]
            # ours_run.py sets the BLAS/OpenMP thread variables itself
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            detail = r["train_detail_s"]
            tree_s = detail.get("label_tree", 0.0)
            rankers_s = detail.get("rankers", 0.0)
            nnz = int(X.nnz)
            size = {"documents": X.shape[0], "labels": cols}[series]
            slope = float("nan")
            if series in prev:
                p_size, p_s = prev[series]
                slope = math.log(r["train_s"] / p_s) / math.log(size / p_size)
            prev[series] = (size, r["train_s"])
            print(f"{series:<10} {f:5.2f} {X.shape[0]:8d} {nnz:11d} {cols:7d} {int(Y.nnz):10d} {r['train_s']:8.2f} "
                  f"{tree_s:7.2f} {rankers_s:9.2f} {r['train_s'] / nnz * 1e6:8.2f} {slope:6.2f} {r['p@1']:6.2f}",
                  flush=True)
            rows.append({
                "bench": "growth", "dataset": args.dataset, "system": "xmc",
                "threads": args.threads, "n_labels": cols, "n_train": int(X.shape[0]), "n_test": int(Yt.shape[0]),
                "train_s": r["train_s"], "predict_s": r["predict_s"], "peak_rss_mb": r["peak_rss_mb"],
                "p1": r["p@1"], "p3": r["p@3"], "p5": r["p@5"],
                "extra": {"series": series, "fraction": f, "nnz_X": nnz, "positives": int(Y.nnz),
                          "slope_vs_previous": None if math.isnan(slope) else slope, "train_detail_s": detail},
            })
    run.finish(args.db, rows)
    print(f"\n{len(rows)} rows appended to {args.db} (table benchmark, run_id {run_id}); slope: log-log slope of "
          f"train_s against the series' size (documents or labels) since the previous point")
    return 0


if __name__ == "__main__":
    sys.exit(main())
