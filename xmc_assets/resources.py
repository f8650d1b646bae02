"""Dagster resources of the xmc code location: where data comes from, where artifacts go, the
evaluation history, and the one settings object a run trains with.

Relative paths are resolved against the repository root (not the current directory), so
`dagster dev`, `python -m xmc_assets.main` and pytest all see the same folders.
"""

from __future__ import annotations

import functools
import io
import json
import os
import uuid
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import polars as pl
import scipy.sparse as smat
from dagster import ConfigurableResource, Failure

from xmc_core import results_db
from xmc_core.data import DataFormatError, detect_layout
from xmc_core.folders import ARTIFACTS, MARKER, folder_kind, mark
from xmc_core.model import XRLinearParams
from xmc_core.textio import is_invisible

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = "../shared/data"
DATA_ROOT_ENV = "XMC_DATA_ROOT"


def resolve_path(path: str | os.PathLike) -> Path:
    """`path` as an absolute path; relative paths are taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


# What a partition key may not hold: Dagster rejects "..." (a range in the UI) and control
# characters (they do not display); the UI's partition selection also splits keys on "," and
# reads "[...]" as a range, so such a key can be neither selected nor backfilled (dagster#15105,
# dagster#32183).
_KEY_SEPARATORS = ((",", "',' separates keys in the Dagster UI's partition selection"),
                   ("...", "'...' marks a range of keys in the Dagster UI"),
                   ("[", "'[' opens a range of keys in the Dagster UI"),
                   ("]", "']' closes a range of keys in the Dagster UI"))


def partition_key_problem(name: str) -> str | None:
    """Why folder `name` cannot be a `dataset` partition key, or None when it can."""
    for sub, why in _KEY_SEPARATORS:
        if sub in name:
            return why
    ctrl = next((ch for ch in name if is_invisible(ch)), None)
    if ctrl is not None:
        return f"it holds U+{ord(ctrl):04X}, a control character that Dagster rejects in partition keys"
    if name != name.strip():
        return "it starts or ends with white space"
    return None


def scan_dataset_folders(root: Path) -> tuple[list[str], dict[str, str]]:
    """The sub-folders of `root` that hold a dataset layout `load_dataset` reads: (names usable as
    partition keys, {name: why not} for the others)."""
    if not root.is_dir():
        return [], {}
    names, skipped = [], {}
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            detect_layout(child)  # file-existence checks only: cheap enough for every load
        except DataFormatError:
            continue
        problem = partition_key_problem(child.name)
        if problem is None:
            names.append(child.name)
        else:
            skipped[child.name] = problem
    return names, skipped


def dataset_folders(root: Path) -> list[str]:
    """Names of the sub-folders of `root` that hold a dataset and can be partition keys."""
    return scan_dataset_folders(root)[0]


class DataRoot(ConfigurableResource):
    """Where dataset folders live; each folder is one `dataset` partition.

    path: explicit folder; empty means `$XMC_DATA_ROOT`, else `../shared/data` (repo-relative).
    synthetic_dir: generated datasets (`xmc_assets.main` writes one there when the data root has
        none); searched after `path`, so their partitions also resolve from the UI.
    """

    path: str = ""
    synthetic_dir: str = "data/synthetic"

    def root(self) -> Path:
        return resolve_path(self.path or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)

    def synthetic_root(self) -> Path:
        return resolve_path(self.synthetic_dir)

    def scan(self) -> tuple[list[str], dict[str, str]]:
        """(dataset names: the partitions, data root first, then synthetic datasets not shadowed
        by one of the same name; {folder path: why} for dataset folders whose name cannot be a
        partition key: they are not partitions, rename them to use them)."""
        names, skipped = [], {}
        for root in (self.root(), self.synthetic_root()):
            found, bad = scan_dataset_folders(root)
            names += [n for n in found if n not in names]
            skipped.update({str(root / n): why for n, why in bad.items()})
        return names, skipped

    def dataset_names(self) -> list[str]:
        return self.scan()[0]

    def dataset_dir(self, name: str) -> Path:
        """The folder of dataset `name`; a clear Failure when there is none (e.g. a partition key
        added for a folder that was since removed, or a data root pointing elsewhere)."""
        for root in (self.root(), self.synthetic_root()):
            if (root / name).is_dir():
                return root / name
        available = ", ".join(self.dataset_names()) or "none"
        raise Failure(
            description=(
                f"dataset {name!r}: no folder {self.root() / name} (data root set by DataRoot.path, "
                f"${DATA_ROOT_ENV} or the default {DEFAULT_DATA_ROOT}) nor under {self.synthetic_root()}; "
                f"datasets found: {available}"
            )
        )


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write `path` through a temporary sibling and os.replace it into place, so a reader never
    sees a half-written artifact and a crash leaves the previous version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:  # a file handle: numpy/scipy would append ".npz" to a name
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@functools.lru_cache(maxsize=None)
def _claim_store(root: Path) -> Path:
    """`root` marked as an artifact store (once per process): a new or empty folder, one already
    marked, or this checkout's own data/artifacts from before the marker. A Failure otherwise."""
    if folder_kind(root) == ARTIFACTS:
        return root
    if os.path.lexists(root) and not root.is_dir():
        raise Failure(description=f"ArtifactStore.base_dir {root}: exists and is not a folder")
    legacy = root == REPO_ROOT / "data" / "artifacts"  # git-ignored output of this checkout
    # a concurrent run may be claiming it: its marker (or the marker's temporary name) is no content
    held = [p.name for p in root.iterdir() if not p.name.startswith(MARKER)] if root.is_dir() else []
    if held and not legacy:
        raise Failure(description=(
            f"ArtifactStore.base_dir {root}: an existing folder that xmc did not write (no {MARKER} marker; "
            f"it holds {', '.join(sorted(held)[:5])}); give a new or empty folder"))
    root.mkdir(parents=True, exist_ok=True)
    if folder_kind(root) != ARTIFACTS:
        mark(root, ARTIFACTS)
    return root


class ArtifactStore(ConfigurableResource):
    """Heavy artifacts as files: `<base_dir>/<dataset>/<asset>/<name>`.

    Assets write here and return only metadata; downstream assets read the files back (they
    declare `deps=`), so nothing large is pickled through an IO manager.
    """

    base_dir: str = "data/artifacts"

    def root(self) -> Path:
        """The store's folder, claimed for xmc on first use (its `.xmc-folder` marker makes every
        folder below it xmc's to replace); a Failure when `base_dir` names an existing folder that
        holds something else."""
        return _claim_store(resolve_path(self.base_dir))

    def folder(self, dataset: str, asset: str) -> Path:
        """The folder of one asset for one dataset partition (created)."""
        folder = self.root() / dataset / asset
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def path(self, dataset: str, asset: str, name: str) -> Path:
        return self.root() / dataset / asset / name

    def existing(self, dataset: str, asset: str, name: str) -> Path:
        """Path of an artifact that must exist; says which asset to materialize when it does not."""
        p = self.path(dataset, asset, name)
        if not p.exists():
            raise Failure(
                description=f"{p} is missing: materialize asset {asset!r} for partition {dataset!r} first"
            )
        return p

    def model_dir(self, dataset: str) -> Path:
        """The model folder of a dataset (loads without Dagster: `xmc_core.model.load_model(path)`)."""
        return self.root() / dataset / "model"

    # sparse matrices -------------------------------------------------------------------------
    def write_sparse(self, dataset: str, asset: str, name: str, M) -> Path:
        M = smat.csr_matrix(M)
        return _atomic_write(self.path(dataset, asset, name), lambda fh: smat.save_npz(fh, M))

    def read_sparse(self, dataset: str, asset: str, name: str) -> smat.csr_matrix:
        return smat.csr_matrix(smat.load_npz(self.existing(dataset, asset, name)))

    # plain arrays (npz) ----------------------------------------------------------------------
    def write_arrays(self, dataset: str, asset: str, name: str, arrays: dict[str, np.ndarray]) -> Path:
        return _atomic_write(self.path(dataset, asset, name), lambda fh: np.savez(fh, **arrays))

    def read_arrays(self, dataset: str, asset: str, name: str) -> dict[str, np.ndarray]:
        with np.load(self.existing(dataset, asset, name)) as z:
            return {k: z[k] for k in z.files}

    # tables, texts and small JSON -------------------------------------------------------------
    def write_frame(self, dataset: str, asset: str, name: str, frame: pl.DataFrame) -> Path:
        return _atomic_write(self.path(dataset, asset, name), frame.write_parquet)

    def read_frame(self, dataset: str, asset: str, name: str) -> pl.DataFrame:
        return pl.read_parquet(self.existing(dataset, asset, name))

    def write_texts(self, dataset: str, asset: str, name: str, texts: list[str]) -> Path:
        frame = pl.DataFrame({"text": list(texts)}, schema={"text": pl.Utf8})
        return self.write_frame(dataset, asset, name, frame)

    def read_texts(self, dataset: str, asset: str, name: str) -> list[str]:
        return self.read_frame(dataset, asset, name)["text"].to_list()

    def write_json(self, dataset: str, asset: str, name: str, obj) -> Path:
        data = json.dumps(obj, indent=2, default=str).encode()
        return _atomic_write(self.path(dataset, asset, name), lambda fh: fh.write(data))

    def read_json(self, dataset: str, asset: str, name: str):
        return json.loads(self.existing(dataset, asset, name).read_text())

    def remove(self, dataset: str, asset: str, name: str) -> None:
        """Drop a stale artifact (e.g. texts left by an earlier layout of the same dataset)."""
        self.path(dataset, asset, name).unlink(missing_ok=True)


class EvaluationDB(ConfigurableResource):
    """The DuckDB file with the append-only `evaluation` history (short-lived connections)."""

    path: str = "data/xmc.duckdb"

    def db_path(self) -> Path:
        return resolve_path(self.path)

    def append_evaluation(self, **kwargs) -> int:
        return results_db.append_evaluation(self.db_path(), **kwargs)

    def read_evaluation(self, run_id: str | None = None) -> pl.DataFrame:
        return results_db.read_evaluation(self.db_path(), run_id)

    def p_at_k_table(self, run_id: str) -> pl.DataFrame:
        return results_db.p_at_k_table(self.db_path(), run_id)


class XmcSettings(ConfigurableResource):
    """The one training setting of a run, shared by every asset so they cannot disagree.

    params_json: XRLinearParams overrides as a JSON object, e.g. '{"ranker": {"Cp": 2}}', applied
        over the preset.
    preset: a name of `xmc_core.presets.PRESETS`: "default" (the fast single model), "accurate"
        (an ensemble of 3 trees), "sets" (Cp = Cn = 3, for calibrated label sets) or
        "accurate-text"; the code location reads it from XMC_PRESET.
    max_rows: read only the first N documents of each split (quick runs and tests).
    p1_margin: the blocking check on `metrics` fails when P@1 falls more than this many points
        below the last accepted run of the dataset (same max_rows slice).
    calibration_json: CalibrationParams overrides as a JSON object (the `calibration` asset),
        e.g. '{"max_set_size": 10}'.
    """

    params_json: str = "{}"
    preset: str = "default"
    max_rows: Optional[int] = None
    p1_margin: float = 1.0
    calibration_json: str = "{}"

    def calibration_params(self):
        """The `calibration` asset's CalibrationParams; Failure (one line) on a bad value."""
        from xmc_core.calibration import CalibrationParams

        try:
            overrides = json.loads(self.calibration_json or "{}")
            return CalibrationParams.from_dict(overrides if isinstance(overrides, dict) else None)
        except json.JSONDecodeError as e:
            raise Failure(description=f"XmcSettings.calibration_json: invalid JSON ({e.msg} at char {e.pos})") from None
        except (TypeError, ValueError) as e:
            raise Failure(description=f"XmcSettings.calibration_json: {e}") from None

    def params(self) -> XRLinearParams:
        try:
            overrides = json.loads(self.params_json or "{}")
        except json.JSONDecodeError as e:
            raise Failure(description=f"XmcSettings.params_json: invalid JSON ({e.msg} at char {e.pos})") from None
        if not isinstance(overrides, dict):
            raise Failure(description="XmcSettings.params_json: expected a JSON object")
        from xmc_core.presets import preset_overrides

        try:
            overrides = preset_overrides(self.preset, overrides)
        except ValueError as e:
            raise Failure(description=f"XmcSettings.preset: {e}") from None
        try:
            return XRLinearParams().merged(overrides)
        except (TypeError, ValueError) as e:
            raise Failure(description=f"XmcSettings.params_json: {e}") from None


class XTransformerSettings(ConfigurableResource):
    """Settings of the XR-Transformer assets (`xmc_assets.transformer_assets`).

    params_json: XTransformerParams overrides as a JSON object, e.g.
        '{"finetune": {"steps_per_level": 50}, "encoder": {"name": "/models/my-bert"}}'. The
        `tfidf` and `pifa` sections come from XmcSettings (the `tfidf` asset is shared).
    """

    params_json: str = "{}"

    def params(self, xmc: "XmcSettings"):
        from xmc_core.xtransformer import XTransformerParams

        try:
            overrides = json.loads(self.params_json or "{}")
        except json.JSONDecodeError as e:
            raise Failure(description=f"XTransformerSettings.params_json: invalid JSON ({e.msg} at char {e.pos})") from None
        if not isinstance(overrides, dict):
            raise Failure(description="XTransformerSettings.params_json: expected a JSON object")
        shared_sections = sorted({"tfidf", "pifa"} & set(overrides))
        if shared_sections:
            raise Failure(description=f"XTransformerSettings.params_json: {shared_sections} belong to XmcSettings "
                                      "(the tfidf and label_embeddings assets are shared by both methods)")
        shared = xmc.params()
        try:
            params = (XTransformerParams()
                      .merged({"tfidf": shared.tfidf.to_dict(), "pifa": shared.pifa.to_dict()})
                      .merged(overrides))
            params.check_lengths()  # against the encoder's positions, before any step runs
            return params
        except (TypeError, ValueError) as e:
            raise Failure(description=f"XTransformerSettings.params_json: {e}") from None


class RayEngineResource(ConfigurableResource):
    """Where the `rankers` asset trains and `batch_predictions` scores: in the run's process
    (enabled False, the default) or on a Ray cluster (`xmc_core.engine_ray`).

    Ours rather than the `dagster-ray` library's: xmc needs a Ray to join, not a cluster whose
    lifecycle Dagster manages, and `xmc_core` opens its own session (`engine_ray.ray_session`), so
    a CLI run and an asset run behave alike; a KubeRay cluster that dagster-ray or an operator
    starts is joined by giving its address here.

    enabled: use Ray (XMC_RAY=1 in the code location's environment sets it).
    address: cluster to join ("auto", "ray://HOST:10001"); None starts a local Ray per run.
    split_level, cpus_per_task, max_retries: `engine_ray.RayParams`.
    actors: model replicas of `batch_predictions` (Ray actors, 1 CPU each).
    """

    enabled: bool = False
    address: Optional[str] = None
    split_level: int = 1
    cpus_per_task: int = 1
    max_retries: int = 3
    actors: int = 2

    def engine(self):
        """The `engine_ray.RayEngine` of these settings, or None when not enabled."""
        if not self.enabled:
            return None
        from xmc_core.engine_ray import RayEngine, RayParams

        try:
            return RayEngine(RayParams(address=self.address, split_level=self.split_level,
                                       cpus_per_task=self.cpus_per_task, max_retries=self.max_retries))
        except ValueError as e:
            raise Failure(description=f"RayEngineResource: {e}") from None
