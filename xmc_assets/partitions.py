"""The `dataset` partitions: one per dataset folder under the data root.

Dynamic rather than static so that a new folder becomes a partition without reloading the code
location: the sensor below adds the folders it finds, and `xmc_assets.main` registers them too.
A folder whose name cannot be a partition key (",", "...", "[", "]", a control character: the UI
could neither select nor backfill it) is left out and named in a warning, never half-registered.
"""

from dagster import (
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from .resources import DataRoot

dataset_partitions = DynamicPartitionsDefinition(name="dataset")


@sensor(
    name="dataset_folders",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Adds a `dataset` partition for every dataset folder under the data root (never launches runs).",
)
def dataset_folders_sensor(context: SensorEvaluationContext, data_root: DataRoot):
    names, skipped = data_root.scan()
    for folder, why in skipped.items():  # never half-registered: named, and left out
        context.log.warning(f"dataset folder {folder!r} is not a partition: {why}; rename the folder")
    known = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    new = [name for name in names if name not in known]
    if not new:
        note = f"; skipped {len(skipped)} folder(s) whose names cannot be partition keys: " + ", ".join(
            f"{f!r} ({why})" for f, why in skipped.items()) if skipped else ""
        return SkipReason(f"no new dataset folders under {data_root.root()}{note}")
    # Only registers partitions: training on a large corpus is a decision for a person.
    return SensorResult(dynamic_partitions_requests=[dataset_partitions.build_add_request(new)])
