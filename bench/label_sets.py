#!/usr/bin/env python3
"""Label sets and probabilities: xmc XR-Linear and XR-Transformer (calibrated) against napkinXC's PLT, side by side.

    .venv/bin/python bench/label_sets.py [--datasets eurlex57k yso-finna-en reuters-21578] [--threads 2]
        [--systems xr-linear xr-transformer-pretrained xr-transformer napkinxc] [--xrt-params JSON]
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
- xmc XR-Transformer (`--systems xr-transformer-pretrained` / `xr-transformer`, raw-text datasets;
  settings `--xrt-params`, e.g. '{"encoder": {"precision": "bf16"}}'): the encoder, as downloaded
  or first fine-tuned on the training documents alone (`fit_encoder` over the bench's TF-IDF),
  embeds every document once (cached under the dataset's folder by its settings); then the same
  C choice, calibration and refit as XR-Linear with the refined tree and rankers on
  [TF-IDF ⊕ E] (`fit_concat_rankers`). The final model keeps the siblings' encoder (fine-tuned,
  if at all, on the training documents only); its rankers are refit on training + held-out
  documents, as XR-Linear's are. train_s = fine-tuning + embedding the
  training and held-out documents + final rankers; predict_s = embedding the test documents +
  the rankers' beam search;
- napkinXC: `PLT` (its defaults: logistic loss, liblinear C 10; seed 0) in bench/.venv-peers, on
  its own features (scikit-learn's TfidfVectorizer of the same settings, made in its environment by
  bench/peer_featurize.py; bag-of-words sets: the given counts, l2 rows), never xmc's; its
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
from peer_features import PEERS_PY, link, peer_featurize, write_common  # noqa: E402
TOPK = 20
#: the matrices `prepare` writes, in the order the row functions unpack them
MATRICES = ("X.trn", "Y.trn", "X.dev", "Y.dev", "X.tst", "Y.tst")


def split_parts(ds_dir: Path, seed: int = 0):
    """(dataset, {"trn" | "dev" | "tst": (texts or None, X or None, Y)}, how the held-out part was made):
    the dev split when the dataset has one, else a seeded 10% of train (`train --calibrate`'s slice)."""
    from xmc_core.calibration import holdout_split
    from xmc_core.data import load_dataset

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
    return ds, parts, dev_note


#: version of the cached features (`prepare`)
FEATURES_VERSION = 2


def prepare(ds_dir: Path, out: Path, seed: int = 0) -> dict:
    """X/Y .npz of trn, dev (the dev split, or a seeded 10% of train) and tst (cached), xmc's
    features; and out/common, what napkinXC featurizes from in its own environment."""
    from xmc_core.sparse import l2_normalize_rows
    from xmc_core.tfidf import TfidfParams, TfidfVectorizer

    meta_file = out / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        # before version 2 the cached test and held-out features came from a TF-IDF that lost
        # bigrams on large vocabularies (int32 keys), and no common folder was written
        if meta.get("features_version") == FEATURES_VERSION:
            return meta
    out.mkdir(parents=True, exist_ok=True)
    ds, parts, dev_note = split_parts(ds_dir, seed)
    write_common(out / "common", parts)
    if ds.train.texts is not None:
        vec = TfidfVectorizer(TfidfParams(ngram_range=(1, 2), sublinear_tf=True, min_df=2))
        X = {"trn": vec.fit_transform(parts["trn"][0])}
        X.update({k: vec.transform(parts[k][0]) for k in ("dev", "tst")})
    else:
        X = {k: l2_normalize_rows(parts[k][1]) for k in parts}
    for k in parts:
        smat.save_npz(out / f"X.{k}.npz", smat.csr_matrix(X[k], dtype=np.float32), compressed=False)
        link(out / "common" / f"Y.{k}.npz", out / f"Y.{k}.npz")  # write_common saved them
    meta = {"n_trn": parts["trn"][2].shape[0], "n_dev": parts["dev"][2].shape[0], "n_tst": parts["tst"][2].shape[0],
            "n_labels": ds.n_labels, "n_features": int(X["trn"].shape[1]), "heldout": dev_note,
            "raw_text": ds.train.texts is not None, "features_version": FEATURES_VERSION}
    meta_file.write_text(json.dumps(meta))
    return meta


def load(out: Path, name: str) -> smat.csr_matrix:
    return smat.load_npz(out / f"{name}.npz").tocsr()


def score(system: str, dataset: str, meta: dict, P_tst, Y_tst, cal, counts, extra: dict) -> dict:
    """One benchmark row: ranking P@k, both policies' sets, calibration of the probabilities."""
    from xmc_core.metrics import MetricParams, bucket_ece, calibration_metrics, ranking_metrics, set_report

    extra = dict(extra)
    row = {k: extra.pop(k, None) for k in ("threads", "train_s", "predict_s", "peak_rss_mb")}

    Pp = cal.proba(P_tst)
    micro = set_report(Y_tst, cal.decide(Pp, "micro"), counts)
    macro = set_report(Y_tst, cal.decide(Pp, "macro"), counts)
    raw = P_tst.copy()
    raw.data = np.clip(raw.data, 0.0, 1.0)
    cm, cm_raw = calibration_metrics(Y_tst, Pp), calibration_metrics(Y_tst, raw)
    # per bucket as `xmc evaluate` reports it
    by_bucket = {f"{b}_{tag}": round(v, 2) for tag, M in (("ece", Pp), ("ece_raw", raw))
                 for b, v in bucket_ece(Y_tst, M, counts).items()}
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
          **{f"{b}_labels": int(micro[f"{b}_labels"]) for b in ("frequent", "few", "zero")}, **by_bucket,
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


def best_sibling(by_c: dict, Ydv, counts: np.ndarray):
    """The C whose sibling's calibrated sets did best on the held-out halves (micro-F1; ties: the
    smaller C) and that sibling's calibration on all held-out documents.

    by_c: {C: {"P_dev", "f1", "params", "train_s"}} (`sibling_at_c`). Returns (C, its params, the
    calibration, {"C": [held-out micro-F1, macro-F1 all, macro-F1 present]}, the siblings' seconds).
    """
    from xmc_core.calibration import CalibrationParams, fit_calibration

    best = max(by_c, key=lambda c: (round(by_c[c]["f1"][0], 2), -c))
    cal = fit_calibration(by_c[best]["P_dev"], Ydv, counts, CalibrationParams(topk=TOPK), info={"source": "held-out"})
    heldout_by_c = {f"{c:g}": [round(v, 2) for v in by_c[c]["f1"]] for c in by_c}
    return best, by_c[best]["params"], cal, heldout_by_c, sum(v["train_s"] for v in by_c.values())


def encoder_embeddings(ds_dir: Path, out: Path, params, threads: int) -> dict:
    """The encoder's embeddings of the trn, dev and tst documents, the encoder first fine-tuned on
    the trn documents alone when `params.finetune.steps_per_level` > 0, so no part of the scoring
    model has seen a held-out document. Cached under out/encoder-<settings hash>/ with the seconds
    each step took (a cached run reports those seconds, and says it was cached).

    Returns {"E": {part: N × H float32 (l2 rows)}, "finetune_s": s, "embed_s": {part: s},
    "device": str, "cached": bool}.
    """
    import hashlib

    import torch

    from xmc_core.encoder import encode
    from xmc_core.xtransformer import fit_encoder

    steps = params.finetune.steps_per_level
    # the sections that shape the embeddings (fine-tuning and its TF-IDF matcher too), threads aside
    sections = ("encoder", "finetune", "pifa", "tree", "ranker") if steps > 0 else ("encoder",)
    full = params.to_dict()
    settings = {sec: {k: v for k, v in full[sec].items() if k != "threads"} for sec in sections}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    cache = out / f"encoder-{key}"
    if (cache / "times.json").is_file():
        times = json.loads((cache / "times.json").read_text())
        E = {k: np.load(cache / f"E.{k}.npy") for k in ("trn", "dev", "tst")}
        return {"E": E, **times, "cached": True}
    torch.set_num_threads(threads)
    _, parts, _ = split_parts(ds_dir)
    texts = {k: parts[k][0] for k in parts}
    t0 = time.perf_counter()
    if steps > 0:
        tokenizer, encoder, _, _, device = fit_encoder(texts["trn"], load(out, "X.trn"), load(out, "Y.trn"), params)
    else:
        from xmc_core.encoder import load_encoder, pick_device
        tokenizer, encoder = load_encoder(params.encoder)
        device = pick_device(params.encoder.device)
    finetune_s = time.perf_counter() - t0 if steps > 0 else 0.0
    E, embed_s = {}, {}
    for k in ("trn", "dev", "tst"):
        t0 = time.perf_counter()
        E[k] = encode(encoder, tokenizer, texts[k], params.encoder, device)
        embed_s[k] = time.perf_counter() - t0
        print(f"[{ds_dir.name}] embedded {k}: {E[k].shape} in {embed_s[k]:.1f}s", file=sys.stderr, flush=True)
    times = {"finetune_s": finetune_s, "embed_s": embed_s, "device": device, "settings": settings}
    cache.mkdir(parents=True, exist_ok=True)
    for k in E:
        np.save(cache / f"E.{k}.npy", E[k])
    (cache / "times.json").write_text(json.dumps(times))
    return {"E": E, **times, "cached": False}


def xr_transformer_row(name: str, system: str, data_root: Path, out: Path, meta: dict, threads: int,
                       overrides: dict, c_grid: list[float], data: dict, counts: np.ndarray) -> dict:
    """The XR-Transformer under the same protocol as XR-Linear: its encoder (pretrained, or
    fine-tuned on the training documents) embeds every document once; per C of the grid a sibling
    (refined tree + rankers on [TF-IDF ⊕ E] of the training documents) scores the held-out ones,
    the best C's scores are calibrated, and the final rankers train on training + held-out
    documents with the same encoder. train_s = fine-tuning + embedding the training and held-out
    documents + the final rankers; predict_s = embedding the test documents + the rankers."""
    from xmc_core.xtransformer import XTransformerParams, concat_features, fit_concat_rankers, project

    t = {"threads": threads}
    base = XTransformerParams().merged(overrides).merged({"ranker": t, "tree": t, "encoder": t, "finetune": t})
    if system == "xr-transformer-pretrained":
        base = base.merged({"finetune": {"steps_per_level": 0}})
    emb = encoder_embeddings(data_root / name, out, base, threads)
    E = emb["E"]
    Xtr, Ytr, Xdv, Ydv, Xte, Yte = (data[k] for k in MATRICES)

    def fit(params, X, Eb, Y):
        t0 = time.perf_counter()
        _, ranker, _, projection = fit_concat_rankers(X, Eb, Y, params)
        return ranker, projection, time.perf_counter() - t0

    by_c = {}
    for c in c_grid:
        params = base.merged({"ranker": {"Cp": c, "Cn": c}})
        ranker, projection, secs = fit(params, Xtr, E["trn"], Ytr)
        P_dev = ranker.predict(concat_features(Xdv, project(E["dev"], projection)), only_topk=TOPK)
        by_c[c] = {"P_dev": P_dev, "f1": heldout_halves_f1(P_dev, Ydv, counts), "params": params, "train_s": secs}
        print(f"[{name}] {system} C={c:g}: held-out halves micro/macro-F1 {by_c[c]['f1']}", file=sys.stderr, flush=True)
    best, params, cal, heldout_by_c, sibling_s = best_sibling(by_c, Ydv, counts)
    del by_c
    ranker, projection, rankers_s = fit(params, smat.vstack([Xtr, Xdv], format="csr"),
                                        np.vstack([E["trn"], E["dev"]]), smat.vstack([Ytr, Ydv], format="csr"))
    t0 = time.perf_counter()
    P = ranker.predict(concat_features(Xte, project(E["tst"], projection)), only_topk=TOPK)
    predict_s = time.perf_counter() - t0 + emb["embed_s"]["tst"]
    encoder_s = emb["finetune_s"] + emb["embed_s"]["trn"] + emb["embed_s"]["dev"]
    label = "xmc xr-transformer" + (" (pretrained)" if system == "xr-transformer-pretrained" else "")
    return score(label, name, meta, P, Yte, cal, counts, {
        "threads": threads, "train_s": round(encoder_s + rankers_s, 2), "predict_s": round(predict_s, 2),
        "sibling_train_s": round(sibling_s, 2), "ranker_C": best, "heldout_micro_macro_all_macro_f1_by_C": heldout_by_c,
        "finetune_s": round(emb["finetune_s"], 2), "embed_s": {k: round(v, 2) for k, v in emb["embed_s"].items()},
        "rankers_s": round(rankers_s, 2), "encoder_cached": emb["cached"], "device": emb["device"],
        "params": params.to_dict(), "calibration": "isotonic by frequency group"})


def run_dataset(name: str, data_root: Path, threads: int, preset: str, c_grid: list[float],
                systems: list[str], xrt_overrides: dict) -> list[dict]:
    """Every system's rows on one dataset, in the order xr-linear, xr-transformer(s), napkinXC."""
    out = REPO / "bench" / "out" / "data" / f"{name}-sets"
    t0 = time.perf_counter()
    meta = prepare(data_root / name, out)
    print(f"[{name}] features ready in {time.perf_counter() - t0:.1f}s: {meta}", file=sys.stderr, flush=True)
    data = {k: load(out, k) for k in MATRICES}
    counts = np.diff(smat.csc_matrix(data["Y.trn"]).indptr)
    names = [str(j) for j in range(data["Y.trn"].shape[1])]
    rows = []
    if "xr-linear" in systems:
        rows += xr_linear_rows(name, meta, threads, preset, c_grid, data, counts, names)
    for system in [s for s in systems if s.startswith("xr-transformer")]:
        if meta.get("raw_text") is False:
            print(f"[{name}] {system}: skipped, the dataset has no raw text", file=sys.stderr, flush=True)
            continue
        rows.append(xr_transformer_row(name, system, data_root, out, meta, threads, xrt_overrides, c_grid, data,
                                       counts))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if "napkinxc" in systems:
        rows += napkinxc_rows(name, out, meta, threads, data, counts)
    return rows


def xr_linear_rows(name: str, meta: dict, threads: int, preset: str, c_grid: list[float], data: dict,
                   counts: np.ndarray, names: list[str]) -> list[dict]:
    """xmc's XR-Linear row (see the module docstring's protocol)."""
    from xmc_core.model import train_xr_linear
    from xmc_core.presets import preset_overrides

    Xtr, Ytr, Xdv, Ydv, Xte, Yte = (data[k] for k in MATRICES)
    rows = []
    # xmc: per C of the grid, a sibling trained on the training documents scores the held-out ones;
    # the C whose calibrated sets do best on the held-out halves (micro-F1) is kept, its sibling's
    # scores on all held-out documents are calibrated, and the final model trains on both
    base = preset_overrides(preset, {"ranker": {"threads": threads}, "tree": {"threads": threads}})
    by_c = {}
    for c in c_grid:
        by_c[c] = sibling_at_c(base, c, Xtr, Ytr, Xdv, Ydv, counts, names)
        print(f"[{name}] C={c:g}: held-out halves micro/macro-F1 {by_c[c]['f1']}", file=sys.stderr, flush=True)
    best, params, cal, heldout_by_c, sibling_s = best_sibling(by_c, Ydv, counts)
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
    return rows


def napkinxc_rows(name: str, out: Path, meta: dict, threads: int, data: dict, counts: np.ndarray) -> list[dict]:
    """napkinXC's PLT rows, with its own probabilities and with our isotonic map on them."""
    from xmc_core.calibration import CalibrationParams, fit_calibration

    Xtr, Ytr, Xdv, Ydv, Xte, Yte = (data[k] for k in MATRICES)
    rows = []
    # napkinXC, the same protocol
    npz = out / "napkinxc_proba.npz"
    # its own features (scikit-learn's TF-IDF in its environment), never xmc's matrices
    feats = peer_featurize(out / "common", out / "sklearn")
    proc = subprocess.run([str(PEERS_PY), str(REPO / "bench" / "peer_proba.py"), "--data", str(out / "sklearn"),
                           "--out", str(npz),
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
            "features": feats["features"], "featurize_s": feats["featurize_s"],
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
    ap.add_argument("--systems", nargs="+", default=["xr-linear", "napkinxc"],
                    choices=["xr-linear", "napkinxc", "xr-transformer-pretrained", "xr-transformer"],
                    help="systems compared (default: xr-linear napkinxc). xr-transformer-pretrained: the encoder "
                         "as downloaded; xr-transformer: fine-tuned on the training documents first")
    ap.add_argument("--xrt-params", default="{}", metavar="JSON",
                    help="XTransformerParams overrides for the xr-transformer systems, e.g. "
                         "'{\"encoder\": {\"precision\": \"bf16\"}}'")
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
            rows += run_dataset(name, Path(args.data_root), args.threads, args.preset, args.c_grid, args.systems,
                                json.loads(args.xrt_params))
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
