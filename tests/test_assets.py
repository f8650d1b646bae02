"""The Dagster code location: it loads, the whole graph materializes on a slice of Reuters, the
DuckDB history grows by one run per materialization, and a missing dataset fails clearly."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as smat
from dagster import DagsterInstance, Definitions, SensorResult, build_sensor_context, materialize

from xmc_assets.assets import metrics, xr_linear_assets
from xmc_assets.definitions import JOB_NAME, defs
from xmc_assets.partitions import dataset_folders_sensor, dataset_partitions
from xmc_assets.resources import RayEngineResource, ArtifactStore, DataRoot, EvaluationDB, XmcSettings
from xmc_core.model import XmcModel, evaluate_model
from xmc_core.results_db import read_evaluation

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()  # the repo-relative default root
REUTERS = "reuters-21578"
ASSET_NAMES = {"corpus", "tfidf", "label_embeddings", "label_tree", "disentangled_tree", "rankers", "calibration", "metrics"}
XRT_ASSET_NAMES = {f"xr_transformer/{n}" for n in ("encoder", "refined_tree", "rankers", "calibration", "metrics")}
XLGEN_ASSET_NAMES = {"xlgen_label_clusters"} | {f"xlgen_{v}_{kind}" for v in ("base", "bcl", "mcg")
                                                for kind in ("model", "metrics")}


def _run(tmp_path: Path, data_root: Path, dataset: str, max_rows: int | None = None):
    """A fresh instance plus resources writing only under tmp_path."""
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(dataset_partitions.name, [dataset])
    resources = {
        "data_root": DataRoot(path=str(data_root), synthetic_dir=str(tmp_path / "synthetic")),
        "artifacts": ArtifactStore(base_dir=str(tmp_path / "artifacts")),
        "evaluation_db": EvaluationDB(path=str(tmp_path / "xmc.duckdb")),
        "xmc_settings": XmcSettings(max_rows=max_rows),
        "ray_engine": RayEngineResource(),
    }
    return instance, resources


def _materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def _meta(result, node: str) -> dict:
    """Plain metadata values of the node's (single) materialization."""
    [m] = result.asset_materializations_for_node(node)
    return {k: getattr(v, "value", v) for k, v in m.metadata.items()}


def _raw_label_rows(path: Path, n: int, names: list[str]) -> smat.csr_matrix:
    """The first n lines of a raw labels file as a binary matrix, read without xmc's reader."""
    col = {name: j for j, name in enumerate(names)}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(n)]
    rows, cols = [], []
    for i, line in enumerate(lines):
        for j in sorted({col[t] for t in line.split()}):
            rows.append(i)
            cols.append(j)
    return smat.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, len(names)))


def _precision_at(P: smat.csr_matrix, Y: smat.csr_matrix, k: int) -> float:
    """P@k (percent) by brute force: hits among each row's k highest scores, over k per document."""
    P, Y = smat.csr_matrix(P), smat.csr_matrix(Y)
    hits = 0
    for i in range(P.shape[0]):
        a, b = P.indptr[i], P.indptr[i + 1]
        top = P.indices[a:b][np.argsort(-P.data[a:b], kind="stable")[:k]]
        hits += len(set(top.tolist()) & set(Y.indices[Y.indptr[i]:Y.indptr[i + 1]].tolist()))
    return 100.0 * hits / (k * P.shape[0])


def test_definitions_load():
    Definitions.validate_loadable(defs)
    assert defs.resolve_job_def(JOB_NAME).partitions_def == dataset_partitions
    assert ({k.to_user_string() for k in defs.resolve_all_asset_keys()}
            == ASSET_NAMES | XRT_ASSET_NAMES | XLGEN_ASSET_NAMES | {"batch_predictions"})
    from xmc_assets.batch import batch_partitions

    for spec in defs.resolve_all_asset_specs():
        assert spec.code_version, spec.key
        # every model asset by dataset; new documents by incoming batch
        want = batch_partitions if spec.key.to_user_string() == "batch_predictions" else dataset_partitions
        assert spec.partitions_def == want, spec.key


def test_reuters_slice_materializes_and_history_grows(tmp_path, reuters_dir):
    n = 600
    instance, resources = _run(tmp_path, SHARED_DATA, REUTERS, max_rows=n)
    db = tmp_path / "xmc.duckdb"
    art = tmp_path / "artifacts" / REUTERS

    first = materialize(xr_linear_assets, instance=instance, resources=resources, partition_key=REUTERS)
    assert first.success
    assert _materialized(first) == ASSET_NAMES

    # corpus: the first n documents of each split, labels as in the raw files (read here by hand).
    names = (reuters_dir / "label_map.txt").read_text().split()
    Y_train = _raw_label_rows(reuters_dir / "train_labels.txt.gz", n, names)
    Y_test = _raw_label_rows(reuters_dir / "test_labels.txt.gz", n, names)
    corpus_meta = _meta(first, "corpus")
    assert (corpus_meta["labels"], corpus_meta["documents_train"], corpus_meta["documents_test"]) == (90, n, n)
    assert corpus_meta["avg_labels_per_doc"] == pytest.approx(Y_train.nnz / n)
    assert corpus_meta["train_docs_without_labels"] == int(np.sum(np.diff(Y_train.indptr) == 0))
    assert corpus_meta["labels_without_train_docs"] == int(np.sum(np.asarray(Y_train.sum(0)).ravel() == 0))
    for split, Y in (("train", Y_train), ("test", Y_test)):
        assert (smat.load_npz(art / "corpus" / f"Y_{split}.npz") != Y).nnz == 0, split

    # tfidf: the stored matrices are what the stored featurizer makes of the stored texts.
    model = XmcModel.load(art / "model")
    tfidf_meta = _meta(first, "tfidf")
    X_train = smat.load_npz(art / "tfidf" / "X_train.npz").tocsr()
    assert X_train.shape == (n, tfidf_meta["vocab_size"]) and tfidf_meta["nnz_train"] == X_train.nnz
    texts = {s: pl.read_parquet(art / "corpus" / f"texts_{s}.parquet")["text"].to_list() for s in ("train", "test")}
    assert abs(model.featurizer.transform(texts["train"]) - X_train).max() < 1e-6

    # label_embeddings: Z = row-normalized Yᵀ X, recomputed densely here.
    Zd = Y_train.T.toarray() @ X_train.toarray()
    norms = np.linalg.norm(Zd, axis=1, keepdims=True)
    Zd = np.divide(Zd, norms, out=np.zeros_like(Zd), where=norms > 0)
    Z = smat.load_npz(art / "label_embeddings" / "Z.npz").toarray()
    np.testing.assert_allclose(Z, Zd, atol=1e-5)
    assert _meta(first, "label_embeddings")["labels_with_zero_embedding"] == int(np.sum(norms.ravel() == 0))

    # label_tree: every label in exactly one leaf; leaf sizes within max_leaf_size (default 100 ≥ 90: flat).
    tree_meta = _meta(first, "label_tree")
    assert (tree_meta["leaf_size_min"], tree_meta["leaf_size_max"]) == (90, 90) and tree_meta["depth"] == 1

    # metrics: P@k of the saved model's own predictions on the test texts, scored here by brute force
    # against the raw test labels, is what DuckDB and the metadata hold.
    rows = read_evaluation(db, first.run_id)
    assert set(rows["dataset"]) == {REUTERS} and set(rows["split"]) == {"test"}
    assert rows.select(["metric", "k"]).is_duplicated().sum() == 0  # one row per metric and k
    p = dict(zip(rows.filter(rows["metric"] == "p")["k"], rows.filter(rows["metric"] == "p")["value"]))
    P = model.predict(texts["test"], topk=5)
    meta = _meta(first, "metrics")
    for k in (1, 3, 5):
        expected = _precision_at(P, Y_test, k)
        assert p[k] == pytest.approx(expected, abs=1e-6), k
        # the UI's copy is rounded to 7 significant digits (metadata.readable_metadata); DuckDB keeps all
        assert meta[f"p@{k}"] == pytest.approx(expected, abs=1e-5), k
    assert meta["n_test"] == n and meta["rows_appended"] == rows.height
    # The majority label ("earn") alone scores 42.5 here (255 of the first 600 test documents);
    # a working model ranks far better (79.0 at this slice, deterministic): 20 points above it
    # leaves room for small numeric changes, not for a broken ranker or tree.
    majority = 100.0 * Y_test[:, names.index("earn")].sum() / n
    assert majority == pytest.approx(42.5)
    assert p[1] > majority + 20.0, f"P@1 {p[1]:.1f} vs majority-label baseline {majority:.1f}"

    # calibration: reuters has no dev split, so 10% of train was held out from a sibling's rankers;
    # the set and ECE rows (k = 0) are what the saved, calibrated model gives on the test texts.
    cal_meta = _meta(first, "calibration")
    assert cal_meta["source"].startswith("no dev split") and cal_meta["n_docs"] == n // 10
    assert model.calibration is not None and (art / "model" / "calibration" / "calibration.npz").is_file()
    ev = evaluate_model(model, texts["test"], Y_test, names)
    sets = dict(zip(rows.filter(rows["k"] == 0)["metric"], rows.filter(rows["k"] == 0)["value"]))
    for key in ("set_micro_f1", "set_macro_f1", "ece", "brier", "few_micro_f1"):
        assert sets[key] == pytest.approx(ev.sets[key], abs=1e-6), key
    assert meta["set_micro_f1"] == pytest.approx(ev.sets["set_micro_f1"]) and sets["set_micro_f1"] > 50
    assert "reliability" in meta and "sets_by_frequency" in meta

    # The saved model folder stands alone (no Dagster needed to use it).
    assert model.featurizer is not None and model.label_names == names
    np.testing.assert_array_equal(model.label_counts, np.asarray(Y_train.sum(0)).ravel())

    # Re-evaluating from the stored artifacts appends a second run with the same numbers; the first stays.
    second = materialize(xr_linear_assets, instance=instance, resources=resources, partition_key=REUTERS,
                         selection=[metrics])
    assert second.success and _materialized(second) == {"metrics"}
    history = read_evaluation(db)
    assert history["run_id"].unique().sort().to_list() == sorted([first.run_id, second.run_id])
    again = read_evaluation(db, second.run_id)
    assert dict(zip(zip(again["metric"], again["k"]), again["value"])) == dict(
        zip(zip(rows["metric"], rows["k"]), rows["value"]))


def test_synthetic_bag_of_words_dataset(tmp_path, monkeypatch):
    """The BoW path (no texts, no featurizer) on a tiny generated dataset; needs no shared data."""
    from xmc_core import progress
    from xmc_core.synth import SynthParams, generate, write_synth

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # a progress line per update, in the run's log

    params = SynthParams(n_labels=40, n_train=300, n_test=100, n_features=500)
    write_synth(tmp_path / "data" / "tiny", params)
    X_trn, Y_trn, X_tst, Y_tst = generate(params)  # the same matrices, straight from the generator
    instance, resources = _run(tmp_path, tmp_path / "data", "tiny")
    result = materialize(xr_linear_assets, instance=instance, resources=resources, partition_key="tiny")
    assert result.success and _materialized(result) == ASSET_NAMES
    art = tmp_path / "artifacts" / "tiny"
    model = XmcModel.load(art / "model")
    assert model.featurizer is None

    # tfidf of a BoW dataset: the generator's counts with each row scaled to unit length (empty rows stay 0).
    norms = np.sqrt(np.asarray(X_trn.multiply(X_trn).sum(1)).ravel())
    expected_X = smat.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ X_trn
    X_train = smat.load_npz(art / "tfidf" / "X_train.npz")
    assert X_train.shape == (300, 500) and abs(X_train - expected_X).max() < 1e-6
    assert _meta(result, "corpus")["documents_test"] == 100 and _meta(result, "tfidf")["vocab_size"] == 500

    # the long steps' progress is in the run's log (stdout of no one)
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any(m.startswith("xmc: rankers level 1/1") for m in messages)
    assert any(m.startswith("xmc: predict: ") for m in messages)

    # label_tree: 40 labels under the default leaf size of 100 make a flat tree, and it says so
    assert "flat" in _meta(result, "label_tree")["clusters"]

    # rankers shows the model card (`xmc info`), with the fingerprint of the training split
    from xmc_core.model_card import data_fingerprint

    card = _meta(result, "rankers")["model_card"]
    assert "| method | xr-linear |" in card and "| labels | 40 |" in card and "| features | 500 |" in card
    assert f"| data fingerprint | {data_fingerprint(Y_trn, X=X_trn)} |" in card
    assert model.info["data_fingerprint"] == data_fingerprint(Y_trn, X=X_trn)

    # metrics: brute-force P@k of the saved model on the raw test counts, against the generator's labels.
    rows = read_evaluation(tmp_path / "xmc.duckdb", result.run_id)
    p = dict(zip(rows.filter(rows["metric"] == "p")["k"], rows.filter(rows["metric"] == "p")["value"]))
    P = model.predict(X_tst, topk=5)
    for k in (1, 3, 5):
        assert p[k] == pytest.approx(_precision_at(P, Y_tst, k), abs=1e-6), k
    # the training set's most frequent label scores 48 here; the model 83 (deterministic, seed 0):
    # 20 points above the baseline leaves room for numeric drift, not for a broken ranker or tree
    majority = 100.0 * np.asarray(Y_tst[:, int(np.argmax(Y_trn.sum(0)))].sum()) / 100
    assert p[1] > majority + 20.0, (p[1], majority)


def test_missing_dataset_folder_fails_clearly(tmp_path):
    (tmp_path / "empty-root").mkdir()
    instance, resources = _run(tmp_path, tmp_path / "empty-root", "no-such-dataset")
    result = materialize(xr_linear_assets, instance=instance, resources=resources,
                         partition_key="no-such-dataset", raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failures] == ["corpus"]
    message = failures[0].step_failure_data.user_failure_data.description
    assert "no-such-dataset" in message and "no folder" in message


def test_sensor_adds_a_partition_per_dataset_folder(tmp_path):
    from xmc_core.synth import SynthParams, write_synth

    for name in ("a", "b"):
        write_synth(tmp_path / "data" / name, SynthParams(n_labels=8, n_train=20, n_test=5, n_features=64))
    (tmp_path / "data" / "not-a-dataset").mkdir()
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(dataset_partitions.name, ["a"])
    data_root = DataRoot(path=str(tmp_path / "data"), synthetic_dir=str(tmp_path / "synthetic"))
    with build_sensor_context(instance=instance, resources={"data_root": data_root}) as context:
        result = dataset_folders_sensor(context)
    assert isinstance(result, SensorResult) and not result.run_requests
    [request] = result.dynamic_partitions_requests
    assert (request.partitions_def_name, list(request.partition_keys)) == (dataset_partitions.name, ["b"])


def test_a_fresh_instance_has_the_dataset_partitions_when_the_code_location_loads(tmp_path, monkeypatch):
    """`dagster asset materialize -m xmc_assets.definitions --partition NAME` on a new DAGSTER_HOME:
    loading the code location registers every dataset folder, so no sensor tick is needed first."""
    from xmc_assets.definitions import register_partitions_on_load
    from xmc_core.synth import SynthParams, write_synth

    for name in ("a", "b"):
        write_synth(tmp_path / "data" / name, SynthParams(n_labels=8, n_train=20, n_test=5, n_features=64))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("XMC_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert register_partitions_on_load() == []  # no instance to register in
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XMC_REGISTER_PARTITIONS", "0")
    assert register_partitions_on_load() == []
    monkeypatch.delenv("XMC_REGISTER_PARTITIONS")
    added = register_partitions_on_load()
    assert {"a", "b"} <= set(added)
    with DagsterInstance.get() as instance:
        assert {"a", "b"} <= set(instance.get_dynamic_partitions(dataset_partitions.name))
    assert register_partitions_on_load() == []  # known ones are not added twice
