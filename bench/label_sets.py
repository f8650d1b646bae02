#!/usr/bin/env python3
"""Label sets and probabilities: xmc XR-Linear (calibrated) against napkinXC's PLT, side by side.

    .venv/bin/python bench/label_sets.py [--datasets eurlex57k yso-finna-en reuters-21578] [--threads 2]
    .venv/bin/python bench/label_sets.py --choose-c 1 2 3 4 6 8 --datasets eurlex57k

Protocol, the same for every system:
- features: xmc's TF-IDF (word 1-2-grams, sublinear tf, min_df 2, l2 rows) fitted on the training
  documents, written once as .npz (bench/out/data/<dataset>-sets/);
- held-out documents: the dataset's dev split (eurlex57k); without one, a seeded 10% slice of train
  (seed 0);
- calibration and final model (`xmc train --calibrate --refit`): a sibling trained on the training
  documents alone scores the held-out ones, and the calibration is fitted on those scores; the
  final model, whose test predictions are scored, is trained on training + held-out documents and
  keeps that calibration. (Calibrating on documents the scoring model was trained on would make
  the probabilities over-confident; retraining on them after calibration does not.)
- xmc: `train_xr_linear` (defaults) with the rankers' C (Cp = Cn) chosen per dataset from `--c-grid`
  (1 and 3; 3 is preset "sets") without reading test: a sibling per C, the held-out documents split
  in halves, each half's calibration deciding the other's sets, best mean micro-F1 kept (see
  `--choose-c`); then `calibrate` on all held-out documents (isotonic by frequency group;
  thresholds for micro-F1 and per-label for macro-F1), sets on test. sibling_train_s sums the
  siblings;
- napkinXC: `PLT` (its defaults: logistic loss, liblinear C 10; seed 0) in bench/.venv-peers; its
  `predict_proba` top-20 are taken as probabilities (calibration method "none"); the same threshold
  search on the same held-out documents gives its micro and macro policies. Its Python package
  (0.7.x) has no online F-measure optimisation (`ofo` is a command of the C++ binary only), so
  there is none here. A third row ("napkinxc+isotonic") puts our isotonic map on its probabilities.
Metrics on test: micro-F1 of the micro policy, macro-F1 of the macro policy over labels present in
test and over all labels, ECE / Brier of the probabilities (top-20 pairs, 15 bins) and of the raw
scores, per EURLEX57K frequency bucket (frequent >= 50 training documents, few 1-49, zero 0).
train_s is the final model's training.

`--choose-c C...` records that held-out choice for a longer grid of C (Cp = Cn = C), as a run of its
own: per C, a model trained on the training documents scores the held-out ones; they are split in
two halves (seed 0), each half's calibration decides the other half's sets, and the two halves'
micro-F1 and macro-F1 are averaged, beside held-out P@k and training seconds. No test document is
read.

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
        dev_note = f"no dev split: 10% of train held out (seed {seed})"

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
          "heldout": meta["heldout"], "n_sibling_train": meta["n_trn"], "n_heldout": meta["n_dev"], **extra}
    # the scored model is the final one, trained on the training and the held-out documents
    return {"dataset": dataset, "system": system, "n_labels": meta["n_labels"], "n_train": meta["n_trn"] + meta["n_dev"],
            "n_test": meta["n_tst"], **row, "p1": r2(rk[1]), "p3": r2(rk[3]), "p5": r2(rk[5]), "extra": ex}


def heldout_halves_f1(P: smat.csr_matrix, Y: smat.csr_matrix, counts: np.ndarray) -> tuple[float, float, float]:
    """(micro-F1 of the micro policy, macro-F1 of the macro policy over all labels and over the
    labels present) of held-out predictions P, two-fold: each half's calibration decides the other
    half's sets (halves seed 0), the two halves averaged. Percent."""
    from xmc_core.calibration import CalibrationParams, fit_calibration
    from xmc_core.metrics import set_report

    perm = np.random.default_rng(0).permutation(P.shape[0])
    halves = (perm[: len(perm) // 2], perm[len(perm) // 2:])
    f1 = []
    for fit_on, score_on in (halves, halves[::-1]):
        cal = fit_calibration(P[fit_on], Y[fit_on], counts, CalibrationParams(topk=TOPK))
        Pp = cal.proba(P[score_on])
        mi = set_report(Y[score_on], cal.decide(Pp, "micro"), counts)
        ma = set_report(Y[score_on], cal.decide(Pp, "macro"), counts)
        f1.append((mi["micro_f1"], ma["macro_f1_all"], ma["macro_f1"]))
    return tuple(float(v) for v in np.mean(f1, axis=0))


def sibling_at_c(base: dict, c: float, Xtr, Ytr, Xdv, Ydv, counts: np.ndarray, names: list[str]) -> dict:
    """A sibling with the overrides `base` and the rankers' C (Cp = Cn = c), trained on the training
    documents: its held-out top-TOPK scores `P_dev`, their `heldout_halves_f1`, its `params` and
    `train_s` (seconds)."""
    from xmc_core.model import XRLinearParams, train_xr_linear
    from xmc_core.presets import merge_overrides

    params = XRLinearParams().merged(merge_overrides(base, {"ranker": {"Cp": c, "Cn": c}}))
    t0 = time.perf_counter()
    sibling = train_xr_linear(Ytr, names, params, X=Xtr)
    train_s = time.perf_counter() - t0
    P_dev = sibling.predict(Xdv, topk=TOPK)
    return {"P_dev": P_dev, "f1": heldout_halves_f1(P_dev, Ydv, counts), "params": params, "train_s": train_s}


def run_dataset(name: str, data_root: Path, threads: int, preset: str, c_grid: list[float]) -> list[dict]:
    from xmc_core.calibration import CalibrationParams, fit_calibration
    from xmc_core.model import train_xr_linear
    from xmc_core.presets import preset_overrides

    out = REPO / "bench" / "out" / "data" / f"{name}-sets"
    t0 = time.perf_counter()
    meta = prepare(data_root / name, out)
    print(f"[{name}] features ready in {time.perf_counter() - t0:.1f}s: {meta}", file=sys.stderr, flush=True)
    Xtr, Ytr, Xdv, Ydv, Xte, Yte = (load(out, k) for k in ("X.trn", "Y.trn", "X.dev", "Y.dev", "X.tst", "Y.tst"))
    counts = np.diff(smat.csc_matrix(Ytr).indptr)
    names = [str(j) for j in range(Ytr.shape[1])]
    rows = []

    # xmc: per C of the grid, a sibling trained on the training documents scores the held-out ones;
    # the C whose calibrated sets do best on the held-out halves (micro-F1) is kept, its sibling's
    # scores on all held-out documents are calibrated, and the final model trains on both
    base = preset_overrides(preset, {"ranker": {"threads": threads}, "tree": {"threads": threads}})
    by_c = {}
    for c in c_grid:
        by_c[c] = sibling_at_c(base, c, Xtr, Ytr, Xdv, Ydv, counts, names)
        print(f"[{name}] C={c:g}: held-out halves micro/macro-F1 {by_c[c]['f1']}", file=sys.stderr, flush=True)
    best = max(c_grid, key=lambda c: (round(by_c[c]["f1"][0], 2), -c))  # ties: the smaller C
    params = by_c[best]["params"]
    cal = fit_calibration(by_c[best]["P_dev"], Ydv, counts, CalibrationParams(topk=TOPK), info={"source": "held-out"})
    heldout_by_c = {f"{c:g}": [round(v, 2) for v in by_c[c]["f1"]] for c in c_grid}
    sibling_s = sum(by_c[c]["train_s"] for c in c_grid)
    del by_c
    t0 = time.perf_counter()
    model = train_xr_linear(smat.vstack([Ytr, Ydv], format="csr"), names, params,
                            X=smat.vstack([Xtr, Xdv], format="csr"))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    P = model.predict(Xte, topk=TOPK)
    predict_s = time.perf_counter() - t0
    rows.append(score("xmc xr-linear", name, meta, P, Yte, cal, counts, {
        # no peak_rss_mb: training resets this process's high-water mark per stage (`memory.StageMemory`),
        # so ru_maxrss here is not the run's peak; bench/compare_peers.py measures memory
        "threads": threads, "train_s": round(train_s, 2), "predict_s": round(predict_s, 2),
        "sibling_train_s": round(sibling_s, 2), "preset": preset, "ranker_C": best,
        "heldout_micro_macro_all_macro_f1_by_C": heldout_by_c,
        "calibration": "isotonic by frequency group"}))
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    del model

    # napkinXC, the same protocol
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
            "sibling_train_s": round(res["sibling_train_s"], 2),
            "peak_rss_mb": round(res["peak_rss_mb"], 1), "version": res["version"],
            "calibration": "its predict_proba (thresholds only)" if method == "none" else "our isotonic on its probabilities"}))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def choose_c(name: str, data_root: Path, threads: int, cs: list[float]) -> list[dict]:
    """Per C (Cp = Cn = C): micro-/macro-F1 of calibrated sets on the held-out documents, two-fold
    over their halves (no test document is read)."""
    from xmc_core.metrics import MetricParams, ranking_metrics

    out = REPO / "bench" / "out" / "data" / f"{name}-sets"
    meta = prepare(data_root / name, out)
    Xtr, Ytr, Xdv, Ydv = (load(out, k) for k in ("X.trn", "Y.trn", "X.dev", "Y.dev"))
    counts = np.diff(smat.csc_matrix(Ytr).indptr)
    names = [str(j) for j in range(Ytr.shape[1])]
    rows = []
    base = {"ranker": {"threads": threads}, "tree": {"threads": threads}}
    for c in cs:
        sib = sibling_at_c(base, c, Xtr, Ytr, Xdv, Ydv, counts, names)
        f1, train_s = sib["f1"], sib["train_s"]
        rk = ranking_metrics(Ydv, sib["P_dev"], MetricParams(ks=(1, 3, 5)))["p"]
        r2 = lambda v: round(float(v), 2)  # noqa: E731
        rows.append({"dataset": name, "system": f"xmc xr-linear C={c:g} (held-out halves)", "n_labels": meta["n_labels"],
                     "n_train": meta["n_trn"], "n_test": meta["n_dev"], "threads": threads, "train_s": round(train_s, 2),
                     "p1": r2(rk[1]), "p3": r2(rk[3]), "p5": r2(rk[5]),
                     "extra": {"C": c, "heldout_micro_f1": r2(f1[0]), "heldout_macro_f1_all": r2(f1[1]),
                               "heldout_macro_f1": r2(f1[2]), "heldout": meta["heldout"],
                               "scored_on": "held-out documents (not test), two-fold over halves"}})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    from record import Run, shown

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["eurlex57k", "yso-finna-en", "reuters-21578"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="default", help="xmc's XR-Linear preset (xmc_core/presets.py); default: default")
    ap.add_argument("--c-grid", type=float, nargs="+", default=[1.0, 3.0], metavar="C",
                    help="ranker C values (Cp = Cn) tried per dataset; the one whose calibrated sets do best on the "
                         "held-out halves is kept (default: 1 3)")
    ap.add_argument("--choose-c", type=float, nargs="+", default=None, metavar="C",
                    help="instead of the comparison: score these ranker C values (Cp = Cn) on the held-out "
                         "documents' halves")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    args = ap.parse_args(argv)
    if args.choose_c:
        run = Run("sets-c", settings=vars(args))
        rows = []
        for name in args.datasets:
            rows += choose_c(name, Path(args.data_root), args.threads, args.choose_c)
        cols = ("heldout_micro_f1", "heldout_macro_f1_all", "heldout_macro_f1")
        print(f"{'dataset':<14} {'C':>5} {'P@1':>6} " + " ".join(f"{c:>20}" for c in cols) + f" {'train s':>8}")
        for r in rows:
            print(f"{r['dataset']:<14} {r['extra']['C']:>5g} {r['p1']:>6.2f} "
                  + " ".join(f"{r['extra'][c]:>20.2f}" for c in cols) + f" {r['train_s']:>8.1f}")
        notes = ("Ranker C (Cp = Cn) chosen on held-out documents only: calibrated on one half, sets scored on the "
                 "other, both ways; see bench/label_sets.py --choose-c.")
    else:
        run = Run("sets", settings=vars(args))
        rows = []
        for name in args.datasets:
            rows += run_dataset(name, Path(args.data_root), args.threads, args.preset, args.c_grid)
        cols = ("micro_f1", "macro_f1", "macro_f1_all", "ece", "ece_raw", "few_macro_f1", "frequent_macro_f1")
        print(f"{'dataset':<14} {'system':<24} {'P@1':>6} " + " ".join(f"{c:>17}" for c in cols) + f" {'train s':>8}")
        for r in rows:
            print(f"{r['dataset']:<14} {r['system']:<24} {r['p1']:>6.2f} "
                  + " ".join(f"{r['extra'][c]:>17.2f}" for c in cols) + f" {r['train_s']:>8.1f}")
        notes = ("Label sets: micro policy (one threshold) and macro policy (per-label thresholds) tuned on the "
                 "held-out documents by a sibling trained without them; the final model is trained on training + "
                 "held-out documents; see bench/label_sets.py.")
    csv, md = run.finish(args.db, rows, notes=notes)
    print(f"run {run.run_id}: {shown(csv)}, {shown(md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
