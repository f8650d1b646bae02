"""Tests for xmc_core.synth (synthetic XMC generator)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from xmc_core.data import load_dataset
from xmc_core.synth import SynthParams, generate, structure, write_synth

SMALL = SynthParams(n_labels=300, n_train=2000, n_test=500, n_features=4000, seed=3)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


def _l2_rows(M: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(M.multiply(M).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ M)


def test_shapes_and_dtypes(small):
    X_trn, Y_trn, X_tst, Y_tst = small
    assert X_trn.shape == (2000, 4000) and Y_trn.shape == (2000, 300)
    assert X_tst.shape == (500, 4000) and Y_tst.shape == (500, 300)
    for M in small:
        assert isinstance(M, sp.csr_matrix) and M.dtype == np.float32
        assert M.has_sorted_indices
        M2 = M.copy()
        M2.sum_duplicates()
        assert M2.nnz == M.nnz  # no duplicate entries
    assert np.all(Y_trn.data == 1.0) and np.all(Y_tst.data == 1.0)
    assert np.all(X_trn.data >= 1) and np.all(X_trn.data == np.round(X_trn.data))  # counts
    nnz_per_doc = X_trn.nnz / X_trn.shape[0]
    assert 20 < nnz_per_doc < SMALL.words_per_doc
    labels_per_doc = Y_trn.nnz / Y_trn.shape[0]
    assert 2.0 < labels_per_doc <= SMALL.labels_per_doc


def test_every_row_has_a_label(small):
    _, Y_trn, _, Y_tst = small
    assert np.diff(Y_trn.indptr).min() >= 1
    assert np.diff(Y_tst.indptr).min() >= 1


def test_deterministic_by_seed(small):
    again = generate(SMALL)
    for a, b in zip(small, again):
        assert (a != b).nnz == 0
    other = generate(dataclasses.replace(SMALL, seed=4))
    assert (other[0] != small[0]).nnz > 0
    # changing the test size does not change the training set
    more_test = generate(dataclasses.replace(SMALL, n_test=10))
    assert (more_test[0] != small[0]).nnz == 0 and more_test[2].shape[0] == 10


def test_zipf_label_frequency(small):
    _, Y_trn, _, _ = small
    freq = np.asarray(Y_trn.sum(axis=0)).ravel()
    assert freq.max() >= 10 * max(np.median(freq), 1)
    # heavy tail: at least half of the labels are rarer than 1/20 of the top one
    assert np.mean(freq < freq.max() / 20) > 0.5
    flat = generate(dataclasses.replace(SMALL, zipf_a=0.0, n_test=0))[1]
    f0 = np.asarray(flat.sum(axis=0)).ravel()
    assert f0.max() < 5 * np.median(f0)


def _tfidf(X_fit: sp.csr_matrix, X: sp.csr_matrix) -> sp.csr_matrix:
    df = np.asarray((X_fit > 0).sum(axis=0)).ravel()
    idf = np.log((1.0 + X_fit.shape[0]) / (1.0 + df)) + 1.0
    return _l2_rows(sp.csr_matrix(X @ sp.diags(idf)))


def test_labels_are_learnable(small):
    """Nearest label centroid (TF-IDF, train) predicts a true test label most of
    the time; without label-specific words it does not."""

    def p_at_1(X_trn, Y_trn, X_tst, Y_tst):
        C = _l2_rows(sp.csr_matrix(Y_trn.T @ _tfidf(X_trn, X_trn)))
        S = (_tfidf(X_trn, X_tst) @ C.T).toarray()
        return Y_tst.toarray()[np.arange(Y_tst.shape[0]), S.argmax(axis=1)].mean()

    assert p_at_1(*small) > 0.75
    no_label_words = generate(dataclasses.replace(SMALL, label_word_frac=0.0))
    assert p_at_1(*no_label_words) < 0.6


def test_topic_hierarchy_visible_in_centroids(small):
    X_trn, Y_trn, _, _ = small
    st = structure(SMALL)
    C = _l2_rows(sp.csr_matrix(Y_trn.T @ _tfidf(X_trn, X_trn)))
    present = np.flatnonzero(np.diff(C.indptr) > 0)
    G = (C[present] @ C[present].T).toarray()
    topic = st.topic_of_label[present]
    same = topic[:, None] == topic[None, :]
    np.fill_diagonal(same, False)
    other = topic[:, None] != topic[None, :]
    assert G[same].mean() > 1.5 * G[other].mean()


def test_ambiguous_labels_have_two_contexts():
    p = dataclasses.replace(SMALL, ambiguous_frac=0.2, n_test=0)
    st = structure(p)
    amb = np.flatnonzero(st.ambiguous)
    assert len(amb) == 60
    alt_topic = st.topic_of_subtopic[st.alt_subtopic_of_label[amb]]
    assert np.all(alt_topic != st.topic_of_label[amb])
    X, Y, _, _ = generate(p)
    # documents of a frequent ambiguous label use words of both topics' blocks
    freq = np.asarray(Y.sum(axis=0)).ravel()
    lab = amb[np.argmax(freq[amb])]
    docs = Y[:, lab].nonzero()[0]
    start, size, region = (int(v) for v in st.topic_block)
    used = X[docs].tocsc()
    def block_mass(t):
        ids = start + (t * size + np.arange(size)) % region
        return used[:, ids].sum()
    a = block_mass(st.topic_of_label[lab])
    b = block_mass(alt_topic[np.argmax(freq[amb])])
    assert a > 0 and b > 0 and min(a, b) / max(a, b) > 0.2


def test_write_synth_round_trip(tmp_path):
    p = SynthParams(n_labels=50, n_train=120, n_test=30, n_features=500, seed=7)
    out = write_synth(tmp_path / "synth-small", p)
    assert (out / "PROVENANCE.md").read_text().count('"n_labels": 50') == 1
    ds = load_dataset(out)
    assert ds.layout == "xc-bow" and ds.n_labels == 50 and ds.n_features == 500
    X_trn, Y_trn, X_tst, Y_tst = generate(p)
    assert (ds.train.X != X_trn).nnz == 0 and (ds.train.Y != Y_trn).nnz == 0
    assert (ds.test.X != X_tst).nnz == 0 and (ds.test.Y != Y_tst).nnz == 0


def test_bad_params():
    with pytest.raises(ValueError):
        generate(SynthParams(n_features=4))
    with pytest.raises(ValueError):
        generate(SynthParams(label_word_frac=0.9, topic_word_frac=0.5))
