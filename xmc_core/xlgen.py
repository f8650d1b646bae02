"""XLGen: extreme multi-label classification as label-sequence generation, optionally guided by
label clusters (Jung et al., "Cluster-Guided Label Generation in Extreme Multi-Label
Classification", EACL 2023).

A seq2seq model reads a document and writes its labels, most frequent (in training) first, then
an end token. Three variants (`XLGenParams.variant`):

* ``base`` — text → labels.
* ``bcl`` — as base, plus the ground-truth *cluster bit-vector* as an auxiliary training signal:
  a K-way multi-label cluster classifier on the pooled encoder output (BCE, weight `bcl_weight`).
  The pooled vector is the one that also starts the decoder (see below), so the auxiliary loss
  shapes what the decoder starts from. Inference reads text only; the head is not used.
* ``mcg`` — multitask cluster generation: the target is ``<c3> <c17> <sep> label label <eos>``;
  the cluster segment is the task text → clusters, the label segment (teacher-forced on the gold
  clusters) the task clusters → labels. Inference generates clusters first, then labels given
  them; with `restrict_to_clusters` the labels may only come from the generated clusters.

Label clusters (`label_clusters`): a label's embedding is the mean MiniLM embedding of its
training documents (at most `cluster_docs_per_label` of them, sampled with `seed`); spherical
k-means (FAISS) into K = `n_clusters` clusters. Labels without training documents use the
embedding of their name instead.

Design choices (why not a stock `EncoderDecoderModel` over word pieces):

* **One decoder token per label.** Reuters-style label names are short identifiers ("earn",
  "money-fx"); generating them word piece by word piece adds steps and needs a trie to stay valid.
  With one token per label (and per cluster `<c0>` … `<cK-1>`) the decoder vocabulary is
  ``[pad, bos, eos, sep] + K clusters + L labels``; constrained decoding is then a mask over that
  small vocabulary, and the output softmax costs L + K + 4 instead of 30k. The label tokens are
  initialized from the mean MiniLM word-piece embedding of the label's name (clusters: mean of their
  labels), so names carry their meaning in; the output layer is tied to these embeddings.
* **Label-text decoding** (`decoding="label_text"`), for labels with few or no training
  documents: a label is written as the word pieces of its title (`label_texts`: `label_names.tsv`
  titles, ids where there are none) followed by an end-of-label token LSEP; the decoder vocabulary
  is ``[pad, bos, eos, sep, lsep] + K clusters + P pieces``, the P word pieces that some title
  uses (3,209 for EUROVOC's 4,271 titles), each initialized from the encoder's word-piece
  embedding and tied to the output layer. So a label without training documents is spelled with
  pieces trained on other labels' titles, and can be generated. A prefix trie over every label's
  sequence (`xmc_core.label_trie`) constrains decoding to whole titles, in increasing frequency
  rank, never one twice. Titles that tokenize alike get their id appended.
* **Tokens in frequency-rank order.** Label token ids follow the training-frequency rank, so the
  training order "most frequent first" is "increasing token id". Decoding only allows a label whose
  rank is above the last one emitted: valid label names only, never a repeat, and no beam slots
  wasted on permutations of one set. Clusters likewise.
* **Warm start from the local MiniLM checkpoint** (`xmc_core.encoder.resolve_checkpoint`, nothing
  from a hub): the encoder is MiniLM; the decoder is a BERT decoder (causal self-attention +
  cross-attention) whose self-attention and feed-forward weights are MiniLM's first
  `decoder_layers` layers (cross-attention is new). A short decoder is enough for sequences of a
  few tokens and keeps CPU training cheap. The decoder's first input (bos) adds a projection of the
  mean-pooled encoder output, so the document summary is available from step one.
* **PU setting** (`pu_drop`): each training document loses a share `pu_drop` of its labels
  (`pu_drop_labels`, seeded; the count per document is rounded stochastically, so the share dropped
  is `pu_drop` in expectation also for one-label documents). Documents left without labels are
  skipped when training the generator (`skip_unlabeled`): in PU learning a missing label is not
  evidence of absence, and "text → end" targets would teach the model to stop early.

* **Copy prior** (`copy_prior`, label_text): a title piece that occurs among the document's own
  word pieces gets g · idf(piece) added to its logit, in training and decoding (g a learned
  scalar, started at COPY_GAIN_INIT; idf = log((N + 1) / (df + 1)) / log(N + 1) over the N
  training documents' kept word pieces, so "of" adds about nothing). A decoder that has never
  written a title learns no weight for it, but its words in the text still pull it up: the route
  by which a label without training documents can win a beam slot. The copy term of pointer-
  generator networks (See et al. 2017), reduced to a gain on a fixed, idf-weighted vector.
* **Decoding caches the decoder's keys and values** (cross-attention once per batch, self-attention
  growing by one position a step, reordered with the beams), so a label_text sequence of tens of
  pieces costs one position per step, not the whole prefix again.
* **CPU budgets** (`cache_encoder_states`): with the bottom of the encoder frozen, its output is
  computed once per training document and training runs only the layers above and the decoder.
* **Resume**: `train_with_checkpoints` saves an `XLGenState` after each epoch and every few hundred
  steps; a killed run started again goes on from it (same weights, optimizer, data order, RNG).

Shapes: N documents, L labels, K clusters, H = 384 hidden size, V = 4 + K + L decoder tokens
(label_token) or 5 + K + P (label_text).
`predict` returns an N × L float32 CSR: the generated set's labels score in (1, 2], decreasing
along the generated order; other labels that some finished beam generated score their beam
posterior mass in [0, 1) (so P@k beyond the set's size still ranks something sensible, and
`scores > 1` is exactly the generated set).

torch/transformers are imported lazily; nothing here reads or writes paths except `save`/`load`.
"""

from __future__ import annotations

import functools
import json
import math
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as smat

from .encoder import DEFAULT_ENCODER, EncoderParams, autocast, pad_batch, pick_device, resolve_checkpoint, tokenize
from .folders import atomic_dir
from . import progress
from .label_trie import LabelTrie, TrieTensors, build_trie
from .model import check_predict_args
from .model_base import ModelBase, ModelFormatError, one_line, read_label_names, read_model_meta
from .params import ParamsBase
from .sparse import check_label_matrix

__all__ = ["METHOD_XLGEN", "VARIANTS", "DECODINGS", "XLGenParams", "XLGenModel", "train_xlgen", "label_clusters",
           "pu_drop_labels", "frequency_rank", "build_targets", "cluster_labels", "evaluate_xlgen", "sets_matrix",
           "Generation", "SET_SCORE_FLOOR", "label_texts", "XLGenState", "save_state", "load_state",
           "xlgen_checkpoint_key", "train_with_checkpoints", "encoder_states", "piece_idf"]

#: method name of an XLGen model folder (params.json "method")
METHOD_XLGEN = "xlgen"
#: the XLGen variants (`XLGenParams.variant`): plain generation, with a cluster-classification
#: loss (bcl), with cluster tokens generated before the labels (mcg)
VARIANTS = ("base", "bcl", "mcg")

#: decoder token ids of the special tokens; clusters start at N_SPECIAL, labels after the clusters
PAD, BOS, EOS, SEP = 0, 1, 2, 3
#: number of special tokens in label_token decoding
N_SPECIAL = 4
#: label_text decoding's end-of-label token (its specials are PAD, BOS, EOS, SEP, LSEP)
LSEP = 4
#: number of special tokens in label_text decoding
N_SPECIAL_TEXT = 5
#: how labels are written (`XLGenParams.decoding`): one token per label, or the word pieces of
#: the label's name under a prefix trie
DECODINGS = ("label_token", "label_text")

#: copy_prior: the gain g a model starts from (a present piece of idf 1 adds 2 to its logit)
COPY_GAIN_INIT = 2.0
#: copy_prior: g = COPY_GAIN_SCALE × the trained scalar, so the optimizer's steps of about lr_new
#: can move g by whole units within a run
COPY_GAIN_SCALE = 10.0

#: scores above this are the generated set (see `XLGenModel.predict`)
SET_SCORE_FLOOR = 1.0


@dataclass
class XLGenParams(ParamsBase):
    """All settings of an XLGen model (flat; round-trips JSON; unknown keys are errors).

    Model and data:
        variant: "base", "bcl" or "mcg" (see the module docstring).
        n_clusters: K label clusters (bcl, mcg); clamped to the number of labels.
        pu_drop: share of each training document's labels dropped (PU setting); 0 = full labels.
        seed: seeds PU dropping, cluster sampling, k-means, initialization and batch order.
        encoder: local checkpoint folder or installed model package (`xmc_core.encoder`).
        max_length: word pieces kept per document (training and inference).
        decoder_layers: decoder depth (initialized from the encoder checkpoint's first layers).
        decoding: "label_token" (one decoder token per label) or "label_text" (a label is the word
            pieces of its title, then an end-of-label token, under a prefix trie over every label's
            title: labels without training documents can be written; see the module docstring).
        copy_prior: label_text only: add g · idf(piece) to the logit of every title piece that the
            document's own word pieces contain (g one learned scalar, idf over the training
            documents, in [0, 1]), so titles worded as the text is are favoured, also titles that
            no training document has (see the module docstring).
        copy_scale: decoding only: the learned gain g is multiplied by this when decoding (1: as
            trained; ignored without copy_prior). Training fits g where the decoder already knows
            its titles; a larger g when decoding gives the text more say for titles the decoder
            knows little of (chosen on the dev split: README, "XLGen on EURLEX57K's tail").
    Training (AdamW, linear warm-up then linear decay):
        steps, batch_size: optimizer steps and documents per step. CPU defaults (1000 × 32, 64
            word pieces, first 2 encoder layers frozen): about 0.9 s a step on 2 cores, so one
            variant on Reuters (7,770 documents, about 4 epochs) trains in about 15 minutes and is
            scored in 2 more. On Reuters, macro F1 still rose from 200 to 400 steps (24 → 40).
        lr: learning rate of the pretrained weights; lr_new: of the new ones (label/cluster token
            embeddings, cross-attention, projection, cluster head).
        warmup: share of the steps spent warming up; weight_decay: AdamW decay.
        freeze_word_embeddings: keep the encoder's 30k × H word-piece table fixed (half of
            MiniLM's weights; saves optimizer time, and few steps would not move it usefully).
        freeze_layers: also keep the embeddings and the encoder's first n layers fixed (no
            backward pass through them: a cheaper step on CPU).
        cache_encoder_states: compute the frozen part's output (embeddings and the first
            `freeze_layers` layers) once for every training document and train from it, so a step
            runs only the layers above (freeze_layers = the encoder's depth: the encoder is frozen
            and only the decoder trains). Memory: N × max_length × H float16 (45k documents ×
            128 word pieces × 384 ≈ 4.4 GB). Prediction runs the whole encoder as usual.
        bcl_weight: weight of the cluster bit-vector loss (variant bcl).
        skip_unlabeled: leave documents without labels out of generator training.
    Clustering:
        cluster_docs_per_label: documents embedded per label for its mean embedding (0: all).
        kmeans_iter: k-means iterations.
    Decoding (beam search over the constrained label vocabulary):
        beam_size, max_labels (labels per document), max_clusters (mcg: clusters per document),
        min_labels (labels before the end token is allowed), restrict_to_clusters (mcg),
        length_penalty (hypothesis score = log p / length^length_penalty; 0: plain log p),
        eval_batch_size: documents per inference batch.
    Machine:
        device: "auto" (CUDA with bf16 autocast when present), "cpu" or "cuda".
        threads: torch intra-op threads on CPU (0: leave torch's setting).
    """

    variant: str = "base"
    n_clusters: int = 30
    pu_drop: float = 0.0
    seed: int = 0
    encoder: str = DEFAULT_ENCODER
    max_length: int = 64
    decoder_layers: int = 2
    decoding: str = "label_token"
    copy_prior: bool = False
    copy_scale: float = 1.0
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    lr_new: float = 1e-3
    warmup: float = 0.06
    weight_decay: float = 0.01
    freeze_word_embeddings: bool = True
    freeze_layers: int = 2
    cache_encoder_states: bool = False
    bcl_weight: float = 1.0
    skip_unlabeled: bool = True
    cluster_docs_per_label: int = 32
    kmeans_iter: int = 20
    beam_size: int = 4
    max_labels: int = 10
    max_clusters: int = 4
    min_labels: int = 1
    restrict_to_clusters: bool = True
    length_penalty: float = 0.0
    eval_batch_size: int = 64
    device: str = "auto"
    threads: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"XLGenParams.variant: one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not 0.0 <= self.pu_drop < 1.0:
            raise ValueError(f"XLGenParams.pu_drop: must be in [0, 1), got {self.pu_drop}")
        if self.decoding not in DECODINGS:
            raise ValueError(f"XLGenParams.decoding: one of {', '.join(DECODINGS)}, got {self.decoding!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"XLGenParams.device: 'auto', 'cpu' or 'cuda', got {self.device!r}")
        for name in ("n_clusters", "max_length", "decoder_layers", "batch_size", "beam_size", "max_labels",
                     "max_clusters", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"XLGenParams.{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_length < 2:
            raise ValueError(f"XLGenParams.max_length: must be >= 2, got {self.max_length}")
        if min(self.steps, self.min_labels, self.cluster_docs_per_label, self.freeze_layers) < 0:
            raise ValueError("XLGenParams: steps, min_labels, cluster_docs_per_label and freeze_layers must be >= 0")
        if self.copy_scale < 0:
            raise ValueError(f"XLGenParams.copy_scale: must be >= 0, got {self.copy_scale}")
        if self.copy_prior and self.decoding != "label_text":
            raise ValueError("XLGenParams.copy_prior: needs decoding 'label_text' (it favours title pieces)")
        if self.cache_encoder_states and self.freeze_layers < 1:
            raise ValueError("XLGenParams.cache_encoder_states: needs freeze_layers >= 1 (the cached part is frozen)")

    @property
    def uses_clusters(self) -> bool:
        """Whether the variant needs label clusters (bool): True for "bcl" and "mcg"."""
        return self.variant in ("bcl", "mcg")

    @property
    def decode_steps(self) -> int:
        """Decoder positions one generated sequence can take in label_token decoding: (clusters +
        separator, mcg), labels, end. In label_text decoding each label takes up to its longest
        title's pieces + 1 (checked when the vocabulary is built)."""
        return (self.max_clusters + 1 if self.variant == "mcg" else 0) + self.max_labels + 1

    def check_lengths(self) -> None:
        """`max_length` (document tokens) and the decoder's positions within the encoder's (the
        decoder is built from the same checkpoint); reads its config, loads no weights.

        Raises:
            EncoderError (a ValueError): one line naming the setting, its value and the limit.
        """
        from .encoder import check_lengths

        check_lengths(self.encoder, {"max_length": self.max_length,
                                     "decoder positions (max_labels + 1, + max_clusters + 1 for mcg)": self.decode_steps})


# --------------------------------------------------------------------------- label-side numerics


def pu_drop_labels(Y: smat.spmatrix, frac: float, seed: int = 0) -> smat.csr_matrix:
    """The PU setting: drop a share `frac` of each document's labels, seeded.

    Document i with |y_i| labels loses floor(frac·|y_i| + u_i) of them (u_i ~ U[0, 1)), chosen
    uniformly: the expected share dropped is `frac` for every document, one-label documents
    included. Y: N × L CSR (nonzero = positive). Returns N × L float32 CSR (binary), sorted indices.
    """
    Y = smat.csr_matrix(Y, dtype=np.float32, copy=True)
    Y.sum_duplicates()
    Y.eliminate_zeros()
    if frac <= 0.0 or Y.nnz == 0:
        Y.data[:] = 1.0
        return Y
    rng = np.random.default_rng(seed)
    n = Y.shape[0]
    sizes = np.diff(Y.indptr).astype(np.int64)
    n_drop = np.floor(frac * sizes + rng.random(n)).astype(np.int64)  # (N,)
    rows = np.repeat(np.arange(n, dtype=np.int64), sizes)
    # rank of each entry within its row under a random key; the n_drop lowest ranks go
    order = np.lexsort((rng.random(Y.nnz), rows))
    rank = np.empty(Y.nnz, dtype=np.int64)
    rank[order] = np.arange(Y.nnz, dtype=np.int64) - Y.indptr[:-1].astype(np.int64)[rows[order]]
    keep = rank >= n_drop[rows]
    out = smat.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], Y.indices[keep])), shape=Y.shape)
    out.sort_indices()
    return out


def frequency_rank(counts: np.ndarray) -> np.ndarray:
    """Rank of each label by decreasing training count; rank 0 is the most frequent label.

    Args:
        counts: (L,) training positives per label (any numeric dtype).

    Returns:
        (L,) int64 ranks, a permutation of 0..L-1 (ties: lower label id first).
    """
    counts = np.asarray(counts)
    order = np.lexsort((np.arange(len(counts)), -counts.astype(np.float64)))
    rank = np.empty(len(counts), dtype=np.int64)
    rank[order] = np.arange(len(counts), dtype=np.int64)
    return rank


def label_clusters(doc_emb: np.ndarray, Y: smat.spmatrix, n_clusters: int, seed: int = 0, niter: int = 20,
                   fallback: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherical k-means (FAISS) of label embeddings = mean embedding of each label's documents.

    Args:
        doc_emb: N × H float32 document embeddings.
        Y: N × L label matrix of those documents (nonzero = positive).
        n_clusters: K; clamped to L.
        fallback: optional L × H embeddings for labels without documents (e.g. of their names);
            without it such labels get a zero vector (and the cluster FAISS assigns it).
    Returns:
        assign (L,) int64 cluster id per label, centroids K × H float32 (unit rows), label_emb
        L × H float32 (unit rows, zero for a label without documents or fallback).
    """
    import faiss

    Yb = smat.csr_matrix(Y, dtype=np.float32, copy=True)
    Yb.data[:] = 1.0
    n_labels = Yb.shape[1]
    counts = np.asarray(Yb.sum(axis=0)).ravel()  # (L,)
    Z = np.asarray(Yb.T @ np.asarray(doc_emb, dtype=np.float32), dtype=np.float32)  # (L, H)
    Z /= np.maximum(counts, 1.0)[:, None]
    if fallback is not None:
        empty = counts == 0
        Z[empty] = np.asarray(fallback, dtype=np.float32)[empty]
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    Z = np.where(norms > 0, Z / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    k = int(min(max(n_clusters, 1), n_labels))
    trainable = Z[np.linalg.norm(Z, axis=1) > 0]
    if k == 1 or len(trainable) < k:
        return np.zeros(n_labels, np.int64), np.zeros((k, Z.shape[1]), np.float32), Z
    km = faiss.Kmeans(Z.shape[1], k, niter=niter, seed=int(seed), spherical=True, verbose=False,
                      min_points_per_centroid=1)
    km.train(np.ascontiguousarray(trainable))
    _, assign = km.index.search(np.ascontiguousarray(Z), 1)
    return assign.ravel().astype(np.int64), np.asarray(km.centroids, dtype=np.float32), Z


@dataclass
class _Vocab:
    """The decoder vocabulary: specials, clusters in frequency-rank order, then labels.

    label_token mode (`label_pieces` None): one token per label, in frequency-rank order.
    label_text mode: one token per word piece that some label's text uses (`piece_ids`, the
    encoder's word-piece id of each, increasing) and the end-of-label token LSEP; label l is
    written ``label_offset + label_pieces[label_ptr[l]:label_ptr[l + 1]]`` then LSEP.

    label_rank (L,) int64 frequency rank; cluster_rank (K,) and label_cluster (L,) cluster id per
    label, or None without clusters; label_texts: the L strings the label_text pieces spell.
    """

    label_rank: np.ndarray
    cluster_rank: np.ndarray | None
    label_cluster: np.ndarray | None  # (L,) cluster id per label
    piece_ids: np.ndarray | None = None  # (P,) encoder word-piece id per piece token
    label_ptr: np.ndarray | None = None  # (L + 1,)
    label_pieces: np.ndarray | None = None  # piece indices (0..P-1) of every label, concatenated
    label_texts: list | None = None
    piece_idf: np.ndarray | None = None  # (P,) float32 in [0, 1] (copy_prior)

    @property
    def text(self) -> bool:
        return self.label_pieces is not None

    @property
    def n_special(self) -> int:
        return N_SPECIAL_TEXT if self.text else N_SPECIAL

    @property
    def n_labels(self) -> int:
        return len(self.label_rank)

    @property
    def n_clusters(self) -> int:
        return 0 if self.cluster_rank is None else len(self.cluster_rank)

    @property
    def label_offset(self) -> int:
        """First label token (label_token mode) or first piece token (label_text mode)."""
        return self.n_special + self.n_clusters

    @property
    def size(self) -> int:
        return self.label_offset + (len(self.piece_ids) if self.text else self.n_labels)

    def label_token(self, labels: np.ndarray) -> np.ndarray:
        return self.label_offset + self.label_rank[labels]

    def cluster_token(self, clusters: np.ndarray) -> np.ndarray:
        return self.n_special + self.cluster_rank[clusters]

    def label_sequence(self, label: int) -> list[int]:
        """Decoder tokens that write one label: its token, or its pieces then LSEP."""
        if not self.text:
            return [int(self.label_offset + self.label_rank[label])]
        pieces = self.label_pieces[self.label_ptr[label]:self.label_ptr[label + 1]]
        return (self.label_offset + pieces).tolist() + [LSEP]

    @functools.cached_property
    def trie(self) -> LabelTrie:
        """The prefix trie over every label's sequence (label_text mode)."""
        return build_trie([self.label_sequence(l) for l in range(self.n_labels)])

    def labels_of(self, tokens: np.ndarray) -> list[int]:
        """The labels a generated token row writes, in order (list of int; specials, clusters and
        an unfinished name are skipped)."""
        tokens = np.asarray(tokens)
        if not self.text:
            return self.rank_to_label()[tokens[tokens >= self.label_offset] - self.label_offset].tolist()
        return self.trie.decode(tokens[(tokens >= self.label_offset) | (tokens == LSEP)].tolist())

    def copy_vector(self, flat: np.ndarray, offsets: np.ndarray, rows) -> np.ndarray:
        """(B, V) float32 copy prior of documents `rows` (word pieces flat[offsets[i]:offsets[i + 1]],
        as `encoder.tokenize` gives them): idf(piece) at each title piece the document contains."""
        out = np.zeros((len(rows), self.size), dtype=np.float32)
        for b, doc in enumerate(rows):
            j = _pieces_in(self.piece_ids, flat[offsets[doc]:offsets[doc + 1]])
            out[b, self.label_offset + j] = self.piece_idf[j]
        return out

    def rank_to_label(self) -> np.ndarray:
        """(L,) label id of each rank."""
        out = np.empty(self.n_labels, dtype=np.int64)
        out[self.label_rank] = np.arange(self.n_labels)
        return out

    def arrays(self) -> dict:
        """The arrays `save` writes to vocab.npz (empty arrays for what the mode lacks)."""
        empty = np.zeros(0, np.int64)
        out = {"label_rank": self.label_rank,
               "cluster_rank": self.cluster_rank if self.cluster_rank is not None else empty,
               "label_cluster": self.label_cluster if self.label_cluster is not None else empty}
        if self.text:
            out.update(piece_ids=self.piece_ids, label_ptr=self.label_ptr, label_pieces=self.label_pieces,
                       label_texts=np.asarray(self.label_texts, dtype=str))
        if self.piece_idf is not None:
            out["piece_idf"] = self.piece_idf
        return out

    @classmethod
    def from_arrays(cls, z) -> "_Vocab":
        """The inverse of `arrays` (z: a mapping such as an open .npz)."""
        cr, lc = z["cluster_rank"], z["label_cluster"]
        v = cls(np.asarray(z["label_rank"]), cr if len(cr) else None, lc if len(lc) else None)
        if "label_pieces" in z:
            v.piece_ids, v.label_ptr, v.label_pieces = (np.asarray(z[k], np.int64)
                                                        for k in ("piece_ids", "label_ptr", "label_pieces"))
            v.label_texts = [str(s) for s in z["label_texts"]]
        if "piece_idf" in z:
            v.piece_idf = np.asarray(z["piece_idf"], np.float32)
        return v


def _make_vocab(counts: np.ndarray, label_cluster: np.ndarray | None) -> _Vocab:
    label_rank = frequency_rank(counts)
    if label_cluster is None:
        return _Vocab(label_rank, None, None)
    k = int(label_cluster.max()) + 1 if len(label_cluster) else 0
    cluster_counts = np.bincount(label_cluster, weights=counts.astype(np.float64), minlength=k)
    return _Vocab(label_rank, frequency_rank(cluster_counts), np.asarray(label_cluster, np.int64))


def label_texts(label_names: Sequence[str], label_titles: Sequence[str] | None = None) -> list[str]:
    """What each label is called in label_text decoding: its title where there is one, else its
    name, "_" read as a space.

    Args:
        label_names: L label ids / names; label_titles: optional L titles (`Dataset.label_titles`;
            an empty title falls back to the name).

    Returns:
        L strings.
    """
    titles = label_titles if label_titles is not None else [None] * len(label_names)
    return [(str(t) if t else str(n)).replace("_", " ").strip() or str(n) for n, t in zip(label_names, titles)]


def _make_text_vocab(counts: np.ndarray, label_cluster: np.ndarray | None, texts: Sequence[str],
                     label_names: Sequence[str], tokenizer) -> _Vocab:
    """The label_text vocabulary: each label's text as word pieces; labels whose texts give the same
    pieces (same title, or titles equal up to case under an uncased tokenizer) get their name (id)
    appended, so every label stays reachable."""
    texts = list(texts)

    def pieces_of(s: str) -> tuple:
        return tuple(tokenizer(s, add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id])

    seqs = [pieces_of(t) for t in texts]
    for _ in range(2):  # first the name (id), then the position: distinct in the end
        groups: dict[tuple, list[int]] = {}
        for lid, s in enumerate(seqs):
            groups.setdefault(s, []).append(lid)
        dups = [lid for g in groups.values() if len(g) > 1 for lid in g]
        if not dups:
            break
        for lid in dups:
            texts[lid] = f"{texts[lid]} {label_names[lid]}" if _ == 0 else f"{texts[lid]} #{lid}"
            seqs[lid] = pieces_of(texts[lid])
    flat = np.fromiter((p for s in seqs for p in s), dtype=np.int64)
    piece_ids = np.unique(flat)
    v = _make_vocab(counts, label_cluster)
    v.piece_ids = piece_ids
    v.label_ptr = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    v.label_pieces = np.searchsorted(piece_ids, flat).astype(np.int64)
    v.label_texts = texts
    return v


def _pieces_in(piece_ids: np.ndarray, word_pieces: np.ndarray) -> np.ndarray:
    """Indices into piece_ids (sorted, unique) of the title pieces among `word_pieces`, each once."""
    ids = np.unique(word_pieces)
    j = np.searchsorted(piece_ids, ids).clip(0, len(piece_ids) - 1)
    return j[piece_ids[j] == ids]


def piece_idf(piece_ids: np.ndarray, flat: np.ndarray, offsets: np.ndarray, rows) -> np.ndarray:
    """(P,) float32 idf of each title piece over documents `rows`: log((N + 1) / (df + 1)) / log(N + 1),
    df the number of those documents whose word pieces (flat, offsets as `encoder.tokenize`) hold it."""
    rows = np.asarray(rows)
    df = np.zeros(len(piece_ids), dtype=np.int64)
    for doc in rows:
        df[_pieces_in(piece_ids, flat[offsets[doc]:offsets[doc + 1]])] += 1
    n = len(rows)
    return (np.log((n + 1) / (df + 1.0)) / np.log(n + 1.0)).astype(np.float32)


def build_targets(Y: smat.spmatrix, vocab: _Vocab, variant: str) -> list[list[int]]:
    """Decoder target per document (without bos): its labels in frequency-rank order (one token
    each, or each label's pieces then LSEP in label_text mode), then eos.

    Args:
        Y: N × L label matrix (sparse); stored nonzero entries are positives.
        vocab: the decoder vocabulary (label ranks and clusters, `_make_vocab` / `_make_text_vocab`).
        variant: "base", "bcl" or "mcg"; for mcg the rank-ordered cluster tokens of the
            document's labels and sep come first.

    Returns:
        N lists of int decoder token ids, each ending with EOS (a document without labels: [EOS]).
    """
    Y = smat.csr_matrix(Y)
    out = []
    for i in range(Y.shape[0]):
        labels = Y.indices[Y.indptr[i]:Y.indptr[i + 1]]
        labels = labels[Y.data[Y.indptr[i]:Y.indptr[i + 1]] != 0]
        seq: list[int] = []
        if variant == "mcg" and len(labels):
            clusters = np.unique(vocab.label_cluster[labels])
            seq += sorted(vocab.cluster_token(clusters).tolist())
            seq.append(SEP)
        for lab in labels[np.argsort(vocab.label_rank[labels], kind="stable")]:
            seq += vocab.label_sequence(int(lab))
        seq.append(EOS)
        out.append(seq)
    return out


# --------------------------------------------------------------------------- the torch module


def _seq2seq_class():
    import torch
    from torch import nn

    class _Seq2Seq(nn.Module):
        """MiniLM encoder + short BERT decoder over the label/cluster token vocabulary.

        encode(ids B×S, mask B×S) → (hidden B×S×H, pooled B×H); decode(hidden, mask, pooled,
        tokens B×T) → logits B×T×V (tokens[:, 0] is bos); cluster_logits(pooled) → B×K (bcl).
        """

        def __init__(self, encoder, decoder, n_tokens: int, n_cluster_head: int, copy_prior: bool = False):
            super().__init__()
            H = encoder.config.hidden_size
            self.encoder = encoder
            self.decoder = decoder
            self.tokens = nn.Embedding(n_tokens, H)
            self.out_bias = nn.Parameter(torch.zeros(n_tokens))
            self.bos_proj = nn.Linear(H, H)
            nn.init.zeros_(self.bos_proj.weight)
            nn.init.zeros_(self.bos_proj.bias)
            self.cluster_head = nn.Linear(H, n_cluster_head) if n_cluster_head else None
            # the copy gain is COPY_GAIN_SCALE × this, so AdamW's step (about lr) moves it usefully
            self.copy_gain = (nn.Parameter(torch.tensor(COPY_GAIN_INIT / COPY_GAIN_SCALE))
                              if copy_prior else None)

        def _out(self, h, copy):
            logits = h @ self.tokens.weight.T.to(h.dtype) + self.out_bias.to(h.dtype)
            if self.copy_gain is not None and copy is not None:
                gain = (COPY_GAIN_SCALE * self.copy_gain).to(h.dtype)
                logits = logits + gain * (copy.unsqueeze(1) if logits.dim() == 3 else copy).to(h.dtype)
            return logits

        def encode(self, ids, mask):
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            return hidden, self._pool(hidden, mask)

        @staticmethod
        def _pool(hidden, mask):
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

        def frozen_states(self, ids, mask, n_frozen: int):
            """The output of the embeddings and the first n_frozen encoder layers (B × S × H)."""
            return _frozen_states(self.encoder, ids, mask, n_frozen)

        def encode_from(self, states, mask, n_frozen: int):
            """`encode` resumed from `frozen_states` (the layers above n_frozen run)."""
            hidden = _encoder_layers(self.encoder, states, mask, n_frozen, len(self.encoder.encoder.layer))
            return hidden, self._pool(hidden, mask)

        def step(self, hidden, mask, pooled, tokens, cache, copy=None):
            """One decoding position for every row: tokens (n,) the last written token (bos on the
            first call, cache None); copy (n × V) the copy prior (copy_prior models); returns
            (logits n × V, the cache to pass next time)."""
            x = self.tokens(tokens).unsqueeze(1)
            if cache is None:
                x = x + self.bos_proj(pooled).unsqueeze(1).to(x.dtype)
            out = self.decoder(inputs_embeds=x, encoder_hidden_states=hidden, encoder_attention_mask=mask,
                               cache=cache, use_cache=True)
            return self._out(out.last_hidden_state[:, -1], copy), out.cache

        def decode(self, hidden, mask, pooled, tokens, copy=None):
            x = self.tokens(tokens)
            start = x[:, :1] + self.bos_proj(pooled).unsqueeze(1).to(x.dtype)
            x = torch.cat([start, x[:, 1:]], dim=1)
            h = self.decoder(inputs_embeds=x, encoder_hidden_states=hidden,
                             encoder_attention_mask=mask).last_hidden_state
            return self._out(h, copy)

        def cluster_logits(self, pooled):
            return self.cluster_head(pooled)

    return _Seq2Seq


def _encoder_layers(backbone, h, mask, first: int, last: int):
    """Run a BertModel's layers first..last-1 on hidden states h (B × S × H) under mask (B × S)."""
    from transformers.masking_utils import create_bidirectional_mask

    if first >= last:
        return h
    ext = create_bidirectional_mask(config=backbone.config, inputs_embeds=h, attention_mask=mask)
    for layer in backbone.encoder.layer[first:last]:
        h = layer(h, ext)
    return h


def _frozen_states(backbone, ids, mask, n_frozen: int):
    """A BertModel's embeddings, then its first n_frozen layers, on word-piece ids (B × S)."""
    return _encoder_layers(backbone, backbone.embeddings(input_ids=ids), mask, 0, n_frozen)


def _decoder_config(encoder_config, layers: int):
    cfg = encoder_config.__class__.from_dict(encoder_config.to_dict())
    cfg.is_decoder = True
    cfg.add_cross_attention = True
    cfg.num_hidden_layers = int(layers)
    cfg.vocab_size = 1  # the decoder reads `inputs_embeds` from the label/cluster token table
    return cfg


def _build_module(encoder, n_tokens: int, n_cluster_head: int, decoder_layers: int, warm_start: bool,
                  copy_prior: bool = False):
    """The seq2seq around `encoder` (a transformers BertModel); with warm_start the decoder's
    self-attention/FFN/position weights come from the encoder's first layers; copy_prior adds the
    copy gain."""
    from transformers import BertModel

    cfg = _decoder_config(encoder.config, min(decoder_layers, encoder.config.num_hidden_layers)
                          if warm_start else decoder_layers)
    decoder = BertModel(cfg, add_pooling_layer=False)
    if warm_start:
        state = {k: v for k, v in encoder.state_dict().items()
                 if not k.startswith("pooler") and "word_embeddings" not in k}
        state = {k: v for k, v in state.items()
                 if not k.startswith("encoder.layer.") or int(k.split(".")[2]) < cfg.num_hidden_layers}
        decoder.load_state_dict(state, strict=False)
    return _seq2seq_class()(encoder, decoder, n_tokens, n_cluster_head, copy_prior)


def _init_token_embeddings(module, tokenizer, texts: Sequence[str], vocab: _Vocab) -> None:
    """Initialize the decoder's token table (tied to its output layer) from the encoder's word pieces.

    label_token: a label's token ← the mean word-piece embedding of its text ("money-fx" → money,
    -, f, ##x). label_text: each piece token ← that word piece's embedding, LSEP ← ";".
    Clusters ← the mean of their labels; bos ← [CLS], eos ← [SEP], sep ← [MASK], pad ← 0.
    """
    import torch

    words = module.encoder.embeddings.word_embeddings.weight.detach()
    E = torch.zeros(vocab.size, words.shape[1])
    label_vecs = torch.zeros(vocab.n_labels, words.shape[1])
    for lid, text in enumerate(texts):
        pieces = tokenizer(str(text), add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id]
        label_vecs[lid] = words[pieces].mean(0)
    if vocab.text:
        E[vocab.label_offset:] = words[torch.from_numpy(vocab.piece_ids)]
        semicolon = tokenizer.convert_tokens_to_ids(";")
        E[LSEP] = words[semicolon if semicolon is not None else tokenizer.sep_token_id]
    else:
        E[torch.from_numpy(vocab.label_token(np.arange(vocab.n_labels)))] = label_vecs
    for special, tok in ((BOS, tokenizer.cls_token_id), (EOS, tokenizer.sep_token_id), (SEP, tokenizer.mask_token_id)):
        if tok is not None:
            E[special] = words[tok]
    if vocab.n_clusters:
        for c in range(vocab.n_clusters):
            members = np.flatnonzero(vocab.label_cluster == c)
            if len(members):
                E[vocab.n_special + vocab.cluster_rank[c]] = label_vecs[torch.from_numpy(members)].mean(0)
    with torch.no_grad():
        module.tokens.weight.copy_(E)


# --------------------------------------------------------------------------- training


def _pad_targets(seqs: Sequence[Sequence[int]]) -> np.ndarray:
    """B × (1 + max len) int64: bos, the sequence, pad."""
    width = 1 + max(len(s) for s in seqs)
    out = np.full((len(seqs), width), PAD, dtype=np.int64)
    out[:, 0] = BOS
    for i, s in enumerate(seqs):
        out[i, 1:1 + len(s)] = s
    return out


def _embed_for_clusters(text_encoder, tokenizer, texts, Y, params: XLGenParams, device: str,
                        rng) -> tuple[np.ndarray, np.ndarray]:
    """(N × H float32 embeddings, (N,) bool chosen): at most `cluster_docs_per_label` documents per
    label are embedded (zero rows for the others); each label's mean runs over its chosen ones."""
    from .encoder import encode

    Yc = smat.csc_matrix(Y)
    chosen = np.zeros(len(texts), dtype=bool)
    for l in range(Yc.shape[1]):
        docs = Yc.indices[Yc.indptr[l]:Yc.indptr[l + 1]]
        if params.cluster_docs_per_label and len(docs) > params.cluster_docs_per_label:
            docs = rng.choice(docs, size=params.cluster_docs_per_label, replace=False)
        chosen[docs] = True
    rows = np.flatnonzero(chosen)
    emb = np.zeros((len(texts), text_encoder.hidden_size), dtype=np.float32)
    ep = EncoderParams(name=params.encoder, max_length=params.max_length, batch_size=params.eval_batch_size,
                       device=params.device)
    emb[rows] = encode(text_encoder, tokenizer, [texts[i] for i in rows], ep, device=device)
    return emb, chosen


def cluster_labels(texts: Sequence[str], Y: smat.spmatrix, label_names: Sequence[str],
                   params: XLGenParams | None = None, encoder=None,
                   doc_emb: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """XLGen's label clusters for training documents `texts` with labels Y (N × L; pass the labels
    the model trains on, i.e. PU-dropped ones in the PU setting).

    Embeds at most `params.cluster_docs_per_label` documents per label (and the label names, the
    fallback of labels without documents; pass titles, see `label_texts`) with the pretrained
    encoder, then `label_clusters`. encoder: optional (tokenizer, TextEncoder) already loaded.
    doc_emb: optional N × H embeddings of `texts` already computed (e.g. pooled cached encoder
    states): then every document counts and none is encoded again. Returns ((L,) int64 cluster
    id per label, info dict: n_clusters, docs_embedded, cluster_sizes).
    """
    from .encoder import encode, load_encoder

    params = params or XLGenParams()
    device = pick_device(params.device)
    if encoder is None:
        encoder = load_encoder(EncoderParams(name=params.encoder, device=params.device),
                               checkpoint=resolve_checkpoint(params.encoder))
    tokenizer, text_encoder = encoder
    rng = np.random.default_rng([params.seed, 1])
    Y = smat.csr_matrix(Y)
    if doc_emb is None:
        emb, chosen = _embed_for_clusters(text_encoder, tokenizer, list(texts), Y, params, device, rng)
    else:
        emb, chosen = np.asarray(doc_emb, np.float32), np.linalg.norm(doc_emb, axis=1) > 0
    Ysub = smat.diags(chosen.astype(np.float32)) @ Y
    names_emb = encode(text_encoder, tokenizer, [str(n).replace("_", " ") for n in label_names],
                       EncoderParams(name=params.encoder, max_length=16, device=params.device), device=device)
    clusters, _, _ = label_clusters(emb, Ysub, params.n_clusters, params.seed, params.kmeans_iter, fallback=names_emb)
    sizes = np.bincount(clusters, minlength=int(clusters.max()) + 1)
    return clusters, {"n_clusters": int(len(sizes)), "docs_embedded": int(chosen.sum()),
                      "cluster_sizes": sizes.tolist()}


@dataclass
class XLGenState:
    """A training checkpoint of XLGen: what a killed run resumes from (`save_state` / `load_state`).

    key: `xlgen_checkpoint_key` of the settings and data it belongs to. step: optimizer steps done.
    module, optimizer, scheduler: torch state dicts (CPU). rng: the numpy generator's state
    (batch order); torch_rng: torch's CPU generator state (dropout). order (int64), cursor: the
    current epoch's document order and position. clusters: (L,) int64 cluster id per label or
    None. history: the finished epochs' records.
    """

    key: str
    step: int
    module: dict
    optimizer: dict
    scheduler: dict
    rng: dict
    torch_rng: object
    order: np.ndarray
    cursor: int
    clusters: np.ndarray | None = None
    history: list = None


def save_state(state: XLGenState, folder: str | Path) -> None:
    """Write an XLGen checkpoint folder atomically (a kill while writing leaves the previous one).

    Args:
        state: the :class:`XLGenState`.
        folder: destination (str or Path), kind "checkpoint": state.pt (torch tensors) and
            state.json (key, step, cursor, rng, history).

    Raises:
        PathInUseError: `folder` exists and is not a folder xmc wrote.
    """
    import torch

    with atomic_dir(folder, kind="checkpoint") as tmp:
        torch.save({"module": state.module, "optimizer": state.optimizer, "scheduler": state.scheduler,
                    "torch_rng": state.torch_rng, "order": torch.from_numpy(np.asarray(state.order, np.int64)),
                    "clusters": None if state.clusters is None else torch.from_numpy(np.asarray(state.clusters,
                                                                                                np.int64))},
                   tmp / "state.pt")
        (tmp / "state.json").write_text(json.dumps({"key": state.key, "step": state.step, "cursor": state.cursor,
                                                      "rng": state.rng, "history": state.history or []}))


def load_state(folder: str | Path, key: str | None = None) -> XLGenState | None:
    """The XLGen checkpoint in `folder` (:func:`save_state`).

    Args:
        folder: the checkpoint folder (str or Path); it need not exist.
        key: the expected `xlgen_checkpoint_key` (None: accept any).

    Returns:
        XLGenState, or None when there is no state.json or it belongs to another key.

    Raises:
        OSError, KeyError, ValueError, RuntimeError: a checkpoint with missing or unreadable files.
    """
    import torch

    from .checkpoint import read_checkpoint_meta

    folder = Path(folder)
    meta = read_checkpoint_meta(folder, key)
    if meta is None:
        return None
    t = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    clusters = t["clusters"].numpy() if t["clusters"] is not None else None
    return XLGenState(meta["key"], int(meta["step"]), t["module"], t["optimizer"], t["scheduler"], meta["rng"],
                      t["torch_rng"], t["order"].numpy(), int(meta["cursor"]), clusters, meta.get("history", []))


#: settings that do not change what training computes (left out of the checkpoint key)
_NON_TRAINING_KEYS = ("device", "threads", "eval_batch_size", "beam_size", "max_labels", "max_clusters",
                      "min_labels", "restrict_to_clusters", "length_penalty", "copy_scale")


def xlgen_checkpoint_key(texts: Sequence[str], Y: smat.spmatrix, params: XLGenParams,
                         label_texts_: Sequence[str]) -> str:
    """Fingerprint of an XLGen training run (settings that shape training, texts, labels and the
    label texts); 40 hex digits.

    Args:
        texts: N training documents; Y: their N × L labels; params: XLGenParams;
        label_texts_: the L label texts (`label_texts`).
    """
    from .checkpoint import checkpoint_key

    settings = {k: v for k, v in params.to_dict().items() if k not in _NON_TRAINING_KEYS}
    return checkpoint_key(texts, Y, settings, list(label_texts_))


def _cache_states(backbone, flat, offsets, rows, n_frozen: int, pad_id: int, batch_size: int,
                  device: str) -> np.ndarray:
    """Frozen-part output (embeddings, then layers below n_frozen; no dropout) of documents `rows`,
    stored like `flat` (total word pieces × H float16; document i's at offsets[i]:offsets[i + 1];
    other documents' rows stay zero)."""
    import torch

    H = backbone.config.hidden_size
    states = np.zeros((int(offsets[-1]), H), dtype=np.float16)
    order = np.asarray(rows)[np.argsort(np.diff(offsets)[rows], kind="stable")]
    was_training = backbone.training
    backbone.to(device).eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            ids, mask = pad_batch(flat, offsets, batch, pad_id)
            ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
            with autocast(device):
                h = _frozen_states(backbone, ids, mask, n_frozen)
            h = h.float().cpu().numpy().astype(np.float16)
            for b, doc in enumerate(batch):
                n = offsets[doc + 1] - offsets[doc]
                states[offsets[doc]:offsets[doc + 1]] = h[b, :n]
    backbone.train(was_training)
    return states


def encoder_states(texts: Sequence[str], params: XLGenParams) -> tuple[np.ndarray, np.ndarray]:
    """The frozen part of the encoder (embeddings and the first `params.freeze_layers` layers) run
    once over every text: what `cache_encoder_states` trains from. Compute it once and pass it to
    `train_xlgen(encoder_states=...)` of variants sharing encoder, max_length and freeze_layers.

    Args:
        texts: N documents (str); params: XLGenParams (encoder, max_length, freeze_layers,
            eval_batch_size, device, threads).

    Returns:
        (states: total word pieces × H float16, offsets: (N + 1,) int64; document i's states are
        rows offsets[i]:offsets[i + 1]).
    """
    import torch

    from .encoder import load_encoder

    if params.threads:
        torch.set_num_threads(params.threads)
    device = pick_device(params.device)
    tokenizer, text_encoder = load_encoder(EncoderParams(name=params.encoder, device=params.device),
                                           checkpoint=resolve_checkpoint(params.encoder))
    flat, offsets = tokenize(tokenizer, list(texts), params.max_length)
    n_frozen = min(params.freeze_layers, int(text_encoder.backbone.config.num_hidden_layers))
    return _cache_states(text_encoder.backbone, flat, offsets, np.arange(len(offsets) - 1), n_frozen,
                         tokenizer.pad_token_id or 0, params.eval_batch_size, device), offsets


def _pooled_states(states: np.ndarray, offsets: np.ndarray, rows) -> np.ndarray:
    """N × H float32 l2-normalized mean of each document's cached states (zero rows outside `rows`)."""
    out = np.zeros((len(offsets) - 1, states.shape[1]), dtype=np.float32)
    for doc in rows:
        if offsets[doc + 1] > offsets[doc]:
            out[doc] = states[offsets[doc]:offsets[doc + 1]].astype(np.float32).mean(0)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def _state_batch(states: np.ndarray, offsets: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
    """(B × S × H float32 cached states, B × S int64 mask) of documents `rows`, right-padded."""
    lengths = np.diff(offsets)[rows]
    S = int(max(lengths.max(), 1))
    out = np.zeros((len(rows), S, states.shape[1]), dtype=np.float32)
    mask = np.zeros((len(rows), S), dtype=np.int64)
    for b, doc in enumerate(rows):
        n = lengths[b]
        out[b, :n] = states[offsets[doc]:offsets[doc + 1]]
        mask[b, :n] = 1
    return out, mask


def _fit_targets(targets: list[list[int]], limit: int, vocab: _Vocab) -> int:
    """Cut targets longer than `limit` tokens (the decoder's positions less bos) at their last
    whole label that fits, keeping eos; returns how many were cut."""
    cut = 0
    for i, seq in enumerate(targets):
        if len(seq) <= limit:
            continue
        keep = seq[:limit - 1]
        if vocab.text:
            ends = [j for j, t in enumerate(keep) if t == LSEP]
            keep = keep[:ends[-1] + 1] if ends else []
        targets[i] = keep + [EOS]
        cut += 1
    return cut


def train_xlgen(texts: Sequence[str], Y: smat.spmatrix, label_names: Sequence[str],
                params: XLGenParams | None = None, log: Callable[[dict], None] | None = None,
                clusters: np.ndarray | None = None, label_titles: Sequence[str] | None = None,
                resume: XLGenState | None = None, on_checkpoint: Callable[[XLGenState], None] | None = None,
                checkpoint_every: int = 0,
                encoder_states: tuple[np.ndarray, np.ndarray] | None = None) -> "XLGenModel":
    """Train an XLGen model.

    Args:
        texts: N training documents.
        Y: N × L label matrix (nonzero = positive), columns named `label_names`.
        params: settings (variant, decoding, PU drop, clustering, optimizer, decoding).
        log: receives {"stage": ..., "seconds": ..., ...} records: clusters, encoder_cache,
            train (every few steps), epoch (each finished pass over the documents: mean loss,
            steps, seconds), resume, checkpoint, train_done.
        clusters: optional (L,) int64 precomputed cluster id per label (from `cluster_labels` on the
            same, PU-dropped, labels); computed here for bcl/mcg when None.
        label_titles: optional L label titles (`Dataset.label_titles`): what label_text decoding
            writes and what initializes label tokens; the names where None (`label_texts`).
        resume: a checkpoint of this run (`load_state` with `xlgen_checkpoint_key`): training goes
            on from its step with its weights, optimizer, data order and random state, and its
            clusters. A checkpoint of another key is an error.
        on_checkpoint: called with an XLGenState after each epoch and every `checkpoint_every`
            steps (0: epochs only); the caller writes it (`save_state`).
        checkpoint_every: steps between checkpoints besides epoch ends.
        encoder_states: with `cache_encoder_states`, the frozen part's output already computed by
            :func:`encoder_states` on the same texts and settings (shared by several variants).

    Returns:
        An XLGenModel (label counts are those of the labels it trained on, i.e. after PU dropping);
        its predict gives N × L float32 CSR scores.

    Raises:
        EncoderError: an encoder, device or length setting that cannot work (before training).
        ValueError: Y with a negative or non-finite entry or a row count other than N; label
            names, titles or cluster ids whose count is not L; a resume state of another run;
            max_labels whose longest label_text sequence exceeds the decoder's positions.
        DataFormatError: a text that is not valid Unicode.

    Source:
        Jung et al. 2023, "Cluster-Guided Label Generation in Extreme Multi-Label
        Classification", EACL.
    """
    import torch

    from .encoder import load_encoder

    params = params or XLGenParams()
    params.check_lengths()
    emit = log or (lambda rec: None)
    texts = list(texts)
    check_label_matrix(Y, len(texts))
    if len(label_names) != Y.shape[1]:
        raise ValueError(f"train_xlgen: {len(label_names)} label names for {Y.shape[1]} label columns")
    if label_titles is not None and len(label_titles) != Y.shape[1]:
        raise ValueError(f"train_xlgen: {len(label_titles)} label titles for {Y.shape[1]} label columns")
    names_text = label_texts(label_names, label_titles)
    # hashing every text is only needed when checkpoints are read or written
    key = (xlgen_checkpoint_key(texts, Y, params, names_text)
           if resume is not None or on_checkpoint is not None else "")
    if resume is not None and resume.key != key:
        raise ValueError("train_xlgen: the resume checkpoint belongs to other settings or data")
    if params.threads:
        torch.set_num_threads(params.threads)
    device = pick_device(params.device)
    rng = np.random.default_rng(params.seed)
    torch.manual_seed(params.seed)

    n_pos_before = int(smat.csr_matrix(Y).count_nonzero())
    Y = pu_drop_labels(Y, params.pu_drop, params.seed)  # binary copy (no drop when pu_drop is 0)
    counts = np.diff(smat.csc_matrix(Y).indptr).astype(np.int64)  # (L,)
    checkpoint = resolve_checkpoint(params.encoder)
    tokenizer, text_encoder = load_encoder(EncoderParams(name=params.encoder, device=params.device),
                                           checkpoint=checkpoint)

    doc_rows = np.arange(len(texts))
    if params.skip_unlabeled:
        doc_rows = doc_rows[np.diff(Y.indptr) > 0]
    if len(doc_rows) == 0:
        raise ValueError("train_xlgen: no training document has a label")
    flat, offsets = tokenize(tokenizer, texts, params.max_length)
    pad_id = tokenizer.pad_token_id or 0
    depth = int(text_encoder.backbone.config.num_hidden_layers)
    n_frozen = min(params.freeze_layers, depth)
    states = None
    if params.cache_encoder_states and encoder_states is not None:
        states, given_offsets = encoder_states
        if (not np.array_equal(np.asarray(given_offsets), offsets)
                or states.shape != (int(offsets[-1]), text_encoder.hidden_size)):
            raise ValueError("train_xlgen: encoder_states were computed for other texts or settings")
    elif params.cache_encoder_states:
        tc = time.perf_counter()
        states = _cache_states(text_encoder.backbone, flat, offsets, doc_rows, n_frozen, pad_id,
                               params.eval_batch_size, device)
        emit({"stage": "encoder_cache", "seconds": time.perf_counter() - tc, "documents": int(len(doc_rows)),
              "frozen_layers": n_frozen, "mb": states.nbytes / 2**20})

    if resume is not None and params.uses_clusters:
        clusters = resume.clusters
    if params.uses_clusters and clusters is None:
        t0 = time.perf_counter()
        # a frozen whole encoder's cached states are the documents' embeddings already
        doc_emb = _pooled_states(states, offsets, doc_rows) if states is not None and n_frozen == depth else None
        clusters, cinfo = cluster_labels(texts, Y, names_text, params, encoder=(tokenizer, text_encoder),
                                         doc_emb=doc_emb)
        emit({"stage": "clusters", "seconds": time.perf_counter() - t0, **cinfo})
    if not params.uses_clusters:
        clusters = None
    elif len(clusters) != Y.shape[1]:
        raise ValueError(f"train_xlgen: {len(clusters)} cluster ids for {Y.shape[1]} labels")
    else:
        clusters = np.asarray(clusters, dtype=np.int64)
    if params.decoding == "label_text":
        vocab = _make_text_vocab(counts, clusters, names_text, label_names, tokenizer)
    else:
        vocab = _make_vocab(counts, clusters)
    max_pos = int(text_encoder.backbone.config.max_position_embeddings)
    if vocab.text and _DecodeRules.count_steps(vocab, params) >= max_pos:
        raise ValueError(f"XLGenParams.max_labels: {params.max_labels} labels of up to {vocab.trie.max_length} "
                         f"tokens exceed the decoder's {max_pos} positions")

    if params.copy_prior:
        vocab.piece_idf = piece_idf(vocab.piece_ids, flat, offsets, doc_rows)
    module = _build_module(text_encoder.backbone, vocab.size, vocab.n_clusters if params.variant == "bcl" else 0,
                           params.decoder_layers, warm_start=True, copy_prior=params.copy_prior)
    _init_token_embeddings(module, tokenizer, names_text, vocab)
    module.to(device)

    t0 = time.perf_counter()
    targets = build_targets(Y, vocab, params.variant)
    n_cut = _fit_targets(targets, max_pos - 1, vocab)
    if n_cut:
        emit({"stage": "targets_cut", "documents": n_cut, "limit": max_pos - 1})
    cluster_bits = None
    if params.variant == "bcl":
        C = smat.csr_matrix((np.ones(len(clusters), np.float32), (np.arange(len(clusters)), clusters)),
                            shape=(len(clusters), vocab.n_clusters))
        cluster_bits = (Y @ C).toarray() > 0  # (N, K)

    if params.freeze_word_embeddings:
        module.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    if params.freeze_layers:
        frozen = [module.encoder.embeddings, *module.encoder.encoder.layer[:n_frozen]]
        for part in frozen:
            for w in part.parameters():
                w.requires_grad_(False)
    pretrained = [p for n, p in module.named_parameters()
                  if p.requires_grad and (n.startswith("encoder.") or
                                          (n.startswith("decoder.") and "crossattention" not in n))]
    pretrained_ids = {id(p) for p in pretrained}
    new = [p for p in module.parameters() if p.requires_grad and id(p) not in pretrained_ids]
    opt = torch.optim.AdamW([{"params": pretrained, "lr": params.lr}, {"params": new, "lr": params.lr_new}],
                            weight_decay=params.weight_decay)
    warm = max(1, int(round(params.warmup * params.steps)))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (params.steps - step) / max(1, params.steps - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    first_step, history = 0, []
    order = rng.permutation(doc_rows)
    cursor = 0
    if resume is not None:
        module.load_state_dict(resume.module)
        opt.load_state_dict(resume.optimizer)
        sched.load_state_dict(resume.scheduler)
        rng.bit_generator.state = resume.rng
        torch.set_rng_state(resume.torch_rng)
        order, cursor = np.asarray(resume.order, np.int64), resume.cursor
        first_step, history = resume.step, list(resume.history or [])
        emit({"stage": "resume", "step": first_step, "epochs_done": len(history)})

    def snapshot(step: int) -> XLGenState:
        return XLGenState(key, step, {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
                          opt.state_dict(), sched.state_dict(), rng.bit_generator.state, torch.get_rng_state(),
                          order.copy(), cursor, clusters, list(history))

    module.train()
    loss_sum, loss_n, t_log = 0.0, 0, time.perf_counter()
    epoch_sum, epoch_n, t_epoch = 0.0, 0, time.perf_counter()
    log_every = max(1, min(50, params.steps // 10 or 1))
    bar = progress.task("xlgen: train", params.steps, "step")
    bar.update(first_step)  # steps a resumed run did before
    for step in range(first_step, params.steps):
        bar.update()
        epoch_end = cursor + params.batch_size > len(order)
        if epoch_end:
            if epoch_n:
                history.append({"epoch": len(history) + 1, "step": step, "loss": epoch_sum / epoch_n,
                                "seconds": time.perf_counter() - t_epoch})
                emit({"stage": "epoch", **history[-1]})
                epoch_sum, epoch_n, t_epoch = 0.0, 0, time.perf_counter()
            order, cursor = rng.permutation(doc_rows), 0
        if (on_checkpoint is not None and step > first_step
                and (epoch_end or (checkpoint_every and step % checkpoint_every == 0))):
            on_checkpoint(snapshot(step))
            emit({"stage": "checkpoint", "step": step})
        rows = order[cursor:cursor + params.batch_size]
        cursor += params.batch_size
        tgt = torch.from_numpy(_pad_targets([targets[r] for r in rows])).to(device)
        if states is not None:
            h0, mask = _state_batch(states, offsets, rows)
            h0, mask = torch.from_numpy(h0).to(device), torch.from_numpy(mask).to(device)
        else:
            ids, mask = pad_batch(flat, offsets, rows, pad_id)
            ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        copy = (torch.from_numpy(vocab.copy_vector(flat, offsets, rows)).to(device)
                if params.copy_prior else None)
        with autocast(device):
            hidden, pooled = module.encode_from(h0, mask, n_frozen) if states is not None else module.encode(ids, mask)
            logits = module.decode(hidden, mask, pooled, tgt[:, :-1], copy)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab.size), tgt[:, 1:].reshape(-1),
                                                     ignore_index=PAD)
            if cluster_bits is not None:
                bits = torch.from_numpy(cluster_bits[rows].astype(np.float32)).to(device)
                loss = loss + params.bcl_weight * torch.nn.functional.binary_cross_entropy_with_logits(
                    module.cluster_logits(pooled).float(), bits)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        loss_sum, loss_n = loss_sum + value, loss_n + 1
        epoch_sum, epoch_n = epoch_sum + value, epoch_n + 1
        if (step + 1) % log_every == 0 or step + 1 == params.steps:
            emit({"stage": "train", "step": step + 1, "loss": loss_sum / loss_n,
                  "epoch": len(history) + cursor / len(doc_rows),
                  "seconds": time.perf_counter() - t0, "step_s": (time.perf_counter() - t_log) / loss_n})
            loss_sum, loss_n, t_log = 0.0, 0, time.perf_counter()
    bar.close()
    if epoch_n:  # the last, partial pass
        history.append({"epoch": len(history) + cursor / len(doc_rows), "step": params.steps,
                        "loss": epoch_sum / epoch_n, "seconds": time.perf_counter() - t_epoch})
        emit({"stage": "epoch", **history[-1]})
    module.eval()
    model = XLGenModel(params, list(label_names), module, tokenizer, vocab,
                       info={"train_docs": int(len(doc_rows)), "device": device, "train_positives": int(Y.nnz),
                             "train_positives_before_pu": n_pos_before, "epochs": history,
                             "resumed_at_step": first_step if resume is not None else None})
    model.set_label_counts(Y)
    emit({"stage": "train_done", "seconds": time.perf_counter() - t0})
    return model


def train_with_checkpoints(texts: Sequence[str], Y: smat.spmatrix, label_names: Sequence[str],
                           params: XLGenParams, checkpoint_dir: str | Path, log: Callable[[dict], None] | None = None,
                           clusters: np.ndarray | None = None, label_titles: Sequence[str] | None = None,
                           checkpoint_every: int = 200) -> "XLGenModel":
    """`train_xlgen` that writes a checkpoint to `checkpoint_dir` after each epoch and every
    `checkpoint_every` steps and, when a checkpoint of the same settings and data is there, resumes
    from it. The caller removes the folder once the model is saved.

    Args:
        texts, Y, label_names, params, log, clusters, label_titles: as :func:`train_xlgen`.
        checkpoint_dir: the checkpoint folder (str or Path).
        checkpoint_every: steps between checkpoints besides epoch ends (0: epochs only).

    Returns:
        The trained XLGenModel.
    """
    emit = log or (lambda rec: None)
    key = xlgen_checkpoint_key(texts, Y, params, label_texts(label_names, label_titles))
    state = load_state(checkpoint_dir, key)
    if state is not None:
        emit({"stage": "resume_from", "step": state.step, "checkpoint": str(checkpoint_dir)})
    return train_xlgen(texts, Y, label_names, params, log=log, clusters=clusters, label_titles=label_titles,
                       resume=state, on_checkpoint=lambda st: save_state(st, checkpoint_dir),
                       checkpoint_every=checkpoint_every)


# --------------------------------------------------------------------------- the model


@dataclass
class Generation:
    """What one decoding pass gives: `sets[i]` the label ids of document i's best hypothesis in
    generated order; `scores` N × L float32 CSR as described in `XLGenModel.predict`."""

    sets: list[list[int]]
    scores: smat.csr_matrix


class _DecodeRules:
    """What each of n hypotheses may write next, and the bookkeeping after each step, for both
    decodings: clusters (mcg) before SEP in increasing cluster rank, then labels in increasing
    frequency rank (valid ones only, never a repeat), at most `max_labels`, EOS once `min_labels`
    are written (or none is left). In label_text mode a label is its pieces then LSEP, walked on
    the vocabulary's trie; EOS only between labels.
    """

    def __init__(self, vocab: _Vocab, params: XLGenParams, n: int, device):
        import torch

        self.v, self.p = vocab, params
        K, L = vocab.n_clusters, vocab.n_labels
        self.mcg = params.variant == "mcg" and K > 0
        z = functools.partial(torch.zeros, n, dtype=torch.long, device=device)
        self.phase = torch.full((n,), not self.mcg, dtype=torch.bool, device=device)  # True: label segment
        self.last_c, self.last_l = z() - 1, z() - 1  # rank of the last cluster / label written
        self.n_c, self.n_l = z(), z()
        self.finished = torch.zeros(n, dtype=torch.bool, device=device)
        self.chosen = torch.zeros(n, max(K, 1), dtype=torch.bool, device=device)
        self.clu_rank = torch.arange(K, device=device)
        self.label_rank = torch.as_tensor(vocab.label_rank, dtype=torch.long, device=device)
        if vocab.text:
            self.trie = TrieTensors(vocab.trie, device)
            self.node = z()
            self.next_node = None
            self.cand_rank = self.label_rank[self.trie.pos_label]  # (L,) rank at each trie position
            cand_label = self.trie.pos_label
        else:
            self.cand_rank = torch.arange(L, device=device)  # label tokens are in rank order
            cand_label = torch.as_tensor(vocab.rank_to_label(), dtype=torch.long, device=device)
        self.cand_cluster = (torch.as_tensor(vocab.cluster_rank[vocab.label_cluster], dtype=torch.long,
                                             device=device)[cand_label] if self.mcg else None)

    @property
    def steps(self) -> int:
        """Decoder positions one hypothesis can take."""
        return self.count_steps(self.v, self.p)

    @staticmethod
    def count_steps(v: _Vocab, p: XLGenParams) -> int:
        """Decoder positions one hypothesis can take under vocabulary v and settings p."""
        per_label = v.trie.max_length if v.text else 1
        mcg = p.variant == "mcg" and v.n_clusters > 0
        return (p.max_clusters + 1 if mcg else 0) + p.max_labels * per_label + 1

    def allowed(self):
        """(n, V) bool: the tokens each hypothesis may write next."""
        import torch

        p, v = self.p, self.v
        n, V, K, off = self.phase.shape[0], v.size, v.n_clusters, v.label_offset
        allowed = torch.zeros(n, V, dtype=torch.bool, device=self.phase.device)
        if self.mcg:
            allowed[:, v.n_special:off] = ((~self.phase)[:, None] & (self.clu_rank[None] > self.last_c[:, None])
                                           & (self.n_c < p.max_clusters)[:, None])
            allowed[:, SEP] = ~self.phase & (self.n_c >= 1)
        room = self.phase & (self.n_l < p.max_labels)
        valid = room[:, None] & (self.cand_rank[None] > self.last_l[:, None])
        if self.mcg and p.restrict_to_clusters:
            valid &= self.chosen[:, self.cand_cluster]
        if v.text:
            ok, self.next_node = self.trie.allowed(self.node, valid, V)
            allowed |= ok
            allowed[:, EOS] = self.phase & (self.node == 0) & ((self.n_l >= p.min_labels) | ~ok.any(1))
        else:
            allowed[:, off:] = valid
            allowed[:, EOS] = self.phase & ((self.n_l >= p.min_labels) | ~valid.any(1))
        return allowed

    def advance(self, src, tok) -> None:
        """Hypotheses become src's (n,) continued by tok (n,)."""
        import torch

        v = self.v
        off = v.label_offset
        for name in ("phase", "last_c", "last_l", "n_c", "n_l", "finished", "chosen"):
            setattr(self, name, getattr(self, name)[src])
        if self.mcg:
            is_c = (tok >= v.n_special) & (tok < off)
            c_idx = (tok - v.n_special).clamp(0, v.n_clusters - 1)
            self.chosen[torch.arange(len(tok), device=tok.device), c_idx] |= is_c
            self.last_c = torch.where(is_c, tok - v.n_special, self.last_c)
            self.n_c = self.n_c + is_c.long()
            self.phase = self.phase | (tok == SEP)
        if v.text:
            node = self.next_node[src, tok]  # -1: a token off the trie (specials, clusters)
            label = self.trie.node_label[node.clamp_min(0)]
            done = (node >= 0) & (label >= 0)
            self.last_l = torch.where(done, self.label_rank[label.clamp_min(0)], self.last_l)
            self.n_l = self.n_l + done.long()
            self.node = torch.where(done | (node < 0), 0, node)
        else:
            is_l = tok >= off
            self.last_l = torch.where(is_l, tok - off, self.last_l)
            self.n_l = self.n_l + is_l.long()
        self.finished = self.finished | (tok == EOS)


class XLGenModel(ModelBase):
    """A trained XLGen model: tokenizer + seq2seq module + the label/cluster token vocabulary.

    Folder layout (`save` / `load`; loads without Dagster):

        params.json            format_version, method "xlgen", params (XLGenParams), info,
                               n_labels, n_clusters, decoder_layers
        labels.txt             label names (line index = label id)
        vocab.npz              label_rank (L,), cluster_rank (K,), label_cluster (L,); label_text
                               decoding: piece_ids (P,), label_ptr (L + 1,), label_pieces, label_texts,
                               piece_idf (P,) float32 with copy_prior
        encoder_config.json    the encoder's transformers config
        weights.safetensors    the seq2seq module's state dict (float32)
        tokenizer/             the encoder's tokenizer files
        label_counts.npy, train_stats.json   training label counts (PSP@k, tail buckets)
        calibration/           when calibrated (`model_base`): the generated set is kept as the
                               decision; its labels get calibrated probabilities
    """

    method = METHOD_XLGEN

    def __init__(self, params: XLGenParams, label_names: list[str], module, tokenizer, vocab: _Vocab,
                 info: dict | None = None):
        if len(label_names) != vocab.n_labels:
            raise ValueError(f"XLGenModel: {len(label_names)} label names for {vocab.n_labels} label tokens")
        self.params = params
        self.label_names = list(label_names)
        self.module = module
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.info = dict(info or {})
        self.label_counts = None
        self.n_train = None
        self.calibration = None
        self._device = None

    @property
    def featurizer(self):
        """The tokenizer: this model reads raw texts (the CLI checks a text model has a featurizer)."""
        return self.tokenizer

    @property
    def copy_gain(self) -> float | None:
        """The learned copy gain g (float; decoding multiplies it by `copy_scale`), None without
        copy_prior."""
        gain = self.module.copy_gain
        return None if gain is None else float(gain.detach()) * COPY_GAIN_SCALE

    @property
    def label_clusters(self) -> np.ndarray | None:
        """(L,) int64 cluster id per label (bcl, mcg), None for base."""
        return self.vocab.label_cluster

    def _ready(self) -> str:
        if self._device is None:
            self._device = pick_device(self.params.device)
            self.module.to(self._device)
            self.module.eval()
        return self._device

    # -- decoding ----------------------------------------------------------------------------
    def _beam_search(self, hidden, mask, pooled, beam: int, copy=None):
        """Constrained beam search for one batch (the decoder's keys and values cached across
        positions, reordered with the beams); copy: B × V copy prior (copy_prior models).
        Returns (tokens (B, W, T) int64 numpy, scores (B, W)
        float64 numpy with -inf for dead hypotheses), hypotheses of a document sorted by
        decreasing score."""
        import torch

        p, v = self.params, self.vocab
        dev = hidden.device
        B, W, V = hidden.shape[0], beam, v.size
        n = B * W
        hidden = hidden.repeat_interleave(W, 0)
        mask = mask.repeat_interleave(W, 0)
        pooled = pooled.repeat_interleave(W, 0)
        if copy is not None:  # the same for every hypothesis of a document: beams never reorder it
            copy = copy.repeat_interleave(W, 0)
        rules = _DecodeRules(v, p, n, dev)
        tokens = torch.full((n, 1), BOS, dtype=torch.long, device=dev)
        score = torch.zeros(B, W, dtype=torch.float32, device=dev)
        score[:, 1:] = -math.inf
        with autocast(str(dev.type)):
            logits, cache = self.module.step(hidden, mask, pooled, tokens[:, 0], None, copy)
        for _ in range(rules.steps):
            logp = torch.log_softmax(logits.float(), dim=-1)
            logp = logp.masked_fill(~rules.allowed(), -math.inf)
            logp[rules.finished] = -math.inf
            logp[rules.finished, PAD] = 0.0
            cand = (score.reshape(n, 1) + logp).reshape(B, W * V)
            top_s, top_i = cand.topk(W, dim=1)  # (B, W)
            src = (top_i // V + torch.arange(B, device=dev)[:, None] * W).reshape(n)
            tok = (top_i % V).reshape(n)
            tokens = torch.cat([tokens[src], tok[:, None]], dim=1)
            rules.advance(src, tok)
            score = top_s
            rules.finished |= torch.isinf(score.reshape(n))
            if bool(rules.finished.all()):
                break
            cache.reorder_cache(src)
            with autocast(str(dev.type)):
                logits, cache = self.module.step(hidden, mask, pooled, tok, cache, copy)
        final = score.double()
        if p.length_penalty:
            length = (tokens != PAD).sum(1).reshape(B, W).double() - 1.0  # generated tokens
            final = final / length.clamp_min(1.0) ** p.length_penalty
        order = torch.argsort(final, dim=1, descending=True, stable=True)
        final = torch.gather(final, 1, order)
        tokens = tokens.reshape(B, W, -1)[torch.arange(B, device=dev)[:, None], order]
        return tokens.cpu().numpy(), final.cpu().numpy()

    def generate(self, texts: Sequence[str], beam_size: int | None = None, topk: int | None = None) -> Generation:
        """Decode `texts` (N strings): the best hypothesis' label set per document, and scores
        (see `predict`), at most `topk` per row."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        if smat.issparse(texts) or isinstance(texts, np.ndarray):
            raise ValueError("XLGen models read raw texts, not feature vectors")
        check_predict_args(topk, beam_size)
        texts = list(texts)  # NFC-normalized where they are tokenized (encoder.tokenize)
        device = self._ready()
        beam = int(beam_size or self.params.beam_size)
        flat, offsets = tokenize(self.tokenizer, texts, self.params.max_length)
        order = np.argsort(np.diff(offsets), kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        sets: list[list[int]] = [[] for _ in texts]
        rows_out, cols_out, vals_out = [], [], []
        with torch.inference_mode():
            for start in range(0, len(texts), self.params.eval_batch_size):
                rows = order[start:start + self.params.eval_batch_size]
                ids, mask = pad_batch(flat, offsets, rows, pad_id)
                ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
                with autocast(device):
                    hidden, pooled = self.module.encode(ids, mask)
                copy = None
                if self.params.copy_prior:
                    copy = self.vocab.copy_vector(flat, offsets, rows) * np.float32(self.params.copy_scale)
                    copy = torch.from_numpy(copy).to(device)
                toks, scores = self._beam_search(hidden, mask, pooled, beam, copy)
                for b, doc in enumerate(rows):
                    labels_of = [self.vocab.labels_of(toks[b, w]) for w in range(toks.shape[1])]
                    best = [int(x) for x in labels_of[0]]
                    sets[doc] = best
                    alive = np.isfinite(scores[b])
                    weights = np.zeros_like(scores[b])
                    if alive.any():
                        s = scores[b][alive]
                        weights[alive] = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                    mass: dict[int, float] = {}
                    for w in range(1, toks.shape[1]):
                        for lab in labels_of[w]:
                            mass[int(lab)] = mass.get(int(lab), 0.0) + float(weights[w])
                    entries = [(lab, 1.0 + (len(best) - j) / len(best)) for j, lab in enumerate(best)]
                    in_best = set(best)
                    entries += [(lab, min(m, 0.999999)) for lab, m in mass.items() if lab not in in_best and m > 0]
                    entries.sort(key=lambda e: -e[1])
                    if topk is not None:
                        entries = entries[:topk]
                    rows_out += [doc] * len(entries)
                    cols_out += [e[0] for e in entries]
                    vals_out += [e[1] for e in entries]
        P = smat.csr_matrix((np.asarray(vals_out, np.float32), (np.asarray(rows_out, np.int64),
                                                                 np.asarray(cols_out, np.int64))),
                            shape=(len(texts), self.n_labels))
        P.sort_indices()
        return Generation(sets, P)

    def predict(self, texts, topk: int | None = None, beam_size: int | None = None,
                post_processor: str | None = None) -> smat.csr_matrix:
        """Scores of generated labels by beam-search decoding of raw `texts`.

        The generated set's labels score in (1, 2], decreasing along the generated order (so the
        first generated label is P@1's); labels only other finished beams generated score their
        share of the beams' posterior mass, in [0, 1) (see `SET_SCORE_FLOOR`).

        Args:
            texts: N documents (str, or one str).
            topk: labels kept per row (None: all generated).
            beam_size: decoder beams (None: `params.beam_size`).
            post_processor: accepted for interface compatibility and ignored.

        Returns:
            N × L float32 CSR, at most topk entries per row, indices sorted.

        Raises:
            ValueError: a feature matrix instead of texts; topk or beam_size not an integer >= 1;
                a text that is not valid Unicode.
        """
        return self.generate(texts, beam_size=beam_size, topk=topk).scores

    def generated_sets(self, texts, beam_size: int | None = None) -> list[list[int]]:
        """The generated label set per document.

        Args:
            texts: N documents (str); beam_size: decoder beams (None: `params.beam_size`).

        Returns:
            N lists of int label ids, in generated (frequency-rank) order.
        """
        return self.generate(texts, beam_size=beam_size).sets

    def predict_sets(self, inputs, policy: str = "micro", **kw) -> smat.csr_matrix:
        """The generated set of every document (XLGen's own decision: `policy` is not used), its
        labels holding their calibrated probabilities.

        Args:
            inputs: N documents (str).
            policy: accepted for the shared interface ("micro" or "macro"); the set is the decoder's.
            **kw: beam_size.

        Returns:
            N × L float32 CSR, indices sorted.

        Raises:
            NotCalibratedError: the model has no calibration.
            ValueError: an unknown policy; as :meth:`predict`.
        """
        from .calibration import POLICIES, pair_targets
        from .sparse import keep_entries

        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        cal = self._calibration()
        gen = self.generate(inputs, beam_size=kw.get("beam_size"))
        Pp = cal.proba(gen.scores)  # every generated label is among the scores
        keep = pair_targets(Pp, sets_matrix(gen.sets, self.n_labels))  # structural: a probability 0.0 stays
        return keep_entries(Pp, keep)

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the model folder atomically (`folders.atomic_dir`).

        Files: params.json, labels.txt, vocab.npz (int64 label_rank, cluster_rank,
        label_cluster; label_text mode: piece_ids, label_ptr, label_pieces and the label_texts
        strings), encoder_config.json, weights.safetensors (float32), tokenizer/, label counts.

        Args:
            path: destination folder (str or Path); missing, empty, or a model folder xmc wrote.

        Returns:
            The folder as a Path.

        Raises:
            PathInUseError: `path` holds something that is not an xmc model folder.
        """
        from safetensors.torch import save_file

        path = Path(path)
        v = self.vocab
        with atomic_dir(path) as tmp:
            self.write_common(tmp, {
                "n_clusters": v.n_clusters,
                "decoder_layers": int(self.module.decoder.config.num_hidden_layers),
                "n_cluster_head": int(self.module.cluster_head.out_features) if self.module.cluster_head is not None else 0,
            })
            np.savez(tmp / "vocab.npz", **v.arrays())
            (tmp / "encoder_config.json").write_text(self.module.encoder.config.to_json_string())
            state = {k: t.detach().float().contiguous().cpu() for k, t in self.module.state_dict().items()}
            save_file(state, str(tmp / "weights.safetensors"))
            self.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "XLGenModel":
        """Load a folder written by `save`.

        Args:
            path: the model folder (str or Path).

        Returns:
            XLGenModel (weights on CPU, eval mode).

        Raises:
            ModelFormatError: one line naming the folder, when it is missing, of another format
                version or method, or incomplete / corrupt.
        """
        path = Path(path)
        meta = read_model_meta(path)
        if meta.get("method") != METHOD_XLGEN:
            raise ModelFormatError(f"{path}: not an XLGen model (method {meta.get('method')!r})")
        try:
            from safetensors.torch import load_file
            from transformers import AutoTokenizer, BertConfig, BertModel

            params = XLGenParams.from_dict(meta["params"])
            names = read_label_names(path)
            with np.load(path / "vocab.npz", allow_pickle=False) as z:
                vocab = _Vocab.from_arrays(z)
            enc_cfg = BertConfig.from_dict(json.loads((path / "encoder_config.json").read_text()))
            encoder = BertModel(enc_cfg)
            module = _build_module(encoder, vocab.size, int(meta.get("n_cluster_head", 0)),
                                   int(meta["decoder_layers"]), warm_start=False, copy_prior=params.copy_prior)
            module.load_state_dict(load_file(str(path / "weights.safetensors"), device="cpu"), strict=True)
            module.eval()
            tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"), local_files_only=True)
            model = cls(params, names, module, tokenizer, vocab, meta.get("info"))
            model.load_common(path)
        except ModelFormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, zipfile.BadZipFile) as e:
            msg = one_line(f"{path}: incomplete or corrupt XLGen model folder ({type(e).__name__}: {e})")
            raise ModelFormatError(msg[:400] + "; retrain the model") from None
        return model


# --------------------------------------------------------------------------- evaluation


def evaluate_xlgen(model: XLGenModel, texts: Sequence[str], Y: smat.spmatrix, label_names: Sequence[str],
                   metric_params=None, topk: int | None = None, beam_size: int | None = None):
    """One decoding pass scored both ways: ranking metrics (as `evaluate_model`) and set metrics.

    Returns (Evaluation, extra) where extra holds, in percent, micro_precision, micro_recall,
    micro_f1, macro_f1 (over labels present in Y) of the generated sets, and the tail-bucket
    metrics of labels seen 0 and 1 times in training (`metrics.tail_bucket_metrics`).
    """
    from .metrics import MetricParams, ranking_metrics, set_metrics, tail_bucket_metrics
    from .model import Evaluation, evaluation_topk

    mp = metric_params or MetricParams()
    topk = evaluation_topk(topk, mp)
    check_label_matrix(Y, len(texts))
    Ya = model.align_labels(Y, label_names)
    t0 = time.perf_counter()
    gen = model.generate(texts, beam_size=beam_size, topk=topk)
    predict_s = time.perf_counter() - t0
    P = smat.csr_matrix((gen.scores.data, gen.scores.indices, gen.scores.indptr), shape=Ya.shape)
    inv_prop = model.inverse_propensity(mp.propensity_A, mp.propensity_B, n_cols=Ya.shape[1])
    result = ranking_metrics(Ya, P, mp, inv_prop=inv_prop)
    S = sets_matrix(gen.sets, Ya.shape[1])
    extra = set_metrics(Ya, S)
    counts = model.label_counts if model.label_counts is not None else np.zeros(model.n_labels, np.int64)
    extra.update(tail_bucket_metrics(Ya, S, counts))
    if model.calibration is not None:  # the generated sets' labels and the other beams' get probabilities
        from .metrics import calibration_metrics

        raw = P.copy()
        raw.data = np.clip(raw.data, 0.0, 1.0)
        cm, cm_raw = calibration_metrics(Ya, model.calibration.proba(P)), calibration_metrics(Ya, raw)
        extra.update({"ece": cm["ece"], "brier": cm["brier"], "ece_raw": cm_raw["ece"], "brier_raw": cm_raw["brier"]})
    return Evaluation(result, int(Ya.shape[0]), predict_s, model.unseen_label_count(Ya)), extra


def sets_matrix(sets: Sequence[Sequence[int]], n_cols: int) -> smat.csr_matrix:
    """Label-id lists as a 0/1 matrix.

    Args:
        sets: N lists of int label ids (duplicates allowed).
        n_cols: number of columns (labels), above every id.

    Returns:
        N × n_cols float32 binary CSR, indices sorted.
    """
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
    indices = np.fromiter((j for s in sets for j in s), dtype=np.int64, count=int(indptr[-1]))
    M = smat.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(sets), n_cols))
    M.sum_duplicates()
    M.data[:] = 1.0
    return M
