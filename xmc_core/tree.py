"""Hierarchical label tree by recursive balanced spherical 2-means (PECOS "hierarchicalkmeans").

The tree is a chain of 0/1 cluster matrices, top to bottom:

    C[0]: K_1 × 1          (the root's children)
    C[t]: K_{t+1} × K_t    (children of each level-t node)
    C[-1]: L × K_last      (labels in each leaf cluster)

stored as float32 CSC, so column p's row indices are parent p's children. Internal levels are
numbered so that each parent's children are contiguous. In a plain tree every label sits in
exactly one leaf cluster; label disentanglement (a later stage) may give a label several.

Algorithm: split every node of the current binary depth into two halves at once, with
spherical 2-means and a balanced cut (sort by the difference of similarities to the two
centroids; the first half goes left). Depth = ceil(log2(L / max_leaf_size)). Binary levels are
then merged into an nr_splits-ary tree (PECOS's chain: the top level takes the remaining depth).
All nodes of a depth are processed together with vectorized sparse work, so no Python loop runs
per node or per label.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as smat

from . import kernels, progress
from .params import ParamsBase
from .sparse import binarize


__all__ = ["TreeParams", "LabelTree", "build_tree", "binary_codes", "chain_bits", "tree_from_codes"]


@dataclass
class TreeParams(ParamsBase):
    """Settings of the hierarchical k-means tree.

    nr_splits: out-degree of internal nodes (a power of 2).
    min_codes: smallest number of clusters allowed at the top level (None: no minimum).
    max_leaf_size: most labels in a leaf cluster; max_leaf_size >= L gives a flat one-vs-all model.
    kmeans_max_iter: 2-means iterations per binary depth.
    seed: random seed of the centroid initialization.
    threads: nodes of one depth split concurrently (-1: all cores).
    """

    nr_splits: int = 16
    min_codes: int | None = None
    max_leaf_size: int = 100
    kmeans_max_iter: int = 20
    seed: int = 0
    threads: int = -1

    def __post_init__(self):
        if self.nr_splits < 2 or self.nr_splits & (self.nr_splits - 1):
            raise ValueError(f"TreeParams.nr_splits: must be a power of 2 >= 2, got {self.nr_splits}")
        mc = self.min_codes
        if mc is not None and (mc < 2 or mc & (mc - 1)):
            raise ValueError(f"TreeParams.min_codes: must be a power of 2 >= 2, got {mc}")
        if self.max_leaf_size < 1:
            raise ValueError(f"TreeParams.max_leaf_size: must be >= 1, got {self.max_leaf_size}")



class LabelTree:
    """A label tree: a chain of 0/1 cluster matrices C[0..T-1], top to bottom (see module docstring).

    Attributes:
        C: list of T float32 CSC 0/1 matrices, indices sorted. C[0] is K_1 × 1 (the root's
            children), C[t] is K_{t+1} × K_t (column p lists parent p's children), C[-1] is
            L × K_last (the labels of each leaf cluster). A tree of depth 1 (C = [L × 1]) is a
            flat one-vs-all model.

    Args:
        C: the chain, any scipy sparse or dense matrices; converted to float32 CSC.

    Raises:
        ValueError: C is empty, C[0] has more than one column, or C[t]'s column count differs
            from C[t-1]'s row count.

    Source:
        PECOS's cluster chain (``pecos/xmc/base.py`` ``HierarchicalKMeans`` / ``ClusterChain``;
        Yu et al. 2022, "PECOS: Prediction for Enormous and Correlated Output Spaces", JMLR).
    """

    def __init__(self, C: list[smat.csc_matrix]):
        if not C:
            raise ValueError("LabelTree: empty chain")
        self.C = [smat.csc_matrix(c, dtype=np.float32) for c in C]
        for c in self.C:
            c.sort_indices()
        if self.C[0].shape[1] != 1:
            raise ValueError(f"LabelTree: C[0] must have one column (the root), has {self.C[0].shape[1]}")
        for t in range(1, len(self.C)):
            if self.C[t].shape[1] != self.C[t - 1].shape[0]:
                raise ValueError(
                    f"LabelTree: C[{t}] has {self.C[t].shape[1]} parents but level {t - 1} has {self.C[t - 1].shape[0]} nodes"
                )

    @property
    def depth(self) -> int:
        """Number of levels T (int): len(C); the label level counts."""
        return len(self.C)

    @property
    def n_labels(self) -> int:
        """Number of labels L (int): rows of C[-1]."""
        return self.C[-1].shape[0]

    def level_sizes(self) -> list[int]:
        """Node count of every level, top to bottom.

        Returns:
            list of T ints [K_1, ..., K_last, L] (rows of each C[t]); the last is L.
        """
        return [c.shape[0] for c in self.C]

    def leaf_cluster_sizes(self) -> np.ndarray:
        """Labels per leaf cluster.

        Returns:
            (K_last,) int32 array (nonzeros per column of C[-1]); with label disentanglement a
            label counts once in each leaf cluster that holds a copy of it.
        """
        return np.diff(self.C[-1].indptr)

    def label_to_level(self, t: int) -> smat.csr_matrix:
        """Which level-t nodes hold each label: C[-1] C[-2] ... C[t+1] composed, binarized.

        Args:
            t: level index in [0, depth); t = depth - 1 gives C[-1] itself, t = 0 the root's
                children. Negative t is not supported.

        Returns:
            L × K_{t+1} float32 0/1 CSR (K_{t+1} = C[t].shape[0], the nodes of level t).
        """
        M = smat.csr_matrix(self.C[-1])
        for c in self.C[-2:t:-1]:
            M = M @ smat.csr_matrix(c)
        return binarize(M)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The tree as plain arrays for ``np.savez`` (inverse: :meth:`from_arrays`).

        Returns:
            dict: "depth" (1,) int; per level t, "C{t}_indptr" and "C{t}_indices" int64 (the CSC
            structure; values are all 1 and not stored) and "C{t}_shape" (2,) int64.
        """
        out = {"depth": np.array([self.depth])}
        for t, c in enumerate(self.C):
            out[f"C{t}_indptr"] = c.indptr.astype(np.int64)
            out[f"C{t}_indices"] = c.indices.astype(np.int64)
            out[f"C{t}_shape"] = np.array(c.shape, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrs) -> "LabelTree":
        """Rebuild a tree from the arrays of :meth:`to_arrays`.

        Args:
            arrs: mapping (dict or ``np.load`` NpzFile) with the keys :meth:`to_arrays` writes.

        Returns:
            LabelTree with float32 CSC levels, all stored values 1.

        Raises:
            KeyError: a key is missing.
            ValueError: the arrays do not form a valid CSC chain (see :class:`LabelTree`).
        """
        C = []
        for t in range(int(arrs["depth"][0])):
            indptr, indices = arrs[f"C{t}_indptr"], arrs[f"C{t}_indices"]
            shape = tuple(int(v) for v in arrs[f"C{t}_shape"])
            C.append(smat.csc_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=shape))
        return cls(C)

    @classmethod
    def from_leaf_assignment(cls, leaf_of_label: np.ndarray, n_leaves: int) -> "LabelTree":
        """A two-level tree: root → n_leaves clusters → labels.

        Args:
            leaf_of_label: (L,) int array, the leaf cluster in [0, n_leaves) of each label.
            n_leaves: number of leaf clusters K (int); a cluster may be empty.

        Returns:
            LabelTree with C = [K × 1 ones, L × K one-hot].

        Raises:
            ValueError: a leaf id is outside [0, n_leaves) (from scipy's constructor).
        """
        L = len(leaf_of_label)
        C_leaf = smat.csc_matrix(
            (np.ones(L, np.float32), (np.arange(L), leaf_of_label)), shape=(L, n_leaves)
        )
        return cls([smat.csc_matrix(np.ones((n_leaves, 1), np.float32)), C_leaf])


def _first_seed(seed: int, m: int) -> int:
    """A node's first 2-means seed: a random one of its m labels. The second is the label least
    similar to it (a far pair splits along the node's main direction; two random seeds made trees,
    and P@1, vary much more by seed)."""
    return int(np.random.default_rng(seed).integers(m))


def _split_node(Zn, seed: int, max_iter: int) -> np.ndarray:
    """Balanced spherical 2-means of one node's labels. Zn: m × d dense, m >= 2 (sparse
    embeddings go through `kernels.balanced_2means_rows`, the same rounds compiled). Returns (m,)
    int64 sides, 0 for the first ceil(m/2) by similarity margin."""
    m = Zn.shape[0]
    n_left = (m + 1) // 2
    i0 = _first_seed(seed, m)
    i1 = int(np.argmin(Zn @ Zn[i0]))
    if i1 == i0:
        i1 = (i0 + 1) % m
    cen = np.ascontiguousarray(Zn[[i0, i1]].T)
    side = None
    for _ in range(max_iter):
        sims = np.asarray(Zn @ cen)
        diff = sims[:, 0].astype(np.float64) - sims[:, 1]
        order = np.argsort(-diff, kind="stable")  # ties: lower index first
        new_side = np.empty(m, dtype=np.int64)
        new_side[order] = (np.arange(m) >= n_left).astype(np.int64)
        if side is not None and np.array_equal(new_side, side):
            break
        side = new_side
        onehot = np.zeros((m, 2), np.float32)
        onehot[np.arange(m), side] = 1.0
        cen = Zn.T @ onehot
        norms = np.linalg.norm(cen, axis=0)
        norms[norms == 0] = 1.0
        cen = (cen / norms).astype(np.float32)
    return side


def binary_codes(Z, depth: int, max_iter: int = 20, seed: int = 0, threads: int = 1,
                 first_depth: int = 0, prefix: int = 0, overwrite_indices: bool = False) -> np.ndarray:
    """Leaf code in [0, 2**depth) for each label by recursive balanced spherical 2-means.

    Each node of a binary depth is split in two halves (sizes ceil(m/2), floor(m/2)): seeds are
    a random member and the member least similar to it, then up to ``max_iter`` rounds of
    assigning members by the margin of their cosine similarities to the two centroids (sorted,
    first half left) and re-normalizing the centroids. Nodes of a depth are split independently
    (threads > 1 runs them concurrently); sparse Z goes through
    :func:`kernels.balanced_2means_rows` on its own rows, their columns renumbered per node
    (:func:`kernels.renumber_nodes`) in a copy of Z's indices: memory Z + nnz(Z) int32.

    Args:
        Z: L × D float32 label embeddings, CSR or dense, rows unit l2 norm (zero rows allowed).
        depth: number of binary splits (int >= 0); every node needs at least two labels at every
            depth (:func:`build_tree` picks such a depth).
        max_iter: 2-means rounds per node (int).
        seed: random seed of the first centroid of every node (int).
        threads: worker threads per depth (int; <= 1: sequential).
        first_depth, prefix: Z's rows are the labels of node `prefix` at binary depth
            `first_depth` of a larger tree, and only the depths first_depth..depth-1 below it are
            split (a sub-tree of the distributed engine). Every node's seed is the one it has in
            the whole tree, so the sub-tree equals that part of ``binary_codes`` of all labels.
        overwrite_indices: renumber a sparse Z's own int32 column ids in place instead of a copy
            (saves nnz(Z) int32; Z's column ids are lost). The sides are the same: a node's
            numbering follows the first use of its columns, whatever their ids.

    Returns:
        (L,) int64 codes in [0, 2**(depth - first_depth)); ``code >> (depth - d)`` is the label's
        node at binary depth d (below `prefix`); node sizes at every depth differ by at most one.

    Source:
        PECOS ``HierarchicalKMeans`` with ``spherical=True``, balanced 2-means splits
        (``pecos/xmc/base.py``; Yu et al. 2022, JMLR).
    """
    L = Z.shape[0]
    sparse = smat.issparse(Z)
    if sparse:
        Z = smat.csr_matrix(Z, dtype=np.float32)
    else:
        Z = np.ascontiguousarray(Z, dtype=np.float32)
    node = np.zeros(L, dtype=np.int64)
    if sparse:
        # Each depth renumbers every node's columns in place in a copy of Z's column ids (half
        # Z's size) and splits the node where its rows lie: no gathered copy of a node's rows,
        # which at the top depths would be a second Z; the same sides as gathered blocks.
        local = Z.indices if overwrite_indices and Z.indices.dtype == np.int32 else np.array(Z.indices, dtype=np.int32)
        colmap = np.full(Z.shape[1], -1, np.int64)
        used = np.empty(Z.shape[1], np.int64)
    # progress: every depth splits all of the labels once
    bar = progress.task("label tree", (depth - first_depth) * len(node), "label")
    for d in range(first_depth, depth):
        n_nodes = 1 << (d - first_depth)
        order = np.argsort(node, kind="stable")
        bounds = np.searchsorted(node[order], np.arange(n_nodes + 1))
        # depth d's seeds: the d-th child of SeedSequence(seed) (what spawn(1) gave at depth d),
        # indexed by the node's number in the whole tree
        first = prefix << (d - first_depth)
        seeds = np.random.SeedSequence(seed, spawn_key=(d,)).generate_state(first + n_nodes)[first:]
        if sparse:
            n_cols = kernels.renumber_nodes(Z.indptr, local, order, bounds, colmap, used)

        def split(n):
            members = order[bounds[n]:bounds[n + 1]]
            bar.update(len(members))
            if len(members) < 2:
                return members, np.zeros(len(members), np.int64)
            if sparse:
                return members, kernels.balanced_2means_rows(
                    Z.indptr, local, Z.data, members, n_cols[n], _first_seed(int(seeds[n]), len(members)), max_iter)
            return members, _split_node(Z[members], int(seeds[n]), max_iter)

        if threads > 1 and n_nodes > 1:
            with ThreadPoolExecutor(threads) as ex:
                results = list(ex.map(split, range(n_nodes)))
        else:
            results = [split(n) for n in range(n_nodes)]
        new_node = 2 * node
        for members, side in results:
            new_node[members] += side
        node = new_node
    bar.close()
    return node


def build_tree(Z, params: TreeParams | None = None) -> LabelTree:
    """Balanced label tree by hierarchical spherical 2-means of the label embeddings.

    Depth = ceil(log2(L / max_leaf_size)) binary levels of :func:`binary_codes` (lowered so every
    node keeps two labels), then merged bottom-up every log2(nr_splits) levels into an
    nr_splits-ary chain whose top level takes the remainder (at least ``min_codes`` nodes when
    set). Leaf clusters hold at most about max_leaf_size labels and their sizes differ by at most
    one.

    Args:
        Z: L × D float32 label embeddings (PIFA, :func:`label_embedding.pifa`), CSR or dense,
            rows unit l2 norm.
        params: :class:`TreeParams` (None: defaults, nr_splits 16, max_leaf_size 100).

    Returns:
        LabelTree whose last level C[-1] is L × K_last, each label in exactly one leaf; when
        max_leaf_size >= L a one-level tree C = [L × 1] (flat one-vs-all).

    Raises:
        ValueError: Z has no rows (L = 0).

    Source:
        PECOS ``HierarchicalKMeans`` (``pecos/xmc/base.py``; Yu et al. 2022, "PECOS: Prediction
        for Enormous and Correlated Output Spaces", JMLR); XR-Linear's "hierarchical clustering
        of PIFA embeddings".
    """
    params = params or TreeParams()
    L = Z.shape[0]
    if L == 0:
        raise ValueError("build_tree: no labels")
    bits = chain_bits(L, params)
    if not bits:
        return LabelTree([smat.csc_matrix(np.ones((L, 1), np.float32))])
    threads = params.threads if params.threads > 0 else (os.cpu_count() or 1)
    codes = binary_codes(Z, bits[-1], params.kmeans_max_iter, params.seed, threads)
    return tree_from_codes(codes, bits)


def chain_bits(L: int, params: TreeParams) -> list[int]:
    """The binary depth of every internal level of :func:`build_tree`'s chain, top to bottom.

    Depth = ceil(log2(L / max_leaf_size)) (lowered so every binary node keeps two labels); binary
    depths are kept from the bottom every log2(nr_splits), so every node below the top has
    nr_splits children and the top level takes the remainder (PECOS's chain: 64 leaf clusters,
    nr_splits 16 → [2, 6], levels [4, 64, L]); min_codes, when set, is the top level's minimum.

    Args:
        L: number of labels (int >= 1).
        params: :class:`TreeParams`.

    Returns:
        list of ints b_0 < ... < b_last = depth: level t (t < T-1) has 2**b_t nodes; empty when
        max_leaf_size >= L (a flat one-vs-all tree).
    """
    if params.max_leaf_size >= L:
        return []
    depth = max(1, math.ceil(math.log2(L / params.max_leaf_size)))
    if (1 << depth) > L // 2 and L >= 2:
        # every binary split needs two members per node
        depth = max(1, int(math.floor(math.log2(L / 2))))
    step = int(math.log2(params.nr_splits))
    min_bits = int(math.log2(params.min_codes)) if params.min_codes else 1
    bits = [depth]
    while bits[-1] - step >= max(min_bits, 1):
        bits.append(bits[-1] - step)
    return bits[::-1]


def tree_from_codes(codes: np.ndarray, bits: list[int]) -> LabelTree:
    """The chain of :func:`chain_bits` levels over labels with binary leaf codes.

    Args:
        codes: (L,) int codes in [0, 2**bits[-1]) (:func:`binary_codes`).
        bits: binary depth of each internal level, top to bottom (empty: a flat tree).

    Returns:
        LabelTree: C[0] 2**b_0 × 1, C[t] 2**b_t × 2**b_{t-1}, C[-1] L × 2**b_last.
    """
    L = len(codes)
    if not bits:
        return LabelTree([smat.csc_matrix(np.ones((L, 1), np.float32))])
    C = [smat.csc_matrix(np.ones((1 << bits[0], 1), np.float32))]
    for upper, lower in zip(bits[:-1], bits[1:]):
        n_lower = 1 << lower
        parent = np.arange(n_lower) >> (lower - upper)
        C.append(smat.csc_matrix(
            (np.ones(n_lower, np.float32), (np.arange(n_lower), parent)), shape=(n_lower, 1 << upper)
        ))
    C.append(smat.csc_matrix((np.ones(L, np.float32), (np.arange(L), codes)), shape=(L, 1 << bits[-1])))
    return LabelTree(C)
