"""Property tests (hypothesis) for the dataset readers and the ranking metrics.

Readers: `write_xc` → `load_dataset` round-trips any sparse X / Y (rows without labels or
features included); the raw-text reader returns any unicode text line as written (tabs, U+2028,
U+0085, form feeds stay inside the document) with its label set.

Metrics: tests/test_metrics.py checks every metric against a brute-force count for one k; here the
same generated problems are checked across all k at once (P@k, R@k, RP@k, nDCG@k, PSP@k each equal
to the brute-force count at every k), and R@k is non-decreasing in k.
"""

from __future__ import annotations

import gzip
import string
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_metrics import _brute_metrics, _brute_topk, _problem  # the generator and counts of the brute-force test
from xmc_core.data import load_dataset, write_xc
from xmc_core.metrics import MetricParams, ranking_metrics

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- xc-bow round trip


@st.composite
def _sparse_problem(draw):
    n = draw(st.integers(0, 25))
    n_features = draw(st.integers(1, 40))
    n_labels = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    X = (rng.random((n, n_features)) < draw(st.floats(0.0, 0.5))).astype(np.float32)
    kind = draw(st.sampled_from(["int", "float", "tiny", "mixed"]))
    vals = {
        "int": rng.integers(1, 1000, size=X.shape).astype(np.float32),
        "float": rng.random(X.shape).astype(np.float32) * 100,
        "tiny": (rng.random(X.shape) * 1e-6 + 1e-30).astype(np.float32),
        "mixed": np.where(rng.random(X.shape) < 0.5, rng.integers(1, 5, size=X.shape),
                          rng.random(X.shape) * 3e4).astype(np.float32),
    }[kind]
    X *= vals
    Y = (rng.random((n, n_labels)) < draw(st.floats(0.0, 0.6))).astype(np.float32)
    if n:
        Y[rng.integers(0, n)] = 0  # at least one row without labels
        X[rng.integers(0, n)] = 0  # and one without features
    return sp.csr_matrix(X), sp.csr_matrix(Y)


@FAST
@given(_sparse_problem(), st.booleans())
def test_write_xc_then_load_dataset_round_trips(tmp_path, problem, gz):
    X, Y = problem
    root = tmp_path / f"rt-{np.random.default_rng().integers(1 << 62)}"
    write_xc(root / ("train.txt.gz" if gz else "train.txt"), X, Y)
    ds = load_dataset(root)
    assert ds.layout == "xc-bow"
    assert ds.train.X.shape == X.shape and ds.train.Y.shape == Y.shape
    assert ds.n_features == X.shape[1] and ds.n_labels == Y.shape[1]
    assert ds.train.X.dtype == np.float32 and ds.train.Y.dtype == np.float32
    np.testing.assert_array_equal(ds.train.X.toarray(), X.toarray())  # float32 exact
    np.testing.assert_array_equal(ds.train.Y.toarray(), Y.toarray())
    assert np.all(np.diff(ds.train.Y.indptr) == np.diff(Y.indptr))  # label-less rows kept as such


# --------------------------------------------------------------------------- raw-text reader

# Any character except the line break "\n" itself, "\r" (a trailing one is dropped as part of
# "\r\n"), surrogates (not encodable) and the BOM (dropped at the start of a file).
_TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\ufeff")
_ODD = st.sampled_from(["\u2028", "\u2029", "\t", "\x85", "\x0c", "\x0b", "\x1c", " ", "é", "漢", "🙂"])
_TEXT = st.lists(st.one_of(_TEXT_CHARS, _ODD), max_size=30).map("".join)
_LABEL_NAME = st.text(alphabet=string.ascii_letters + string.digits + "_-.:é漢", min_size=1, max_size=6)


@st.composite
def _raw_problem(draw):
    names = draw(st.lists(_LABEL_NAME, min_size=1, max_size=8, unique=True))
    n = draw(st.integers(1, 15))
    texts = draw(st.lists(_TEXT, min_size=n, max_size=n))
    label_sets = draw(st.lists(st.lists(st.sampled_from(names), max_size=4), min_size=n, max_size=n))
    seps = draw(st.lists(st.sampled_from([" ", "  ", "\t", " \u2028 "]), min_size=n, max_size=n))
    return names, texts, label_sets, seps


@FAST
@given(_raw_problem(), st.booleans(), st.booleans(), st.booleans())
def test_raw_text_reader_returns_texts_and_label_sets(tmp_path, problem, with_map, gz, crlf):
    names, texts, label_sets, seps = problem
    root = tmp_path / f"raw-{np.random.default_rng().integers(1 << 62)}"
    root.mkdir()
    eol = "\r\n" if crlf else "\n"

    def write(name, lines):
        data = "".join(line + eol for line in lines).encode("utf-8")
        path = root / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)

    write("train_texts.txt", texts)
    write("train_labels.txt", [sep.join(ls) for sep, ls in zip(seps, label_sets)])
    if with_map:
        write("label_map.txt", names)
    ds = load_dataset(root)
    assert ds.layout == "raw-text" and ds.train.texts == texts
    expected_names = names if with_map else sorted({l for ls in label_sets for l in ls})
    assert ds.label_names == expected_names
    Y = ds.train.Y
    assert Y.shape == (len(texts), len(expected_names)) and np.all(Y.data == 1.0)
    for i, ls in enumerate(label_sets):  # duplicates collapse, empty label lines are kept
        assert {ds.label_names[j] for j in Y[i].indices} == set(ls)


# --------------------------------------------------------------------------- metrics


@settings(max_examples=150, deadline=None, derandomize=True)
@given(_problem(), st.booleans())
def test_metrics_over_all_k_equal_brute_force(problem, dense):
    """Every k from 1 to K in one call (ks share one top-K ranking and cumulative sums, so a
    slice at K instead of k, or a k-independent ideal DCG / best PSP, shows here): P@k, R@k,
    RP@k, nDCG@k and PSP@k each equal the brute-force count of test_metrics at that k."""
    Yd, S, mask, K = problem
    if dense:
        scores, mask = S, np.ones_like(mask)
    else:
        rows, cols = np.nonzero(mask)
        scores = sp.csr_matrix((S[rows, cols], (rows, cols)), shape=S.shape)
    ks = tuple(range(1, K + 1))
    w = np.linspace(1.0, 4.0, Yd.shape[1])[::-1].copy()  # label 0 rarest: gains not monotone in id
    res = ranking_metrics(sp.csr_matrix(Yd), scores, MetricParams(ks=ks[::-1]), inv_prop=w)
    top = _brute_topk(S, mask, K)
    for k in ks:
        exp = _brute_metrics(Yd, top, k, w)
        for metric in ("p", "r", "rp", "ndcg", "psp"):
            assert res[metric][k] == pytest.approx(exp[metric], abs=1e-9), (metric, k)
    r = [res["r"][k] for k in ks]
    assert all(b >= a - 1e-9 for a, b in zip(r, r[1:])), r
    # R@k reaches the share of true labels predicted at all once k covers every prediction
    n_true = Yd.sum(axis=1)
    if K >= Yd.shape[1] and dense and Yd.shape[0]:
        expected = 100.0 * float(np.sum(n_true > 0)) / Yd.shape[0]
        assert r[-1] == pytest.approx(expected, abs=1e-9)
