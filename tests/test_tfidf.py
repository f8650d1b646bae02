import numpy as np
import pytest
import scipy.sparse as smat

from xmc_core.tfidf import TfidfParams, TfidfVectorizer

WORDS = ["apple", "fruit", "computer", "device", "tax", "law", "court", "price", "oil", "grain", "Apple", "ÉTÉ"]


def _corpus(n, seed):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        k = int(rng.integers(0, 12))
        docs.append(" ".join(rng.choice(WORDS, size=k)) + ("." if k % 3 == 0 else ""))
    return docs


def _by_term(vec: TfidfVectorizer, X: smat.csr_matrix) -> dict:
    """Matrix entries keyed by (row, term), so two vectorizers' column orders don't matter."""
    names = {i: t for t, i in vec.vocab.items()}
    C = X.tocoo()
    return {(int(r), names[int(c)]): float(v) for r, c, v in zip(C.row, C.col, C.data)}


def _generic(params) -> TfidfVectorizer:
    vec = TfidfVectorizer(params)
    vec._fast = lambda: False  # the string n-gram path
    return vec


@pytest.mark.parametrize("params", [
    TfidfParams(),
    TfidfParams(ngram_range=(1, 1), sublinear_tf=False),
    TfidfParams(ngram_range=(2, 2), min_df=1),
    TfidfParams(lowercase=False, norm=None),
])
def test_word_fast_path_equals_string_ngrams(params):
    train, test = _corpus(300, 0), _corpus(80, 1) + ["zebra apple", ""]
    fast, slow = TfidfVectorizer(params), _generic(params)
    Xf, Xs = fast.fit_transform(train), slow.fit_transform(train)
    assert set(fast.vocab) == set(slow.vocab)
    a, b = _by_term(fast, Xf), _by_term(slow, Xs)
    assert a.keys() == b.keys()
    assert all(abs(a[k] - b[k]) < 1e-6 for k in a)
    Tf, Ts = fast.transform(test), slow.transform(test)
    a, b = _by_term(fast, Tf), _by_term(slow, Ts)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)
    assert Tf.shape == (len(test), len(fast.vocab)) and Tf[len(test) - 1].nnz == 0


def test_tfidf_values_by_hand():
    docs = ["a1 b2 a1", "a1 c3", "b2 c3"]
    vec = TfidfVectorizer(TfidfParams(ngram_range=(1, 1), min_df=1, sublinear_tf=True, norm=None))
    X = vec.fit_transform(docs)
    idf = lambda df: np.log(4.0 / (1.0 + df)) + 1.0  # smooth idf, N = 3
    assert X[0, vec.vocab["a1"]] == pytest.approx((1 + np.log(2)) * idf(2), rel=1e-6)
    assert X[0, vec.vocab["b2"]] == pytest.approx(idf(2), rel=1e-6)
    assert X[1, vec.vocab["c3"]] == pytest.approx(idf(2), rel=1e-6)
    assert X.dtype == np.float32 and X.has_sorted_indices
    Xn = TfidfVectorizer(TfidfParams(min_df=1)).fit_transform(docs)
    np.testing.assert_allclose(np.asarray(Xn.multiply(Xn).sum(axis=1)).ravel(), 1.0, rtol=1e-6)


def test_bigram_kept_when_its_unigrams_are_not(tmp_path):
    # max_df drops the frequent unigrams; their bigram is rarer and stays, and transform finds it
    docs = ["oil price up", "oil price down", "oil tax", "price law", "grain court"] * 2
    params = TfidfParams(min_df=2, max_df_ratio=0.5)
    vec = TfidfVectorizer(params)
    vec.fit_transform(docs)
    assert "oil price" in vec.vocab and "oil" not in vec.vocab and "price" not in vec.vocab
    X = vec.transform(["the oil price today"])
    assert X[0, vec.vocab["oil price"]] > 0
    vec.save(tmp_path / "f")
    again = TfidfVectorizer.load(tmp_path / "f")
    assert (again.transform(docs) != vec.transform(docs)).nnz == 0


def test_polars_tokens_equal_python_regex_on_every_assigned_code_point():
    """The fast path tokenizes in polars (Rust regex); the documented token rule is Python's
    (?u)\\b\\w\\w+\\b after str.lower(). Each assigned code point is tried inside a word, doubled,
    and after a letter, so both \\w membership and lowercasing are covered."""
    import re
    import unicodedata

    import polars as pl

    from xmc_core.tfidf import _TOKEN_PATTERN_RS

    cps = [c for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    texts = [f"x{chr(c)}x {chr(c)}{chr(c)} Q{chr(c)}" for c in cps]
    pat = re.compile(r"(?u)\b\w\w+\b")
    ours = pl.Series(texts).str.to_lowercase().str.extract_all(_TOKEN_PATTERN_RS).to_list()
    bad = [hex(c) for c, t, o in zip(cps, texts, ours) if pat.findall(t.lower()) != o]
    assert not bad, f"{len(bad)} code points tokenize differently, e.g. {bad[:10]}"


def test_columns_do_not_depend_on_document_order_of_first_use():
    docs = _corpus(200, 3)
    a = TfidfVectorizer(TfidfParams(min_df=1)).fit(docs)
    b = TfidfVectorizer(TfidfParams(min_df=1)).fit(docs[::-1])
    assert a.vocab == b.vocab  # tokens are numbered in sorted order, bigrams by their first token


@pytest.mark.parametrize("path", ["fast", "generic"])
def test_default_settings_by_hand(path):
    """Defaults (uni+bigrams, min_df 2, sublinear tf, smooth idf, l2, lowercase) and the settings
    that change them, on 4 documents counted by hand. Document frequencies after lowercasing:
    oil 3, price 3, up 2, grain 2, "oil price" 2; every other bigram ("oil oil", "price up",
    "grain price", "grain up", "up oil") 1, so below min_df."""
    docs = ["Oil oil price", "oil price up", "grain price", "grain up oil"]
    make = (lambda p: TfidfVectorizer(p)) if path == "fast" else _generic
    idf3, idf2 = np.log(5 / 4) + 1, np.log(5 / 3) + 1  # ln((1 + N) / (1 + df)) + 1, N = 4

    def l2(row):
        n = np.sqrt(sum(v * v for v in row.values()))
        return {t: v / n for t, v in row.items()}

    def check(params, expected_vocab, expected_rows):
        vec = make(params)
        X = vec.fit_transform(docs)
        assert set(vec.vocab) == expected_vocab
        got = _by_term(vec, X)
        exp = {(i, t): v for i, row in enumerate(expected_rows) for t, v in row.items()}
        assert got.keys() == exp.keys()
        for key in exp:
            assert got[key] == pytest.approx(exp[key], rel=1e-5), key

    vocab = {"oil", "price", "up", "grain", "oil price"}
    rows = [{"oil": (1 + np.log(2)) * idf3, "price": idf3, "oil price": idf2},
            {"oil": idf3, "price": idf3, "up": idf2, "oil price": idf2},
            {"grain": idf2, "price": idf3},
            {"grain": idf2, "up": idf2, "oil": idf3}]
    check(TfidfParams(), vocab, [l2(r) for r in rows])
    # raw counts: "oil" twice in document 0 weighs 2 × idf
    check(TfidfParams(sublinear_tf=False, norm=None), vocab, [{**rows[0], "oil": 2 * idf3}] + rows[1:])
    # case kept: "Oil" (df 1) is dropped, "oil" occurs once in document 0
    check(TfidfParams(lowercase=False, norm=None), vocab, [{**rows[0], "oil": idf3}] + rows[1:])
    # min_df 1 keeps the single-document bigrams (idf ln(5/2) + 1)
    idf1 = np.log(5 / 2) + 1
    check(TfidfParams(min_df=1, ngram_range=(2, 2), norm=None),
          {"oil oil", "oil price", "price up", "grain price", "grain up", "up oil"},
          [{"oil oil": idf1, "oil price": idf2}, {"oil price": idf2, "price up": idf1},
           {"grain price": idf1}, {"grain up": idf1, "up oil": idf1}])
    # max_df_ratio 0.5 drops the terms of df 3 (> 2 documents); max_features 2 keeps them alone
    check(TfidfParams(max_df_ratio=0.5, norm=None), {"up", "grain", "oil price"},
          [{"oil price": idf2}, {"up": idf2, "oil price": idf2}, {"grain": idf2}, {"grain": idf2, "up": idf2}])
    check(TfidfParams(max_features=2, norm=None), {"oil", "price"},
          [{"oil": (1 + np.log(2)) * idf3, "price": idf3}, {"oil": idf3, "price": idf3}, {"price": idf3},
           {"oil": idf3}])


def test_tokenizing_in_document_blocks_changes_nothing(monkeypatch):
    """Long corpora are tokenized in blocks of documents (for progress): the same vocabulary and
    matrix as one block, empty texts included."""
    from xmc_core import tfidf as tfidf_module
    from xmc_core.tfidf import TfidfParams, TfidfVectorizer

    texts = ["wheat grain exports", "", "oil crude prices rose", "grain and oil", "x", "crude wheat oil grain"] * 3
    one = TfidfVectorizer(TfidfParams(min_df=1))
    X1 = one.fit_transform(texts)
    monkeypatch.setattr(tfidf_module, "_TOKENIZE_BLOCK", 4)
    blocks = TfidfVectorizer(TfidfParams(min_df=1))
    X2 = blocks.fit_transform(texts)
    assert blocks.vocab == one.vocab
    assert (X1 != X2).nnz == 0 and (blocks.transform(texts) != X1).nnz == 0


def test_few_texts_transform_as_many_bit_for_bit():
    """`transform` of a few texts (a request) tokenizes in Python and looks tokens up in a dict;
    a long list goes through polars: the same rows, bit for bit, texts with accents, digits,
    case and repeats included."""
    from xmc_core.tfidf import _FEW_TEXTS, TfidfParams, TfidfVectorizer

    train = ["Wheat and grain exports rose", "Crude oil prices fell; OPEC met", "Café au lait, café noir",
             "grain grain wheat 2024 exports", "ÉCOLE école Straße STRASSE", "oil and wheat and grain"] * 4
    vec = TfidfVectorizer(TfidfParams(min_df=1)).fit(train)
    test = ["wheat exports rose again", "café école", "", "OPEC OPEC oil oil oil", "straße strasse 2024",
            "unknown words only", "grain and oil prices", "Wheat", "and grain", "crude"]
    many = vec.transform(test)  # more than _FEW_TEXTS: polars
    assert len(test) > _FEW_TEXTS
    for i, text in enumerate(test):
        one = vec.transform([text])
        assert one.indices.tolist() == many[i].indices.tolist(), text
        assert one.data.tobytes() == many[i].data.tobytes(), text


@pytest.mark.parametrize("ngram_range, lowercase", [((1, 2), True), ((1, 1), True), ((2, 2), False), ((1, 2), False)])
def test_few_texts_count_the_terms_the_string_path_counts(ngram_range, lowercase):
    """The few-texts path (token ids, then the compiled uni/bigram lookup) counts what counting
    term strings counts: unknown tokens break bigrams, repeats add up, min_df drops terms."""
    from xmc_core.tfidf import TfidfParams, TfidfVectorizer

    train = ["the wheat and grain exports rose", "crude oil prices fell and OPEC met", "oil and wheat and grain",
             "Grain Grain wheat exports", "prices rose and fell"] * 3 + ["rare words once"]
    vec = TfidfVectorizer(TfidfParams(min_df=2, ngram_range=ngram_range, lowercase=lowercase)).fit(train)
    texts = ["wheat and grain and wheat and grain", "unknown wheat grain exports zzz oil prices",
             "Grain grain GRAIN rare words", "", "oil"]
    strings = vec._tf_matrix(*vec._count(texts, vec.vocab, grow=False), len(vec.vocab))
    ids = vec._count_few(texts)
    assert ids.indptr.tolist() == strings.indptr.tolist() and ids.indices.tolist() == strings.indices.tolist()
    np.testing.assert_array_equal(ids.data, strings.data)
    assert ids.nnz >= 5  # not a comparison of empty matrices


@pytest.mark.parametrize("texts, hint", [(["1 2", "a b", "- +", "x"], True), (["alpha beta", "gamma delta"], False)])
def test_no_term_error_says_why(texts, hint):
    """No term at all (one-character tokens only) names what a word is; terms below min_df do not."""
    with pytest.raises(ValueError, match=r"no term occurs in >= min_df=2 documents") as err:
        TfidfVectorizer(TfidfParams(min_df=2)).fit(texts)
    assert ("one-character tokens" in str(err.value)) is hint
    assert "\n" not in str(err.value)


def _large_vocabulary_corpus(n_tokens=110_000, per_doc=100, seed=0):
    """Texts over more than 100,000 distinct word tokens, each document twice (so every uni- and
    bigram has df 2 and survives min_df=2): bigram keys a * n_tok + b reach n_tok**2 ≈ 1.2e10,
    far past 2**31. Words are lowercase letters only, so xmc and scikit-learn tokenize alike."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = set()
    while len(words) < n_tokens:
        for w in ("".join(rng.choice(letters, 7)) for _ in range(n_tokens)):
            words.add(w)
    words = sorted(words)[:n_tokens]
    order = rng.permutation(n_tokens)
    docs = [" ".join(words[j] for j in order[i:i + per_doc]) for i in range(0, n_tokens, per_doc)]
    return docs + docs, words


@pytest.fixture(scope="module")
def large_vocabulary():
    texts, words = _large_vocabulary_corpus()
    vec = TfidfVectorizer(TfidfParams(ngram_range=(1, 2), min_df=2, sublinear_tf=True))
    X_fit = vec.fit_transform(texts)
    return texts, vec, X_fit


def test_large_vocabulary_transform_equals_fit_transform(large_vocabulary, tmp_path):
    """On a vocabulary whose bigram keys pass 2**31 (110,000 unigram tokens), `transform` of the
    training texts gives `fit_transform`'s matrix: every bigram found again (the keys were
    int32 and wrapped under NumPy 2), through the batch path, the few-texts path and a
    vectorizer saved and loaded."""
    from xmc_core.tfidf import _FEW_TEXTS

    texts, vec, X_fit = large_vocabulary
    n_tok = sum(" " not in t for t in vec.vocab)
    assert n_tok > 100_000 and n_tok ** 2 > 2**31
    n_bi = len(vec.vocab) - n_tok
    assert n_bi > 100_000
    X = vec.transform(texts)
    assert X.nnz == X_fit.nnz and (X != X_fit).nnz == 0
    for i in range(0, len(texts), 97):  # one text at a time: the few-texts path
        one = vec.transform([texts[i]])
        assert one.indices.tolist() == X_fit[i].indices.tolist()
        np.testing.assert_array_equal(one.data, X_fit[i].data)
    few = vec.transform(texts[:_FEW_TEXTS])
    assert (few != X_fit[:_FEW_TEXTS]).nnz == 0
    vec.save(tmp_path / "featurizer")
    again = TfidfVectorizer.load(tmp_path / "featurizer")
    assert (again.transform(texts) != X_fit).nnz == 0


def test_large_vocabulary_equals_scikit_learn(large_vocabulary):
    """xmc's TF-IDF equals scikit-learn's `TfidfVectorizer(ngram_range=(1, 2), min_df=2,
    sublinear_tf=True)` term for term (values within 1e-5) on the same texts, fitted and
    transformed, on a vocabulary past 100,000 unigram tokens."""
    sk = pytest.importorskip("sklearn.feature_extraction.text")

    texts, vec, X_fit = large_vocabulary
    ref = sk.TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, dtype=np.float32)
    R_fit = ref.fit_transform(texts)
    assert set(ref.vocabulary_) == set(vec.vocab)
    perm = np.empty(len(vec.vocab), np.int64)  # xmc column -> scikit-learn column
    for term, j in vec.vocab.items():
        perm[j] = ref.vocabulary_[term]
    for X, R in ((X_fit, R_fit), (vec.transform(texts[:500]), ref.transform(texts[:500]))):
        X = smat.csr_matrix((X.data, perm[X.indices], X.indptr), shape=X.shape)
        X.sort_indices()
        R = smat.csr_matrix(R)
        R.sort_indices()
        assert np.array_equal(X.indptr, R.indptr) and np.array_equal(X.indices, R.indices)
        np.testing.assert_allclose(X.data, R.data, atol=1e-5)


def test_count_terms_keeps_term_ids_past_int32():
    """Term ids of 2**31 and more (a fit with that many distinct terms gets an int64 term buffer)
    stay whole in the counted matrix's indices, as do they through the column remap."""
    from xmc_core import kernels

    big = 2**31 + 5
    T = np.array([3, big, big, 7, 2**33], np.int64)
    indptr, indices, counts = kernels.count_terms(T.copy(), np.array([0, 3, 5], np.int64))
    assert indices.dtype == np.int64
    assert indices.tolist() == [3, big, 7, 2**33] and counts.tolist() == [1, 2, 1, 1]
    out_ptr, out_ind, _ = kernels.remap_columns(np.array([0, 2], np.int64), np.array([0, 1], np.int64),
                                                np.ones(2, np.float32), np.array([big, 4], np.int64))
    assert out_ind.tolist() == [4, big]
