"""Small sparse-matrix helpers shared by the stages (float32 CSR contracts)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as smat

__all__ = ["smooth_idf", "binarize", "pattern", "row_ids", "keep_entries", "l2_normalize_rows", "l2_normalize_row", "first_entry", "first_bad_label",
           "check_label_matrix"]


def row_ids(indptr: np.ndarray) -> np.ndarray:
    """Row id of each stored entry, (nnz,) int64, from a CSR ``indptr`` (N+1,)."""
    n_rows = indptr.shape[0] - 1
    return np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(indptr).astype(np.int64))


def pattern(M) -> smat.csr_matrix:
    """The stored entries of M as 1.0, a float32 CSR copy: unlike :func:`binarize`, a stored 0.0
    (a probability of 0, say) stays an entry."""
    M = smat.csr_matrix(M, dtype=np.float32, copy=True)
    M.sum_duplicates()
    M.data[:] = 1.0
    return M


def keep_entries(M: smat.csr_matrix, keep: np.ndarray) -> smat.csr_matrix:
    """The entries of CSR M where `keep` ((nnz,) bool, in M's storage order) is true, same shape,
    values as stored (a 0.0 too), indices sorted."""
    M = smat.csr_matrix(M)
    counts = np.bincount(row_ids(M.indptr)[keep], minlength=M.shape[0])
    out = smat.csr_matrix((M.data[keep], M.indices[keep], np.concatenate([[0], np.cumsum(counts)])), shape=M.shape)
    out.sort_indices()
    return out


def binarize(M) -> smat.csr_matrix:
    """A 0/1 copy of M: float32 CSR, explicit zeros dropped, duplicates merged, indices sorted.

    Always a copy, so the caller's matrix is never modified.
    """
    M = smat.csr_matrix(M, dtype=np.float32, copy=True)
    M.eliminate_zeros()
    M.sum_duplicates()  # also sorts indices
    M.data[:] = 1.0
    return M


def smooth_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """Smoothed inverse document frequency, ln((1 + N) / (1 + df)) + 1 (scikit-learn's
    ``smooth_idf=True``), of the TF-IDF featurizer and of `selection.column_idf`.

    Args:
        df: (D,) document frequency of each column (int or float).
        n_docs: N, the number of documents df was counted over.

    Returns:
        (D,) float32 weights >= 1.
    """
    return (np.log((1.0 + n_docs) / (1.0 + np.asarray(df, np.float64))) + 1.0).astype(np.float32)


#: Entries per block of `l2_normalize_rows`: its temporaries stay this size, not X's.
_BLOCK_NNZ = 1 << 20


def l2_normalize_rows(X: smat.csr_matrix, copy: bool = True) -> smat.csr_matrix:
    """Rows of X scaled to unit l2 norm (zero rows stay zero).

    Args:
        X: N × D matrix, sparse or dense (anything ``csr_matrix`` accepts).
        copy: False scales X's own data in place when X is already a float32 CSR matrix (no
            second copy of a large X; the caller must not need the unscaled values).

    Returns:
        N × D float32 CSR, indices sorted, duplicates summed. Squared entries are summed per row as scipy's
        ``X.multiply(X).sum(axis=1)`` does (``np.add.reduceat`` in float32), the root taken in
        float64; rows go in blocks of about 1M entries, so the temporaries stay that size.
    """
    X = smat.csr_matrix(X, dtype=np.float32, copy=copy)
    if not X.data.flags.writeable:
        X = X.copy()
    X.sum_duplicates()  # sorted, as scipy's multiply leaves them: the same sums, bit for bit
    indptr, data = X.indptr, X.data
    n = X.shape[0]
    r0 = 0
    while r0 < n:
        r1 = int(np.searchsorted(indptr, int(indptr[r0]) + _BLOCK_NNZ, side="right")) - 1  # no int32 sum
        r1 = min(n, max(r1, r0 + 1))
        lo, hi = int(indptr[r0]), int(indptr[r1])
        _scale_rows(indptr[r0:r1 + 1] - lo, data[lo:hi])
        r0 = r1
    return X


def l2_normalize_row(values: np.ndarray) -> np.ndarray:
    """One row's values (float32, duplicates already summed, in index order) scaled to unit l2
    norm, as `l2_normalize_rows` scales that row of a matrix, bit for bit (a request's document,
    without a scipy matrix). Returns a new float32 array."""
    out = np.array(values, np.float32)
    _scale_rows(np.array([0, len(out)]), out)
    return out


def _scale_rows(indptr: np.ndarray, seg: np.ndarray) -> None:
    """Divide each row of the entries `seg` (rows at indptr, from 0) by its l2 norm, in place."""
    counts = np.diff(indptr)
    sq = np.zeros(len(counts), np.float32)
    filled = counts > 0
    if len(seg):
        sq[filled] = np.add.reduceat(seg * seg, indptr[:-1][filled])
    norms = np.sqrt(sq.astype(np.float64))
    norms[norms == 0.0] = 1.0
    seg /= np.repeat(norms, counts).astype(np.float32)


def first_entry(M: smat.csr_matrix, bad: np.ndarray) -> tuple[int, int, float]:
    """(row, column, value) of the first stored entry of CSR `M` flagged in `bad` (a mask over M.data)."""
    k = int(np.flatnonzero(bad)[0])
    row = int(np.searchsorted(M.indptr, k, side="right") - 1)
    return row, int(M.indices[k]), M.data[k].item()


def first_bad_label(Y: smat.csr_matrix) -> tuple[int, int, float] | None:
    """(row, column, value) of the first negative or non-finite entry of CSR `Y`, else None."""
    bad = ~np.isfinite(Y.data) | (Y.data < 0)
    return first_entry(Y, bad) if bad.any() else None


def check_label_matrix(Y, n_rows: int | None = None, name: str = "Y") -> None:
    """The public boundary of training: Y is a 2-d N × L matrix whose entries > 0 are positives
    (0/1, or graded relevance read as relevant); a negative or non-finite entry is an error, so
    that a ±1 matrix is not read as "every label is positive" (PECOS#87).

    Raises:
        ValueError: naming the first bad row and column, or a row count other than `n_rows`.
    """
    if not smat.issparse(Y):
        Y = np.asarray(Y)
        if Y.ndim != 2:
            raise ValueError(f"{name}: expected a 2-d N × L matrix, got shape {Y.shape}")
    Y = smat.csr_matrix(Y)
    if n_rows is not None and Y.shape[0] != n_rows:
        raise ValueError(f"{name}: {Y.shape[0]} rows for {n_rows} documents")
    if Y.dtype.kind not in "biuf":
        raise ValueError(f"{name}: values of type {Y.dtype} (expected numbers)")
    bad = first_bad_label(Y)
    if bad is not None:
        row, col, value = bad
        raise ValueError(f"{name}: row {row}, column {col}: value {value:g}; Y holds 0/1 (entries > 0 are "
                         "positives); a +1/-1 matrix marks negatives with -1: keep only the positives")
