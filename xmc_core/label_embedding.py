"""Label embeddings: PIFA (positive instance feature aggregation).

z_l = v_l / ||v_l||, v_l = Σ_{i: y_il = 1} x_i, i.e. Z = normalize_rows(Yᵀ X).
"""

from __future__ import annotations

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



def pifa(X, Y: smat.spmatrix, params: PifaParams | None = None):
    """PIFA label embeddings Z from instance features X and labels Y: Z = normalize_rows(Yᵀ X).

    Args:
        X: N × D float32 features, CSR or dense ndarray (TF-IDF rows, or [TF-IDF ⊕ embedding]).
        Y: N × L sparse label matrix, binary (entries are used as given, as weights).
        params: :class:`PifaParams` (None: defaults).

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
        return l2_normalize_rows(Yt @ smat.csr_matrix(X, dtype=np.float32), copy=False)
    Z = np.asarray(Yt @ np.asarray(X, dtype=np.float32), dtype=np.float32)
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return Z / norms
