"""Operations (issue 7): staleness follows each stage's own settings, the weekly schedule and the
automation sensor request only what is stale, asset checks pass on good data and the blocking P@1
check stops a regression, the DuckDB run history can be listed and compared, and the code
location validates from the command line.

All on a tiny synthetic dataset (seconds), with a persistent temp instance per test (schedule
contexts need one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    build_schedule_context,
    evaluate_automation_conditions,
)

from xmc_assets.automation import (
    AUTOMATION_SENSOR_NAME,
    SCHEDULE_NAME,
    stale_or_missing,
    stale_resolver,
    stale_selection,
)
from xmc_assets.definitions import JOB_NAME, build_defs, defs
from xmc_assets.partitions import dataset_partitions
from xmc_assets.resources import ArtifactStore, DataRoot, EvaluationDB, XmcSettings
from xmc_core import results_db
from xmc_core.cli import main as xmc_main

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "tiny"
ORDER = ["corpus", "tfidf", "label_embeddings", "label_tree", "disentangled_tree", "rankers", "calibration", "metrics"]
KEYS = [AssetKey(name) for name in ORDER]
BASE = {"tree": {"max_leaf_size": 8}}  # 60 labels → a real two-level tree of 8 leaves
CHECKS = {"no_empty_label_rows", "every_label_in_tree", "leaf_cluster_sizes", "copies_within_bounds", "copies_added",
          "p1_no_regression"}


@pytest.fixture
def env(tmp_path):
    from xmc_core.synth import SynthParams, write_synth

    write_synth(tmp_path / "data" / DATASET, SynthParams(n_labels=60, n_train=400, n_test=150, n_features=500))
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions(dataset_partitions.name, [DATASET])
        resources = {
            "data_root": DataRoot(path=str(tmp_path / "data"), synthetic_dir=str(tmp_path / "synthetic")),
            "artifacts": ArtifactStore(base_dir=str(tmp_path / "artifacts")),
            "evaluation_db": EvaluationDB(path=str(tmp_path / "xmc.duckdb")),
        }
        yield instance, resources, tmp_path / "xmc.duckdb"


def _defs(resources, overrides: dict | None = None, **settings):
    params = json.dumps({**BASE, **(overrides or {})})
    return build_defs(XmcSettings(params_json=params, **settings), resources)


def _run(definitions, instance, selection=None, raise_on_error=True):
    return definitions.resolve_job_def(JOB_NAME).execute_in_process(
        partition_key=DATASET, instance=instance, asset_selection=selection, raise_on_error=raise_on_error
    )


def _materialized_in_log(instance, run_id) -> list[str]:
    """Asset keys materialized by a run, read back from the instance's event log."""
    records = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    return [r.dagster_event.asset_key.to_user_string() for r in records]


def _checks(result) -> dict[str, bool]:
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


def test_ranker_settings_change_makes_only_rankers_and_metrics_stale(env):
    instance, resources, db = env
    first_defs = _defs(resources)
    first = _run(first_defs, instance)
    assert first.success
    assert _materialized_in_log(instance, first.run_id) == ORDER
    assert _checks(first) == {name: True for name in CHECKS}  # good data: every check passes
    meta = {node: first.asset_materializations_for_node(node)[0].metadata for node in ("tfidf", "label_tree", "metrics")}
    assert meta["metrics"]["metrics_at_k"].value.startswith("![P@k](data:image/png;base64,")
    assert meta["label_tree"]["depth"].value == 2 and meta["tfidf"]["vocab_size"].value == 500
    assert "settings_hash" in meta["label_tree"]
    assert stale_or_missing(instance, first_defs.resolve_asset_graph(), DATASET, KEYS) == set()
    automation_cursor = evaluate_automation_conditions(first_defs, instance).cursor

    # Only the ranker settings change (a reload of the code location with other settings).
    new_defs = _defs(resources, {"ranker": {"Cp": 0.5, "threshold": 0.05}}, p1_margin=100.0)
    versions = {s.key.to_user_string(): s.code_version for s in new_defs.resolve_all_asset_specs()}
    old_versions = {s.key.to_user_string(): s.code_version for s in first_defs.resolve_all_asset_specs()}
    assert {k for k in ORDER if versions[k] != old_versions[k]} == {"rankers"}
    assert stale_or_missing(instance, new_defs.resolve_asset_graph(), DATASET, KEYS) == {AssetKey("rankers")}

    # The automation sensor's conditions request rankers (code version changed), then calibration and metrics (eager).
    evaluation = evaluate_automation_conditions(new_defs, instance, cursor=automation_cursor)
    requested = {k.to_user_string() for k in KEYS if evaluation.get_num_requested(k)}
    assert requested == {"rankers", "calibration", "metrics"}

    # The weekly schedule asks for exactly the stale assets and what follows them, per partition.
    schedule = new_defs.resolve_schedule_def(SCHEDULE_NAME)
    with build_schedule_context(instance=instance, repository_def=new_defs.get_repository_def()) as context:
        requests = schedule(context)
    [request] = requests
    assert request.partition_key == DATASET
    assert [k.to_user_string() for k in request.asset_selection] == ["rankers", "calibration", "metrics"]

    second = _run(new_defs, instance, selection=request.asset_selection)
    assert second.success
    assert _materialized_in_log(instance, second.run_id) == ["rankers", "calibration", "metrics"]
    assert _checks(second) == {"p1_no_regression": True}
    assert stale_or_missing(instance, new_defs.resolve_asset_graph(), DATASET, KEYS) == set()
    with build_schedule_context(instance=instance, repository_def=new_defs.get_repository_def()) as context:
        assert not getattr(schedule(context), "run_requests", None)  # a SkipReason: nothing stale

    # Each settings section invalidates its own stage and, for the schedule, what follows (nothing
    # upstream); a speed-only key (threads) invalidates nothing. Asked of the same instance, no run.
    ranker_change = {"ranker": {"Cp": 0.5, "threshold": 0.05}}
    for overrides, settings, stale, selection in (
        ({**ranker_change, "tree": {"max_leaf_size": 16}}, {}, {"label_tree"}, ORDER[3:]),
        ({**ranker_change, "pred": {"beam_size": 3}}, {}, {"rankers"}, ORDER[5:]),
        ({**ranker_change, "disentangle": {"max_copies": 2}}, {}, {"disentangled_tree", "rankers"}, ORDER[4:]),
        (ranker_change, {"max_rows": 100}, {"corpus"}, ORDER),
        ({"ranker": {**ranker_change["ranker"], "threads": 1}, "tree": {**BASE["tree"], "threads": 1}}, {}, set(), []),
    ):
        graph = _defs(resources, overrides, p1_margin=100.0, **settings).resolve_asset_graph()
        resolver = stale_resolver(instance, graph)
        assert stale_or_missing(instance, graph, DATASET, KEYS, resolver) == {AssetKey(k) for k in stale}, overrides
        assert [k.to_user_string() for k in stale_selection(instance, graph, DATASET, KEYS, resolver)] == selection

    # The check of the second run compared it with the first (the accepted one), by P@1 from DuckDB.
    p1_of = {r["run_id"]: r["p@1"] for r in results_db.list_runs(db).iter_rows(named=True)}
    [check] = second.get_asset_check_evaluations()
    assert check.metadata["accepted_run_id"].value == first.run_id
    assert check.metadata["accepted_p@1"].value == pytest.approx(p1_of[first.run_id])
    assert check.metadata["delta"].value == pytest.approx(p1_of[second.run_id] - p1_of[first.run_id])

    # Two runs → two sets of rows in `evaluation`, listed and compared from DuckDB and the CLI.
    rows = results_db.read_evaluation(db)
    assert sorted(rows["run_id"].unique()) == sorted([first.run_id, second.run_id])
    assert rows.filter(rows["run_id"] == first.run_id).height == rows.filter(rows["run_id"] == second.run_id).height
    runs = results_db.list_runs(db)
    assert runs["run_id"].to_list() == [first.run_id, second.run_id]
    assert runs.columns == ["run_id", "dataset", "model", "split", "created_at", "p@1", "p@3", "p@5"]
    diff = results_db.compare_runs(db, first.run_id, second.run_id)
    p1 = diff.filter((diff["metric"] == "p") & (diff["k"] == 1)).row(0, named=True)
    assert p1["delta"] == pytest.approx(p1["b"] - p1["a"]) and p1["a"] == pytest.approx(runs["p@1"][0])
    assert [r["run_id"] for r in results_db.read_accepted_runs(db).iter_rows(named=True)] == [
        first.run_id, second.run_id]


def test_blocking_check_fails_when_p1_drops(env):
    instance, resources, db = env
    first = _run(_defs(resources), instance)
    assert first.success and _checks(first)["p1_no_regression"]

    # A much worse model: one flat cluster, tiny Cp, strong pruning.
    worse_defs = _defs(resources, {"tree": {"max_leaf_size": 100000}, "ranker": {"Cp": 0.001, "Cn": 0.001}})
    worse = _run(worse_defs, instance, selection=[AssetKey("label_tree"), AssetKey("disentangled_tree"), AssetKey("rankers"), AssetKey("calibration"), AssetKey("metrics")],
                 raise_on_error=False)
    assert not worse.success  # the blocking check fails the run
    evaluation = [e for e in worse.get_asset_check_evaluations() if e.asset_check_key.name == "p1_no_regression"][0]
    assert not evaluation.passed
    assert evaluation.metadata["delta"].value < -1.0
    accepted = results_db.read_accepted_runs(db)
    assert accepted["run_id"].to_list() == [first.run_id]  # the regression is not accepted
    # It compared the two runs' P@1 as DuckDB has them, with the documented default margin of 1 point.
    p1_of = {r["run_id"]: r["p@1"] for r in results_db.list_runs(db).iter_rows(named=True)}
    assert evaluation.metadata["accepted_run_id"].value == first.run_id
    assert evaluation.metadata["delta"].value == pytest.approx(p1_of[worse.run_id] - p1_of[first.run_id])
    assert evaluation.metadata["margin"].value == 1.0

    # The margin is the allowed drop, against the latest accepted run of the same max_rows slice
    # (re-evaluating the stored model gives the worse run's P@1 again): 0.9 points below passes
    # and becomes the accepted run, whatever another slice scored ...
    w = p1_of[worse.run_id]
    results_db.record_accepted_run(db, DATASET, "fake-close", w + 0.9)
    results_db.record_accepted_run(db, DATASET, "other-slice", 100.0, max_rows=50)
    close = _run(_defs(resources), instance, selection=[AssetKey("metrics")], raise_on_error=False)
    assert close.success and _checks(close) == {"p1_no_regression": True}
    assert results_db.read_accepted_runs(db)["run_id"].to_list()[-1] == close.run_id
    # ... 1.1 points below fails the run and is not accepted.
    results_db.record_accepted_run(db, DATASET, "fake-far", w + 1.1)
    again = _run(_defs(resources), instance, selection=[AssetKey("metrics")], raise_on_error=False)
    assert not again.success and _checks(again) == {"p1_no_regression": False}
    assert results_db.read_accepted_runs(db)["run_id"].to_list()[-1] == "fake-far"


def test_code_location_has_schedule_sensors_policies_and_checks():
    assert defs.resolve_schedule_def(SCHEDULE_NAME).job_name == JOB_NAME
    sensor = defs.resolve_sensor_def(AUTOMATION_SENSOR_NAME)
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert defs.resolve_sensor_def("dataset_folders").default_status == DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    for key in KEYS:
        node = graph.get(key)
        assert node.code_version and node.automation_condition is not None, key
        assert node.backfill_policy is not None and node.backfill_policy.max_partitions_per_run == 1, key
    checks = {k.name for k in defs.resolve_job_def(JOB_NAME).asset_layer.asset_graph.asset_check_keys}
    assert checks == CHECKS
    assert graph.get_check_spec(next(k for k in graph.asset_check_keys if k.name == "p1_no_regression")).blocking


def test_cli_runs_lists_and_compares(tmp_path, capsys):
    db = tmp_path / "xmc.duckdb"
    for run_id, p1 in (("run-aaaa", 80.0), ("run-bbbb", 82.5)):
        results_db.append_evaluation(db, run_id, "ds", "xr-linear", "test",
                                     {"p": {1: p1, 3: 60.0, 5: 50.0}, "ndcg": {1: p1}}, {})
    assert xmc_main(["runs", "--db", str(db)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run_id", "dataset", "model", "split", "created_at", "p@1", "p@3", "p@5"]
    assert [line.split()[0] for line in out[1:]] == ["run-aaaa", "run-bbbb"]
    assert xmc_main(["runs", "--db", str(db), "--compare", "run-a", "run-b", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == {"metric": "p", "k": 1, "a": 80.0, "b": 82.5, "delta": 2.5}
    assert xmc_main(["runs", "--db", str(db), "--compare", "run-", "run-b"]) == 2  # ambiguous prefix
    assert "matches 2 runs" in capsys.readouterr().err


def test_definitions_validate_from_the_command_line(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr
