"""XR-Linear end to end: features → PIFA → label tree → rankers, saved as a model folder.

A model folder loads without Dagster:

    model/
      params.json        format_version, method, nested params, label count, training info
      labels.txt         label names, one per line (line index = label id)
      featurizer/        TF-IDF vocabulary + idf (raw-text models only)
      ranker/            tree.npz, W{t}.npz, ranker.json
      copies.parquet     xr-linear-ld only: where each copied label sits and why
                         (`disentangle.copy_table`; `XmcModel.copies`)
      label_counts.npy, train_stats.json, calibration/   as every model kind (`model_base`)

`XmcModel.load(path).predict(texts_or_X, topk)` returns an N × L float32 CSR of scores.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import polars as pl
import scipy.sparse as smat

from .disentangle import (
    DisentangleParams,
    changes_tree,
    copy_stats,
    copy_table,
    disentangle_tree,
    predict_merged,
    train_matcher,
)
from .ensemble import METHOD_XR_LINEAR_ENSEMBLE, EnsembleParams
from .folders import atomic_dir
from .calibration import CalibrationParams, holdout_split
from .label_embedding import PifaParams, pifa
from .memory import StageMemory, nbytes_mb
# FORMAT_VERSION, LabelSpace, ModelFormatError and read_model_meta lived here before `model_base`; still importable
from .model_base import FORMAT_VERSION, LabelSpace, ModelBase, ModelFormatError, one_line, read_label_names, read_model_meta  # noqa: F401
from .sparse import check_label_matrix, l2_normalize_row, l2_normalize_rows
from .tfidf import TfidfParams, TfidfVectorizer
from .tree import LabelTree, TreeParams, build_tree
from .xlinear import PredParams, RankerParams, XLinearModel

__all__ = ["METHOD_XR_LINEAR", "METHOD_XR_LINEAR_LD", "XRLinearParams", "disentangle_stage", "XmcModel", "LabelSpace", "ModelFormatError", "read_model_meta", "load_model", "train_xr_linear", "check_predict_args", "evaluation_topk",
           "fit_rankers", "evaluate_model", "Evaluation", "keep_topk", "set_evaluation", "holdout_calibration",
           "sibling_calibration"]

#: method names: plain XR-Linear, and XR-Linear with label disentanglement (a `disentangle` section)
METHOD_XR_LINEAR = "xr-linear"
#: method name of XR-Linear with label disentanglement (params with a `disentangle` section)
METHOD_XR_LINEAR_LD = "xr-linear-ld"


@dataclass
class XRLinearParams:
    """All settings of an XR-Linear model (nested; round-trips JSON).

    Attributes:
        tfidf: :class:`TfidfParams` of the featurizer (raw-text models).
        pifa: :class:`PifaParams` of the label embedding.
        tree: :class:`TreeParams` of the hierarchical 2-means label tree.
        ranker: :class:`RankerParams` of the per-level rankers.
        pred: :class:`PredParams`, prediction defaults (beam, topk, post-processor).
        disentangle: optional :class:`DisentangleParams`: None (absent from the dict) is plain
            XR-Linear; a section runs label disentanglement (`xmc_core.disentangle`) between the
            tree and the final rankers.
        ensemble: optional :class:`ensemble.EnsembleParams`: a section trains that many models
            (`xmc_core.ensemble`; method "xr-linear-ensemble"), each with these settings and its
            own seeds and label view.
    """

    tfidf: TfidfParams = field(default_factory=TfidfParams)
    pifa: PifaParams = field(default_factory=PifaParams)
    tree: TreeParams = field(default_factory=TreeParams)
    ranker: RankerParams = field(default_factory=RankerParams)
    pred: PredParams = field(default_factory=PredParams)
    disentangle: DisentangleParams | None = None
    ensemble: EnsembleParams | None = None

    #: optional sections: their class (a None value is left out of the dict)
    _OPTIONAL = {"disentangle": DisentangleParams, "ensemble": EnsembleParams}

    @property
    def method(self) -> str:
        """The model's method name (str): "xr-linear-ensemble" with an ensemble section, else
        "xr-linear-ld" with a disentangle section, else "xr-linear"."""
        if self.ensemble is not None:
            return METHOD_XR_LINEAR_ENSEMBLE
        return METHOD_XR_LINEAR_LD if self.disentangle is not None else METHOD_XR_LINEAR

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict {section: {key: value}}; a None disentangle is left out."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self._OPTIONAL:
                continue
            out[f.name] = value.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict | None) -> "XRLinearParams":
        """Settings from a nested dict such as :meth:`to_dict` returns.

        Args:
            d: {section: {key: value}}; missing sections and keys take their defaults (None:
                all defaults); "disentangle": null means no section.

        Returns:
            XRLinearParams.

        Raises:
            ValueError: an unknown section or key (named, with the known ones), a section that is
                not an object, or a value a section's own checks refuse.
        """
        d = dict(d or {})
        known = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"XRLinearParams: unknown section(s) {sorted(unknown)}; expected {sorted(known)}")
        kwargs = {}
        for name, sub in d.items():
            if name in cls._OPTIONAL:
                if sub is None:
                    kwargs[name] = None
                    continue
                sub_cls = cls._OPTIONAL[name]
            else:
                sub_cls = type(known[name].default_factory())
            if not isinstance(sub, dict) and sub is not None:
                raise ValueError(f"XRLinearParams.{name}: expected an object, got {sub!r}")
            sub_known = {f.name for f in fields(sub_cls)}
            bad = set(sub or {}) - sub_known
            if bad:
                raise ValueError(f"XRLinearParams.{name}: unknown key(s) {sorted(bad)}; expected {sorted(sub_known)}")
            kwargs[name] = sub_cls.from_dict(sub)
        return cls(**kwargs)

    def merged(self, overrides: dict | None) -> "XRLinearParams":
        """A copy with nested overrides applied ({"ranker": {"Cp": 2}} changes only Cp).

        Args:
            overrides: {section: {key: value}} (None: no change); {"disentangle": {}} adds the
                optional section with its defaults, {"disentangle": null} removes it.

        Returns:
            A new XRLinearParams (self is unchanged).

        Raises:
            ValueError: a section that is not an object, or an unknown section or key.
        """
        base = self.to_dict()
        for section, values in (overrides or {}).items():
            if values is None and section in self._OPTIONAL:
                base.pop(section, None)
                continue
            if not isinstance(values, dict):
                raise ValueError(f"XRLinearParams: section {section!r} must be an object, got {values!r}")
            base.setdefault(section, {}).update(values)
        return XRLinearParams.from_dict(base)


class XmcModel(ModelBase):
    """A trained XR-Linear model: featurizer + label tree + rankers + label names.

    Attributes:
        params: :class:`XRLinearParams` it was trained with.
        label_names: L label names (list of str; index = label id).
        ranker: :class:`XLinearModel` (tree + per-level weights).
        featurizer: a fitted TfidfVectorizer (raw-text models) or None (the model takes feature
            vectors; rows are l2-normalized before scoring).
        method: "xr-linear" or "xr-linear-ld".
        info: training records (per-level ranker logs, disentangle copy statistics).
        copies: xr-linear-ld models: the `disentangle.copy_table` of the overlapping tree (one
            row per label with copies, saved as copies.parquet), else None.
        label_counts, n_train: (L,) int64 training positives per label and N (see
            :class:`LabelSpace`).

    Raises:
        ValueError: len(label_names) differs from ranker.n_labels.

    Source:
        XR-Linear (Yu et al. 2022, "PECOS: Prediction for Enormous and Correlated Output Spaces",
        JMLR).
    """

    def __init__(self, params: XRLinearParams, label_names: list[str], ranker: XLinearModel,
                 featurizer: TfidfVectorizer | None = None, method: str = "xr-linear",
                 info: dict | None = None):
        if len(label_names) != ranker.n_labels:
            raise ValueError(f"XmcModel: {len(label_names)} label names for {ranker.n_labels} labels")
        self.params = params
        self.label_names = list(label_names)
        self.ranker = ranker
        self.featurizer = featurizer
        self.method = method
        self.info = dict(info or {})
        self.copies: pl.DataFrame | None = None

        self.label_counts: np.ndarray | None = None
        self.n_train: int | None = None
        self.calibration = None

    def featurize(self, texts_or_X) -> smat.csr_matrix:
        """Model features of raw texts or of a feature matrix.

        Args:
            texts_or_X: a str, a sequence of N texts (TF-IDF by the featurizer), or an N × D
                sparse matrix / ndarray (rows l2-normalized here unless it already has the
                featurizer's width).

        Returns:
            N × D float32 CSR, rows l2-normalized.

        Raises:
            ValueError: texts for a model without a text featurizer.
            DataFormatError: a text that is not valid Unicode (a ValueError subclass).
        """
        if smat.issparse(texts_or_X) or isinstance(texts_or_X, np.ndarray):
            X = texts_or_X
            if not (isinstance(X, smat.csr_matrix) and X.dtype == np.float32):
                X = smat.csr_matrix(X, dtype=np.float32)
            if self.featurizer is not None and X.shape[1] == self.featurizer.n_features:
                return X
            return l2_normalize_rows(X)
        if isinstance(texts_or_X, str):
            texts_or_X = [texts_or_X]
        if self.featurizer is None:
            raise ValueError("this model was trained on feature vectors (no text featurizer); pass X, not texts")
        return self.featurizer.transform(list(texts_or_X))

    def predict(self, texts_or_X, topk: int | None = None, beam_size: int | None = None,
                post_processor: str | None = None) -> smat.csr_matrix:
        """Scores of the top labels of every document, by beam search down the label tree.

        Args:
            texts_or_X: N texts (str) or an N × D feature matrix (see :meth:`featurize`).
            topk: labels kept per row (None: `params.pred.only_topk`).
            beam_size: nodes kept per tree level (None: `params.pred.beam_size`).
            post_processor: a key of `xlinear.POST_PROCESSORS` (None: the model's).

        Returns:
            N × L float32 CSR with at most topk entries per row, indices sorted; xr-linear-ld
            models with merge != "max" combine the scores of a label's copies by `merge`.

        Raises:
            ValueError: topk or beam_size not an integer >= 1; texts for a model without a text
                featurizer; a text that is not valid Unicode (`textio.normalize_texts`); X of
                the wrong width; an unknown post_processor.
        """
        check_predict_args(topk, beam_size)
        return self.predict_features(self.featurize(texts_or_X), topk, beam_size, post_processor)

    def predict_features(self, X: smat.csr_matrix, topk: int | None = None, beam_size: int | None = None,
                         post_processor: str | None = None) -> smat.csr_matrix:
        """:meth:`predict` on features :meth:`featurize` made already.

        Args:
            X: N × D float32 CSR, rows l2-normalized (the model's features).
            topk, beam_size, post_processor: as :meth:`predict` (checked by the caller).

        Returns:
            N × L float32 CSR, as :meth:`predict`.
        """
        d = self.params.disentangle
        if d is not None and d.merge != "max":
            return predict_merged(self.ranker, X, d.merge, beam_size=beam_size, only_topk=topk,
                                  post_processor=post_processor)
        return self.ranker.predict(X, beam_size=beam_size, only_topk=topk, post_processor=post_processor)

    def predict_row_labels(self, indices: np.ndarray, values: np.ndarray, topk: int | None = None
                           ) -> list[tuple[str, float]]:
        """The top labels of one document given as a sparse row, by name: what
        ``predict_labels(X, topk)[0]`` gives for the one-row X with these entries, bit for bit,
        without scipy matrices on the way (`XLinearModel.predict_row`; a service's request).

        Args:
            indices: feature ids, strictly ascending, in [0, n_features).
            values: their values (float), normalized here as :meth:`featurize` normalizes a row.
            topk: labels kept (None: `params.pred.only_topk`).

        Returns:
            (label name, float score) pairs, best first (ties: lower label id first).

        Raises:
            ValueError: as `XLinearModel.predict_row`; topk not an integer >= 1.
        """
        check_predict_args(topk, None)
        d = self.params.disentangle
        if d is not None and d.merge != "max":  # copies merged after the beam: the matrix path
            X = smat.csr_matrix((np.asarray(values, np.float32), np.asarray(indices), [0, len(indices)]),
                                shape=(1, self.n_features))
            return self.predict_labels(X, topk=topk)[0]
        values = np.asarray(values, np.float32)
        if not (self.featurizer is not None and self.n_features == self.featurizer.n_features):
            values = l2_normalize_row(values)
        labels, scores = self.ranker.predict_row(np.asarray(indices), values, only_topk=topk)
        by_id = np.argsort(labels)
        order = by_id[np.argsort(-scores[by_id], kind="stable")]
        return [(self.label_names[labels[j]], float(scores[j])) for j in order]

    @property
    def n_features(self) -> int:
        """D, the feature width the rankers score (int)."""
        return self.ranker.n_features

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the model folder (layout in the module docstring) atomically (`folders.atomic_dir`).

        Args:
            path: destination folder (str or Path); missing, empty, or a model folder xmc wrote.

        Returns:
            The folder as a Path.

        Raises:
            PathInUseError: `path` holds something that is not an xmc model folder.
        """
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.write_common(tmp, {"n_features": self.ranker.n_features,
                                    "has_text_featurizer": self.featurizer is not None})
            if self.featurizer is not None:
                self.featurizer.save(tmp / "featurizer")
            self.write_rankers(tmp)
        return path

    def write_rankers(self, folder: Path) -> None:
        """Write this model's own parts into `folder` (a Path being built): ranker/ and, for
        xr-linear-ld, copies.parquet (the model folder, or an ensemble member's folder)."""
        self.ranker.save(folder / "ranker")
        if self.copies is not None:
            self.copies.write_parquet(folder / "copies.parquet")

    @classmethod
    def read_rankers(cls, folder: Path, params: XRLinearParams, label_names: list[str], featurizer,
                     method: str, info: dict | None = None) -> "XmcModel":
        """The XmcModel whose parts :meth:`write_rankers` wrote into `folder`.

        Args:
            folder: the model folder, or an ensemble member's folder (Path).
            params, label_names, featurizer, method, info: as the constructor takes them.

        Returns:
            XmcModel (label counts and calibration are the caller's: `load_common`).

        Raises:
            OSError, ValueError, KeyError, EOFError, BadZipFile: a part missing or unreadable
                (the loaders turn these into ModelFormatError); ModelFormatError: an unreadable
                copies table.
        """
        model = cls(params, label_names, XLinearModel.load(folder / "ranker"), featurizer, method, info)
        if (folder / "copies.parquet").is_file():
            model.copies = _read_copies(folder / "copies.parquet")
        return model

    @classmethod
    def load(cls, path: str | Path) -> "XmcModel":
        """Load a model folder written by `save`.

        Args:
            path: the model folder (str or Path).

        Returns:
            XmcModel ready to predict (the ranker's beam-search layout is built).

        Raises:
            ModelFormatError: one line naming the folder or file, when the folder is missing, is
                of another format version, or is incomplete / corrupt (a file missing, truncated
                or unparsable).
        """
        path = Path(path)
        meta = read_model_meta(path)
        try:
            names = read_label_names(path)
            featurizer = TfidfVectorizer.load(path / "featurizer") if meta.get("has_text_featurizer") else None
            model = cls.read_rankers(path, XRLinearParams.from_dict(meta["params"]), names, featurizer,
                                     meta.get("method", "xr-linear"), meta.get("info"))
            model.load_common(path)
        except ModelFormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            # a file missing, truncated or unparsable (json.JSONDecodeError and
            # UnicodeDecodeError are ValueErrors)
            raise ModelFormatError(
                one_line(f"{path}: incomplete or corrupt model folder ({type(e).__name__}: {e}); retrain the model")
            ) from None
        return model


def _read_copies(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except pl.exceptions.PolarsError as e:  # not a ValueError: say which file, as for the others
        raise ModelFormatError(one_line(f"{path}: unreadable copies table ({type(e).__name__}: {e}); "
                                         "retrain the model")) from None


#: model kinds beyond XR-Linear: method → (module, class); imported only when such a model is loaded
_MODEL_CLASSES = {
    "xr-transformer": ("xmc_core.xtransformer", "XTransformerModel"),
    "xlgen": ("xmc_core.xlgen", "XLGenModel"),
    METHOD_XR_LINEAR_ENSEMBLE: ("xmc_core.ensemble", "XmcEnsemble"),
}


def load_model(path: str | Path):
    """Load any model folder, dispatching on the method recorded in its params.json.

    Args:
        path: the model folder (str or Path).

    Returns:
        XmcModel ("xr-linear", "xr-linear-ld"), `ensemble.XmcEnsemble` ("xr-linear-ensemble"),
        XTransformerModel ("xr-transformer") or XLGenModel ("xlgen"); the latter two import torch.

    Raises:
        ModelFormatError: as :func:`read_model_meta` and the class's `load`.
    """
    meta = read_model_meta(path)
    method = meta.get("method", METHOD_XR_LINEAR)
    if method in _MODEL_CLASSES:
        import importlib

        module, name = _MODEL_CLASSES[method]
        return getattr(importlib.import_module(module), name).load(path)
    return XmcModel.load(path)


def train_xr_linear(
    Y: smat.spmatrix,
    label_names: Sequence[str],
    params: XRLinearParams | None = None,
    texts: Sequence[str] | None = None,
    X: smat.spmatrix | None = None,
    log: Callable[[dict], None] | None = None,
    label_titles: Sequence[str] | None = None,
    memory: StageMemory | None = None,
    copy_X: bool = True,
    engine=None,
) -> XmcModel:
    """Train an XR-Linear model: TF-IDF (texts) or l2-normalized X → PIFA → tree → rankers.

    Args:
        Y: N × L label matrix (sparse or dense), entries > 0 are positives.
        label_names: L label names (str).
        params: :class:`XRLinearParams` (None: defaults).
        texts: N raw documents (str); the TF-IDF featurizer is fitted on them.
        X: N × F feature matrix (sparse or dense); rows are l2-normalized here. Exactly one of
            texts and X is given.
        log: receives {"stage": ..., "seconds": ...} records (wall time, s) and per-level
            ranker records.
        label_titles: L titles for people (`Dataset.label_titles`), used only by the copies table.
        memory: the :class:`memory.StageMemory` that adds each stage's peak and final resident
            memory (MiB) to its record (None: a new one, started here).
        copy_X: False lets a float32 CSR X be l2-normalized in place instead of copied (the
            caller must not need its values afterwards; `xmc train` does so).
        engine: execution engine of the tree and rankers (`fit_rankers`; None: this process).

    Returns:
        XmcModel whose predict gives N × L float32 CSR scores (an `ensemble.XmcEnsemble` when params
        have an ensemble section).

    Raises:
        ValueError: both or neither of texts and X; a negative or non-finite entry of Y (named
            by row and column); row or label-name counts that do not match; TF-IDF with no term
            in >= min_df documents.
        DataFormatError: a text that is not valid Unicode.

    Source:
        XR-Linear / PECOS (Yu et al. 2022, "PECOS: Prediction for Enormous and Correlated
        Output Spaces", JMLR).
    """
    params = params or XRLinearParams()
    if (texts is None) == (X is None):
        raise ValueError("train_xr_linear: give exactly one of texts and X")
    check_label_matrix(Y, len(texts) if texts is not None else X.shape[0])
    if len(label_names) != Y.shape[1]:
        raise ValueError(f"train_xr_linear: {len(label_names)} label names for {Y.shape[1]} label columns")
    memory = memory or StageMemory()
    emit = log or (lambda rec: None)
    t0 = time.perf_counter()
    featurizer = None
    if texts is not None:
        featurizer = TfidfVectorizer(params.tfidf)
        X = featurizer.fit_transform(list(texts))
    else:
        X = l2_normalize_rows(X, copy=copy_X)
    if params.ensemble is not None and params.ensemble.embedding:
        from .ensemble import embedding_block

        X = embedding_block(X, texts, params.ensemble)  # ValueError without texts
    emit(memory.add({"stage": "features", "seconds": time.perf_counter() - t0, "n_features": X.shape[1],
                     "X_mb": nbytes_mb(X)}))
    return fit_rankers(X, Y, label_names, params, featurizer, log=log, label_titles=label_titles, memory=memory,
                       engine=engine)


def fit_rankers(X, Y, label_names, params: XRLinearParams, featurizer=None, tree: LabelTree | None = None,
                log: Callable[[dict], None] | None = None, disentangle: bool = True,
                label_titles: Sequence[str] | None = None, memory: StageMemory | None = None,
                engine=None) -> XmcModel:
    """PIFA → tree (unless given) → [label disentanglement] → rankers on ready features X.

    With a `params.disentangle` section (and `disentangle=True`) the first matcher is trained on the
    tree, the tree becomes overlapping (`disentangle_tree`), and the rankers are trained on it.

    Args:
        X: N × D float32 CSR, rows l2-normalized (not normalized here).
        Y: N × L label matrix (sparse), entries > 0 positives (checked by the caller).
        label_names: L label names.
        params: :class:`XRLinearParams`.
        featurizer: the fitted TfidfVectorizer kept on the model (None: a feature-vector model).
        tree: a ready :class:`LabelTree` (None: PIFA + `build_tree` here).
        log: receives {"stage", "seconds", "peak_rss_mb", "rss_mb", ...} records (wall time, s;
            the stage's peak and final resident memory, MiB; see :mod:`memory`).
        disentangle: False: `tree` is final already (the Dagster `disentangled_tree` asset made it).
        label_titles: optional L titles for the copies table.
        memory: the :class:`memory.StageMemory` of the caller's stages (None: a new one).
        engine: an execution engine (:class:`engine_ray.RayEngine`) that builds the tree
            (``fit_xlinear(X, Y, params, log) -> (tree, ranker)``) or, given `tree`, trains its
            rankers (``fit_rankers(X, Y, tree, params, log)``) in place of this process; None:
            here, with threads.

    Returns:
        XmcModel; its method is "xr-linear-ld" whenever params has a disentangle section; when
        copies are made here, `model.copies` is their `copy_table`. With an ensemble section,
        an `ensemble.XmcEnsemble` (`ensemble.fit_ensemble`; `tree` is member 0's).

    Raises:
        ValueError: X and Y row counts differ, or Y's width is not the tree's label count.
    """
    memory = memory or StageMemory()
    if params.ensemble is not None:
        from .ensemble import fit_ensemble

        return fit_ensemble(X, Y, label_names, params, featurizer, log=log, label_titles=label_titles, memory=memory,
                            engine=engine, first_tree=tree, first_tree_final=tree is not None and not disentangle)
    _emit = log or (lambda rec: None)

    def emit(rec):
        _emit(memory.add(rec))

    if engine is not None:
        if disentangle and params.disentangle is not None:
            raise ValueError(f"fit_rankers: engine {engine.name} does not run label disentanglement; give the "
                             "disentangled tree (disentangle=False), as the Dagster assets do")
        t0 = time.perf_counter()
        if tree is None:
            tree, ranker = engine.fit_xlinear(X, Y, params, log=emit)
        else:
            ranker = engine.fit_rankers(X, Y, tree, params, log=emit)
        rec = {"stage": "rankers", "seconds": time.perf_counter() - t0, "engine": engine.name,
               "W_mb": nbytes_mb(*ranker.W)}
        _emit(memory.add(rec))
        return XmcModel(params, list(label_names), ranker, featurizer, method=params.method,
                        info={"engine": engine.name})
    if tree is None:
        t0 = time.perf_counter()
        Z = pifa(X, Y, params.pifa, threads=params.tree.threads)
        emit({"stage": "label_embeddings", "seconds": time.perf_counter() - t0, "Z_mb": nbytes_mb(Z)})
        t0 = time.perf_counter()
        tree = build_tree(Z, params.tree)
        del Z  # the tree is all that is kept of the embeddings
        emit({"stage": "label_tree", "seconds": time.perf_counter() - t0, "level_sizes": tree.level_sizes()})
    info: dict = {}
    copies = None
    if disentangle and params.disentangle is not None:
        t0 = time.perf_counter()
        final, A = disentangle_stage(X, Y, tree, params, return_affinity=True)
        if A is not None:
            copies = copy_table(A, tree, final, [str(n) for n in label_names], label_titles)
        info["disentangle"] = copy_stats(tree, final)
        emit({"stage": "disentangle", "seconds": time.perf_counter() - t0, **info["disentangle"]})
        tree = final
    t0 = time.perf_counter()
    levels = []

    def level_log(rec):
        levels.append(memory.add(rec))
        _emit({"stage": "rankers_level", **rec})

    ranker = XLinearModel.train(X, Y, tree, params.ranker, params.pred, log=level_log)
    rec = {"stage": "rankers", "seconds": time.perf_counter() - t0, "W_mb": nbytes_mb(*ranker.W)}
    memory.add(rec)
    # the whole stage: its levels' peaks too (each level record reset the peak)
    level_peaks = [r["peak_rss_mb"] for r in levels if "peak_rss_mb" in r]
    rec["peak_rss_mb"] = max([rec["peak_rss_mb"], *level_peaks])
    _emit(rec)
    model = XmcModel(params, list(label_names), ranker, featurizer, method=params.method,
                     info={"levels": levels, **info})
    model.copies = copies
    return model


def disentangle_stage(X, Y, tree: LabelTree, params: XRLinearParams,
                      matcher: XLinearModel | None = None, return_affinity: bool = False):
    """The overlapping tree of `params.disentangle`: first matcher (trained here unless given) →
    reassignment.

    Args:
        X: N × D float32 CSR, rows l2-normalized; Y: N × L label matrix.
        tree: the plain :class:`LabelTree`.
        params: :class:`XRLinearParams` (its disentangle, ranker and pred sections are used).
        matcher: the first matcher over `tree` (None: `disentangle.train_matcher` here).
        return_affinity: also return the affinity matrix A.

    Returns:
        LabelTree (the tree itself when there is no section, or when its settings cannot change
        it); with `return_affinity`, (tree, A) with A as `disentangle_tree` returns it (None when
        the tree is unchanged).
    """
    d = params.disentangle
    if not changes_tree(d, tree):
        return (tree, None) if return_affinity else tree
    if matcher is None:
        matcher = train_matcher(X, Y, tree, params.ranker, params.pred)
    return disentangle_tree(X, Y, tree, matcher, d, params.ranker, params.pred, return_affinity=return_affinity)


@dataclass
class Evaluation:
    """Result of `evaluate_model`.

    Attributes:
        metrics: {"p": {k: percent}, "r", "rp", "ndcg", ["psp"]} as `metrics.ranking_metrics`.
        n_test: number of evaluated documents N (int).
        predict_s: wall time of the prediction, seconds (float).
        unseen_test_labels: distinct test labels absent from training (int).
        sets: a calibrated model's label-set and probability numbers (:func:`set_evaluation`),
            else None.
    """

    metrics: dict
    n_test: int
    predict_s: float
    unseen_test_labels: int
    sets: dict | None = None

    def flat(self) -> dict:
        """One flat dict: {"p@1": percent rounded to 4 places, ..., "n_test", "predict_s"
        (seconds, 3 places), "unseen_test_labels"}, plus the `sets` entries (rounded; the
        reliability bins left out) for a calibrated model."""
        out = {f"{m}@{k}": round(v, 4) for m, ks in self.metrics.items() for k, v in ks.items()}
        out.update({"n_test": self.n_test, "predict_s": round(self.predict_s, 3),
                    "unseen_test_labels": self.unseen_test_labels})
        for k, v in (self.sets or {}).items():
            if not k.startswith("bins"):
                out[k] = round(float(v), 4) if isinstance(v, (float, np.floating)) else v
        return out

    def set_rows(self) -> dict:
        """A calibrated model's set and calibration numbers, as history rows of k = 0
        ({"set_micro_f1": value, "ece": value, "few_macro_f1": value, ...}); {} without calibration."""
        return {k: v for k, v in (self.sets or {}).items() if isinstance(v, (int, float)) and k != "calibration_pairs"}

    def history_metrics(self) -> dict:
        """What the DuckDB history (`results_db.append_evaluation`) keeps of this evaluation: the
        ranking metrics by k, and :meth:`set_rows` at k = 0."""
        return {**self.metrics, **{k: {0: float(v)} for k, v in self.set_rows().items()}}


def evaluation_topk(topk: int | None, metric_params) -> int:
    """Labels ranked per document in an evaluation: `topk`, or the largest cut-off when None.

    Raises:
        ValueError: topk < 1.
    """
    if topk is None:
        return max(metric_params.ks)
    check_predict_args(topk, None)
    return int(topk)


def check_predict_args(topk: int | None, beam_size: int | None) -> None:
    """The public boundary of every model's `predict`: topk and beam_size are None or integers >= 1.

    Raises:
        ValueError: naming the argument and its value.
    """
    for name, value in (("topk", topk), ("beam_size", beam_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def evaluate_model(model: XmcModel, inputs, Y: smat.spmatrix, label_names: Sequence[str],
                   metric_params=None, topk: int | None = None, beam_size: int | None = None,
                   policy: str = "micro") -> Evaluation:
    """Predict `inputs` (texts or X) and score against Y (columns named `label_names`).

    Test labels the model never saw stay in |y| (a model cannot predict them); PSP@k uses the
    model's training label counts.

    Args:
        model: any trained model (XmcModel, XTransformerModel; a LabelSpace with predict).
        inputs: N texts or an N × D feature matrix.
        Y: N × L' label matrix of the split, entries > 0 positives.
        label_names: L' names of Y's columns (aligned to the model's label ids by name).
        metric_params: `metrics.MetricParams` (None: ks 1, 3, 5, 10).
        topk: labels ranked per document (None: the largest cut-off of `metric_params.ks`);
            metrics at a cut-off above topk count the places left empty as misses (P@3 of a
            1-label ranking is at most 33.3).
        beam_size: beam width per tree level (None: the model's).
        policy: the decision policy of a calibrated model's label sets ("micro" or "macro").

    Returns:
        Evaluation: metrics in percent, n_test, predict_s (seconds), unseen_test_labels; with a
        calibrated model also `sets` (:func:`set_evaluation` of `policy`).

    Raises:
        ValueError: topk or beam_size not an integer >= 1; Y with a negative or non-finite
            entry, or a row count other than N; as the model's predict; an unknown policy.
    """
    from .metrics import MetricParams, ranking_metrics

    mp = metric_params or MetricParams()
    topk = evaluation_topk(topk, mp)
    check_label_matrix(Y, inputs.shape[0] if hasattr(inputs, "shape") else len(inputs))
    Y = model.align_labels(Y, label_names)
    cal = getattr(model, "calibration", None)
    # one prediction serves both: the ranking's topk and the sets' candidates
    n_pred = max(topk, cal.params.max_set_size) if cal is not None else topk
    t0 = time.perf_counter()
    P = model.predict(inputs, topk=n_pred, beam_size=beam_size)
    predict_s = time.perf_counter() - t0
    if Y.shape[1] > P.shape[1]:
        P = smat.csr_matrix((P.data, P.indices, P.indptr), shape=Y.shape)
    inv_prop = model.inverse_propensity(mp.propensity_A, mp.propensity_B, n_cols=Y.shape[1])
    result = ranking_metrics(Y, keep_topk(P, topk) if n_pred > topk else P, mp, inv_prop=inv_prop)
    sets = set_evaluation(cal, P, Y, model.label_counts, policy) if cal is not None else None
    return Evaluation(result, int(Y.shape[0]), predict_s, model.unseen_label_count(Y), sets)


def keep_topk(P: smat.csr_matrix, k: int) -> smat.csr_matrix:
    """The `k` highest-scored entries of every row of P (N × L CSR), as a new CSR (indices sorted)."""
    from .calibration import row_ranks
    from .sparse import keep_entries

    return keep_entries(P, row_ranks(P) < k)


def set_evaluation(cal, P: smat.csr_matrix, Y: smat.spmatrix, label_counts, policy: str = "micro") -> dict:
    """Label sets and probabilities of a calibrated model's scores, scored against Y.

    Args:
        cal: the model's :class:`calibration.Calibration`.
        P: N × L' float32 CSR of the model's scores (at least its top `cal.params.max_set_size`).
        Y: N × L' ground truth aligned to the model's labels.
        label_counts: (L,) training positives per label, or None (no buckets).
        policy: "micro" or "macro".

    Returns:
        {"policy", "set_micro_precision", "set_micro_recall", "set_micro_f1", "set_macro_f1",
        "set_macro_f1_all", "set_size", "{bucket}_micro_f1" ... (`metrics.set_report`), "ece",
        "brier" (calibrated), "ece_raw", "brier_raw" (the scores clipped to [0, 1]),
        "{bucket}_ece", "bins" / "bins_raw" (the reliability diagram's bins, calibrated / raw)};
        percent except brier.
    """
    from .metrics import FREQUENCY_BUCKETS, bucket_ece, calibration_metrics, set_report

    Pp = cal.proba(P)
    rep = set_report(Y, cal.decide(Pp, policy, P), label_counts)
    out: dict = {"policy": policy}
    for k, v in rep.items():
        out[k if k == "set_size" or k.split("_")[0] in {b[0] for b in FREQUENCY_BUCKETS} else f"set_{k}"] = v
    cm = calibration_metrics(Y, Pp)
    raw = P.copy()
    raw.data = np.clip(raw.data, 0.0, 1.0)
    cm_raw = calibration_metrics(Y, raw)
    out.update({"ece": cm["ece"], "brier": cm["brier"], "ece_raw": cm_raw["ece"], "brier_raw": cm_raw["brier"],
                "calibration_pairs": cm["n_pairs"]})
    if label_counts is not None:
        out.update({f"{name}_ece": v for name, v in bucket_ece(Y, Pp, label_counts).items()})
    out["bins"], out["bins_raw"] = cm["bins"], cm_raw["bins"]
    return out


def sibling_calibration(Y: smat.spmatrix, label_names: Sequence[str], params: XRLinearParams,
                        held_inputs, held_Y: smat.spmatrix, cal_params: CalibrationParams | None = None,
                        texts: Sequence[str] | None = None, X: smat.spmatrix | None = None,
                        log: Callable[[dict], None] | None = None, tree: LabelTree | None = None,
                        info: dict | None = None):
    """A calibration from a sibling model: one with the final model's settings, trained on some
    documents (Y with texts or X) and calibrated on others (held_inputs, held_Y) that the final
    model may then be trained on as well. Its scores on new documents are distributed as the
    final model's are, which a model calibrated on its own training documents' scores is not.

    Args:
        Y: N × L labels of the sibling's training documents; label_names: its L column names.
        params: the final model's :class:`XRLinearParams`.
        held_inputs: M held-out documents as the sibling's `predict` reads them (texts with
            `texts`, feature rows with `X`).
        held_Y: M × L' their labels, columns named `label_names` (L' = L).
        cal_params: :class:`calibration.CalibrationParams` (None: defaults).
        texts, X: the N training documents, as `train_xr_linear` takes them (one of the two; X is
            not changed).
        log: receives the sibling's stage records, marked {"sibling": True}.
        tree: with X (ready features, l2-normalized rows): the final model's label tree, on which
            the sibling trains only its rankers (the Dagster `calibration` asset); None: the
            sibling builds its own tree.
        info: what the held-out documents are, for `Calibration.info`.

    Returns:
        calibration.Calibration.

    Raises:
        ValueError: as `train_xr_linear` and `XmcModel.calibrate`.
    """
    emit = (lambda rec: log({**rec, "sibling": True})) if log is not None else None
    if texts is not None:
        sibling = train_xr_linear(Y, label_names, params, texts=list(texts), log=emit)
    elif tree is not None:
        sibling = fit_rankers(smat.csr_matrix(X, dtype=np.float32), Y, label_names, params, tree=tree, log=emit,
                              disentangle=False)
    else:
        sibling = train_xr_linear(Y, label_names, params, X=X, log=emit)  # copy_X: the caller's X stays as it is
    sibling.set_label_counts(Y)
    return sibling.calibrate(held_inputs, held_Y, label_names, cal_params, info=info)


def holdout_calibration(Y: smat.spmatrix, label_names: Sequence[str], params: XRLinearParams,
                        cal_params: CalibrationParams | None = None, texts: Sequence[str] | None = None,
                        X: smat.spmatrix | None = None, log: Callable[[dict], None] | None = None,
                        tree: LabelTree | None = None):
    """A calibration for a dataset without a dev split: a seeded `holdout_frac` of the training
    documents is held out, a sibling model with the same settings is trained on the others and
    calibrated on the held-out ones (:func:`sibling_calibration`). The final model (trained on
    all documents by the caller) takes that calibration.

    Args:
        Y: N × L training label matrix; label_names: its L column names.
        params: the final model's :class:`XRLinearParams`.
        cal_params: :class:`calibration.CalibrationParams` (holdout_frac, seed; None: defaults).
        texts, X: the N training documents, as `train_xr_linear` takes them (one of the two).
        log: receives the sibling's stage records, marked {"sibling": True}.
        tree: the final model's label tree (with X: ready features, l2-normalized rows): the sibling
            trains only its rankers on it (the Dagster `calibration` asset); None: the sibling
            builds its own tree from its documents.

    Returns:
        calibration.Calibration (info: source "holdout", holdout_frac, seed, n_docs).

    Raises:
        ValueError: fewer than 2 documents on either side; as `train_xr_linear`.
    """
    cal_params = cal_params or CalibrationParams()
    n = Y.shape[0]
    n_held = int(round(cal_params.holdout_frac * n))
    if n_held < 2 or n - n_held < 2:
        raise ValueError(f"holdout calibration: {n} documents leave {n_held} to hold out at holdout_frac "
                         f"{cal_params.holdout_frac}; give a dev split")
    held, rest = holdout_split(n, cal_params.holdout_frac, cal_params.seed)
    Y = smat.csr_matrix(Y)
    if texts is not None:
        texts = list(texts)
        fit_on, held_inputs = {"texts": [texts[i] for i in rest]}, [texts[i] for i in held]
    else:
        X = smat.csr_matrix(X)
        fit_on, held_inputs = {"X": X[rest]}, X[held]
    return sibling_calibration(Y[rest], label_names, params, held_inputs, Y[held], cal_params, log=log, tree=tree,
                               info={"source": "holdout", "holdout_frac": cal_params.holdout_frac,
                                     "seed": cal_params.seed}, **fit_on)
