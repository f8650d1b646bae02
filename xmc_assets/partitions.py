"""The `dataset` partitions: one per dataset folder under the data root.

Dynamic rather than static so that a new folder becomes a partition without reloading the code
location: the sensor below adds the folders it finds, `xmc_assets.main` registers them too, and
so does every load of the code location (`register_dataset_partitions`, called by
`definitions`), so that a new instance (a fresh DAGSTER_HOME) has them for every client — the UI,
``dagster asset materialize --partition``, the schedule — before the sensor has ever run.
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
    new, skipped = unregistered_datasets(context.instance, data_root)
    for folder, why in skipped.items():  # never half-registered: named, and left out
        context.log.warning(f"dataset folder {folder!r} is not a partition: {why}; rename the folder")
    if not new:
        note = f"; skipped {len(skipped)} folder(s) whose names cannot be partition keys: " + ", ".join(
            f"{f!r} ({why})" for f, why in skipped.items()) if skipped else ""
        return SkipReason(f"no new dataset folders under {data_root.root()}{note}")
    # Only registers partitions: training on a large corpus is a decision for a person.
    return SensorResult(dynamic_partitions_requests=[dataset_partitions.build_add_request(new)])


def unregistered_datasets(instance, data_root: DataRoot) -> tuple[list[str], dict[str, str]]:
    """(the dataset folders of `data_root` that `instance` has no `dataset` partition for, in scan
    order; {folder: why} for those whose names cannot be partition keys): `DataRoot.scan` against
    the instance's partitions.

    Args:
        instance: a DagsterInstance.
        data_root: the DataRoot resource to scan.
    """
    names, skipped = data_root.scan()
    known = set(instance.get_dynamic_partitions(dataset_partitions.name))
    return [name for name in names if name not in known], skipped


def register_dataset_partitions(instance, data_root: DataRoot) -> list[str]:
    """Add a `dataset` partition for every dataset folder `data_root` holds that `instance` does
    not know yet (never removes one).

    Args:
        instance: a DagsterInstance.
        data_root: the DataRoot resource to scan.

    Returns:
        The partition keys added (list of str; empty when all were known).
    """
    new, _ = unregistered_datasets(instance, data_root)
    if new:
        instance.add_dynamic_partitions(dataset_partitions.name, new)
    return new
