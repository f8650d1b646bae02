"""Asset checks: what must hold after each stage, per dataset partition.

* `corpus`      `no_empty_label_rows` (WARN): documents without any label after reading (count).
* `label_tree`  `every_label_in_tree`: each label sits in exactly one leaf cluster.
* `label_tree`  `leaf_cluster_sizes`: leaf clusters hold at most `max_leaf_size` labels and are
                balanced (largest − smallest <= 1, as balanced 2-means splits give).
* `disentangled_tree` `copies_within_bounds` (blocking): the overlapping tree keeps the label
                tree's internal levels and every label's original leaf cluster, gives no label more
                than `max_copies` leaf clusters and no leaf cluster more than the size cap; without a
                `disentangle` section it is the label tree itself.
* `disentangled_tree` `copies_added` (WARN): a `disentangle` section that added no copy (a
                one-level tree, or no label's routing met `min_share` / the cap) is a no-op.
* `metrics`     `p1_no_regression` (blocking): P@1 of the run is not more than
                `XmcSettings.p1_margin` points below the last accepted run of the dataset in
                DuckDB (`accepted_runs`); when it passes, the run becomes the accepted one.

No `from __future__ import annotations`: Dagster inspects the `context` annotation.
"""

import numpy as np
import scipy.sparse as smat
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from xmc_core import results_db
from xmc_core.disentangle import copy_stats, overlap_violations
from xmc_core.tree import LabelTree

from .assets import SPLITS, corpus, disentangled_tree, label_tree, metrics
from .partitions import dataset_partitions
from .resources import ArtifactStore, EvaluationDB, XmcSettings


@asset_check(
    asset=corpus,
    name="no_empty_label_rows",
    partitions_def=dataset_partitions,
    description="Documents whose label row in Y is empty after reading (a warning: they teach nothing).",
)
def corpus_no_empty_label_rows(context: AssetCheckExecutionContext, artifacts: ArtifactStore) -> AssetCheckResult:
    dataset = context.partition_key
    info = artifacts.read_json(dataset, "corpus", "corpus.json")
    counts, totals = {}, {}
    for name in SPLITS:
        if name not in info["splits"]:
            continue
        Y = artifacts.read_sparse(dataset, "corpus", f"Y_{name}.npz")
        counts[name] = int(np.count_nonzero(np.diff(Y.indptr) == 0))
        totals[name] = int(Y.shape[0])
    empty = sum(counts.values())
    return AssetCheckResult(
        passed=empty == 0,
        severity=AssetCheckSeverity.WARN,
        description=("every document has a label" if empty == 0
                     else f"{empty} documents without labels ({', '.join(f'{k}: {v}' for k, v in counts.items())})"),
        metadata={"empty_rows": empty, **{f"empty_rows_{k}": v for k, v in counts.items()},
                  **{f"rows_{k}": v for k, v in totals.items()}},
    )


def _tree(artifacts: ArtifactStore, dataset: str) -> LabelTree:
    return LabelTree.from_arrays(artifacts.read_arrays(dataset, "label_tree", "tree.npz"))


@asset_check(
    asset=label_tree,
    name="every_label_in_tree",
    partitions_def=dataset_partitions,
    description="The leaf level assigns every label of the corpus to exactly one leaf cluster.",
)
def label_tree_every_label(context: AssetCheckExecutionContext, artifacts: ArtifactStore) -> AssetCheckResult:
    dataset = context.partition_key
    n_labels = len(artifacts.read_json(dataset, "corpus", "corpus.json")["label_names"])
    tree = _tree(artifacts, dataset)
    leaves_per_label = np.diff(smat.csr_matrix(tree.C[-1]).indptr)
    missing = int(np.count_nonzero(leaves_per_label == 0))
    multiple = int(np.count_nonzero(leaves_per_label > 1))
    passed = tree.n_labels == n_labels and missing == 0 and multiple == 0
    return AssetCheckResult(
        passed=passed,
        description=(f"all {n_labels} labels in exactly one leaf" if passed else
                     f"tree has {tree.n_labels} labels for {n_labels} in the corpus; "
                     f"{missing} without a leaf, {multiple} in several"),
        metadata={"labels_corpus": n_labels, "labels_tree": tree.n_labels,
                  "labels_without_leaf": missing, "labels_in_several_leaves": multiple},
    )


@asset_check(
    asset=label_tree,
    name="leaf_cluster_sizes",
    partitions_def=dataset_partitions,
    description="Leaf clusters hold at most tree.max_leaf_size labels and are balanced (sizes differ by <= 1).",
)
def label_tree_leaf_sizes(
    context: AssetCheckExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings
) -> AssetCheckResult:
    dataset = context.partition_key
    tree = _tree(artifacts, dataset)
    max_leaf_size = xmc_settings.params().tree.max_leaf_size
    sizes = tree.leaf_cluster_sizes()
    lo, hi = int(sizes.min()), int(sizes.max())
    flat = tree.depth == 1  # one-vs-all: a single cluster of all labels
    # Every binary split needs two labels per node, so with max_leaf_size 1 leaves hold 2.
    bound = tree.n_labels if flat else max(max_leaf_size, 2)
    within = hi <= bound
    balanced = hi - lo <= 1
    return AssetCheckResult(
        passed=within and balanced,
        description=f"leaf sizes {lo}..{hi} (bound {bound}{', flat tree' if flat else ''})",
        metadata={"leaf_clusters": int(len(sizes)), "leaf_size_min": lo, "leaf_size_max": hi,
                  "max_leaf_size": max_leaf_size, "within_bound": within, "balanced": balanced,
                  "depth": tree.depth},
    )


def _trees(artifacts: ArtifactStore, dataset: str) -> tuple[LabelTree, LabelTree]:
    after = LabelTree.from_arrays(artifacts.read_arrays(dataset, "disentangled_tree", "tree.npz"))
    return _tree(artifacts, dataset), after


@asset_check(
    asset=disentangled_tree,
    name="copies_within_bounds",
    partitions_def=dataset_partitions,
    blocking=True,
    description=("Blocking: the overlapping tree keeps the label tree's internal levels and each label's original "
                 "leaf cluster; no label in more than max_copies leaves, no leaf over the size cap "
                 "(without a disentangle section: the label tree unchanged)."),
)
def disentangled_tree_copies_within_bounds(
    context: AssetCheckExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings
) -> AssetCheckResult:
    before, after = _trees(artifacts, context.partition_key)
    broken = overlap_violations(before, after, xmc_settings.params().disentangle)
    cap, max_copies = broken.pop("cap"), broken.pop("max_copies")
    bad = {k: v for k, v in broken.items() if v}
    return AssetCheckResult(
        passed=not bad,
        description=(f"leaf clusters <= {cap} labels, labels in <= {max_copies} leaves, originals kept"
                     if not bad else "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in bad.items())),
        metadata={**broken, "cap": cap, "max_copies": max_copies,
                  "leaf_size_max_after": int(after.leaf_cluster_sizes().max())},
    )


@asset_check(
    asset=disentangled_tree,
    name="copies_added",
    partitions_def=dataset_partitions,
    description="A warning when a disentangle section is set but added no copy (a one-level tree, or none qualified).",
)
def disentangled_tree_copies_added(
    context: AssetCheckExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings
) -> AssetCheckResult:
    before, after = _trees(artifacts, context.partition_key)
    d = xmc_settings.params().disentangle
    stats = copy_stats(before, after)
    if d is None or not d.active:
        why, passed = "no disentangle section (or max_copies 1 / rounds 0): the label tree passes through", True
    elif before.depth < 2:
        why, passed = "the label tree has one level: every label is always reachable, copies cannot be added", False
    elif stats["copies_added"] == 0:
        why, passed = (f"no label's routing met min_share {d.min_share} in a cluster with room under the cap",
                       False)
    else:
        why, passed = f"{stats['copies_added']} copies for {stats['labels_with_copies']} labels", True
    return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.WARN, description=why,
                            metadata={"copies_added": stats["copies_added"],
                                      "labels_with_copies": stats["labels_with_copies"], "depth": before.depth})


def _run_p1(db_path, dataset: str, run_id: str) -> tuple[str, float] | None:
    """(run_id, P@1) of this run for the dataset, else of the dataset's latest evaluated run."""
    runs = results_db.list_runs(db_path, dataset=dataset)
    runs = runs.filter(runs["p@1"].is_not_null())
    if runs.is_empty():
        return None
    mine = runs.filter(runs["run_id"] == run_id)
    row = (mine if not mine.is_empty() else runs).row(-1, named=True)
    return row["run_id"], float(row["p@1"])


@asset_check(
    asset=metrics,
    name="p1_no_regression",
    partitions_def=dataset_partitions,
    blocking=True,
    pool="duckdb",  # writes accepted_runs: serialized with the other DuckDB writer
    description=("Blocking: P@1 must not drop more than XmcSettings.p1_margin points below the last "
                 "accepted run of the dataset (DuckDB accepted_runs); a passing run becomes the accepted one."),
)
def metrics_p1_no_regression(
    context: AssetCheckExecutionContext,
    artifacts: ArtifactStore,
    evaluation_db: EvaluationDB,
    xmc_settings: XmcSettings,
) -> AssetCheckResult:
    dataset = context.partition_key
    db = evaluation_db.db_path()
    max_rows = artifacts.read_json(dataset, "corpus", "corpus.json").get("max_rows")
    current = _run_p1(db, dataset, context.run.run_id)
    if current is None:
        return AssetCheckResult(passed=False, description=f"no evaluation of {dataset!r} in {db}")
    run_id, p1 = current
    baseline = results_db.last_accepted_run(db, dataset, max_rows=max_rows)
    margin = float(xmc_settings.p1_margin)
    metadata = {"p@1": p1, "run_id": run_id, "margin": margin,
                "max_rows": max_rows if max_rows is not None else "all",
                "duckdb": MetadataValue.path(str(db))}
    if baseline is None:
        passed, why = True, f"P@1 {p1:.2f}: first accepted run of {dataset!r}"
    else:
        delta = p1 - float(baseline["p1"])
        passed = delta >= -margin
        metadata.update({"accepted_p@1": float(baseline["p1"]), "accepted_run_id": baseline["run_id"],
                         "delta": delta})
        why = (f"P@1 {p1:.2f} vs accepted {float(baseline['p1']):.2f} (run {baseline['run_id'][:8]}): "
               f"{delta:+.2f} points, margin {margin:.2f}")
    if passed and (baseline is None or baseline["run_id"] != run_id):
        results_db.record_accepted_run(db, dataset, run_id, p1, max_rows=max_rows)
    return AssetCheckResult(passed=passed, description=why, metadata=metadata)


xr_linear_checks = [
    corpus_no_empty_label_rows,
    label_tree_every_label,
    label_tree_leaf_sizes,
    disentangled_tree_copies_within_bounds,
    disentangled_tree_copies_added,
    metrics_p1_no_regression,
]
