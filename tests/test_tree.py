import numpy as np
import pytest
import scipy.sparse as smat

from xmc_core.label_embedding import pifa
from xmc_core.tree import LabelTree, TreeParams, binary_codes, build_tree


def _random_Z(L, D=200, seed=0):
    from xmc_core.sparse import l2_normalize_rows

    return l2_normalize_rows(smat.random(L, D, density=0.05, random_state=seed, format="csr", dtype=np.float32))


@pytest.mark.parametrize("L,leaf,splits", [(1000, 100, 16), (1000, 30, 4), (257, 10, 2), (90, 100, 16)])
def test_tree_covers_every_label_once_and_is_balanced(L, leaf, splits):
    tree = build_tree(_random_Z(L), TreeParams(nr_splits=splits, max_leaf_size=leaf, seed=3))
    C_leaf = smat.csr_matrix(tree.C[-1])
    assert C_leaf.shape[0] == L
    np.testing.assert_array_equal(np.diff(C_leaf.indptr), np.ones(L))  # every label in exactly one leaf
    sizes = tree.leaf_cluster_sizes()
    assert sizes.sum() == L
    assert sizes.max() <= leaf
    assert sizes.max() - sizes.min() <= 1  # balanced
    for t in range(1, tree.depth):  # every internal node has exactly one parent
        np.testing.assert_array_equal(np.diff(smat.csr_matrix(tree.C[t]).indptr), 1)
    if leaf >= L:
        assert tree.level_sizes() == [L]


def test_tree_shape_follows_pecos_chain():
    tree = build_tree(_random_Z(4271, seed=1), TreeParams(nr_splits=16, max_leaf_size=100))
    # depth ceil(log2(42.7)) = 6 binary levels → 64 leaf clusters of 16 per parent; the top
    # level takes the remaining 2 bits, as PECOS's cluster chain does
    assert tree.level_sizes() == [4, 64, 4271]
    assert set(np.diff(tree.C[1].indptr)) == {16}
    assert build_tree(_random_Z(983, seed=1)).level_sizes() == [16, 983]
    assert build_tree(_random_Z(983, seed=1), TreeParams(min_codes=32, max_leaf_size=10)).level_sizes()[0] >= 32


def test_two_means_separates_obvious_groups():
    # two groups of labels on disjoint features must end up in different halves
    rng = np.random.default_rng(0)
    a = np.hstack([rng.random((50, 10)), np.zeros((50, 10))])
    b = np.hstack([np.zeros((50, 10)), rng.random((50, 10))])
    Z = np.vstack([a, b]).astype(np.float32)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    codes = binary_codes(smat.csr_matrix(Z), depth=1, seed=5)
    assert len(set(codes[:50])) == 1 and len(set(codes[50:])) == 1 and codes[0] != codes[50]
    codes_dense = binary_codes(Z, depth=1, seed=5)
    np.testing.assert_array_equal(codes, codes_dense)


def test_tree_is_deterministic_for_a_seed_and_round_trips(toy):
    X, Y = toy
    Z = pifa(X, Y)
    t1 = build_tree(Z, TreeParams(max_leaf_size=8, nr_splits=2, seed=7))
    t2 = build_tree(Z, TreeParams(max_leaf_size=8, nr_splits=2, seed=7))
    for a, b in zip(t1.C, t2.C):
        assert (a != b).nnz == 0
    t3 = LabelTree.from_arrays(t1.to_arrays())
    for a, b in zip(t1.C, t3.C):
        assert (a != b).nnz == 0
    # the seed is applied: another seed starts 2-means elsewhere and moves labels (78 of 80
    # entries of C[-1] differ for seed 8)
    t4 = build_tree(Z, TreeParams(max_leaf_size=8, nr_splits=2, seed=8))
    assert (t1.C[-1] != t4.C[-1]).nnz > 20


def _hierarchical_Z(seed):
    """64 labels in 8 groups g = 0..7 (3 bits); a label's embedding holds one feature for g's
    first bit, one for its first two bits, one for g, and 3 of its own (random weights): labels
    of a group share everything but noise, groups with a common prefix share that prefix."""
    from xmc_core.sparse import l2_normalize_rows

    rng = np.random.default_rng(seed)
    rows, cols, vals = [], [], []
    for l in range(64):
        g = l // 8
        rows += [l] * 6
        cols += [g >> 2, 2 + (g >> 1), 6 + g] + (14 + rng.choice(200, 3, replace=False)).tolist()
        vals += [1.0, 1.0, 1.0] + rng.random(3).tolist()
    perm = rng.permutation(64)  # labels in no particular order
    Z = smat.csr_matrix((vals, (rows, cols)), shape=(64, 214), dtype=np.float32)[perm]
    return l2_normalize_rows(Z), (np.arange(64) // 8)[perm]


@pytest.mark.parametrize("seed", [0, 1])
def test_tree_recovers_a_planted_hierarchy(seed):
    # the planted hierarchy is the only balanced one that follows the similarities: every node of
    # level t (2, 4, 8 nodes) holds exactly the groups with one (t+1)-bit prefix, sparse or dense Z
    Z, group = _hierarchical_Z(seed)
    for Zin in (Z, Z.toarray()):
        tree = build_tree(Zin, TreeParams(nr_splits=2, max_leaf_size=8, seed=seed))
        assert tree.level_sizes() == [2, 4, 8, 64]
        for t in range(3):
            node = smat.csr_matrix(tree.label_to_level(t)).indices  # each label's node at level t
            prefix = group >> (2 - t)
            pairs = set(zip(node.tolist(), prefix.tolist()))
            assert len(pairs) == 2 ** (t + 1), (t, sorted(pairs))  # a bijection node <-> prefix
    wide = build_tree(Z, TreeParams(nr_splits=8, max_leaf_size=8, seed=seed))
    assert wide.level_sizes() == [8, 64]
    leaf = smat.csr_matrix(wide.C[-1]).indices
    assert len(set(zip(leaf.tolist(), group.tolist()))) == 8


def test_pifa_is_normalized_sum_of_positive_rows():
    # 4 documents on 5 distinct features (unequal norms), 4 labels: each label's positives are a
    # strict subset of the documents, so z_l differs from the normalized sum of all rows
    # ([1, 2, 3, 4, 0] / sqrt(30)), from a sum of normalized rows and from any other label's row.
    X = np.array([[1, 0, 0, 0, 0],
                  [0, 2, 0, 0, 0],
                  [0, 0, 3, 0, 0],
                  [0, 0, 0, 4, 0]], np.float32)
    Y = np.array([[1, 0, 0, 0],   # doc 0: label 0
                  [1, 1, 0, 0],   # doc 1: labels 0, 1
                  [0, 1, 0, 0],   # doc 2: label 1
                  [0, 0, 1, 0]],  # doc 3: label 2; label 3 has no positive
                 np.float32)
    expected = np.array([
        [1, 2, 0, 0, 0] / np.sqrt(5.0),   # docs 0 + 1
        [0, 2, 3, 0, 0] / np.sqrt(13.0),  # docs 1 + 2
        [0, 0, 0, 1, 0],                  # doc 3 alone
        [0, 0, 0, 0, 0],                  # no positive: a zero row
    ])
    Zs = pifa(smat.csr_matrix(X), smat.csr_matrix(Y))
    assert smat.issparse(Zs) and Zs.shape == (4, 5) and Zs.dtype == np.float32
    np.testing.assert_allclose(Zs.toarray(), expected, rtol=1e-6, atol=1e-7)
    Zd = pifa(X, smat.csr_matrix(Y))  # the dense path
    assert isinstance(Zd, np.ndarray) and Zd.dtype == np.float32
    np.testing.assert_allclose(Zd, expected, rtol=1e-6, atol=1e-7)
    # more labels than documents and features: Z is L x D, not N x D or D x L
    Y7 = np.hstack([Y, np.zeros((4, 3), np.float32)])
    Y7[2, 6] = 1.0  # label 6: doc 2 alone; labels 4, 5: none
    Y7 = smat.csr_matrix(Y7)
    Z7 = pifa(smat.csr_matrix(X), Y7).toarray()
    assert Z7.shape == (7, 5)
    np.testing.assert_allclose(Z7[:4], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(Z7[6], [0, 0, 1, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(Z7[4:6], 0.0)


def test_binary_codes_overwriting_the_column_ids_gives_the_same_codes():
    """The Ray engine's tasks renumber their own Z's column ids in place (no nnz(Z) copy): a
    node's numbering follows the first use of its columns, so the codes are the same, and the
    same again when Z's columns are permuted."""
    rng = np.random.default_rng(5)
    Z = smat.random(300, 400, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    Z.data[:] = rng.random(Z.nnz, dtype=np.float32)
    Z = smat.csr_matrix(Z / np.maximum(np.sqrt(Z.multiply(Z).sum(1)), 1e-12), dtype=np.float32)
    ref = binary_codes(Z, 5, seed=3)
    own = Z.copy()
    assert np.array_equal(binary_codes(own, 5, seed=3, overwrite_indices=True), ref)
    assert not np.array_equal(own.indices, Z.indices)  # the ids were overwritten
    perm = rng.permutation(400)
    Zp = smat.csr_matrix((Z.data, perm[Z.indices], Z.indptr), shape=Z.shape)
    assert np.array_equal(binary_codes(Zp, 5, seed=3, overwrite_indices=True), ref)
    # a sub-tree from its own labels' rows, as a task builds it
    node1 = np.flatnonzero((ref >> 4) == 1)
    sub = binary_codes(Z[node1], 5, seed=3, first_depth=1, prefix=1, overwrite_indices=True)
    assert np.array_equal(sub, ref[node1] & 0b1111)
