#!/usr/bin/env python3
"""TF-IDF featurization speed: xmc's vectorizer vs scikit-learn's TfidfVectorizer, same settings.

    .venv/bin/python bench/tfidf_bench.py [--datasets eurlex57k yso-finna-en reuters-21578] [--repeat 3]

Settings on both sides: word 1-2-grams, token pattern (?u)\\b\\w\\w+\\b, lowercase, min_df 2,
sublinear tf, smooth idf, l2 rows, float32. The training and test texts of each dataset are
written once to a text file (one document per line); each system reads that file, fits on the
training texts and transforms the test texts in its own process (scikit-learn runs in the peers'
venv, bench/.venv-peers, as a single process: it has no threaded vectorizer). Each system runs
--repeat times, in turns (xmc, sklearn, xmc, ...), each time in a fresh process; the run with the
median total seconds is reported (this 2-core machine's timings vary by ~10-20% run to run, which
matters on the small corpus). Printed: seconds for fit_transform and transform, features, nonzeros;
rows go to the DuckDB `benchmark` table (bench "tfidf"; train_s = fit_transform, predict_s =
transform; every repeat's totals in `extra`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEERS_PY = REPO / "bench" / ".venv-peers" / "bin" / "python"
sys.path.insert(0, str(REPO))
from xmc_core.memory import peak_rss_mb  # noqa: E402  (standard library only: the peers' environment runs it too)


def _write_texts(ds_dir: Path, out: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from xmc_core.data import load_dataset

    files = {s: out / f"{s}.txt" for s in ("train", "test")}
    if all(f.is_file() for f in files.values()):
        return {s: str(f) for s, f in files.items()}
    ds = load_dataset(ds_dir, splits=("train", "test"))
    if ds.train.texts is None:
        raise SystemExit(f"{ds_dir}: not a raw-text dataset")
    out.mkdir(parents=True, exist_ok=True)
    for split, f in files.items():
        texts = getattr(ds, split).texts
        tmp = f.with_suffix(".tmp")
        tmp.write_text("\n".join(t.replace("\n", " ").replace("\r", " ") for t in texts) + "\n", encoding="utf-8")
        tmp.replace(f)
    return {s: str(f) for s, f in files.items()}


def _read(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return fh.read().split("\n")[:-1]


def run_one(system: str, train: str, test: str) -> dict:
    """Fit + transform in this process; returns timings (called in a child process)."""
    tr, te = _read(train), _read(test)
    if system == "xmc":
        sys.path.insert(0, str(REPO))
        from xmc_core.tfidf import TfidfParams, TfidfVectorizer

        vec = TfidfVectorizer(TfidfParams(ngram_range=(1, 2), min_df=2, sublinear_tf=True))
    else:
        import numpy as np
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, dtype=np.float32)
    t0 = time.perf_counter()
    Xtr = vec.fit_transform(tr)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    Xte = vec.transform(te)
    transform_s = time.perf_counter() - t0
    return {"system": system, "fit_s": round(fit_s, 3), "transform_s": round(transform_s, 3),
            "n_features": int(Xtr.shape[1]), "nnz_train": int(Xtr.nnz), "nnz_test": int(Xte.nnz),
            "n_train": len(tr), "n_test": len(te),
            "peak_rss_mb": round(peak_rss_mb(), 1)}  # own VmHWM, not the parent's


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["reuters-21578", "eurlex57k", "yso-finna-en"])
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "tfidf"))
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    ap.add_argument("--repeat", type=int, default=3, help="fresh-process runs per system; the median is reported")
    ap.add_argument("--one", nargs=3, metavar=("SYSTEM", "TRAIN", "TEST"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return 0
    if not PEERS_PY.exists():
        raise SystemExit(f"{PEERS_PY} missing: run bash bench/setup_peers.sh first")
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    from record import Run

    run = Run("tfidf", settings=vars(args))
    run_id = run.run_id
    header = (f"{'dataset':<14} {'system':<8} {'fit_s':>8} {'transform_s':>11} {'speedup':>8} "
              f"{'features':>9} {'nnz_train':>10} {'rss_mb':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for ds in args.datasets:
        files = _write_texts(Path(args.data_root) / ds, Path(args.out) / ds)
        runs: dict[str, list[dict]] = {"xmc": [], "sklearn": []}
        for _ in range(max(1, args.repeat)):
            for system, py in (("xmc", sys.executable), ("sklearn", str(PEERS_PY))):
                proc = subprocess.run([py, __file__, "--one", system, files["train"], files["test"]],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{system} failed on {ds}:\n{proc.stderr[-3000:]}")
                runs[system].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        res = {}
        for system, rs in runs.items():
            rs = sorted(rs, key=lambda r: r["fit_s"] + r["transform_s"])
            res[system] = {**rs[(len(rs) - 1) // 2],
                           "repeat_total_s": [round(r["fit_s"] + r["transform_s"], 3) for r in runs[system]]}
        ref = res["sklearn"]
        for system, r in res.items():
            speed = (ref["fit_s"] + ref["transform_s"]) / max(r["fit_s"] + r["transform_s"], 1e-9)
            print(f"{ds:<14} {system:<8} {r['fit_s']:8.2f} {r['transform_s']:11.2f} {speed:7.2f}x "
                  f"{r['n_features']:9d} {r['nnz_train']:10d} {r['peak_rss_mb']:7.0f}", flush=True)
            rows.append({"bench": "tfidf", "dataset": ds, "system": system, "threads": 1,
                         "n_labels": None, "n_train": r["n_train"], "n_test": r["n_test"],
                         "train_s": r["fit_s"], "predict_s": r["transform_s"], "peak_rss_mb": r["peak_rss_mb"],
                         "p1": None, "p3": None, "p5": None,
                         "extra": {"speedup_vs_sklearn": round(speed, 3), **r}})
    run.finish(args.db, rows)
    print(f"\n{len(rows)} rows appended to {args.db} (table benchmark, run_id {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
