"""TF-IDF featurization fitted on the training split only.

`TfidfVectorizer.fit(texts)` learns a vocabulary and idf weights; `transform(texts)` returns
X, an N × D float32 CSR matrix with sorted indices and l2-normalized rows (when `norm="l2"`).
The fitted vectorizer saves into a model folder (`vocab.txt` + `idf.npy` + params), so that a
model predicts on new raw text without its training corpus.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl
import scipy.sparse as smat

from .folders import atomic_dir
from .params import ParamsBase
from .sparse import smooth_idf
from .textio import normalize_texts
from . import kernels, progress

__all__ = ["TfidfParams", "TfidfVectorizer"]

# A token is a run of two or more word characters (the usual bag-of-words convention).
_TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")
# The same tokens in Rust's regex syntax (polars): Python's \w is a letter, a number or "_", and
# `\b\w\w+\b` matches exactly the maximal runs of two or more of them. Equal for every code point
# Python's Unicode database assigns (a test checks them all); polars' newer Unicode also knows
# letters Python does not yet.
_TOKEN_PATTERN_RS = r"[\p{L}\p{N}_]{2,}"
#: documents tokenized per polars call (a progress update after each block)
_TOKENIZE_BLOCK = 100_000
#: up to this many texts, `transform` counts terms in Python (the same tokens, a test checks every
#: code point; the same counts and weights): polars' per-call set-up costs milliseconds
_FEW_TEXTS = 8


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


def _term_buffer(per_token: int, n_tokens: int, n_terms: int) -> np.ndarray:
    """Room for the term ids of a corpus' occurrences: int32 unless the terms need int64."""
    return np.empty(per_token * n_tokens, np.int32 if n_terms < 2**31 else np.int64)


class TfidfVectorizer:
    """Word / character n-gram TF-IDF, fitted on training text only.

    Word uni/bigrams take a compiled fast path (tokens in polars, n-grams as integer pairs);
    other analyzers count term strings in Python. Terms are runs of two or more word characters
    (regex ``(?u)\\b\\w\\w+\\b``), lowercased when ``params.lowercase``.

    Attributes:
        params: :class:`TfidfParams`.
        vocab: dict term → column id (0..D-1); None before fit.
        idf: (D,) float32, smooth idf = ln((1 + N) / (1 + df)) + 1; None before fit.

    Args:
        params: :class:`TfidfParams` (None: defaults, word uni+bigrams, min_df 2, sublinear tf,
            l2 rows).

    Source:
        scikit-learn's ``TfidfVectorizer`` weighting (smooth_idf, sublinear_tf), the featurizer
        of PECOS's XR-Linear baselines (Yu et al. 2022, JMLR).
    """

    def __init__(self, params: TfidfParams | None = None):
        self.params = params or TfidfParams()
        self.vocab: dict[str, int] | None = None
        self.idf: np.ndarray | None = None
        self._index = None  # token-id lookup tables of the word fast path, built on demand
        self._token_of = None  # those tokens' ids as a dict, for a few texts (`_count_few`)

    # -- word uni/bigrams: tokens in polars, n-grams as integer pairs (no n-gram strings built) ---
    def _fast(self) -> bool:
        p = self.params
        return p.analyzer == "word" and p.ngram_range[1] <= 2

    def _token_series(self, texts):
        """(every token of every text in order as a polars String Series, doc_ptr): text d's
        tokens are flat[doc_ptr[d]:doc_ptr[d+1]]. Lowercasing and the token regex run in polars
        (Rust, multi-threaded)."""
        texts = list(texts)
        parts = []
        # documents in blocks, so that a long corpus reports progress (each block still runs
        # multi-threaded in polars; the blocks' token lists are joined in order)
        with progress.task("tf-idf: tokenize", len(texts), "doc") as bar:
            for lo in range(0, max(len(texts), 1), _TOKENIZE_BLOCK):
                s = pl.Series("text", texts[lo:lo + _TOKENIZE_BLOCK], dtype=pl.String)
                if self.params.lowercase:
                    s = s.str.to_lowercase()
                parts.append(s.str.extract_all(_TOKEN_PATTERN_RS))
                bar.update(len(s))
        toks = parts[0] if len(parts) == 1 else pl.concat(parts, rechunk=False)  # no copy of the blocks
        del parts
        doc_ptr = np.zeros(len(toks) + 1, np.int64)
        np.cumsum(toks.list.len().fill_null(0).to_numpy(), out=doc_ptr[1:])
        # explode turns an empty list into one null: drop those
        return toks.explode().drop_nulls().rename("tok"), doc_ptr

    @staticmethod
    def _token_ids(flat, tokens) -> np.ndarray:
        """Id of each token of `flat` in the String Series `tokens` (its row number), -1 if absent;
        int32 (a vocabulary of tokens is far below 2**31)."""
        table = pl.DataFrame({"tok": tokens, "id": np.arange(len(tokens), dtype=np.int32)})
        found = pl.DataFrame({"tok": flat}).join(table, on="tok", how="left", maintain_order="left")
        return found["id"].fill_null(-1).to_numpy()

    def _fit_fast(self, texts):
        """Counts of every uni/bigram of `texts`: (tf CSR, names), names(term ids) → strings."""
        flat, doc_ptr = self._token_series(texts)
        tokens = flat.unique().sort()  # sorted, so that ids do not depend on threads
        n_tok = len(tokens)
        tok = self._token_ids(flat, tokens)
        del flat  # the corpus' token strings: the ids are all that is needed from here
        if len(tok) >= 2**31:
            raise ValueError(f"TfidfVectorizer.fit: {len(tok)} tokens; at most 2**31 - 1 per call")
        lo, hi = self.params.ngram_range
        n_uni = n_tok if lo == 1 else 0
        if hi == 2:
            bid, pair_a, pair_b = kernels.bigram_ids(tok, doc_ptr, n_tok)
        else:
            bid, pair_a, pair_b = np.full(len(tok), -1, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        T, t_ptr = kernels.ngram_terms(tok, doc_ptr, bid, lo == 1, hi == 2, n_uni,
                                       _term_buffer((lo == 1) + (hi == 2), len(tok), n_uni + len(pair_a)))
        del bid, tok
        tf = self._count_terms(T, t_ptr, n_uni + len(pair_a))

        def names(term_ids: np.ndarray) -> list[str]:
            uni = term_ids < n_uni
            out = np.empty(len(term_ids), dtype=object)
            out[uni] = tokens.gather(term_ids[uni]).to_numpy()
            j = term_ids[~uni] - n_uni
            bi = pl.select(pl.concat_str([tokens.gather(pair_a[j]), pl.lit(" "), tokens.gather(pair_b[j])]))
            out[~uni] = bi.to_series().to_numpy()
            return out.tolist()

        return tf, names

    @classmethod
    def _count_terms(cls, T, t_ptr, n_terms) -> smat.csr_matrix:
        """Term counts per document (CSR), documents cut into blocks counted in threads."""
        n_docs = len(t_ptr) - 1
        blocks = min(os.cpu_count() or 1, 8) if len(T) > 1_000_000 else 1
        if blocks == 1:
            return cls._csr(*kernels.count_terms(T, t_ptr), n_terms)
        cuts = np.linspace(0, n_docs, blocks + 1).astype(np.int64)

        def run(i):
            a, b = cuts[i], cuts[i + 1]
            return kernels.count_terms(T[t_ptr[a]:t_ptr[b]], t_ptr[a:b + 1] - t_ptr[a])

        with ThreadPoolExecutor(blocks) as ex:
            parts = list(ex.map(run, range(blocks)))
        offsets = np.cumsum([0] + [part[0][-1] for part in parts[:-1]])
        indptr = np.concatenate([[0]] + [part[0][1:] + off for part, off in zip(parts, offsets)])
        return cls._csr(indptr, np.concatenate([part[1] for part in parts]),
                        np.concatenate([part[2] for part in parts]), n_terms)

    @staticmethod
    def _csr(indptr, indices, data, n_cols) -> smat.csr_matrix:
        X = smat.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_cols))
        X.has_sorted_indices = True
        return X

    def _build_index(self):
        """Lookup tables of the fitted vocabulary for the fast path: the vocabulary's tokens
        (sorted), unigram column per token id, and the bigram keys (sorted) with their columns."""
        terms = pl.Series("term", list(self.vocab), dtype=pl.String)
        cols = np.fromiter(self.vocab.values(), dtype=np.int64, count=len(self.vocab))
        parts = terms.str.split_exact(" ", 1).struct.unnest()
        first, second = parts["field_0"], parts["field_1"]
        bi = second.is_not_null().to_numpy()
        tokens = pl.concat([first, second.drop_nulls()]).unique().sort()
        n_tok = max(len(tokens), 1)
        a = self._token_ids(first, tokens)
        uni_col = np.full(n_tok, -1, np.int64)
        uni_col[a[~bi]] = cols[~bi]
        b = self._token_ids(second.filter(pl.Series(bi)), tokens)
        # int64: the ids are int32, and NumPy 2 keeps int32 * int in int32, which wraps once
        # n_tok passes 46,340 (a bigram's key is a * n_tok + b, up to n_tok**2), and the compiled
        # look-up (`kernels.lookup_terms`) computes its keys in int64
        bkeys = a[bi].astype(np.int64) * n_tok + b
        order = np.argsort(bkeys)
        self._index = (tokens, n_tok, uni_col, bkeys[order], cols[bi][order])
        return self._index

    def _count_fast(self, texts) -> smat.csr_matrix:
        tokens, n_tok, uni_col, bkeys, bcols = self._index or self._build_index()
        flat, doc_ptr = self._token_series(texts)
        tok = self._token_ids(flat, tokens)
        del flat
        lo, hi = self.params.ngram_range
        T, t_ptr = kernels.lookup_terms(tok, doc_ptr, n_tok, lo == 1, hi == 2, uni_col, bkeys, bcols,
                                        _term_buffer(2, len(tok), len(self.vocab)))
        return self._count_terms(T, t_ptr, len(self.vocab))

    def _count_few(self, texts) -> smat.csr_matrix:
        """`_count_fast` for a few texts (a request): Python's tokenizer (as `_terms`) and a dict
        from token to id instead of polars' set-up, then the same compiled lookup of uni- and
        bigram columns; no n-gram strings are built. Same counts as `_count`."""
        tokens, n_tok, uni_col, bkeys, bcols = self._index or self._build_index()
        if self._token_of is None:
            self._token_of = {t: i for i, t in enumerate(tokens.to_list())}
        get = self._token_of.get
        ids, doc_ptr = [], [0]
        for text in texts:
            ids += [get(t, -1) for t in _TOKEN_RE.findall(text.lower() if self.params.lowercase else text)]
            doc_ptr.append(len(ids))
        tok = np.asarray(ids, np.int32)
        lo, hi = self.params.ngram_range
        T, t_ptr = kernels.lookup_terms(tok, np.asarray(doc_ptr, np.int64), n_tok, lo == 1, hi == 2, uni_col,
                                        bkeys, bcols, _term_buffer(2, len(tok), len(self.vocab)))
        return self._count_terms(T, t_ptr, len(self.vocab))

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
        texts = list(texts)
        with progress.task("tf-idf: n-grams", len(texts), "doc") as bar:
            if grow:
                setdefault = vocab.setdefault
                for d, text in enumerate(texts, 1):
                    terms = self._terms(text)
                    doc_lens.append(len(terms))
                    # setdefault evaluates len(vocab) before inserting: a new term gets the next id.
                    ids.extend([setdefault(t, len(vocab)) for t in terms])
                    if d % 10_000 == 0:
                        bar.update(10_000)
            else:
                get = vocab.get
                for d, text in enumerate(texts, 1):
                    found = [i for i in map(get, self._terms(text)) if i is not None]
                    doc_lens.append(len(found))
                    ids.extend(found)
                    if d % 10_000 == 0:
                        bar.update(10_000)
            bar.update(len(texts) % 10_000)
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
        """Learn the vocabulary and idf weights of `texts` (as :meth:`fit_transform`, X dropped).

        Args:
            texts: N training documents (str), NFC-normalized first.

        Returns:
            self, with vocab (D terms) and idf ((D,) float32) set.

        Raises:
            ValueError: no documents, or no term in >= min_df documents.
            DataFormatError: a text that is not valid Unicode (a lone surrogate).
            TypeError: an element of `texts` is not a str.
        """
        self.fit_transform(texts)
        return self

    def fit_transform(self, texts: Sequence[str]) -> smat.csr_matrix:
        """Fit the vocabulary and idf on `texts` and return their TF-IDF matrix.

        Terms in fewer than min_df documents or in more than max_df_ratio · N are dropped; with
        max_features, the terms of highest document frequency are kept (ties: lower raw term id first).
        Weights: (1 + ln tf if sublinear_tf else tf) · idf, rows scaled to unit l2 norm when
        norm = "l2".

        Args:
            texts: N training documents (str), NFC-normalized first (`textio.normalize_texts`).

        Returns:
            X: N × D float32 CSR, indices sorted, rows l2-normalized (norm "l2"; an empty text
            gives an empty row).

        Raises:
            ValueError: no documents, or no term in >= min_df documents.
            DataFormatError: a text that is not valid Unicode (a ValueError subclass; names it).
            TypeError: an element of `texts` is not a str.
        """
        texts = normalize_texts(texts)
        p = self.params
        self._index = self._token_of = None
        if self._fast():
            tf, names = self._fit_fast(texts)
        else:
            raw_vocab: dict[str, int] = {}
            tf = self._tf_matrix(*self._count(texts, raw_vocab, grow=True), len(raw_vocab))
        n_docs, n_terms = tf.shape
        if n_docs == 0:
            raise ValueError("TfidfVectorizer.fit: no documents")
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        keep = df >= p.min_df
        if p.max_df_ratio < 1.0:
            keep &= df <= p.max_df_ratio * n_docs
        kept = np.flatnonzero(keep)
        if len(kept) == 0:
            # with no term at all min_df is not the cause: say what the word tokenizer keeps
            why = ("; the texts hold no word: a word is 2 or more letters, digits or underscores, so "
                   "one-character tokens and punctuation are dropped") if n_terms == 0 and p.analyzer == "word" else ""
            raise ValueError(
                f"TfidfVectorizer.fit: no term occurs in >= min_df={p.min_df} documents "
                f"({n_docs} documents, {n_terms} distinct terms){why}"
            )
        if p.max_features is not None and len(kept) > p.max_features:
            # highest df first; ties by column order, for determinism
            kept = np.sort(kept[np.argsort(-df[kept], kind="stable")[: p.max_features]])
        if self._fast():
            kept_names = names(kept)
        else:
            terms = np.empty(len(raw_vocab), dtype=object)
            terms[list(raw_vocab.values())] = list(raw_vocab.keys())
            kept_names = terms[kept].tolist()
        self.vocab = dict(zip(kept_names, range(len(kept))))
        self.idf = smooth_idf(df[kept], n_docs)
        newcol = np.full(n_terms, -1, np.int64)
        newcol[kept] = np.arange(len(kept))
        return self._weight(self._csr(*kernels.remap_columns(tf.indptr, tf.indices, tf.data, newcol), len(kept)))

    def transform(self, texts: Sequence[str]) -> smat.csr_matrix:
        """TF-IDF rows of `texts` under the fitted vocabulary and idf.

        Args:
            texts: N documents (str), NFC-normalized first (`textio.normalize_texts`), as in
                :meth:`fit_transform`.

        Returns:
            X: N × D float32 CSR, indices sorted, rows l2-normalized (norm "l2"); unseen terms
            are ignored, a text without known terms gives an empty row.

        Raises:
            RuntimeError: called before fit.
            DataFormatError: a text that is not valid Unicode (a ValueError subclass).
            TypeError: an element of `texts` is not a str.
        """
        if self.vocab is None:
            raise RuntimeError("TfidfVectorizer.transform called before fit")
        texts = normalize_texts(texts)
        if self._fast():  # few texts (a request): Python's tokenizer beats polars' set-up
            tf = self._count_fast(texts) if len(texts) > _FEW_TEXTS else self._count_few(texts)
        else:
            tf = self._tf_matrix(*self._count(texts, self.vocab, grow=False), len(self.vocab))
        return self._weight(tf)

    def _weight(self, tf: smat.csr_matrix) -> smat.csr_matrix:
        """tf counts (float32 CSR, sorted indices) → TF-IDF, in place."""
        kernels.tfidf_weight(tf.indptr, tf.indices, tf.data, self.idf, self.params.sublinear_tf,
                             self.params.norm == "l2")
        return tf

    @property
    def n_features(self) -> int:
        """Vocabulary size D (int); 0 before fit."""
        return 0 if self.vocab is None else len(self.vocab)

    # -- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write the fitted vectorizer into `folder`, atomically (`folders.atomic_dir`, kind
        "featurizer").

        Files: params.json (:class:`TfidfParams`), vocab.txt (UTF-8, one term per line, line
        number = column) and idf.npy ((D,) float32).

        Args:
            folder: destination path (str or Path).

        Raises:
            PathInUseError: `folder` exists and is not a folder xmc wrote.
            TypeError: called before fit (no vocabulary).
        """
        terms = [None] * len(self.vocab)
        for t, i in self.vocab.items():
            terms[i] = t
        with atomic_dir(folder, kind="featurizer") as tmp:
            (tmp / "params.json").write_text(json.dumps(self.params.to_dict(), indent=2))
            # One term per line; terms never contain newlines (tokens are \w runs).
            with open(tmp / "vocab.txt", "w", encoding="utf-8") as fh:
                fh.write("\n".join(terms))
                fh.write("\n")
            np.save(tmp / "idf.npy", self.idf)

    @classmethod
    def load(cls, folder: str | Path) -> "TfidfVectorizer":
        """The vectorizer saved in `folder` by :meth:`save`.

        Args:
            folder: a folder written by :meth:`save` (str or Path).

        Returns:
            TfidfVectorizer with vocab (D terms) and idf ((D,) float32) set.

        Raises:
            FileNotFoundError: params.json, vocab.txt or idf.npy is missing.
            ValueError: vocab.txt and idf.npy disagree on D, or params.json has unknown keys.
        """
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

