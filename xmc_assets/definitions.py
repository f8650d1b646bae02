"""The xmc code location: `dagster dev -w workspace.yaml` loads `defs` from here.

`build_defs(settings)` derives each asset's code version from its own section of `settings`
(see `versions.py`), so the settings of a code location decide what is stale. `defs` reads them
from the environment when the code location loads:

    XMC_PARAMS='{"ranker": {"Cp": 2}}'   XRLinearParams overrides (JSON)
    XMC_MAX_ROWS=300                     read only the first N documents of each split
    XMC_XRT_PARAMS='{"finetune": {"steps_per_level": 50}}'   XTransformerParams overrides (JSON)
    XMC_XLGEN_PARAMS='{"steps": 300, "pu_drop": 0.5}'       XLGenParams overrides (JSON)
    XMC_RAY=1  XMC_RAY_ADDRESS=auto      `rankers` and `batch_predictions` on Ray (RayEngineResource)
    XMC_REGISTER_PARTITIONS=0            do not register the dataset partitions on load

Loading it registers every dataset folder as a `dataset` partition of the $DAGSTER_HOME instance
(`register_partitions_on_load`), so a fresh instance can materialize any of them at once.
"""

from __future__ import annotations

import os

from dagster import AssetSelection, Definitions, define_asset_job

from .assets import xr_linear_assets, with_settings
from .automation import build_automation_sensor, build_weekly_retrain_schedule
from .checks import xr_linear_checks
from .partitions import dataset_folders_sensor
from .batch import IncomingBatches, batch_predictions, incoming_batches_sensor
from .resources import ArtifactStore, DataRoot, EvaluationDB, RayEngineResource, XmcSettings, XTransformerSettings
from .generative import GENERATIVE_ASSETS, XLGenSettings, with_xlgen_settings
from .transformer_assets import with_xrt_settings, xr_transformer_assets

JOB_NAME = "xr_linear_pipeline"
XRT_JOB_NAME = "xr_transformer_pipeline"
XRT_PARAMS_ENV = "XMC_XRT_PARAMS"
XLGEN_JOB_NAME = "xlgen_pipeline"
XLGEN_PARAMS_ENV = "XMC_XLGEN_PARAMS"
PARAMS_ENV = "XMC_PARAMS"
PRESET_ENV = "XMC_PRESET"
MAX_ROWS_ENV = "XMC_MAX_ROWS"
RAY_ENV = "XMC_RAY"
RAY_ADDRESS_ENV = "XMC_RAY_ADDRESS"
#: "0": the code location does not register dataset partitions when it loads
REGISTER_ENV = "XMC_REGISTER_PARTITIONS"


def settings_from_env() -> XmcSettings:
    max_rows = os.environ.get(MAX_ROWS_ENV)
    return XmcSettings(params_json=os.environ.get(PARAMS_ENV) or "{}", preset=os.environ.get(PRESET_ENV) or "default",
                       max_rows=int(max_rows) if max_rows else None)


def default_resources(settings: XmcSettings | None = None) -> dict:
    """Resource defaults (paths relative to the repo root; XMC_DATA_ROOT overrides the data root)."""
    return {
        "data_root": DataRoot(),
        "artifacts": ArtifactStore(),
        "evaluation_db": EvaluationDB(),
        "xmc_settings": settings or XmcSettings(),
        "xrt_settings": XTransformerSettings(params_json=os.environ.get(XRT_PARAMS_ENV) or "{}"),
        "xlgen_settings": XLGenSettings(params_json=os.environ.get(XLGEN_PARAMS_ENV) or "{}"),
        "ray_engine": RayEngineResource(enabled=os.environ.get(RAY_ENV, "") not in ("", "0"),
                                        address=os.environ.get(RAY_ADDRESS_ENV) or None),
        "incoming": IncomingBatches(),
    }


def build_defs(settings: XmcSettings | None = None, resources: dict | None = None) -> Definitions:
    """The code location for `settings` (their sections become the assets' code versions; the
    same object is the `xmc_settings` resource, so runs train with what staleness assumes).
    `resources` overrides other resources (tests: temp folders)."""
    settings = settings or XmcSettings()
    settings.params()  # invalid settings fail at load, with the Failure's message
    assets = with_settings(xr_linear_assets, settings)
    keys = [a.key for a in assets]
    all_resources = {**default_resources(settings), **(resources or {})}
    xrt_assets = with_xrt_settings(xr_transformer_assets, settings, all_resources["xrt_settings"])
    xrt_job = define_asset_job(
        XRT_JOB_NAME,
        selection=AssetSelection.assets(*xrt_assets),
        description=("XR-Transformer: encoder → refined_tree → rankers → calibration → metrics (needs the XR-Linear job's "
                     "corpus, tfidf and label_embeddings of the partition)."),
    )
    xlgen_assets = with_xlgen_settings(GENERATIVE_ASSETS, all_resources["xlgen_settings"])
    xlgen_job = define_asset_job(
        XLGEN_JOB_NAME,
        selection=AssetSelection.assets(*xlgen_assets),
        description="XLGen: label clusters, then model and metrics per variant (base, bcl, mcg); needs `corpus`.",
    )
    job = define_asset_job(
        JOB_NAME,
        selection=AssetSelection.assets(*assets),  # partitioned by dataset like its assets; checks included
        description=("corpus → tfidf → label_embeddings → label_tree → disentangled_tree → rankers → calibration → metrics (and their checks). "
                     "Launch a backfill over all datasets from the asset graph: 'Materialize all' → all partitions."),
    )
    return Definitions(
        assets=assets + xrt_assets + xlgen_assets + [batch_predictions],
        asset_checks=xr_linear_checks,
        jobs=[job, xrt_job, xlgen_job],
        schedules=[build_weekly_retrain_schedule(JOB_NAME, keys)],
        sensors=[dataset_folders_sensor, build_automation_sensor(keys), incoming_batches_sensor],
        resources=all_resources,
    )


def register_partitions_on_load() -> list[str]:
    """Register the data root's dataset folders as `dataset` partitions of the instance in
    $DAGSTER_HOME when the code location loads, so that a fresh instance has them for every
    client (UI, `dagster asset materialize --partition`, schedule) without waiting for the sensor.

    Nothing without DAGSTER_HOME (an ephemeral instance lives only in its own process) or with
    XMC_REGISTER_PARTITIONS=0; a failure (a locked or read-only instance) is a warning, never a
    failed load. Returns the keys added.
    """
    import warnings

    if not os.environ.get("DAGSTER_HOME") or os.environ.get(REGISTER_ENV, "1") == "0":
        return []
    try:
        from dagster import DagsterInstance

        from .partitions import register_dataset_partitions

        return register_dataset_partitions(DagsterInstance.get(), DataRoot())
    except Exception as e:  # noqa: BLE001 - the sensor registers them later anyway
        warnings.warn(f"xmc: dataset partitions not registered on load ({type(e).__name__}: {e}); the "
                      "dataset_folders sensor or 'python -m xmc_assets.main' registers them", stacklevel=2)
        return []


defs = build_defs(settings_from_env())
register_partitions_on_load()
