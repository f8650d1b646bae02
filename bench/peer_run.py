#!/usr/bin/env python3
"""Train + evaluate one peer XMC library on .npz data, print ONE JSON line on stdout.

Run with the peers venv (see bench/setup_peers.sh):

    bench/.venv-peers/bin/python bench/peer_run.py --peer pecos \
        --train-X X.trn.npz --train-Y Y.trn.npz --test-X X.tst.npz --test-Y Y.tst.npz \
        --threads 8 [--beam-size 10] [--model-dir DIR]

Inputs: scipy.sparse save_npz files; X float32 CSR (rows l2-normalized), Y binary CSR N x L.

Peers (library defaults, only threads / beam size set):
  pecos    libpecos XR-Linear: PIFA label embedding (LabelEmbeddingFactory.create method="pifa"),
           hierarchical k-means tree (Indexer.gen, nr_splits=16, max_leaf_size=100),
           XLinearModel.train with default TrainParams, beam_size baked into the model; the model
           is saved and re-loaded with is_predict_only=True (what pecos.xmc.xlinear.predict does)
           before the timed prediction, only_topk=10, default post_processor l3-hinge.
           --pecos-predict in-memory predicts with the Python model instead (much slower).
  omikuji  omikuji.Model.default_hyper_param() (Parabel-like, 3 trees), trained via
           Model.train_on_data on a temp file in the XC text format (omikuji's Python API only
           trains from a file). Prediction is one row per Model.predict call; rows are spread
           over --threads Python threads (the cffi call releases the GIL).
  napkinxc napkinxc.models.PLT defaults (hierarchical k-means, arity 2, max_leaves 100,
           liblinear log loss, exact tree search).
--seed (default 0) seeds PECOS's k-means and napkinXC's tree; omikuji's Python API takes no seed
(its clustering draws from an unseeded generator, so its runs differ by themselves).

Output JSON keys: peer, train_s (training time, data loading excluded), predict_s, peak_rss_mb
(this process's own peak, `xmc_core.memory.peak_rss_mb`), p@1, p@3, p@5 (percent; over ALL test
rows, a row without labels counts 0), n_test, plus a few extras (n_train, n_labels, threads,
beam_size, version, ...).
Everything the peers print goes to stderr so stdout stays a single JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timing import timed_predictions  # noqa: E402  (bench/timing.py: standard library only)

from xmc_core.memory import peak_rss_mb  # noqa: E402  (standard library only)

TOPK = 10


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def stdout_to_stderr():
    """Redirect fd 1 (incl. C/Rust library output) to stderr while peers run."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def load_X(path: str) -> sp.csr_matrix:
    X = sp.load_npz(path).tocsr().astype(np.float32)
    X.sort_indices()
    return X


def load_Y(path: str) -> sp.csr_matrix:
    Y = sp.load_npz(path).tocsr().astype(np.float32)
    Y.data[:] = 1.0
    Y.eliminate_zeros()
    Y.sort_indices()
    return Y


def topk_from_score_csr(S: sp.csr_matrix, k: int) -> list[np.ndarray]:
    """Per row, label ids of the k highest scores (descending)."""
    S = S.tocsr()
    out = []
    for i in range(S.shape[0]):
        lo, hi = S.indptr[i], S.indptr[i + 1]
        idx, val = S.indices[lo:hi], S.data[lo:hi]
        order = np.argsort(-val, kind="stable")[:k]
        out.append(np.asarray(idx[order], dtype=np.int64))
    return out


def precision_at(preds: list, Y: sp.csr_matrix, ks=(1, 3, 5)) -> dict:
    """P@k in percent, averaged over all rows of Y (rows without labels count 0)."""
    n = Y.shape[0]
    assert len(preds) == n, (len(preds), n)
    hits = np.zeros((n, max(ks)), dtype=np.float64)
    for i in range(n):
        truth = set(Y.indices[Y.indptr[i] : Y.indptr[i + 1]].tolist())
        for j, lab in enumerate(list(preds[i])[: max(ks)]):
            if int(lab) in truth:
                hits[i, j] = 1.0
    cum = hits.cumsum(axis=1)
    return {f"p@{k}": round(100.0 * float(cum[:, k - 1].mean()) / k, 4) for k in ks}


def _version(dist: str) -> str:
    try:
        import importlib.metadata as md

        return md.version(dist)
    except Exception:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------- peers
def run_pecos(Xtr, Ytr, Xte, args, info: dict):
    from pecos.xmc import Indexer, LabelEmbeddingFactory
    from pecos.xmc.xlinear.model import XLinearModel

    info["version"] = _version("libpecos")
    threads = args.threads
    Y_csc = Ytr.tocsc().astype(np.float32)  # XLinearModel.train expects csc Y (load_label_matrix for_training)

    t0 = time.perf_counter()
    label_feat = LabelEmbeddingFactory.create(Y_csc, Xtr, method="pifa", threads=threads)
    t1 = time.perf_counter()
    cluster_chain = Indexer.gen(
        label_feat,
        indexer_type="hierarchicalkmeans",
        nr_splits=16,
        max_leaf_size=100,
        threads=threads,
        seed=args.seed,
    )
    t2 = time.perf_counter()
    # Same construction as pecos.xmc.xlinear.train (the CLI): defaults + threads.
    train_params = XLinearModel.TrainParams.from_dict({"threads": threads}, recursive=True)
    pred_params = XLinearModel.PredParams.from_dict({}, recursive=True)
    xlm = XLinearModel.train(
        Xtr,
        Y_csc,
        C=cluster_chain,
        train_params=train_params,
        pred_params=pred_params,
        pred_kwargs={"beam_size": args.beam_size},
    )
    t3 = time.perf_counter()
    info["train_s"] = t3 - t0
    info["train_detail_s"] = {"pifa": round(t1 - t0, 4), "indexer": round(t2 - t1, 4), "xlinear": round(t3 - t2, 4)}
    info["tree_depth"] = len(cluster_chain)

    if args.pecos_predict == "in-memory":
        model = xlm
    else:
        # PECOS's own inference path (pecos.xmc.xlinear.predict): save, then load in C++
        # predict-only mode (chunked weight matrices). ~8x faster than predicting with the
        # freshly trained in-memory Python model on bibtex, identical scores. The beam size
        # is baked into the saved model (pred_kwargs above); save/load time is not in predict_s.
        tmpdir = None if args.model_dir else tempfile.mkdtemp(prefix="pecos_")
        mdir = args.model_dir or tmpdir
        try:
            t0 = time.perf_counter()
            xlm.save(mdir)
            t1 = time.perf_counter()
            model = XLinearModel.load(mdir, is_predict_only=True)
            t2 = time.perf_counter()
            info["save_s"], info["load_predict_only_s"] = round(t1 - t0, 4), round(t2 - t1, 4)
        finally:
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)
    info["pecos_predict"] = args.pecos_predict

    # a predict-only model has the beam size baked in (pred_kwargs above)
    beam = {} if model.is_predict_only else {"beam_size": args.beam_size}

    def pred(X):
        return topk_from_score_csr(model.predict(X, only_topk=TOPK, threads=threads, **beam), TOPK)

    preds, info["predict_s"], info["predict_runs_s"] = timed_predictions(pred, Xte, args.predict_repeats)

    if args.model_dir and not os.path.exists(os.path.join(args.model_dir, "param.json")):
        xlm.save(args.model_dir)
    return preds


def write_xc_file(path: str, X: sp.csr_matrix, Y: sp.csr_matrix) -> None:
    """Write the XC repository text format omikuji reads: 'N F L' then 'l1,l2 f:v f:v'.

    omikuji splits each line on single spaces: the first token is the label field
    (empty for label-less rows, i.e. the line starts with a space), every further
    token must be a valid 'f:v' pair, so no trailing / double spaces.
    """
    with open(path, "w", encoding="ascii") as f:
        f.write(f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}\n")
        for i in range(X.shape[0]):
            labs = ",".join(map(str, Y.indices[Y.indptr[i] : Y.indptr[i + 1]].tolist()))
            lo, hi = X.indptr[i], X.indptr[i + 1]
            feats = " ".join(f"{j}:{v:.8g}" for j, v in zip(X.indices[lo:hi].tolist(), X.data[lo:hi].tolist()))
            f.write(labs + (" " + feats if feats else "") + "\n")


def run_omikuji(Xtr, Ytr, Xte, args, info: dict):
    import omikuji

    info["version"] = _version("omikuji")
    threads = args.threads
    tmpdir = tempfile.mkdtemp(prefix="omikuji_")
    try:
        path = os.path.join(tmpdir, "train.txt")
        t0 = time.perf_counter()
        write_xc_file(path, Xtr, Ytr)
        info["write_trainfile_s"] = round(time.perf_counter() - t0, 4)  # not part of train_s

        hp = omikuji.Model.default_hyper_param()
        info["hyper_param"] = {
            k: getattr(hp, k)
            for k in ("n_trees", "min_branch_size", "max_depth", "centroid_threshold", "collapse_every_n_layers")
            if hasattr(hp, k)
        }
        # NOTE: train_on_data parses the text file itself (fast, multi-threaded Rust);
        # that parse cannot be separated out through the Python API, so it is inside train_s.
        t0 = time.perf_counter()
        model = omikuji.Model.train_on_data(path, hp, n_threads=threads)
        info["train_s"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    model.init_prediction_thread_pool(threads)
    rows = [
        list(zip(Xte.indices[Xte.indptr[i] : Xte.indptr[i + 1]].tolist(), Xte.data[Xte.indptr[i] : Xte.indptr[i + 1]].tolist()))
        for i in range(Xte.shape[0])
    ]  # input conversion: not timed (counterpart of data loading)

    def pred_one(fv):
        return [lab for lab, _ in model.predict(fv, beam_size=args.beam_size, top_k=TOPK)]

    def pred(rs):
        if threads > 1:
            with ThreadPoolExecutor(max_workers=threads) as ex:
                return list(ex.map(pred_one, rs, chunksize=64))
        return [pred_one(fv) for fv in rs]

    preds, info["predict_s"], info["predict_runs_s"] = timed_predictions(pred, rows, args.predict_repeats)

    if args.model_dir:
        os.makedirs(args.model_dir, exist_ok=True)
        model.save(args.model_dir)
    return preds


def run_napkinxc(Xtr, Ytr, Xte, args, info: dict):
    from napkinxc.models import PLT

    info["version"] = _version("napkinxc")
    threads = args.threads
    tmpdir = None
    if args.model_dir:
        out = args.model_dir
        os.makedirs(out, exist_ok=True)
    else:
        tmpdir = tempfile.mkdtemp(prefix="napkinxc_")
        out = tmpdir
    try:
        # napkinxc writes the model into `output` during fit (part of train_s).
        model = PLT(out, threads=threads, seed=args.seed)
        t0 = time.perf_counter()
        model.fit(Xtr, Ytr)
        info["train_s"] = time.perf_counter() - t0

        preds, info["predict_s"], info["predict_runs_s"] = timed_predictions(
            lambda X: model.predict(X, top_k=TOPK), Xte, args.predict_repeats)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return preds


PEERS = {"pecos": run_pecos, "omikuji": run_omikuji, "napkinxc": run_napkinxc}


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", required=True, choices=sorted(PEERS))
    ap.add_argument("--train-X", required=True)
    ap.add_argument("--train-Y", required=True)
    ap.add_argument("--test-X", required=True)
    ap.add_argument("--test-Y", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--beam-size", type=int, default=10, help="pecos/omikuji beam (napkinxc default uses exact search)")
    ap.add_argument("--seed", type=int, default=0,
                    help="PECOS's k-means seed, napkinXC's seed (omikuji takes none)")
    ap.add_argument("--model-dir", default=None, help="optionally save the trained model here")
    ap.add_argument("--predict-repeats", type=int, default=3,
                    help="timed predictions after an untimed warm-up on 64 rows; predict_s is their median")
    ap.add_argument(
        "--pecos-predict",
        choices=("predict-only", "in-memory"),
        default="predict-only",
        help="pecos only: predict with the model re-loaded in C++ predict-only mode as the pecos CLI does "
        "(default), or with the in-memory Python model returned by XLinearModel.train",
    )
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be >= 1")

    Xtr, Ytr = load_X(args.train_X), load_Y(args.train_Y)
    Xte, Yte = load_X(args.test_X), load_Y(args.test_Y)
    if Xtr.shape[0] != Ytr.shape[0] or Xte.shape[0] != Yte.shape[0]:
        ap.error("X/Y row counts differ")
    if Xtr.shape[1] != Xte.shape[1]:
        # pad the narrower one so both peers see the same feature space
        nf = max(Xtr.shape[1], Xte.shape[1])
        Xtr = sp.csr_matrix((Xtr.data, Xtr.indices, Xtr.indptr), shape=(Xtr.shape[0], nf))
        Xte = sp.csr_matrix((Xte.data, Xte.indices, Xte.indptr), shape=(Xte.shape[0], nf))
    if Ytr.shape[1] != Yte.shape[1]:
        nl = max(Ytr.shape[1], Yte.shape[1])
        Ytr = sp.csr_matrix((Ytr.data, Ytr.indices, Ytr.indptr), shape=(Ytr.shape[0], nl))
        Yte = sp.csr_matrix((Yte.data, Yte.indices, Yte.indptr), shape=(Yte.shape[0], nl))

    info: dict = {}
    rss_loaded = peak_rss_mb()
    with stdout_to_stderr():
        preds = PEERS[args.peer](Xtr, Ytr, Xte, args, info)
    metrics = precision_at(preds, Yte)

    result = {
        "peer": args.peer,
        "train_s": round(info.pop("train_s"), 4),
        "predict_s": round(info.pop("predict_s"), 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **metrics,
        "n_test": int(Xte.shape[0]),
        "n_train": int(Xtr.shape[0]),
        "n_labels": int(Ytr.shape[1]),
        "threads": args.threads,
        "beam_size": args.beam_size,
        "seed": None if args.peer == "omikuji" else args.seed,
        "rss_after_load_mb": round(rss_loaded, 1),
        **info,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
