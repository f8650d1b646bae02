"""Held-out choice of the rankers' loss weights (C) and of idf weights on the feature columns.

The rankers' Cp / Cn (PECOS's C, liblinear's cost) trade fit against regularization, and the best
value depends on the data: on the issue-25 probes short titles (yso-finna-en) and small
bag-of-words sets (bibtex) wanted a smaller C, long documents (reuters-21578, eurlex57k) a larger
one. :func:`select_c` chooses it without reading test documents: a seeded fraction of the training
documents is held out, one model per candidate is trained on the rest and scored on them, and the
candidate with the best mean of P@1, P@3 and P@5 wins (ties: the smaller C, which trains in fewer
passes). The final model is then trained on all training documents at the winner.

:func:`column_idf` gives the weights that turn raw bag-of-words columns into TF-IDF-like ones
(smoothed idf, as scikit-learn's ``TfidfTransformer(smooth_idf=True)``). Whether they help is a
property of the features (on bibtex's binary words they did; on TF-IDF rows, weighed twice, they
did not: reuters-21578), so :func:`select_c` can choose them on the same held-out documents.

Source: the C grid search of liblinear (Fan et al. 2008, JMLR, ``-C``) and of DiSMEC (Babbar and
Schölkopf 2017, WSDM), on a held-out split as scikit-learn's validation curves do.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as smat

from .sparse import l2_normalize_rows, smooth_idf

__all__ = ["scale_c", "select_c", "column_idf", "weigh_columns"]

#: the cut-offs whose mean precision ranks the candidates
SELECTION_KS = (1, 3, 5)


def scale_c(params, c: float):
    """`params` with the rankers' Cp and Cn multiplied by `c`, in the base settings and in every
    ensemble member's override (so a member with twice the base Cn keeps twice the scaled one).

    Args:
        params: `model.XRLinearParams`.
        c: factor > 0.

    Returns:
        XRLinearParams (a new object; `params` is unchanged).

    Raises:
        ValueError: c <= 0 or not finite.
    """
    if not np.isfinite(c) or c <= 0:
        raise ValueError(f"scale_c: the factor must be finite and > 0, got {c!r}")

    def times(x):  # 12 significant digits: 0.35 * 3 is written 1.05, not 1.0499999999999998
        return float(f"{x * c:.12g}")

    out = replace(params, ranker=replace(params.ranker, Cp=times(params.ranker.Cp), Cn=times(params.ranker.Cn)))
    ens = params.ensemble
    if ens is not None and ens.members:
        members = []
        for m in ens.members:
            r = dict(m.get("ranker") or {})
            for key in ("Cp", "Cn"):
                if key in r:
                    r[key] = times(r[key])
            members.append({**m, "ranker": r} if "ranker" in m else dict(m))
        out = replace(out, ensemble=replace(ens, members=members))
    return out


def select_c(X: smat.csr_matrix, Y: smat.spmatrix, label_names: Sequence[str], params, grid: Sequence[float],
             holdout_frac: float = 0.2, seed: int = 0, idf: bool | str = False,
             log: Callable[[dict], None] | None = None) -> tuple[float, bool, dict]:
    """The C factor of `grid` (and whether to weigh columns by idf) whose model ranks held-out
    training documents best.

    Each candidate's model, ``scale_c(params, c)``'s settings without the ensemble section
    (member 0's rankers and tree), is trained on the kept documents and scored on the held-out
    ones by the mean of P@1, P@3 and P@5 (`metrics.ranking_metrics`); the largest mean wins, ties
    to the smaller c and to no idf. With ``idf="select"`` c is chosen without idf weights, then the
    weights (`column_idf` of the kept rows) are tried at that c: one model per factor plus one.

    Args:
        X: N × D float32 CSR, rows l2-normalized (the features the final model trains on).
        Y: N × L label matrix (sparse), entries > 0 positives.
        label_names: L label names.
        params: `model.XRLinearParams` (an ensemble section is dropped for the candidates).
        grid: candidate factors (each > 0; at least one).
        holdout_frac: fraction of the N documents held out, in (0, 0.5]: the first
            round(N · holdout_frac) of ``numpy.random.default_rng(seed).permutation(N)``.
        seed: seed of the held-out draw.
        idf: False / True (every candidate without / with idf weights), or "select".
        log: receives one {"stage": "select_c", "c", "idf", "score", "reach", "seconds",
            "n_holdout"} record per candidate.

    Returns:
        (c, idf, report): the chosen factor, whether idf weights won, and {"candidates":
        [{"c", "idf", "score" (mean P@1/3/5, percent), "reach" (`disentangle.matcher_recall`
        of the held-out documents at the model's beam, percent)}], "chosen" (the chosen
        candidate's record), "n_holdout", "seconds"}.

    Raises:
        ValueError: an empty grid or a factor <= 0; holdout_frac outside (0, 0.5]; fewer than 2
            held-out or kept documents; idf not False, True or "select".
    """
    from .disentangle import matcher_recall
    from .metrics import MetricParams, ranking_metrics
    from .model import fit_rankers

    grid = sorted(float(c) for c in grid)
    if not grid or any(not np.isfinite(c) or c <= 0 for c in grid):
        raise ValueError(f"select_c: the grid must hold factors > 0, got {grid!r}")
    if not 0 < holdout_frac <= 0.5:
        raise ValueError(f"select_c: holdout_frac must be in (0, 0.5], got {holdout_frac!r}")
    if idf not in (False, True, "select"):
        raise ValueError(f"select_c: idf must be false, true or 'select', got {idf!r}")
    n = X.shape[0]
    n_out = int(round(n * holdout_frac))
    if n_out < 2 or n - n_out < 2:
        raise ValueError(f"select_c: {n} training documents are too few to hold {holdout_frac:.0%} out")
    perm = np.random.default_rng(seed).permutation(n)
    out, kept = np.sort(perm[:n_out]), np.sort(perm[n_out:])
    Y = smat.csr_matrix(Y)
    Xk, Yk, Xo, Yo = X[kept], Y[kept], X[out], Y[out]
    weights = column_idf(Xk) if idf else None
    weighted: list = []  # (Xk, Xo) weighed once, for every candidate with idf
    base = replace(params, ensemble=None)
    found: dict[tuple[float, bool], tuple[float, float]] = {}  # (c, idf) → (score, reach), percent
    t_all = time.perf_counter()

    def record(key) -> dict:
        return {"c": key[0], "idf": key[1], "score": round(found[key][0], 4), "reach": round(found[key][1], 2)}

    def score(c: float, use_idf: bool) -> float:
        key = (c, use_idf)
        if key not in found:
            t0 = time.perf_counter()
            if use_idf and not weighted:
                weighted[:] = weigh_columns(Xk, weights), weigh_columns(Xo, weights)
            Xt, Xh = weighted if use_idf else (Xk, Xo)
            model = fit_rankers(Xt, Yk, label_names, scale_c(base, c))
            res = ranking_metrics(Yo, model.predict(Xh, topk=max(SELECTION_KS)), MetricParams(ks=SELECTION_KS))
            found[key] = (float(np.mean([res["p"][k] for k in SELECTION_KS])),
                          100.0 * matcher_recall(model.ranker, model.ranker.tree, Xh, Yo))
            if log:
                log({"stage": "select_c", **record(key), "seconds": time.perf_counter() - t0, "n_holdout": int(n_out)})
        return found[key][0]

    def best(cands):  # ties: the smaller c, then no idf
        return max(cands, key=lambda ci: (score(*ci), -ci[0], not ci[1]))

    c = best([(c, idf is True) for c in grid])[0]
    use_idf = best([(c, False), (c, True)])[1] if idf == "select" else bool(idf)
    report = {"candidates": [record(key) for key in found], "chosen": record((c, use_idf)), "n_holdout": int(n_out),
              "seconds": round(time.perf_counter() - t_all, 3)}
    return c, use_idf, report


def column_idf(X: smat.spmatrix) -> np.ndarray:
    """Smoothed inverse document frequency of each column, ln((1 + N) / (1 + df)) + 1.

    Args:
        X: N × D sparse training matrix (a column's df is its count of stored nonzeros).

    Returns:
        (D,) float32 weights >= 1 (a column no row uses gets the largest, ln(1 + N) + 1).
    """
    X = smat.csr_matrix(X)
    return smooth_idf(np.bincount(X.indices[X.data != 0], minlength=X.shape[1]), X.shape[0])


def weigh_columns(X: smat.spmatrix, weights: np.ndarray, copy: bool = True) -> smat.csr_matrix:
    """l2_rows(X · diag(weights)): columns scaled, then every row back to unit norm.

    Args:
        X: N × D sparse matrix.
        weights: (D,) float column weights.
        copy: False scales X's own data in place when X is already a float32 CSR matrix (as
            `sparse.l2_normalize_rows` does).

    Returns:
        N × D float32 CSR, rows unit norm (all-zero rows stay zero).

    Raises:
        ValueError: D differs from len(weights).
    """
    weights = np.asarray(weights, np.float32)
    if X.shape[1] != weights.shape[0]:
        raise ValueError(f"weigh_columns: {X.shape[1]} columns, {weights.shape[0]} weights")
    if copy or not (isinstance(X, smat.csr_matrix) and X.dtype == np.float32):
        X = smat.csr_matrix(X, dtype=np.float32, copy=True)
    X.data *= weights[X.indices]
    return l2_normalize_rows(X, copy=False)
