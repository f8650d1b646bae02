"""The Dagster code location: it loads, the whole graph materializes on a slice of Reuters, the
DuckDB history grows by one run per materialization, and a missing dataset fails clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions, SensorResult, build_sensor_context, materialize

from xmc_assets.assets import metrics, xr_linear_assets
from xmc_assets.definitions import JOB_NAME, defs
from xmc_assets.partitions import dataset_folders_sensor, dataset_partitions
from xmc_assets.resources import ArtifactStore, DataRoot, EvaluationDB, XmcSettings
from xmc_core.model import XmcModel
from xmc_core.results_db import read_evaluation

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()  # the repo-relative default root
REUTERS = "reuters-21578"
ASSET_NAMES = {"corpus", "tfidf", "label_embeddings", "label_tree", "disentangled_tree", "rankers", "metrics"}
XRT_ASSET_NAMES = {f"xr_transformer/{n}" for n in ("encoder", "refined_tree", "rankers", "metrics")}
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
    }
    return instance, resources


def _materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_definitions_load():
    Definitions.validate_loadable(defs)
    assert defs.resolve_job_def(JOB_NAME).partitions_def == dataset_partitions
    assert {k.to_user_string() for k in defs.resolve_all_asset_keys()} == ASSET_NAMES | XRT_ASSET_NAMES | XLGEN_ASSET_NAMES
    for spec in defs.resolve_all_asset_specs():
        assert spec.code_version, spec.key
        assert spec.partitions_def == dataset_partitions


def test_reuters_slice_materializes_and_history_grows(tmp_path, reuters_dir):
    instance, resources = _run(tmp_path, SHARED_DATA, REUTERS, max_rows=600)
    db = tmp_path / "xmc.duckdb"

    first = materialize(xr_linear_assets, instance=instance, resources=resources, partition_key=REUTERS)
    assert first.success
    assert _materialized(first) == ASSET_NAMES

    rows = read_evaluation(db, first.run_id)
    assert rows.height > 0
    assert set(rows["dataset"]) == {REUTERS} and set(rows["split"]) == {"test"}
    assert rows.select(["metric", "k"]).is_duplicated().sum() == 0  # one row per metric and k
    p = dict(zip(rows.filter(rows["metric"] == "p")["k"], rows.filter(rows["metric"] == "p")["value"]))
    assert {1, 3, 5} <= set(p)
    assert all(0.0 <= v <= 100.0 for v in rows["value"])
    assert p[1] > 50.0, f"P@1 {p[1]:.1f} on 600 Reuters docs: below any sane model"
    meta = first.asset_materializations_for_node("metrics")[0].metadata
    assert meta["p@1"].value == pytest.approx(p[1])

    # The saved model folder stands alone (no Dagster needed to use it).
    model = XmcModel.load(tmp_path / "artifacts" / REUTERS / "model")
    assert model.featurizer is not None and model.label_counts is not None

    # Re-evaluating from the stored artifacts appends a second run; the first stays.
    second = materialize(xr_linear_assets, instance=instance, resources=resources, partition_key=REUTERS,
                         selection=[metrics])
    assert second.success and _materialized(second) == {"metrics"}
    history = read_evaluation(db)
    assert history["run_id"].unique().sort().to_list() == sorted([first.run_id, second.run_id])
    assert read_evaluation(db, second.run_id).height == rows.height


def test_synthetic_bag_of_words_dataset(tmp_path):
    """The BoW path (no texts, no featurizer) on a tiny generated dataset; needs no shared data."""
    from xmc_core.synth import SynthParams, write_synth

    write_synth(tmp_path / "data" / "tiny", SynthParams(n_labels=40, n_train=300, n_test=100, n_features=500))
    instance, resources = _run(tmp_path, tmp_path / "data", "tiny")
    result = materialize(xr_linear_assets, instance=instance, resources=resources, partition_key="tiny")
    assert result.success and _materialized(result) == ASSET_NAMES
    assert XmcModel.load(tmp_path / "artifacts" / "tiny" / "model").featurizer is None
    assert read_evaluation(tmp_path / "xmc.duckdb", result.run_id).height > 0


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
