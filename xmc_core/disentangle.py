"""Label disentanglement: a label may sit in several leaf clusters, learned from the matcher.

Plain XR-Linear puts each label in exactly one leaf cluster (k-means on PIFA embeddings). A label
whose documents come from several contexts (a broad tag, a word with two senses) is then reachable
only through one cluster: its documents routed elsewhere by the matcher are lost. Following Liu et
al. (NeurIPS 2021, "Label disentanglement in partition-based XMC"):

1. train the matcher (all non-leaf levels) on the initial tree;
2. route the training documents through it: M (N × K leaf clusters), the beam's scores;
3. affinity A = Yᵀ M̂ (L × K), M̂ = M with rows normalized to sum 1, so that
   share[l, k] = A[l, k] / Σ_k A[l, k] is the part of label l's routing mass that lands on k;
4. each label keeps its original cluster and gets up to max_copies - 1 extra copies, in its
   clusters of highest share with share >= min_share; every cluster holds at most
   cap = floor(size_cap_factor × the original largest leaf) labels (extra copies of highest share
   first);
5. the rankers are retrained on the overlapping tree (`XLinearModel.train` trains one column per
   (cluster, label) copy; prediction merges a label's copies, by max there, or by mean here:
   `predict_merged`);
6. `rounds` > 1 repeats 1-4 with the matcher trained on the overlapping tree.

All steps are sparse matrix work, vectorized over labels (no Python loop per label or document).
max_copies = 1 or rounds = 0 leaves the tree unchanged, so the model is plain XR-Linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl
import scipy.sparse as smat

from .params import ParamsBase
from .sparse import binarize
from .tree import LabelTree
from .xlinear import POST_PROCESSORS, PredParams, RankerParams, XLinearModel, _topk_flat, _with_bias

__all__ = [
    "DisentangleParams",
    "train_matcher",
    "route",
    "disentangle_tree",
    "changes_tree",
    "copy_stats",
    "copy_table",
    "overlap_violations",
    "matcher_recall",
    "predict_merged",
]

MERGES = ("max", "mean")


@dataclass
class DisentangleParams(ParamsBase):
    """Settings of label disentanglement.

    max_copies: most leaf clusters a label may sit in (1..6; 1: plain XR-Linear).
    rounds: route + reassign rounds (0: plain XR-Linear; the paper found one gets most of the gain).
    size_cap_factor: a leaf cluster holds at most floor(size_cap_factor × the original largest
        leaf) labels after reassignment. 2.0 by default: where the matcher limits reach the cap
        binds (yso-finna-en: at 1.5 nearly every leaf fills to it), and 2.0 against 1.5 adds
        recall and P@1 there (yso-finna-en recall 66.7 → 70.4 → 72.7%, P@1 37.20 → 37.45 → 37.67;
        eurlex57k P@1 −0.13 → +0.12) for training 1.4–2.3× plain XR-Linear's (1.2–2.0× at 1.5).
    min_share: an extra copy only in a cluster that receives at least this share of the label's
        routing mass (the matcher's beam scores over the label's training documents).
    merge: how prediction combines a label's copies: "max" (best copy) or "mean" (mean over the
        copies whose cluster is in the beam).
    """

    max_copies: int = 2
    rounds: int = 1
    size_cap_factor: float = 2.0
    min_share: float = 0.1
    merge: str = "max"

    def __post_init__(self):
        if not 1 <= int(self.max_copies) <= 6:
            raise ValueError(f"DisentangleParams.max_copies: must be in 1..6, got {self.max_copies}")
        if int(self.rounds) < 0:
            raise ValueError(f"DisentangleParams.rounds: must be >= 0, got {self.rounds}")
        if self.size_cap_factor < 1.0:
            raise ValueError(f"DisentangleParams.size_cap_factor: must be >= 1, got {self.size_cap_factor}")
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f"DisentangleParams.min_share: must be in [0, 1], got {self.min_share}")
        if self.merge not in MERGES:
            raise ValueError(f"DisentangleParams.merge: expected one of {list(MERGES)}, got {self.merge!r}")

    @property
    def active(self) -> bool:
        """Whether these settings can change the tree (else: plain XR-Linear)."""
        return self.max_copies > 1 and self.rounds > 0

    def leaf_cap(self, largest_leaf: int) -> int:
        """The most labels a leaf cluster may hold after copies: floor(size_cap_factor ×
        largest_leaf), largest_leaf being the original tree's largest leaf (at least 1)."""
        return int(math.floor(self.size_cap_factor * max(int(largest_leaf), 1)))


def changes_tree(params: DisentangleParams | None, tree: LabelTree) -> bool:
    """Whether `params` (None: no disentangle section) can change `tree`: a section that can act
    (`active`) on a tree with a matcher level (a one-level tree reaches every label already)."""
    return params is not None and params.active and tree.depth >= 2


# ---------------------------------------------------------------------------------------------
# Matcher
# ---------------------------------------------------------------------------------------------
def _matcher_tree(tree: LabelTree) -> LabelTree:
    """The non-leaf levels as a tree of their own (its "labels" are the leaf clusters)."""
    return LabelTree(tree.C[:-1])


def train_matcher(X, Y, tree: LabelTree, ranker_params: RankerParams | None = None,
                  pred_params: PredParams | None = None) -> XLinearModel:
    """The matcher of `tree` alone: an XLinearModel over tree.C[:-1] whose "labels" are the leaf
    clusters (targets: binarize(Y C[-1])). Its weights are those XLinearModel.train gives the
    non-leaf levels of the full tree (same targets, same TFN/MAN active sets), without training
    the leaf rankers."""
    if tree.depth < 2:
        raise ValueError("train_matcher: a one-level tree has no matcher")
    Yc = binarize(smat.csr_matrix(Y, dtype=np.float32) @ tree.C[-1].tocsc())
    return XLinearModel.train(X, Yc, _matcher_tree(tree), ranker_params, pred_params)


def _matcher_of(model: XLinearModel, tree: LabelTree) -> XLinearModel:
    """The partial model scoring tree's leaf clusters: model's non-leaf levels (model may be a full
    model of `tree`, or a matcher from `train_matcher`)."""
    n_internal = tree.depth - 1
    if model.tree.depth not in (n_internal, tree.depth):
        raise ValueError(f"matcher of depth {model.tree.depth} for a tree of depth {tree.depth}")
    for t in range(n_internal):
        if model.tree.C[t].shape != tree.C[t].shape or model.tree.C[t].nnz != tree.C[t].nnz:
            raise ValueError(f"matcher level {t} does not match the tree's")
    return XLinearModel(_matcher_tree(tree), model.W[:n_internal], model.bias, model.pred_params)


def route(model: XLinearModel, tree: LabelTree, X, beam_size: int | None = None,
          post_processor: str | None = None) -> smat.csr_matrix:
    """The matcher's beam over the leaf clusters: N × K float32 CSR, at most beam_size entries per
    row, values the post-processed path scores (as in prediction)."""
    if tree.depth < 2:
        return smat.csr_matrix(np.ones((X.shape[0], 1), np.float32))
    matcher = _matcher_of(model, tree)
    pp = matcher.pred_params
    beam_size = beam_size or pp.beam_size
    post_processor = post_processor or pp.post_processor
    Xb = _with_bias(smat.csr_matrix(X, dtype=np.float32), matcher.bias)
    M = matcher._beam(Xb, beam_size, beam_size, post_processor, level_scores=True)
    return smat.csr_matrix(M, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Reassignment
# ---------------------------------------------------------------------------------------------
def _rank_within(groups: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order of entries by (group, key descending) and each entry's rank inside its group."""
    order = np.lexsort((-keys, groups))
    g = groups[order]
    start = np.ones(len(g), bool)
    start[1:] = g[1:] != g[:-1]
    first = np.maximum.accumulate(np.where(start, np.arange(len(g)), 0))
    return order, np.arange(len(g)) - first


def assign_copies(A: smat.spmatrix, C_leaf: smat.spmatrix, params: DisentangleParams) -> smat.csc_matrix:
    """Overlapping leaf matrix (L × K 0/1 CSC) from the affinity A (L × K) and the original C_leaf.

    Keeps every original (label, cluster) entry; adds, per label, up to max_copies - (its original
    count) clusters of highest share = A[l, k] / Σ_k A[l, k] with share >= min_share; then cuts each
    cluster's additions to its room under the cap, highest shares first.
    """
    L, K = C_leaf.shape
    C0 = binarize(C_leaf)
    sizes0 = np.asarray(C0.sum(axis=0)).ravel().astype(np.int64)
    cap = params.leaf_cap(int(sizes0.max()) if K else 0)
    A = smat.csr_matrix(A, dtype=np.float64)
    A.eliminate_zeros()
    tot = np.asarray(A.sum(axis=1)).ravel()
    Acoo = A.tocoo()
    lab, clu = Acoo.row.astype(np.int64), Acoo.col.astype(np.int64)
    share = Acoo.data / np.maximum(tot[lab], 1e-30)
    # not where the label already is, and only clusters with enough of its mass
    already = np.asarray(C0[lab, clu]).ravel() > 0
    keep = (~already) & (share >= params.min_share) & (share > 0)
    lab, clu, share = lab[keep], clu[keep], share[keep]
    # per label: its best max_copies - n_orig candidates
    n_orig = np.diff(C0.indptr)
    order, rank = _rank_within(lab, share)
    lab, clu, share, rank = lab[order], clu[order], share[order], rank
    keep = rank < (params.max_copies - n_orig[lab])
    lab, clu, share = lab[keep], clu[keep], share[keep]
    # per cluster: room under the cap, highest shares first
    room = np.maximum(cap - sizes0, 0)
    order, rank = _rank_within(clu, share)
    lab, clu = lab[order], clu[order]
    keep = rank < room[clu]
    lab, clu = lab[keep], clu[keep]
    extra = smat.csr_matrix((np.ones(len(lab), np.float32), (lab, clu)), shape=(L, K))
    C = binarize(C0 + extra).tocsc()
    C.sort_indices()
    return C


def affinity(Y, M: smat.spmatrix) -> smat.csr_matrix:
    """A = Yᵀ M̂ (L × K): M̂ = M with each document's beam scores normalized to sum 1."""
    M = smat.csr_matrix(M, dtype=np.float32)
    s = np.asarray(M.sum(axis=1)).ravel()
    Mn = smat.diags(1.0 / np.maximum(s, 1e-30)).astype(np.float32) @ M
    return smat.csr_matrix(binarize(Y).T.tocsr() @ Mn)


def disentangle_tree(
    X,
    Y,
    tree: LabelTree,
    model: XLinearModel,
    params: DisentangleParams | None = None,
    ranker_params: RankerParams | None = None,
    pred_params: PredParams | None = None,
    log: Callable[[dict], None] | None = None,
    return_affinity: bool = False,
) -> LabelTree | tuple[LabelTree, smat.csr_matrix]:
    """The overlapping tree: `tree` with C[-1] given extra copies per label (internal levels
    unchanged).

    Round 1 routes X through the first matcher (beam = pred beam_size); each further round
    trains a matcher on the current overlapping tree and reassigns from the initial tree with
    its routing (steps 1-6 of the module docstring).

    Args:
        X: N × D float32 CSR, rows l2-normalized.
        Y: N × L binary label matrix (sparse).
        tree: the initial (plain) :class:`LabelTree`, each label in one leaf cluster.
        model: the first matcher, a trained XLinearModel of `tree` (full, or from `train_matcher`).
        params: :class:`DisentangleParams` (None: defaults).
        ranker_params, pred_params: settings of the matchers of rounds 2.. (pred_params None:
            `model.pred_params`; its beam_size and post_processor route).
        log: receives one dict per round ({"round", "copies_added", ...}: `copy_stats`).
        return_affinity: also return the last round's affinity A.

    Returns:
        LabelTree whose C[-1] is L × K float32 CSC with one or more entries per label (`tree`
        itself when `params` cannot change it); with `return_affinity`, (tree, A) where A is the
        L × K float32 CSR affinity (see `affinity`; None when the tree is returned unchanged),
        the input of `copy_table`.

    Source:
        Liu et al. 2021, "Label Disentanglement in Partition-based Extreme Multilabel
        Classification", NeurIPS.
    """
    params = params or DisentangleParams()
    if not changes_tree(params, tree):
        return (tree, None) if return_affinity else tree
    pred_params = pred_params or model.pred_params
    current = tree
    matcher = model
    for r in range(params.rounds):
        if r > 0:
            matcher = train_matcher(X, Y, current, ranker_params, pred_params)
        M = route(matcher, current, X, pred_params.beam_size, pred_params.post_processor)
        A = affinity(Y, M)
        C_leaf = assign_copies(A, tree.C[-1], params)
        current = LabelTree([*tree.C[:-1], C_leaf])
        if log is not None:
            log({"round": r + 1, **copy_stats(tree, current)})
    return (current, A) if return_affinity else current


def copy_stats(before: LabelTree, after: LabelTree) -> dict:
    """Copies added and leaf cluster sizes of the plain tree `before` and the overlapping `after`.

    Args:
        before, after: LabelTrees over the same L labels and leaf clusters.

    Returns:
        dict of ints (float for the mean): copies_added, labels_with_copies,
        max_copies_of_a_label, leaf_size_max_before, leaf_size_max_after, leaf_size_mean_after.
    """
    s0, s1 = before.leaf_cluster_sizes(), after.leaf_cluster_sizes()
    copies = np.diff(smat.csr_matrix(after.C[-1]).indptr)
    return {
        "copies_added": int(after.C[-1].nnz - before.C[-1].nnz),
        "labels_with_copies": int(np.count_nonzero(copies > 1)),
        "max_copies_of_a_label": int(copies.max()) if len(copies) else 0,
        "leaf_size_max_before": int(s0.max()),
        "leaf_size_max_after": int(s1.max()),
        "leaf_size_mean_after": float(s1.mean()),
    }


def copy_table(A: smat.spmatrix, before: LabelTree, after: LabelTree, label_names, label_titles=None,
               signature_size: int = 3) -> pl.DataFrame:
    """Where each label with copies sits, and why: one row per label that `after` gives more than
    one leaf cluster.

    A: the affinity (L × K) the copies were assigned from (`disentangle_tree(return_affinity=True)`);
    before / after: the initial and the overlapping tree; label_names: L names; label_titles: L
    titles for people (`Dataset.label_titles`), or None. A cluster is named by its signature: the
    titles (else names) of its `signature_size` original labels with the most routed training
    documents.

    Columns: label_id (int64), label (str), title (str: the label's title, else its name),
    train_docs (float64: the label's routed training documents, Σ_k A[l, k]), copies (int32),
    clusters (list[int64]: the original cluster first, then the added ones by share), shares
    (list[float64]: the share of the label's routing mass that lands on each of those clusters),
    signatures (list[str]), share_original (float64), docs_via_copies (float64: train_docs × the
    added clusters' shares, the documents the copies are there for). Sorted by docs_via_copies,
    largest first.
    """
    L, K = after.C[-1].shape
    label_titles = label_names if label_titles is None else label_titles
    if len(label_names) != L or len(label_titles) != L or A.shape != (L, K) or before.C[-1].shape != (L, K):
        raise ValueError(f"copy_table: shapes disagree: A {A.shape}, before {before.C[-1].shape}, "
                         f"after {(L, K)}, {len(label_names)} label names, {len(label_titles)} titles")
    A = smat.csr_matrix(A, dtype=np.float64)
    docs = np.asarray(A.sum(axis=1)).ravel()
    C0 = binarize(smat.csr_matrix(before.C[-1]))
    C1 = smat.csr_matrix(binarize(after.C[-1]))
    n_copies = np.diff(C1.indptr)
    coo = C1.tocoo()
    lab, clu = coo.row.astype(np.int64), coo.col.astype(np.int64)
    multi = n_copies[lab] > 1
    lab, clu = lab[multi], clu[multi]
    sh = np.asarray(A[lab, clu]).ravel() / np.maximum(docs[lab], 1e-30) if len(lab) else np.zeros(0)
    orig = np.asarray(C0[lab, clu]).ravel() > 0 if len(lab) else np.zeros(0, bool)
    # signatures: each cluster's original labels with the most routed documents
    c0 = smat.csc_matrix(C0)
    members, member_cluster = c0.indices.astype(np.int64), np.repeat(np.arange(K), np.diff(c0.indptr))
    order, rank = _rank_within(member_cluster, docs[members])
    top = rank < signature_size
    names = np.asarray(label_names, dtype=object)
    titles = np.asarray(label_titles, dtype=object)
    sig = (pl.DataFrame({"cluster": member_cluster[order][top], "name": titles[members[order][top]].tolist()},
                        schema={"cluster": pl.Int64, "name": pl.Utf8})
           .group_by("cluster", maintain_order=True).agg(pl.col("name").str.join(" · ").alias("signature")))
    long = (pl.DataFrame({"label_id": lab, "cluster": clu, "share": sh, "original": orig},
                         schema={"label_id": pl.Int64, "cluster": pl.Int64, "share": pl.Float64,
                                 "original": pl.Boolean})
            .join(sig, on="cluster", how="left")
            .sort(["label_id", "original", "share", "cluster"], descending=[False, True, True, False]))
    out = (long.group_by("label_id", maintain_order=True)
           .agg(pl.col("cluster").alias("clusters"), pl.col("share").alias("shares"),
                pl.col("signature").alias("signatures"),
                pl.col("share").filter(pl.col("original")).sum().alias("share_original"),
                pl.col("share").filter(~pl.col("original")).sum().alias("added_share")))
    ids = out["label_id"].to_numpy()
    out = out.with_columns(
        pl.Series("label", names[ids].tolist(), dtype=pl.Utf8),
        pl.Series("title", titles[ids].tolist(), dtype=pl.Utf8),
        pl.Series("train_docs", docs[ids], dtype=pl.Float64),
        pl.Series("copies", n_copies[ids].astype(np.int32), dtype=pl.Int32),
    ).with_columns((pl.col("train_docs") * pl.col("added_share")).alias("docs_via_copies"))
    # A sums float32 beam shares: document counts to 2 decimals, not float32 noise
    out = out.with_columns(pl.col("train_docs", "docs_via_copies").round(2))
    return (out.select("label_id", "label", "title", "train_docs", "copies", "clusters", "shares", "signatures",
                       "share_original", "docs_via_copies")
            .sort(["docs_via_copies", "label_id"], descending=[True, False]))


def overlap_violations(before: LabelTree, after: LabelTree, params: DisentangleParams | None) -> dict:
    """What an overlapping tree breaks of the stage's contract with `before` (the plain tree it was
    made from) and `params` (None: no disentangle section, `after` must be `before`).

    Returns counts, all 0 when `after` is sound:
      internal_levels_changed: levels other than the leaf that differ in shape or entries, plus one
          per level more or fewer;
      labels_changed: 1 when the label count differs (the label-wise counts are then not taken);
      originals_lost: (label, cluster) pairs of `before` missing from `after`;
      labels_over_max_copies: labels in more than max(max_copies, their original count) leaves;
      clusters_over_cap: leaf clusters over floor(size_cap_factor × before's largest leaf);
    and the bounds these were counted against: `cap` (before's largest leaf when nothing may be
    added) and `max_copies` (1 when nothing may be added: no section, one that cannot act, or a
    one-level tree).
    """
    C0, C1 = smat.csr_matrix(binarize(before.C[-1])), smat.csr_matrix(binarize(after.C[-1]))
    active = changes_tree(params, before)
    sizes0 = before.leaf_cluster_sizes()
    largest = int(sizes0.max()) if len(sizes0) else 0
    cap = params.leaf_cap(largest) if active else largest
    most = int(params.max_copies) if active else 1
    internal = [t for t in range(min(before.depth, after.depth) - 1)
                if before.C[t].shape != after.C[t].shape
                or (smat.csr_matrix(before.C[t]) != smat.csr_matrix(after.C[t])).nnz]
    out = {"internal_levels_changed": len(internal) + abs(before.depth - after.depth),
           "labels_changed": int(C0.shape != C1.shape), "originals_lost": 0,
           "labels_over_max_copies": 0, "clusters_over_cap": 0, "cap": cap, "max_copies": most}
    if C0.shape != C1.shape:
        return out  # nothing else can be compared label by label
    out["originals_lost"] = int((C0 - C0.multiply(C1)).nnz)
    n0, n1 = np.diff(C0.indptr), np.diff(C1.indptr)
    out["labels_over_max_copies"] = int(np.count_nonzero(n1 > np.maximum(n0, most)))
    out["clusters_over_cap"] = int(np.count_nonzero(after.leaf_cluster_sizes() > cap))
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation and prediction
# ---------------------------------------------------------------------------------------------
def matcher_recall(model: XLinearModel, tree: LabelTree, X, Y, beam_size: int | None = None) -> float:
    """Share of (document, true label) pairs whose label has a leaf cluster (any copy) in the
    matcher's beam. Y: N × L' (columns beyond the tree's L: labels the model cannot reach, kept in
    the denominator). Returns a fraction in [0, 1] (0 when Y is empty)."""
    Y = smat.csr_matrix(Y, dtype=np.float32)
    if Y.nnz == 0:
        return 0.0
    L = tree.n_labels
    M = route(model, tree, X, beam_size)
    M.data[:] = 1.0  # the beam's pattern: an entry whose score underflowed to 0 is still in it
    if tree.depth < 2:
        reach = smat.csr_matrix(np.ones((X.shape[0], L), np.float32))
    else:
        reach = M @ smat.csr_matrix(tree.C[-1]).T.tocsr()  # N × L: copies in the beam
    Yin = Y[:, :L] if Y.shape[1] > L else Y
    Yin = binarize(Yin)
    hit = Yin.multiply(reach > 0)
    return float(hit.nnz) / float((Y != 0).sum())


def predict_merged(model: XLinearModel, X, merge: str = "max", beam_size: int | None = None,
                   only_topk: int | None = None, post_processor: str | None = None) -> smat.csr_matrix:
    """`model.predict` with a label's copies merged by `merge`.

    "max" is XLinearModel.predict itself. "mean": every copy whose cluster is in the beam is scored
    (the last level is kept whole: `_beam(level_scores=True)` with no top-k cut sums a label's copy
    scores), the count of copies in the beam comes from the matcher's routing (the same beam), and
    the mean = sum / count is cut to only_topk per row. Plain trees: mean = max.
    """
    if merge not in MERGES:
        raise ValueError(f"predict_merged: merge must be one of {list(MERGES)}, got {merge!r}")
    pp = model.pred_params
    beam_size = beam_size or pp.beam_size
    only_topk = only_topk or pp.only_topk
    post_processor = post_processor or pp.post_processor
    tree = model.tree
    if merge == "max" or tree.depth < 2 or tree.C[-1].nnz == tree.C[-1].shape[0]:
        return model.predict(X, beam_size=beam_size, only_topk=only_topk, post_processor=post_processor)
    if post_processor not in POST_PROCESSORS:
        raise ValueError(f"predict: unknown post_processor {post_processor!r}")
    X = smat.csr_matrix(X, dtype=np.float32)
    if X.shape[1] != model.n_features:
        raise ValueError(f"predict: X has {X.shape[1]} features, the model expects {model.n_features}")
    Xb = _with_bias(X, model.bias)
    sizes = tree.leaf_cluster_sizes()
    width = int(np.sort(sizes)[::-1][:beam_size].sum())  # every scored copy survives the cut
    S = smat.csr_matrix(model._beam(Xb, beam_size, max(width, 1), post_processor, level_scores=True))
    matcher = XLinearModel(LabelTree(tree.C[:-1]), model.W[:-1], model.bias, pp)
    Mb = smat.csr_matrix(matcher._beam(Xb, beam_size, beam_size, post_processor, level_scores=True))
    Mb.data[:] = 1.0  # the beam's pattern (see matcher_recall)
    count = smat.csr_matrix(Mb @ smat.csr_matrix(tree.C[-1]).T.tocsr())
    # count on S's pattern (every entry of S has at least one copy in the beam)
    S.sort_indices()
    count.sort_indices()
    rows = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
    cnt = np.asarray(count[rows, S.indices]).ravel()
    vals = S.data / np.maximum(cnt, 1.0)
    r, c, v = _topk_flat(rows.astype(np.int64), S.indices.astype(np.int64), vals.astype(np.float32),
                         S.shape[0], only_topk)
    return smat.csr_matrix((v, (r, c)), shape=S.shape, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Split positives: each (document, label) pair goes to one copy of the label
# ---------------------------------------------------------------------------------------------
def split_positives(Y, M: smat.spmatrix, C_leaf: smat.spmatrix) -> smat.csr_matrix:
    """Pseudo-label targets: N × nnz(C_leaf) 0/1 CSR, one column per copy (copies numbered in the
    label-major order of C_leaf as CSR: label 0's clusters ascending, then label 1's, ...).

    Each positive (i, l) goes to the copy of l whose cluster the matcher scores highest for
    document i (M: N × K routing); when none of l's clusters is in i's beam, to the copy with the
    largest share of l's routing mass (the affinity). A label with one copy keeps all its positives.
    """
    Yb = smat.csr_matrix(Y, dtype=np.float32)
    Yb.eliminate_zeros()
    Cr = smat.csr_matrix(C_leaf, dtype=np.float32)
    Cr.sort_indices()
    n_copies = np.diff(Cr.indptr)
    M = smat.csr_matrix(M, dtype=np.float32)
    A = affinity(Yb, M)
    tot = np.asarray(A.sum(axis=1)).ravel()
    yi = np.repeat(np.arange(Yb.shape[0], dtype=np.int64), np.diff(Yb.indptr))
    yl = Yb.indices.astype(np.int64)
    n = n_copies[yl]
    pair = np.repeat(np.arange(len(yl)), n)
    offset = np.arange(len(pair)) - np.repeat(np.cumsum(n) - n, n)
    j = Cr.indptr[yl][pair] + offset  # copy id
    i, l = yi[pair], yl[pair]
    k = Cr.indices[j].astype(np.int64)
    multi = n[pair] > 1
    m = np.zeros(len(pair), np.float64)
    prior = np.zeros(len(pair), np.float64)
    if multi.any():
        m[multi] = np.asarray(M[i[multi], k[multi]]).ravel()
        prior[multi] = np.asarray(A[l[multi], k[multi]]).ravel() / np.maximum(tot[l[multi]], 1e-30)
    order = np.lexsort((-prior, -m, pair))
    first = np.ones(len(order), bool)
    first[1:] = pair[order][1:] != pair[order][:-1]
    win = order[first]
    return smat.csr_matrix((np.ones(len(win), np.float32), (i[win], j[win])),
                           shape=(Yb.shape[0], int(Cr.nnz)))


def pseudo_tree(tree: LabelTree) -> LabelTree:
    """The tree over copies (pseudo-labels): C[-1] of shape nnz × K, copy j (label-major order, see
    `split_positives`) in its cluster. Within a cluster the copies ascend with their labels, so the
    CSC order of this leaf matrix is that of tree.C[-1]: rankers trained on it are the columns of
    the label-level model as they stand."""
    Cr = smat.csr_matrix(tree.C[-1])
    Cr.sort_indices()
    nnz = int(Cr.nnz)
    Cp = smat.csc_matrix((np.ones(nnz, np.float32), (np.arange(nnz), Cr.indices)), shape=(nnz, Cr.shape[1]))
    return LabelTree([*tree.C[:-1], Cp])


def train_split(X, Yp: smat.spmatrix, tree: LabelTree, ranker_params: RankerParams | None = None,
                pred_params: PredParams | None = None, log: Callable[[dict], None] | None = None) -> XLinearModel:
    """Rankers of an overlapping tree trained on split positives (Yp from `split_positives`): an
    XLinearModel over the copies, returned as a model over the labels (copies merged at
    prediction)."""
    pt = pseudo_tree(tree)
    copy_label = np.repeat(np.arange(tree.n_labels), np.diff(smat.csr_matrix(tree.C[-1]).indptr))
    assert np.array_equal(copy_label[pt.C[-1].indices], tree.C[-1].indices)
    m = XLinearModel.train(X, Yp, pt, ranker_params, pred_params, log=log)
    return XLinearModel(tree, m.W, m.bias, m.pred_params)
