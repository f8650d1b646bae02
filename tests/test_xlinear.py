import numpy as np
import pytest
import scipy.sparse as smat
from scipy.optimize import minimize

from xmc_core.label_embedding import pifa
from xmc_core.tree import TreeParams, build_tree
from xmc_core.xlinear import (
    PredParams,
    RankerParams,
    XLinearModel,
    solve_squared_hinge,
    solve_squared_hinge_dcd,
)


def test_solver_closed_form_one_feature():
    # n identical positives with x = 1: minimize 0.5 w^2 + n (1 - w)^2  →  w = 2n / (1 + 2n)
    n = 7
    X = smat.csr_matrix(np.ones((n, 1), np.float32))
    W = solve_squared_hinge(X, np.ones((n, 1), bool), eps=1e-8, max_iter=50)
    assert W[0, 0] == pytest.approx(2 * n / (1 + 2 * n), rel=1e-5)
    # with Cp = 3 the optimum moves to 6n / (1 + 6n)
    W = solve_squared_hinge(X, np.ones((n, 1), bool), Cp=3.0, eps=1e-8, max_iter=50)
    assert W[0, 0] == pytest.approx(6 * n / (1 + 6 * n), rel=1e-5)


def test_solver_matches_generic_optimizer_on_all_columns():
    rng = np.random.default_rng(0)
    X = smat.random(80, 15, density=0.3, random_state=1, format="csr", dtype=np.float32)
    Ypos = rng.random((80, 4)) < 0.3
    W = solve_squared_hinge(X, Ypos, Cp=2.0, Cn=0.5, eps=1e-7, max_iter=100, cg_max_iter=100, cg_eps=1e-3)
    Xd = X.toarray().astype(np.float64)
    for k in range(4):
        y = np.where(Ypos[:, k], 1.0, -1.0)
        c = np.where(Ypos[:, k], 2.0, 0.5)

        def f(w):
            m = np.maximum(0.0, 1.0 - y * (Xd @ w))
            return 0.5 * w @ w + (c * m * m).sum()

        def g(w):
            m = np.maximum(0.0, 1.0 - y * (Xd @ w))
            return w - 2 * Xd.T @ (c * y * m)

        ref = minimize(f, np.zeros(15), jac=g, method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 5000}).x
        np.testing.assert_allclose(W[:, k], ref, atol=1e-3)


def test_dcd_solver_reaches_the_same_optimum():
    # the dual coordinate descent solves the primal problem of the Newton solver: same minimizer,
    # whatever the thread split of the columns
    rng = np.random.default_rng(0)
    X = smat.random(80, 15, density=0.3, random_state=1, format="csr", dtype=np.float32)
    Ypos = rng.random((80, 4)) < 0.3
    W_newton = solve_squared_hinge(X, Ypos, Cp=2.0, Cn=0.5, eps=1e-7, max_iter=100, cg_max_iter=100, cg_eps=1e-3)
    W1 = solve_squared_hinge_dcd(X, Ypos, Cp=2.0, Cn=0.5, eps=1e-6, max_iter=10_000, threads=1)
    W2 = solve_squared_hinge_dcd(X, Ypos, Cp=2.0, Cn=0.5, eps=1e-6, max_iter=10_000, threads=2)
    assert W1.dtype == np.float32 and W1.shape == (15, 4)
    np.testing.assert_allclose(W1, W_newton, atol=1e-3)
    np.testing.assert_array_equal(W1, W2)
    # closed form: n identical positives with x = 1, Cp = 3  →  w = 6n / (1 + 6n)
    n = 7
    W = solve_squared_hinge_dcd(smat.csr_matrix(np.ones((n, 1), np.float32)), np.ones((n, 1), bool), Cp=3.0,
                                eps=1e-9, max_iter=10_000)
    assert W[0, 0] == pytest.approx(6 * n / (1 + 6 * n), rel=1e-5)


def test_dcd_lanes_solve_each_column_as_alone():
    # 21 columns: groups of 8 columns share each visit of a row (the last group has 5); every
    # column still reaches its own optimum, with or without shrinking making lanes drop out at
    # different passes, and the result does not depend on the threads (groups are whole)
    rng = np.random.default_rng(3)
    X = smat.random(120, 30, density=0.25, random_state=4, format="csr", dtype=np.float32)
    Ypos = rng.random((120, 21)) < rng.uniform(0.02, 0.5, size=21)
    W_newton = solve_squared_hinge(X, Ypos, Cp=1.0, Cn=1.0, eps=1e-7, max_iter=100, cg_max_iter=100, cg_eps=1e-3)
    W_single = solve_squared_hinge_dcd(X, Ypos, eps=1e-6, max_iter=10_000, lanes=False)
    W1 = solve_squared_hinge_dcd(X, Ypos, eps=1e-6, max_iter=10_000, threads=1)
    W3 = solve_squared_hinge_dcd(X, Ypos, eps=1e-6, max_iter=10_000, threads=3)
    np.testing.assert_allclose(W1, W_newton, atol=1e-3)
    np.testing.assert_allclose(W1, W_single, atol=1e-3)
    np.testing.assert_array_equal(W1, W3)
    # at PECOS's stopping rule (eps 0.1) the lanes stop where a column alone would: each lane is
    # liblinear's solver with its own shrinking and stop, only the visit order differs. Total
    # visits lanes / alone over 6 random problems of this shape: 0.966-1.010 (this one 0.992);
    # a lane charged for the instances active in any lane, or never shrinking, visits more.
    v_single, v_lanes = [], []
    solve_squared_hinge_dcd(X, Ypos, stats=v_single, lanes=False)
    solve_squared_hinge_dcd(X, Ypos, stats=v_lanes)
    v_single, v_lanes = np.concatenate(v_single), np.concatenate(v_lanes)
    assert v_single.shape == v_lanes.shape == (21,) and (v_single >= 120).all() and (v_lanes >= 120).all()
    assert 0.9 < v_lanes.sum() / v_single.sum() < 1.1, v_lanes.sum() / v_single.sum()
    # exactly: 8 identical columns in a group share every visit, so each lane runs the very
    # iterations (alphas, shrinking, stop) of the group's first column solved alone with the
    # same seed: equal visits and bit-equal weights, in both groups of 8
    a, b = rng.random(120) < 0.3, rng.random(120) < 0.1
    Ysame = np.column_stack([a] * 8 + [b] * 8)
    v_single, v_lanes = [], []
    W_single = solve_squared_hinge_dcd(X, Ysame, stats=v_single, lanes=False)
    W_lanes = solve_squared_hinge_dcd(X, Ysame, stats=v_lanes)
    v_single, v_lanes = np.concatenate(v_single), np.concatenate(v_lanes)
    np.testing.assert_array_equal(v_lanes, np.repeat(v_single[[0, 8]], 8))
    np.testing.assert_array_equal(W_lanes, W_single[:, [0] * 8 + [8] * 8])
    assert v_single[0] > 2 * 120  # more than one pass: shrinking and the stop are exercised


def test_dcd_lanes_vectorized_equals_plain_python():
    # the lane kernel is compiled with LLVM's SLP vectorizer (kernels.slp_vectorized), which numba
    # leaves off after miscompilations elsewhere: its triplets must equal those of the same
    # kernel run as plain Python, bit for bit, on a problem whose lanes shrink and stop apart
    from xmc_core import kernels

    rng = np.random.default_rng(5)
    X = smat.random(70, 25, density=0.3, random_state=6, format="csr", dtype=np.float32)
    Y8 = (rng.random((70, 19)) < rng.uniform(0.05, 0.6, size=19)).astype(np.uint8)
    args = (X.indptr.astype(np.int64), X.indices.astype(np.int32).view(np.uint32), X.data, 25, Y8,
            np.arange(19, dtype=np.int64), 1.0, 2.0, 0.1, 30, 7, 0.01)
    v_fast, v_py = np.zeros(19, np.int64), np.zeros(19, np.int64)
    fast = kernels.dcd_squared_hinge_lanes(*args, v_fast, kernels.LANES)
    plain = kernels.dcd_squared_hinge_lanes.dispatcher.py_func(*args, v_py, kernels.LANES)
    assert kernels.dcd_squared_hinge_lanes.dispatcher.signatures  # compiled, not interpreted
    assert len(fast[2]) > 50 and (v_fast > 70).all()
    np.testing.assert_array_equal(v_fast, v_py)
    for a, b in zip(fast, plain):
        np.testing.assert_array_equal(a, b)


def test_dcd_and_newton_rankers_agree(toy):
    X, Y = toy
    tree = build_tree(pifa(X, Y), TreeParams(nr_splits=4, max_leaf_size=5))
    tops = []
    for solver in ("dcd", "newton"):
        model = XLinearModel.train(X, Y, tree, RankerParams(solver=solver, threads=2))
        tops.append(np.asarray(model.predict(X, only_topk=1).argmax(axis=1)).ravel())
    assert (tops[0] == tops[1]).mean() > 0.95
    with pytest.raises(ValueError, match="solver"):
        RankerParams(solver="sgd")


#: PECOS's post-processors, written out here: (transform of a raw score v, combination with the
#: parent's score, the root's score)
_PP_REFERENCE = {
    "l3-hinge": (lambda v: np.exp(-np.maximum(1.0 - v, 0.0) ** 3), "mul", 1.0),
    "sigmoid": (lambda v: 1.0 / (1.0 + np.exp(-v)), "mul", 1.0),
    "log-l3-hinge": (lambda v: -np.maximum(1.0 - v, 0.0) ** 3, "add", 0.0),
}


def _exhaustive_scores(model: XLinearModel, X, post_processor):
    """Score every node of every level and combine down the tree (no beam)."""
    transform, kind, root = _PP_REFERENCE[post_processor]
    Xb = smat.hstack([X, smat.csr_matrix(np.full((X.shape[0], 1), model.bias, np.float32))], format="csr")
    combined = np.full((X.shape[0], 1), root)
    for C, W in zip(model.tree.C, model.W):
        raw = (Xb @ W).toarray()
        t = transform(raw)
        parent_of_col = np.repeat(np.arange(C.shape[1]), np.diff(C.indptr))
        node_of_col = C.indices
        vals = t * combined[:, parent_of_col] if kind == "mul" else (t + combined[:, parent_of_col] if kind == "add" else t)
        nxt = np.full((X.shape[0], C.shape[0]), -np.inf)
        for j, node in enumerate(node_of_col):
            nxt[:, node] = np.maximum(nxt[:, node], vals[:, j])
        combined = nxt
    return combined


@pytest.mark.parametrize("post_processor", ["l3-hinge", "sigmoid", "log-l3-hinge"])
def test_beam_search_equals_exhaustive_when_beam_covers_all(toy, post_processor):
    X, Y = toy
    tree = build_tree(pifa(X, Y), TreeParams(nr_splits=2, max_leaf_size=6))
    assert tree.depth >= 3
    model = XLinearModel.train(X, Y, tree, RankerParams(threads=1))
    widest = max(tree.level_sizes())
    P = model.predict(X[:50], beam_size=widest, only_topk=Y.shape[1], post_processor=post_processor).toarray()
    E = _exhaustive_scores(model, X[:50], post_processor)
    np.testing.assert_allclose(P, E, rtol=1e-4, atol=1e-6)
    # a narrow beam gives a subset whose scores are still the exhaustive ones
    Pn = model.predict(X[:50], beam_size=1, only_topk=3, post_processor=post_processor)
    r, c = Pn.nonzero()
    np.testing.assert_allclose(Pn.toarray()[r, c], E[r, c], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("neg", ["tfn", "man", "tfn+man"])
def test_rankers_learn_the_toy_problem(toy, neg):
    X, Y = toy
    N = X.shape[0]
    tree = build_tree(pifa(X, Y), TreeParams(nr_splits=4, max_leaf_size=5))
    assert tree.level_sizes() == [2, 8, 40]
    logs = []
    model = XLinearModel.train(X, Y, tree, RankerParams(negative_sampling=neg, threads=2), PredParams(beam_size=4),
                               log=logs.append)
    P = model.predict(X, only_topk=1)
    top1 = np.asarray(P.argmax(axis=1)).ravel()
    p_at_1 = np.asarray(Y[np.arange(Y.shape[0]), top1]).ravel().mean()
    assert p_at_1 > 0.9
    # the setting is applied: the (instance, parent) pairs trained at each level are those of the
    # scheme. TFN: the parents holding one of the instance's labels, counted here from Y and C;
    # MAN: the matcher's beam of 4 (man_beam_size None: PredParams.beam_size) over the level
    # above, i.e. every instance with min(4, parents) parents; TFN+MAN: their union.
    tfn = [N] + [int(((Y @ tree.label_to_level(t - 1)) > 0).sum()) for t in (1, 2)]
    man = [N, N * 2, N * 4]
    pairs = [g["active_pairs"] for g in logs]
    assert [g["level"] for g in logs] == [0, 1, 2] and [g["n_nodes"] for g in logs] == [2, 8, 40]
    assert tfn[2] < man[2]  # the schemes differ at the leaf level (~2 labels a document)
    if neg == "tfn":
        assert pairs == tfn
    elif neg == "man":
        assert pairs == man
        # man_beam_size overrides the beam: 2 parents an instance at the leaf level
        logs2 = []
        XLinearModel.train(X, Y, tree, RankerParams(negative_sampling=neg, man_beam_size=2, threads=2),
                           PredParams(beam_size=4), log=logs2.append)
        assert [g["active_pairs"] for g in logs2] == [N, N * 2, N * 2]
    else:
        # a beam of 4 covers every TFN pair here (the union is MAN's); with a beam of 1 each
        # scheme adds pairs the other lacks (measured: TFN 848 / 1097, MAN 600 / 600, union
        # 850 / 1099 at levels 1 / 2)
        assert pairs == man
        logs2 = []
        XLinearModel.train(X, Y, tree, RankerParams(negative_sampling=neg, man_beam_size=1, threads=2),
                           PredParams(beam_size=4), log=logs2.append)
        union = [g["active_pairs"] for g in logs2]
        assert union[0] == N
        for t in (1, 2):
            assert max(tfn[t], N) < union[t] <= tfn[t] + N, (t, union, tfn)


def test_model_round_trips_and_prunes(tmp_path, toy):
    X, Y = toy
    tree = build_tree(pifa(X, Y), TreeParams(nr_splits=4, max_leaf_size=5))
    model = XLinearModel.train(X, Y, tree, RankerParams(threshold=0.1, threads=1, bias=0.5),
                               PredParams(beam_size=2, only_topk=7, post_processor="log-sigmoid"))
    for W in model.W:
        assert W.dtype == np.float32 and smat.isspmatrix_csc(W)
        assert np.all(np.abs(W.data) >= 0.1)
    assert model.bias == 0.5
    model.save(tmp_path / "m")
    again = XLinearModel.load(tmp_path / "m")
    a, b = model.predict(X, only_topk=5), again.predict(X, only_topk=5)
    assert (a != b).nnz == 0
    # the prediction settings and the bias value travel with the model: predict() without
    # arguments gives 7 labels a row, log-sigmoid scores (<= 0), from a beam of 2 (at most
    # 2 × 5 leaf labels reachable, i.e. all 7 from 2 leaf clusters)
    d = again.predict(X)
    assert (np.diff(d.indptr) == 7).all() and (d.data <= 0).all()
    leaf = smat.csr_matrix(tree.C[-1]).indices
    assert max(len(set(leaf[d.indices[d.indptr[i]:d.indptr[i + 1]]])) for i in range(50)) == 2
    ref = model.predict(X, beam_size=2, only_topk=7, post_processor="log-sigmoid")
    assert (d != ref).nnz == 0


def test_predict_rejects_wrong_width(toy):
    X, Y = toy
    model = XLinearModel.train(X, Y, build_tree(pifa(X, Y)), RankerParams(threads=1))
    with pytest.raises(ValueError, match="features"):
        model.predict(X[:, :10])


def test_params_validate():
    with pytest.raises(ValueError, match="negative_sampling"):
        RankerParams(negative_sampling="random")
    with pytest.raises(ValueError, match="post_processor"):
        PredParams(post_processor="softmax")
    with pytest.raises(ValueError, match="nr_splits"):
        TreeParams(nr_splits=3)


def test_gram_solver_matches_primal_solver():
    # few instances, many features: the span-of-instances path must give the primal iterates
    from xmc_core.xlinear import _solve_squared_hinge_gram

    rng = np.random.default_rng(1)
    X = smat.random(60, 2000, density=0.02, random_state=2, format="csr", dtype=np.float32)
    Ypos = rng.random((60, 5)) < 0.2
    kw = dict(Cp=1.0, Cn=1.0, max_iter=20, eps=1e-3, cg_max_iter=30, cg_eps=0.3)
    W_primal = solve_squared_hinge(X, Ypos, gram_max_n=0, **kw)
    W_gram = _solve_squared_hinge_gram(X, Ypos, kw["Cp"], kw["Cn"], kw["max_iter"], kw["eps"], kw["cg_max_iter"], kw["cg_eps"])
    np.testing.assert_allclose(W_gram, W_primal, atol=2e-4)


def _synth_tfidf(X_fit: smat.csr_matrix, X: smat.csr_matrix) -> smat.csr_matrix:
    """Sublinear tf × smooth idf (idf from X_fit), l2 rows: the features a trained model sees."""
    from xmc_core.sparse import l2_normalize_rows

    df = np.asarray((X_fit > 0).sum(axis=0)).ravel()
    idf = (np.log((1.0 + X_fit.shape[0]) / (1.0 + df)) + 1.0).astype(np.float32)
    X = smat.csr_matrix(X, dtype=np.float32, copy=True)
    X.data = 1.0 + np.log(X.data)
    return l2_normalize_rows(smat.csr_matrix(X @ smat.diags(idf), dtype=np.float32))


def _p_at_1(P: smat.csr_matrix, Y: smat.csr_matrix) -> float:
    top = np.asarray(P.argmax(axis=1)).ravel()
    hit = np.asarray(Y[np.arange(Y.shape[0]), top]).ravel()
    hit[np.diff(P.indptr) == 0] = 0  # a row without prediction is a miss
    return float(hit.mean())


def test_held_out_precision_on_a_generated_problem():
    """Train on a synthetic problem where labels are learnable but noisy (4% label words, 40
    tokens a document: the training set is fitted to P@1 ~1.0 whatever goes wrong), score its
    held-out test documents. Correct model over synth seeds 0-8: P@1 0.684-0.749 with beam 1,
    0.698-0.755 with beam 10 (seed 0: 0.705 / 0.716); the PIFA-centroid baseline gets 0.52-0.58.
    Plausible bugs on seed 0 (all still fit the training set to >= 0.95): the bias feature not
    appended at predict 0.36, a random (Y-blind) label tree 0.64 with beam 1, rankers 1000x less
    regularized 0.66 with beam 1, a flipped ranker sign 0.0."""
    from xmc_core.synth import SynthParams, generate

    Xc, Y, Xc_tst, Y_tst = generate(SynthParams(n_labels=200, n_train=2000, n_test=1000, n_features=3000,
                                                label_word_frac=0.04, words_per_doc=40, seed=0))
    X, X_tst = _synth_tfidf(Xc, Xc), _synth_tfidf(Xc, Xc_tst)
    Z = pifa(X, Y)
    tree = build_tree(Z, TreeParams(nr_splits=4, max_leaf_size=10))
    assert tree.level_sizes() == [2, 8, 32, 200]
    model = XLinearModel.train(X, Y, tree, RankerParams(threads=2))
    centroid = _p_at_1(smat.csr_matrix((X_tst @ Z.T).toarray()), Y_tst)
    assert 0.5 < centroid < 0.62
    p1_beam1 = _p_at_1(model.predict(X_tst, beam_size=1, only_topk=1), Y_tst)
    p1_beam10 = _p_at_1(model.predict(X_tst, beam_size=10, only_topk=1), Y_tst)
    assert p1_beam1 > 0.67, p1_beam1
    assert p1_beam10 > 0.67 and p1_beam10 > centroid + 0.08, (p1_beam10, centroid)
    # a beam of 1 follows one path: every label it returns sits in the same leaf cluster
    leaf_of_label = smat.csr_matrix(tree.C[-1]).indices
    P = model.predict(X_tst[:200], beam_size=1, only_topk=10)
    assert (np.diff(P.indptr) > 1).all()
    for i in range(P.shape[0]):
        assert len(set(leaf_of_label[P.indices[P.indptr[i]:P.indptr[i + 1]]])) == 1, i


@pytest.mark.parametrize("bias, post_processor, copies", [
    (1.0, "l3-hinge", False), (0.0, "sigmoid", False), (1.0, "log-l2-hinge", True), (1.0, "noop", True)])
def test_one_row_at_a_time_equals_the_batch_bit_for_bit(bias, post_processor, copies):
    """A request predicts a few rows: each goes through `kernels.beam_row_step` (bucket lookups,
    the bias added as a feature, no batch arrays); a dozen rows go through the batch scorer's
    lookup branch, a whole batch through its scatter branch. The scores are the same float32
    sums, bit for bit, with or without a bias, for every way of combining scores, and with
    labels that have copies in several leaf clusters (kept once, at their best)."""
    from conftest import clustered_problem
    from xmc_core.label_embedding import pifa
    from xmc_core.tree import LabelTree, TreeParams, build_tree
    from xmc_core.xlinear import FEW_ROWS, PredParams, RankerParams, XLinearModel

    X, Y = clustered_problem(n=500, n_labels=60, n_features=600, seed=3)
    tree = build_tree(pifa(X, Y), TreeParams(max_leaf_size=4, nr_splits=4))
    if copies:  # every fifth label also in the next leaf cluster
        C = tree.C[-1].tocsr().astype(bool).tolil()
        for lab in range(0, C.shape[0], 5):
            C[lab, (C.rows[lab][0] + 1) % C.shape[1]] = True
        tree = LabelTree([*tree.C[:-1], C.tocsc().astype(np.float32)])
        assert tree.C[-1].nnz > tree.C[-1].shape[0]
    m = XLinearModel.train(X, Y, tree, RankerParams(threads=1, bias=bias),
                           PredParams(threads=1, post_processor=post_processor))
    assert m.bias == bias
    batch = m.predict(X, only_topk=7)
    for i in range(X.shape[0]):
        one = m.predict(X[i], only_topk=7)
        assert one.indices.tolist() == batch[i].indices.tolist(), i
        assert one.data.tobytes() == batch[i].data.tobytes(), i
    for rows in (slice(0, 3), slice(40, 40 + FEW_ROWS + 4)):
        few = m.predict(X[rows], only_topk=7)
        assert (few != batch[rows]).nnz == 0 and few.data.tobytes() == batch[rows].data.tobytes()


def test_bucket_index_finds_every_row():
    """The bucket index of one-row scoring (`build_buckets`, `_find_row`) finds a feature's record
    where np.searchsorted does, and -1 for a feature a chunk lacks: even, clustered, dense,
    tiny and empty chunks side by side."""
    from xmc_core.kernels import _find_row, build_buckets

    rng = np.random.default_rng(0)
    n_features = 200_000
    chunks = [np.sort(rng.choice(n_features, size=3000, replace=False)),
              np.unique(np.concatenate([rng.integers(0, 50, 400), rng.integers(150_000, 150_100, 400)])),
              np.arange(n_features), np.array([n_features - 1]), np.array([], np.int64), np.array([0, 7])]
    # records as `build_chunks` lays them out: (feature, start) pairs, a sentinel after each chunk
    recs = np.concatenate([np.stack([np.append(c, n_features), np.arange(len(c) + 1)], axis=1).ravel()
                           for c in chunks]).astype(np.int32)
    rec_off = np.concatenate([[0], np.cumsum([len(c) + 1 for c in chunks])]).astype(np.int64)
    for per in (1, 2, 8):
        shift, off, ptr = build_buckets(recs, rec_off, n_features, per)
        # 4 bytes per `per` rows and one more bound per chunk: at most rows/per + 1 bounds each
        assert len(ptr) <= sum(max(1, len(c) // per) + 1 for c in chunks)
        for c, rows in enumerate(chunks):
            probes = np.concatenate([rows[:200], rng.integers(0, n_features, 300), [0, n_features - 1]])
            for f in probes:
                j = int(np.searchsorted(rows, f))
                want = rec_off[c] + j if j < len(rows) and rows[j] == f else -1
                assert _find_row(recs, rec_off[c], ptr, off[c], shift[c], f) == want, (per, c, f)


def test_predict_row_takes_arrays_and_checks_them():
    """`predict_row` (one document as arrays, a service's request) gives row 0 of `predict`, best
    first; indices out of order or range, or a length mismatch, are refused."""
    from conftest import clustered_problem
    from xmc_core.label_embedding import pifa
    from xmc_core.tree import TreeParams, build_tree
    from xmc_core.xlinear import PredParams, RankerParams, XLinearModel

    X, Y = clustered_problem(n=300, n_labels=40, n_features=500, seed=5)
    tree = build_tree(pifa(X, Y), TreeParams(max_leaf_size=4, nr_splits=4))
    m = XLinearModel.train(X, Y, tree, RankerParams(threads=1), PredParams(threads=1))
    P = m.predict(X[:20], only_topk=5)
    for i in range(20):
        labels, scores = m.predict_row(X[i].indices, X[i].data, only_topk=5)
        assert sorted(labels.tolist()) == P[i].indices.tolist()
        assert (np.diff(scores) <= 0).all()  # best first
        assert dict(zip(labels.tolist(), scores.tolist())) == dict(zip(P[i].indices.tolist(), P[i].data.tolist()))
    with pytest.raises(ValueError, match="ascend"):
        m.predict_row(np.array([5, 3]), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="ascend"):
        m.predict_row(np.array([3, 500]), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="indices and"):
        m.predict_row(np.array([3]), np.ones(2, np.float32))
