#!/usr/bin/env python3
"""Label disentanglement sweep: max_copies = 1..6 against plain XR-Linear, same features.

    .venv/bin/python bench/disentangle_sweep.py [--datasets delicious bibtex synthetic-ambiguous]
        [--copies 1 2 3 4 5 6] [--rounds 1] [--merge max] [--threads 2] [--params '{...}']

Real datasets read bench/out/data/<ds>/{X,Y}.{trn,tst}.npz (written by bench/compare_peers.py);
`synthetic-ambiguous` is generated (xmc_core.synth, ambiguous_frac 0.3). Per dataset: plain
XR-Linear, then xr-linear-ld per max_copies (the same PIFA tree; train_s covers PIFA + tree +
first matcher + reassignment + rankers). Prints P@1/3/5, the final model's matcher recall on the
test split (share of true (doc, label) pairs with a cluster of the label in the beam), copies added
and train seconds; appends rows to the DuckDB `benchmark` table (bench="disentangle",
max_copies/rounds in `extra`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTH = "synthetic-ambiguous"


def load(ds: str, out: Path):
    import numpy as np
    import scipy.sparse as smat

    if ds == SYNTH:
        from xmc_core.synth import SynthParams, generate
        from xmc_core.sparse import l2_normalize_rows

        Xtr, Ytr, Xte, Yte = generate(SynthParams(n_labels=2000, n_train=20000, n_test=4000, n_features=20000,
                                                  ambiguous_frac=0.3, seed=0))
        return l2_normalize_rows(Xtr), Ytr, l2_normalize_rows(Xte), Yte
    d = out / "data" / ds
    if not (d / "X.trn.npz").is_file():
        raise SystemExit(f"{d}: no cached features; run bench/compare_peers.py --datasets {ds} first")
    m = [smat.load_npz(d / f"{k}.npz").tocsr().astype(np.float32) for k in ("X.trn", "Y.trn", "X.tst", "Y.tst")]
    return tuple(m)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["delicious", "bibtex", SYNTH])
    ap.add_argument("--copies", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--merge", default="max", choices=["max", "mean"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default="{}", help="extra XRLinearParams overrides (JSON), e.g. a disentangle section")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, str(REPO))
    from xmc_core.disentangle import matcher_recall
    from xmc_core.label_embedding import pifa
    from xmc_core.metrics import ranking_metrics
    from xmc_core.model import XRLinearParams, fit_rankers
    from xmc_core.results_db import append_benchmark
    from xmc_core.tree import build_tree

    run_id = f"disentangle-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    extra_params = json.loads(args.params)
    header = (f"{'dataset':<20} {'method':<13} {'copies':>6} {'P@1':>6} {'P@3':>6} {'P@5':>6} {'dP@1':>6} "
              f"{'recall':>7} {'added':>6} {'train_s':>8} {'x_plain':>7}")
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    for ds in args.datasets:
        Xtr, Ytr, Xte, Yte = load(ds, Path(args.out))
        names = [str(i) for i in range(Ytr.shape[1])]
        configs = ([] if args.no_baseline else [None]) + list(args.copies)
        base = None
        for copies in configs:
            ov = {"ranker": {"threads": args.threads}, "tree": {"threads": args.threads}, **extra_params}
            if copies is not None:
                ov["disentangle"] = {**extra_params.get("disentangle", {}), "max_copies": copies,
                                     "rounds": args.rounds, "merge": args.merge}
            else:
                ov.pop("disentangle", None)
            params = XRLinearParams().merged(ov)
            t0 = time.perf_counter()
            Z = pifa(Xtr, Ytr, params.pifa)
            tree = build_tree(Z, params.tree)
            model = fit_rankers(Xtr, Ytr, names, params, tree=tree)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            P = model.predict(Xte, topk=10)
            predict_s = time.perf_counter() - t0
            res = ranking_metrics(Yte, P)
            rec = 100.0 * matcher_recall(model.ranker, model.ranker.tree, Xte, Yte)
            added = model.info.get("disentangle", {}).get("copies_added", 0)
            p = [res["p"][k] for k in (1, 3, 5)]
            if copies is None:
                base = {"p1": p[0], "train_s": train_s}
            d1 = p[0] - base["p1"] if base else float("nan")
            ratio = train_s / base["train_s"] if base else float("nan")
            print(f"{ds:<20} {model.method:<13} {('-' if copies is None else copies):>6} {p[0]:6.2f} {p[1]:6.2f} "
                  f"{p[2]:6.2f} {d1:+6.2f} {rec:7.2f} {added:6d} {train_s:8.2f} {ratio:7.2f}", flush=True)
            rows.append({
                "run_id": run_id, "bench": "disentangle", "dataset": ds, "system": model.method,
                "threads": args.threads, "n_labels": int(Ytr.shape[1]), "n_train": int(Ytr.shape[0]),
                "n_test": int(Yte.shape[0]), "train_s": train_s, "predict_s": predict_s, "p1": p[0], "p3": p[1],
                "p5": p[2],
                "extra": {"max_copies": copies if copies is not None else 1,
                          "rounds": args.rounds if copies is not None else 0,
                          "merge": args.merge, "matcher_recall": rec, "copies_added": added,
                          "disentangle": model.info.get("disentangle"), "params": params.to_dict(),
                          "train_x_plain": ratio},
            })
    n = append_benchmark(args.db, rows)
    print(f"\n{n} rows appended to {args.db} (table benchmark, run_id {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
