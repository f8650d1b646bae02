#!/usr/bin/env python3
"""napkinXC's PLT probabilities for bench/label_sets.py (runs in bench/.venv-peers).

    bench/.venv-peers/bin/python bench/peer_proba.py --data DIR --out FILE.npz --threads 2 [--topk 20]

Reads DIR/X.trn.npz, Y.trn.npz, X.dev.npz, Y.dev.npz, X.tst.npz. As xmc in label_sets.py: a
napkinxc.models.PLT (defaults, seed 0) trained on trn gives the top-k `predict_proba` of dev (what
the thresholds are tuned on); one trained on trn + dev gives test's. Writes both as CSR arrays into
FILE.npz and prints one JSON line: train_s (the trn + dev model), sibling_train_s (the trn model),
predict_s (test), peak_rss_mb, version.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import scipy.sparse as smat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xmc_core.memory import peak_rss_mb  # noqa: E402  (standard library only; this process's own peak)


def to_csr(preds, n_labels: int) -> smat.csr_matrix:
    rows = np.repeat(np.arange(len(preds)), [len(p) for p in preds])
    cols = np.fromiter((l for p in preds for l, _ in p), np.int64, count=len(rows))
    vals = np.fromiter((v for p in preds for _, v in p), np.float32, count=len(rows))
    M = smat.csr_matrix((vals, (rows, cols)), shape=(len(preds), n_labels))
    M.sort_indices()
    return M


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--topk", type=int, default=20)
    args = ap.parse_args()
    from napkinxc.models import PLT

    load = lambda name: smat.load_npz(f"{args.data}/{name}.npz").tocsr()  # noqa: E731
    Xtr, Ytr, Xdv, Ydv, Xte = load("X.trn"), load("Y.trn"), load("X.dev"), load("Y.dev"), load("X.tst")
    Ytr.data[:] = 1.0
    Ydv.data[:] = 1.0

    def fit(X, Y):
        tmp = tempfile.mkdtemp(prefix="napkinxc_")
        model = PLT(tmp, threads=args.threads, seed=0)
        t0 = time.perf_counter()
        try:
            model.fit(X, Y)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return model, tmp, time.perf_counter() - t0

    sibling, tmp, sibling_train_s = fit(Xtr, Ytr)
    try:
        Pdv = to_csr(sibling.predict_proba(Xdv, top_k=args.topk), Ytr.shape[1])
    finally:
        del sibling
        shutil.rmtree(tmp, ignore_errors=True)
    model, tmp, train_s = fit(smat.vstack([Xtr, Xdv], format="csr"), smat.vstack([Ytr, Ydv], format="csr"))
    try:
        t0 = time.perf_counter()
        Pte = to_csr(model.predict_proba(Xte, top_k=args.topk), Ytr.shape[1])
        predict_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    np.savez(args.out, dev_data=Pdv.data, dev_indices=Pdv.indices, dev_indptr=Pdv.indptr,
             tst_data=Pte.data, tst_indices=Pte.indices, tst_indptr=Pte.indptr, shape=np.array(Ytr.shape))
    print(json.dumps({"train_s": train_s, "sibling_train_s": sibling_train_s, "predict_s": predict_s,
                      "version": version("napkinxc"), "peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
