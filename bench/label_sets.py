#!/usr/bin/env python3
"""Label sets and probabilities: xmc XR-Linear (calibrated) against napkinXC's PLT, side by side.

    .venv/bin/python bench/label_sets.py [--datasets eurlex57k yso-finna-en reuters-21578] [--threads 2]

Protocol, the same for every system:
- features: xmc's TF-IDF (word 1-2-grams, sublinear tf, min_df 2, l2 rows) fitted on the training
  documents, written once as .npz (bench/out/data/<dataset>-sets/);
- held-out documents: the dataset's dev split (eurlex57k); without one, a seeded 10% slice of train
  (seed 0) is held out and every system trains on the other 90%;
- xmc: `train_xr_linear` (defaults), `calibrate` on the held-out documents (isotonic by frequency
  group; thresholds for micro-F1 and per-label for macro-F1), sets on test;
- napkinXC: `PLT` (defaults, seed 0) in bench/.venv-peers; its `predict_proba` top-20 are taken as
  probabilities (calibration method "none"); the same threshold search on the same held-out
  documents gives its micro and macro policies. Its Python package (0.7.x) has no online F-measure
  optimisation (`ofo` is a command of the C++ binary only), so there is none here. A third row
  ("napkinxc+isotonic") puts our isotonic map on its probabilities.
Metrics on test: micro-F1 of the micro policy, macro-F1 of the macro policy over labels present in
test and over all labels, ECE / Brier of the probabilities (top-20 pairs, 15 bins) and of the raw
scores, per EURLEX57K frequency bucket (frequent >= 50 training documents, few 1-49, zero 0).
Prints a table, appends rows to DuckDB `benchmark` and writes bench/results/<run_id>.csv/.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as smat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
PEERS_PY = REPO / "bench" / ".venv-peers" / "bin" / "python"
TOPK = 20


def prepare(ds_dir: Path, out: Path, seed: int = 0) -> dict:
    """X/Y .npz of trn, dev (the dev split, or a seeded 10% of train) and tst (cached)."""
    from xmc_core.calibration import holdout_split
    from xmc_core.data import load_dataset
    from xmc_core.sparse import l2_normalize_rows
    from xmc_core.tfidf import TfidfParams, TfidfVectorizer

    meta_file = out / "meta.json"
    if meta_file.is_file():
        return json.loads(meta_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(ds_dir, splits=("train", "dev", "test"))
    tr = ds.train
    if ds.dev is not None:
        dev_note = "dev split"
        parts = {"trn": (tr.texts, tr.X, tr.Y), "dev": (ds.dev.texts, ds.dev.X, ds.dev.Y)}
    else:
        held, rest = holdout_split(tr.n, 0.1, seed)  # the slice `train --calibrate` holds out
        dev_note = f"no dev split: 10% of train held out (seed {seed}); systems train on the other 90%"

        def take(rows):
            return ([tr.texts[i] for i in rows] if tr.texts is not None else None,
                    tr.X[rows] if tr.X is not None else None, tr.Y[rows])
        parts = {"trn": take(rest), "dev": take(held)}
    parts["tst"] = (ds.test.texts, ds.test.X, ds.test.Y)
    if tr.texts is not None:
        vec = TfidfVectorizer(TfidfParams(ngram_range=(1, 2), sublinear_tf=True, min_df=2))
        X = {"trn": vec.fit_transform(parts["trn"][0])}
        X.update({k: vec.transform(parts[k][0]) for k in ("dev", "tst")})
    else:
        X = {k: l2_normalize_rows(parts[k][1]) for k in parts}
    for k in parts:
        smat.save_npz(out / f"X.{k}.npz", smat.csr_matrix(X[k], dtype=np.float32), compressed=False)
        smat.save_npz(out / f"Y.{k}.npz", smat.csr_matrix(parts[k][2], dtype=np.float32), compressed=False)
    meta = {"n_trn": parts["trn"][2].shape[0], "n_dev": parts["dev"][2].shape[0], "n_tst": parts["tst"][2].shape[0],
            "n_labels": ds.n_labels, "n_features": int(X["trn"].shape[1]), "heldout": dev_note}
    meta_file.write_text(json.dumps(meta))
    return meta


def load(out: Path, name: str) -> smat.csr_matrix:
    return smat.load_npz(out / f"{name}.npz").tocsr()


def score(system: str, dataset: str, meta: dict, P_tst, Y_tst, cal, counts, extra: dict) -> dict:
    """One benchmark row: ranking P@k, both policies' sets, calibration of the probabilities."""
    from xmc_core.metrics import MetricParams, calibration_metrics, ranking_metrics, set_report

    extra = dict(extra)
    row = {k: extra.pop(k, None) for k in ("threads", "train_s", "predict_s", "peak_rss_mb")}

    Pp = cal.proba(P_tst)
    micro = set_report(Y_tst, cal.decide(Pp, "micro"), counts)
    macro = set_report(Y_tst, cal.decide(Pp, "macro"), counts)
    raw = P_tst.copy()
    raw.data = np.clip(raw.data, 0.0, 1.0)
    cm, cm_raw = calibration_metrics(Y_tst, Pp), calibration_metrics(Y_tst, raw)
    rk = ranking_metrics(Y_tst, P_tst, MetricParams(ks=(1, 3, 5)))["p"]
    r2 = lambda v: round(float(v), 2)  # noqa: E731
    ex = {"micro_f1": r2(micro["micro_f1"]), "micro_precision": r2(micro["micro_precision"]),
          "micro_recall": r2(micro["micro_recall"]), "micro_policy_macro_f1": r2(micro["macro_f1"]),
          "macro_f1": r2(macro["macro_f1"]), "macro_f1_all": r2(macro["macro_f1_all"]),
          "macro_policy_micro_f1": r2(macro["micro_f1"]), "set_size_micro": r2(micro["set_size"]),
          "ece": r2(cm["ece"]), "ece_raw": r2(cm_raw["ece"]), "brier": round(cm["brier"], 4),
          "brier_raw": round(cm_raw["brier"], 4), "threshold_micro": round(float(cal.threshold), 4),
          **{f"{b}_{m}": r2(macro[f"{b}_{m}"] if m == "macro_f1" else micro[f"{b}_{m}"])
             for b in ("frequent", "few", "zero") for m in ("micro_f1", "macro_f1")},
          **{f"{b}_labels": int(micro[f"{b}_labels"]) for b in ("frequent", "few", "zero")},
          "heldout": meta["heldout"], **extra}
    return {"dataset": dataset, "system": system, "n_labels": meta["n_labels"], "n_train": meta["n_trn"],
            "n_test": meta["n_tst"], **row, "p1": r2(rk[1]), "p3": r2(rk[3]), "p5": r2(rk[5]), "extra": ex}


def run_dataset(name: str, data_root: Path, threads: int) -> list[dict]:
    from xmc_core.calibration import CalibrationParams, fit_calibration
    from xmc_core.model import XRLinearParams, train_xr_linear

    out = REPO / "bench" / "out" / "data" / f"{name}-sets"
    t0 = time.perf_counter()
    meta = prepare(data_root / name, out)
    print(f"[{name}] features ready in {time.perf_counter() - t0:.1f}s: {meta}", file=sys.stderr, flush=True)
    Xtr, Ytr, Xdv, Ydv, Xte, Yte = (load(out, k) for k in ("X.trn", "Y.trn", "X.dev", "Y.dev", "X.tst", "Y.tst"))
    counts = np.diff(smat.csc_matrix(Ytr).indptr)
    names = [str(j) for j in range(Ytr.shape[1])]
    rows = []

    # xmc
    params = XRLinearParams().merged({"ranker": {"threads": threads}, "tree": {"threads": threads}})
    t0 = time.perf_counter()
    model = train_xr_linear(Ytr, names, params, X=Xtr)
    train_s = time.perf_counter() - t0
    model.set_label_counts(Ytr)
    t0 = time.perf_counter()
    cal = model.calibrate(Xdv, Ydv, names, CalibrationParams(topk=TOPK))
    calibrate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    P = model.predict(Xte, topk=TOPK)
    predict_s = time.perf_counter() - t0
    rows.append(score("xmc xr-linear", name, meta, P, Yte, cal, counts, {
        # no peak_rss_mb: training resets this process's high-water mark per stage (`memory.StageMemory`),
        # so ru_maxrss here is not the run's peak; bench/compare_peers.py measures memory
        "threads": threads, "train_s": round(train_s, 2), "predict_s": round(predict_s, 2),
        "calibrate_s": round(calibrate_s, 2), "calibration": "isotonic by frequency group"}))
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    del model

    # napkinXC
    npz = out / "napkinxc_proba.npz"
    proc = subprocess.run([str(PEERS_PY), str(REPO / "bench" / "peer_proba.py"), "--data", str(out), "--out", str(npz),
                           "--threads", str(threads), "--topk", str(TOPK)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"napkinxc failed on {name}:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(npz) as z:
        shape = tuple(z["shape"])
        Pdv = smat.csr_matrix((z["dev_data"], z["dev_indices"], z["dev_indptr"]), shape=(Xdv.shape[0], shape[1]))
        Pte = smat.csr_matrix((z["tst_data"], z["tst_indices"], z["tst_indptr"]), shape=(Xte.shape[0], shape[1]))
    for method, system in (("none", "napkinxc plt"), ("isotonic", "napkinxc plt+isotonic")):
        cal = fit_calibration(Pdv, Ydv, counts, CalibrationParams(method=method, topk=TOPK))
        rows.append(score(system, name, meta, Pte, Yte, cal, counts, {
            "threads": threads, "train_s": round(res["train_s"], 2), "predict_s": round(res["predict_s"], 2),
            "peak_rss_mb": round(res["peak_rss_mb"], 1), "version": res["version"],
            "calibration": "its predict_proba (thresholds only)" if method == "none" else "our isotonic on its probabilities"}))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    from record import Run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["eurlex57k", "yso-finna-en", "reuters-21578"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    args = ap.parse_args(argv)
    run = Run("sets", settings=vars(args))
    rows = []
    for name in args.datasets:
        rows += run_dataset(name, Path(args.data_root), args.threads)
    cols = ("micro_f1", "macro_f1", "macro_f1_all", "ece", "ece_raw", "few_macro_f1", "frequent_macro_f1")
    print(f"{'dataset':<14} {'system':<24} {'P@1':>6} " + " ".join(f"{c:>17}" for c in cols) + f" {'train s':>8}")
    for r in rows:
        print(f"{r['dataset']:<14} {r['system']:<24} {r['p1']:>6.2f} "
              + " ".join(f"{r['extra'][c]:>17.2f}" for c in cols) + f" {r['train_s']:>8.1f}")
    csv, md = run.finish(args.db, rows, notes="Label sets: micro policy (one threshold) and macro policy (per-label "
                                              "thresholds) tuned on the held-out documents; see bench/label_sets.py.")
    print(f"run {run.run_id}: {csv.relative_to(REPO)}, {md.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
