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


def test_documents_follow_the_generative_model(small):
    """Numbers the module docstring fixes, computed here from the parameters, not from the code:
    Poisson(words_per_doc) tokens a document (the mean of 2000 has sd 0.2, of 500 sd 0.4); the
    token shares of the four vocabulary regions (background 30% of F, topic 15%, subtopic 15%,
    label 40%) are 1 - the word fractions, topic_word_frac, subtopic_word_frac, label_word_frac
    (~160k tokens: sd < 0.0013); a label-region token is a word of one of the document's labels."""
    X_trn, Y_trn, X_tst, _ = small
    assert abs(X_trn.sum() / X_trn.shape[0] - SMALL.words_per_doc) < 1.0
    assert abs(X_tst.sum() / X_tst.shape[0] - SMALL.words_per_doc) < 2.0
    F = SMALL.n_features
    b1, b2, b3 = int(0.3 * F), int(0.3 * F) + int(0.15 * F), int(0.3 * F) + 2 * int(0.15 * F)
    mass = np.asarray(X_trn.sum(axis=0)).ravel()
    shares = np.array([mass[:b1].sum(), mass[b1:b2].sum(), mass[b2:b3].sum(), mass[b3:].sum()]) / mass.sum()
    expected = [1 - SMALL.label_word_frac - SMALL.subtopic_word_frac - SMALL.topic_word_frac,
                SMALL.topic_word_frac, SMALL.subtopic_word_frac, SMALL.label_word_frac]
    np.testing.assert_allclose(shares, expected, atol=0.006)
    words = structure(SMALL).label_words
    for i in range(300):
        feats = X_trn.indices[X_trn.indptr[i]:X_trn.indptr[i + 1]]
        allowed = set(words[Y_trn.indices[Y_trn.indptr[i]:Y_trn.indptr[i + 1]]].ravel().tolist())
        assert set(feats[feats >= b3].tolist()) <= allowed, i


def test_non_default_settings_are_applied():
    # 1 + Poisson(labels_per_doc - 1) labels: with one label a document it is exactly one; with
    # 20,000 uniform labels and no local co-labels repeats are rare (~3e-4 a document), so the
    # mean is labels_per_doc (sd of the mean of 2000: sqrt(2 / 2000) = 0.03). Tokens:
    # max(1, Poisson(5)), mean 5.007 (sd 0.05); word shares as set (10k tokens: sd <= 0.005).
    base = dict(n_labels=20_000, n_train=2000, n_test=0, n_features=200, words_per_doc=5, zipf_a=0.0,
                local_colabel_frac=0.0, label_word_frac=0.3, subtopic_word_frac=0.1, topic_word_frac=0.4,
                seed=5)
    X1, Y1, _, _ = generate(SynthParams(labels_per_doc=1.0, **base))
    assert (np.diff(Y1.indptr) == 1).all()
    X3, Y3, _, _ = generate(SynthParams(labels_per_doc=3.0, **base))
    assert abs(Y3.nnz / Y3.shape[0] - 3.0) < 0.15
    for X in (X1, X3):
        assert abs(X.sum() / X.shape[0] - 5.0) < 0.2
        mass = np.asarray(X.sum(axis=0)).ravel()
        shares = np.array([mass[:60].sum(), mass[60:90].sum(), mass[90:120].sum(), mass[120:].sum()]) / mass.sum()
        np.testing.assert_allclose(shares, [0.2, 0.4, 0.1, 0.3], atol=0.025)


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


@pytest.mark.parametrize("a", [1.1, 0.5])
def test_first_label_follows_the_zipf_law(a):
    # one label a document: it is the first label, drawn with probability r**-a / sum_r r**-a for
    # the label of rank r (the structure's label weights only tell which label has which rank).
    # 20,000 documents: each of the 300 counts within 4.5 Poisson sd of its expectation (max |z|
    # measured 3.1 for a = 1.1); a wrong exponent (0.7 for 1.1) is off by > 40 sd
    n, L = 20_000, 300
    p = SynthParams(n_labels=L, n_train=n, n_test=0, n_features=100, words_per_doc=1, labels_per_doc=1.0,
                    zipf_a=a, seed=2)
    Y = generate(p)[1]
    freq = np.asarray(Y.sum(axis=0)).ravel()[np.argsort(-structure(p).label_weight, kind="stable")]
    r = np.arange(1, L + 1, dtype=np.float64)
    expected = n * r ** -a / np.sum(r ** -a)
    z = (freq - expected) / np.sqrt(expected)
    assert np.abs(z).max() < 4.5, (np.abs(z).max(), int(np.argmax(np.abs(z))))


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
