"""XR-Transformer as assets (group `xr_transformer`, keys prefixed `xr_transformer/`), on the same
`dataset` partitions, branching off the shared TF-IDF stages:

    tfidf, label_embeddings → encoder → refined_tree → rankers → calibration → metrics

* `encoder`: fine-tuning tree from PIFA on TF-IDF, TF-IDF matcher, level-by-level fine-tuning
  (checkpoint after each level: a killed run resumes from its last finished level), then the
  embeddings of every split. Expensive, so never materialized by automation on its own.
* `refined_tree`: PIFA tree on [TF-IDF ⊕ embedding].
* `rankers`: XR-Linear rankers on the concatenated features, saved as a model folder
  (`xmc_core.model.load_model` loads it without Dagster).
* `metrics`: test-split P/R/nDCG/PSP@k through the saved model, appended to DuckDB.

No `from __future__ import annotations` here: Dagster inspects the `context` annotation.
"""

import hashlib
import json
import time

import numpy as np
import scipy.sparse as smat
from dagster import (
    AssetExecutionContext,
    AssetKey,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from xmc_core.explain import cluster_table
from xmc_core.folders import atomic_dir, folder_bytes, remove_xmc_folder
from xmc_core.model import evaluate_model, load_model
from xmc_core.model_card import card_markdown, model_card
from xmc_core.tree import LabelTree

from .assets import BACKFILL_POLICY, SPLITS, STAGE_AUTOMATION, cluster_metadata, record_evaluation, set_metadata
from .metadata import asset_body, frame_markdown, histogram_plot, metrics_at_k_plot
from .partitions import dataset_partitions
from .resources import ArtifactStore, EvaluationDB, XmcSettings, XTransformerSettings

GROUP = "xr_transformer"
PREFIX = "xr_transformer"
MODEL_NAME = "xr-transformer"

#: code revision of each asset; the settings sections each one reads are hashed in
CODE_REVISIONS = {"encoder": "1", "refined_tree": "1", "rankers": "1", "calibration": "1", "metrics": "2"}
SECTIONS = {
    "encoder": ("encoder", "finetune", "ranker", "pred"),
    "refined_tree": ("pifa", "tree", "concat"),
    "rankers": ("ranker", "pred", "ensemble", "concat"),
    "calibration": (),  # its settings are XmcSettings.calibration_json
    "metrics": (),
}
_NON_RESULT_KEYS = {"threads", "device", "batch_size"}


def xrt_code_version(params, name: str) -> str:
    """`<revision>-<hash of the asset's settings sections>` (speed-only keys left out)."""
    d = params.to_dict()
    section = {s: {k: v for k, v in d[s].items() if k not in _NON_RESULT_KEYS} for s in SECTIONS[name]}
    if name == "encoder":
        section["tree_seed"] = d["tree"]["seed"]  # the fine-tuning tree's seed
    if not section:
        return CODE_REVISIONS[name]
    digest = hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()[:8]
    return f"{CODE_REVISIONS[name]}-{digest}"


def _xrt_asset(name: str, deps: list, description: str, automation=STAGE_AUTOMATION, **extra):
    def decorate(fn):
        return asset(
            name=name,
            key_prefix=[PREFIX],
            partitions_def=dataset_partitions,
            deps=deps,
            code_version=xrt_code_version(XTransformerSettings().params(XmcSettings()), name),
            backfill_policy=BACKFILL_POLICY,
            automation_condition=automation,
            group_name=GROUP,
            description=description,
            **extra,
        )(asset_body(fn))

    return decorate


def _texts(artifacts: ArtifactStore, dataset: str) -> tuple[dict, list[str]]:
    info = artifacts.read_json(dataset, "corpus", "corpus.json")
    if not info["has_texts"]:
        raise Failure(description=f"dataset {dataset!r} is bag-of-words ({info['layout']}): XR-Transformer "
                                  "reads raw texts; use the XR-Linear assets for it")
    return info, artifacts.read_texts(dataset, "corpus", "texts_train.parquet")


ENCODER_DIR = "xr_transformer_encoder"


@_xrt_asset(
    "encoder",
    deps=[AssetKey("tfidf"), AssetKey("label_embeddings")],
    kinds={"python", "pytorch"},
    # a person decides when to spend the fine-tuning time; a changed setting still shows as stale
    automation=None,
    description=("Transformer encoder fine-tuned coarse to fine on the label tree (checkpoint per level, "
                 "resumable), and the embeddings of every split."),
)
def encoder(context: AssetExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings,
            xrt_settings: XTransformerSettings) -> MaterializeResult:
    from xmc_core.encoder import encode
    from xmc_core.xtransformer import FineTuneState, checkpoint_key, fit_encoder, label_head, load_state, save_state

    dataset = context.partition_key
    params = xrt_settings.params(xmc_settings)
    info, texts = _texts(artifacts, dataset)
    X = artifacts.read_sparse(dataset, "tfidf", "X_train.npz")
    Y = artifacts.read_sparse(dataset, "corpus", "Y_train.npz")
    Z = artifacts.read_sparse(dataset, "label_embeddings", "Z.npz")
    ckpt = artifacts.path(dataset, ENCODER_DIR, "checkpoint")
    key = checkpoint_key(texts, Y, params)
    state = load_state(ckpt, key)
    if state is not None:
        context.log.info(f"resuming fine-tuning after level {state.levels_done - 1} from {ckpt}")
    else:
        state = FineTuneState(key=key)

    def log(rec: dict) -> None:
        if rec.get("stage") == "finetune_step":
            context.log.info(f"level {rec['level']} step {rec['step']}/{rec['steps']}: loss {rec['loss']:.4f} "
                             f"({rec['seconds']:.0f}s)")
        elif rec.get("stage") in ("finetune_level", "tfidf_matcher"):
            context.log.info(json.dumps(rec, default=str))

    def on_level(st) -> None:
        save_state(st, ckpt)
        context.log.info(f"checkpoint: level {st.levels_done - 1} done → {ckpt}")

    t0 = time.perf_counter()
    tokenizer, enc, state, tree_ft, device = fit_encoder(texts, X, Y, params, log, state, on_level, Z=Z)
    finetune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    embeddings = {"train": encode(enc, tokenizer, texts, params.encoder, device)}
    for name in info["splits"]:
        if name != "train":
            embeddings[name] = encode(enc, tokenizer, artifacts.read_texts(dataset, "corpus", f"texts_{name}.parquet"),
                                      params.encoder, device)
    embed_s = time.perf_counter() - t0
    enc.to("cpu")
    with atomic_dir(artifacts.path(dataset, ENCODER_DIR, "encoder"), kind="encoder") as tmp:
        enc.save(tmp)
        tokenizer.save_pretrained(str(tmp))
    for name in SPLITS:
        artifacts.remove(dataset, ENCODER_DIR, f"E_{name}.npy")
    artifacts.write_arrays(dataset, ENCODER_DIR, "E.npz", embeddings)
    head = label_head(state, Y.shape[1])
    artifacts.remove(dataset, ENCODER_DIR, "head.npz")
    if head is not None:
        artifacts.write_arrays(dataset, ENCODER_DIR, "head.npz", head)
    history = state.history if state else []
    artifacts.write_json(dataset, ENCODER_DIR, "finetune.json", {"history": history, "device": device,
                                                                  "finetune_tree": tree_ft.level_sizes()})
    remove_xmc_folder(ckpt, kind="checkpoint")
    rows = [TableRecord({"level": int(r["level"]), "nodes": int(r["n_nodes"]), "steps": int(r["steps"]),
                         "loss_first": float(r["loss_first"] or 0.0), "loss_last": float(r["loss"] or 0.0),
                         "tfidf_gain": round(float(r["alpha"]), 4), "seconds": round(float(r["seconds"]), 1)})
            for r in history]
    schema = TableSchema(columns=[TableColumn("level", "int"), TableColumn("nodes", "int"),
                                  TableColumn("steps", "int"), TableColumn("loss_first", "float"),
                                  TableColumn("loss_last", "float"), TableColumn("tfidf_gain", "float"),
                                  TableColumn("seconds", "float")])
    return MaterializeResult(metadata={
        "device": device,
        "encoder": params.encoder.name,
        "finetune_levels": (MetadataValue.table(records=rows, schema=schema) if rows else
                            MetadataValue.md("no fine-tuning: `finetune.steps_per_level` is 0 (the pretrained "
                                             "encoder only)")),
        "finetune_tree": " → ".join(str(n) for n in tree_ft.level_sizes()),
        "finetune_seconds": finetune_s,
        "embed_seconds": embed_s,
        "embedding_dim": int(embeddings["train"].shape[1]),
        "encoder_mb": folder_bytes(artifacts.path(dataset, ENCODER_DIR, "encoder")) / 2**20,
        "params": MetadataValue.json({k: params.to_dict()[k] for k in ("encoder", "finetune")}),
    })


def _concat_train(artifacts: ArtifactStore, dataset: str):
    X = artifacts.read_sparse(dataset, "tfidf", "X_train.npz")
    E = artifacts.read_arrays(dataset, ENCODER_DIR, "E.npz")["train"]
    Y = artifacts.read_sparse(dataset, "corpus", "Y_train.npz")
    return X, E, Y


@_xrt_asset(
    "refined_tree",
    deps=[AssetKey([PREFIX, "encoder"])],
    kinds={"python", "numpy"},
    description="Label tree refined on PIFA over the concatenated [TF-IDF ⊕ fine-tuned embedding] features.",
)
def refined_tree(context: AssetExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings,
                 xrt_settings: XTransformerSettings) -> MaterializeResult:
    from xmc_core.label_embedding import pifa
    from xmc_core.tree import build_tree
    from xmc_core.xtransformer import concat_train_features

    dataset = context.partition_key
    params = xrt_settings.params(xmc_settings)
    X, E, Y = _concat_train(artifacts, dataset)
    t0 = time.perf_counter()
    tree = build_tree(pifa(concat_train_features(X, E, params.concat)[0], Y, params.pifa), params.tree)
    artifacts.write_arrays(dataset, "xr_transformer_refined_tree", "tree.npz", tree.to_arrays())
    sizes = tree.leaf_cluster_sizes()
    seconds = time.perf_counter() - t0
    info = artifacts.read_json(dataset, "corpus", "corpus.json")
    clusters = cluster_table(tree, info.get("label_titles") or info["label_names"],
                             np.diff(smat.csc_matrix(Y).indptr))
    artifacts.write_frame(dataset, "xr_transformer_refined_tree", "clusters.parquet", clusters)
    return MaterializeResult(metadata={
        "clusters": cluster_metadata(clusters),
        "depth": tree.depth,
        "level_sizes": " → ".join(str(n) for n in tree.level_sizes()),
        "leaf_size_histogram": histogram_plot(sizes, "labels per leaf cluster", "refined tree: leaf cluster sizes"),
        "seconds": seconds,
    })


@_xrt_asset(
    "rankers",
    deps=[AssetKey([PREFIX, "refined_tree"])],
    kinds={"python", "scipy"},
    description="XR-Linear rankers on [TF-IDF ⊕ embedding] over the refined tree; saved with the encoder and "
                "featurizer as a model folder that loads without Dagster.",
)
def xrt_rankers(context: AssetExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings,
                xrt_settings: XTransformerSettings) -> MaterializeResult:
    from xmc_core.encoder import load_encoder
    from xmc_core.tfidf import TfidfVectorizer
    from xmc_core.xtransformer import XTransformerModel, fit_concat_rankers

    dataset = context.partition_key
    params = xrt_settings.params(xmc_settings)
    info = artifacts.read_json(dataset, "corpus", "corpus.json")
    X, E, Y = _concat_train(artifacts, dataset)
    tree = LabelTree.from_arrays(artifacts.read_arrays(dataset, "xr_transformer_refined_tree", "tree.npz"))
    t0 = time.perf_counter()
    _, ranker, levels, projection = fit_concat_rankers(X, E, Y, params, tree=tree)
    train_s = time.perf_counter() - t0
    tokenizer, enc = load_encoder(params.encoder, checkpoint=artifacts.existing(dataset, ENCODER_DIR, "encoder"))
    featurizer = TfidfVectorizer.load(artifacts.existing(dataset, "tfidf", "featurizer"))
    ft_info = artifacts.read_json(dataset, ENCODER_DIR, "finetune.json")
    head_file = artifacts.path(dataset, ENCODER_DIR, "head.npz")
    head = artifacts.read_arrays(dataset, ENCODER_DIR, "head.npz") if head_file.is_file() else None
    model = XTransformerModel(params, info["label_names"], featurizer, tokenizer, enc, ranker,
                              info={"dataset": dataset, "run_id": context.run.run_id, "levels": levels,
                                    "finetune": ft_info["history"], "device": ft_info["device"],
                                    "finetune_tree": ft_info["finetune_tree"], "rankers_train_s": train_s},
                              head=head, projection=projection)
    model.set_label_counts(Y)
    model.label_titles = info.get("label_titles")
    model.info.update({"data": info.get("source"), "n_train": int(Y.shape[0]),
                       "data_fingerprint": info.get("train_fingerprint")})
    model_dir = model.save(artifacts.path(dataset, "xr_transformer_model", "model"))
    card = model_card(model_dir)
    return MaterializeResult(metadata={
        "model_card": MetadataValue.md(card_markdown(card)),
        "model_sha": card["model_sha"],
        "model_dir": MetadataValue.path(str(model_dir)),
        "train_seconds": train_s,
        "n_features": int(ranker.n_features),
        "model_mb": card["size_bytes"] / 2**20,
        "seconds_per_level": MetadataValue.md(frame_markdown_rows(levels)),
    })


def frame_markdown_rows(levels: list[dict]) -> str:
    import polars as pl

    if not levels:
        return "(no levels)"
    return frame_markdown(pl.DataFrame([{k: r[k] for k in ("level", "n_nodes", "seconds", "nnz_W")} for r in levels]))


@_xrt_asset(
    "calibration",
    deps=[AssetKey([PREFIX, "rankers"])],
    kinds={"python", "scipy"},
    description="Probabilities and label-set thresholds of the XR-Transformer model (its calibration/ part), "
                "fitted on the dev split; without one nothing is fitted (its encoder saw every training document).",
)
def xrt_calibration(context: AssetExecutionContext, artifacts: ArtifactStore, xmc_settings: XmcSettings) -> MaterializeResult:
    dataset = context.partition_key
    info = artifacts.read_json(dataset, "corpus", "corpus.json")
    cal_params = xmc_settings.calibration_params()
    model_dir = artifacts.existing(dataset, "xr_transformer_model", "model")
    if "dev" not in info["splits"]:
        # a sibling's rankers would still read an encoder fine-tuned on the held-out documents: over-confident
        context.log.warning(f"{dataset}: no dev split; the XR-Transformer model stays uncalibrated "
                            "(`xmc calibrate --split SPLIT` on documents it never saw calibrates it)")
        return MaterializeResult(metadata={"source": "none: the dataset has no dev split", "calibrated": False})
    model = load_model(model_dir)
    t0 = time.perf_counter()
    try:
        cal = model.calibrate(artifacts.read_texts(dataset, "corpus", "texts_dev.parquet"),
                              artifacts.read_sparse(dataset, "corpus", "Y_dev.npz"), info["label_names"], cal_params,
                              info={"source": "dev"})
    except ValueError as e:
        raise Failure(description=f"calibration of {dataset!r} on its dev split: {e}") from None
    folder = model.save_calibration(model_dir)
    return MaterializeResult(metadata={
        "source": f"dev split ({cal.info['n_docs']} documents)", "calibrated": True,
        "calibration_dir": MetadataValue.path(str(folder)), "threshold_micro": float(cal.threshold),
        "heldout_micro_f1": cal.info["heldout_micro_f1"], "heldout_macro_f1": cal.info["heldout_macro_f1"],
        "seconds": time.perf_counter() - t0,
    })


@_xrt_asset(
    "metrics",
    deps=[AssetKey([PREFIX, "calibration"])],
    kinds={"python", "duckdb"},
    pool="duckdb",
    description="P/R/nDCG/PSP@k (and, calibrated, label-set F1, ECE, Brier) of the saved XR-Transformer model on the "
                "test split, appended to DuckDB.",
)
def xrt_metrics(context: AssetExecutionContext, artifacts: ArtifactStore, evaluation_db: EvaluationDB) -> MaterializeResult:
    dataset = context.partition_key
    info = artifacts.read_json(dataset, "corpus", "corpus.json")
    if "test" not in info["splits"]:
        raise Failure(description=f"dataset {dataset!r} has no test split; nothing to evaluate")
    model = load_model(artifacts.existing(dataset, "xr_transformer_model", "model"))
    texts = artifacts.read_texts(dataset, "corpus", "texts_test.parquet")
    ev = evaluate_model(model, texts, artifacts.read_sparse(dataset, "corpus", "Y_test.npz"), info["label_names"])
    result = ev.metrics
    rows, table = record_evaluation(evaluation_db, context.run.run_id, dataset, MODEL_NAME, ev, model.params,
                                    model_sha=model.params_sha)
    return MaterializeResult(metadata={
        "metrics": MetadataValue.md(frame_markdown(table)),
        "metrics_at_k": metrics_at_k_plot(result, dataset),
        **{f"p@{k}": float(result["p"][k]) for k in (1, 3, 5)},
        "n_test": ev.n_test,
        "predict_seconds": ev.predict_s,
        **set_metadata(ev, dataset),
        "rows_appended": rows,
    })


xr_transformer_assets = [encoder, refined_tree, xrt_rankers, xrt_calibration, xrt_metrics]


def with_xrt_settings(assets: list, xmc: XmcSettings, xrt: XTransformerSettings) -> list:
    """Copies of the XR-Transformer assets whose code versions follow the given settings."""
    params = xrt.params(xmc)
    return [a.map_asset_specs(lambda spec: spec.replace_attributes(
        code_version=xrt_code_version(params, spec.key.path[-1]))) for a in assets]
