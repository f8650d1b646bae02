"""Property tests of the beam-search kernels against plain NumPy, on generated models of every shape.

Models are drawn with flat trees (depth 1), one-child parents, parents without children, labels
with copies in several leaf clusters, bias on and off, features no ranker weighs, weightless
columns, and documents without features. The reference computes every score densely:

* the layout (`kernels.build_chunks`, `build_buckets`) reproduces each parent's block of W;
* the raw scores of `kernels.score_pairs` (the batch path, scatter and lookup branches) equal
  X · W of each (row, parent) pair;
* a beam wide enough to keep every node gives, through `XLinearModel.predict` (batch and
  one-row paths), each label the combination of its path's post-processed scores, its best copy.

`.ci/run` runs this file again with ``NUMBA_BOUNDSCHECK=1`` and an empty numba cache
(`scripts/boundscheck.sh`), where a read or write past an array raises instead of returning garbage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as smat
from hypothesis import given, settings
from hypothesis import strategies as st

from xmc_core import kernels
from xmc_core.tree import LabelTree
from xmc_core.xlinear import POST_PROCESSORS, PredParams, XLinearModel, _level_chunks, _with_bias

PROPS = settings(max_examples=80, deadline=None, derandomize=True)


def _children(rng, n_parents, max_children, allow_childless):
    """A K × n_parents 0/1 CSC matrix: each parent's children contiguous, 0..max_children each."""
    lo = 0 if allow_childless else 1
    counts = rng.integers(lo, max_children + 1, n_parents)
    counts[rng.integers(n_parents)] = max(counts.max(), 1)  # at least one node on the level
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    k = int(indptr[-1])
    return smat.csc_matrix((np.ones(k, np.float32), np.arange(k, dtype=np.int32), indptr), shape=(k, n_parents))


@st.composite
def models(draw):
    """(XLinearModel, X N × D float32 CSR) of a drawn shape."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    depth = draw(st.integers(1, 3))
    D = draw(st.sampled_from([1, 7, 64, 300]))
    bias = draw(st.sampled_from([0.0, 1.0, 0.5]))
    max_children = draw(st.sampled_from([1, 2, 5]))  # 1: every parent has one child
    C = [_children(rng, 1, draw(st.integers(1, 12)), False)]
    for _ in range(depth - 2):
        C.append(_children(rng, C[-1].shape[0], max_children, draw(st.booleans())))
    if depth > 1:
        # the label level: labels in leaf clusters, some with copies in several clusters
        n_leaf = C[-1].shape[0]
        L = draw(st.integers(1, 3 * n_leaf + 1))
        home = rng.integers(0, n_leaf, L)
        rows, cols = list(range(L)), list(home)
        if draw(st.booleans()) and n_leaf > 1:
            for lab in rng.choice(L, size=max(1, L // 3), replace=False):
                rows.append(lab)
                cols.append((home[lab] + 1 + rng.integers(n_leaf - 1)) % n_leaf)
        M = smat.coo_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(L, n_leaf)).tocsc()
        M.data[:] = 1.0
        C.append(M)
    tree = LabelTree(C)
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    dead = rng.random(D) < draw(st.sampled_from([0.0, 0.5]))  # features no ranker weighs
    W = []
    for c in tree.C:
        w = smat.random(D + 1, c.nnz, density=density, format="csc", dtype=np.float32, random_state=rng)
        w.data = (w.data * 4 - 2).astype(np.float32)
        w = smat.diags((~np.append(dead, False)).astype(np.float32)) @ w
        if bias > 0:  # a bias weight on most columns, none on some
            b = np.where(rng.random(c.nnz) < 0.8, rng.normal(size=c.nnz), 0).astype(np.float32)
            w = smat.vstack([w[:D], smat.csr_matrix(b[None, :])]).tocsc()
        else:
            w = smat.vstack([w[:D], smat.csr_matrix((1, c.nnz), dtype=np.float32)]).tocsc()
        w.eliminate_zeros()
        w.sort_indices()
        W.append(w)
    N = draw(st.integers(1, 40))
    X = smat.random(N, D, density=draw(st.sampled_from([0.0, 0.1, 0.5])), format="csr", dtype=np.float32,
                    random_state=rng)
    if N > 2:
        X = smat.vstack([X[: N // 2], smat.csr_matrix((1, D), dtype=np.float32), X[N // 2:]]).tocsr()  # an empty row
    X.sort_indices()
    pp = draw(st.sampled_from(["l3-hinge", "sigmoid", "log-l2-hinge", "noop", "log-sigmoid"]))
    return XLinearModel(tree, W, bias, PredParams(threads=1, post_processor=pp)), X


def _dense_reference(model: XLinearModel, X) -> np.ndarray:
    """N × L scores of every label with an unbounded beam, in float64: its path's
    post-processed scores combined as the post-processor says, the best copy of a label."""
    transform, kind, root = POST_PROCESSORS[model.pred_params.post_processor]
    Xb = _with_bias(X, model.bias).toarray().astype(np.float64)
    score = np.full((X.shape[0], 1), root, np.float64)  # the root's score
    for C, W_t in zip(model.tree.C, model.W):
        raw = Xb @ W_t.toarray().astype(np.float64)  # N × nnz(C): column j scores node C.indices[j]
        parent_of_col = np.repeat(np.arange(C.shape[1]), np.diff(C.indptr))
        s = transform(raw)
        s = s * score[:, parent_of_col] if kind == "mul" else (s + score[:, parent_of_col] if kind == "add" else s)
        nxt = np.full((X.shape[0], C.shape[0]), -np.inf)
        for j, node in enumerate(C.indices):  # a node with copies keeps its best
            nxt[:, node] = np.maximum(nxt[:, node], s[:, j])
        score = nxt
    return score


@PROPS
@given(models())
def test_layout_reproduces_each_parents_block(mx):
    """Each chunk lists the features some child weighs, ascending, then a sentinel, and its
    entries give back every (feature, child, weight) of the parent's block; the bucket index
    finds every record."""
    model, _ = mx
    for C, W_t in zip(model.tree.C, model.W):
        recs, ent_off, entries, rec_off, n_child, b_shift, b_off, b_ptr = _level_chunks(W_t, C.indptr)
        vals = entries.view(np.float32)
        n_features = W_t.shape[0]
        assert np.array_equal(n_child, np.diff(C.indptr))
        for p in range(C.shape[1]):
            block = W_t[:, C.indptr[p]:C.indptr[p + 1]].tocoo()
            a0, a1 = rec_off[p], rec_off[p + 1]
            feats = recs[2 * a0:2 * a1:2]
            assert feats[-1] == n_features  # the sentinel
            assert np.array_equal(feats[:-1], np.unique(block.row))
            got = set()
            for a in range(a0, a1 - 1):
                f = recs[2 * a]
                assert kernels._find_row(recs, a0, b_ptr, b_off[p], b_shift[p], f) == a
                for e in range(ent_off[p] + recs[2 * a + 1], ent_off[p] + recs[2 * a + 3]):
                    got.add((int(f), int(entries[2 * e]), float(vals[2 * e + 1])))
            want = {(int(r), int(c), float(v)) for r, c, v in zip(block.row, block.col, block.data)}
            assert got == want
            for f in np.setdiff1d(np.arange(n_features), block.row)[:20]:
                assert kernels._find_row(recs, a0, b_ptr, b_off[p], b_shift[p], f) == -1


@PROPS
@given(models(), st.booleans())
def test_score_pairs_equals_dense_products(mx, one_pair_per_call):
    """Raw scores of every (row, parent) pair equal X · W over the parent's children, whether a
    call scores the whole level (scatter for large groups) or one pair (lookup)."""
    model, X = mx
    Xb = _with_bias(X, model.bias)
    Xd = Xb.toarray().astype(np.float64)
    for C, W_t in zip(model.tree.C, model.W):
        layout = _level_chunks(W_t, C.indptr)
        n_child = layout[4]
        rows = np.repeat(np.arange(X.shape[0], dtype=np.int64), C.shape[1])
        parents = np.tile(np.arange(C.shape[1], dtype=np.int64), X.shape[0])
        pair_start = np.concatenate([[0], np.cumsum(n_child[parents])[:-1]]).astype(np.int64)
        out = np.full(int(n_child[parents].sum()), np.nan, np.float32)
        slot = kernels.scratch("slot", Xb.shape[1])
        present = kernels.scratch("present", (Xb.shape[1] >> 6) + 1, fill=0)
        order = np.argsort(parents, kind="stable")
        for sl in ([slice(q, q + 1) for q in range(len(order))] if one_pair_per_call else [slice(None)]):
            kernels.score_pairs(Xb.indptr, Xb.indices, Xb.data, rows, parents, pair_start, order[sl], *layout,
                                slot, present, out)
        assert (slot == -1).all() and (present == 0).all()  # the scratch arrays left as found
        want = Xd @ W_t.toarray().astype(np.float64)
        for q, (i, p) in enumerate(zip(rows, parents)):
            got = out[pair_start[q]:pair_start[q] + n_child[p]]
            np.testing.assert_allclose(got, want[i, C.indptr[p]:C.indptr[p + 1]], rtol=1e-5, atol=1e-5)


@PROPS
@given(models())
def test_full_beam_equals_the_dense_reference(mx):
    """With a beam that keeps every node, each label's score is its path's combination (its best
    copy): the batch path and the one-row path alike."""
    model, X = mx
    want = _dense_reference(model, X)
    k = model.n_labels
    widest = max(model.tree.level_sizes())
    P = model._beam(_with_bias(X, model.bias), widest, k, model.pred_params.post_processor)
    for i in range(X.shape[0]):
        labels, scores = model.predict_row(X[i].indices, X[i].data, beam_size=widest, only_topk=k)
        reach = np.isfinite(want[i])  # labels under a childless parent have no path
        assert sorted(labels.tolist()) == np.flatnonzero(reach).tolist() == P[i].indices.tolist()
        np.testing.assert_allclose(scores, want[i, labels], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(P[i].data, want[i, P[i].indices], rtol=2e-5, atol=2e-6)


# A cached kernel calls two helpers that share a qualified name and argument types but not a body
# (numba builds `np.sort`'s and `np.argsort`'s quicksort so). Each process compiles one of them
# first, so numba's per-process counter gives both the same symbol.
_CACHED = '''
import numpy as np
from xmc_core.jit import njit


def _make(k):
    def helper(a):
        # big enough that LLVM keeps it a function of its own (a call, not inlined code)
        out = np.empty_like(a)
        for i in range(a.shape[0]):
            v = a[i]
            for _ in range(3):
                if v % 7 == 3:
                    v = v * 3 + k
                elif v % 5 == 1:
                    v = v // 2 - k
                else:
                    v = v + k * i
            out[i] = v
        return out
    return helper


_h1 = njit()(_make(1))
_h2 = njit()(_make(2))


@njit(cache=True)
def f1(a):
    return _h1(a).sum() + _h1(a[::-1]).sum()


@njit(cache=True)
def f2(a):
    return _h2(a).sum() + _h2(a[::-1]).sum()
'''


def _env(tmp_path):
    """A child's environment: its own numba cache, the module written in tmp_path importable."""
    return {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd(), os.environ.get("PYTHONPATH", "")])}


def test_cache_entries_from_different_processes_keep_their_own_helpers(tmp_path):
    """Two processes each compile one cached kernel; a third loads both from the cache and
    each must still call its own helper (numba's own counter gives the two helpers one symbol,
    and the third process then runs one body for both: numba#10486, the main job's segfault)."""
    (tmp_path / "cachedmod.py").write_text(textwrap.dedent(_CACHED))
    env = _env(tmp_path)

    def run(code):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    a = "import numpy as np, cachedmod; a = np.arange(10); "
    assert run(a + "print(cachedmod.f1(a))") == ["512"]
    assert run(a + "print(cachedmod.f2(a))") == ["531"]
    # both from the cache, in either order (numba's own ids: "512 512")
    assert run(a + "print(cachedmod.f1(a), cachedmod.f2(a), "
               "sum(cachedmod.f1.stats.cache_hits.values()), sum(cachedmod.f2.stats.cache_hits.values()))"
               ) == ["512", "531", "1", "1"]
    assert run(a + "print(cachedmod.f2(a), cachedmod.f1(a))") == ["531", "512"]


def test_cache_is_keyed_by_bounds_checking(tmp_path):
    """A kernel cached without bounds checks is not what a NUMBA_BOUNDSCHECK=1 process runs: it
    compiles its own, which raises on an index past the array."""
    (tmp_path / "oob.py").write_text(textwrap.dedent('''
        import numpy as np
        from xmc_core.jit import njit

        @njit(cache=True)
        def read(a, i):
            return a[i]
    '''))
    env = _env(tmp_path)
    env.pop("NUMBA_BOUNDSCHECK", None)
    code = "import numpy as np, oob; print(oob.read(np.arange(3), 1))"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.stdout.split() == ["1"], first.stderr
    checked = subprocess.run([sys.executable, "-c", "import numpy as np, oob\ntry:\n    oob.read(np.arange(3), 5)\n"
                              "except IndexError:\n    print('raised')"],
                             env={**env, "NUMBA_BOUNDSCHECK": "1"}, capture_output=True, text=True, timeout=300)
    assert checked.stdout.split() == ["raised"], checked.stderr
