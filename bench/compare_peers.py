#!/usr/bin/env python3
"""xmc XR-Linear vs PECOS (and optionally omikuji, napkinXC), side by side, same data and threads.

    .venv/bin/python bench/compare_peers.py [--datasets bibtex delicious reuters-21578 eurlex57k]
        [--peers pecos omikuji napkinxc] [--xmc-presets default accurate accurate-text] [--threads 2]
        [--data-root ../shared/data] [--seeds 0 100 200]

xmc runs once per preset (rows "xmc" and "xmc-<preset>"), once per seed; a preset with an embedding block
(accurate-text) gets the encoder's embeddings of the raw texts, computed once per dataset and
reported apart as embed_s (peers and the other presets get the TF-IDF alone). Each row's train×,
pred× and rss× are ratios to PECOS; best1 is its P@1 minus the best peer's.

With --seeds S1 S2 ..., every system trains once per seed (xmc: the tree's and rankers' seed, an
ensemble's members seed + t, so spread the seeds wider than the ensemble size; PECOS: its k-means
seed; napkinXC: its seed; omikuji takes none, so its runs differ by themselves) and each row holds
the means over the seeds of P@k, seconds and peak RSS, with every seed's own values in
extra.per_seed and the P@1 standard deviation printed as sd1: differences under a point are judged
on such means.

Features (--features):
  own (default)  each system featurizes as its own users would, in its own environment: xmc with
                 its TfidfVectorizer (raw text: word 1-2-gram TF-IDF, sublinear tf, min_df 2, l2 rows,
                 fitted on train), the peers with scikit-learn's TfidfVectorizer of the same settings
                 in bench/.venv-peers (bench/peer_featurize.py). Bag-of-words datasets: the given
                 counts, rows l2-normalized, for every system. A peer never sees xmc's matrix.
  shared         every system gets xmc's matrices: a comparison of the learners alone. Rows are
                 labelled so (bench "xr-linear-vs-peers-shared-features", extra.features).
Either way each system trains and predicts in its own process on .npz matrices (peers in
bench/.venv-peers, see setup_peers.sh), so training time, prediction time and peak RSS are
measured the same way; featurization is timed apart (extra.featurize_s, once per dataset and
featurizer) and is in neither train_s nor predict_s.
Prints a table, appends its rows to the DuckDB `benchmark` table (data/xmc.duckdb) and exports
them to bench/results/<run_id>.csv and .md (bench/record.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from peer_features import PEERS_PY, link, peer_featurize, write_common  # noqa: E402


def featurize(ds_dir: Path, out: Path) -> dict:
    """xmc's features of a dataset (cached: out/xmc/{X,Y}.{trn,tst}.npz) and what the peers
    featurize from (out/common: Y, and the texts or the bag-of-words counts as xmc's reader read
    them). Returns the meta of xmc's features (shapes, featurize_s)."""
    import numpy as np
    import scipy.sparse as smat

    from xmc_core.data import load_dataset
    from xmc_core.sparse import l2_normalize_rows
    from xmc_core.tfidf import TfidfParams, TfidfVectorizer

    common, mine = out / "common", out / "xmc"
    meta_file = mine / "meta.json"
    files = [common / f"{k}.npz" for k in ("Y.trn", "Y.tst")] + [mine / f"{k}.npz" for k in ("X.trn", "X.tst")]
    if meta_file.is_file() and all(f.is_file() for f in files):
        return json.loads(meta_file.read_text())
    common.mkdir(parents=True, exist_ok=True)
    mine.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(ds_dir, splits=("train", "test"))
    t0 = time.perf_counter()
    if ds.train.texts is not None:
        vec = TfidfVectorizer(TfidfParams(ngram_range=(1, 2), sublinear_tf=True, min_df=2))
        Xtr = vec.fit_transform(ds.train.texts)
        Xte = vec.transform(ds.test.texts)
        kind = "xmc-tfidf"
    else:
        Xtr, Xte = l2_normalize_rows(ds.train.X), l2_normalize_rows(ds.test.X)
        kind = "bow-l2"
    featurize_s = round(time.perf_counter() - t0, 2)
    for key, M in (("X.trn", Xtr), ("X.tst", Xte)):
        smat.save_npz(mine / f"{key}.npz", smat.csr_matrix(M, dtype=np.float32), compressed=False)
    write_common(common, {k: (split.texts, split.X, split.Y) for k, split in (("trn", ds.train), ("tst", ds.test))})
    for key in ("Y.trn", "Y.tst"):  # each features folder complete
        link(common / f"{key}.npz", mine / f"{key}.npz")
    meta = {"n_train": ds.train.n, "n_test": ds.test.n, "n_labels": ds.n_labels, "n_features": int(Xtr.shape[1]),
            "featurize_s": featurize_s, "features": kind, "layout": ds.layout}
    meta_file.write_text(json.dumps(meta))
    return meta


def embed(ds_dir: Path, out: Path, encoder: str, max_length: int, threads: int) -> dict:
    """Write E.trn.npy / E.tst.npy, the encoder's pooled embeddings of a raw-text dataset's texts
    (cached per encoder and length), for the presets with an embedding block; returns their
    meta (embed_s: the encoder's seconds on train + test, on `threads` threads).

    The encoder runs in a child process of its own: Linux keeps a process's peak RSS across
    exec, so every system started from this process afterwards would report the encoder's
    peak as its own."""
    import multiprocessing

    tag = f"{Path(encoder).name}-{max_length}"
    meta_file = out / f"E-{tag}.json"
    if not meta_file.is_file():
        proc = multiprocessing.get_context("spawn").Process(
            target=_embed_files, args=(ds_dir, out, encoder, max_length, threads, tag))
        proc.start()
        proc.join()
        if proc.exitcode != 0 or not meta_file.is_file():
            raise SystemExit(f"embedding {ds_dir} with {encoder} failed (exit {proc.exitcode})")
    return json.loads(meta_file.read_text())


def _embed_files(ds_dir: Path, out: Path, encoder: str, max_length: int, threads: int, tag: str) -> None:
    import numpy as np

    from xmc_core.data import load_dataset
    from xmc_core.encoder import encode, load_encoder
    from xmc_core.ensemble import EnsembleParams, encoder_params

    meta_file = out / f"E-{tag}.json"
    ep = encoder_params(EnsembleParams(embedding=encoder, embedding_max_length=max_length))
    ep.threads = threads
    ds = load_dataset(ds_dir, splits=("train", "test"))
    if ds.train.texts is None:
        raise SystemExit(f"{ds_dir}: no raw texts to embed (a preset with an embedding block needs them)")
    t0 = time.perf_counter()
    tokenizer, model = load_encoder(ep)
    for key, split in (("trn", ds.train), ("tst", ds.test)):
        np.save(out / f"E-{tag}.{key}.npy", encode(model, tokenizer, split.texts, ep))
    meta = {"encoder": encoder, "max_length": max_length, "embed_s": round(time.perf_counter() - t0, 2),
            "tag": tag}
    meta_file.write_text(json.dumps(meta))


def run_system(system: str, data: Path, threads: int, params: str, save_ranker: Path | None = None,
               ds_dir: Path | None = None, predict_repeats: int = 3, seed: int | None = None) -> dict:
    """One system's JSON result line: "xmc" (default preset), "xmc-<preset>", or a peer name, on
    the features and labels {X,Y}.{trn,tst}.npz in `data`;
    its predict_s is the median of `predict_repeats` timed predictions after a warm-up; `seed`
    (None: each system's default) goes to its --seed."""
    common = ["--train-X", str(data / "X.trn.npz"), "--train-Y", str(data / "Y.trn.npz"),
              "--test-X", str(data / "X.tst.npz"), "--test-Y", str(data / "Y.tst.npz"), "--threads", str(threads),
              "--predict-repeats", str(predict_repeats)] + ([] if seed is None else ["--seed", str(seed)])
    emb = None
    if system == "xmc" or system.startswith("xmc-"):
        from xmc_core.presets import preset_overrides

        preset = system[4:] or "default"
        cmd = [sys.executable, str(REPO / "bench" / "ours_run.py"), *common, "--params", params, "--preset", preset]
        ens = preset_overrides(preset, json.loads(params)).get("ensemble") or {}
        if ens.get("embedding"):
            emb = embed(ds_dir, data, ens["embedding"], ens.get("embedding_max_length", 128), threads)
            cmd += ["--embeddings", str(data / f"E-{emb['tag']}")]
        if save_ranker is not None:
            cmd += ["--save-ranker", str(save_ranker)]
    else:
        if not PEERS_PY.exists():
            raise SystemExit(f"{PEERS_PY} missing: run bash bench/setup_peers.sh first")
        cmd = [str(PEERS_PY), str(REPO / "bench" / "peer_run.py"), "--peer", system, *common]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{system} failed on {data}:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if emb is not None:  # the encoder's time, in neither train_s nor predict_s (features, as TF-IDF)
        out["embed_s"] = emb["embed_s"]
    return out


#: the per-run values a row with several seeds averages (the rest of its extra is the first run's)
SEED_MEAN_KEYS = ("p@1", "p@3", "p@5", "train_s", "predict_s", "peak_rss_mb")


def mean_over_seeds(runs: list[dict], seeds: list[int]) -> dict:
    """One row's result from a system's runs, one per seed: the means of `SEED_MEAN_KEYS`, the
    first run's other fields, and, with more than one seed, "seeds", "per_seed" (each run's
    `SEED_MEAN_KEYS` and seed) and "sd_p@1" (the sample standard deviation of P@1)."""
    import statistics

    if len(runs) == 1:
        return runs[0]
    out = {**runs[0], **{k: statistics.fmean(r[k] for r in runs) for k in SEED_MEAN_KEYS}}
    out["seeds"] = list(seeds)
    out["per_seed"] = [{"seed": seed, **{k: r[k] for k in SEED_MEAN_KEYS}} for seed, r in zip(seeds, runs)]
    out["sd_p@1"] = statistics.stdev(r["p@1"] for r in runs)
    out.pop("seed", None)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["bibtex", "delicious", "reuters-21578", "eurlex57k"])
    ap.add_argument("--peers", nargs="+", default=["pecos"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    ap.add_argument("--params", default="{}", help="xmc XRLinearParams overrides (JSON)")
    ap.add_argument("--xmc-presets", nargs="+", default=["default"],
                    help="xmc presets to run (xmc_core/presets.py); rows 'xmc' (default) and 'xmc-<preset>'")
    ap.add_argument("--predict-repeats", type=int, default=3,
                    help="timed predictions per system after an untimed warm-up; predict_s is their median "
                         "(1 saves time where only accuracy is at stake: omikuji predicts yso-finna-en in ~4 min)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="train every system once per seed; rows hold the means (default: one run, "
                         "each system's own seed)")
    ap.add_argument("--features", choices=("own", "shared"), default="own",
                    help="own: each system featurizes as its users would (xmc its TF-IDF, the peers "
                         "scikit-learn's, in their environment); shared: every system gets xmc's matrices "
                         "(the learners alone; rows labelled shared-features)")
    ap.add_argument("--save-rankers", default=None,
                    help="save xmc's ranker of each dataset under DIR/<dataset> (for bench/latency.py)")
    args = ap.parse_args(argv)

    from record import Run

    run = Run("peers", settings=vars(args))
    run_id = run.run_id
    rows = []
    header = (f"{'dataset':<14} {'system':<12} {'P@1':>6} {'P@3':>6} {'P@5':>6} {'dP@1':>6} {'dP@3':>6} {'dP@5':>6} "
              f"{'train_s':>8} {'pred_s':>7} {'rss_mb':>7} {'train×':>6} {'pred×':>6} {'rss×':>6} {'best1':>6}"
              + (f" {'sd1':>5}" if args.seeds and len(args.seeds) > 1 else ""))
    print("features: " + ("each system its own (xmc: its TF-IDF; peers: scikit-learn's, in their environment)"
                          if args.features == "own" else "SHARED: every system on xmc's matrices (the learners alone)"))
    print(header)
    print("-" * len(header))
    from xmc_core import progress

    xmc_systems = ["xmc" if p == "default" else f"xmc-{p}" for p in args.xmc_presets]
    # each system runs in its own process (its output captured): progress counts finished runs
    seeds = args.seeds or [None]
    bar = progress.task("peers: runs", len(args.datasets) * (len(xmc_systems) + len(args.peers)) * len(seeds),
                        "run")
    for ds in args.datasets:
        data = Path(args.out) / "data" / ds
        meta = featurize(Path(args.data_root) / ds, data)
        features = {s: meta for s in xmc_systems}
        if args.peers:
            peer_meta = (peer_featurize(data / "common", data / "sklearn") if args.features == "own"
                         else {**meta, "features": "shared: " + meta["features"]})
            features.update({p: peer_meta for p in args.peers})
        save = Path(args.save_rankers) / ds if args.save_rankers else None
        results = {}
        for s in [*xmc_systems, *args.peers]:
            feats = data / ("sklearn" if s in args.peers and args.features == "own" else "xmc")
            runs = []
            for seed in seeds:
                runs.append(run_system(s, feats, args.threads, args.params,
                                       save if s == "xmc" and seed == seeds[0] else None,
                                       Path(args.data_root) / ds, args.predict_repeats, seed))
                bar.update()
            results[s] = mean_over_seeds(runs, seeds)
            results[s].update(features=features[s]["features"], featurize_s=features[s]["featurize_s"],
                              n_features=features[s]["n_features"])
        ref = results.get("pecos")
        # the best peer's P@1 (dP@1 and ratios: against PECOS; best1: P@1 minus the best peer's)
        peer_p1 = [r["p@1"] for s, r in results.items() if s in args.peers]
        best = max(peer_p1) if peer_p1 else float("nan")
        for system, r in results.items():
            d = {k: (r[k] - ref[k]) if ref else float("nan") for k in ("p@1", "p@3", "p@5")}
            x = {k: r[k] / ref[k] if ref and ref[k] else float("nan") for k in ("train_s", "predict_s", "peak_rss_mb")}
            print(f"{ds:<14} {system:<12} {r['p@1']:6.2f} {r['p@3']:6.2f} {r['p@5']:6.2f} "
                  f"{d['p@1']:+6.2f} {d['p@3']:+6.2f} {d['p@5']:+6.2f} {r['train_s']:8.2f} {r['predict_s']:7.2f} "
                  f"{r['peak_rss_mb']:7.0f} {x['train_s']:6.2f} {x['predict_s']:6.2f} {x['peak_rss_mb']:6.2f} "
                  f"{r['p@1'] - best:+6.2f}" + (f" {r['sd_p@1']:5.2f}" if "sd_p@1" in r else ""), flush=True)
            rows.append({"bench": "xr-linear-vs-peers" + ("" if args.features == "own" else "-shared-features"),
                         "dataset": ds, "system": system,
                         "threads": args.threads, "n_labels": meta["n_labels"], "n_train": meta["n_train"],
                         "n_test": meta["n_test"], "train_s": r["train_s"], "predict_s": r["predict_s"],
                         "peak_rss_mb": r["peak_rss_mb"], "p1": r["p@1"], "p3": r["p@3"], "p5": r["p@5"],
                         "extra": {k: v for k, v in r.items() if k not in ("p@1", "p@3", "p@5")}})
    bar.close()
    run.finish(args.db, rows)
    print(f"\n{len(rows)} rows appended to {args.db} (table benchmark, run_id {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
