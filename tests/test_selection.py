"""Held-out choice of the rankers' C and of idf column weights (xmc_core.selection), and ensembles
that keep column weights (xmc_core.ensemble)."""

import json

import numpy as np
import pytest
import scipy.sparse as smat

from conftest import clustered_problem
from xmc_core.cli import main
from xmc_core.ensemble import EnsembleParams, XmcEnsemble
from xmc_core.metrics import MetricParams, ranking_metrics
from xmc_core.model import XRLinearParams, fit_rankers, load_model, train_xr_linear
from xmc_core.presets import preset_overrides
from xmc_core.selection import column_idf, scale_c, select_c, weigh_columns
from xmc_core.sparse import l2_normalize_rows

#: 2 threads, a 3-level tree on the toy problem's 40 labels
BASE = {"tree": {"threads": 2, "max_leaf_size": 4, "nr_splits": 4}, "ranker": {"threads": 2}, "pred": {"threads": 2}}


def _params(**ensemble):
    over = dict(BASE)
    if ensemble:
        over = {**over, "ensemble": ensemble}
    return XRLinearParams().merged(over)


def _names(Y):
    return [f"l{j}" for j in range(Y.shape[1])]


@pytest.fixture(scope="module")
def problem():
    X, Y = clustered_problem(n=700, n_labels=40, n_features=320, seed=5)
    return X[:500], Y[:500], X[500:], Y[500:]


def test_scale_c_scales_the_base_and_every_members_loss_weights():
    p = _params(size=3, members=[{}, {"ranker": {"Cn": 2.0}}, {"tree": {"max_leaf_size": 7}}])
    q = scale_c(p, 0.35)
    assert (q.ranker.Cp, q.ranker.Cn) == (0.35, 0.35)
    assert q.ensemble.members == [{}, {"ranker": {"Cn": 0.7}}, {"tree": {"max_leaf_size": 7}}]
    assert scale_c(scale_c(p, 0.35), 3.0).ensemble.members[1]["ranker"]["Cn"] == 2.1  # written 2.1, not 2.0999…
    assert (p.ranker.Cp, p.ensemble.members[1]["ranker"]["Cn"]) == (1.0, 2.0)  # the argument is unchanged
    assert q.tree == p.tree and q.pred == p.pred
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="factor"):
            scale_c(p, bad)


def test_column_idf_and_weigh_columns_by_hand():
    X = smat.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]], np.float32))
    w = column_idf(X)  # df 4, 1, 0 of N = 4
    np.testing.assert_allclose(w, [1.0, np.log(5 / 2) + 1, np.log(5) + 1], rtol=1e-6)
    Xw = weigh_columns(X, w).toarray()
    np.testing.assert_allclose(Xw[0], np.array([1.0, w[1], 0]) / np.hypot(1.0, w[1]), rtol=1e-6)
    np.testing.assert_allclose(Xw[1], [1, 0, 0])
    Z = weigh_columns(smat.csr_matrix((2, 3), dtype=np.float32), w)
    assert Z.nnz == 0  # all-zero rows stay zero
    with pytest.raises(ValueError, match="3 columns, 2 weights"):
        weigh_columns(X, w[:2])


def test_select_c_scores_held_out_precision_and_keeps_the_best(problem):
    Xtr, Ytr, _, _ = problem
    p = _params()
    c, idf, report = select_c(Xtr, Ytr, _names(Ytr), p, [3.0, 0.01, 1.0], holdout_frac=0.2, seed=4, idf="select")
    cands = {(r["c"], r["idf"]): r["score"] for r in report["candidates"]}
    assert set(cands) == {(0.01, False), (1.0, False), (3.0, False), (c, True)}  # c without idf first, then idf at c
    best = max((0.01, 1.0, 3.0), key=lambda x: (cands[(x, False)], -x))
    assert c == best and (report["chosen"]["c"], report["chosen"]["idf"]) == (c, idf)
    assert idf == (cands[(c, True)] > cands[(c, False)])
    assert cands[(0.01, False)] < cands[(1.0, False)]  # C 0.01 underfits this learnable problem
    # the score is the held-out documents' mean P@1/3/5 of a model trained on the others
    perm = np.random.default_rng(4).permutation(500)
    out, kept = np.sort(perm[:100]), np.sort(perm[100:])
    m = fit_rankers(Xtr[kept], Ytr[kept], _names(Ytr), p)
    res = ranking_metrics(Ytr[out], m.predict(Xtr[out], topk=5), MetricParams(ks=(1, 3, 5)))
    assert report["n_holdout"] == 100
    assert cands[(1.0, False)] == pytest.approx(np.mean([res["p"][k] for k in (1, 3, 5)]), abs=1e-3)
    from xmc_core.disentangle import matcher_recall

    reach = {(r["c"], r["idf"]): r["reach"] for r in report["candidates"]}
    assert reach[(1.0, False)] == pytest.approx(100 * matcher_recall(m.ranker, m.ranker.tree, Xtr[out], Ytr[out]),
                                                abs=0.01)
    assert report["chosen"]["reach"] == reach[(c, idf)] and all(0 <= v <= 100 for v in reach.values())


def test_select_c_breaks_ties_toward_the_smaller_c_and_no_idf():
    # one label per document, each label owning a feature: every candidate ranks perfectly
    n, L = 200, 8
    lab = np.arange(n) % L
    X = smat.csr_matrix((np.ones(n, np.float32), (np.arange(n), lab)), shape=(n, L))
    Y = smat.csr_matrix((np.ones(n, np.float32), (np.arange(n), lab)), shape=(n, L))
    c, idf, report = select_c(X, Y, _names(Y), _params(), [2.0, 0.5, 1.0], idf="select")
    assert len({r["score"] for r in report["candidates"]}) == 1
    assert (c, idf) == (0.5, False)


def test_select_c_refuses_bad_settings(problem):
    Xtr, Ytr, _, _ = problem
    for kw, msg in (({"grid": []}, "grid"), ({"grid": [0.0]}, "grid"), ({"grid": [1.0], "holdout_frac": 0.6},
                                                                        "holdout_frac"),
                    ({"grid": [1.0], "idf": "auto"}, "idf")):
        with pytest.raises(ValueError, match=msg):
            select_c(Xtr, Ytr, _names(Ytr), _params(), **kw)
    with pytest.raises(ValueError, match="too few"):
        select_c(Xtr[:5], Ytr[:5], _names(Ytr), _params(), [1.0], holdout_frac=0.1)
    for kw, msg in (({"c_grid": [1.0, -2]}, "c_grid"), ({"c_grid": []}, "c_grid"), ({"c_grid": [True]}, "c_grid"),
                    ({"holdout_frac": 0.0}, "holdout_frac"), ({"column_idf": "yes"}, "column_idf"),
                    ({"column_idf": 1}, "column_idf")):
        with pytest.raises(ValueError, match=msg):
            EnsembleParams(**kw)


def test_an_ensemble_with_column_idf_weighs_what_it_trains_and_predicts_on(problem, tmp_path):
    Xtr, Ytr, Xte, _ = problem
    ens = train_xr_linear(Ytr, _names(Ytr), _params(size=1, column_idf=True, member_topk=8), X=Xtr)
    w = column_idf(Xtr)
    np.testing.assert_array_equal(ens.column_weights, w)
    single = fit_rankers(weigh_columns(l2_normalize_rows(Xtr), w), Ytr, _names(Ytr), _params())  # as train_xr_linear
    for a, b in zip(single.ranker.W, ens.members[0].ranker.W):
        assert (a != b).nnz == 0  # member 0 is the single model on the weighted columns
    P = ens.predict(Xte, topk=8)
    np.testing.assert_allclose(P.toarray(), single.predict(weigh_columns(Xte, w), topk=8).toarray(), atol=1e-6)
    # rows are l2-normalized before the weights, as for any feature-vector model
    scaled = smat.csr_matrix(smat.diags(np.arange(1, 201, dtype=np.float32)) @ Xte)
    np.testing.assert_allclose(ens.predict(scaled, topk=8).toarray(), P.toarray(), atol=1e-6)
    ens.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert isinstance(back, XmcEnsemble)
    np.testing.assert_array_equal(back.column_weights, w)
    assert (back.predict(Xte, topk=8) != P).nnz == 0


def test_the_chosen_settings_are_what_the_folder_keeps(problem, tmp_path):
    Xtr, Ytr, Xte, _ = problem
    p = _params(size=2, members=[{}, {"ranker": {"Cn": 2.0}}], c_grid=[0.5, 2.0], column_idf="select")
    ens = train_xr_linear(Ytr, _names(Ytr), p, X=Xtr)
    sel = ens.info["selection"]
    c, idf = sel["chosen"]["c"], sel["chosen"]["idf"]
    assert ens.params.ensemble.c_grid is None and ens.params.ensemble.column_idf is idf
    assert (ens.params.ranker.Cp, ens.params.ranker.Cn) == (c, c)
    assert [m.params.ranker.Cn for m in ens.members] == [c, 2.0 * c]
    assert (ens.column_weights is not None) == idf
    ens.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "params.json").read_text())
    assert saved["params"]["ensemble"]["c_grid"] is None and saved["info"]["selection"]["chosen"] == sel["chosen"]
    from xmc_core.model_card import card_markdown, model_card

    card = model_card(tmp_path / "m")
    assert card["selection"]["chosen"] == sel["chosen"]  # `xmc info` shows what was chosen
    assert f"C × {c}, idf weights {'yes' if idf else 'no'}" in card_markdown(card)
    # training again from the saved settings selects nothing and gives the same model
    again = train_xr_linear(Ytr, _names(Ytr), load_model(tmp_path / "m").params, X=Xtr)
    assert "selection" not in again.info
    assert (again.predict(Xte, topk=5) != ens.predict(Xte, topk=5)).nnz == 0


def test_a_raw_text_model_weighs_its_tfidf_once(tmp_path, capsys, reuters_dir):
    """Column weights on a raw-text model: the texts' TF-IDF is weighed; a matrix of the
    featurizer's width is the model's own features (what featurize returned), not weighed again."""
    model = tmp_path / "m"
    assert main(["train", "--data", str(reuters_dir), "--model", str(model), "--max-rows", "400", "--threads", "2",
                 "--params", json.dumps({"ensemble": {"size": 1, "column_idf": True},
                                         "tree": {"max_leaf_size": 20}})]) == 0
    capsys.readouterr()
    m = load_model(model)
    texts = ["wheat and grain exports rose", "the central bank cut interest rates", "crude oil prices"]
    X = m.featurize(texts)
    tfidf = m.featurizer.transform(texts)
    assert (abs(X - weigh_columns(tfidf, m.column_weights)) > 1e-6).nnz == 0
    assert (m.predict(X, topk=3) != m.predict(texts, topk=3)).nnz == 0


def test_the_accurate_preset_selects_c_and_idf():
    acc = XRLinearParams().merged(preset_overrides("accurate"))
    assert acc.ensemble.c_grid == [0.35, 1.0, 3.0] and acc.ensemble.column_idf == "select"
    assert acc.ensemble.disentangle_below == 80.0
    assert [m.get("ranker", {}).get("Cn") for m in acc.ensemble.members] == [None, 2.0, 3.0]
    X, Y = clustered_problem(n=300, n_labels=20, n_features=200, seed=2)
    ens = fit_rankers(l2_normalize_rows(X), Y, _names(Y), acc.merged(BASE))
    assert ens.params.ranker.Cp in (0.35, 1.0, 3.0) and len(ens.info["selection"]["candidates"]) == 4


def test_members_are_disentangled_only_where_reach_is_below_the_bar(problem, tmp_path):
    Xtr, Ytr, Xte, _ = problem
    narrow = {"pred": {"beam_size": 1}}  # a beam of one cluster misses some labels: reach < 100
    kept = train_xr_linear(Ytr, _names(Ytr), _params(size=2, disentangle_below=0.0).merged(narrow), X=Xtr)
    assert kept.info["selection"]["disentangle"] is False and kept.params.disentangle is None
    assert [m.method for m in kept.members] == ["xr-linear", "xr-linear"]
    reach = kept.info["selection"]["chosen"]["reach"]
    assert reach < 100  # so a bar of 100 disentangles
    ld = train_xr_linear(Ytr, _names(Ytr), _params(size=2, disentangle_below=100.0).merged(narrow), X=Xtr)
    assert ld.info["selection"]["disentangle"] is True and ld.params.ensemble.disentangle_below is None
    assert [m.method for m in ld.members] == ["xr-linear-ld", "xr-linear-ld"]
    assert any(m.ranker.tree.C[-1].nnz > m.ranker.tree.n_labels for m in ld.members)  # copies were made
    ld.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert [m.method for m in back.members] == ["xr-linear-ld", "xr-linear-ld"]
    assert (back.predict(Xte, topk=5) != ld.predict(Xte, topk=5)).nnz == 0
    with pytest.raises(ValueError, match="disentangle_below"):
        EnsembleParams(disentangle_below=150)
