"""TF-IDF featurization fitted on the training split only.

`TfidfVectorizer.fit(texts)` learns a vocabulary and idf weights; `transform(texts)` returns
X, an N × D float32 CSR matrix with sorted indices and l2-normalized rows (when `norm="l2"`).
The fitted vectorizer saves into a model folder (`vocab.txt` + `idf.npy` + params), so that a
model predicts on new raw text without its training corpus.
"""

from __future__ import annotations

import json
import re
from itertools import chain
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as smat

from .params import ParamsBase
from .sparse import l2_normalize_rows

__all__ = ["TfidfParams", "TfidfVectorizer"]

# A token is a run of two or more word characters (the usual bag-of-words convention).
_TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")


@dataclass
class TfidfParams(ParamsBase):
    """Settings of the TF-IDF vectorizer.

    analyzer: "word" (word n-grams), "char_wb" (character n-grams inside word boundaries), or
        "word+char" (both, concatenated: the word block first).
    ngram_range: word n-gram sizes (inclusive).
    char_ngram_range: character n-gram sizes (inclusive) for "char_wb" / "word+char".
    min_df: a term must occur in at least this many training documents.
    max_df_ratio: drop terms occurring in more than this share of documents (1.0 keeps all).
    max_features: keep the max_features terms of highest document frequency (None: all).
    sublinear_tf: tf → 1 + log(tf).
    norm: "l2" or None.
    lowercase: fold case before tokenizing.
    """

    analyzer: str = "word"
    ngram_range: tuple[int, int] = (1, 2)
    char_ngram_range: tuple[int, int] = (3, 5)
    min_df: int = 2
    max_df_ratio: float = 1.0
    max_features: int | None = None
    sublinear_tf: bool = True
    norm: str | None = "l2"
    lowercase: bool = True

    def __post_init__(self):
        self.ngram_range = tuple(int(v) for v in self.ngram_range)
        self.char_ngram_range = tuple(int(v) for v in self.char_ngram_range)
        if self.analyzer not in ("word", "char_wb", "word+char"):
            raise ValueError(f"TfidfParams.analyzer: expected word, char_wb or word+char, got {self.analyzer!r}")
        for name in ("ngram_range", "char_ngram_range"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"TfidfParams.{name}: need 1 <= min <= max, got {(lo, hi)}")
        if self.min_df < 1:
            raise ValueError(f"TfidfParams.min_df: must be >= 1, got {self.min_df}")
        if not 0.0 < self.max_df_ratio <= 1.0:
            raise ValueError(f"TfidfParams.max_df_ratio: must be in (0, 1], got {self.max_df_ratio}")
        if self.norm not in ("l2", None):
            raise ValueError(f"TfidfParams.norm: expected 'l2' or None, got {self.norm!r}")



def _word_terms(tokens: list[str], lo: int, hi: int) -> list[str]:
    if lo == 1 and hi == 1:
        return tokens
    terms = list(tokens) if lo == 1 else []
    for n in range(max(lo, 2), hi + 1):
        # n-gram terms joined by a space, which a single token never contains.
        terms.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return terms


def _char_terms(tokens: list[str], lo: int, hi: int) -> list[str]:
    terms = []
    for tok in tokens:
        padded = f" {tok} "
        m = len(padded)
        for n in range(lo, hi + 1):
            if n > m:
                break
            # "\x01" marks a char n-gram so it cannot collide with a word term.
            terms.extend("\x01" + padded[i : i + n] for i in range(m - n + 1))
    return terms


def _factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, each key's index among them): numpy's unique with return_inverse,
    by polars' dense rank (multi-threaded; np.unique's sort dominated a fit on long texts)."""
    if len(keys) == 0:
        return keys, np.zeros(0, np.int64)
    import polars as pl

    inv = pl.Series(keys).rank("dense").to_numpy().astype(np.int64) - 1
    uniq = np.empty(int(inv.max()) + 1, keys.dtype)
    uniq[inv] = keys
    return uniq, inv


class TfidfVectorizer:
    """Word / character n-gram TF-IDF, fitted on training text only.

    Attributes after fit:
        vocab: dict term → column id (0..D-1).
        idf: (D,) float32, smooth idf = ln((1 + N) / (1 + df)) + 1.
    """

    def __init__(self, params: TfidfParams | None = None):
        self.params = params or TfidfParams()
        self.vocab: dict[str, int] | None = None
        self.idf: np.ndarray | None = None
        self._index = None  # token-id lookup tables of the word fast path, built on demand

    # -- word uni/bigrams: token ids, n-grams as integer pairs (no n-gram strings built) -----------
    def _fast(self) -> bool:
        p = self.params
        return p.analyzer == "word" and p.ngram_range[1] <= 2

    def _token_lists(self, texts: Iterable[str]):
        findall = _TOKEN_RE.findall
        if self.params.lowercase:
            toks = [findall(t.lower()) for t in texts]
        else:
            toks = [findall(t) for t in texts]
        lens = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
        return list(chain.from_iterable(toks)), lens

    def _fast_terms(self, tok_ids: np.ndarray, lens: np.ndarray, n_tok: int):
        """(doc ids, term keys) of every uni/bigram occurrence: a unigram's key is its token id,
        a bigram's -1 - (a * n_tok + b) (negative, so the two never collide). Tokens with id -1
        (unknown) drop out, and so do the bigrams that contain them."""
        lo, hi = self.params.ngram_range
        doc = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
        docs, keys = [], []
        if lo == 1:
            ok = tok_ids >= 0
            docs.append(doc[ok])
            keys.append(tok_ids[ok])
        if hi == 2:
            a, b = tok_ids[:-1], tok_ids[1:]
            ok = (doc[1:] == doc[:-1]) & (a >= 0) & (b >= 0)
            docs.append(doc[:-1][ok])
            keys.append(-1 - (a[ok] * n_tok + b[ok]))
        return np.concatenate(docs), np.concatenate(keys)

    def _fit_fast(self, texts):
        flat, lens = self._token_lists(texts)
        tokens: dict[str, int] = {}
        sd = tokens.setdefault
        tok_ids = np.fromiter([sd(t, len(tokens)) for t in flat], dtype=np.int64, count=len(flat))
        n_tok = len(tokens)
        doc_ids, keys = self._fast_terms(tok_ids, lens, n_tok)
        uniq, term_ids = _factorize(keys)
        names = list(tokens)

        def name(key):
            if key >= 0:
                return names[key]
            a, b = divmod(-1 - int(key), n_tok)
            return names[a] + " " + names[b]

        return doc_ids, term_ids.astype(np.int64), len(lens), uniq, name

    def _build_index(self):
        """Lookup tables of the fitted vocabulary for the fast path: token → id, unigram column
        per token id, and the bigram keys (sorted) with their columns."""
        tokens: dict[str, int] = {}
        sd = tokens.setdefault
        uni, bi = [], []
        for term, col in self.vocab.items():
            parts = term.split(" ")
            ids = [sd(t, len(tokens)) for t in parts]
            (uni if len(ids) == 1 else bi).append((ids, col))
        n_tok = max(len(tokens), 1)
        uni_col = np.full(n_tok, -1, np.int64)
        for ids, col in uni:
            uni_col[ids[0]] = col
        bkeys = np.array([a * n_tok + b for (a, b), _ in bi], dtype=np.int64)
        bcols = np.array([col for _, col in bi], dtype=np.int64)
        order = np.argsort(bkeys)
        self._index = (tokens, n_tok, uni_col, bkeys[order], bcols[order])
        return self._index

    def _count_fast(self, texts):
        tokens, n_tok, uni_col, bkeys, bcols = self._index or self._build_index()
        flat, lens = self._token_lists(texts)
        get = tokens.get
        tok_ids = np.fromiter([get(t, -1) for t in flat], dtype=np.int64, count=len(flat))
        doc_ids, keys = self._fast_terms(tok_ids, lens, n_tok)
        cols = np.full(len(keys), -1, np.int64)
        u = keys >= 0
        cols[u] = uni_col[keys[u]]
        if len(bkeys):
            bk = -1 - keys[~u]
            pos = np.minimum(np.searchsorted(bkeys, bk), len(bkeys) - 1)
            cols[~u] = np.where(bkeys[pos] == bk, bcols[pos], -1)
        ok = cols >= 0
        return doc_ids[ok], cols[ok], len(lens)

    # -- tokenization -------------------------------------------------------------------------
    def _terms(self, text: str) -> list[str]:
        p = self.params
        if p.lowercase:
            text = text.lower()
        tokens = _TOKEN_RE.findall(text)
        if p.analyzer == "word":
            return _word_terms(tokens, *p.ngram_range)
        if p.analyzer == "char_wb":
            return _char_terms(tokens, *p.char_ngram_range)
        return _word_terms(tokens, *p.ngram_range) + _char_terms(tokens, *p.char_ngram_range)

    def _count(self, texts: Iterable[str], vocab: dict[str, int], grow: bool):
        """Term ids per document as flat arrays (doc ids, term ids), duplicates included."""
        doc_lens = []
        ids: list[int] = []
        if grow:
            setdefault = vocab.setdefault
            for text in texts:
                terms = self._terms(text)
                doc_lens.append(len(terms))
                # setdefault evaluates len(vocab) before inserting: a new term gets the next id.
                ids.extend([setdefault(t, len(vocab)) for t in terms])
        else:
            get = vocab.get
            for text in texts:
                found = [i for i in map(get, self._terms(text)) if i is not None]
                doc_lens.append(len(found))
                ids.extend(found)
        term_ids = np.fromiter(ids, dtype=np.int64, count=len(ids))
        doc_ids = np.repeat(np.arange(len(doc_lens), dtype=np.int64), doc_lens)
        return doc_ids, term_ids, len(doc_lens)

    @staticmethod
    def _tf_matrix(doc_ids, term_ids, n_docs, n_terms) -> smat.csr_matrix:
        data = np.ones(len(term_ids), dtype=np.float32)
        tf = smat.csr_matrix((data, (doc_ids, term_ids)), shape=(n_docs, n_terms), dtype=np.float32)
        tf.sum_duplicates()  # also sorts indices
        return tf

    # -- public API ---------------------------------------------------------------------------
    def fit(self, texts: Sequence[str]) -> "TfidfVectorizer":
        self.fit_transform(texts)
        return self

    def fit_transform(self, texts: Sequence[str]) -> smat.csr_matrix:
        """Fit on `texts` (N strings) and return X (N × D float32 CSR)."""
        p = self.params
        self._index = None
        if self._fast():
            doc_ids, term_ids, n_docs, uniq, name = self._fit_fast(texts)
            n_terms = len(uniq)
        else:
            raw_vocab: dict[str, int] = {}
            doc_ids, term_ids, n_docs = self._count(texts, raw_vocab, grow=True)
            n_terms = len(raw_vocab)
        if n_docs == 0:
            raise ValueError("TfidfVectorizer.fit: no documents")
        tf = self._tf_matrix(doc_ids, term_ids, n_docs, n_terms)
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        keep = df >= p.min_df
        if p.max_df_ratio < 1.0:
            keep &= df <= p.max_df_ratio * n_docs
        kept = np.flatnonzero(keep)
        if p.max_features is not None and len(kept) > p.max_features:
            # highest df first; ties by first appearance (stable sort) for determinism
            order = np.argsort(-df[kept], kind="stable")[: p.max_features]
            kept = np.sort(kept[order])
        if len(kept) == 0:
            raise ValueError(
                f"TfidfVectorizer.fit: no term occurs in >= min_df={p.min_df} documents "
                f"({n_docs} documents, {n_terms} distinct terms)"
            )
        if self._fast():
            self.vocab = {name(uniq[j]): i for i, j in enumerate(kept)}
        else:
            terms = np.empty(len(raw_vocab), dtype=object)
            terms[list(raw_vocab.values())] = list(raw_vocab.keys())
            self.vocab = {t: i for i, t in enumerate(terms[kept])}
        self.idf = (np.log((1.0 + n_docs) / (1.0 + df[kept])) + 1.0).astype(np.float32)
        return self._weight(tf[:, kept])

    def transform(self, texts: Sequence[str]) -> smat.csr_matrix:
        """X (len(texts) × D float32 CSR); unseen terms are ignored, empty texts give empty rows."""
        if self.vocab is None:
            raise RuntimeError("TfidfVectorizer.transform called before fit")
        if self._fast():
            doc_ids, term_ids, n_docs = self._count_fast(texts)
        else:
            doc_ids, term_ids, n_docs = self._count(texts, self.vocab, grow=False)
        return self._weight(self._tf_matrix(doc_ids, term_ids, n_docs, len(self.vocab)))

    def _weight(self, tf: smat.csr_matrix) -> smat.csr_matrix:
        X = tf.astype(np.float32, copy=True)
        if self.params.sublinear_tf:
            np.log(X.data, out=X.data)
            X.data += 1.0
        X = X @ smat.diags(self.idf, format="csr", dtype=np.float32)
        X = smat.csr_matrix(X, dtype=np.float32)
        if self.params.norm == "l2":
            X = l2_normalize_rows(X)
        X.sort_indices()
        return X

    @property
    def n_features(self) -> int:
        return 0 if self.vocab is None else len(self.vocab)

    # -- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "params.json").write_text(json.dumps(self.params.to_dict(), indent=2))
        terms = [None] * len(self.vocab)
        for t, i in self.vocab.items():
            terms[i] = t
        # One term per line; terms never contain newlines (tokens are \w runs).
        with open(folder / "vocab.txt", "w", encoding="utf-8") as fh:
            fh.write("\n".join(terms))
            fh.write("\n")
        np.save(folder / "idf.npy", self.idf)

    @classmethod
    def load(cls, folder: str | Path) -> "TfidfVectorizer":
        folder = Path(folder)
        params = TfidfParams.from_dict(json.loads((folder / "params.json").read_text()))
        vec = cls(params)
        with open(folder / "vocab.txt", encoding="utf-8", newline="\n") as fh:
            terms = fh.read().split("\n")[:-1]
        vec.vocab = {t: i for i, t in enumerate(terms)}
        vec.idf = np.load(folder / "idf.npy").astype(np.float32)
        if len(vec.idf) != len(vec.vocab):
            raise ValueError(f"{folder}: vocab.txt has {len(vec.vocab)} terms but idf.npy {len(vec.idf)}")
        return vec

