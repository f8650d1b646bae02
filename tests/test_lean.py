"""The lean training path (issue 21) trains the same model as before, bit for bit.

`_train_level` assembles each level's CSC from per-parent int32/float32 pieces, puts the
no-positive constant in while it assembles, and appends the bias entry to each gathered block
instead of training on a biased copy of X. Two pins:

* a reference assembly written the plain way (each parent's triplets in int64, one scipy COO ->
  CSC conversion, then `_no_positive_constant`) gives the same arrays, bit for bit;
* fingerprints of the weights and predictions of a small synthetic problem, recorded with the
  code before the change (commit d0d06a0), are unchanged.
"""

from __future__ import annotations

import hashlib
import mmap

import numpy as np
import pytest
import scipy.sparse as smat

from xmc_core import kernels
from xmc_core.label_embedding import pifa
from xmc_core.memory import StageMemory, nbytes_mb, peak_rss_mb, reset_peak
from xmc_core.sparse import binarize, l2_normalize_rows
from xmc_core.synth import SynthParams, generate
from xmc_core.tree import TreeParams, build_tree
from xmc_core.xlinear import (
    RankerParams,
    XLinearModel,
    _no_positive_constant,
    _train_level,
    _with_bias,
    solve_squared_hinge_dcd,
)


def _digest(M) -> str:
    return hashlib.sha1(M.indptr.astype(np.int64).tobytes() + M.indices.astype(np.int64).tobytes()
                        + M.data.astype(np.float32).tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def problem():
    X, Y, Xt, Yt = generate(SynthParams(n_labels=400, n_train=3000, n_test=500, n_features=3000, seed=3))
    X, Xt = l2_normalize_rows(X), l2_normalize_rows(Xt)
    tree = build_tree(pifa(X, Y), TreeParams(max_leaf_size=8, nr_splits=4, threads=2))
    return X, Y, Xt, tree


# (level nnz, weight digest) per level and the digest of the top-5 predictions, recorded with the
# code before the lean assembly (d0d06a0); /tmp/fp.py-style script in the commit message.
BEFORE = {
    "tfn": ([(7792, "de5db8887b75a314"), (20380, "2b0c2d75430d5feb"), (42358, "54cbd41f2e67079a"),
             (105980, "5c76aa2911cce012")], "822ad8662562d0b0"),
    "tfn+man": ([(7792, "de5db8887b75a314"), (22171, "4329db4c11b816b0"), (52294, "fe008e49bcd4e8fc"),
                 (123752, "ca13fbaecbec8410")], "47451480f47da2b8"),
}


@pytest.mark.parametrize("negative_sampling", ["tfn", "tfn+man"])
def test_weights_and_predictions_are_those_before_the_lean_assembly(problem, negative_sampling):
    X, Y, Xt, tree = problem
    assert tree.level_sizes() == [4, 16, 64, 400]
    m = XLinearModel.train(X, Y, tree, RankerParams(threads=2, negative_sampling=negative_sampling))
    levels, pred = BEFORE[negative_sampling]
    assert [(W.nnz, _digest(W)) for W in m.W] == levels
    assert all(W.dtype == np.float32 and W.indices.dtype == np.int32 and W.has_sorted_indices for W in m.W)
    assert _digest(m.predict(Xt, only_topk=5)) == pred


def _reference_level(Xb, Y_t, C, active, params):
    """The plain assembly on the biased copy Xb: int64 triplets of every parent, one COO -> CSC,
    then the constant."""
    C, Y_t, active = smat.csc_matrix(C), smat.csc_matrix(Y_t), smat.csc_matrix(active)
    rows, cols, vals = [], [], []
    for p in range(C.shape[1]):
        a, b = C.indptr[p], C.indptr[p + 1]
        inst = active.indices[active.indptr[p]:active.indptr[p + 1]]
        if a == b or len(inst) == 0:
            continue
        indptr, indices, data, used = kernels.gather_rows(Xb.indptr, Xb.indices, Xb.data, inst,
                                                          kernels.scratch("colmap", Xb.shape[1]))
        Xp = smat.csr_matrix((data, indices, indptr), shape=(len(inst), len(used)))
        Ypos = Y_t[:, C.indices[a:b]][inst].toarray() > 0
        r, k, v = solve_squared_hinge_dcd(Xp, Ypos, params.Cp, params.Cn, params.eps, params.max_iter,
                                          seed=params.seed + p, threshold=params.threshold)
        rows.append(used[r]); cols.append(a + k); vals.append(v)
    W = smat.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(Xb.shape[1], C.nnz), dtype=np.float32)
    W.sort_indices()
    return _no_positive_constant(W, Y_t, C, params.bias)


@pytest.mark.parametrize("level", [0, 3])
def test_level_assembly_equals_the_plain_coo_assembly(problem, level):
    X, Y, _, tree = problem
    Y = binarize(Y)
    params = RankerParams(threads=2)
    Xb = _with_bias(X, params.bias)
    Y_t = Y if level == tree.depth - 1 else binarize(Y @ tree.label_to_level(level))
    if level == 0:
        active = smat.csc_matrix(np.ones((X.shape[0], 1), np.float32))
    else:
        active = binarize(Y @ tree.label_to_level(level - 1)).tocsc()
    # labels without a positive exist here, so the constant column is exercised
    assert (np.diff(smat.csc_matrix(Y_t).indptr) == 0).any() or level == 0
    stats = {}
    got = _train_level(X, Y_t, tree.C[level], active, params, threads=2, stats=stats)
    ref = _reference_level(Xb, Y_t, tree.C[level], active, params)
    assert got.shape == ref.shape and got.nnz == ref.nnz
    np.testing.assert_array_equal(got.indptr, ref.indptr)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.data, ref.data)
    # the largest block: all of X plus its bias entries at the top level, less further down
    full = (X.nnz + X.shape[0]) * 8  # int32 indices and float32 values, one bias entry per row
    assert (stats["largest_block_bytes"] >= full) == (level == 0)


def test_with_bias_appends_one_sorted_column():
    X = smat.random(50, 30, density=0.2, random_state=2, format="csr", dtype=np.float32)
    keep = np.ones(50, np.float32)
    keep[7] = 0  # an empty row gets the bias entry alone
    X = smat.csr_matrix(smat.diags(keep) @ X)
    X.eliminate_zeros()
    assert X[7].nnz == 0
    for bias in (1.0, 0.5, 0.0):
        Xb = _with_bias(X, bias)
        assert Xb.shape == (50, 31) and Xb.dtype == np.float32 and Xb.has_sorted_indices
        expect = np.hstack([X.toarray(), np.full((50, 1), bias, np.float32)])
        np.testing.assert_array_equal(Xb.toarray(), expect)
        Xs = Xb.copy()
        Xs.has_sorted_indices = False
        Xs.sort_indices()
        np.testing.assert_array_equal(Xs.indices, Xb.indices)


def test_stage_memory_sees_a_peak_and_resets_it():
    mem = StageMemory()
    base = peak_rss_mb()
    # 40 MiB of fresh pages straight from the kernel, every page touched: a malloc'ed block can be
    # a freed chunk that a long test process still holds resident, and then no peak rises
    block = mmap.mmap(-1, 40 * 2**20)
    pages = np.frombuffer(block, np.uint8)
    pages[::mmap.PAGESIZE] = 1
    del pages
    block.close()
    rec = mem.add({"stage": "a"})
    assert rec["peak_rss_mb"] >= base + 35
    assert rec["rss_mb"] < rec["peak_rss_mb"] - 30  # the block is gone
    if mem.exact:  # Linux: the next stage starts from what is held now, not the old peak
        rec2 = mem.add({"stage": "b"})
        assert rec2["peak_rss_mb"] < rec["peak_rss_mb"] - 30
    assert mem.run_peak_mb >= rec["peak_rss_mb"]
    assert reset_peak() in (True, False)
    assert nbytes_mb(smat.identity(2**16, dtype=np.float32, format="csr")) == pytest.approx(
        (2**16 * 4 + 2**16 * 4 + (2**16 + 1) * 4) / 2**20, abs=0.1)


def test_l2_normalize_rows_in_blocks_equals_the_scipy_formula(monkeypatch):
    import xmc_core.sparse as sparse_mod

    def scipy_formula(X):
        X = smat.csr_matrix(X, dtype=np.float32, copy=True)
        sq = np.asarray(X.multiply(X).sum(axis=1), dtype=np.float64).ravel()
        norms = np.sqrt(sq)
        norms[norms == 0.0] = 1.0
        X.data /= np.repeat(norms, np.diff(X.indptr)).astype(np.float32)
        return X

    rng = np.random.default_rng(4)
    X = smat.random(600, 900, density=0.05, random_state=4, format="csr", dtype=np.float32)
    X.data *= rng.random(X.nnz).astype(np.float32) * 30
    keep = (np.arange(600) % 7 != 0).astype(np.float32)  # every 7th row empty
    X = smat.csr_matrix(smat.diags(keep) @ X)  # indices left unsorted by the product
    ref = scipy_formula(X)
    monkeypatch.setattr(sparse_mod, "_BLOCK_NNZ", 500)  # many blocks, rows never split
    got = sparse_mod.l2_normalize_rows(X)
    assert (got != ref).nnz == 0 and np.array_equal(got.toarray(), ref.toarray())
    assert got.data is not X.data and X.has_sorted_indices in (True, False)
    own = X.copy()
    same = sparse_mod.l2_normalize_rows(own, copy=False)
    assert np.shares_memory(same.data, own.data)  # in place: no second copy
    np.testing.assert_array_equal(same.toarray(), ref.toarray())
    norms = np.sqrt(np.asarray(same.multiply(same).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms[keep > 0], 1.0, rtol=1e-6)
    assert (norms[keep == 0] == 0).all()


def test_cli_stage_lines_give_each_stage_its_memory(tmp_path, capsys):
    """`xmc train -v` and `xmc evaluate -v`: one JSON line per stage, each with its peak and final
    resident memory; the run's peak in train's output is the largest stage peak."""
    import json

    from xmc_core.cli import main

    data = tmp_path / "d"
    assert main(["synth", str(data), "--labels", "120", "--train", "1500", "--test", "200",
                 "--words-per-doc", "30", "--labels-per-doc", "2.0"]) == 0
    capsys.readouterr()
    model = tmp_path / "m"
    assert main(["train", "--data", str(data), "--model", str(model), "--threads", "2", "-v",
                 "--params", '{"tree": {"max_leaf_size": 10}}']) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out.strip().splitlines()[-1])
    lines = [json.loads(x) for x in cap.err.splitlines() if x.startswith("{")]
    names = [r["stage"] + (str(r["level"]) if "level" in r else "") for r in lines]
    depth = len(lines[3]["level_sizes"])  # the label_tree line
    assert depth >= 2
    assert names == ["load", "features", "label_embeddings", "label_tree",
                     *[f"rankers_level{t}" for t in range(depth)], "rankers", "save"]
    for r in lines:
        assert r["peak_rss_mb"] >= r["rss_mb"] - 1 > 0 and r["seconds"] >= 0
    levels = [r for r in lines if r["stage"] == "rankers_level"]
    assert all(r["W_mb"] > 0 and r["largest_block_mb"] > 0 for r in levels)
    assert levels[0]["largest_block_mb"] >= max(r["largest_block_mb"] for r in levels)  # all instances at the top
    rankers = next(r for r in lines if r["stage"] == "rankers")
    assert rankers["peak_rss_mb"] == max(r["peak_rss_mb"] for r in [rankers, *levels])
    assert out["peak_rss_mb"] == max(r["peak_rss_mb"] for r in lines)

    assert main(["evaluate", "--model", str(model), "--data", str(data), "--json", "-v"]) == 0
    cap = capsys.readouterr()
    stages = [json.loads(x)["stage"] for x in cap.err.splitlines() if x.startswith("{")]
    assert stages == ["load_model", "load_data", "predict"]
    assert json.loads(cap.out.strip().splitlines()[-1])["p@1"] > 20


def test_synth_density_options_change_nonzeros_and_labels_per_document(tmp_path, capsys):
    import json

    from xmc_core.cli import main
    from xmc_core.data import load_dataset

    stats = {}
    for name, words, labels in (("sparse", 12, 1.5), ("dense", 90, 4.4)):
        assert main(["synth", str(tmp_path / name), "--labels", "300", "--train", "2000", "--test", "100",
                     "--features", "5000", "--words-per-doc", str(words), "--labels-per-doc", str(labels)]) == 0
        json.loads(capsys.readouterr().out)
        tr = load_dataset(tmp_path / name, splits=("train",)).train
        stats[name] = (tr.X.nnz / tr.n, tr.Y.nnz / tr.n)
    assert 9 < stats["sparse"][0] < 12.5 and 60 < stats["dense"][0] < 90
    assert 1.3 < stats["sparse"][1] < 1.6 and 3.6 < stats["dense"][1] < 4.4


def _chunks_reference(c_indptr, W):
    """The per-parent layout written plainly: per parent, its features in ascending order, each
    with the (child, weight) pairs of its children in column order, entries one row after another;
    a record is (feature, where its entries start in the parent's chunk), then a sentinel
    (n_features, the chunk's entry count); parents one after another."""
    recs, ent_child, ent_val, rec_off, ent_off = [], [], [], [0], []
    for p in range(len(c_indptr) - 1):
        ent_off.append(len(ent_child))
        rows = {}
        for c in range(c_indptr[p], c_indptr[p + 1]):
            for e in range(W.indptr[c], W.indptr[c + 1]):
                rows.setdefault(int(W.indices[e]), []).append((c - c_indptr[p], W.data[e]))
        start = 0
        for f in sorted(rows):
            recs += [f, start]
            ent_child += [k for k, _ in rows[f]]
            ent_val += [v for _, v in rows[f]]
            start += len(rows[f])
        recs += [W.shape[0], start]
        rec_off.append(len(recs) // 2)
    return recs, ent_off, ent_child, ent_val, rec_off


def test_prediction_layout_equals_the_plain_regrouping(problem):
    X, Y, _, tree = problem
    m = XLinearModel.train(X, Y, tree, RankerParams(threads=2))
    for C, W in zip(tree.C, m.W):
        recs, ent_off, entries, rec_off = kernels.build_chunks(C.indptr, W.indptr, W.indices, W.data, W.shape[0])
        ref = _chunks_reference(C.indptr, W)
        assert recs.dtype == np.int32 and entries.dtype == np.int32
        assert recs.tolist() == ref[0] and ent_off.tolist() == ref[1] and rec_off.tolist() == ref[4]
        assert entries[0::2].tolist() == ref[2]
        np.testing.assert_array_equal(entries.view(np.float32)[1::2], np.asarray(ref[3], np.float32))


def _codes_gathered(Z, depth, max_iter=20, seed=0):
    """binary_codes as it was: every node's rows gathered into a block (kernels.balanced_2means)."""
    from xmc_core.tree import _first_seed

    L = Z.shape[0]
    node = np.zeros(L, np.int64)
    ss = np.random.SeedSequence(seed)
    for d in range(depth):
        n_nodes = 1 << d
        order = np.argsort(node, kind="stable")
        bounds = np.searchsorted(node[order], np.arange(n_nodes + 1))
        seeds = ss.spawn(1)[0].generate_state(n_nodes)
        new_node = 2 * node
        for n in range(n_nodes):
            members = order[bounds[n]:bounds[n + 1]]
            if len(members) < 2:
                continue
            side = kernels.balanced_2means(Z.indptr, Z.indices, Z.data, members, kernels.scratch("colmap", Z.shape[1]),
                                           _first_seed(int(seeds[n]), len(members)), max_iter)
            new_node[members] += side
        node = new_node
    return node


@pytest.mark.parametrize("threads", [1, 2])
def test_tree_splits_nodes_in_place_as_gathered_blocks_did(problem, threads):
    from xmc_core.tree import binary_codes

    X, Y, _, _ = problem
    Z = pifa(X, Y)
    before = (Z.indices.copy(), Z.data.copy())
    codes = binary_codes(Z, 5, 20, 7, threads)
    np.testing.assert_array_equal(codes, _codes_gathered(Z, 5, 20, 7))
    assert np.array_equal(Z.indices, before[0]) and np.array_equal(Z.data, before[1])  # Z untouched
    assert np.bincount(codes, minlength=32).max() - np.bincount(codes, minlength=32).min() <= 1
