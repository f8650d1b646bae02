"""Synthetic extreme multi-label (XMC) data with known structure.

Generative model
----------------
* **Hierarchy.**  ``n_topics`` top-level topics, each split into
  ``subtopics_per_topic`` subtopics; every label belongs to one subtopic
  (labels are spread evenly over subtopics).  With ``ambiguous_frac > 0`` a
  share of the labels also gets a second subtopic under a *different* topic:
  each of its documents is drawn from one of the two contexts (coin flip), so
  the label's documents form two separate clusters.
* **Vocabulary.**  The F feature ids are cut into four regions: background
  words (30%), topic words (15%, one contiguous block per topic), subtopic
  words (15%, one block per subtopic) and label words (40%); each label owns
  ``words_per_label`` ids drawn at random from the label region (labels may
  share some ids by chance).
* **Labels of a document.**  The first label is drawn from a Zipf law over
  labels (frequency of the r-th most frequent label ~ 1 / r**zipf_a, ranks
  assigned to labels at random), which gives a heavy tail of rare (and some
  unseen) labels.  The document's *context* is that label's subtopic (or, for
  an ambiguous label, one of its two).  The number of labels is
  ``1 + Poisson(labels_per_doc - 1)``; each extra label comes, with probability
  ``local_colabel_frac``, from the context subtopic (Zipf-weighted within it)
  and otherwise from the global Zipf law.  Repeated labels collapse.
* **Words of a document.**  ``Poisson(words_per_doc)`` tokens (at least 1),
  each drawn from: the words of one of the document's labels (probability
  ``label_word_frac``), the context subtopic's block (``subtopic_word_frac``),
  the context topic's block (``topic_word_frac``), or background noise (the
  rest; Zipf over the background region).  ``X`` holds the token counts.

So a label is learnable from its own words, labels of one subtopic / topic
share words (a k-means label tree over label centroids recovers the
hierarchy), and label frequencies are Zipfian.

Everything is vectorised with numpy and generated in fixed-size chunks of
documents, each with its own seed derived from ``seed``, so the output depends
only on the parameters (not on memory or timing) and memory stays bounded.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .data import write_xc
from .folders import atomic_dir, check_replaceable
from . import progress

__all__ = ["SynthParams", "SynthStructure", "structure", "generate", "write_synth"]

# Documents generated per chunk (fixed: the output must not depend on it
# varying between runs).
_CHUNK_DOCS = 32_768

# Shares of the feature space: background, topic, subtopic, label regions.
_REGION_SHARES = (0.30, 0.15, 0.15, 0.40)


@dataclass
class SynthParams:
    """Settings of the synthetic generator.

    Attributes:
        n_labels: L.
        n_train, n_test: number of training / test documents.
        n_features: F (>= 16).
        n_topics: number of top-level topics; None -> max(2, round(sqrt(L) / 4)).
        subtopics_per_topic: subtopics under each topic.
        zipf_a: exponent of the Zipf law over label frequency ranks.
        labels_per_doc: mean number of labels drawn per document (>= 1;
            duplicates collapse, so the realised mean is a little lower).
        words_per_doc: mean number of word tokens per document (the number of
            distinct features, nnz, is somewhat lower).
        ambiguous_frac: share of labels whose documents come from two topics.
        words_per_label: label-specific feature ids per label.
        label_word_frac, subtopic_word_frac, topic_word_frac: token shares
            from label / subtopic / topic vocabularies; the remainder is
            background noise.
        local_colabel_frac: chance that an extra label comes from the
            document's context subtopic rather than the global Zipf law.
        seed: random seed; equal params give identical output.
    """

    n_labels: int = 1000
    n_train: int = 5000
    n_test: int = 1000
    n_features: int = 10000
    n_topics: int | None = None
    subtopics_per_topic: int = 4
    zipf_a: float = 1.1
    labels_per_doc: float = 3.0
    words_per_doc: int = 80
    ambiguous_frac: float = 0.0
    words_per_label: int = 6
    label_word_frac: float = 0.1
    subtopic_word_frac: float = 0.2
    topic_word_frac: float = 0.25
    local_colabel_frac: float = 0.8
    seed: int = 0

    def resolved_n_topics(self) -> int:
        """n_topics, or its default max(2, round(sqrt(L) / 4)), capped at L."""
        t = self.n_topics if self.n_topics is not None else max(2, round(math.sqrt(self.n_labels) / 4))
        return int(max(1, min(t, self.n_labels)))

    def validate(self) -> None:
        """Raise ValueError on out-of-range settings."""
        if self.n_labels < 1 or self.n_train < 0 or self.n_test < 0:
            raise ValueError("n_labels must be >= 1 and n_train, n_test >= 0")
        if self.n_features < 16:
            raise ValueError("n_features must be >= 16")
        if self.n_topics is not None and self.n_topics < 1:
            raise ValueError("n_topics must be >= 1")
        if self.subtopics_per_topic < 1 or self.words_per_label < 1 or self.words_per_doc < 1:
            raise ValueError("subtopics_per_topic, words_per_label and words_per_doc must be >= 1")
        if self.zipf_a < 0 or self.labels_per_doc < 1:
            raise ValueError("zipf_a must be >= 0 and labels_per_doc >= 1")
        fracs = (self.label_word_frac, self.subtopic_word_frac, self.topic_word_frac)
        if min(fracs) < 0 or sum(fracs) > 1:
            raise ValueError("word fractions must be >= 0 and sum to <= 1")
        if not 0 <= self.ambiguous_frac <= 1 or not 0 <= self.local_colabel_frac <= 1:
            raise ValueError("ambiguous_frac and local_colabel_frac must be in [0, 1]")


@dataclass
class SynthStructure:
    """The hidden structure behind a :class:`SynthParams` (for tests/analysis).

    Attributes (L labels, S = n_topics * subtopics_per_topic subtopics):
        topic_of_subtopic: int64 (S,).
        subtopic_of_label: int64 (L,), the label's main subtopic.
        alt_subtopic_of_label: int64 (L,), second subtopic (other topic) of
            an ambiguous label, -1 otherwise.
        label_weight: float64 (L,), unnormalised Zipf weight of each label.
        label_words: int64 (L, words_per_label), label-specific feature ids.
        topic_block, subtopic_block: int64 (3,) ``(start, size, region)``:
            topic t owns ids ``start + (t*size + j) % region`` for
            ``j < size`` (same for subtopics).
        background: int64 (2,) ``(start, size)`` of the background region.
    """

    topic_of_subtopic: np.ndarray
    subtopic_of_label: np.ndarray
    alt_subtopic_of_label: np.ndarray
    label_weight: np.ndarray
    label_words: np.ndarray
    topic_block: np.ndarray
    subtopic_block: np.ndarray
    background: np.ndarray

    @property
    def topic_of_label(self) -> np.ndarray:
        """int64 (L,), the main topic of each label."""
        return self.topic_of_subtopic[self.subtopic_of_label]

    @property
    def ambiguous(self) -> np.ndarray:
        """bool (L,), labels with a second topic."""
        return self.alt_subtopic_of_label >= 0


def _seeds(params: SynthParams) -> tuple[np.random.SeedSequence, np.random.SeedSequence, np.random.SeedSequence]:
    ss = np.random.SeedSequence(int(params.seed))
    s_struct, s_train, s_test = ss.spawn(3)
    return s_struct, s_train, s_test


def structure(params: SynthParams) -> SynthStructure:
    """Draw the label hierarchy, label weights and vocabularies for ``params``.

    Args:
        params: :class:`SynthParams` (seeded: the same params give the same structure).

    Returns:
        SynthStructure (see its fields).

    Raises:
        ValueError: ``params`` out of range (``SynthParams.validate``), or n_features too small
            for the vocabulary regions.
    """
    params.validate()
    rng = np.random.default_rng(_seeds(params)[0])
    L, F = params.n_labels, params.n_features
    T = params.resolved_n_topics()
    S = T * params.subtopics_per_topic

    topic_of_subtopic = np.arange(S, dtype=np.int64) // params.subtopics_per_topic
    subtopic_of_label = rng.permutation(L).astype(np.int64) % S  # balanced

    alt = np.full(L, -1, dtype=np.int64)
    n_amb = int(round(params.ambiguous_frac * L)) if T >= 2 else 0
    if n_amb:
        amb = rng.choice(L, size=n_amb, replace=False)
        own_topic = topic_of_subtopic[subtopic_of_label[amb]]
        other_topic = (own_topic + rng.integers(1, T, size=n_amb)) % T
        alt[amb] = other_topic * params.subtopics_per_topic + rng.integers(
            0, params.subtopics_per_topic, size=n_amb
        )

    rank = rng.permutation(L).astype(np.float64)
    label_weight = (rank + 1.0) ** (-float(params.zipf_a))

    sizes = [max(1, int(F * share)) for share in _REGION_SHARES[:3]]
    bg_size, topic_region, sub_region = sizes
    label_start = bg_size + topic_region + sub_region
    label_region = F - label_start
    if label_region < 1:
        raise ValueError("n_features too small for the vocabulary regions")
    topic_size = max(1, topic_region // T)
    sub_size = max(1, sub_region // S)
    label_words = label_start + rng.integers(0, label_region, size=(L, params.words_per_label), dtype=np.int64)

    return SynthStructure(
        topic_of_subtopic=topic_of_subtopic,
        subtopic_of_label=subtopic_of_label,
        alt_subtopic_of_label=alt,
        label_weight=label_weight,
        label_words=label_words,
        topic_block=np.array([bg_size, topic_size, topic_region], dtype=np.int64),
        subtopic_block=np.array([bg_size + topic_region, sub_size, sub_region], dtype=np.int64),
        background=np.array([0, bg_size], dtype=np.int64),
    )


class _Sampler:
    """Precomputed tables for drawing labels and words (shared by chunks)."""

    def __init__(self, params: SynthParams, st: SynthStructure):
        self.p = params
        self.st = st
        self.L = params.n_labels
        self.S = st.topic_of_subtopic.shape[0]
        # Global Zipf: cumulative weights over labels.
        self.cum_global = np.cumsum(st.label_weight)
        # Within-subtopic Zipf: labels ordered by subtopic, cumulative weights.
        self.by_sub = np.argsort(st.subtopic_of_label, kind="stable")
        # (flattened: sqrt of the weights, so that co-labels of a document
        # rarely repeat the first label and the realised mean stays close)
        self.cum_sub = np.cumsum(np.sqrt(st.label_weight[self.by_sub]))
        seg_end = np.searchsorted(st.subtopic_of_label[self.by_sub], np.arange(self.S), side="right")
        seg_start = np.concatenate([[0], seg_end[:-1]])
        self.seg_start = seg_start.astype(np.int64)
        self.seg_end = seg_end.astype(np.int64)
        cum0 = np.concatenate([[0.0], self.cum_sub])
        self.seg_lo = cum0[self.seg_start]
        self.seg_w = cum0[self.seg_end] - self.seg_lo
        # Background words: Zipf (a = 1) over the background region.
        bg = int(st.background[1])
        self.cum_bg = np.cumsum(1.0 / np.arange(1, bg + 1, dtype=np.float64))

    def _draw(self, cum: np.ndarray, u: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(cum, u * cum[-1], side="right")
        return np.minimum(idx, cum.shape[0] - 1).astype(np.int64)

    def _labels_from_subtopic(self, sub: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Zipf-weighted labels of the given subtopics (empty subtopic -> global)."""
        out = np.empty(sub.shape[0], dtype=np.int64)
        empty = self.seg_end[sub] == self.seg_start[sub]
        ok = ~empty
        target = self.seg_lo[sub[ok]] + u[ok] * self.seg_w[sub[ok]]
        pos = np.searchsorted(self.cum_sub, target, side="right")
        pos = np.clip(pos, self.seg_start[sub[ok]], self.seg_end[sub[ok]] - 1)
        out[ok] = self.by_sub[pos]
        out[empty] = self._draw(self.cum_global, u[empty])
        return out

    def chunk(self, m: int, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Generate ``m`` documents: X (m, F) float32 counts, Y (m, L) float32 binary."""
        p, st = self.p, self.st
        F, L = p.n_features, self.L

        # ---- labels -----------------------------------------------------
        first = self._draw(self.cum_global, rng.random(m))
        ctx = st.subtopic_of_label[first]
        alt = st.alt_subtopic_of_label[first]
        flip = (alt >= 0) & (rng.random(m) < 0.5)
        ctx = np.where(flip, alt, ctx)

        n_extra = rng.poisson(p.labels_per_doc - 1.0, size=m).astype(np.int64)
        extra_row = np.repeat(np.arange(m, dtype=np.int64), n_extra)
        E = extra_row.shape[0]
        u = rng.random(E)
        local = rng.random(E) < p.local_colabel_frac
        extra = np.empty(E, dtype=np.int64)
        extra[local] = self._labels_from_subtopic(ctx[extra_row[local]], u[local])
        extra[~local] = self._draw(self.cum_global, u[~local])

        key = np.concatenate([np.arange(m, dtype=np.int64) * L + first, extra_row * L + extra])
        key.sort()  # by (row, label); drop repeated labels of a row
        keep = np.ones(key.shape[0], dtype=bool)
        np.not_equal(key[1:], key[:-1], out=keep[1:])
        key = key[keep]
        y_row = key // L
        y_col = key - y_row * L
        y_deg = np.bincount(y_row, minlength=m).astype(np.int64)
        y_indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(y_deg, out=y_indptr[1:])
        Y = sp.csr_matrix(
            (np.ones(y_col.shape[0], dtype=np.float32), y_col.astype(np.int32), y_indptr.astype(np.int32)),
            shape=(m, L),
        )

        # ---- words ------------------------------------------------------
        n_words = np.maximum(rng.poisson(p.words_per_doc, size=m), 1).astype(np.int64)
        row = np.repeat(np.arange(m, dtype=np.int64), n_words)
        W = row.shape[0]
        src = rng.random(W)
        c1 = p.label_word_frac
        c2 = c1 + p.subtopic_word_frac
        c3 = c2 + p.topic_word_frac
        word = np.empty(W, dtype=np.int64)

        sel = src < c1  # label words
        r = row[sel]
        pick = y_indptr[r] + (rng.random(r.shape[0]) * y_deg[r]).astype(np.int64)
        lab = y_col[pick]
        word[sel] = st.label_words[lab, rng.integers(0, p.words_per_label, size=r.shape[0])]

        sel = (src >= c1) & (src < c2)  # subtopic words
        s = ctx[row[sel]]
        start, size, region = (int(v) for v in st.subtopic_block)
        word[sel] = start + (s * size + rng.integers(0, size, size=s.shape[0])) % region

        sel = (src >= c2) & (src < c3)  # topic words
        t = st.topic_of_subtopic[ctx[row[sel]]]
        start, size, region = (int(v) for v in st.topic_block)
        word[sel] = start + (t * size + rng.integers(0, size, size=t.shape[0])) % region

        sel = src >= c3  # background noise
        word[sel] = int(st.background[0]) + self._draw(self.cum_bg, rng.random(int(sel.sum())))

        X = sp.csr_matrix(
            (np.ones(W, dtype=np.float32), (row.astype(np.int32), word.astype(np.int32))),
            shape=(m, F),
        )
        X.sum_duplicates()  # -> counts, sorted indices
        return X, Y


def _generate_split(sampler: _Sampler, n: int, seed: np.random.SeedSequence):
    F, L = sampler.p.n_features, sampler.L
    if n == 0:
        return sp.csr_matrix((0, F), dtype=np.float32), sp.csr_matrix((0, L), dtype=np.float32)
    n_chunks = -(-n // _CHUNK_DOCS)
    Xs, Ys = [], []
    with progress.task("synth: documents", n, "doc") as bar:
        for i, child in enumerate(seed.spawn(n_chunks)):
            m = min(_CHUNK_DOCS, n - i * _CHUNK_DOCS)
            X, Y = sampler.chunk(m, np.random.default_rng(child))
            Xs.append(X)
            Ys.append(Y)
            bar.update(m)
    X = sp.vstack(Xs, format="csr", dtype=np.float32)
    Y = sp.vstack(Ys, format="csr", dtype=np.float32)
    X.has_sorted_indices = True
    Y.has_sorted_indices = True
    return X, Y


def generate(params: SynthParams) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """Generate a synthetic XMC train/test set.

    Returns:
        (X_trn, Y_trn, X_tst, Y_tst): X_* csr float32 (n, F) word counts with
        sorted indices; Y_* csr float32 (n, L) binary with sorted indices.
        Every row has at least one label.  Train and test share the hidden
        :func:`structure`; the output depends only on ``params``.
    """
    params.validate()
    st = structure(params)
    sampler = _Sampler(params, st)
    _, s_train, s_test = _seeds(params)
    X_trn, Y_trn = _generate_split(sampler, params.n_train, s_train)
    X_tst, Y_tst = _generate_split(sampler, params.n_test, s_test)
    return X_trn, Y_trn, X_tst, Y_tst


def write_synth(out_dir, params: SynthParams) -> Path:
    """Generate a dataset with ``params`` and write it to the folder ``out_dir``, readable by ``load_dataset``.

    Writes ``train.txt.gz`` and ``test.txt.gz`` (XC bag-of-words format, layout
    "xc-bow") with :func:`xmc_core.data.write_xc`, and ``PROVENANCE.md`` with
    the parameters and basic counts.

    Returns:
        the folder as a Path.

    Raises:
        PathInUseError: ``out_dir`` holds something that is not a generated dataset xmc wrote
            (checked before generating).
        ValueError: ``params`` out of range.
    """
    out = check_replaceable(out_dir, "dataset folder", kind="dataset")  # before minutes of generating
    X_trn, Y_trn, X_tst, Y_tst = generate(params)
    with atomic_dir(out, kind="dataset") as tmp:
        write_xc(tmp / "train.txt.gz", X_trn, Y_trn)
        write_xc(tmp / "test.txt.gz", X_tst, Y_tst)
        (tmp / "PROVENANCE.md").write_text(_provenance(out.name, params, X_trn, Y_trn, X_tst, Y_tst), encoding="utf-8")
    return out


def _provenance(name: str, params: SynthParams, X_trn, Y_trn, X_tst, Y_tst) -> str:
    """PROVENANCE.md of a synthetic dataset: its parameters and counts."""

    def stats(X, Y):
        n = max(X.shape[0], 1)
        return {
            "documents": int(X.shape[0]),
            "labels per doc": round(Y.nnz / n, 3),
            "nnz features per doc": round(X.nnz / n, 2),
            "distinct labels present": int(np.count_nonzero(np.diff(Y.tocsc().indptr))),
        }

    freq = np.asarray(Y_trn.sum(axis=0)).ravel()
    lines = [
        f"# Synthetic XMC dataset `{name}`",
        "",
        "Generated by `xmc_core.synth.write_synth` (hierarchical topics -> subtopics -> labels,",
        "Zipfian label frequencies, label/subtopic/topic/background vocabularies; see the module",
        "docstring of `xmc_core/synth.py`). Not real data.",
        "",
        "## Parameters",
        "```json",
        json.dumps(asdict(params), indent=2),
        "```",
        f"Resolved n_topics: {params.resolved_n_topics()}; numpy {np.__version__}, python {platform.python_version()}.",
        "",
        "## Files",
        "- `train.txt.gz`, `test.txt.gz`: Extreme Classification Repository format (`N F L` header, then",
        "  `l1,l2 f:v ...`, 0-based ids); values are word counts.",
        "",
        "## Counts",
        "| | train | test |",
        "|---|---|---|",
    ]
    s_trn, s_tst = stats(X_trn, Y_trn), stats(X_tst, Y_tst)
    for k in s_trn:
        lines.append(f"| {k} | {s_trn[k]} | {s_tst[k]} |")
    if freq.size:
        lines += [
            "",
            f"Train label frequency: max {int(freq.max())}, median {float(np.median(freq)):g}, "
            f"labels with no train document {int(np.count_nonzero(freq == 0))}.",
        ]
    return "\n".join(lines) + "\n"
