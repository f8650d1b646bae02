"""Tests for xmc_core.metrics against hand-computed values and brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from xmc_core import metrics as M
from xmc_core.metrics import (
    MetricParams,
    inverse_propensity,
    metrics_table,
    ranking_metrics,
    set_metrics,
    topk_indices,
)

# --------------------------------------------------------------------------- 3-row example
# L = 6 labels.
# row 0: y = {0, 2, 4}; scores 2:.9, 0:.8, 1:.8 (tie -> 0 first), 5:.5, 4:.1
#        ranking [2, 0, 1, 5, 4], hits [1, 1, 0, 0, 1]
# row 1: y = {}; one prediction 3:.7 -> ranking [3, -1, ...], no hits
# row 2: y = {1, 5}; scores 5:.4, 3:.4 (tie -> 3 first), only 2 predictions
#        ranking [3, 5, -1, -1, -1], hits [0, 1, 0, 0, 0]

L = 6


def _example():
    Y = sp.csr_matrix(
        (np.ones(5), ([0, 0, 0, 2, 2], [0, 2, 4, 1, 5])), shape=(3, L), dtype=np.float32
    )
    rows = [0, 0, 0, 0, 0, 1, 2, 2]
    cols = [2, 0, 1, 5, 4, 3, 5, 3]
    vals = [0.9, 0.8, 0.8, 0.5, 0.1, 0.7, 0.4, 0.4]
    S = sp.csr_matrix((vals, (rows, cols)), shape=(3, L), dtype=np.float32)
    return Y, S


def _d(r: int) -> float:
    return 1.0 / math.log2(r + 1)


def test_topk_example_ties_and_padding():
    _, S = _example()
    top = topk_indices(S, 5)
    assert top.dtype == np.int64 and top.shape == (3, 5)
    np.testing.assert_array_equal(
        top, [[2, 0, 1, 5, 4], [3, -1, -1, -1, -1], [3, 5, -1, -1, -1]]
    )
    np.testing.assert_array_equal(topk_indices(S, 2), [[2, 0], [3, -1], [3, 5]])
    assert topk_indices(S, 0).shape == (3, 0)
    # k larger than L on a dense input pads too
    dense = S.toarray()
    top_d = topk_indices(dense, 8)
    assert top_d.shape == (3, 8)
    np.testing.assert_array_equal(top_d[:, 6:], -1)
    # dense: every label is predicted; zeros tie and go by label id
    np.testing.assert_array_equal(top_d[1, :6], [3, 0, 1, 2, 4, 5])
    np.testing.assert_array_equal(top_d[2, :6], [3, 5, 0, 1, 2, 4])


def test_ranking_metrics_hand_computed():
    Y, S = _example()
    res = ranking_metrics(Y, S, MetricParams(ks=(1, 3, 5)))
    assert set(res) == {"p", "r", "rp", "ndcg"}
    exp = {
        "p": {1: 1 / 3, 3: (2 / 3 + 0 + 1 / 3) / 3, 5: (3 / 5 + 1 / 5) / 3},
        "r": {1: (1 / 3) / 3, 3: (2 / 3 + 1 / 2) / 3, 5: (1 + 1 / 2) / 3},
        "rp": {1: 1 / 3, 3: (2 / 3 + 1 / 2) / 3, 5: (3 / 3 + 1 / 2) / 3},
        "ndcg": {
            1: 1 / 3,
            3: (
                (_d(1) + _d(2)) / (_d(1) + _d(2) + _d(3))
                + _d(2) / (_d(1) + _d(2))
            )
            / 3,
            5: (
                (_d(1) + _d(2) + _d(5)) / (_d(1) + _d(2) + _d(3))
                + _d(2) / (_d(1) + _d(2))
            )
            / 3,
        },
    }
    for metric, by_k in exp.items():
        for k, v in by_k.items():
            assert res[metric][k] == pytest.approx(100 * v, rel=1e-12), (metric, k)


def test_psp_hand_computed():
    Y, S = _example()
    inv_prop = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    res = ranking_metrics(Y, S, MetricParams(ks=(1, 3, 5)), inv_prop=inv_prop)
    # best: row0 true {0,2,4} -> props sorted 5,3,1; row2 {1,5} -> 6,2; row1 none
    # @1: got 3 (row0 label 2) + 0 ; best 5 + 6
    # @3: got 3+1 + 6 ; best 5+3+1 + 6+2
    # @5: got 3+1+5 + 6 ; best 9 + 8
    assert res["psp"][1] == pytest.approx(100 * 3 / 11)
    assert res["psp"][3] == pytest.approx(100 * 10 / 17)
    assert res["psp"][5] == pytest.approx(100 * 15 / 17)
    # a perfect ranking scores 100
    perfect = ranking_metrics(Y, Y.multiply(inv_prop[None, :]).tocsr(), MetricParams(ks=(1, 3)),
                              inv_prop=inv_prop)
    assert perfect["psp"][1] == pytest.approx(100.0)
    assert perfect["psp"][3] == pytest.approx(100.0)


def test_inverse_propensity_hand_computed():
    # N = 10 instances; label counts N_l = [10, 3, 0, 1]
    rows = list(range(10)) + [0, 1, 2] + [5]
    cols = [0] * 10 + [1] * 3 + [3]
    Y_train = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(10, 4))
    for A, B in [(0.55, 1.5), (0.5, 0.4), (0.6, 2.6)]:
        got = inverse_propensity(Y_train, A, B)
        assert got.dtype == np.float64 and got.shape == (4,)
        C = (math.log(10) - 1) * (B + 1) ** A
        exp = [1 + C * (n + B) ** (-A) for n in (10, 3, 0, 1)]
        np.testing.assert_allclose(got, exp, rtol=1e-12)
    # rarer labels have larger inverse propensity
    got = inverse_propensity(Y_train)
    assert got[2] > got[3] > got[1] > got[0] > 1.0
    # explicit zeros / duplicates are not extra positives
    dup = sp.csr_matrix((np.array([1.0, 1.0, 0.0]), ([0, 0, 1], [1, 1, 1])), shape=(10, 4))
    C = (math.log(10) - 1) * 2.5**0.55
    assert inverse_propensity(dup)[1] == pytest.approx(1 + C * (1 + 1.5) ** -0.55)


def test_empty_label_rows_stay_in_denominator():
    Y = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0]], dtype=np.float32))
    S = sp.csr_matrix(np.array([[0.9, 0.1, 0.0], [0.5, 0.0, 0.0]], dtype=np.float32))
    res = ranking_metrics(Y, S, MetricParams(ks=(1,)), inv_prop=np.ones(3))
    for metric in ("p", "r", "rp", "ndcg"):
        assert res[metric][1] == pytest.approx(50.0), metric
    assert res["psp"][1] == pytest.approx(100.0)  # normalized by best over the set


def test_dense_and_sparse_scores_agree():
    rng = np.random.default_rng(0)
    Y = sp.random(50, 30, density=0.1, format="csr", random_state=1)
    D = rng.integers(0, 5, size=(50, 30)).astype(np.float64)  # many ties
    a = ranking_metrics(Y, D, inv_prop=np.linspace(1, 3, 30))
    # same scores as a fully populated sparse matrix (+1 so that no score is 0)
    b = ranking_metrics(Y, sp.csr_matrix(D + 1.0), inv_prop=np.linspace(1, 3, 30))
    assert a.keys() == b.keys()
    for metric in a:
        assert a[metric] == pytest.approx(b[metric]), metric


def test_metrics_table_flat():
    Y, S = _example()
    res = ranking_metrics(Y, S, MetricParams(ks=(3, 1)))
    table = metrics_table(res)
    assert table[0] == {"metric": "p", "k": 1, "value": pytest.approx(100 / 3)}
    assert [(r["metric"], r["k"]) for r in table] == [
        (m, k) for m in ("p", "r", "rp", "ndcg") for k in (1, 3)
    ]


def test_bad_inputs():
    Y, S = _example()
    with pytest.raises(ValueError):
        ranking_metrics(Y, S[:2])
    with pytest.raises(ValueError):
        ranking_metrics(Y, S, MetricParams(ks=(0,)))
    with pytest.raises(ValueError):
        ranking_metrics(Y, S, inv_prop=np.ones(L + 1))
    with pytest.raises(ValueError):
        topk_indices(S, -1)


# --------------------------------------------------------------------------- brute force


def _brute_topk(S: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    out = np.full((S.shape[0], k), -1, dtype=np.int64)
    for i in range(S.shape[0]):
        cand = [j for j in range(S.shape[1]) if mask[i, j]]
        cand.sort(key=lambda j: (-S[i, j], j))
        out[i, : min(k, len(cand))] = cand[:k]
    return out


def _brute_metrics(Yd: np.ndarray, top: np.ndarray, k: int, w: np.ndarray):
    n = Yd.shape[0]
    p = r = rp = nd = psp = best = 0.0
    for i in range(n):
        y = set(np.flatnonzero(Yd[i]).tolist())
        hits = [int(l) in y for l in top[i, :k] if l >= 0]
        h = sum(hits)
        p += h / k
        psp += sum(w[l] for l in top[i, :k] if l >= 0 and int(l) in y) / k
        best += sum(sorted((w[l] for l in y), reverse=True)[:k]) / k
        if y:
            r += h / len(y)
            rp += h / min(k, len(y))
            dcg = sum(1 / math.log2(j + 2) for j, hit in enumerate(hits) if hit)
            idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(y))))
            nd += dcg / idcg
    psp_norm = 100 * psp / best if best > 0 else 0.0
    return {"p": 100 * p / n, "r": 100 * r / n, "rp": 100 * rp / n, "ndcg": 100 * nd / n,
            "psp": psp_norm}


@st.composite
def _problem(draw):
    n = draw(st.integers(1, 12))
    n_labels = draw(st.integers(1, 15))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    Yd = (rng.random((n, n_labels)) < draw(st.floats(0.0, 0.6))).astype(np.float32)
    mask = rng.random((n, n_labels)) < draw(st.floats(0.0, 1.0))
    S = rng.integers(-3, 4, size=(n, n_labels)).astype(np.float64)  # small ints: many ties
    k = draw(st.integers(1, n_labels + 3))
    return Yd, S, mask, k


@settings(max_examples=200, deadline=None)
@given(_problem(), st.sampled_from([None, "padded", "global"]))
def test_against_brute_force(problem, method):
    Yd, S, mask, k = problem
    n_labels = Yd.shape[1]
    rows, cols = np.nonzero(mask)
    Ss = sp.csr_matrix((S[rows, cols], (rows, cols)), shape=S.shape)  # stored zeros kept
    top_exp = _brute_topk(S, mask, k)
    top = M._topk_sparse(M._canonical_scores(Ss), k, method=method)
    np.testing.assert_array_equal(top, top_exp)
    np.testing.assert_array_equal(topk_indices(Ss, k), top_exp)
    np.testing.assert_array_equal(
        topk_indices(S, k), _brute_topk(S, np.ones_like(mask), k)
    )
    w = np.linspace(1.0, 4.0, n_labels)
    res = ranking_metrics(sp.csr_matrix(Yd), Ss, MetricParams(ks=(k,)), inv_prop=w)
    exp = _brute_metrics(Yd, top_exp, k, w)
    for metric in ("p", "r", "rp", "ndcg", "psp"):
        assert res[metric][k] == pytest.approx(exp[metric], abs=1e-9), metric


def test_dense_topk_chunked(monkeypatch):
    rng = np.random.default_rng(3)
    S = rng.integers(0, 3, size=(40, 9)).astype(np.float32)
    expected = _brute_topk(S.astype(np.float64), np.ones(S.shape, dtype=bool), 4)
    monkeypatch.setattr(M, "_DENSE_BLOCK_CELLS", 20)  # 2 rows per block
    np.testing.assert_array_equal(topk_indices(S, 4), expected)


def test_sparse_topk_skewed_rows_and_small_blocks(monkeypatch):
    # one long row, many 1-entry rows, an empty row: several width classes; a tiny
    # block budget forces one padded block per row
    rows = [0] * 50 + list(range(1, 39))
    cols = list(range(50)) + [7] * 38
    vals = np.r_[np.arange(50) % 5, np.ones(38)]
    S = sp.csr_matrix((vals, (rows, cols)), shape=(40, 60))
    for cells in (1 << 24, 1):
        monkeypatch.setattr(M, "_DENSE_BLOCK_CELLS", cells)
        top = topk_indices(S, 3)
        np.testing.assert_array_equal(top[0], [4, 9, 14])
        np.testing.assert_array_equal(top[1:39], np.tile([7, -1, -1], (38, 1)))
        np.testing.assert_array_equal(top[39], [-1, -1, -1])


# --------------------------------------------------------------------------- set metrics


def test_set_metrics_hand_computed():
    Y = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    P = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32))
    res = set_metrics(Y, P)
    # TP = 2 (0,0),(1,1); |pred| = 5; |true| = 3
    assert res["micro_precision"] == pytest.approx(100 * 2 / 5)
    assert res["micro_recall"] == pytest.approx(100 * 2 / 3)
    assert res["micro_f1"] == pytest.approx(100 * 4 / 8)
    # labels present in Y: 0 (tp1, pred1, true1 -> 1), 1 (tp1, pred1, true2 -> 2/3)
    assert res["macro_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    empty = set_metrics(Y, sp.csr_matrix(Y.shape, dtype=np.float32))
    assert empty["micro_precision"] == 0.0 and empty["macro_f1"] == 0.0


def test_bucket_ece_by_hand():
    """Per-bucket ECE over the returned pairs of each bucket's labels, a bucket without pairs left out."""
    from xmc_core.metrics import bucket_ece

    counts = np.array([60, 5, 0])  # frequent, few, zero
    Y = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 1]], np.float32))
    P = sp.csr_matrix(np.array([[0.9, 0.2, 0.0], [0.6, 0.0, 0.5]], np.float32))
    got = bucket_ece(Y, P, counts)
    # frequent: (0.9, 1) and (0.6, 0) in bins of their own, (0.1 + 0.6) / 2; few: (0.2, 0); zero: (0.5, 1)
    assert got == pytest.approx({"frequent": 35.0, "few": 20.0, "zero": 50.0})
    P2 = sp.csr_matrix(np.array([[0.9, 0.2, 0.0], [0.6, 0.0, 0.0]], np.float32))
    assert set(bucket_ece(Y, P2, counts)) == {"frequent", "few"}
