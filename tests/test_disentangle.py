"""Label disentanglement (issue 4): plain XR-Linear at max_copies=1 / rounds=0, copies on a set with
ambiguous labels within the size cap, matcher recall not lower, mean merging, an overlapping model
saved and loaded, `xmc train --method xr-linear-ld`, the Dagster asset and its checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest
import scipy.sparse as smat

from xmc_core.disentangle import (
    DisentangleParams,
    affinity,
    assign_copies,
    copy_table,
    disentangle_tree,
    matcher_recall,
    overlap_violations,
    predict_merged,
    route,
    split_positives,
    train_matcher,
    train_split,
)
from xmc_core.label_embedding import pifa
from xmc_core.model import XmcModel, XRLinearParams, fit_rankers
from xmc_core.synth import SynthParams, generate, structure
from xmc_core.sparse import l2_normalize_rows
from xmc_core.tree import LabelTree, build_tree
from xmc_core.xlinear import XLinearModel

BASE = {"tree": {"max_leaf_size": 25, "nr_splits": 4, "threads": 1}, "ranker": {"threads": 1},
        "pred": {"beam_size": 3}}
SYNTH = SynthParams(n_labels=200, n_train=2000, n_test=500, n_features=2000, ambiguous_frac=0.3, seed=0)


@pytest.fixture(scope="module")
def data():
    Xtr, Ytr, Xte, Yte = generate(SYNTH)
    return l2_normalize_rows(Xtr), Ytr, l2_normalize_rows(Xte), Yte


def _params(disentangle=None) -> XRLinearParams:
    return XRLinearParams().merged({**BASE, **({"disentangle": disentangle} if disentangle is not None else {})})


def _names(Y):
    return [str(i) for i in range(Y.shape[1])]


def test_params_round_trip_and_validation():
    p = _params({"max_copies": 3, "rounds": 2, "merge": "mean"})
    assert p.method == "xr-linear-ld"
    assert XRLinearParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert "disentangle" not in _params().to_dict() and _params().method == "xr-linear"
    assert p.merged({"disentangle": None}).disentangle is None
    for bad in ({"max_copies": 7}, {"max_copies": 0}, {"rounds": -1}, {"merge": "sum"}, {"size_cap_factor": 0.5}):
        with pytest.raises(ValueError):
            DisentangleParams(**bad)
    with pytest.raises(ValueError, match="unknown key"):
        XRLinearParams.from_dict({"disentangle": {"copies": 2}})


@pytest.mark.parametrize("disentangle", [{"max_copies": 1, "rounds": 1}, {"max_copies": 3, "rounds": 0}])
def test_one_copy_or_no_round_is_plain_xr_linear(data, disentangle):
    Xtr, Ytr, Xte, _ = data
    plain = fit_rankers(Xtr, Ytr, _names(Ytr), _params())
    ld = fit_rankers(Xtr, Ytr, _names(Ytr), _params(disentangle))
    assert ld.method == "xr-linear-ld" and plain.method == "xr-linear"
    assert ld.info["disentangle"]["copies_added"] == 0 and ld.copies is None and plain.copies is None
    a, b = plain.predict(Xte, topk=10), ld.predict(Xte, topk=10)
    assert (a != b).nnz == 0
    for w0, w1 in zip(plain.ranker.W, ld.ranker.W):
        assert (w0 != w1).nnz == 0


def test_train_matcher_equals_the_full_models_upper_levels(data):
    Xtr, Ytr, _, _ = data
    p = _params()
    tree = build_tree(pifa(Xtr, Ytr, p.pifa), p.tree)
    full = XLinearModel.train(Xtr, Ytr, tree, p.ranker, p.pred)
    matcher = train_matcher(Xtr, Ytr, tree, p.ranker, p.pred)
    assert matcher.tree.depth == tree.depth - 1
    for w0, w1 in zip(full.W[:-1], matcher.W):
        assert abs(w0 - w1).max() == 0
    assert (route(full, tree, Xtr) != route(matcher, tree, Xtr)).nnz == 0


def test_ambiguous_labels_get_copies_within_the_cap_and_recall_rises(data):
    Xtr, Ytr, Xte, Yte = data
    p = _params()
    tree = build_tree(pifa(Xtr, Ytr, p.pifa), p.tree)
    matcher = train_matcher(Xtr, Ytr, tree, p.ranker, p.pred)
    d = DisentangleParams(max_copies=3, rounds=1, size_cap_factor=1.5)
    new = disentangle_tree(Xtr, Ytr, tree, matcher, d, p.ranker, p.pred)
    # internal levels unchanged, every original (label, cluster) kept, at most max_copies each
    assert all((a != b).nnz == 0 for a, b in zip(tree.C[:-1], new.C[:-1]))
    assert (tree.C[-1] - tree.C[-1].multiply(new.C[-1])).nnz == 0
    copies = np.diff(smat.csr_matrix(new.C[-1]).indptr)
    assert copies.min() == 1 and copies.max() <= 3
    assert (copies > 1).sum() >= 10
    cap = int(1.5 * tree.leaf_cluster_sizes().max())
    assert new.leaf_cluster_sizes().max() <= cap
    # the same contract, as the blocking asset check reads it
    assert overlap_violations(tree, new, d) == {"internal_levels_changed": 0, "labels_changed": 0, "originals_lost": 0,
                                                "labels_over_max_copies": 0, "clusters_over_cap": 0, "cap": cap,
                                                "max_copies": 3}
    # the ambiguous labels (two contexts) get copies more often than the others
    amb = structure(SYNTH).ambiguous
    assert (copies[amb] > 1).mean() > (copies[~amb] > 1).mean()
    # the first matcher reaches more true labels through the copies
    before = matcher_recall(matcher, tree, Xte, Yte)
    after = matcher_recall(matcher, new, Xte, Yte)
    assert after > before
    # and the model retrained on the overlapping tree keeps at least the plain model's recall
    ld = XLinearModel.train(Xtr, Ytr, new, p.ranker, p.pred)
    assert matcher_recall(ld, new, Xte, Yte) >= before - 0.005


def test_overlap_violations_name_what_an_overlapping_tree_breaks():
    # 8 labels in 4 leaves of 2; with max_copies 2 and cap floor(1.5 × 2) = 3
    tree = LabelTree.from_leaf_assignment(np.array([0, 0, 1, 1, 2, 2, 3, 3]), 4)
    d = DisentangleParams(max_copies=2, size_cap_factor=1.5)

    def with_leaf(pairs, base=tree):
        C = smat.lil_matrix(base.C[-1])
        for l, k, v in pairs:
            C[l, k] = v
        return LabelTree([*base.C[:-1], C.tocsc()])

    clean = {"internal_levels_changed": 0, "labels_changed": 0, "originals_lost": 0,
             "labels_over_max_copies": 0, "clusters_over_cap": 0, "cap": 3, "max_copies": 2}
    sound = with_leaf([(0, 1, 1), (2, 0, 1)])
    assert overlap_violations(tree, sound, d) == clean
    # a label moved (its original cluster lost), a label in three leaves, a leaf of four
    assert overlap_violations(tree, with_leaf([(0, 0, 0), (0, 1, 1)]), d)["originals_lost"] == 1
    assert overlap_violations(tree, with_leaf([(0, 1, 1), (0, 2, 1)]), d)["labels_over_max_copies"] == 1
    assert overlap_violations(tree, with_leaf([(2, 0, 1), (4, 0, 1)]), d)["clusters_over_cap"] == 1
    # internal levels and the label set are the tree's
    def three_levels(parent_of_leaf):
        C1 = smat.csc_matrix((np.ones(4, np.float32), (np.arange(4), parent_of_leaf)), shape=(4, 2))
        return LabelTree([smat.csc_matrix(np.ones((2, 1), np.float32)), C1, tree.C[-1]])

    deep = three_levels([0, 0, 1, 1])
    assert overlap_violations(deep, three_levels([0, 1, 0, 1]), d)["internal_levels_changed"] == 1
    assert overlap_violations(tree, deep, d)["internal_levels_changed"] == 2  # level 0 differs, one more level
    fewer = LabelTree.from_leaf_assignment(np.array([0, 0, 1, 1, 2, 2, 3]), 4)
    assert overlap_violations(tree, fewer, d) == {**clean, "labels_changed": 1}
    # without a disentangle section (or with one that cannot act) the tree must be the label tree
    for none in (None, DisentangleParams(max_copies=1), DisentangleParams(rounds=0)):
        assert overlap_violations(tree, tree, none) == {**clean, "cap": 2, "max_copies": 1}
        assert overlap_violations(tree, sound, none)["labels_over_max_copies"] == 2


def test_copy_table_names_where_each_copied_label_sits(data):
    Xtr, Ytr, _, _ = data
    p = _params()
    tree = build_tree(pifa(Xtr, Ytr, p.pifa), p.tree)
    matcher = train_matcher(Xtr, Ytr, tree, p.ranker, p.pred)
    d = DisentangleParams(max_copies=3)
    new, A = disentangle_tree(Xtr, Ytr, tree, matcher, d, p.ranker, p.pred, return_affinity=True)
    assert (new.C[-1] != disentangle_tree(Xtr, Ytr, tree, matcher, d, p.ranker, p.pred).C[-1]).nnz == 0
    table = copy_table(A, tree, new, _names(Ytr))
    copies = np.diff(smat.csr_matrix(new.C[-1]).indptr)
    ids = table["label_id"].to_numpy()
    # one row per label with copies; its clusters are its clusters in the tree, the original first
    assert sorted(ids.tolist()) == np.flatnonzero(copies > 1).tolist()
    orig = smat.csr_matrix(tree.C[-1])
    for row in table.iter_rows(named=True):
        l = row["label_id"]
        assert row["label"] == str(l) and row["copies"] == copies[l] == len(row["clusters"]) == len(row["signatures"])
        assert sorted(row["clusters"]) == sorted(new.C[-1].tocsr()[l].indices.tolist())
        assert row["clusters"][0] == orig.indices[orig.indptr[l]]
        assert row["shares"][1:] == sorted(row["shares"][1:], reverse=True) and sum(row["shares"]) <= 1 + 1e-9
        assert min(row["shares"][1:]) >= d.min_share - 1e-9
    # every training document has a beam, so the routed documents are the label's documents
    counts = np.asarray((Ytr != 0).sum(axis=0)).ravel()
    assert np.allclose(table["train_docs"].to_numpy(), counts[ids], atol=0.01)
    via = table["docs_via_copies"].to_numpy()
    assert (np.diff(via) <= 0).all() and (via > 0).all()
    # the labels whose copies carry the most documents are mostly the two-topic ones (30% of all)
    amb = structure(SYNTH).ambiguous
    assert amb[ids[:20]].mean() >= 0.6
    # unchanged tree: no affinity, and a shape check at the boundary
    same, none = disentangle_tree(Xtr, Ytr, tree, matcher, DisentangleParams(max_copies=1), return_affinity=True)
    assert same is tree and none is None
    with pytest.raises(ValueError, match="label names"):
        copy_table(A, tree, new, _names(Ytr)[:-1])
    # titles for people: in the title column and in the cluster signatures, the names stay ids
    titled = copy_table(A, tree, new, _names(Ytr), [f"label {i}" for i in range(Ytr.shape[1])])
    assert titled["label"].to_list() == table["label"].to_list()
    assert titled["title"].to_list() == ["label " + n for n in table["label"].to_list()]
    assert all(s.startswith("label ") for sigs in titled["signatures"].to_list() for s in sigs)


def test_assign_copies_cap_and_threshold():
    # 4 labels in 2 clusters (2 each); every label's mass is half in the other cluster
    C = smat.csc_matrix(np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32))
    A = smat.csr_matrix(np.array([[0.5, 0.5], [0.6, 0.4], [0.45, 0.55], [0.9, 0.1]]))
    out = assign_copies(A, C, DisentangleParams(max_copies=2, size_cap_factor=1.5, min_share=0.2))
    dense = out.toarray()
    assert (dense >= C.toarray()).all()
    assert dense.sum(axis=0).max() <= 3  # cap floor(1.5 × 2)
    # one free place per cluster: in cluster 1 label 0 (share 0.5) beats label 1 (0.4), in
    # cluster 0 label 3 (0.9) beats label 2 (0.45)
    assert dense[0, 1] == 1 and dense[1, 1] == 0
    assert dense[3, 0] == 1 and dense[2, 0] == 0


def test_mean_merge_and_split_positives(data):
    Xtr, Ytr, Xte, Yte = data
    p = _params()
    tree = build_tree(pifa(Xtr, Ytr, p.pifa), p.tree)
    matcher = train_matcher(Xtr, Ytr, tree, p.ranker, p.pred)
    new = disentangle_tree(Xtr, Ytr, tree, matcher, DisentangleParams(max_copies=2), p.ranker, p.pred)
    model = XLinearModel.train(Xtr, Ytr, new, p.ranker, p.pred)
    P_max = predict_merged(model, Xte, "max", only_topk=5)
    P_mean = predict_merged(model, Xte, "mean", only_topk=5)
    assert (P_max != model.predict(Xte, only_topk=5)).nnz == 0
    assert P_mean.shape == P_max.shape and np.diff(P_mean.indptr).max() <= 5
    # mean <= max, equal for a label with one copy in the beam
    common = P_max.multiply(P_mean > 0)
    assert (P_mean[common > 0] <= common[common > 0] + 1e-6).all()
    # the count divides by the copies whose cluster is in the beam (from the matcher's routing,
    # counted here independently), not by all of the label's copies: a (document, label) with one
    # copy in the beam scores the same under mean and max, one with two copies in it less
    beam = route(model, new, Xte)
    beam.data[:] = 1.0
    in_beam = (beam @ smat.csr_matrix(new.C[-1]).T.tocsr()).toarray()
    Pm, Px = P_mean.toarray(), P_max.toarray()
    both = (Pm > 0) & (Px > 0)
    one, two = both & (in_beam == 1), both & (in_beam >= 2)
    assert one.sum() > 100 and two.sum() > 0
    np.testing.assert_allclose(Pm[one], Px[one], rtol=1e-5)
    assert (Pm[two] < Px[two] - 1e-7).mean() > 0.5
    # of them, labels with two copies (out of their clusters in the tree) and one in the beam
    two_copies = np.diff(smat.csr_matrix(new.C[-1]).indptr)[None, :] == 2
    assert (one & two_copies).sum() > 0
    # split positives: each true pair goes to exactly one copy of its label
    M = route(matcher, tree, Xtr)
    Yp = split_positives(Ytr, M, new.C[-1])
    assert Yp.nnz == Ytr.nnz
    copy_label = np.repeat(np.arange(new.n_labels), np.diff(smat.csr_matrix(new.C[-1]).indptr))
    back = smat.csr_matrix((Yp.data, copy_label[Yp.indices], Yp.indptr), shape=Ytr.shape)
    back.sum_duplicates()
    assert (back != smat.csr_matrix(Ytr)).nnz == 0
    # on the plain tree (one copy each) the split positives are all the positives, and train_split
    # is XR-Linear itself, level for level, with the ranker settings passed (Cp = 2 here)
    Y0 = split_positives(Ytr, M, tree.C[-1])
    assert (Y0 != smat.csr_matrix(Ytr)).nnz == 0
    rp = dataclasses.replace(p.ranker, Cp=2.0)
    split0 = train_split(Xtr, Y0, tree, rp, p.pred)
    plain = XLinearModel.train(Xtr, Ytr, tree, rp, p.pred)
    for w0, w1 in zip(split0.W, plain.W):
        assert abs(w0 - w1).max() == 0
    assert abs(split0.W[0] - matcher.W[0]).max() > 1e-3  # Cp = 2 changed them
    # on the overlapping tree
    split = train_split(Xtr, Yp, new, p.ranker, p.pred)
    P_split = split.predict(Xte, only_topk=5)
    assert P_split.shape == (Xte.shape[0], Ytr.shape[1])
    # the rankers trained on split positives score labels (not copies, not shuffled columns): their
    # test P@1, counted here, is close to that of the rankers trained on all positives
    prec1 = lambda P: float(np.mean([Yte[i, P.indices[P.indptr[i]:P.indptr[i + 1]][np.argmax(
        P.data[P.indptr[i]:P.indptr[i + 1]])]] for i in range(P.shape[0])]))
    p_split, p_all = prec1(P_split), prec1(P_max)
    assert p_all > 0.8 and p_split >= p_all - 0.05, (p_split, p_all)


def test_affinity_is_Yt_times_row_normalized_beam():
    # 4 documents, 2 labels (one stored as 3: positives count once), 3 leaf clusters; document 3
    # has no beam (a zero row adds nothing, and no NaN)
    Y = smat.csr_matrix(np.array([[1, 0], [1, 3], [0, 1], [1, 0]], np.float32))
    M = smat.csr_matrix(np.array([[0.6, 0.2, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 2.0], [0, 0, 0]], np.float32))
    # rows of M normalized to sum 1: [.75 .25 0], [0 .5 .5], [0 0 1]; label 0: docs 0, 1 (and 3),
    # label 1: docs 1, 2
    expected = np.array([[0.75, 0.75, 0.5], [0.0, 0.5, 1.5]])
    A = affinity(Y, M)
    assert smat.isspmatrix_csr(A) and A.shape == (2, 3)
    np.testing.assert_allclose(A.toarray(), expected, rtol=1e-6)


def test_split_positives_follow_the_beam_then_the_affinity():
    # label 0 sits in clusters 0 and 2 (copies 0, 1), label 1 in cluster 1 (copy 2)
    C = smat.csc_matrix(np.array([[1, 0, 1], [0, 1, 0]], np.float32))
    Y = smat.csr_matrix(np.array([[1, 0], [1, 0], [1, 1], [0, 1]], np.float32))
    M = smat.csr_matrix(np.array([[0.2, 0.0, 0.7],    # doc 0: cluster 2 is the best of label 0's
                                  [0.9, 0.1, 0.0],    # doc 1: cluster 0
                                  [0.0, 1.0, 0.0],    # doc 2: neither of label 0's clusters in the beam
                                  [0.0, 0.0, 0.0]], np.float32))
    # doc 2 falls back to label 0's larger share of routing mass: cluster 0 (0.2/0.9 + 0.9 = 1.12)
    # against cluster 2 (0.7/0.9 = 0.78); label 1 has one copy, which keeps all its positives
    Yp = split_positives(Y, M, C)
    assert Yp.shape == (4, 3)
    assert Yp.toarray().tolist() == [[0, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]]


def test_overlapping_model_saves_and_loads(data, tmp_path):
    Xtr, Ytr, Xte, _ = data
    model = fit_rankers(Xtr, Ytr, _names(Ytr), _params({"max_copies": 2, "merge": "mean"}))
    assert model.ranker.tree.C[-1].nnz > model.n_labels  # overlapping
    model.save(tmp_path / "m")
    back = XmcModel.load(tmp_path / "m")
    assert back.method == "xr-linear-ld" and back.params == model.params
    assert (back.ranker.tree.C[-1] != model.ranker.tree.C[-1]).nnz == 0
    a, b = model.predict(Xte, topk=5), back.predict(Xte, topk=5)
    assert (a != b).nnz == 0
    meta = json.loads((tmp_path / "m" / "params.json").read_text())
    assert meta["method"] == "xr-linear-ld" and meta["params"]["disentangle"]["max_copies"] == 2
    # the folder says where the copies sit: one row per label with copies, as trained
    assert model.copies.height == model.info["disentangle"]["labels_with_copies"] > 0
    assert back.copies.equals(model.copies)
    copies = np.diff(smat.csr_matrix(model.ranker.tree.C[-1]).indptr)
    assert sorted(back.copies["label_id"].to_list()) == np.flatnonzero(copies > 1).tolist()
    # a damaged table is a damaged model folder, named
    (tmp_path / "m" / "copies.parquet").write_bytes(b"PAR1 not parquet")
    from xmc_core.model import ModelFormatError
    with pytest.raises(ModelFormatError, match="copies.parquet"):
        XmcModel.load(tmp_path / "m")


def test_cli_train_xr_linear_ld(tmp_path, capsys):
    from xmc_core.cli import main
    from xmc_core.synth import write_synth

    write_synth(tmp_path / "d", SynthParams(n_labels=60, n_train=400, n_test=100, n_features=500,
                                            ambiguous_frac=0.3))
    (tmp_path / "d" / "label_names.tsv").write_text(
        "label_id\ttitle\n" + "".join(f"{i}\tsubject {i}\n" for i in range(60)))
    params = json.dumps({"tree": {"max_leaf_size": 8}, "disentangle": {"max_copies": 2, "rounds": 1}})
    capsys.readouterr()
    assert main(["train", "--method", "xr-linear-ld", "--data", str(tmp_path / "d"), "--model",
                 str(tmp_path / "m"), "--params", params]) == 0
    printed = json.loads(capsys.readouterr().out)
    model = XmcModel.load(tmp_path / "m")
    assert model.method == "xr-linear-ld" and model.params.disentangle.max_copies == 2
    # what was copied: counts on the command line, the table (with the dataset's titles) in the folder
    assert printed["copies_added"] > 0 and printed["labels_with_copies"] == model.copies.height
    assert printed["copies_table"] == str(tmp_path / "m" / "copies.parquet")
    row = model.copies.row(0, named=True)
    assert row["title"] == f"subject {row['label']}" and row["signatures"][0].startswith("subject ")
    # no params: the section's defaults
    assert main(["train", "--method", "xr-linear-ld", "--data", str(tmp_path / "d"), "--model",
                 str(tmp_path / "m2")]) == 0
    # the documented defaults, as the saved folder holds them
    saved = json.loads((tmp_path / "m2" / "params.json").read_text())["params"]["disentangle"]
    assert saved == {"max_copies": 2, "rounds": 1, "size_cap_factor": 2.0, "min_share": 0.1, "merge": "max"}
    d = XmcModel.load(tmp_path / "m2").params.disentangle
    assert (d.max_copies, d.rounds, d.size_cap_factor, d.min_share, d.merge) == (2, 1, 2.0, 0.1, "max")
    # a disentangle section with the plain method, or an unknown method: usage errors
    assert main(["train", "--method", "xr-linear", "--data", str(tmp_path / "d"), "--model",
                 str(tmp_path / "m3"), "--params", params]) == 2
    assert main(["train", "--method", "xr-linear-xx", "--data", str(tmp_path / "d"), "--model",
                 str(tmp_path / "m3")]) == 2


def _pipeline(tmp_path, dataset: str, params: dict):
    """An ephemeral instance with the dataset's partition, and the pipeline's resources under
    tmp_path (data in tmp_path/data/<dataset>) with `params` as the settings."""
    from dagster import DagsterInstance

    from xmc_assets.partitions import dataset_partitions
    from xmc_assets.resources import RayEngineResource, ArtifactStore, DataRoot, EvaluationDB, XmcSettings

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(dataset_partitions.name, [dataset])
    resources = {
        "data_root": DataRoot(path=str(tmp_path / "data"), synthetic_dir=str(tmp_path / "synthetic")),
        "artifacts": ArtifactStore(base_dir=str(tmp_path / "artifacts")),
        "evaluation_db": EvaluationDB(path=str(tmp_path / "xmc.duckdb")),
        "xmc_settings": XmcSettings(params_json=json.dumps(params)),
        "ray_engine": RayEngineResource(),
    }
    return instance, resources


def _materialize_with_checks(instance, resources, dataset: str, **kw):
    from dagster import materialize

    from xmc_assets.assets import xr_linear_assets
    from xmc_assets.checks import xr_linear_checks

    return materialize([*xr_linear_assets, *xr_linear_checks], instance=instance, resources=resources,
                       partition_key=dataset, **kw)


def test_disentangled_tree_asset(tmp_path):
    from dagster import materialize

    from xmc_assets.assets import xr_linear_assets
    from xmc_assets.resources import XmcSettings
    from xmc_assets.versions import code_version
    from xmc_core.results_db import read_evaluation
    from xmc_core.synth import write_synth

    write_synth(tmp_path / "data" / "amb", SynthParams(n_labels=60, n_train=400, n_test=150, n_features=500,
                                                       ambiguous_frac=0.3))
    # titles for people, as eurlex57k and yso-finna-en have them
    (tmp_path / "data" / "amb" / "label_names.tsv").write_text(
        "label_id\ttitle\n" + "".join(f"{i}\tsubject {i}\n" for i in range(60)))
    instance, resources = _pipeline(tmp_path, "amb", {"tree": {"max_leaf_size": 8}, "disentangle": {"max_copies": 2}})
    settings = resources["xmc_settings"]
    result = _materialize_with_checks(instance, resources, "amb")
    assert result.success
    checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    assert checks["copies_within_bounds"].passed and checks["copies_added"].passed
    assert checks["copies_within_bounds"].metadata["originals_lost"].value == 0
    meta = result.asset_materializations_for_node("disentangled_tree")[0].metadata
    assert meta["pass_through"].value is False and meta["copies_added"].value > 0
    assert meta["matcher_recall_after"].value >= meta["matcher_recall_before"].value
    # the copies table: a file with one row per copied label, its first rows in the UI
    copies = pl.read_parquet(meta["copies_file"].value)
    assert copies.height == meta["labels_with_copies"].value > 0
    assert copies["title"][0] == f"subject {copies['label'][0]}"
    assert f"{copies['title'][0]} ({copies['label'][0]})" in meta["copied_labels"].value
    assert "added clusters" in meta["copied_labels"].value
    tree = LabelTree.from_arrays(np.load(tmp_path / "artifacts" / "amb" / "disentangled_tree" / "tree.npz"))
    model = XmcModel.load(tmp_path / "artifacts" / "amb" / "model")
    assert model.method == "xr-linear-ld" and (model.ranker.tree.C[-1] != tree.C[-1]).nnz == 0
    assert model.copies.equals(copies)  # the model folder carries the stage's table
    # label_tree's cluster table: every level's sizes add up to the 60 labels, named by titles
    from dagster import TableMetadataValue

    clusters = result.asset_materializations_for_node("label_tree")[0].metadata["clusters"]
    assert isinstance(clusters, TableMetadataValue)
    rows_by_level = {}
    for r in clusters.records:
        rows_by_level.setdefault(r.data["level"], []).append(r.data)
    assert len(rows_by_level) == tree.depth - 1 >= 1
    assert all(sum(r["labels"] for r in level) == 60 for level in rows_by_level.values())
    assert all(r["top_labels"].startswith("subject ") for r in rows_by_level[0])
    assert model.label_titles == [f"subject {i}" for i in range(60)]
    rows = read_evaluation(tmp_path / "xmc.duckdb", result.run_id)
    assert set(rows["model"]) == {"xr-linear-ld"}
    stored = json.loads(rows["params"][0])
    assert stored["disentangle"]["max_copies"] == 2 and stored["disentangle"]["rounds"] == 1

    # code versions: the disentangle section feeds disentangled_tree (and rankers only via merge)
    plain = XmcSettings(params_json=json.dumps({"tree": {"max_leaf_size": 8}}))
    ranker_changed = XmcSettings(params_json=json.dumps({"tree": {"max_leaf_size": 8}, "ranker": {"Cp": 2}}))
    assert code_version(plain, "disentangled_tree") == code_version(ranker_changed, "disentangled_tree")
    assert code_version(plain, "disentangled_tree") != code_version(settings, "disentangled_tree")
    three = XmcSettings(params_json=json.dumps({"tree": {"max_leaf_size": 8}, "disentangle": {"max_copies": 3}}))
    assert code_version(three, "rankers") == code_version(settings, "rankers")
    assert code_version(three, "disentangled_tree") != code_version(settings, "disentangled_tree")
    merge_mean = XmcSettings(params_json=json.dumps({"tree": {"max_leaf_size": 8},
                                                     "disentangle": {"max_copies": 2, "merge": "mean"}}))
    assert code_version(merge_mean, "disentangled_tree") == code_version(settings, "disentangled_tree")
    assert code_version(merge_mean, "rankers") != code_version(settings, "rankers")

    # the settings lose their disentangle section: the tree passes through and the copies table of
    # the earlier run, which describes a tree that is gone, is removed
    resources["xmc_settings"] = plain
    again = materialize(xr_linear_assets, instance=instance, resources=resources, partition_key="amb",
                        selection=["disentangled_tree"])
    assert again.success
    assert again.asset_materializations_for_node("disentangled_tree")[0].metadata["pass_through"].value is True
    assert not (tmp_path / "artifacts" / "amb" / "disentangled_tree" / "copies.parquet").exists()


def test_blocking_check_stops_rankers_on_an_overlapping_tree_that_lost_a_label(tmp_path, monkeypatch):
    """A reassignment that drops a label's original cluster (a bug the check exists for) fails the
    blocking `copies_within_bounds` check, and the rankers are not trained on that tree."""
    import xmc_core.disentangle as ld
    from xmc_core.synth import write_synth

    write_synth(tmp_path / "data" / "amb", SynthParams(n_labels=60, n_train=400, n_test=150, n_features=500,
                                                       ambiguous_frac=0.3))
    good_assign = ld.assign_copies

    def moves_label_0(A, C_leaf, params):
        C = smat.lil_matrix(good_assign(A, C_leaf, params))
        k = int(smat.csr_matrix(C_leaf)[0].indices[0])
        C[0, k] = 0
        C[0, (k + 1) % C.shape[1]] = 1
        return C.tocsc()

    monkeypatch.setattr(ld, "assign_copies", moves_label_0)
    instance, resources = _pipeline(tmp_path, "amb", {"tree": {"max_leaf_size": 8}, "disentangle": {"max_copies": 2}})
    result = _materialize_with_checks(instance, resources, "amb", raise_on_error=False)
    assert not result.success
    check = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}["copies_within_bounds"]
    assert not check.passed and "originals lost: 1" in check.description
    assert not result.asset_materializations_for_node("rankers")
    assert not (tmp_path / "artifacts" / "amb" / "model").exists()


def test_disentangle_on_a_one_level_tree_warns_that_it_does_nothing(tmp_path):
    from dagster import AssetCheckSeverity

    from xmc_core.synth import write_synth

    write_synth(tmp_path / "data" / "flat", SynthParams(n_labels=30, n_train=200, n_test=60, n_features=300))
    instance, resources = _pipeline(tmp_path, "flat", {"disentangle": {"max_copies": 3}})  # 30 labels ≤ 100
    result = _materialize_with_checks(instance, resources, "flat")
    assert result.success  # a warning does not stop the run
    checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    # a one-level tree cannot take copies: the bound is one leaf per label, whatever max_copies says
    assert checks["copies_within_bounds"].passed
    assert checks["copies_within_bounds"].metadata["max_copies"].value == 1
    added = checks["copies_added"]
    assert not added.passed and added.severity == AssetCheckSeverity.WARN and "one level" in added.description
