"""Why a label came out: the path of clusters down the label tree, each level's score, and the
terms behind each score.

XR-Linear scores a label as the combination (product for the hinge and sigmoid transforms, sum
for the log ones) of the post-processed scores of the nodes on its path:

    s_t = combine(s_{t-1}, pp(z_t)),   z_t = x · w_t + b · w_t[bias]

where x is the document's feature row (TF-IDF, joined with an embedding block for XR-Transformer
and the accurate-text ensemble), w_t the ranker column of the path's node at level t and b the
model's bias. A term j contributes x_j · w_t[j] to z_t, so the contributions and the bias term
sum to z_t exactly; the final s_t is the label's score in `predict`. With label disentanglement a
label has a copy under several clusters: every copy's path is scored and the best one "won" (as
`predict` keeps a label's best copy). An ensemble's score is the weighted mean of its members'
scores, so each member's path is explained.

Cluster names are the titles of the cluster's most frequent training labels.

Source: the beam search of PECOS's ``XLinearModel.predict`` (Yu et al. 2022, JMLR); the term
attribution is exact for a linear scorer (contribution = feature value × weight).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as smat

from .params import ParamsBase
from .xlinear import POST_PROCESSORS, XLinearModel

__all__ = ["ExplainParams", "explain_model", "explain_ranker", "cluster_names", "cluster_table"]

#: labels named in a cluster's name (its most frequent ones)
CLUSTER_NAME_LABELS = 3


@dataclass
class ExplainParams(ParamsBase):
    """What an explanation shows.

    topk: predicted labels explained when no label is named (int >= 1).
    n_terms: terms listed per level, largest contribution first (int >= 1).
    beam_size: the beam used for the prediction that picks the labels (None: the model's).
    """

    topk: int = 5
    n_terms: int = 8
    beam_size: int | None = None

    def __post_init__(self):
        for name in ("topk", "n_terms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ExplainParams.{name}: an integer >= 1, got {value!r}")


def _ranked_members(tree, label_counts: np.ndarray | None):
    """(rank of each label: most frequent first, ties by id; per level t < depth - 1, its L × K_t
    CSC membership)."""
    L = tree.n_labels
    counts = np.zeros(L) if label_counts is None else np.asarray(label_counts, np.float64)
    order = np.lexsort((np.arange(L), -counts))
    rank = np.empty(L, np.int64)
    rank[order] = np.arange(L)
    return rank, [smat.csc_matrix(tree.label_to_level(t)) for t in range(tree.depth - 1)]


def _name(members: np.ndarray, rank: np.ndarray, titles: Sequence[str], k: int) -> str:
    top = members[np.argsort(rank[members], kind="stable")[:k]]
    more = len(members) - len(top)
    return " / ".join(str(titles[i]) for i in top) + (f" (+{more})" if more > 0 else "")


def cluster_names(tree, titles: Sequence[str], label_counts: np.ndarray | None,
                  k: int = CLUSTER_NAME_LABELS) -> list[list[str]]:
    """A name for every node of every level: its `k` most frequent training labels' titles.

    Args:
        tree: a :class:`tree.LabelTree` (a ranker's ``.tree``).
        titles: L label titles (or names).
        label_counts: (L,) training positives per label (None: every label counts the same; the
            order is then by label id).
        k: labels named per cluster.

    Returns:
        One list per level t of K_t names ("title a / title b / title c (+n)"); the last level's
        names are the labels' titles themselves.
    """
    rank, levels = _ranked_members(tree, label_counts)
    names = []
    for M in levels:
        names.append([_name(M.indices[M.indptr[n]:M.indptr[n + 1]], rank, titles, k) for n in range(M.shape[1])])
    names.append([str(t) for t in titles])
    return names


def cluster_table(tree, titles: Sequence[str], label_counts: np.ndarray | None, k: int = 5,
                  max_rows: int | None = None):
    """The clusters of a label tree as a table for people (the Dagster label_tree asset shows it).

    Args:
        tree: a :class:`tree.LabelTree`.
        titles: L label titles (or names).
        label_counts: (L,) training positives per label (None: by label id).
        k: titles listed per cluster (its most frequent labels).
        max_rows: keep the first clusters only, top levels first (None: all).

    Returns:
        polars DataFrame, one row per cluster above the labels: level (0 = the root's children),
        cluster (its number in the level), parent (its number in the level above; -1 at level
        0), labels (count), train_positives (sum of its labels' training positives), top_labels.
    """
    import polars as pl

    rank, levels = _ranked_members(tree, label_counts)
    counts = np.zeros(tree.n_labels) if label_counts is None else np.asarray(label_counts, np.float64)
    rows = {"level": [], "cluster": [], "parent": [], "labels": [], "train_positives": [], "top_labels": []}
    for t, M in enumerate(levels):
        parent = np.full(M.shape[1], -1, np.int64)
        if t > 0:
            C = smat.csr_matrix(tree.C[t])  # K_t × K_{t-1}: each node's parent
            parent = C.indices[C.indptr[:-1]].astype(np.int64)
        for n in range(M.shape[1]):
            if max_rows is not None and len(rows["level"]) >= max_rows:
                break
            members = M.indices[M.indptr[n]:M.indptr[n + 1]]
            rows["level"].append(t)
            rows["cluster"].append(n)
            rows["parent"].append(int(parent[n]))
            rows["labels"].append(len(members))
            rows["train_positives"].append(int(counts[members].sum()))
            rows["top_labels"].append(_name(members, rank, titles, k))
    return pl.DataFrame(rows, schema={"level": pl.Int32, "cluster": pl.Int64, "parent": pl.Int64, "labels": pl.Int64,
                                      "train_positives": pl.Int64, "top_labels": pl.String})


def _column(C: smat.csc_matrix, node: int, parent: int) -> int:
    """The ranker column of (node, parent): W_t's columns follow C's stored entries."""
    lo, hi = C.indptr[parent], C.indptr[parent + 1]
    hit = np.flatnonzero(C.indices[lo:hi] == node)
    return int(lo + hit[0])


def _paths(tree, label: int) -> list[list[int]]:
    """Every root-to-leaf path of `label`, as its node at each level [n_0, ..., n_{d-1} = label]."""
    paths = [[label]]
    for t in range(tree.depth - 1, 0, -1):
        C = smat.csr_matrix(tree.C[t])
        paths = [[int(p)] + path for path in paths for p in C.indices[C.indptr[path[0]]:C.indptr[path[0] + 1]]]
    return paths


def explain_ranker(ranker: XLinearModel, x: smat.csr_matrix, labels: Sequence[int], feature_names: Sequence[str],
                   names: list[list[str]], n_terms: int = 8, n_text_features: int | None = None,
                   post_processor: str | None = None) -> list[dict]:
    """Explain the scores of `labels` for one document's feature row.

    Args:
        ranker: the XLinearModel that scores (a model's, or an ensemble member's).
        x: 1 × D float32 CSR, the document's features as `predict` sees them.
        labels: label ids to explain.
        feature_names: names of the first `n_text_features` columns (the TF-IDF terms).
        names: `cluster_names` of the ranker's tree.
        n_terms: terms listed per level.
        n_text_features: columns that are terms; columns past them are an embedding block whose
            share of each level's score is reported (None: all columns are terms).
        post_processor: a key of `xlinear.POST_PROCESSORS` (None: the model's).

    Returns:
        Per label {"label": id, "score": path score of the winning copy, "copies": number of
        paths, "winning_copy": index, "paths": [{"score", "levels": [{"level", "node", "cluster",
        "raw": z_t, "bias": bias term, "post_processed", "path_score", "terms": [{"term",
        "feature", "weight", "contribution"}], "terms_sum": sum of every term's contribution,
        "embedding": the embedding block's sum (when there is one)}]}]}. terms_sum + embedding +
        bias = raw, up to float32 rounding.
    """
    pp_name = post_processor or ranker.pred_params.post_processor
    transform, kind, root = POST_PROCESSORS[pp_name]
    x = smat.csr_matrix(x, dtype=np.float32)
    D = ranker.n_features
    n_text = D if n_text_features is None else n_text_features
    cols, vals = x.indices, x.data.astype(np.float64)
    out = []
    for label in labels:
        paths = []
        for path in _paths(ranker.tree, int(label)):
            score = root
            levels = []
            parent = 0
            for t, node in enumerate(path):
                C = ranker.tree.C[t]
                j = _column(C, node, parent)
                W = ranker.W[t]
                w_rows, w_vals = W.indices[W.indptr[j]:W.indptr[j + 1]], W.data[W.indptr[j]:W.indptr[j + 1]]
                w = dict(zip(w_rows.tolist(), w_vals.astype(np.float64).tolist()))
                contrib = np.array([v * w.get(int(c), 0.0) for c, v in zip(cols, vals)])
                bias = float(ranker.bias * w.get(D, 0.0))
                is_text = cols < n_text
                raw = float(contrib.sum() + bias)
                p = float(transform(np.float64(raw)))
                score = p if kind == "noop" else (score * p if kind == "mul" else score + p)
                pick = np.flatnonzero(is_text & (contrib != 0))
                pick = pick[np.argsort(-np.abs(contrib[pick]), kind="stable")[:n_terms]]
                level = {"level": t, "node": int(node), "cluster": names[t][node], "raw": raw, "bias": bias,
                         "post_processed": p, "path_score": score,
                         "terms": [{"term": str(feature_names[cols[i]]), "feature": float(vals[i]),
                                    "weight": float(w.get(int(cols[i]), 0.0)), "contribution": float(contrib[i])}
                                   for i in pick],
                         "terms_sum": float(contrib[is_text].sum())}
                if n_text < D:
                    level["embedding"] = float(contrib[~is_text].sum())
                levels.append(level)
                parent = node
            paths.append({"score": score, "levels": levels})
        best = int(np.argmax([p["score"] for p in paths]))
        out.append({"label": int(label), "score": paths[best]["score"], "copies": len(paths), "winning_copy": best,
                    "paths": paths})
    return out


@dataclass
class _Parts:
    """What `explain_model` needs of a model kind: the document's features (computed once: for
    XR-Transformer and accurate-text they include an encoder pass), its scores from them, the
    rankers that score, and how the final score is formed."""

    x: smat.csr_matrix
    P: smat.csr_matrix  # 1 × L, the model's top-k scores of the document
    rankers: list = field(default_factory=list)  # [(weight, XLinearModel)]
    n_text: int | None = None
    note: str | None = None


def _parts(model, text: str, params: ExplainParams) -> _Parts:
    from .ensemble import XmcEnsemble
    from .model import XmcModel, check_predict_args

    k, beam = params.topk, params.beam_size
    check_predict_args(k, beam)  # as predict does, before the features are scored directly
    if isinstance(model, XmcEnsemble):
        x = model.featurize([text])
        weights = model.params.ensemble.member_weights()
        n_text = model.featurizer.n_features if model.params.ensemble.embedding else None
        # a matrix of the members' width is taken as it is: the same scores as from the text
        return _Parts(x, model.predict(x, topk=k, beam_size=beam), [(w, m.ranker) for w, m in zip(weights, model.members)],
                      n_text, "the score is the weighted mean of the members' scores (a member that did not rank the "
                      "label counts 0)")
    if isinstance(model, XmcModel):
        d = model.params.disentangle
        note = None
        if d is not None and d.merge != "max":
            note = f"copies are merged by {d.merge} in predict; each copy's path is shown"
        x = model.featurize([text])
        return _Parts(x, model.predict_features(x, topk=k, beam_size=beam), [(1.0, model.ranker)], None, note)
    if getattr(model, "method", "") == "xr-transformer":
        Xc, E = model.features([text])
        note = None
        if model.head is not None and model.params.ensemble.method != "concat-only":
            note = (f"predict averages the rankers' score with the fine-tuned label head (weight "
                    f"{model.params.ensemble.weight}); the rankers' path is shown")
        return _Parts(Xc, model.predict_features(Xc, E, topk=k, beam_size=beam), [(1.0, model.ranker)],
                      model.featurizer.n_features, note)
    raise ValueError(f"explain: a {getattr(model, 'method', type(model).__name__)} model generates its labels "
                     "token by token and has no label tree to explain; explain covers xr-linear, xr-linear-ld, "
                     "the ensembles and xr-transformer")


def explain_model(model, text: str, labels: Sequence[str] | None = None,
                  params: ExplainParams | None = None) -> dict:
    """Explain a model's labels for one raw text.

    Args:
        model: a loaded model (`model.load_model`): xr-linear, xr-linear-ld, xr-linear-ensemble or
            xr-transformer.
        text: the document (str).
        labels: label names to explain (None: the top `params.topk` predicted labels).
        params: :class:`ExplainParams`.

    Returns:
        {"method", "text_terms": the document's nonzero terms, "note" (how the final score is
        formed, or None), "labels": [{"label": name, "title", "predicted": rank in the top-k or
        None, "score": the model's score (members' weighted mean for an ensemble), "members":
        [{"member", "weight", **explain_ranker's entry}]}]}.

    Raises:
        ValueError: a model without a label tree (xlgen), a model without a text featurizer,
            or a label name the model does not have (named).
    """
    params = params or ExplainParams()
    if getattr(model, "featurizer", None) is None:
        raise ValueError("explain: this model was trained on feature vectors (no text featurizer); explain reads "
                         "raw text")
    parts = _parts(model, text, params)
    index = {name: i for i, name in enumerate(model.label_names)}
    P = smat.csr_matrix(parts.P)
    order = np.argsort(-P.data, kind="stable")
    predicted = [int(P.indices[i]) for i in order]
    if labels:
        missing = [name for name in labels if name not in index]
        if missing:
            raise ValueError(f"explain: the model has no label {missing[0]!r} ({model.n_labels} labels; "
                             "names as in its labels.txt)")
        ids = [index[name] for name in labels]
    else:
        ids = predicted
    titles = getattr(model, "label_titles", None) or model.label_names
    feature_names = _feature_names(model.featurizer)
    explained = [[] for _ in ids]
    for m, (w, ranker) in enumerate(parts.rankers):
        names = cluster_names(ranker.tree, titles, model.label_counts)
        for i, entry in enumerate(explain_ranker(ranker, parts.x, ids, feature_names, names, params.n_terms,
                                                 parts.n_text)):
            explained[i].append({"member": m, "weight": w, **entry})
    scores = dict(zip(P.indices.tolist(), P.data.tolist()))
    out = []
    for label, members in zip(ids, explained):
        mean = sum(e["weight"] * e["score"] for e in members)
        out.append({"label": model.label_names[label], "title": titles[label],
                    "predicted": predicted.index(label) + 1 if label in predicted else None,
                    "score": float(scores.get(label, mean)), "members": members})
    x = parts.x
    terms = [(feature_names[c], float(v)) for c, v in zip(x.indices, x.data)
             if parts.n_text is None or c < parts.n_text]
    terms.sort(key=lambda tv: -tv[1])
    return {"method": model.method, "text_terms": [{"term": t, "tfidf": v} for t, v in terms],
            "note": parts.note, "labels": out}


def _feature_names(featurizer) -> list[str]:
    names = [""] * featurizer.n_features
    for term, j in featurizer.vocab.items():
        names[j] = term.replace("\x01", "")  # the char n-gram marker
    return names
