"""Ranking and set metrics for extreme multi-label classification.

Pure numpy/scipy, no I/O.  Definitions follow ``docs/algorithms.md`` (section
*Metrics*) and PECOS / the Extreme Classification Repository:

* ``P@k``    = |top_k ∩ y| / k
* ``R@k``    = |top_k ∩ y| / |y|                 (0 for an instance with y = ∅)
* ``RP@k``   = |top_k ∩ y| / min(k, |y|)         (R-Precision; 0 for y = ∅)
* ``nDCG@k`` = DCG@k / IDCG@k, DCG@k = Σ_{r≤k, hit} 1/log2(r+1),
  IDCG@k over min(k, |y|) hits                   (0 for y = ∅)
* ``PSP@k``  = Σ_{r≤k, hit} (1/p_l) / k, reported normalized by the best
  achievable PSP@k of the instance set: Σ_i PSP@k(i) / Σ_i bestPSP@k(i), where
  bestPSP@k(i) ranks the true labels of instance i by decreasing 1/p_l.

Every metric is averaged over **all** N test instances; instances without any
label stay in the denominator (as PECOS does), so they pull the averages down.
Values are returned in percent.

Shapes: ``N`` instances, ``L`` labels, ``K`` = max(ks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .sparse import binarize, keep_entries, pattern, row_ids

__all__ = [
    "MetricParams",
    "inverse_propensity",
    "topk_indices",
    "ranking_metrics",
    "metrics_table",
    "set_metrics",
    "tail_bucket_metrics",
    "topk_sets",
    "calibration_metrics",
    "bucket_ece",
    "set_report",
    "FREQUENCY_BUCKETS",
    "bucket_masks",
]

# Upper bound on the number of float64 cells a dense working block may hold
# (128 MiB); larger inputs are processed in row blocks.
_DENSE_BLOCK_CELLS = 1 << 24


@dataclass(frozen=True)
class MetricParams:
    """Which cut-offs to report and the propensity model parameters (Jain et al. 2016).

    Attributes:
        ks: cut-offs k of P@k, R@k, RP@k, nDCG@k and PSP@k (positive ints).
        propensity_A, propensity_B: A and B of the propensity model 1/p_l = 1 + C (N_l + B)^(−A)
            (see :func:`inverse_propensity`; 0.55 / 1.5 the generic default).
    """

    ks: tuple[int, ...] = (1, 3, 5, 10)
    propensity_A: float = 0.55
    propensity_B: float = 1.5


# --------------------------------------------------------------------------- helpers




def _canonical_scores(S) -> sp.csr_matrix:
    """Canonical CSR copy of a score matrix: duplicates summed, indices sorted.

    Stored entries are *predictions* (even an explicitly stored 0.0); missing
    entries are "not predicted".
    """
    S = sp.csr_matrix(S, copy=True)
    S.sum_duplicates()
    S.data = S.data.astype(np.float64, copy=False)
    return S


_row_ids = row_ids


# --------------------------------------------------------------------------- propensity


def inverse_propensity(Y_train, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """Inverse propensity 1/p_l of every label (Jain, Prabhu & Varma, KDD 2016).

    ``C = (ln N − 1)(B + 1)^A`` and ``1/p_l = 1 + C (N_l + B)^(−A)`` with ``N`` the number
    of training instances and ``N_l`` the number of training instances tagged with ``l``.

    Args:
        Y_train: N × L training label matrix (sparse or dense; nonzero = positive).
        A, B: propensity model parameters (0.55/1.5 default, 0.5/0.4 Wikipedia-style,
            0.6/2.6 Amazon-style).

    Returns:
        (L,) float64 array of inverse propensities (each ≥ 1 when N ≥ e).

    Source:
        Jain, Prabhu & Varma 2016, "Extreme Multi-label Loss Functions for Recommendation,
        Tagging, Ranking & Other Missing Label Applications", KDD (the XC repository's
        propensity model).
    """
    Y = binarize(Y_train)
    n_train, n_labels = Y.shape
    n_pos = np.bincount(Y.indices, minlength=n_labels)  # (L,) N_l
    return inverse_propensity_from_counts(n_pos, n_train, A, B)


def inverse_propensity_from_counts(label_counts, n_train: int, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """`inverse_propensity` from per-label training counts.

    Args:
        label_counts: (L,) ints, N_l the training positives of each label.
        n_train: N, the number of training instances (int).
        A, B: propensity model parameters, as in :func:`inverse_propensity`.

    Returns:
        (L,) float64 inverse propensities 1/p_l.
    """
    n_pos = np.asarray(label_counts, dtype=np.float64)
    C = (np.log(float(n_train)) - 1.0) * (B + 1.0) ** A
    return (1.0 + C * np.power(n_pos + B, -A)).astype(np.float64)


# --------------------------------------------------------------------------- top-k


def _topk_padded(S: sp.csr_matrix, k: int) -> np.ndarray:
    """Top-k of a CSR block with sorted indices by a per-row sort of a padded
    (n, max row nnz) block; (n, k) int64 with -1 padding."""
    n_rows = S.shape[0]
    out = np.full((n_rows, k), -1, dtype=np.int64)
    if k == 0 or S.nnz == 0:
        return out
    width = int(np.diff(S.indptr).max())
    # Sort each row on the negated score.  Indices are sorted within rows and the sort is
    # stable, so ties go to the lower label id; padding sits after the real entries with
    # key +inf and label -1, so it always sorts last (even against a real -inf score).
    rows = _row_ids(S.indptr)
    slot = np.arange(S.nnz, dtype=np.int64) - S.indptr[:-1].astype(np.int64)[rows]
    key = np.full((n_rows, width), np.inf, dtype=np.float64)
    key[rows, slot] = -S.data
    col = np.full((n_rows, width), -1, dtype=np.int64)
    col[rows, slot] = S.indices
    order = np.argsort(key, axis=1, kind="stable")[:, :k]  # (n, min(k, width))
    out[:, : order.shape[1]] = np.take_along_axis(col, order, axis=1)
    return out


def _topk_sparse(S: sp.csr_matrix, k: int, method: str | None = None) -> np.ndarray:
    """Top-k of a canonical CSR score matrix, (N, k) int64 with -1 padding.

    ``method``:
      * ``None`` (default): rows are grouped by nnz into power-of-two width classes and
        each class is sorted as padded blocks of at most ``_DENSE_BLOCK_CELLS`` cells, so
        padding costs at most 2x the nnz even for very unequal row lengths;
      * ``"padded"``: one padded (N, max row nnz) block (reference / tests);
      * ``"global"``: one lexsort of all nnz by (row, -score, label id) (reference / tests).
    """
    n_rows = S.shape[0]
    if method == "padded":
        return _topk_padded(S, k)
    out = np.full((n_rows, k), -1, dtype=np.int64)
    if k == 0 or S.nnz == 0:
        return out
    if method == "global":
        rows = _row_ids(S.indptr)
        order = np.lexsort((S.indices, -S.data, rows))
        rank = np.arange(S.nnz, dtype=np.int64) - S.indptr[:-1].astype(np.int64)[rows[order]]
        keep = rank < k
        out[rows[order][keep], rank[keep]] = S.indices[order][keep]
        return out
    if method is not None:
        raise ValueError(f"unknown method {method!r}")
    row_nnz = np.diff(S.indptr).astype(np.int64)  # (N,)
    nonempty = row_nnz > 0
    width_class = np.zeros(n_rows, dtype=np.int64)  # ceil(log2(nnz))
    width_class[nonempty] = np.ceil(np.log2(row_nnz[nonempty])).astype(np.int64)
    # Loop over width classes (≤ log2 L + 1) and memory-bounded row blocks, not instances.
    for c in np.unique(width_class[nonempty]):
        rows_c = np.flatnonzero(nonempty & (width_class == c))
        width = int(row_nnz[rows_c].max())
        block = max(1, _DENSE_BLOCK_CELLS // width)
        for start in range(0, rows_c.shape[0], block):
            r = rows_c[start : start + block]
            sub = S if r.shape[0] == n_rows else S[r]  # row selection keeps index order
            out[r] = _topk_padded(sub, k)
    return out


def _topk_dense(S: np.ndarray, k: int) -> np.ndarray:
    """Top-k of a dense score array (N, L), ties to the lower label id; (N, k) int64."""
    n_rows, n_labels = S.shape
    out = np.full((n_rows, k), -1, dtype=np.int64)
    kk = min(k, n_labels)
    if kk == 0 or n_rows == 0:
        return out
    chunk = max(1, _DENSE_BLOCK_CELLS // max(n_labels, 1))
    for start in range(0, n_rows, chunk):  # loop over row blocks (memory bound), not instances
        block = np.asarray(S[start : start + chunk], dtype=np.float64)
        b = block.shape[0]
        # k-th largest value per row; everything strictly above it is in, and the
        # lowest-id entries equal to it fill the remaining slots.
        kth = -np.partition(-block, kk - 1, axis=1)[:, kk - 1 : kk]  # (b, 1)
        above = block > kth
        need = kk - above.sum(axis=1, keepdims=True)  # (b, 1)
        at = block == kth
        chosen = above | (at & (np.cumsum(at, axis=1) <= need))  # exactly kk per row
        cols = np.nonzero(chosen)[1].reshape(b, kk)  # ascending label id within row
        vals = np.take_along_axis(block, cols, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        out[start : start + b, :kk] = np.take_along_axis(cols, order, axis=1)
    return out


def topk_indices(scores, k: int) -> np.ndarray:
    """Label ids of the ``k`` highest scores of every instance, best first.

    Args:
        scores: N × L predicted scores: a scipy sparse matrix, e.g. float32 CSR (stored
            entries are the predictions, missing entries are "not predicted") or a dense
            array (every label is predicted).  NaN scores are not supported.
        k: number of labels to return per instance (≥ 0).

    Returns:
        N × k int64 label ids sorted by decreasing score; ties are broken by the lower
        label id; ``-1`` pads rows with fewer than ``k`` predictions.

    Raises:
        ValueError: k < 0, or dense scores that are not 2-D.
    """
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if sp.issparse(scores):
        return _topk_sparse(_canonical_scores(scores), k)
    S = np.asarray(scores)
    if S.ndim != 2:
        raise ValueError(f"scores must be 2-D, got shape {S.shape}")
    return _topk_dense(S, k)


# --------------------------------------------------------------------------- ranking metrics


def _hits(Y: sp.csr_matrix, top: np.ndarray) -> np.ndarray:
    """(N, K) bool: whether ``top[i, r]`` is a true label of instance ``i``.

    ``Y`` must be canonical (sorted indices); ``top`` (N, K) int64 with -1 padding.
    """
    n_rows, n_labels = Y.shape
    valid = top >= 0
    if Y.nnz == 0:
        return np.zeros(top.shape, dtype=bool)
    # Row-major linear keys of the true labels are globally sorted for a canonical CSR.
    true_keys = _row_ids(Y.indptr) * np.int64(n_labels) + Y.indices.astype(np.int64)
    query = np.arange(n_rows, dtype=np.int64)[:, None] * np.int64(n_labels) + top
    pos = np.searchsorted(true_keys, query)
    pos = np.minimum(pos, true_keys.shape[0] - 1)
    return valid & (true_keys[pos] == query)


def _best_psp_gains(Y: sp.csr_matrix, inv_prop: np.ndarray, K: int) -> np.ndarray:
    """(N, K) float64: the true labels' inverse propensities of each row, in decreasing
    order, zero-padded — the gains of the best achievable ranking for PSP."""
    n_rows = Y.shape[0]
    best = np.zeros((n_rows, K), dtype=np.float64)
    if Y.nnz == 0 or K == 0:
        return best
    rows = _row_ids(Y.indptr)
    vals = inv_prop[Y.indices]
    order = np.lexsort((-vals, rows))  # by row, then decreasing 1/p_l
    rank = np.arange(Y.nnz, dtype=np.int64) - Y.indptr[:-1].astype(np.int64)[rows[order]]
    keep = rank < K
    best[rows[order][keep], rank[keep]] = vals[order][keep]
    return best


def ranking_metrics(
    Y_true,
    scores,
    params: MetricParams = MetricParams(),
    inv_prop: np.ndarray | None = None,
) -> dict[str, dict[int, float]]:
    """P@k, R@k, RP@k, nDCG@k (and PSP@k when ``inv_prop`` is given), in percent.

    Args:
        Y_true: N × L ground truth, sparse (e.g. float32 CSR) or dense; nonzero = relevant.
        scores: N × L predicted scores (float32 CSR from a model's predict, or dense), see
            :func:`topk_indices`.
        params: cut-offs ``ks`` (the propensity parameters are not used here; pass
            ``inv_prop = inverse_propensity(Y_train, params.propensity_A, params.propensity_B)``).
        inv_prop: (L,) float inverse propensities 1/p_l; enables ``"psp"``.

    Returns:
        ``{"p": {k: v}, "r": ..., "rp": ..., "ndcg": ..., ["psp": ...]}``, each v a float in
        percent, averaged over all N instances (label-less rows count in the denominator
        and contribute 0).  PSP@k is Σ_i PSP@k(i) / Σ_i bestPSP@k(i) · 100 (0 when no
        instance has a label).

    Raises:
        ValueError: ``ks`` empty or not all >= 1; Y_true and scores shapes differ; inv_prop
            does not have L entries.

    Source:
        Definitions of the Extreme Classification Repository and PECOS's ``smat_util.Metrics``
        (``pecos/utils/smat_util.py``); PSP@k from Jain et al. 2016, KDD.
    """
    ks = tuple(sorted({int(k) for k in params.ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {params.ks!r}")
    Y = binarize(Y_true)
    if Y.shape != tuple(scores.shape):
        raise ValueError(f"Y_true shape {Y.shape} != scores shape {tuple(scores.shape)}")
    n_rows, n_labels = Y.shape
    K = ks[-1]

    top = topk_indices(scores, K)  # (N, K) int64
    hits = _hits(Y, top)  # (N, K) bool
    n_true = np.diff(Y.indptr).astype(np.float64)  # (N,) |y|
    has_true = n_true > 0
    n_hits = np.cumsum(hits, axis=1, dtype=np.float64)  # (N, K) |top_r ∩ y|
    discount = 1.0 / np.log2(np.arange(2, K + 2, dtype=np.float64))  # (K,) 1/log2(r+1)
    dcg = np.cumsum(hits * discount, axis=1)  # (N, K)
    idcg_prefix = np.concatenate(([0.0], np.cumsum(discount)))  # (K+1,) IDCG for m hits
    denom = max(n_rows, 1)

    out: dict[str, dict[int, float]] = {"p": {}, "r": {}, "rp": {}, "ndcg": {}}
    safe_true = np.where(has_true, n_true, 1.0)
    for k in ks:  # loop over the handful of cut-offs only
        inter = n_hits[:, k - 1]
        out["p"][k] = 100.0 * float(np.sum(inter / k)) / denom
        out["r"][k] = 100.0 * float(np.sum(np.where(has_true, inter / safe_true, 0.0))) / denom
        rp_den = np.minimum(float(k), safe_true)
        out["rp"][k] = 100.0 * float(np.sum(np.where(has_true, inter / rp_den, 0.0))) / denom
        idcg = idcg_prefix[np.minimum(n_true, k).astype(np.int64)]
        ndcg = np.where(has_true, dcg[:, k - 1] / np.where(has_true, idcg, 1.0), 0.0)
        out["ndcg"][k] = 100.0 * float(np.sum(ndcg)) / denom

    if inv_prop is not None:
        w = np.asarray(inv_prop, dtype=np.float64).reshape(-1)
        if w.shape[0] != n_labels:
            raise ValueError(f"inv_prop has {w.shape[0]} entries, expected {n_labels}")
        gain = np.where(hits, w[np.maximum(top, 0)], 0.0)  # (N, K)
        psp = np.cumsum(gain, axis=1)
        best = np.cumsum(_best_psp_gains(Y, w, K), axis=1)
        out["psp"] = {}
        for k in ks:
            total_best = float(np.sum(best[:, k - 1])) / k
            total = float(np.sum(psp[:, k - 1])) / k
            out["psp"][k] = 100.0 * total / total_best if total_best > 0 else 0.0
    return out


def metrics_table(result: dict[str, dict[int, float]]) -> list[dict]:
    """Flatten a :func:`ranking_metrics` result for tables and the results database.

    Args:
        result: ``{metric: {k: value}}`` as :func:`ranking_metrics` returns.

    Returns:
        ``[{"metric": str, "k": int, "value": float (percent)}, ...]``, metric order
        preserved, k ascending.
    """
    return [
        {"metric": str(metric), "k": int(k), "value": float(by_k[k])}
        for metric, by_k in result.items()
        for k in sorted(by_k)
    ]


# --------------------------------------------------------------------------- set metrics


def set_metrics(Y_true, Y_pred_set) -> dict[str, float]:
    """Metrics of a predicted label *set* (no ranking), in percent.

    Args:
        Y_true: N × L ground truth, sparse (e.g. float32 CSR) or dense; nonzero = relevant.
        Y_pred_set: N × L predicted set, sparse or dense; nonzero = predicted.

    Returns:
        ``micro_precision`` = TP / |pred|, ``micro_recall`` = TP / |true|,
        ``micro_f1`` = 2 TP / (|pred| + |true|) (all pooled over instances and labels),
        and ``macro_f1`` = mean over labels present in ``Y_true`` of
        2 TP_l / (|pred_l| + |true_l|).  Empty denominators give 0.

    Raises:
        ValueError: Y_true and Y_pred_set shapes differ.

    Source:
        XLGen's set evaluation (Jung et al. 2023, "Cluster-Guided Label Generation in Extreme
        Multi-Label Classification", EACL).
    """
    Y = binarize(Y_true)
    P = binarize(Y_pred_set)
    if Y.shape != P.shape:
        raise ValueError(f"Y_true shape {Y.shape} != Y_pred_set shape {P.shape}")
    n_labels = Y.shape[1]
    TP = Y.multiply(P).tocsr()
    TP.eliminate_zeros()
    tp_l = np.bincount(TP.indices, minlength=n_labels).astype(np.float64)  # (L,)
    true_l = np.bincount(Y.indices, minlength=n_labels).astype(np.float64)  # (L,)
    pred_l = np.bincount(P.indices, minlength=n_labels).astype(np.float64)  # (L,)
    tp, n_true, n_pred = float(tp_l.sum()), float(true_l.sum()), float(pred_l.sum())

    def _ratio(a: float, b: float) -> float:
        return 100.0 * a / b if b > 0 else 0.0

    present = true_l > 0
    f1_l = 2.0 * tp_l[present] / (pred_l[present] + true_l[present])
    return {
        "micro_precision": _ratio(tp, n_pred),
        "micro_recall": _ratio(tp, n_true),
        "micro_f1": _ratio(2.0 * tp, n_pred + n_true),
        "macro_f1": 100.0 * float(f1_l.mean()) if f1_l.size else 0.0,
    }


def topk_sets(scores, sizes) -> sp.csr_matrix:
    """A ranking turned into label sets: the ``sizes[i]`` best labels of row ``i``.

    XLGen's protocol for ranking models (docs/algorithms.md): the set of instance ``i`` is its
    top-|y_i| labels, i.e. ``sizes = |y_i|`` (an oracle size; rows with size 0 get no labels).

    Args:
        scores: N × L scores (sparse or dense), see :func:`topk_indices`.
        sizes: (N,) non-negative ints.

    Returns:
        N × L float32 binary CSR, indices sorted (fewer than ``sizes[i]`` entries where the
        row has fewer scores).

    Raises:
        ValueError: sizes does not have N entries.
    """
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    n_rows, n_labels = scores.shape
    if sizes.shape[0] != n_rows:
        raise ValueError(f"sizes has {sizes.shape[0]} entries, expected {n_rows}")
    K = int(sizes.max()) if n_rows else 0
    top = topk_indices(scores, K)  # (N, K)
    keep = (np.arange(K)[None, :] < sizes[:, None]) & (top >= 0)
    rows = np.nonzero(keep)[0]
    out = sp.csr_matrix((np.ones(rows.shape[0], np.float32), (rows, top[keep])), shape=(n_rows, n_labels))
    out.sort_indices()
    return out


def tail_bucket_metrics(
    Y_true, Y_pred_set, train_counts, buckets: tuple[tuple[int, int], ...] = ((0, 0), (1, 1))
) -> dict[str, float | int | None]:
    """Set metrics restricted to tail labels, bucketed by training frequency (percent).

    A bucket ``(lo, hi)`` holds the labels with ``lo <= train_counts[l] <= hi``; its name is
    ``tail{lo}`` (or ``tail{lo}-{hi}``). Columns of ``Y_true`` beyond ``len(train_counts)``
    (test labels the model never saw) count as seen 0 times. Per bucket:

    * ``{name}_labels``: bucket labels present in ``Y_true``; ``{name}_support``: their positives;
    * ``{name}_recall`` = TP / support, ``{name}_precision`` = TP / predictions of bucket labels,
      ``{name}_f1`` = 2 TP / (predictions + support) (pooled over the bucket; None when the
      denominator is 0).

    Args:
        Y_true: N × L' ground truth; Y_pred_set: N × L' predicted sets (nonzero = in the set).
        train_counts: (L,) training positives per label, L <= L'.
        buckets: ``(lo, hi)`` training-count ranges, inclusive.

    Returns:
        ``{"{name}_labels": int, "{name}_support": int, "{name}_recall" /
        "{name}_precision" / "{name}_f1": float percent or None}`` for every bucket.

    Raises:
        ValueError: Y_true and Y_pred_set shapes differ, or train_counts is longer than L'.
    """
    Y = binarize(Y_true)
    P = binarize(Y_pred_set)
    if Y.shape != P.shape:
        raise ValueError(f"Y_true shape {Y.shape} != Y_pred_set shape {P.shape}")
    n_labels = Y.shape[1]
    counts = np.zeros(n_labels, dtype=np.int64)
    tc = np.asarray(train_counts, dtype=np.int64).reshape(-1)
    if tc.shape[0] > n_labels:
        raise ValueError(f"train_counts has {tc.shape[0]} entries for {n_labels} columns")
    counts[: tc.shape[0]] = tc
    TP = Y.multiply(P).tocsr()
    TP.eliminate_zeros()
    tp_l = np.bincount(TP.indices, minlength=n_labels)
    true_l = np.bincount(Y.indices, minlength=n_labels)
    pred_l = np.bincount(P.indices, minlength=n_labels)
    out: dict[str, float | int | None] = {}
    for lo, hi in buckets:
        name = f"tail{lo}" if lo == hi else f"tail{lo}-{hi}"
        inside = (counts >= lo) & (counts <= hi)
        tp, sup, pred = int(tp_l[inside].sum()), int(true_l[inside].sum()), int(pred_l[inside].sum())
        out[f"{name}_labels"] = int(np.count_nonzero(inside & (true_l > 0)))
        out[f"{name}_support"] = sup
        out[f"{name}_recall"] = 100.0 * tp / sup if sup else None
        out[f"{name}_precision"] = 100.0 * tp / pred if pred else None
        out[f"{name}_f1"] = 200.0 * tp / (pred + sup) if pred + sup else None
    return out


# --------------------------------------------------------------------------- label sets and probabilities

#: EURLEX57K's label-frequency buckets (Chalkidis et al. 2019): name, fewest and most training
#: documents (inclusive; None: no upper bound)
FREQUENCY_BUCKETS: tuple[tuple[str, int, int | None], ...] = (("frequent", 50, None), ("few", 1, 49), ("zero", 0, 0))


def calibration_metrics(Y_true, P_proba, n_bins: int = 15) -> dict:
    """How well probabilities match outcomes, over the (document, label) pairs a model returned.

    Args:
        Y_true: N × L' ground truth (nonzero = positive), L' >= L.
        P_proba: N × L CSR; every stored entry (a 0.0 too) is a predicted probability.
        n_bins: equal-width probability bins of the expected calibration error (int >= 1).

    Returns:
        {"ece": percent, Σ_b (n_b / n) |mean p_b − frac positive_b|, "brier": mean (p − y)²,
        "n_pairs": n, "mean_proba", "frac_positive", "bins": [{"lo", "hi", "n", "mean_proba",
        "frac_positive"}, ...] (empty bins left out)} — pairs outside P_proba are not scored.

    Source:
        ECE: Naeini, Cooper & Hauskrecht 2015 (AAAI); Guo et al. 2017 (ICML). Brier 1950.
    """
    from .calibration import pair_targets

    P = sp.csr_matrix(P_proba, dtype=np.float32)
    Y = sp.csr_matrix(Y_true)
    if P.shape[0] != Y.shape[0]:
        raise ValueError(f"Y_true has {Y.shape[0]} rows, P_proba {P.shape[0]}")
    y = pair_targets(P, Y).astype(np.float64)
    p = np.clip(P.data.astype(np.float64), 0.0, 1.0)
    n = p.shape[0]
    if n == 0:
        return {"ece": 0.0, "brier": 0.0, "n_pairs": 0, "mean_proba": 0.0, "frac_positive": 0.0, "bins": []}
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins)
    sp_ = np.bincount(b, weights=p, minlength=n_bins)
    sy = np.bincount(b, weights=y, minlength=n_bins)
    nz = cnt > 0
    ece = float(np.abs(sp_[nz] - sy[nz]).sum() / n)
    bins = [{"lo": i / n_bins, "hi": (i + 1) / n_bins, "n": int(cnt[i]), "mean_proba": float(sp_[i] / cnt[i]),
             "frac_positive": float(sy[i] / cnt[i])} for i in np.flatnonzero(nz)]
    return {"ece": 100.0 * ece, "brier": float(np.mean((p - y) ** 2)), "n_pairs": int(n),
            "mean_proba": float(p.mean()), "frac_positive": float(y.mean()), "bins": bins}


def bucket_ece(Y_true, P_proba, train_counts, buckets=FREQUENCY_BUCKETS) -> dict[str, float]:
    """ECE of each label-frequency bucket: :func:`calibration_metrics` over the returned pairs
    whose label is in the bucket.

    Args:
        Y_true: N × L' ground truth (nonzero = positive).
        P_proba: N × L CSR; every stored entry is a predicted probability.
        train_counts: (L,) training positives per label (:func:`bucket_masks`).
        buckets: (name, lo, hi) training-count ranges, inclusive (hi None: unbounded).

    Returns:
        {name: ECE in percent} for the buckets with at least one returned pair (a classifier
        returns none of the labels no training document has, so such a bucket is left out).
    """
    P = sp.csr_matrix(P_proba)
    out = {}
    for name, in_bucket in bucket_masks(train_counts, P.shape[1], buckets).items():
        m = in_bucket[P.indices]
        if m.any():
            out[name] = calibration_metrics(Y_true, keep_entries(P, m))["ece"]
    return out


def set_report(Y_true, S, train_counts=None, buckets=FREQUENCY_BUCKETS) -> dict:
    """Set metrics of predicted label sets, overall and by label-frequency bucket (percent).

    Args:
        Y_true: N × L' ground truth (nonzero = positive).
        S: N × L'' predicted sets (every stored entry is in the set, a 0.0 too), L'' <= L'.
        train_counts: (L,) training positives per label (L <= L'; columns past L count as 0),
            or None for no buckets.
        buckets: (name, lo, hi) training-count ranges, inclusive (hi None: unbounded).

    Returns:
        {"micro_precision", "micro_recall", "micro_f1", "macro_f1" (over labels present in
        Y_true), "macro_f1_all" (the F1 sum over all L' labels / L': a label never true nor
        predicted counts 0), "set_size" (mean labels per document), and per bucket
        "{name}_micro_precision" / "_micro_recall" / "_micro_f1" / "_macro_f1" (labels of the bucket
        present in Y_true) / "_labels" (how many are present)}.

    Raises:
        ValueError: row counts differ, or S is wider than Y_true.
    """
    Y = binarize(Y_true)
    P = pattern(S)
    if P.shape[0] != Y.shape[0] or P.shape[1] > Y.shape[1]:
        raise ValueError(f"Y_true shape {Y.shape}, sets {P.shape}")
    if P.shape[1] < Y.shape[1]:
        P = sp.csr_matrix((P.data, P.indices, P.indptr), shape=Y.shape)
    n_labels = Y.shape[1]
    TP = Y.multiply(P).tocsr()
    TP.eliminate_zeros()
    tp_l = np.bincount(TP.indices, minlength=n_labels).astype(np.float64)
    true_l = np.bincount(Y.indices, minlength=n_labels).astype(np.float64)
    pred_l = np.bincount(P.indices, minlength=n_labels).astype(np.float64)
    denom = pred_l + true_l
    f1_l = np.divide(2.0 * tp_l, denom, out=np.zeros(n_labels), where=denom > 0)

    def block(mask) -> dict:
        tp, n_true, n_pred = tp_l[mask].sum(), true_l[mask].sum(), pred_l[mask].sum()
        present = mask & (true_l > 0)
        return {"micro_precision": 100.0 * tp / n_pred if n_pred else 0.0,
                "micro_recall": 100.0 * tp / n_true if n_true else 0.0,
                "micro_f1": 200.0 * tp / (n_pred + n_true) if n_pred + n_true else 0.0,
                "macro_f1": 100.0 * float(f1_l[present].mean()) if present.any() else 0.0,
                "labels": int(present.sum())}

    every = np.ones(n_labels, bool)
    out = block(every)
    out.pop("labels")
    out["macro_f1_all"] = 100.0 * float(f1_l.sum() / n_labels) if n_labels else 0.0
    out["set_size"] = float(P.nnz / P.shape[0]) if P.shape[0] else 0.0
    if train_counts is not None:
        for name, mask in bucket_masks(train_counts, n_labels, buckets).items():
            out.update({f"{name}_{k}": v for k, v in block(mask).items()})
    return out


def bucket_masks(train_counts, n_labels: int, buckets=FREQUENCY_BUCKETS) -> dict[str, np.ndarray]:
    """The labels of each frequency bucket.

    Args:
        train_counts: (L,) training positives per label; labels past L (up to n_labels) count 0,
            and entries past n_labels are ignored.
        n_labels: the number of columns to cover.
        buckets: (name, lo, hi) training-count ranges, inclusive (hi None: unbounded).

    Returns:
        {name: (n_labels,) bool}.
    """
    counts = np.zeros(n_labels, np.int64)
    tc = np.asarray(train_counts, np.int64).reshape(-1)[:n_labels]
    counts[: tc.shape[0]] = tc
    return {name: (counts >= lo) & (counts <= (hi if hi is not None else np.iinfo(np.int64).max))
            for name, lo, hi in buckets}
