"""A model card: what a model folder holds, read without loading its weights.

`model_card` reads params.json, labels.txt, the tree and weight headers of every ranker/ in the
folder (the model's, or each ensemble member's), the calibration summary and the folder's size,
and, given the DuckDB evaluation history, the latest evaluation of this very model (rows whose
params carry its ``model_sha``). `xmc info` prints it; the Dagster ``rankers`` asset shows it.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as smat

from .folders import folder_bytes
from .model_base import CALIBRATION_DIR, _sha, read_model_meta

__all__ = ["data_fingerprint", "model_card", "card_markdown"]


def data_fingerprint(Y: smat.spmatrix, texts: Sequence[str] | None = None, X: smat.spmatrix | None = None) -> str:
    """Fingerprint of a training set: its documents (texts in order, or X's values) and labels.

    Args:
        Y: N × L labels (the sparsity pattern is hashed).
        texts: N raw documents (hashed in order), or None.
        X: N × D feature matrix (hashed as CSR with sorted indices) when there are no texts.

    Returns:
        16 hex characters of a SHA-256 (str).
    """
    h = hashlib.sha256()
    Y = smat.csr_matrix(Y)
    h.update(np.asarray(Y.shape, np.int64).tobytes())
    h.update(np.asarray(Y.indptr, np.int64).tobytes())
    h.update(np.asarray(Y.indices, np.int64).tobytes())
    if texts is not None:
        for text in texts:
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    elif X is not None:
        X = smat.csr_matrix(X, dtype=np.float32)
        if not X.has_sorted_indices:
            X = X.sorted_indices()
        for part in (np.asarray(X.shape, np.int64), X.indptr.astype(np.int64), X.indices.astype(np.int64), X.data):
            h.update(part.tobytes())
    return h.hexdigest()[:16]


def _npy_shape(fh) -> tuple[int, ...]:
    """Shape of the .npy array an open binary file starts with, from its header only."""
    major, _ = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return tuple(int(v) for v in read(fh)[0])


def _npz_shape(path: Path, key: str) -> tuple[int, ...]:
    """Shape of array `key` in an .npz, read from its header only."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
        return _npy_shape(fh)


def _ranker_summary(folder: Path) -> dict:
    """Levels of one ranker/ folder: nodes and weights (nonzeros) per level, and the beam settings."""
    meta = json.loads((folder / "ranker.json").read_text())
    with np.load(folder / "tree.npz") as arrs:
        depth = int(arrs["depth"][0])
        shapes = [tuple(int(v) for v in arrs[f"C{t}_shape"]) for t in range(depth)]
    levels = []
    for t, (nodes, parents) in enumerate(shapes):
        levels.append({"level": t, "nodes": nodes, "parents": parents,
                       "nnz_W": _npz_shape(folder / f"W{t}.npz", "data")[0]})
    return {"depth": depth, "levels": levels, "pred_params": meta.get("pred_params")}


def _last_evaluation(db: Path, sha: str) -> dict | None:
    """The latest evaluation of the model whose params.json has sha `sha` in DuckDB file `db`."""
    import polars as pl

    from .results_db import read_evaluation

    df = read_evaluation(db)
    if df.is_empty():
        return None
    df = df.filter(pl.col("params").str.contains(f'"model_sha": "{sha}"', literal=True))
    if df.is_empty():
        return None
    last = df.filter(pl.col("run_id") == df.sort("created_at")["run_id"][-1])
    metrics = {f"{r['metric']}@{r['k']}" if r["k"] else r["metric"]: r["value"] for r in last.iter_rows(named=True)}
    first = last.row(0, named=True)
    return {"run_id": first["run_id"], "dataset": first["dataset"], "split": first["split"],
            "created_at": str(first["created_at"]), "metrics": metrics}


def model_card(path: str | Path, db: str | Path | None = None) -> dict:
    """The card of a model folder (no weights are loaded).

    Args:
        path: a model folder xmc wrote (any kind).
        db: a DuckDB evaluation history (`results_db`) to look the model up in, or None.

    Returns:
        JSON-ready dict: model (the folder), method, model_sha, n_labels, n_features, text
        featurizer (vocabulary size), settings (params), training (dataset, data path, n_train,
        seconds, data_fingerprint, run_id), rankers (per ranker/ folder: depth, levels with nodes,
        parents and nnz_W; several for an ensemble), selection (the held-out choice of C, idf
        weights and copies, `selection.select_c`'s report, or None), calibration (threshold,
        held-out F1) or None, size_bytes, files, evaluation_db (the history searched, or None) and last_evaluation
        (None when the history has none of this model).

    Raises:
        ModelFormatError: not a model folder, or of another format version (one line).
    """
    path = Path(path)
    meta = read_model_meta(path)
    info = meta.get("info") or {}
    card = {
        "model": str(path.resolve()),
        "method": meta.get("method"),
        "model_sha": _sha((path / "params.json").read_bytes()),
        "n_labels": meta.get("n_labels"),
        "n_features": meta.get("n_features"),
        "text_featurizer": None,
        "settings": meta.get("params"),
        "training": {k: info.get(k) for k in ("dataset", "data", "n_train", "train_s", "data_fingerprint",
                                              "fingerprint_of", "run_id", "max_rows", "device") if k in info},
        "rankers": [],
        "selection": info.get("selection"),  # what a preset chose on held-out documents (`selection`)
        "calibration": None,
        "label_titles": (path / "label_titles.txt").is_file(),
        "size_bytes": folder_bytes(path),
        "files": sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir()),
        "evaluation_db": None,
        "last_evaluation": None,
    }
    tf = path / "featurizer" / "params.json"
    if tf.is_file():
        idf = path / "featurizer" / "idf.npy"
        with open(idf, "rb") as fh:
            vocabulary = _npy_shape(fh)[0]
        card["text_featurizer"] = {"vocabulary": vocabulary, "params": json.loads(tf.read_text())}
    for ranker_json in sorted(path.rglob("ranker.json"), key=lambda p: (len(p.parts), str(p))):
        summary = _ranker_summary(ranker_json.parent)
        summary["folder"] = str(ranker_json.parent.relative_to(path))
        card["rankers"].append(summary)
    cal = path / CALIBRATION_DIR / "calibration.json"
    if cal.is_file():
        c = json.loads(cal.read_text())
        cinfo = c.get("info", {})
        card["calibration"] = {"method": (c.get("params") or {}).get("method"),
                               "threshold": c.get("threshold"),
                               **{k: cinfo.get(k) for k in ("source", "n_docs", "heldout_micro_f1",
                                                            "heldout_macro_f1", "labels_own_threshold") if k in cinfo}}
    if db is not None:
        card["evaluation_db"] = str(db)
        if Path(db).is_file():
            card["last_evaluation"] = _last_evaluation(Path(db), card["model_sha"])
    return card


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def card_markdown(card: dict) -> str:
    """The card as Markdown (Dagster metadata, and `xmc info` without --json): a header table,
    one table of tree levels per ranker, calibration and the last evaluation.

    Args:
        card: what :func:`model_card` returned.
    """
    t = card.get("training", {})
    rows = [("method", card["method"]), ("labels", card["n_labels"]), ("features", card["n_features"]),
            ("text featurizer", "yes" if card.get("text_featurizer") else "no (feature vectors)"),
            ("dataset", t.get("dataset")), ("training documents", t.get("n_train")),
            ("training time", f"{t['train_s']:.1f} s" if isinstance(t.get("train_s"), (int, float)) else None),
            ("data fingerprint", t.get("data_fingerprint")),
            ("size on disk", _mb(card["size_bytes"])), ("model sha", card["model_sha"]),
            ("folder", card["model"])]
    out = ["| field | value |", "|---|---|"]
    out += [f"| {k} | {'—' if v is None else v} |" for k, v in rows]
    for r in card["rankers"]:
        out += ["", f"**tree** `{r['folder']}` (depth {r['depth']}; beam {(r.get('pred_params') or {}).get('beam_size')})",
                "", "| level | nodes | parents | weights (nnz) |", "|---|---|---|---|"]
        out += [f"| {lv['level']} | {lv['nodes']} | {lv['parents']} | {lv['nnz_W']} |" for lv in r["levels"]]
    sel = card.get("selection")
    if sel:
        ch = sel["chosen"]
        out += ["", f"**held-out selection** ({sel['n_holdout']} documents, {len(sel['candidates'])} candidates): "
                    f"C × {ch['c']}, idf weights {'yes' if ch['idf'] else 'no'}, copies "
                    f"{'yes' if sel.get('disentangle') else 'no'}; mean P@1/3/5 {ch['score']}, reach {ch['reach']}%"]
    cal = card.get("calibration")
    out += ["", "**calibration**: " + ("none yet ('xmc calibrate', train --calibrate or the calibration asset "
                                       "fits one)" if cal is None else
                                       ", ".join(f"{k} {round(v, 4) if isinstance(v, float) else v}"
                                                 for k, v in cal.items()))]
    ev = card.get("last_evaluation")
    if card.get("evaluation_db") is None:
        pass  # not looked up (the Dagster rankers asset: the metrics asset evaluates next)
    elif ev is None:
        out += ["", f"**last evaluation**: none of this model in {card['evaluation_db']}"]
    else:
        m = ev["metrics"]
        shown = ", ".join(f"{k} {m[k]:.2f}" for k in ("p@1", "p@3", "p@5", "ndcg@5") if k in m)
        out += ["", f"**last evaluation**: run {ev['run_id']} on {ev['dataset']} ({ev['split']}, {ev['created_at']}): "
                    f"{shown}"]
    return "\n".join(out)
