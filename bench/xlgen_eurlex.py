#!/usr/bin/env python3
"""XLGen on EURLEX57K, where the tail is: label-text decoding against XR-Linear's fitted label sets.

    .venv/bin/python bench/xlgen_eurlex.py [--data ../shared/data/eurlex57k] [--settings full pu]
        [--variants base bcl mcg] [--token-variants base] [--copy-variants base]
        [--classifiers xr-linear xr-transformer-pretrained] [--ranker-c 3] [--threads 2]
        [--params '{"steps": 1500}'] [--pu-drop 0.5] [--seed 0] [--test-rows N] [--db data/xmc.duckdb]

What runs, per setting ("full": the training labels as given; "pu": a seeded `--pu-drop` of each
training document's labels dropped, `xlgen.pu_drop_labels`; test labels are never dropped):
- `--classifiers`, trained on the setting's labels of the training documents and calibrated on the
  dev split (isotonic by frequency group, `fit_calibration` on their top-20 dev scores; in the pu
  setting with the dev labels dropped alike, seed + 1, as they come from the same annotation, and
  the sets that thresholds fitted on the full dev labels would give kept in the row's extra as
  `*_full_dev_labels`), their sets on test by the two fitted policies: micro-F1 is the micro policy's (one threshold), macro-F1 the
  macro policy's (per-label thresholds). Both read the label-set bench's features
  (`bench/label_sets.py`: word 1-2-gram TF-IDF, sublinear tf, min_df 2, cached in
  bench/out/data/eurlex57k-sets/) with rankers' C = `--ranker-c` (3: the held-out choice of both in
  run sets-20261201T172021-9c6174, on the full labels). xr-linear: XR-Linear on TF-IDF;
  xr-transformer-pretrained: XR-Transformer rankers on [TF-IDF ⊕ MiniLM embedding] with the
  pretrained encoder (128 word pieces, bf16; no fine-tuning, so the PU setting's encoder has seen
  no label), its embeddings cached by the label-set bench (their seconds, measured there, are added:
  training documents to train_s, test documents to predict_s);
- XLGen `--variants` in label_text decoding, `--copy-variants` in label_text decoding with the copy
  prior (`copy_prior`), and `--token-variants` in label_token decoding; their sets are what they
  generate (their own decision).
XLGen's CPU settings (`CPU_SETTINGS`, overridable with --params): the first 64 word pieces of each
document (title and opening of the act), the whole MiniLM encoder frozen with its states cached
once (`cache_encoder_states`: one encoder pass over the training texts, shared by every variant and
setting of the run, its seconds added to each XLGen row's training time), a 2-layer decoder
trained for 1,000 steps of 32 documents (0.7 epoch; lr 2e-4 for its warm-started weights, 1e-3 for
the new ones), beam 4, at most 12 labels, length penalty 1 (a hypothesis' log-probability divided by
its length) and, for copy-prior models, the learned copy gain doubled when decoding (`copy_scale`
2): both chosen on the first 1,000-1,500 dev documents with a base + copy_prior model (runs before
2026-12-01T20:26 decoded with length penalty 0 and the gain as trained). Label
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
                "eval_batch_size": 64, "length_penalty": 1.0, "copy_scale": 2.0}
BUCKETS = ("frequent", "few", "zero")
#: the calibrated classifiers of the table (see the docstring)
CLASSIFIERS = ("xr-linear", "xr-transformer-pretrained")
#: the XR-Transformer's encoder settings: the label-set bench's (its cached embeddings are reused)
XRT_ENCODER = {"precision": "bf16"}


def r2(v):
    return None if v is None else round(float(v), 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "eurlex57k"))
    ap.add_argument("--settings", nargs="+", default=["full", "pu"], choices=("full", "pu"))
    ap.add_argument("--variants", nargs="*", default=["base", "bcl", "mcg"], help="XLGen variants in label_text")
    ap.add_argument("--token-variants", nargs="*", default=["base"], help="XLGen variants in label_token")
    ap.add_argument("--copy-variants", nargs="*", default=[], help="XLGen variants in label_text with copy_prior")
    ap.add_argument("--pu-copy-variants", nargs="*", default=None, help="copy_prior variants of the pu setting "
                    "(default: --copy-variants)")
    ap.add_argument("--classifiers", nargs="*", default=list(CLASSIFIERS), choices=CLASSIFIERS)
    ap.add_argument("--ranker-c", type=float, default=3.0, help="the classifiers' rankers' Cp = Cn")
    ap.add_argument("--pu-variants", nargs="*", default=None, help="label_text variants of the pu setting "
                    "(default: --variants)")
    ap.add_argument("--pu-token-variants", nargs="*", default=None, help="label_token variants of the pu setting "
                    "(default: --token-variants)")
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
    import scipy.sparse as smat

    from label_sets import TOPK, encoder_embeddings, load as load_features, prepare
    from xmc_core.calibration import CalibrationParams, fit_calibration
    from xmc_core.xlgen import XLGenParams, encoder_states, pu_drop_labels, sets_matrix, train_xlgen
    from xmc_core.xtransformer import XTransformerParams, concat_features, fit_concat_rankers, project

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
        print(f"  {system:<46} {setting:<4} miF1 {ex['micro_f1']:6.2f} maF1 {ex['macro_f1']:6.2f} "
              + " ".join(f"{b} {ex[f'macro_f1_{b}'] if ex[f'macro_f1_{b}'] is not None else float('nan'):6.2f}"
                         for b in BUCKETS)
              + f" P@1 {rk[1]:6.2f} train {train_s / 60:5.1f} min", flush=True)

    sets_dir = REPO / "bench" / "out" / "data" / f"{dataset}-sets"
    feats = {}
    if args.classifiers:
        prepare(Path(args.data), sets_dir)
        # the label-set bench's splits are the dataset's (train, dev, test), in order; cut as ds is
        sizes = {"trn": ds.train.n, "dev": ds.dev.n, "tst": len(test_texts)}
        feats = {k: load_features(sets_dir, f"X.{k}")[:n] for k, n in sizes.items()}

    def classifier(system: str, setting: str, Ytr) -> None:
        """One calibrated classifier's row (see the docstring)."""
        counts = np.diff(smat.csc_matrix(Ytr).indptr)
        t = {"threads": args.threads}
        c = {"Cp": args.ranker_c, "Cn": args.ranker_c}
        extra, test_encode_s = {}, 0.0
        t0 = time.perf_counter()
        if system == "xr-linear":
            params = XRLinearParams().merged({"ranker": {**t, **c}, "tree": t})
            model = train_xr_linear(Ytr, ds.label_names, params, X=feats["trn"])
            train_s = time.perf_counter() - t0
            F_dev, F_tst = feats["dev"], feats["tst"]

            def scores(F):
                return model.predict(F, topk=TOPK)
        else:
            params = XTransformerParams().merged({"encoder": {**XRT_ENCODER, **t}, "tree": t, "ranker": {**t, **c},
                                                  "finetune": {"steps_per_level": 0, **t}})
            emb = encoder_embeddings(Path(args.data), sets_dir, params, args.threads)
            E = {k: emb["E"][k][:n] for k, n in sizes.items()}
            t0 = time.perf_counter()
            _, ranker, _, projection = fit_concat_rankers(feats["trn"], E["trn"], Ytr, params)
            rankers_s = time.perf_counter() - t0
            train_s = rankers_s + emb["embed_s"]["trn"] * sizes["trn"] / len(emb["E"]["trn"])
            test_encode_s = emb["embed_s"]["tst"] * sizes["tst"] / len(emb["E"]["tst"])
            F_dev = concat_features(feats["dev"], project(E["dev"], projection))
            F_tst = concat_features(feats["tst"], project(E["tst"], projection))
            extra = {"encoder_cached": emb["cached"], "embed_s": {k: round(v, 1) for k, v in emb["embed_s"].items()},
                     "rankers_s": round(rankers_s, 1)}

            def scores(F):
                return ranker.predict(F, only_topk=TOPK)
        # PU: the dev labels are dropped alike (another seed): they come from the same annotation
        Ydv = pu_drop_labels(ds.dev.Y, args.pu_drop if setting == "pu" else 0.0, args.seed + 1)
        P_dev = scores(F_dev)
        cal = fit_calibration(P_dev, Ydv, counts, CalibrationParams(topk=TOPK), info={"source": "dev"})
        t0 = time.perf_counter()
        P = scores(F_tst)
        predict_s = time.perf_counter() - t0 + test_encode_s
        proba = cal.proba(P)
        micro = set_report(Yte, cal.decide(proba, "micro"), full_counts)
        if setting == "pu":  # what thresholds fitted on fully labelled dev documents would give
            cal_full = fit_calibration(P_dev, ds.dev.Y, counts, CalibrationParams(topk=TOPK))
            pf = cal_full.proba(P)
            for pol in ("micro", "macro"):
                rep = set_report(Yte, cal_full.decide(pf, pol), full_counts)
                extra.update({f"{pol}_policy_{m}_full_dev_labels": r2(rep[m]) for m in ("micro_f1", "macro_f1")})
        add(f"xmc {system} (macro policy)", setting, P, cal.decide(proba, "macro"), train_s, predict_s,
            {"sets": "macro policy; micro_f1_micro_policy is the micro policy's", "ranker_C": args.ranker_c,
             "dev_positives": int(Ydv.nnz),
             "micro_f1_micro_policy": r2(micro["micro_f1"]), "macro_f1_micro_policy": r2(micro["macro_f1"]),
             **extra})

    states, cache_s = None, 0.0
    try:
        for setting in args.settings:
            drop = args.pu_drop if setting == "pu" else 0.0
            Ytr = pu_drop_labels(ds.train.Y, drop, args.seed)
            print(f"[{setting}] {Ytr.nnz} training positives (of {ds.train.Y.nnz})", flush=True)
            for system in args.classifiers:
                classifier(system, setting, Ytr)
            text_v, token_v, copy_v = args.variants, args.token_variants, args.copy_variants
            if setting == "pu":
                text_v = text_v if args.pu_variants is None else args.pu_variants
                token_v = token_v if args.pu_token_variants is None else args.pu_token_variants
                copy_v = copy_v if args.pu_copy_variants is None else args.pu_copy_variants
            runs = ([(v, "label_text", True) for v in copy_v] + [(v, "label_text", False) for v in text_v]
                    + [(v, "label_token", False) for v in token_v])
            for variant, decoding, copy_prior in runs:
                params = XLGenParams.from_dict({**overrides, "variant": variant, "decoding": decoding,
                                                "copy_prior": copy_prior, "pu_drop": drop})
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
                add(f"xmc xlgen-{variant} ({decoding}{'+copy' if copy_prior else ''})", setting, gen.scores, sets_matrix(gen.sets, ds.n_labels),
                    train_s, predict_s,
                    {"variant": variant, "decoding": decoding, "encoder_cache_s": round(cache_s, 1),
                     "cluster_s": round(cluster_s, 1) if params.uses_clusters else 0.0,
                     "final_loss": r2(epochs[-1]["loss"]) if epochs else None, "copy_prior": copy_prior,
                     "copy_gain": round(model.copy_gain, 3) if copy_prior else None,
                     "epochs": r2(epochs[-1]["epoch"]) if epochs else None, "xlgen": params.to_dict(),
                     "device": model.info.get("device")})
                del model
    finally:
        print()
        header = f"{'system':<46} {'set':<4} {'miF1':>6} {'maF1':>6} " + " ".join(f"{b:>8}" for b in BUCKETS) + \
                 f" {'P@1':>6} {'train min':>9}"
        print(header)
        print("-" * len(header))
        for r in rows:
            e = r["extra"]
            print(f"{r['system']:<46} {e['setting']:<4} {e['micro_f1']:6.2f} {e['macro_f1']:6.2f} "
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
