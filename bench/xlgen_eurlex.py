#!/usr/bin/env python3
"""XLGen on EURLEX57K, where the tail is: label-text decoding against XR-Linear's fitted label sets.

    .venv/bin/python bench/xlgen_eurlex.py [--data ../shared/data/eurlex57k] [--settings full pu]
        [--variants base bcl mcg] [--token-variants base] [--no-xr-linear] [--threads 2]
        [--params '{"steps": 1500}'] [--pu-drop 0.5] [--seed 0] [--test-rows N] [--db data/xmc.duckdb]

What runs, per setting ("full": the training labels as given; "pu": a seeded `--pu-drop` of each
training document's labels dropped, `xlgen.pu_drop_labels`; test labels are never dropped):
- XR-Linear (defaults, TF-IDF on the raw texts) trained on the setting's labels, calibrated on the
  dev split (isotonic by frequency group), its sets on test by the two fitted policies: micro-F1 is
  the micro policy's (one threshold), macro-F1 the macro policy's (per-label thresholds);
- XLGen `--variants` in label_text decoding and `--token-variants` in label_token decoding; their
  sets are what they generate (their own decision).
XLGen's CPU settings (`CPU_SETTINGS`, overridable with --params): the first 64 word pieces of each
document (title and opening of the act), the whole MiniLM encoder frozen with its states cached
once (`cache_encoder_states`: one encoder pass over the training texts, shared by every variant and
setting of the run, its seconds added to each XLGen row's training time), a 2-layer decoder
trained for 1,000 steps of 32 documents (0.7 epoch; lr 2e-4 for its warm-started weights, 1e-3 for
the new ones), beam 4, at most 12 labels. Label
clusters (bcl, mcg) are the mean cached states of each label's documents, titles for labels
without any, in 64 clusters. A GPU, when present, is used with bf16 autocast (`device: auto`).

Metrics on test (percent): micro-F1, macro-F1 over labels present in test and by EURLEX57K's
frequency bucket (frequent >= 50 training documents, few 1-49, zero 0 — counted on the full
training labels in both settings), P@1/3/5 of the scores, training and prediction seconds. Prints a
table, appends rows to DuckDB `benchmark` and writes bench/results/<run_id>.csv/.md; rows are also
kept in bench/out/<run_id>.json after each model, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

#: XLGen settings that fit one variant in well under an hour on 2 CPU cores (see the docstring)
CPU_SETTINGS = {"max_length": 64, "freeze_layers": 6, "cache_encoder_states": True, "steps": 1000,
                "batch_size": 32, "lr": 2e-4, "lr_new": 1e-3, "n_clusters": 64, "beam_size": 4, "max_labels": 12,
                "eval_batch_size": 64}
BUCKETS = ("frequent", "few", "zero")


def r2(v):
    return None if v is None else round(float(v), 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "eurlex57k"))
    ap.add_argument("--settings", nargs="+", default=["full", "pu"], choices=("full", "pu"))
    ap.add_argument("--variants", nargs="*", default=["base", "bcl", "mcg"], help="XLGen variants in label_text")
    ap.add_argument("--token-variants", nargs="*", default=["base"], help="XLGen variants in label_token")
    ap.add_argument("--pu-variants", nargs="*", default=None, help="label_text variants of the pu setting "
                    "(default: --variants)")
    ap.add_argument("--pu-token-variants", nargs="*", default=None, help="label_token variants of the pu setting "
                    "(default: --token-variants)")
    ap.add_argument("--no-xr-linear", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default="{}", help="XLGenParams overrides (JSON) over CPU_SETTINGS")
    ap.add_argument("--pu-drop", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-rows", type=int, default=None, help="score only the first N test documents")
    ap.add_argument("--train-rows", type=int, default=None, help="train on the first N documents (smoke runs)")
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    ap.add_argument("--states-file", default=None, help="keep the cached encoder states in this .npy pair (read "
                    "when present, for a later run of other variants; the seconds recorded are the run that "
                    "computed them)")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    import numpy as np
    import torch

    from record import Run
    from xmc_core.data import load_dataset
    from xmc_core.metrics import MetricParams, ranking_metrics, set_report
    from xmc_core.model import XRLinearParams, train_xr_linear
    from xmc_core.xlgen import XLGenParams, encoder_states, pu_drop_labels, sets_matrix, train_xlgen

    torch.set_num_threads(args.threads)
    overrides = {**CPU_SETTINGS, **json.loads(args.params), "threads": args.threads, "seed": args.seed}
    run = Run("xlgen-eurlex", settings={**vars(args), "xlgen": overrides})
    out_json = REPO / "bench" / "out" / f"{run.run_id}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.data, splits=("train", "dev", "test"), max_rows=args.train_rows)
    dataset = Path(args.data).name
    test_texts, Yte = ds.test.texts, ds.test.Y
    if args.test_rows:
        test_texts, Yte = test_texts[:args.test_rows], Yte[:args.test_rows]
    full_counts = np.diff(ds.train.Y.tocsc().indptr)  # the buckets: full training labels, both settings
    mp = MetricParams(ks=(1, 3, 5))
    print(f"run {run.run_id}: {dataset}, {ds.train.n} train / {ds.dev.n} dev / {len(test_texts)} test, "
          f"{ds.n_labels} labels, {args.threads} threads", flush=True)
    rows: list[dict] = []

    def add(system: str, setting: str, P, S, train_s: float, predict_s: float, extra: dict) -> None:
        rk = ranking_metrics(Yte, P, mp)["p"]
        rep = set_report(Yte, S, full_counts)
        ex = {"setting": setting, "pu_drop": args.pu_drop if setting == "pu" else 0.0,
              "micro_f1": r2(rep["micro_f1"]), "macro_f1": r2(rep["macro_f1"]),
              **{f"macro_f1_{b}": r2(rep[f"{b}_macro_f1"]) if rep[f"{b}_labels"] else None for b in BUCKETS},
              **{f"labels_{b}": rep.get(f"{b}_labels") for b in BUCKETS},
              "set_size": r2(rep["set_size"]), "train_min": r2(train_s / 60), **extra}
        rows.append({"dataset": dataset, "system": system, "threads": args.threads, "n_labels": ds.n_labels,
                     "n_train": ds.train.n, "n_test": len(test_texts), "train_s": round(train_s, 1),
                     "predict_s": round(predict_s, 1), "peak_rss_mb": None, "p1": r2(rk[1]), "p3": r2(rk[3]),
                     "p5": r2(rk[5]), "extra": ex})
        out_json.write_text(json.dumps(rows, indent=1))
        print(f"  {system:<26} {setting:<4} miF1 {ex['micro_f1']:6.2f} maF1 {ex['macro_f1']:6.2f} "
              + " ".join(f"{b} {ex[f'macro_f1_{b}'] if ex[f'macro_f1_{b}'] is not None else float('nan'):6.2f}"
                         for b in BUCKETS)
              + f" P@1 {rk[1]:6.2f} train {train_s / 60:5.1f} min", flush=True)

    states, cache_s = None, 0.0
    try:
        for setting in args.settings:
            drop = args.pu_drop if setting == "pu" else 0.0
            Ytr = pu_drop_labels(ds.train.Y, drop, args.seed)
            print(f"[{setting}] {Ytr.nnz} training positives (of {ds.train.Y.nnz})", flush=True)
            if not args.no_xr_linear:
                params = XRLinearParams().merged({"ranker": {"threads": args.threads},
                                                  "tree": {"threads": args.threads}})
                t0 = time.perf_counter()
                model = train_xr_linear(Ytr, ds.label_names, params, texts=ds.train.texts)
                train_s = time.perf_counter() - t0
                model.set_label_counts(Ytr)
                cal = model.calibrate(ds.dev.texts, ds.dev.Y, ds.label_names, info={"source": "dev"})
                t0 = time.perf_counter()
                P = model.predict(test_texts, topk=cal.params.topk)
                predict_s = time.perf_counter() - t0
                proba = cal.proba(P)
                S_micro, S_macro = cal.decide(proba, "micro"), cal.decide(proba, "macro")
                micro = set_report(Yte, S_micro, full_counts)
                add("xmc xr-linear (macro policy)", setting, P, S_macro, train_s, predict_s,
                    {"sets": "macro policy; micro_f1_micro_policy is the micro policy's",
                     "micro_f1_micro_policy": r2(micro["micro_f1"]), "macro_f1_micro_policy": r2(micro["macro_f1"])})
            text_v, token_v = args.variants, args.token_variants
            if setting == "pu":
                text_v = text_v if args.pu_variants is None else args.pu_variants
                token_v = token_v if args.pu_token_variants is None else args.pu_token_variants
            runs = [(v, "label_text") for v in text_v] + [(v, "label_token") for v in token_v]
            for variant, decoding in runs:
                params = XLGenParams.from_dict({**overrides, "variant": variant, "decoding": decoding,
                                                "pu_drop": drop})
                if params.cache_encoder_states and states is None:
                    t0 = time.perf_counter()
                    sf = Path(args.states_file) if args.states_file else None
                    if sf is not None and sf.with_suffix(".meta.json").is_file():
                        meta = json.loads(sf.with_suffix(".meta.json").read_text())
                        states = (np.load(sf, mmap_mode="r"), np.asarray(meta["offsets"], np.int64))
                        cache_s = float(meta["seconds"])
                    else:
                        states = encoder_states(ds.train.texts, params)
                        cache_s = time.perf_counter() - t0
                        if sf is not None:
                            np.save(sf, states[0])
                            sf.with_suffix(".meta.json").write_text(json.dumps(
                                {"offsets": states[1].tolist(), "seconds": cache_s, "xlgen": params.to_dict()}))
                    print(f"  encoder states of {ds.train.n} documents: {cache_s / 60:.1f} min, "
                          f"{states[0].nbytes / 2**20:.0f} MB", flush=True)
                log = []
                t0 = time.perf_counter()
                # clusters (bcl, mcg) come from the cached states inside: seconds, not an encoder pass
                model = train_xlgen(ds.train.texts, ds.train.Y, ds.label_names, params, log=log.append,
                                    label_titles=ds.label_titles, encoder_states=states)
                train_s = time.perf_counter() - t0 + cache_s
                cluster_s = sum(r["seconds"] for r in log if r["stage"] == "clusters")
                t0 = time.perf_counter()
                gen = model.generate(test_texts, topk=10)
                predict_s = time.perf_counter() - t0
                epochs = [r for r in log if r["stage"] == "epoch"]
                add(f"xmc xlgen-{variant} ({decoding})", setting, gen.scores, sets_matrix(gen.sets, ds.n_labels),
                    train_s, predict_s,
                    {"variant": variant, "decoding": decoding, "encoder_cache_s": round(cache_s, 1),
                     "cluster_s": round(cluster_s, 1) if params.uses_clusters else 0.0,
                     "final_loss": r2(epochs[-1]["loss"]) if epochs else None,
                     "epochs": r2(epochs[-1]["epoch"]) if epochs else None, "xlgen": params.to_dict(),
                     "device": model.info.get("device")})
                del model
    finally:
        print()
        header = f"{'system':<30} {'set':<4} {'miF1':>6} {'maF1':>6} " + " ".join(f"{b:>8}" for b in BUCKETS) + \
                 f" {'P@1':>6} {'train min':>9}"
        print(header)
        print("-" * len(header))
        for r in rows:
            e = r["extra"]
            print(f"{r['system']:<30} {e['setting']:<4} {e['micro_f1']:6.2f} {e['macro_f1']:6.2f} "
                  + " ".join(f"{e[f'macro_f1_{b}'] if e[f'macro_f1_{b}'] is not None else float('nan'):8.2f}"
                             for b in BUCKETS)
                  + f" {r['p1']:6.2f} {e['train_min']:9.1f}")
        if rows:
            run.finish(args.db, rows, notes=(
                "XLGen on EURLEX57K test: micro-F1, macro-F1 (labels present in test) and macro-F1 by training-"
                "frequency bucket (frequent >= 50, few 1-49, zero 0 documents, full training labels). XR-Linear's "
                "sets: policies fitted on the dev split; XLGen's: what it generates. XLGen CPU settings: "
                + json.dumps(CPU_SETTINGS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
