#!/usr/bin/env python3
"""Train + evaluate xmc XR-Linear on .npz data; print ONE JSON line (same keys as peer_run.py).

    .venv/bin/python bench/ours_run.py --train-X X.trn.npz --train-Y Y.trn.npz \
        --test-X X.tst.npz --test-Y Y.tst.npz --threads 2 [--preset accurate] [--params '{"ranker": {...}}']

X: float32 CSR with l2-normalized rows (already featurized, as the peers get it). train_s covers
PIFA + tree + rankers (data loading excluded); predict_s is beam search on the test set;
prepare_s (in neither) builds the beam-search layout, which PECOS builds when it loads a model for
prediction (peer_run.py times that apart too: load_predict_only_s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def add_data_args(ap: argparse.ArgumentParser) -> None:
    """The options every xmc bench run takes: the four .npz matrices, --beam-size, --params."""
    ap.add_argument("--train-X", required=True)
    ap.add_argument("--train-Y", required=True)
    ap.add_argument("--test-X", required=True)
    ap.add_argument("--test-Y", required=True)
    ap.add_argument("--beam-size", type=int, default=10)
    ap.add_argument("--params", default="{}", help="nested XRLinearParams overrides (JSON)")
    ap.add_argument("--preset", default="default", help="xmc_core.presets name the --params apply over")
    ap.add_argument("--seed", type=int, default=None,
                    help="the tree's and the rankers' seed (an ensemble's members take seed + t; "
                         "None: the preset's and --params' own)")
    ap.add_argument("--embeddings", default=None,
                    help="PREFIX of PREFIX.trn.npy / PREFIX.tst.npy: encoder embeddings joined to X "
                         "(l2_rows([X ⊕ E]), the embedding block of a preset such as accurate-text)")


def bench_params(params_json: str, threads: int, beam_size: int, preset: str = "default",
                 seed: int | None = None):
    """XRLinearParams of a bench run: preset `preset` with the --params overrides over it, with
    `threads` for the tree, the rankers and prediction, `beam_size`, and `seed` (None: keep the
    settings' own) for the tree and the rankers (xmc_core must be importable)."""
    from xmc_core.model import XRLinearParams
    from xmc_core.presets import preset_overrides

    overrides = preset_overrides(preset, json.loads(params_json))
    overrides.setdefault("ranker", {})["threads"] = threads
    overrides.setdefault("tree", {})["threads"] = threads
    overrides.setdefault("pred", {})["beam_size"] = beam_size
    overrides["pred"]["threads"] = threads
    if seed is not None:
        overrides["tree"]["seed"] = overrides["ranker"]["seed"] = seed
    return XRLinearParams().merged(overrides)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    add_data_args(ap)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--save-ranker", default=None, help="also save the trained XLinearModel folder here")
    ap.add_argument("--predict-repeats", type=int, default=3,
                    help="timed predictions after an untimed warm-up on 64 rows; predict_s is their median")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    import scipy.sparse as smat

    from xmc_core.metrics import ranking_metrics
    from xmc_core.memory import StageMemory, peak_rss_mb
    from xmc_core.model import fit_rankers

    Xtr = smat.load_npz(args.train_X).tocsr().astype(np.float32)
    Ytr = smat.load_npz(args.train_Y).tocsr().astype(np.float32)
    Xte = smat.load_npz(args.test_X).tocsr().astype(np.float32)
    Yte = smat.load_npz(args.test_Y).tocsr().astype(np.float32)
    if args.embeddings:
        from xmc_core.xtransformer import concat_features

        Xtr = concat_features(Xtr, np.load(args.embeddings + ".trn.npy"))
        Xte = concat_features(Xte, np.load(args.embeddings + ".tst.npy"))
    params = bench_params(args.params, args.threads, args.beam_size, args.preset, args.seed)
    names = [str(i) for i in range(Ytr.shape[1])]
    t0 = time.perf_counter()
    stages, stages_mb = {}, {}

    def log(r):
        name = r["stage"] + (f"_{r['level']}" if "level" in r else "")
        stages[name] = round(r.get("seconds", 0), 3)
        stages_mb[name] = r.get("peak_rss_mb")

    stages_mb["load"] = round(peak_rss_mb(), 1)  # imports, 4 matrices (VmHWM: since exec, not the parent's)
    memory = StageMemory()
    model = fit_rankers(Xtr, Ytr, names, params, log=log, memory=memory)
    train_s = time.perf_counter() - t0
    # The beam-search layout (weights regrouped per parent) is built outside both timings, as
    # PECOS's side of the bench saves and re-loads its model for prediction (is_predict_only)
    # outside them; its time is reported as prepare_s.
    t0 = time.perf_counter()
    rankers = [m.ranker for m in getattr(model, "members", [model])]  # an ensemble's members
    for ranker in rankers:
        ranker.prepare()
    prepare_s = time.perf_counter() - t0
    stages_mb["prepare"] = memory.add({})["peak_rss_mb"]
    from timing import timed_predictions

    P, predict_s, predict_runs_s = timed_predictions(lambda X: model.predict(X, topk=10), Xte,
                                                     args.predict_repeats)
    stages_mb["predict"] = memory.add({})["peak_rss_mb"]
    res = ranking_metrics(Yte, P)
    if args.save_ranker:
        rankers[0].save(args.save_ranker)
        stages_mb["save"] = memory.add({})["peak_rss_mb"]
    out = {
        "peer": "xmc", "train_s": round(train_s, 4), "predict_s": round(predict_s, 4), "prepare_s": round(prepare_s, 4),
        "predict_runs_s": predict_runs_s,
        # the stage peaks reset the kernel's high-water mark (xmc_core.memory): the run's peak is
        # the largest of the loading's and theirs
        "peak_rss_mb": max(stages_mb["load"], memory.run_peak_mb),
        "p@1": round(res["p"][1], 4), "p@3": round(res["p"][3], 4), "p@5": round(res["p"][5], 4),
        "n_test": int(Yte.shape[0]), "n_train": int(Ytr.shape[0]), "n_labels": int(Ytr.shape[1]),
        "threads": args.threads, "beam_size": args.beam_size,
        "seed": params.tree.seed, "train_detail_s": stages,
        "stage_peak_mb": stages_mb,
        "tree_levels": rankers[0].tree.level_sizes(), "preset": args.preset, "n_members": len(rankers),
        # what a preset chose on held-out training documents (C, idf weights, reach, copies)
        "selection": model.info.get("selection"),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
