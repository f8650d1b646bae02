"""Automation: the weekly retrain schedule and the declarative-automation sensor.

Why the schedule computes staleness itself (Dagster 1.13): `RunRequest(stale_assets_only=True)` is
resolved by the daemon with `CachingStaleStatusResolver.get_status(key)` *without a partition key*
(`dagster/_scheduler/stale.py`), and for a partitioned asset that answer is always FRESH; our assets
are all partitioned by dataset, so such a request would always be skipped. The schedule therefore
asks the same resolver per `dataset` partition, and also adds the descendants of what is stale:
Dagster marks a child stale only after its parent has rematerialized, so a run of the stale
assets alone (e.g. `rankers` after a ranker setting changed) would leave `metrics` behind until the
next tick.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dagster import (
    AssetKey,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from .partitions import dataset_partitions

WEEKLY_CRON = "0 3 * * 1"  # Mondays 03:00
SCHEDULE_NAME = "weekly_retrain"
AUTOMATION_SENSOR_NAME = "xmc_automation"


def stale_resolver(instance: DagsterInstance, asset_graph) -> CachingStaleStatusResolver:
    """The resolver behind the UI's "Unsynced" labels (one per evaluation: it caches)."""
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)


def stale_or_missing(
    instance: DagsterInstance, asset_graph, partition_key: str, keys: Iterable[AssetKey],
    resolver: CachingStaleStatusResolver | None = None,
) -> set[AssetKey]:
    """The `keys` whose `partition_key` partition is STALE or MISSING right now."""
    resolver = resolver or stale_resolver(instance, asset_graph)
    return {k for k in keys if resolver.get_status(k, partition_key) in (StaleStatus.STALE, StaleStatus.MISSING)}


def stale_selection(
    instance: DagsterInstance, asset_graph, partition_key: str, keys: Sequence[AssetKey],
    resolver: CachingStaleStatusResolver | None = None,
) -> list[AssetKey]:
    """What a stale-only run of `keys` for one partition must materialize: the stale or missing
    assets and, within `keys`, everything downstream of them (stale once they rematerialize).
    Topologically ordered as in `keys`."""
    stale = stale_or_missing(instance, asset_graph, partition_key, keys, resolver)
    if not stale:
        return []
    downstream = AssetSelection.assets(*stale).downstream().resolve(asset_graph)
    return [k for k in keys if k in stale or k in downstream]


def stale_run_requests(instance: DagsterInstance, asset_graph, keys: Sequence[AssetKey],
                       tags: dict | None = None) -> list[RunRequest]:
    """One RunRequest per dataset partition that has anything stale or missing."""
    resolver = stale_resolver(instance, asset_graph)
    requests = []
    for partition in instance.get_dynamic_partitions(dataset_partitions.name):
        selection = stale_selection(instance, asset_graph, partition, keys, resolver)
        if selection:
            requests.append(RunRequest(
                partition_key=partition, asset_selection=selection,
                tags={**(tags or {}), "xmc/stale": ",".join(k.to_user_string() for k in selection)},
            ))
    return requests


def build_weekly_retrain_schedule(job_name: str, keys: Sequence[AssetKey]):
    keys = list(keys)

    @schedule(
        cron_schedule=WEEKLY_CRON,
        job_name=job_name,
        name=SCHEDULE_NAME,
        default_status=DefaultScheduleStatus.STOPPED,  # training is heavy: a person turns it on
        description=("Weekly retrain: for every dataset partition, materialize only the stale or missing "
                     "assets and what follows them (the stale_assets_only equivalent for partitions)."),
    )
    def weekly_retrain(context: ScheduleEvaluationContext):
        requests = stale_run_requests(context.instance, context.repository_def.asset_graph, keys,
                                      tags={"xmc/trigger": SCHEDULE_NAME})
        return requests or SkipReason("every dataset partition is up to date (nothing stale or missing)")

    return weekly_retrain


def build_automation_sensor(keys: Sequence[AssetKey]) -> AutomationConditionSensorDefinition:
    return AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR_NAME,
        target=AssetSelection.assets(*keys),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        description="Evaluates the assets' automation conditions (eager below corpus; code version changed).",
    )
