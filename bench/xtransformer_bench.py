#!/usr/bin/env python3
"""XR-Transformer against our XR-Linear on one raw-text dataset, side by side in one process.

    .venv/bin/python bench/xtransformer_bench.py --data ../shared/data/reuters-21578 \
        [--systems xr-linear pretrained xr-transformer] [--threads 2] [--params '{...}'] \
        [--max-rows N] [--save-dir bench/out/models] [--db data/xmc.duckdb]

Systems: `xr-linear` (our XR-Linear, default settings), `pretrained` (XR-Transformer with the
encoder not fine-tuned: steps_per_level 0, so the gain of fine-tuning is visible) and
`xr-transformer` (fine-tuned; CPU defaults unless --params says otherwise). Prints P@1/3/5,
nDCG@5, training and prediction seconds; appends P/R/nDCG/PSP@k rows to the DuckDB `evaluation`
table (params carry the settings, train_s and thread count) and one row per system to the
`benchmark` table (bench="xtransformer"), exported to bench/results/<run_id>.csv and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _Ensemble:
    """A view of an XR-Transformer model that predicts with another ensemble setting."""

    def __init__(self, model, method: str):
        self._model, self._method = model, method

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict(self, texts, topk=None, beam_size=None, post_processor=None):
        return self._model.predict(texts, topk, beam_size, post_processor, ensemble=self._method)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--systems", nargs="+", default=["xr-linear", "pretrained", "xr-transformer"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default="{}", help="XTransformerParams overrides (JSON)")
    ap.add_argument("--max-rows", type=int, default=None, help="first N documents of each split")
    ap.add_argument("--save-dir", default=None, help="save each trained model under this folder")
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(args.threads)
    from xmc_core.data import load_dataset
    from xmc_core.model import XRLinearParams, evaluate_model, train_xr_linear
    sys.path.insert(0, str(REPO / "bench"))
    from record import Run

    from xmc_core.results_db import append_evaluation
    from xmc_core.xtransformer import XTransformerParams, train_xr_transformer

    ds = load_dataset(args.data, splits=("train", "test"), max_rows=args.max_rows)
    overrides = json.loads(args.params)
    run = Run("xtransformer", settings=vars(args))
    run_id = run.run_id
    bench_rows = []
    print(f"run {run_id}: {ds.name} train {ds.train.n} test {ds.test.n} labels {ds.n_labels} threads {args.threads}",
          flush=True)
    rows = []
    for system in args.systems:
        t0 = time.perf_counter()
        if system == "xr-linear":
            params = XRLinearParams()
            model = train_xr_linear(ds.train.Y, ds.label_names, params, texts=ds.train.texts)
        else:
            params = XTransformerParams().merged(overrides)
            if system == "pretrained":
                params = params.merged({"finetune": {"steps_per_level": 0}})

            def log(rec):
                if rec.get("stage") in ("finetune_step", "finetune_level", "features", "tfidf_matcher", "embed",
                                        "refined_tree", "rankers"):
                    print("   ", json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()
                                            if k != "levels"}), flush=True)

            model = train_xr_transformer(ds.train.texts, ds.train.Y, ds.label_names, params, log=log)
        train_s = time.perf_counter() - t0
        model.set_label_counts(ds.train.Y)
        if args.save_dir:
            model.save(Path(args.save_dir) / f"{ds.name}-{system}")
        evaluations = [(system, evaluate_model(model, ds.test.texts, ds.test.Y, ds.label_names))]
        if system == "xr-transformer" and getattr(model, "head", None) is not None:
            # the other ensemble setting too, so its share of the result is visible
            other = "average" if model.params.ensemble.method == "concat-only" else "concat-only"
            evaluations.append((f"{system}/{other}",
                                evaluate_model(_Ensemble(model, other), ds.test.texts, ds.test.Y, ds.label_names)))
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for name, ev in evaluations:
            m = ev.metrics
            rows.append((name, m["p"][1], m["p"][3], m["p"][5], m["ndcg"][5], train_s, ev.predict_s))
            print(f"{name:>15}  P@1 {m['p'][1]:6.2f}  P@3 {m['p'][3]:6.2f}  P@5 {m['p'][5]:6.2f}  "
                  f"nDCG@5 {m['ndcg'][5]:6.2f}  train {train_s:7.1f} s  predict {ev.predict_s:6.1f} s", flush=True)
            record = {"system": name, "threads": args.threads, "train_s": round(train_s, 2),
                      "predict_s": round(ev.predict_s, 2), "params": params.to_dict(), "max_rows": args.max_rows,
                      "device": getattr(model, "info", {}).get("device", "cpu")}
            append_evaluation(args.db, run_id, ds.name, name, "test", m, record)
            info = getattr(model, "info", {})
            bench_rows.append({"bench": "xtransformer", "dataset": ds.name, "system": name,
                               "threads": args.threads, "n_labels": ds.n_labels, "n_train": ds.train.n,
                               "n_test": ds.test.n, "train_s": train_s, "predict_s": ev.predict_s,
                               "peak_rss_mb": rss_mb, "p1": m["p"][1], "p3": m["p"][3], "p5": m["p"][5],
                               "extra": {"ndcg5": m["ndcg"][5], "device": info.get("device", "cpu"),
                                         "precision": info.get("precision"), "params": params.to_dict(),
                                         "finetune": info.get("finetune")}})
    run.finish(args.db, bench_rows)
    print(f"\n{ds.name} ({run_id})")
    print("| system | P@1 | P@3 | P@5 | nDCG@5 | train s | predict s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.1f} | {r[6]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
