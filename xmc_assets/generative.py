"""XLGen (generative, cluster-guided label generation) as assets beside the XR-Linear chain, on the
same `dataset` partitions and the same `corpus` artifacts:

    corpus → xlgen_label_clusters → xlgen_bcl_model → xlgen_bcl_metrics
                                  → xlgen_mcg_model → xlgen_mcg_metrics
    corpus → xlgen_base_model → xlgen_base_metrics

Settings come from the `xlgen_settings` resource (`XLGenSettings.params_json`: XLGenParams
overrides shared by the three variants, e.g. '{"steps": 300, "pu_drop": 0.5}'); each asset's code
version is "<revision>-<hash of the settings it uses>", so a settings change makes exactly the
XLGen assets stale (never the XR-Linear chain). Training is expensive (minutes to half an hour on
CPU), so these assets have no automation condition: a person materializes them.

Models are folders written through the ArtifactStore (`<dataset>/xlgen_<variant>/model`, loadable
with `xmc_core.model.load_model`); the metrics assets append rows to the DuckDB `evaluation` table
(model `xlgen-<variant>`, `-text` in label_text decoding, `-copy` with the copy prior, `-pu` in the
PU setting; set and tail
metrics with k = 0), serialized by
the `duckdb` pool like `metrics`.

No `from __future__ import annotations` here: Dagster inspects the `context` annotation.
"""

import hashlib
import json
import time
import warnings
from typing import Optional

import numpy as np
from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    ConfigurableResource,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from xmc_core.folders import folder_bytes
from xmc_core.metrics import MetricParams

from .assets import corpus
from .metadata import asset_body, histogram_plot, markdown_table, metrics_at_k_plot
from .partitions import dataset_partitions
from .resources import ArtifactStore, EvaluationDB

warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy` of function `asset`")

GROUP = "xlgen"
VARIANTS = ("base", "bcl", "mcg")
#: code revision of every XLGen asset: bump when the code changes what they write
CODE_REVISION = "2"
#: settings that change speed or placement, never results: left out of the code-version hashes
_NON_RESULT_KEYS = {"threads", "device", "eval_batch_size"}
_CLUSTER_KEYS = {"n_clusters", "pu_drop", "seed", "encoder", "max_length", "cluster_docs_per_label", "kmeans_iter"}
BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=1)


class XLGenSettings(ConfigurableResource):
    """The XLGen settings of the code location (register as resource key `xlgen_settings`).

    params_json: XLGenParams overrides as a JSON object, shared by the variants (each asset sets
        `variant` itself), e.g. '{"steps": 300}' or '{"pu_drop": 0.5}' for the PU setting.
    max_test_rows: score only the first N test documents (quick runs; None = all).
    """

    params_json: str = "{}"
    max_test_rows: Optional[int] = None

    def overrides(self) -> dict:
        try:
            d = json.loads(self.params_json or "{}")
        except json.JSONDecodeError as e:
            raise Failure(description=f"XLGenSettings.params_json: invalid JSON ({e.msg} at char {e.pos})") from None
        if not isinstance(d, dict):
            raise Failure(description="XLGenSettings.params_json: expected a JSON object")
        if "variant" in d:
            raise Failure(description="XLGenSettings.params_json: leave out `variant` (each asset sets its own)")
        return d

    def params(self, variant: str = "base"):
        from xmc_core.xlgen import XLGenParams

        try:
            params = XLGenParams.from_dict({**self.overrides(), "variant": variant})
            params.check_lengths()  # against the encoder's positions, before any step runs
            return params
        except (TypeError, ValueError) as e:
            raise Failure(description=f"XLGenSettings.params_json: {e}") from None


def settings_hash(settings: XLGenSettings, asset_name: str) -> str:
    """8 hex digits of the XLGen settings `asset_name` depends on (clusters: only the clustering
    ones; models and metrics: all result-changing ones)."""
    from xmc_core.xlgen import XLGenParams

    try:
        values = XLGenParams.from_dict(settings.overrides()).to_dict()
    except (TypeError, ValueError, Failure):
        values = {"invalid": settings.params_json}
    values.pop("variant", None)
    keep = _CLUSTER_KEYS if asset_name == "xlgen_label_clusters" else set(values) - _NON_RESULT_KEYS
    section = {k: v for k, v in values.items() if k in keep}
    if asset_name.endswith("_metrics"):
        section["max_test_rows"] = settings.max_test_rows
    return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:8]


def code_version(settings: XLGenSettings, asset_name: str) -> str:
    return f"{CODE_REVISION}-{settings_hash(settings, asset_name)}"


_DEFAULT = XLGenSettings()


def _asset(name: str, deps: list, kinds: set, description: str, **extra):
    def decorate(fn):
        return asset(
            name=name,
            partitions_def=dataset_partitions,
            deps=deps,
            code_version=code_version(_DEFAULT, name),
            backfill_policy=BACKFILL_POLICY,
            group_name=GROUP,
            kinds=kinds,
            description=description,
            **extra,
        )(asset_body(fn))

    return decorate


def _text_corpus(artifacts: ArtifactStore, dataset: str) -> dict:
    info = artifacts.read_json(dataset, "corpus", "corpus.json")
    if not info["has_texts"]:
        raise Failure(description=f"dataset {dataset!r} has no raw texts ({info['layout']}); XLGen reads texts")
    return info


def _setting(params) -> str:
    return "pu" if params.pu_drop > 0 else "full"


@_asset(
    "xlgen_label_clusters",
    deps=[corpus],
    kinds={"python", "pytorch", "faiss"},
    description=("XLGen label clusters: each label embedded as the mean MiniLM embedding of its training documents "
                 "(PU-dropped labels in the PU setting), spherical k-means (FAISS) into n_clusters."),
)
def xlgen_label_clusters(
    context: AssetExecutionContext, artifacts: ArtifactStore, xlgen_settings: XLGenSettings
) -> MaterializeResult:
    from xmc_core.xlgen import cluster_labels, label_texts, pu_drop_labels

    dataset = context.partition_key
    info = _text_corpus(artifacts, dataset)
    params = xlgen_settings.params("mcg")
    texts = artifacts.read_texts(dataset, "corpus", "texts_train.parquet")
    Y = pu_drop_labels(artifacts.read_sparse(dataset, "corpus", "Y_train.npz"), params.pu_drop, params.seed)
    t0 = time.perf_counter()
    clusters, cinfo = cluster_labels(texts, Y, label_texts(info["label_names"], info.get("label_titles")), params)
    seconds = time.perf_counter() - t0
    artifacts.write_arrays(dataset, "xlgen_label_clusters", "clusters.npz", {"label_cluster": clusters})
    names = info["label_names"]
    sizes = np.bincount(clusters, minlength=cinfo["n_clusters"])
    members = [[c, int(sizes[c]), ", ".join(names[l] for l in np.flatnonzero(clusters == c)[:12])]
               for c in np.argsort(-sizes)[:30]]
    return MaterializeResult(metadata={
        "n_clusters": cinfo["n_clusters"],
        "docs_embedded": cinfo["docs_embedded"],
        "setting": _setting(params),
        "cluster_size_histogram": histogram_plot(sizes, "labels per cluster", "label cluster sizes"),
        "clusters": MetadataValue.md(markdown_table(["cluster", "labels", "members (first 12)"], members)),
        "seconds": seconds,
        "settings_hash": settings_hash(xlgen_settings, "xlgen_label_clusters"),
    })


def _model_asset(variant: str):
    name = f"xlgen_{variant}_model"
    deps = [corpus] if variant == "base" else [corpus, xlgen_label_clusters]

    @_asset(
        name,
        deps=deps,
        kinds={"python", "pytorch"},
        description=(f"XLGen-{variant}: MiniLM encoder-decoder trained to write the label sequence"
                     + ("" if variant == "base" else
                        (" with the cluster bit-vector as an auxiliary loss" if variant == "bcl" else
                         ", clusters first (multitask cluster generation)"))
                     + "; saved as a model folder that `load_model` reads."),
    )
    def _model(context: AssetExecutionContext, artifacts: ArtifactStore,
               xlgen_settings: XLGenSettings) -> MaterializeResult:
        from xmc_core.folders import remove_xmc_folder
        from xmc_core.xlgen import train_with_checkpoints

        dataset = context.partition_key
        info = _text_corpus(artifacts, dataset)
        params = xlgen_settings.params(variant)
        texts = artifacts.read_texts(dataset, "corpus", "texts_train.parquet")
        Y = artifacts.read_sparse(dataset, "corpus", "Y_train.npz")
        clusters = None
        if params.uses_clusters:
            clusters = artifacts.read_arrays(dataset, "xlgen_label_clusters", "clusters.npz")["label_cluster"]
        curve = []

        def log(rec: dict) -> None:
            if rec.get("stage") == "train":
                curve.append(rec)
                context.log.info(f"step {rec['step']}: loss {rec['loss']:.4f} ({rec['step_s']:.2f}s/step)")
            elif rec.get("stage") in ("epoch", "resume_from", "encoder_cache", "checkpoint"):
                context.log.info(json.dumps(rec, default=str))

        # a killed run resumes from here (same settings and data), like XR-Transformer's encoder
        ckpt = artifacts.path(dataset, f"xlgen_{variant}", "checkpoint")
        t0 = time.perf_counter()
        model = train_with_checkpoints(texts, Y, info["label_names"], params, ckpt, log=log, clusters=clusters,
                                       label_titles=info.get("label_titles"))
        train_s = time.perf_counter() - t0
        model.info.update({"dataset": dataset, "run_id": context.run.run_id, "n_train": int(Y.shape[0]),
                           "train_s": train_s, "max_rows": info["max_rows"]})
        model_dir = model.save(artifacts.folder(dataset, f"xlgen_{variant}") / "model")
        remove_xmc_folder(ckpt, kind="checkpoint")
        size = folder_bytes(model_dir)
        epochs = model.info.get("epochs") or []
        return MaterializeResult(metadata={
            "model_dir": MetadataValue.path(str(model_dir)),
            "variant": variant,
            "setting": _setting(params),
            "train_seconds": train_s,
            "device": model.info.get("device"),
            "train_docs": model.info.get("train_docs"),
            "decoding": params.decoding,
            "copy_prior": params.copy_prior,
            "final_loss": float(curve[-1]["loss"]) if curve else float("nan"),
            "epochs": MetadataValue.md(markdown_table(
                ["epoch", "last step", "mean loss", "seconds"],
                [[r["epoch"], r["step"], r["loss"], r["seconds"]] for r in epochs], ".3f")),
            "resumed_at_step": model.info.get("resumed_at_step") if model.info.get("resumed_at_step") is not None
            else -1,
            "loss_curve": MetadataValue.md(markdown_table(
                ["step", "loss", "s/step"], [[r["step"], r["loss"], r["step_s"]] for r in curve], ".3f")),
            "model_mb": size / 2**20,
            "params": MetadataValue.json(params.to_dict()),
            "settings_hash": settings_hash(xlgen_settings, name),
        })

    return _model


def _metrics_asset(variant: str, model_asset):
    name = f"xlgen_{variant}_metrics"

    @_asset(
        name,
        deps=[model_asset],
        kinds={"python", "duckdb"},
        pool="duckdb",
        description=(f"XLGen-{variant} on the test split: micro/macro F1 of the generated label sets, tail buckets "
                     "(labels seen 0 and 1 times in training), P@k; appended to the DuckDB history."),
    )
    def _metrics(context: AssetExecutionContext, artifacts: ArtifactStore, evaluation_db: EvaluationDB,
                 xlgen_settings: XLGenSettings) -> MaterializeResult:
        from xmc_core.xlgen import XLGenModel, evaluate_xlgen

        dataset = context.partition_key
        info = _text_corpus(artifacts, dataset)
        if "test" not in info["splits"]:
            raise Failure(description=f"dataset {dataset!r} has no test split; nothing to evaluate")
        model = XLGenModel.load(artifacts.existing(dataset, f"xlgen_{variant}", "model/params.json").parent)
        texts = artifacts.read_texts(dataset, "corpus", "texts_test.parquet")
        Y = artifacts.read_sparse(dataset, "corpus", "Y_test.npz")
        n = xlgen_settings.max_test_rows
        if n is not None:
            texts, Y = texts[:n], Y[:n]
        ev, sets = evaluate_xlgen(model, texts, Y, info["label_names"], MetricParams())
        rows = [{"metric": m, "k": int(k), "value": float(v)} for m, by_k in ev.metrics.items() for k, v in by_k.items()]
        rows += [{"metric": k, "k": 0, "value": float(v)} for k, v in sets.items() if v is not None]
        setting = _setting(model.params)
        appended = evaluation_db.append_evaluation(
            run_id=context.run.run_id, dataset=dataset,
            model=f"xlgen-{variant}" + ("-text" if model.params.decoding == "label_text" else "")
            + ("-copy" if model.params.copy_prior else "") + ("-pu" if setting == "pu" else ""),
            split="test", metrics=rows,
            params={"setting": setting, "pu_drop": model.params.pu_drop, "variant": variant,
                    "train_s": model.info.get("train_s"), "xlgen": model.params.to_dict()},
        )
        table = [[k, v] for k, v in sets.items()] + [[f"p@{k}", ev.metrics["p"][k]] for k in (1, 3, 5)]
        return MaterializeResult(metadata={
            "micro_f1": float(sets["micro_f1"]),
            "macro_f1": float(sets["macro_f1"]),
            **{f"p@{k}": float(ev.metrics["p"][k]) for k in (1, 3, 5)},
            **{k: (float(v) if v is not None else float("nan")) for k, v in sets.items() if k.startswith("tail")},
            "setting": setting,
            "set_metrics": MetadataValue.md(markdown_table(["metric", "value"], table)),
            "metrics_at_k": metrics_at_k_plot(ev.metrics, dataset),
            "n_test": ev.n_test,
            "predict_seconds": ev.predict_s,
            "rows_appended": appended,
            "duckdb": MetadataValue.path(str(evaluation_db.db_path())),
        })

    return _metrics


_models = {v: _model_asset(v) for v in VARIANTS}
_metrics = {v: _metrics_asset(v, _models[v]) for v in VARIANTS}

#: the XLGen assets (they need `corpus` from xmc_assets.assets and the resources `artifacts`,
#: `evaluation_db` and `xlgen_settings`)
GENERATIVE_ASSETS = [xlgen_label_clusters, *(_models[v] for v in VARIANTS), *(_metrics[v] for v in VARIANTS)]

#: resource defaults to merge into the code location's resources
GENERATIVE_RESOURCES = {"xlgen_settings": XLGenSettings()}


def with_xlgen_settings(assets: list, settings: XLGenSettings) -> list:
    """Copies of `assets` whose code versions follow `settings` (as `assets.with_settings` does
    for the XR-Linear chain)."""

    def versioned(assets_def):
        return assets_def.map_asset_specs(
            lambda spec: spec.replace_attributes(code_version=code_version(settings, spec.key.to_user_string()))
        )

    return [versioned(a) for a in assets]
