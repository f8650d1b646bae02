"""Label embeddings: PIFA (positive instance feature aggregation).

z_l = v_l / ||v_l||, v_l = Σ_{i: y_il = 1} x_i, i.e. Z = normalize_rows(Yᵀ X).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as smat

from .params import ParamsBase

from .sparse import l2_normalize_rows

__all__ = ["PifaParams", "pifa"]


@dataclass
class PifaParams(ParamsBase):
    """Settings of the label embedding.

    method: "pifa" (only method for now; neural PIFA over dense embeddings uses the same call).
    """

    method: str = "pifa"



def _rows_times(A: smat.csr_matrix, B: smat.csr_matrix, threads: int) -> smat.csr_matrix:
    """A @ B (CSR), A's rows cut into 2 · threads blocks multiplied in threads (scipy's kernel
    releases the GIL). Each row of the product is computed as one product computes it, so the
    result is the same bits. The blocks are copied into the result one by one, each dropped once
    copied, so the product's memory peaks near its size plus a block or two, not twice its size
    (blocks of a large product are big enough to be returned to the system when dropped)."""
    threads = max(1, os.cpu_count() or 1) if threads < 1 else threads
    if threads == 1 or A.shape[0] < 4 * threads or A.nnz < 100_000:
        return A @ B
    cuts = np.searchsorted(A.indptr, np.linspace(0, A.nnz, 2 * threads + 1)[1:-1])
    cuts = np.unique(np.concatenate([[0], cuts, [A.shape[0]]]))
    with ThreadPoolExecutor(threads) as ex:
        parts = list(ex.map(lambda ab: A[ab[0]:ab[1]] @ B, zip(cuts[:-1], cuts[1:])))
    nnz = sum(P.nnz for P in parts)
    idx_t = np.int32 if nnz < 2**31 and B.shape[1] < 2**31 else np.int64
    indptr = np.empty(A.shape[0] + 1, idx_t)
    indices = np.empty(nnz, idx_t)
    data = np.empty(nnz, np.result_type(A.dtype, B.dtype))
    indptr[0] = 0
    row = pos = 0
    for i in range(len(parts)):
        P, parts[i] = parts[i], None
        # int64 before the offset: a block's indptr is int32, and int32 + pos stays int32 (NumPy 2)
        indptr[row + 1:row + 1 + P.shape[0]] = P.indptr[1:].astype(np.int64) + pos
        indices[pos:pos + P.nnz] = P.indices
        data[pos:pos + P.nnz] = P.data
        row, pos = row + P.shape[0], pos + P.nnz
        del P
    return smat.csr_matrix((data, indices, indptr), shape=(A.shape[0], B.shape[1]))


def pifa(X, Y: smat.spmatrix, params: PifaParams | None = None, threads: int = 1):
    """PIFA label embeddings Z from instance features X and labels Y: Z = normalize_rows(Yᵀ X).

    Args:
        X: N × D float32 features, CSR or dense ndarray (TF-IDF rows, or [TF-IDF ⊕ embedding]).
        Y: N × L sparse label matrix, binary (entries are used as given, as weights).
        params: :class:`PifaParams` (None: defaults).
        threads: threads of the sparse product (-1: all cores); the result does not depend on it.

    Returns:
        Z: L × D float32 (CSR when X is sparse, ndarray when dense) with unit l2-norm rows; a
        label with no positive instance gets a zero row.

    Raises:
        ValueError: params.method is not "pifa", or X and Y row counts differ.

    Source:
        Positive Instance Feature Aggregation, PECOS ``LabelEmbeddingFactory.pifa``
        (Yu et al. 2022, JMLR; Chang et al. 2020, "Taming Pretrained Transformers for Extreme
        Multi-label Text Classification", KDD).
    """
    params = params or PifaParams()
    if params.method != "pifa":
        raise ValueError(f"PifaParams.method: unknown {params.method!r}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"pifa: X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    Yt = smat.csr_matrix(Y.T, dtype=np.float32)
    if smat.issparse(X):
        # Yᵀ X is a fresh matrix: normalized in place, not copied
        return l2_normalize_rows(_rows_times(Yt, smat.csr_matrix(X, dtype=np.float32), threads), copy=False)
    Z = np.asarray(Yt @ np.asarray(X, dtype=np.float32), dtype=np.float32)
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return Z / norms
