#!/usr/bin/env python3
"""XLGen on Reuters-21578: base, BCL and MCG against XR-Linear, full labels and the PU setting.

    .venv/bin/python bench/xlgen_reuters.py [--data ../shared/data/reuters-21578] [--variants base bcl mcg]
        [--settings full pu] [--no-xr-linear] [--threads 2] [--params '{"steps": 600}'] [--pu-drop 0.5]
        [--db data/xmc.duckdb] [--run-id ID] [--max-rows N] [--test-rows N] [--save DIR]
    .venv/bin/python bench/xlgen_reuters.py --table-only --run-id ID      # print a stored run again

Per setting ("full": the training labels as given; "pu": `pu_drop` of each training document's
labels dropped, seeded): the label clusters are computed once (with the setting's labels) and
shared by bcl and mcg (their train_s includes the clustering seconds); XR-Linear is trained on the
same labels with its default settings and turned into sets by the "micro" policy of a calibration
fitted on a tenth of train held out from a sibling model (`model.holdout_calibration`; no oracle
top-|y_i|, which no user has at prediction time). Test labels are never dropped. Every model is scored on the whole test split: micro/macro F1 (macro over labels
present in the test split), micro P/R, P@1/3/5, and the tail buckets of labels seen 0 and 1 times in
(the setting's) training labels.

Rows go to the DuckDB `evaluation` table after each model (model `xlgen-<variant>` or `xr-linear`,
suffix `-pu` in the PU setting; set metrics with k = 0; setting, pu_drop, train_s (wall), train_cpu_s
(process CPU seconds: the honest cost on a shared machine), threads and the settings in `params`). `--run-id` appends to an earlier run (e.g. the PU half run later); the table
printed at the end is read back from DuckDB for the whole run id.
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
SET_KEYS = ("micro_precision", "micro_recall", "micro_f1", "macro_f1")
TAIL_KEYS = tuple(f"tail{b}_{m}" for b in (0, 1) for m in ("labels", "support", "recall", "precision", "f1"))


def metric_rows(ranking: dict, sets: dict) -> list[dict]:
    """Rows for `append_evaluation`: ranking metrics by k, set and tail metrics with k = 0 (None
    values, e.g. the recall of an empty bucket, are left out)."""
    rows = [{"metric": m, "k": int(k), "value": float(v)} for m, by_k in ranking.items() for k, v in by_k.items()]
    rows += [{"metric": k, "k": 0, "value": float(v)} for k, v in sets.items() if v is not None]
    return rows


def print_table(db, run_id: str) -> None:
    from xmc_core.results_db import read_evaluation

    df = read_evaluation(db, run_id)
    if df.is_empty():
        print("no rows")
        return
    params = {r["model"]: json.loads(r["params"]) for r in df.select("model", "params").unique("model").iter_rows(named=True)}
    kinds = ["xr-linear", "xlgen-base", "xlgen-bcl", "xlgen-mcg"]

    def sort_key(model: str):  # full before pu; XR-Linear, then base, bcl, mcg
        kind = model[:-3] if model.endswith("-pu") else model
        return (params[model].get("setting") == "pu", kinds.index(kind) if kind in kinds else len(kinds), model)

    order = sorted(params, key=sort_key)
    cell = {(r["model"], r["metric"], r["k"]): r["value"] for r in df.iter_rows(named=True)}
    cols = [("micro_f1", 0, "miF1"), ("macro_f1", 0, "maF1"), ("micro_precision", 0, "miP"), ("micro_recall", 0, "miR"),
            ("p", 1, "P@1"), ("p", 3, "P@3"), ("p", 5, "P@5"), ("tail0_recall", 0, "t0 R"), ("tail0_support", 0, "t0 n"),
            ("tail1_recall", 0, "t1 R"), ("tail1_f1", 0, "t1 F1"), ("tail1_support", 0, "t1 n")]
    header = (f"{'model':<16} {'setting':<7} " + " ".join(f"{c[2]:>6}" for c in cols)
              + f" {'train_s':>8} {'cpu_s':>7} {'thr':>3}")
    print(header)
    print("-" * len(header))
    for model in order:
        p = params[model]
        vals = []
        for metric, k, _ in cols:
            v = cell.get((model, metric, k))
            vals.append(f"{'-':>6}" if v is None else (f"{int(v):>6d}" if metric.endswith(("_support", "_labels")) else f"{v:6.2f}"))
        print(f"{model:<16} {p.get('setting', ''):<7} " + " ".join(vals)
              + f" {p.get('train_s', float('nan')):8.0f} {p.get('train_cpu_s', float('nan')):7.0f} {p.get('threads', ''):>3}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "reuters-21578"))
    ap.add_argument("--variants", nargs="*", default=["base", "bcl", "mcg"], choices=["base", "bcl", "mcg"])
    ap.add_argument("--settings", nargs="+", default=["full", "pu"], choices=["full", "pu"])
    ap.add_argument("--no-xr-linear", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default="{}", help="XLGenParams overrides (JSON) for every variant")
    ap.add_argument("--pu-drop", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    ap.add_argument("--run-id", default=None, help="append to this run id (default: a new one)")
    ap.add_argument("--max-rows", type=int, default=None, help="first N documents of each split (quick runs)")
    ap.add_argument("--test-rows", type=int, default=None, help="score only the first N test documents")
    ap.add_argument("--save", default=None, help="save the XLGen model folders under this folder")
    ap.add_argument("--table-only", action="store_true", help="only print the table of --run-id from --db")
    args = ap.parse_args(argv)
    if args.table_only:
        if not args.run_id:
            ap.error("--table-only needs --run-id")
        sys.path.insert(0, str(REPO))
        print_table(args.db, args.run_id)
        return 0
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from xmc_core.data import load_dataset
    from xmc_core.metrics import MetricParams, ranking_metrics, set_metrics, tail_bucket_metrics
    from xmc_core.model import XRLinearParams, holdout_calibration, train_xr_linear
    from xmc_core.results_db import append_evaluation
    from xmc_core.xlgen import XLGenParams, cluster_labels, evaluate_xlgen, pu_drop_labels, train_xlgen

    torch.set_num_threads(args.threads)
    run_id = args.run_id or f"xlgen-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    overrides = json.loads(args.params)
    ds = load_dataset(args.data, max_rows=args.max_rows)
    dataset = Path(args.data).name
    test_texts, Yte = ds.test.texts, ds.test.Y
    if args.test_rows:
        test_texts, Yte = test_texts[:args.test_rows], Yte[:args.test_rows]
    mp = MetricParams(ks=(1, 3, 5, 10))
    print(f"run {run_id}: {dataset}, {ds.train.n} train / {len(test_texts)} test docs, {ds.n_labels} labels, "
          f"{args.threads} threads", flush=True)

    def record(model_name: str, setting: str, ranking: dict, sets: dict, extra: dict) -> None:
        rows = metric_rows(ranking, sets)
        append_evaluation(args.db, run_id, dataset, model_name, "test", rows,
                          {"setting": setting, "pu_drop": args.pu_drop if setting == "pu" else 0.0,
                           "threads": args.threads, **extra})
        print(f"  {model_name:<16} miF1 {sets['micro_f1']:6.2f}  maF1 {sets['macro_f1']:6.2f}  "
              f"P@1 {ranking['p'][1]:6.2f}  train_s {extra.get('train_s', 0):7.0f}", flush=True)

    for setting in args.settings:
        drop = args.pu_drop if setting == "pu" else 0.0
        Ytr = pu_drop_labels(ds.train.Y, drop, args.seed)  # what every model of this setting trains on
        counts = np.diff(Ytr.tocsc().indptr)
        suffix = "-pu" if setting == "pu" else ""
        print(f"[{setting}] {Ytr.nnz} training positives (of {ds.train.Y.nnz})", flush=True)
        if not args.no_xr_linear:
            params = XRLinearParams().merged({"ranker": {"threads": args.threads}, "tree": {"threads": args.threads}})
            t0, c0 = time.perf_counter(), time.process_time()
            model = train_xr_linear(Ytr, ds.label_names, params, texts=ds.train.texts)
            train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
            model.set_label_counts(Ytr)
            # its sets: the micro policy of a calibration held out from a sibling (no oracle |y|)
            cal = holdout_calibration(Ytr, ds.label_names, params, texts=ds.train.texts)
            t0 = time.perf_counter()
            P = model.predict(test_texts, topk=max(10, cal.params.max_set_size))
            predict_s = time.perf_counter() - t0
            inv = model.inverse_propensity(n_cols=Yte.shape[1])
            ranking = ranking_metrics(Yte, P, mp, inv_prop=inv)
            S = cal.decide(cal.proba(P), "micro")
            sets = {**set_metrics(Yte, S), **tail_bucket_metrics(Yte, S, counts)}
            record("xr-linear" + suffix, setting, ranking, sets,
                   {"train_s": train_s, "train_cpu_s": train_cpu_s, "predict_s": predict_s, "sets": "micro policy, holdout calibration",
                    "xr_linear": params.to_dict()})
        clusters, cluster_s, cluster_cpu_s = None, 0.0, 0.0
        for variant in args.variants:
            params = XLGenParams.from_dict({**overrides, "variant": variant, "pu_drop": drop, "seed": args.seed,
                                            "threads": args.threads})
            if params.uses_clusters and clusters is None:
                t0, c0 = time.perf_counter(), time.process_time()
                clusters, cinfo = cluster_labels(ds.train.texts, Ytr, ds.label_names, params)
                cluster_s, cluster_cpu_s = time.perf_counter() - t0, time.process_time() - c0
                print(f"  clusters: {cinfo['n_clusters']} from {cinfo['docs_embedded']} docs in {cluster_s:.0f}s; "
                      f"sizes {sorted(cinfo['cluster_sizes'], reverse=True)}", flush=True)
            log_rows = []
            t0, c0 = time.perf_counter(), time.process_time()
            model = train_xlgen(ds.train.texts, ds.train.Y, ds.label_names, params,
                                log=log_rows.append, clusters=clusters if params.uses_clusters else None)
            train_s = time.perf_counter() - t0 + (cluster_s if params.uses_clusters else 0.0)
            train_cpu_s = time.process_time() - c0 + (cluster_cpu_s if params.uses_clusters else 0.0)
            assert (model.label_counts == counts).all()  # trained on the same dropped labels
            ev, extra = evaluate_xlgen(model, test_texts, Yte, ds.label_names, mp)
            losses = [r["loss"] for r in log_rows if r.get("stage") == "train"]
            record(f"xlgen-{variant}" + suffix, setting, ev.metrics, extra,
                   {"train_s": train_s, "train_cpu_s": train_cpu_s,
                    "cluster_s": cluster_s if params.uses_clusters else 0.0,
                    "predict_s": ev.predict_s, "variant": variant, "xlgen": params.to_dict(),
                    "final_loss": losses[-1] if losses else None, "device": model.info.get("device")})
            if args.save:
                model.save(Path(args.save) / f"xlgen-{variant}{suffix}")
    print()
    print_table(args.db, run_id)
    print(f"\nrows in {args.db} (table evaluation, run_id {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
