"""Ensembles of XR-Linear models (xmc_core.ensemble) and the presets (xmc_core.presets)."""

import json

import numpy as np
import pytest
import scipy.sparse as smat

from conftest import clustered_problem
from xmc_core.cli import main
from xmc_core.ensemble import EnsembleParams, XmcEnsemble, label_view, member_params
from xmc_core.model import ModelFormatError, XRLinearParams, keep_topk, load_model, train_xr_linear
from xmc_core.presets import PRESETS, preset_overrides

#: 2 threads everywhere, a 3-level tree on the toy problem's 40 labels
BASE = {"tree": {"threads": 2, "max_leaf_size": 4, "nr_splits": 4}, "ranker": {"threads": 2}, "pred": {"threads": 2}}


@pytest.fixture(scope="module")
def problem():
    X, Y = clustered_problem(n=700, n_labels=40, n_features=320, seed=3)
    return X[:500], Y[:500], X[500:], Y[500:]


def _params(ensemble=None):
    over = dict(BASE)
    if ensemble is not None:
        over["ensemble"] = ensemble
    return XRLinearParams().merged(over)


def _names(Y):
    return [f"l{j}" for j in range(Y.shape[1])]


def test_one_member_is_the_single_model(problem):
    Xtr, Ytr, Xte, _ = problem
    single = train_xr_linear(Ytr, _names(Ytr), _params(), X=Xtr)
    ens = train_xr_linear(Ytr, _names(Ytr), _params({"size": 1, "member_topk": 8}), X=Xtr)
    assert isinstance(ens, XmcEnsemble) and ens.method == "xr-linear-ensemble" and len(ens.members) == 1
    for a, b in zip(single.ranker.W, ens.members[0].ranker.W):
        assert (a != b).nnz == 0  # member 0: the same seeds, the same weights, bit for bit
    P = ens.predict(Xte, topk=3)
    Q = keep_topk(single.predict(Xte, topk=8), 3)
    assert (P != Q).nnz == 0


def test_members_differ_by_seed_and_overrides_and_scores_are_their_mean(problem):
    Xtr, Ytr, Xte, _ = problem
    ens = train_xr_linear(Ytr, _names(Ytr), _params(
        {"size": 3, "views": ["pifa", "cooc"], "weights": [1, 2, 1], "member_topk": 40,
         "members": [{}, {"ranker": {"Cn": 2.0}}]}), X=Xtr)
    seeds = [(m.params.tree.seed, m.params.ranker.seed, m.params.ranker.Cn) for m in ens.members]
    assert seeds == [(0, 0, 1.0), (1, 1, 2.0), (2, 2, 1.0)]
    codes = [m.ranker.tree.C[-1].indices.tolist() for m in ens.members]
    assert codes[0] != codes[1] != codes[2]  # other seeds and views: other trees
    # member_topk 40 = every label: the mean is exact, so it can be recomputed from the members
    P = ens.predict(Xte, topk=40)
    parts = [m.predict(Xte, topk=40).toarray() for m in ens.members]
    mean = (parts[0] + 2 * parts[1] + parts[2]) / 4
    np.testing.assert_allclose(P.toarray(), mean, rtol=1e-5, atol=1e-6)
    top = ens.predict(Xte, topk=2)
    assert np.all(np.diff(top.indptr) == 2)
    np.testing.assert_allclose(np.sort(top.toarray(), axis=1)[:, -2:], np.sort(mean, axis=1)[:, -2:], rtol=1e-5)


def test_ensemble_is_more_accurate_than_its_members(problem):
    X, Y = clustered_problem(n=1500, n_labels=60, n_features=300, seed=7)
    Xtr, Ytr, Xte, Yte = X[:1000], Y[:1000], X[1000:], Y[1000:]
    from xmc_core.metrics import ranking_metrics

    ens = train_xr_linear(Ytr, _names(Ytr), _params({"size": 4}), X=Xtr)
    p1 = ranking_metrics(Yte, ens.predict(Xte, topk=5))["p"][1]
    members = [ranking_metrics(Yte, m.predict(Xte, topk=5))["p"][1] for m in ens.members]
    assert p1 >= np.mean(members), (p1, members)


def test_folder_round_trip_and_damage(problem, tmp_path):
    Xtr, Ytr, Xte, _ = problem
    ens = train_xr_linear(Ytr, _names(Ytr), _params({"size": 2, "members": [{}, {"ranker": {"Cn": 3.0}}]}), X=Xtr)
    ens.set_label_counts(Ytr)
    ens.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m" / "members").iterdir()) == ["0", "1"]
    meta = json.loads((tmp_path / "m" / "params.json").read_text())
    assert meta["method"] == "xr-linear-ensemble" and meta["n_members"] == 2
    assert meta["params"]["ensemble"]["members"] == [{}, {"ranker": {"Cn": 3.0}}]
    back = load_model(tmp_path / "m")
    assert isinstance(back, XmcEnsemble) and back.members[1].params.ranker.Cn == 3.0
    assert (back.predict(Xte, topk=5) != ens.predict(Xte, topk=5)).nnz == 0
    assert back.predict_labels(Xte[:1], topk=2)[0] == ens.predict_labels(Xte[:1], topk=2)[0]
    # a member missing: one line naming the folder, not a traceback from inside
    import shutil

    shutil.rmtree(tmp_path / "m" / "members" / "1")
    with pytest.raises(ModelFormatError, match=r"incomplete or corrupt model folder") as err:
        load_model(tmp_path / "m")
    assert "\n" not in str(err.value) and str(tmp_path / "m") in str(err.value)


def test_params_are_checked():
    with pytest.raises(ValueError, match="size"):
        EnsembleParams(size=0)
    with pytest.raises(ValueError, match="views"):
        EnsembleParams(views=["word2vec"])
    with pytest.raises(ValueError, match="weights"):
        EnsembleParams(size=2, weights=[1.0])
    with pytest.raises(ValueError, match="tfidf"):
        EnsembleParams(members=[{"tfidf": {"min_df": 3}}])
    with pytest.raises(ValueError, match="Cq"):
        EnsembleParams(members=[{"ranker": {"Cq": 3}}])
    p = XRLinearParams().merged({"ensemble": {"size": 2, "members": [{"tree": {"max_leaf_size": 7}}]}})
    assert XRLinearParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p  # JSON round trip
    assert member_params(p, 1).tree.max_leaf_size == 7 and member_params(p, 1).tree.seed == 1
    assert member_params(p, 0).ensemble is None and p.method == "xr-linear-ensemble"
    assert XRLinearParams().merged({"ensemble": {}}).merged({"ensemble": None}).method == "xr-linear"


def test_label_views():
    Y = smat.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]], np.float32))
    X = smat.csr_matrix(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32))
    for view in ("pifa", "cooc", "pifa+cooc"):
        Z = label_view(view, X, Y)
        norms = np.linalg.norm(Z.toarray(), axis=1)
        np.testing.assert_allclose(norms, [1, 1, 0, 0], atol=1e-6)  # labels 2, 3 have no positive
    C = label_view("cooc", X, Y).toarray()
    np.testing.assert_allclose(C[0], np.array([2, 1, 0, 0]) / np.sqrt(5), rtol=1e-6)
    with pytest.raises(ValueError, match="view"):
        label_view("bert", X, Y)


def test_presets():
    assert PRESETS["default"] == {}
    acc = XRLinearParams().merged(preset_overrides("accurate"))
    assert acc.method == "xr-linear-ensemble" and acc.ensemble.size == 3
    # the user's --params win key by key, the rest of the preset stays
    mixed = preset_overrides("accurate", {"ensemble": {"size": 5}, "ranker": {"Cp": 2.0}})
    assert mixed["ensemble"]["size"] == 5 and mixed["ensemble"]["members"] and mixed["ranker"] == {"Cp": 2.0}
    assert preset_overrides("accurate", {"ensemble": None})["ensemble"] is None
    with pytest.raises(ValueError, match="unknown preset"):
        preset_overrides("fastest")


def test_cli_trains_and_predicts_with_the_accurate_preset(tmp_path, capsys, reuters_dir):
    model = tmp_path / "m"
    assert main(["train", "--data", str(reuters_dir), "--model", str(model), "--max-rows", "600", "--threads", "2",
                 "--preset", "accurate", "--params", '{"ensemble": {"size": 2}, "tree": {"max_leaf_size": 20}}']) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["method"] == "xr-linear-ensemble" and info["n_features"] > 0
    assert main(["predict", "--model", str(model), "--text", "wheat and grain exports", "--topk", "3"]) == 0
    pred = json.loads(capsys.readouterr().out.strip())
    assert len(pred["labels"]) == 3 and pred["scores"] == sorted(pred["scores"], reverse=True)
    assert main(["evaluate", "--model", str(model), "--data", str(reuters_dir), "--max-rows", "200", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["p@1"] > 60
    assert main(["train", "--method", "xlgen", "--data", str(reuters_dir), "--model", str(tmp_path / "x"),
                 "--preset", "accurate"]) == 2
    assert "--preset accurate: only for --method xr-linear" in capsys.readouterr().err


def test_dagster_graph_with_the_accurate_preset(tmp_path):
    """The code location's preset setting: `rankers` writes an ensemble folder that `calibration` and
    `metrics` load; its code version follows the ensemble settings, the single model's does not move."""
    from dagster import DagsterInstance, materialize

    from xmc_assets.assets import xr_linear_assets
    from xmc_assets.partitions import dataset_partitions
    from xmc_assets.resources import ArtifactStore, DataRoot, EvaluationDB, RayEngineResource, XmcSettings
    from xmc_assets.versions import settings_hash
    from xmc_core.results_db import read_evaluation
    from xmc_core.synth import SynthParams, write_synth

    write_synth(tmp_path / "data" / "tiny", SynthParams(n_labels=40, n_train=300, n_test=100, n_features=500))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(dataset_partitions.name, ["tiny"])
    settings = XmcSettings(preset="accurate")
    resources = {"data_root": DataRoot(path=str(tmp_path / "data"), synthetic_dir=str(tmp_path / "synthetic")),
                 "artifacts": ArtifactStore(base_dir=str(tmp_path / "artifacts")),
                 "evaluation_db": EvaluationDB(path=str(tmp_path / "xmc.duckdb")),
                 "xmc_settings": settings, "ray_engine": RayEngineResource()}
    result = materialize(xr_linear_assets, instance=instance, resources=resources, partition_key="tiny")
    assert result.success
    model = load_model(tmp_path / "artifacts" / "tiny" / "model")
    assert isinstance(model, XmcEnsemble) and len(model.members) == 3
    rows = read_evaluation(tmp_path / "xmc.duckdb", result.run_id)
    p1 = rows.filter((rows["metric"] == "p") & (rows["k"] == 1))["value"][0]
    assert p1 > 60, p1
    default = XmcSettings()
    assert settings_hash(default, "rankers") != settings_hash(settings, "rankers")
    assert settings_hash(default, "label_tree") == settings_hash(settings, "label_tree")
    with pytest.raises(Exception, match="unknown preset"):
        XmcSettings(preset="fastest").params()


def test_accurate_text_joins_the_embedding_block(tmp_path, capsys, reuters_dir):
    """accurate-text: members read [TF-IDF ⊕ MiniLM embedding]; the folder predicts raw text alone
    after a reload; feature-vector data is refused in one line."""
    from conftest import require_module

    require_module("torch")
    model = tmp_path / "m"
    assert main(["train", "--data", str(reuters_dir), "--model", str(model), "--max-rows", "300", "--threads", "2",
                 "--preset", "accurate-text", "--params",
                 '{"ensemble": {"size": 2, "embedding_max_length": 32}, "tree": {"max_leaf_size": 20}}']) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ens = load_model(model)
    tfidf_width = ens.featurizer.n_features
    assert info["n_features"] == ens.n_features == tfidf_width + 384
    text = "wheat and grain exports to the soviet union"
    X = ens.featurize([text])
    assert X.shape == (1, tfidf_width + 384) and X[:, tfidf_width:].nnz > 300  # the dense block is there
    np.testing.assert_allclose(smat.linalg.norm(X, axis=1), [1.0], rtol=1e-5)
    assert (ens.predict([text], topk=3) != ens.predict(X, topk=3)).nnz == 0
    with pytest.raises(ValueError, match="reads raw texts"):
        ens.predict(X[:, :tfidf_width])
    X, Y = clustered_problem(n=100, n_labels=10, n_features=50)
    with pytest.raises(ValueError, match="embedding block reads raw texts"):
        train_xr_linear(Y, _names(Y), XRLinearParams().merged(preset_overrides("accurate-text")), X=X)
