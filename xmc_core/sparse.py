"""Small sparse-matrix helpers shared by the stages (float32 CSR contracts)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as smat

__all__ = ["binarize", "l2_normalize_rows"]


def binarize(M) -> smat.csr_matrix:
    """A 0/1 copy of M: float32 CSR, explicit zeros dropped, duplicates merged, indices sorted.

    Always a copy, so the caller's matrix is never modified.
    """
    M = smat.csr_matrix(M, dtype=np.float32, copy=True)
    M.eliminate_zeros()
    M.sum_duplicates()  # also sorts indices
    M.data[:] = 1.0
    return M


def l2_normalize_rows(X: smat.csr_matrix) -> smat.csr_matrix:
    """Rows scaled to unit l2 norm (zero rows stay zero). Returns float32 CSR."""
    X = smat.csr_matrix(X, dtype=np.float32, copy=True)
    sq = np.asarray(X.multiply(X).sum(axis=1), dtype=np.float64).ravel()
    norms = np.sqrt(sq)
    norms[norms == 0.0] = 1.0
    X.data /= np.repeat(norms, np.diff(X.indptr)).astype(np.float32)
    return X
