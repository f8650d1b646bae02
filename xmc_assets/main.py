"""Materialize the whole XR-Linear graph for one dataset partition, in-process, then print that
run's metrics as read back from DuckDB.

    python -m xmc_assets.main [--dataset reuters-21578] [--data-root DIR] [--max-rows N]
                              [--params JSON]

The run goes into a persistent Dagster instance (DAGSTER_HOME, default data/dagster_home), so a
later `dagster dev -w workspace.yaml` with the same DAGSTER_HOME shows its history. When the data
root holds no dataset folder at all, a small synthetic dataset is generated under data/synthetic/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .resources import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, REPO_ROOT, dataset_folders, resolve_path

DEFAULT_DATASET = "reuters-21578"
DEFAULT_DAGSTER_HOME = "data/dagster_home"
SYNTHETIC_DIR = "data/synthetic"
SYNTHETIC_NAME = "synth-500labels"


def _parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m xmc_assets.main", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=None, help=f"dataset folder name (default {DEFAULT_DATASET})")
    ap.add_argument("--data-root", default=None,
                    help=f"folder of dataset folders (default ${DATA_ROOT_ENV} or {DEFAULT_DATA_ROOT})")
    ap.add_argument("--max-rows", type=int, default=None, help="read only the first N documents of each split")
    ap.add_argument("--params", default="{}", help='XRLinearParams overrides as JSON, e.g. \'{"ranker": {"Cp": 2}}\'')
    from xmc_core.presets import PRESETS

    ap.add_argument("--preset", choices=tuple(PRESETS), default="default",
                    help="settings the --params apply over: default (fast single model), accurate (ensemble of 3 "
                         "trees, about 3-4x the training time), sets (less regularized rankers, Cp = Cn = 3, for "
                         "calibrated label sets) or accurate-text (the ensemble with pretrained embeddings of raw "
                         "texts)")
    return ap.parse_args(argv)


def _synthesize() -> Path:
    """A small synthetic XC-format dataset (generated once, reused afterwards)."""
    from xmc_core.synth import SynthParams, write_synth

    out = resolve_path(SYNTHETIC_DIR) / SYNTHETIC_NAME
    if SYNTHETIC_NAME not in dataset_folders(out.parent):
        write_synth(out, SynthParams(n_labels=500, n_train=3000, n_test=1000, seed=0))
    return out


def _print_table(df) -> None:
    from .metadata import frame_markdown

    print(frame_markdown(df))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.max_rows is not None and args.max_rows < 1:
        print("xmc: error: --max-rows must be >= 1", file=sys.stderr)
        return 2
    # The instance is created from DAGSTER_HOME, so it must be set before anything builds one.
    home = resolve_path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    config = home / "dagster.yaml"
    if not config.exists():  # defaults (SQLite under DAGSTER_HOME); the file silences a warning
        config.write_text("# Dagster instance of this checkout (defaults: SQLite storage in this folder).\n")

    from dagster import DagsterInstance, Failure

    from .definitions import JOB_NAME, build_defs
    from .partitions import register_dataset_partitions
    from .resources import DataRoot, EvaluationDB, XmcSettings

    try:
        XmcSettings(params_json=args.params, preset=args.preset, max_rows=args.max_rows).params()
    except Failure as e:
        print(f"xmc: error: --params: {e.description}", file=sys.stderr)
        return 2

    data_root = DataRoot(path=str(resolve_path(args.data_root)) if args.data_root else "")
    root = data_root.root()
    dataset = args.dataset or DEFAULT_DATASET
    if not dataset_folders(root):
        folder = _synthesize()
        print(f"xmc: no dataset folder under {root}; using the synthetic dataset {folder}", flush=True)
        dataset = folder.name
    available, skipped = data_root.scan()
    for folder, why in skipped.items():
        if Path(folder).name != dataset:
            print(f"xmc: skipping dataset folder {folder!r}: {why}; rename the folder to use it", file=sys.stderr)
    if dataset not in available:
        bad = next((f"{folder!r} cannot be a Dagster partition key: {why}; rename the folder"
                    for folder, why in skipped.items() if Path(folder).name == dataset), None)
        print(f"xmc: error: dataset {bad}" if bad else
              f"xmc: error: no dataset {dataset!r} under {root} or {data_root.synthetic_root()}; "
              f"available: {', '.join(available)}", file=sys.stderr)
        return 2

    instance = DagsterInstance.get()
    # every dataset folder is a partition (the sensor and each code-location load do the same)
    register_dataset_partitions(instance, data_root)

    # The settings go into the Definitions (not run config): each asset's code version is derived
    # from its section of them, so the instance knows which stages a settings change made stale.
    settings = XmcSettings(params_json=args.params, preset=args.preset, max_rows=args.max_rows)
    defs = build_defs(settings, resources={"data_root": data_root})
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    print(f"xmc: materializing {JOB_NAME} for dataset {dataset!r} (DAGSTER_HOME={home})", flush=True)
    t0 = time.perf_counter()
    result = defs.resolve_job_def(JOB_NAME).execute_in_process(
        partition_key=dataset, instance=instance, run_config=run_config, raise_on_error=False
    )
    seconds = time.perf_counter() - t0
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                data = event.step_failure_data
                if data.user_failure_data:
                    why = data.user_failure_data.description
                else:  # Dagster wraps the user's exception; its innermost cause says what went wrong
                    err = data.error
                    while err.cause is not None:
                        err = err.cause
                    why = err.message.strip()
                print(f"xmc: error: step {event.step_key} failed: {why}", file=sys.stderr)
        for check in result.get_asset_check_evaluations():
            if not check.passed:  # e.g. the blocking P@1 regression check: say why
                key = check.asset_check_key
                print(f"xmc: error: check {key.asset_key.to_user_string()}/{key.name} failed: "
                      f"{check.description}", file=sys.stderr)
        print(f"xmc: run {result.run_id} failed after {seconds:.1f}s", file=sys.stderr)
        return 1

    db = EvaluationDB()
    table = db.p_at_k_table(result.run_id)
    print(f"\nrun {result.run_id} — {dataset}, {seconds:.1f}s; metrics from {db.db_path()}:\n")
    # ranking metrics by k; the label-set and calibration numbers (k = 0) on one line of their own
    sets = table.filter(table["metric"].str.starts_with("set_") | table["metric"].is_in(["ece", "ece_raw", "brier"]))
    ranking = table.filter(table["@0"].is_null()).drop("@0") if "@0" in table.columns else table
    _print_table(ranking)
    if sets.height:
        print("\nlabel sets (micro policy) and probabilities on test: "
              + ", ".join(f"{m} {v:.2f}" for m, v in zip(sets["metric"], sets["@0"])))
    steps = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            steps[event.step_key] = event.event_specific_data.duration_ms / 1000
    print("\nstep seconds: " + json.dumps({k: round(v, 2) for k, v in steps.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
