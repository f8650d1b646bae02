"""XR-Linear as a chain of assets, one `dataset` partition per dataset folder:

    corpus → tfidf → label_embeddings → label_tree → disentangled_tree → rankers → calibration → metrics

(`disentangled_tree` passes the tree through unless the settings have a `disentangle` section.)

Each asset is thin wiring: read its settings and upstream files, call `xmc_core`, write files
through the ArtifactStore, return MaterializeResult metadata. Only `metrics` writes DuckDB.

No `from __future__ import annotations` here: Dagster inspects the `context` annotation and
rejects it as a string.
"""

import time
import warnings

import numpy as np
import scipy.sparse as smat
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from xmc_core.data import load_dataset
from xmc_core.explain import cluster_table
from xmc_core.disentangle import changes_tree, copy_stats, copy_table, disentangle_tree, matcher_recall, train_matcher
from xmc_core.label_embedding import pifa
from xmc_core.folders import remove_xmc_folder
from xmc_core.metrics import calibration_metrics
from xmc_core.model import evaluate_model, fit_rankers, holdout_calibration, load_model
from xmc_core.model_card import card_markdown, data_fingerprint, model_card
from xmc_core.sparse import l2_normalize_rows
from xmc_core.tfidf import TfidfVectorizer
from xmc_core.tree import LabelTree, build_tree

from .metadata import (
    asset_body,
    copies_markdown,
    frame_markdown,
    histogram_plot,
    label_frequency_plot,
    metrics_at_k_plot,
    reliability_plot,
)
from .partitions import dataset_partitions
from .resources import ArtifactStore, DataRoot, EvaluationDB, RayEngineResource, XmcSettings
from .versions import code_version, settings_hash

# `backfill_policy` (beta) and partitioned asset checks (preview) are what we want here; their
# per-definition warnings would only clutter every code-location load.
warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy` of function `asset`")
warnings.filterwarnings("ignore", message=r"Specifying a partitions_def on an AssetCheckSpec")

SPLITS = ("train", "test", "dev")
GROUP = "xr_linear"
MODEL_NAME = "xr-linear"

# Code versions of the default settings; `definitions.build_defs` re-derives them from the
# settings it is given (`with_settings`), so a settings change bumps only the stages it touches.
_DEFAULT_SETTINGS = XmcSettings()

# One run per dataset in a backfill: the assets read one partition key, and a failing dataset
# does not take the others down with it.
BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=1)

# Declarative automation (evaluated by the `xmc_automation` sensor):
# - a new code version (code or the asset's settings section) rematerializes the partitions that
#   exist already; a new dataset partition is never trained on its own (a person decides);
# - below `corpus`, `eager()` follows any upstream update, so a rematerialized stage pulls its
#   children along (and never runs while an upstream partition is missing or in progress).
CODE_CHANGED = (AutomationCondition.code_version_changed() & ~AutomationCondition.missing()).with_label(
    "code version changed (materialized partitions)"
)
ROOT_AUTOMATION = CODE_CHANGED
STAGE_AUTOMATION = AutomationCondition.eager() | CODE_CHANGED


def stage_asset(deps: list, kinds: set[str], description: str, automation=STAGE_AUTOMATION, **extra):
    """`@asset` with what every XR-Linear stage shares: dataset partitions, a code version derived
    from the stage's settings section, one partition per backfill run, declarative automation."""

    def decorate(fn):
        return asset(
            partitions_def=dataset_partitions,
            deps=deps,
            code_version=code_version(_DEFAULT_SETTINGS, fn.__name__),
            backfill_policy=BACKFILL_POLICY,
            automation_condition=automation,
            group_name=GROUP,
            kinds=kinds,
            description=description,
            **extra,
        )(asset_body(fn))

    return decorate


def _settings_metadata(context: AssetExecutionContext, xmc_settings: XmcSettings, name: str) -> dict:
    """Metadata `settings_hash` of the settings this step really ran with; a warning when they differ
    from those its code version was derived from (settings overridden in run config: staleness
    cannot see such a change)."""
    digest = settings_hash(xmc_settings, name)
    expected = context.assets_def.code_versions_by_key.get(context.asset_key) or ""
    if digest and not expected.endswith(f"-{digest}"):
        context.log.warning(
            f"{name}: settings of this run (hash {digest}) differ from those of the code version "
            f"{expected!r}; set them on the code location's XmcSettings so that staleness follows them"
        )
    return {"settings_hash": digest} if digest else {}


def _corpus_info(artifacts: ArtifactStore, dataset: str) -> dict:
    return artifacts.read_json(dataset, "corpus", "corpus.json")


@stage_asset(
    deps=[],
    kinds={"python", "parquet"},
    description="The dataset folder read once: label matrices Y, texts (or raw BoW X) and label names per split.",
    automation=ROOT_AUTOMATION,
)
def corpus(
    context: AssetExecutionContext, data_root: DataRoot, artifacts: ArtifactStore, xmc_settings: XmcSettings
) -> MaterializeResult:
    dataset = context.partition_key
    xmc_settings.params()  # a bad setting fails here, at the first step, not after loading
    folder = data_root.dataset_dir(dataset)
    t0 = time.perf_counter()
    ds = load_dataset(folder, splits=SPLITS, max_rows=xmc_settings.max_rows)
    present = ds.splits()
    for name in SPLITS:
        split = present.get(name)
        # Remove what an earlier materialization may have left for a split/kind not written now.
        for stale in (f"Y_{name}.npz", f"texts_{name}.parquet", f"X_{name}.npz"):
            artifacts.remove(dataset, "corpus", stale)
        if split is None:
            continue
        artifacts.write_sparse(dataset, "corpus", f"Y_{name}.npz", split.Y)
        if split.texts is not None:
            artifacts.write_texts(dataset, "corpus", f"texts_{name}.parquet", split.texts)
        else:
            artifacts.write_sparse(dataset, "corpus", f"X_{name}.npz", split.X)
    has_texts = ds.train.texts is not None
    artifacts.write_json(dataset, "corpus", "corpus.json", {
        "dataset": dataset, "source": str(folder), "layout": ds.layout, "splits": list(present),
        "has_texts": has_texts, "n_features": ds.n_features, "max_rows": xmc_settings.max_rows,
        "label_names": ds.label_names, "label_titles": ds.label_titles,
        # what a model trained on this split records as its data (`xmc info`)
        "train_fingerprint": data_fingerprint(ds.train.Y, ds.train.texts, ds.train.X if not has_texts else None),
    })

    Y = ds.train.Y
    labels_per_doc = np.diff(Y.indptr)
    label_counts = np.diff(smat.csc_matrix(Y).indptr)
    if has_texts:
        empty_text = sum(1 for t in ds.train.texts if not t.strip())
    else:
        empty_text = int(np.count_nonzero(np.diff(ds.train.X.indptr) == 0))
    if has_texts:
        features = "raw texts (TF-IDF in the tfidf asset)" + (
            f"; {ds.features_dir} present, not used (`xmc train --features matrix` uses it)" if ds.features_dir else "")
    else:
        features = "bag of words of the dataset (l2-normalized in the tfidf asset)"
    metadata = {
        "source": MetadataValue.path(str(folder)),
        "layout": ds.layout,
        "features": features,
        "labels": ds.n_labels,
        **{f"documents_{name}": split.n for name, split in present.items()},
        "avg_labels_per_doc": float(labels_per_doc.mean()) if Y.shape[0] else 0.0,
        "train_docs_without_labels": int(np.count_nonzero(labels_per_doc == 0)),
        "train_docs_empty": empty_text,
        "labels_without_train_docs": int(np.count_nonzero(label_counts == 0)),
        "max_rows": xmc_settings.max_rows if xmc_settings.max_rows is not None else "all",
        "seconds": time.perf_counter() - t0,
        "label_frequency": label_frequency_plot(label_counts),
        **_settings_metadata(context, xmc_settings, "corpus"),
    }
    return MaterializeResult(metadata=metadata)


@stage_asset(
    deps=[corpus],
    kinds={"python", "scipy"},
    description="Features X per split: TF-IDF fitted on the training texts only, or l2-normalized BoW.",
)
def tfidf(context: AssetExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings) -> MaterializeResult:
    dataset = context.partition_key
    info = _corpus_info(artifacts, dataset)
    params = xmc_settings.params()
    featurizer_dir = artifacts.path(dataset, "tfidf", "featurizer")
    t0 = time.perf_counter()
    if info["has_texts"]:
        vectorizer = TfidfVectorizer(params.tfidf)
        X = {"train": vectorizer.fit_transform(artifacts.read_texts(dataset, "corpus", "texts_train.parquet"))}
        for name in info["splits"][1:]:
            X[name] = vectorizer.transform(artifacts.read_texts(dataset, "corpus", f"texts_{name}.parquet"))
        vectorizer.save(featurizer_dir)
        kind = "tfidf"
    else:
        # Bag-of-words datasets come with their features; the model only needs unit-norm rows.
        X = {name: l2_normalize_rows(artifacts.read_sparse(dataset, "corpus", f"X_{name}.npz"))
             for name in info["splits"]}
        remove_xmc_folder(featurizer_dir, kind="featurizer")  # no text featurizer for this dataset
        kind = "l2-normalized bag of words"
    for name in SPLITS:
        artifacts.remove(dataset, "tfidf", f"X_{name}.npz")
    for name, M in X.items():
        artifacts.write_sparse(dataset, "tfidf", f"X_{name}.npz", M)
    seconds = time.perf_counter() - t0
    metadata = {
        "featurizer": kind,
        "vocab_size": int(X["train"].shape[1]),
        **{f"nnz_{name}": int(M.nnz) for name, M in X.items()},
        "avg_nnz_per_train_doc": float(X["train"].nnz / max(X["train"].shape[0], 1)),
        "seconds": seconds,
        **_settings_metadata(context, xmc_settings, "tfidf"),
    }
    return MaterializeResult(metadata=metadata)


@stage_asset(
    deps=[tfidf],
    kinds={"python", "scipy"},
    description="PIFA label embeddings Z (L × D): the normalized sum of each label's training features.",
)
def label_embeddings(
    context: AssetExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings
) -> MaterializeResult:
    dataset = context.partition_key
    params = xmc_settings.params()
    X = artifacts.read_sparse(dataset, "tfidf", "X_train.npz")
    Y = artifacts.read_sparse(dataset, "corpus", "Y_train.npz")
    t0 = time.perf_counter()
    Z = pifa(X, Y, params.pifa, threads=params.tree.threads)
    seconds = time.perf_counter() - t0
    artifacts.write_sparse(dataset, "label_embeddings", "Z.npz", Z)
    Z = smat.csr_matrix(Z)
    return MaterializeResult(metadata={
        "labels": int(Z.shape[0]),
        "dimensions": int(Z.shape[1]),
        "nnz": int(Z.nnz),
        "labels_with_zero_embedding": int(np.count_nonzero(np.diff(Z.indptr) == 0)),
        "seconds": seconds,
        **_settings_metadata(context, xmc_settings, "label_embeddings"),
    })


@stage_asset(
    deps=[label_embeddings],
    kinds={"python", "numpy"},
    description="Hierarchical balanced k-means label tree over the label embeddings.",
)
def label_tree(context: AssetExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings) -> MaterializeResult:
    dataset = context.partition_key
    params = xmc_settings.params()
    Z = artifacts.read_sparse(dataset, "label_embeddings", "Z.npz")
    t0 = time.perf_counter()
    tree = build_tree(Z, params.tree)
    seconds = time.perf_counter() - t0
    artifacts.write_arrays(dataset, "label_tree", "tree.npz", tree.to_arrays())
    sizes = tree.leaf_cluster_sizes()
    # the clusters for people: sizes, parents and their most frequent labels by title
    info = _corpus_info(artifacts, dataset)
    Y = artifacts.read_sparse(dataset, "corpus", "Y_train.npz")
    titles = info.get("label_titles") or info["label_names"]
    clusters = cluster_table(tree, titles, np.diff(smat.csc_matrix(Y).indptr))
    artifacts.write_frame(dataset, "label_tree", "clusters.parquet", clusters)
    return MaterializeResult(metadata={
        "clusters": cluster_metadata(clusters),
        "clusters_parquet": MetadataValue.path(str(artifacts.path(dataset, "label_tree", "clusters.parquet"))),
        "depth": tree.depth,
        "level_sizes": " → ".join(str(n) for n in tree.level_sizes()),
        "leaf_clusters": int(len(sizes)),
        "leaf_size_min": int(sizes.min()),
        "leaf_size_median": float(np.median(sizes)),
        "leaf_size_max": int(sizes.max()),
        "leaf_size_histogram": histogram_plot(sizes, "labels per leaf cluster", "leaf cluster sizes"),
        "seconds": seconds,
        **_settings_metadata(context, xmc_settings, "label_tree"),
    })


#: clusters listed in the label_tree asset's metadata table (all of them are in clusters.parquet)
CLUSTER_TABLE_ROWS = 300


def cluster_metadata(clusters) -> MetadataValue:
    """The label_tree asset's cluster table (top levels first, at most CLUSTER_TABLE_ROWS rows)."""
    shown = clusters.head(CLUSTER_TABLE_ROWS)
    # the names first: a wide table scrolls, and the titles are what a person reads
    columns = [TableColumn("level", "int", description="0: the root's children"),
               TableColumn("cluster", "int", description="number within its level"),
               TableColumn("labels", "int", description="labels under the cluster"),
               TableColumn("top_labels", "string", description="its most frequent labels, by title"),
               TableColumn("parent", "int", description="cluster number in the level above (-1: the root)"),
               TableColumn("train_positives", "int", description="training (document, label) pairs of its labels")]
    shown = shown.select([c.name for c in columns])
    if clusters.height == 0:  # a flat tree: the labels hang from the root
        return MetadataValue.md("no clusters: the tree is flat (every label is a child of the root)")
    return MetadataValue.table(
        records=[TableRecord(row) for row in shown.iter_rows(named=True)],
        schema=TableSchema(columns=columns),
    )


@stage_asset(
    deps=[label_tree],
    kinds={"python", "numpy"},
    description=("Label disentanglement: labels copied into the leaf clusters where the first matcher routes "
                 "their documents (settings section `disentangle`); without it, the label tree unchanged."),
)
def disentangled_tree(
    context: AssetExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings
) -> MaterializeResult:
    dataset = context.partition_key
    params = xmc_settings.params()
    tree = LabelTree.from_arrays(artifacts.read_arrays(dataset, "label_tree", "tree.npz"))
    d = params.disentangle
    t0 = time.perf_counter()
    metadata: dict = {}
    copies = None
    if not changes_tree(d, tree):
        final = tree
        metadata["pass_through"] = True
    else:
        info = _corpus_info(artifacts, dataset)
        X = artifacts.read_sparse(dataset, "tfidf", "X_train.npz")
        Y = artifacts.read_sparse(dataset, "corpus", "Y_train.npz")
        matcher = train_matcher(X, Y, tree, params.ranker, params.pred)
        final, A = disentangle_tree(X, Y, tree, matcher, d, params.ranker, params.pred, return_affinity=True)
        # corpus.json written before label titles existed has none: the table then uses names
        copies = copy_table(A, tree, final, info["label_names"], info.get("label_titles"))
        metadata["pass_through"] = False
        if "test" in info["splits"]:
            Xt = artifacts.read_sparse(dataset, "tfidf", "X_test.npz")
            Yt = artifacts.read_sparse(dataset, "corpus", "Y_test.npz")
            # the first matcher's beam: the original clusters vs any copy's cluster
            metadata["matcher_recall_before"] = matcher_recall(matcher, tree, Xt, Yt)
            metadata["matcher_recall_after"] = matcher_recall(matcher, final, Xt, Yt)
    seconds = time.perf_counter() - t0
    # a copies table left by an earlier run would describe a tree that is gone
    artifacts.remove(dataset, "disentangled_tree", "copies.parquet")
    artifacts.write_arrays(dataset, "disentangled_tree", "tree.npz", final.to_arrays())
    if copies is not None:
        path = artifacts.write_frame(dataset, "disentangled_tree", "copies.parquet", copies)
        metadata["copies_file"] = MetadataValue.path(str(path))
        metadata["copied_labels"] = MetadataValue.md(copies_markdown(copies))
    stats = copy_stats(tree, final)
    sizes = final.leaf_cluster_sizes()
    return MaterializeResult(metadata={
        **metadata,
        **stats,
        "leaf_size_min_after": int(sizes.min()),
        "leaf_size_histogram_after": histogram_plot(sizes, "labels per leaf cluster (copies counted)",
                                                    "leaf cluster sizes after disentanglement"),
        "seconds": seconds,
        **_settings_metadata(context, xmc_settings, "disentangled_tree"),
    })


@stage_asset(
    deps=[disentangled_tree],
    kinds={"python", "scipy"},
    description="Linear rankers per tree level (with the accurate preset, an ensemble of trees: the "
                "label_tree's and one per further member); saved as a model folder that loads without Dagster. "
                "With the ray_engine resource enabled, every top sub-tree's rankers are a Ray task (same model).",
)
def rankers(context: AssetExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings,
            ray_engine: RayEngineResource) -> MaterializeResult:
    dataset = context.partition_key
    params = xmc_settings.params()
    info = _corpus_info(artifacts, dataset)
    X = artifacts.read_sparse(dataset, "tfidf", "X_train.npz")
    Y = artifacts.read_sparse(dataset, "corpus", "Y_train.npz")
    tree = LabelTree.from_arrays(artifacts.read_arrays(dataset, "disentangled_tree", "tree.npz"))
    featurizer_dir = artifacts.path(dataset, "tfidf", "featurizer")
    # The model carries the fitted featurizer so that it predicts from raw text on its own.
    featurizer = TfidfVectorizer.load(featurizer_dir) if info["has_texts"] else None
    if params.ensemble is not None and params.ensemble.embedding:
        # the accurate-text preset: every member reads [TF-IDF ⊕ pretrained embedding] (the
        # label_tree asset's tree, member 0's, stays the TF-IDF one)
        from xmc_core.ensemble import embedding_block

        texts = artifacts.read_texts(dataset, "corpus", "texts_train.parquet") if info["has_texts"] else None
        try:
            X = embedding_block(X, texts, params.ensemble)
        except ValueError as e:
            raise Failure(description=f"rankers: {e}") from None

    levels: list[dict] = []
    ray_tasks: list[dict] = []

    def log(rec: dict) -> None:
        if rec.get("stage") == "rankers_level":
            levels.append(rec)
            context.log.info(f"level {rec['level']}: {rec['n_nodes']} nodes in {rec['seconds']:.1f}s")
        elif "worker_peak_rss_mb" in rec:  # engine ray: one record per task as it finishes
            ray_tasks.append(rec)
            where = (f"level {rec['level']} parents {rec['parents'][0]}..{rec['parents'][1] - 1}"
                     if rec["stage"] == "chunk" else f"{rec['stage']} {rec.get('root', rec.get('node'))}")
            context.log.info(f"Ray task {where}: {rec['n_labels']} labels in {rec['seconds']:.1f}s "
                             f"(worker peak {rec['worker_peak_rss_mb']:.0f} MiB)")

    engine = ray_engine.engine()
    t0 = time.perf_counter()
    # the tree is final: disentanglement (when set) ran in `disentangled_tree`
    try:
        model = fit_rankers(X, Y, info["label_names"], params, featurizer, tree=tree, log=log, disentangle=False,
                            engine=engine)
    except (ValueError, RuntimeError) as e:
        if engine is None:
            raise
        raise Failure(description=f"rankers on Ray: {e}") from None
    train_s = time.perf_counter() - t0
    model.set_label_counts(Y)  # for PSP@k
    if artifacts.path(dataset, "disentangled_tree", "copies.parquet").is_file():
        # the model folder says where its copies sit, as one trained by `xmc train` does
        model.copies = artifacts.read_frame(dataset, "disentangled_tree", "copies.parquet")
    model.label_titles = info.get("label_titles")
    model.info.update({"dataset": dataset, "run_id": context.run.run_id, "n_train": int(Y.shape[0]),
                       "train_s": train_s, "max_rows": info["max_rows"],
                       "data_fingerprint": info.get("train_fingerprint"), "data": info.get("source")})
    model_dir = model.save(artifacts.model_dir(dataset))
    card = model_card(model_dir)

    size = card["size_bytes"]
    level_table = MetadataValue.table(
        records=[TableRecord({"level": int(r["level"]), "nodes": int(r["n_nodes"]),
                              "seconds": round(float(r["seconds"]), 3), "nnz_W": int(r["nnz_W"])})
                 for r in levels],
        schema=TableSchema(columns=[TableColumn("level", "int"), TableColumn("nodes", "int"),
                                    TableColumn("seconds", "float"), TableColumn("nnz_W", "int")]),
    )
    return MaterializeResult(metadata={
        "model_card": MetadataValue.md(card_markdown(card)),
        "model_dir": MetadataValue.path(str(model_dir)),
        "model_sha": card["model_sha"],
        "train_seconds": train_s,
        "seconds_per_level": level_table,
        "model_bytes": size,
        "model_mb": size / 2**20,
        "n_train": int(Y.shape[0]),
        "params": MetadataValue.json(params.to_dict()),
        "engine": "ray" if engine is not None else "local",
        **({"ray_tasks": len(ray_tasks),
            "ray_worker_peak_mb": max(r["worker_peak_rss_mb"] for r in ray_tasks)} if ray_tasks else {}),
        **_settings_metadata(context, xmc_settings, "rankers"),
    })


@stage_asset(
    deps=[rankers],
    kinds={"python", "scipy"},
    description="Probabilities and label-set thresholds of the saved model (its calibration/ part), fitted on "
                "the dev split, or without one on a seeded slice of train held out from a sibling's rankers.",
)
def calibration(context: AssetExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings) -> MaterializeResult:
    dataset = context.partition_key
    info = _corpus_info(artifacts, dataset)
    cal_params = xmc_settings.calibration_params()
    model_dir = artifacts.existing(dataset, "model", "params.json").parent
    model = load_model(model_dir)
    t0 = time.perf_counter()
    if "dev" in info["splits"]:
        X_dev = artifacts.read_sparse(dataset, "tfidf", "X_dev.npz")
        Y_dev = artifacts.read_sparse(dataset, "corpus", "Y_dev.npz")
        try:
            cal = model.calibrate(X_dev, Y_dev, info["label_names"], cal_params, info={"source": "dev"})
        except ValueError as e:
            raise Failure(description=f"calibration of {dataset!r} on its dev split: {e}") from None
        P_held, Y_held = model.predict(X_dev, topk=cal_params.topk), model.align_labels(Y_dev, info["label_names"])
        source = f"dev split ({Y_dev.shape[0]} documents)"
    else:
        # the same tree; rankers of a sibling trained without the held-out slice score it
        X = artifacts.read_sparse(dataset, "tfidf", "X_train.npz")
        Y = artifacts.read_sparse(dataset, "corpus", "Y_train.npz")
        tree = LabelTree.from_arrays(artifacts.read_arrays(dataset, "disentangled_tree", "tree.npz"))
        try:
            cal = holdout_calibration(Y, info["label_names"], xmc_settings.params(), cal_params, X=X, tree=tree)
        except ValueError as e:
            raise Failure(description=f"calibration of {dataset!r}: {e}") from None
        P_held = Y_held = None
        source = (f"no dev split: {cal.info['n_docs']} training documents held out (holdout_frac "
                  f"{cal_params.holdout_frac}, seed {cal_params.seed}) from a sibling's rankers on the same tree")
    seconds = time.perf_counter() - t0
    model.calibration = cal
    folder = model.save_calibration(model_dir)
    metadata = {
        "source": source,
        "calibration_dir": MetadataValue.path(str(folder)),
        "n_docs": cal.info["n_docs"],
        "threshold_micro": float(cal.threshold),
        "labels_own_threshold": cal.info["labels_own_threshold"],
        "heldout_micro_f1": cal.info["heldout_micro_f1"],
        "heldout_macro_f1": cal.info["heldout_macro_f1"],
        "map_groups": len(cal.maps),
        "seconds": seconds,
        **_settings_metadata(context, xmc_settings, "calibration"),
    }
    if P_held is not None:  # fitted on these documents: an in-sample view, the test split's is in `metrics`
        metadata["heldout_ece"] = calibration_metrics(Y_held, cal.proba(P_held))["ece"]
    return MaterializeResult(metadata=metadata)


@stage_asset(
    deps=[calibration],
    kinds={"python", "duckdb"},
    pool="duckdb",  # the only DuckDB writer; a pool limit of 1 serializes it across runs
    description="P/R/RP/nDCG/PSP@k, label-set P/R/F1 (micro policy), ECE and Brier score of the saved model on the "
                "test split, appended to the DuckDB history; a reliability diagram.",
)
def metrics(context: AssetExecutionContext, artifacts: ArtifactStore, evaluation_db: EvaluationDB) -> MaterializeResult:
    dataset = context.partition_key
    info = _corpus_info(artifacts, dataset)
    if "test" not in info["splits"]:
        raise Failure(description=f"dataset {dataset!r} has no test split ({info['source']}); nothing to evaluate")
    # Load the saved folder (not in-memory objects): this is what a user of the model gets.
    model = load_model(artifacts.existing(dataset, "model", "params.json").parent)
    # Raw test texts go through the model's own featurizer (BoW: raw X, normalized by the model).
    inputs = (artifacts.read_texts(dataset, "corpus", "texts_test.parquet") if info["has_texts"]
              else artifacts.read_sparse(dataset, "corpus", "X_test.npz"))
    Y_test = artifacts.read_sparse(dataset, "corpus", "Y_test.npz")
    ev = evaluate_model(model, inputs, Y_test, info["label_names"])
    result = ev.metrics
    rows, table = record_evaluation(evaluation_db, context.run.run_id, dataset, model.method, ev, model.params,
                                    model_sha=model.params_sha)
    metadata = {
        "metrics": MetadataValue.md(frame_markdown(table)),
        "metrics_at_k": metrics_at_k_plot(result, dataset),
        **{f"p@{k}": float(result["p"][k]) for k in (1, 3, 5)},
        "ndcg@5": float(result["ndcg"][5]),
        **({"psp@5": float(result["psp"][5])} if "psp" in result else {}),
        "n_test": ev.n_test,
        "unseen_test_labels": ev.unseen_test_labels,
        "predict_seconds": ev.predict_s,
        **set_metadata(ev, dataset),
        "rows_appended": rows,
        "duckdb": MetadataValue.path(str(evaluation_db.db_path())),
    }
    return MaterializeResult(metadata=metadata)


def record_evaluation(evaluation_db: EvaluationDB, run_id: str, dataset: str, model_name: str, ev, params,
                      model_sha: str | None = None):
    """Append an Evaluation of the test split to DuckDB (ranking rows by k; a calibrated model's
    set and calibration numbers as rows of k = 0) and read the ranking rows back, so the metadata
    shows the history's view of the run. `model_sha` (the model folder's params.json sha) goes
    into the params JSON, so `xmc info` finds the model's last evaluation. Returns (rows
    appended, the ranking table by k)."""
    sets = ev.set_rows()
    rows = evaluation_db.append_evaluation(
        run_id=run_id, dataset=dataset, model=model_name, split="test", metrics=ev.history_metrics(),
        params={**params.to_dict(), **({"model_sha": model_sha} if model_sha else {})},
    )
    table = evaluation_db.p_at_k_table(run_id)
    table = table.filter((table["dataset"] == dataset) & ~table["metric"].is_in(list(sets)))
    return rows, table.drop(["dataset", "model", "split"] + [c for c in table.columns if c == "@0"])


def set_metadata(ev, dataset: str) -> dict:
    """The `metrics` metadata of a calibrated model's sets: F1s, ECE, Brier, a table by label
    frequency and a reliability diagram ({} without calibration)."""
    sets = ev.set_rows()
    if not sets:
        return {}
    return {"set_micro_f1": float(sets["set_micro_f1"]), "set_macro_f1": float(sets["set_macro_f1"]),
            "set_macro_f1_all": float(sets["set_macro_f1_all"]), "ece": float(sets["ece"]),
            "ece_raw": float(sets["ece_raw"]), "brier": float(sets["brier"]),
            "sets_by_frequency": MetadataValue.md(_bucket_markdown(sets)),
            "reliability": reliability_plot(ev.sets["bins"], ev.sets["bins_raw"], f"{dataset} test")}


def _bucket_markdown(sets: dict) -> str:
    from .metadata import markdown_table

    rows = [[b, sets.get(f"{b}_labels", 0), sets.get(f"{b}_micro_precision", 0.0), sets.get(f"{b}_micro_recall", 0.0),
             sets.get(f"{b}_micro_f1", 0.0), sets.get(f"{b}_macro_f1", 0.0), sets.get(f"{b}_ece", float("nan"))]
            for b in ("frequent", "few", "zero")]
    return markdown_table(["bucket", "labels in test", "micro P", "micro R", "micro F1", "macro F1", "ECE"], rows)



xr_linear_assets = [corpus, tfidf, label_embeddings, label_tree, disentangled_tree, rankers, calibration, metrics]


def with_settings(assets: list[AssetsDefinition], settings: XmcSettings) -> list[AssetsDefinition]:
    """Copies of `assets` whose code versions are derived from `settings` (see `versions.py`)."""

    def versioned(assets_def: AssetsDefinition) -> AssetsDefinition:
        return assets_def.map_asset_specs(
            lambda spec: spec.replace_attributes(code_version=code_version(settings, spec.key.to_user_string()))
        )

    return [versioned(a) for a in assets]
