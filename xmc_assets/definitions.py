"""The xmc code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from .assets import xr_linear_assets
from .partitions import dataset_folders_sensor
from .resources import ArtifactStore, DataRoot, EvaluationDB, XmcSettings

JOB_NAME = "xr_linear_pipeline"

xr_linear_job = define_asset_job(
    JOB_NAME,
    selection=AssetSelection.assets(*xr_linear_assets),  # partitioned by dataset like its assets
    description="corpus → tfidf → label_embeddings → label_tree → rankers → metrics for one dataset.",
)


def default_resources() -> dict:
    """Resource defaults (paths relative to the repo root; XMC_DATA_ROOT overrides the data root)."""
    return {
        "data_root": DataRoot(),
        "artifacts": ArtifactStore(),
        "evaluation_db": EvaluationDB(),
        "xmc_settings": XmcSettings(),
    }


defs = Definitions(
    assets=xr_linear_assets,
    jobs=[xr_linear_job],
    sensors=[dataset_folders_sensor],
    resources=default_resources(),
)
