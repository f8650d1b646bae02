"""Batch predictions: new documents scored with the last accepted model of their dataset.

Incoming batches are text files, one document per line, dropped under the incoming folder as
`<incoming>/<dataset>/<batch>.txt`. The `incoming_batches` sensor adds one partition per new file
(key "<dataset>/<batch>") and requests its run; `batch_predictions` scores it: on Ray actors when
the `ray_engine` resource is enabled (`xmc_core.engine_ray.predict_files_ray`), else in the run's
process, in the same Parquet format (`xmc_core.batch`) under the artifact store.

"Accepted" is the `p1_no_regression` check's verdict: the model folder of a dataset is used only
when the run that wrote it is the dataset's last accepted run in DuckDB (`accepted_runs`), so a
model that regressed never scores new documents.
"""

import json
import time
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    sensor,
)
from dagster import ConfigurableResource

from xmc_core import results_db
from xmc_core.folders import atomic_dir
from xmc_core.model import load_model
from xmc_core.textio import text_lines

from .resources import ArtifactStore, EvaluationDB, RayEngineResource, partition_key_problem, resolve_path

batch_partitions = DynamicPartitionsDefinition(name="incoming_batch")


class IncomingBatches(ConfigurableResource):
    """The folder new documents arrive in: `<root>/<dataset>/<batch>.txt`, one document per line."""

    root: str = "data/incoming"

    def folder(self) -> Path:
        return resolve_path(self.root)

    def scan(self) -> list[str]:
        """Partition keys "<dataset>/<batch>" of the batch files there (sorted); names that cannot
        be partition keys are left out."""
        root = self.folder()
        if not root.is_dir():
            return []
        keys = []
        for f in sorted(root.glob("*/*.txt")):
            key = f"{f.parent.name}/{f.stem}"
            if partition_key_problem(key) is None:
                keys.append(key)
        return keys

    def path(self, key: str) -> Path:
        dataset, _, batch = key.partition("/")
        return self.folder() / dataset / f"{batch}.txt"


@sensor(
    name="incoming_batches",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="Adds an `incoming_batch` partition for every new <incoming>/<dataset>/<batch>.txt and runs "
                "`batch_predictions` on it.",
    asset_selection=["batch_predictions"],
)
def incoming_batches_sensor(context: SensorEvaluationContext, incoming: IncomingBatches):
    known = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    new = [k for k in incoming.scan() if k not in known]
    if not new:
        return SkipReason(f"no new batch files under {incoming.folder()}")
    return SensorResult(
        run_requests=[RunRequest(partition_key=k, run_key=k) for k in new],
        dynamic_partitions_requests=[batch_partitions.build_add_request(new)],
    )


@asset(
    partitions_def=batch_partitions,
    group_name="serving",
    code_version="1",
    kinds={"python", "parquet", "ray"},
    description="Label predictions (Parquet: doc, labels, scores) of one incoming batch, by the dataset's last "
                "accepted model; on Ray actors when the ray_engine resource is enabled.",
)
def batch_predictions(context: AssetExecutionContext, artifacts: ArtifactStore, evaluation_db: EvaluationDB,
                      incoming: IncomingBatches, ray_engine: RayEngineResource) -> MaterializeResult:
    key = context.partition_key
    dataset, _, batch = key.partition("/")
    src = incoming.path(key)
    if not src.is_file():
        raise Failure(description=f"batch {key!r}: {src} is missing")
    model_dir = artifacts.model_dir(dataset)
    if not (model_dir / "params.json").is_file():
        raise Failure(description=f"batch {key!r}: dataset {dataset!r} has no model; materialize `rankers` and "
                                  "`metrics` of its partition first")
    info = json.loads((model_dir / "params.json").read_text()).get("info", {})
    accepted = results_db.last_accepted_run(evaluation_db.db_path(), dataset, max_rows=info.get("max_rows"))
    if accepted is None or accepted["run_id"] != info.get("run_id"):
        raise Failure(description=(
            f"batch {key!r}: the model of {dataset!r} (run {str(info.get('run_id'))[:8]}) is not its last accepted "
            f"run ({'none yet' if accepted is None else accepted['run_id'][:8]}); materialize `metrics` and pass "
            "p1_no_regression first"))
    texts = text_lines(src.read_bytes(), str(src))
    out = artifacts.root() / dataset / "batch_predictions" / batch
    t0 = time.perf_counter()
    engine = ray_engine.engine()
    if engine is not None:
        from xmc_core.engine_ray import predict_files_ray, ray_session

        from xmc_core.batch import split_shards

        # four shards per actor: the actors stay busy while the last shards are written
        shards = split_shards(texts, max(1, -(-len(texts) // (4 * ray_engine.actors))))
        with ray_session(ray_engine.address):
            res = predict_files_ray(model_dir, shards, out, n_actors=ray_engine.actors)
        files = res["files"]
    else:
        from xmc_core.batch import predict_shard

        model = load_model(model_dir)
        with atomic_dir(out, kind="predictions") as tmp:
            predict_shard(model, texts, tmp / "part-00000.parquet", 0)
        files = [str(out / "part-00000.parquet")]
    seconds = time.perf_counter() - t0
    context.log.info(f"{len(texts)} documents of {key} in {seconds:.1f}s")
    return MaterializeResult(metadata={
        "n_docs": len(texts),
        "seconds": seconds,
        "docs_per_s": len(texts) / seconds if seconds > 0 else 0.0,
        "engine": "ray" if engine is not None else "local",
        "model_run_id": str(info.get("run_id")),
        "output": MetadataValue.path(str(out)),
        "shards": len(files),
    })
