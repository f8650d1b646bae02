"""The `dataset` partitions: one per dataset folder under the data root.

Dynamic rather than static so that a new folder becomes a partition without reloading the code
location: the sensor below adds the folders it finds, and `xmc_assets.main` registers them too.
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
    known = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    new = [name for name in data_root.dataset_names() if name not in known]
    if not new:
        return SkipReason(f"no new dataset folders under {data_root.root()}")
    # Only registers partitions: training on a large corpus is a decision for a person.
    return SensorResult(dynamic_partitions_requests=[dataset_partitions.build_add_request(new)])
