"""XR-Linear end to end: features → PIFA → label tree → rankers, saved as a model folder.

A model folder loads without Dagster:

    model/
      params.json        format_version, method, nested params, label count, training info
      labels.txt         label names, one per line (line index = label id)
      featurizer/        TF-IDF vocabulary + idf (raw-text models only)
      ranker/            tree.npz, W{t}.npz, ranker.json
      copies.parquet     xr-linear-ld only: where each copied label sits and why
                         (`disentangle.copy_table`; `XmcModel.copies`)

`XmcModel.load(path).predict(texts_or_X, topk)` returns an N × L float32 CSR of scores.
"""

from __future__ import annotations

import json
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
from .folders import atomic_dir
from .label_embedding import PifaParams, pifa
from .memory import StageMemory, nbytes_mb
from .sparse import check_label_matrix, l2_normalize_rows
from .tfidf import TfidfParams, TfidfVectorizer
from .tree import LabelTree, TreeParams, build_tree
from .xlinear import PredParams, RankerParams, XLinearModel

__all__ = ["FORMAT_VERSION", "METHOD_XR_LINEAR", "METHOD_XR_LINEAR_LD", "XRLinearParams", "disentangle_stage", "XmcModel", "LabelSpace", "ModelFormatError", "read_model_meta", "load_model", "train_xr_linear", "check_predict_args", "evaluation_topk",
           "fit_rankers", "evaluate_model", "Evaluation"]

#: version of the model folder layout written to params.json (int); `read_model_meta` refuses others
FORMAT_VERSION = 1

#: method names: plain XR-Linear, and XR-Linear with label disentanglement (a `disentangle` section)
METHOD_XR_LINEAR = "xr-linear"
#: method name of XR-Linear with label disentanglement (params with a `disentangle` section)
METHOD_XR_LINEAR_LD = "xr-linear-ld"


class ModelFormatError(ValueError):
    """A model folder that is missing, incomplete or of another format version.

    A ValueError subclass; the message is one line naming the folder or file.
    """


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


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
    """

    tfidf: TfidfParams = field(default_factory=TfidfParams)
    pifa: PifaParams = field(default_factory=PifaParams)
    tree: TreeParams = field(default_factory=TreeParams)
    ranker: RankerParams = field(default_factory=RankerParams)
    pred: PredParams = field(default_factory=PredParams)
    disentangle: DisentangleParams | None = None

    #: optional sections: their class (a None value is left out of the dict)
    _OPTIONAL = {"disentangle": DisentangleParams}

    @property
    def method(self) -> str:
        """The model's method name (str): "xr-linear-ld" with a disentangle section, else "xr-linear"."""
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


class LabelSpace:
    """Label names and training label statistics shared by every model kind (XR-Linear,
    XR-Transformer, XLGen): aligning an evaluation split's labels, PSP@k propensities, unseen
    labels. Subclasses set `label_names`, `label_counts` and `n_train`."""

    label_names: list[str]
    label_counts: np.ndarray | None = None  # (L,) int64 training positives per label
    n_train: int | None = None

    @property
    def n_labels(self) -> int:
        """Number of labels L the model ranks (int): len(label_names)."""
        return len(self.label_names)

    def set_label_counts(self, Y_train: smat.spmatrix) -> None:
        """Remember per-label training frequencies (for PSP@k and tail buckets).

        Args:
            Y_train: N × L training label matrix (sparse; stored entries count as positives).
                Sets label_counts ((L,) int64) and n_train (N).
        """
        Y = smat.csc_matrix(Y_train)
        self.label_counts = np.diff(Y.indptr).astype(np.int64)
        self.n_train = int(Y.shape[0])

    def inverse_propensity(self, A: float = 0.55, B: float = 1.5, n_cols: int | None = None) -> np.ndarray | None:
        """Inverse propensities 1/p_l from the training counts (Jain et al. 2016, KDD).

        Args:
            A, B: propensity model parameters (see `metrics.inverse_propensity`).
            n_cols: width of the evaluation matrix (L + unseen labels); columns past L count
                as labels seen 0 times (None: L).

        Returns:
            (n_cols or L,) float64, or None when the training counts are unknown.
        """
        if self.label_counts is None:
            return None
        from .metrics import inverse_propensity_from_counts

        counts = self.label_counts
        if n_cols is not None and n_cols > len(counts):
            counts = np.concatenate([counts, np.zeros(n_cols - len(counts), np.int64)])
        return inverse_propensity_from_counts(counts, self.n_train, A, B)

    def align_labels(self, Y: smat.spmatrix, names: Sequence[str]) -> smat.csr_matrix:
        """Re-index an evaluation split's Y (columns named `names`) to this model's label ids.

        Labels the model never saw get extra columns after the model's L, so they still count in
        |y| (a model can never predict them). Returns N × (L + unseen) float32 CSR.
        """
        Y = smat.csr_matrix(Y, dtype=np.float32)
        if list(names) == self.label_names:
            return Y
        index = {n: i for i, n in enumerate(self.label_names)}
        used = np.unique(Y.indices)
        extra = [names[j] for j in used if names[j] not in index]
        extra_index = {n: self.n_labels + k for k, n in enumerate(extra)}
        remap = np.array([index.get(n, extra_index.get(n, -1)) for n in names], dtype=np.int64)
        out = smat.csr_matrix((Y.data, remap[Y.indices], Y.indptr), shape=(Y.shape[0], self.n_labels + len(extra)))
        out.sort_indices()
        return out

    def unseen_label_count(self, Y_aligned: smat.spmatrix) -> int:
        """Distinct labels of Y_aligned absent from training (no positives, or not in the model).

        Args:
            Y_aligned: N × (L + unseen) sparse matrix from :meth:`align_labels`.

        Returns:
            int, the count of such labels with at least one positive in Y_aligned.
        """
        used = np.unique(smat.csr_matrix(Y_aligned).indices)
        unseen = used >= self.n_labels
        if self.label_counts is not None:
            inside = used[~unseen]
            unseen[~unseen] = self.label_counts[inside] == 0
        return int(unseen.sum())

    def named_rankings(self, P: smat.csr_matrix) -> list[list[tuple[str, float]]]:
        """Each row of a score matrix as (label name, score) pairs, best first.

        Args:
            P: N × L float32 CSR of predicted scores (a model's ``predict`` output).

        Returns:
            N lists of (label name, float score), by decreasing score; ties keep the stored
            order (lower label id first in a model's sorted CSR).
        """
        out = []
        for i in range(P.shape[0]):
            a, b = P.indptr[i], P.indptr[i + 1]
            order = np.argsort(-P.data[a:b], kind="stable")
            out.append([(self.label_names[P.indices[a + j]], float(P.data[a + j])) for j in order])
        return out

    def save_label_counts(self, folder: Path) -> None:
        """Write label_counts.npy ((L,) int64) and train_stats.json (n_train) into `folder`
        (a Path that exists); nothing when the counts are unknown."""
        if self.label_counts is not None:
            np.save(folder / "label_counts.npy", self.label_counts)
            (folder / "train_stats.json").write_text(json.dumps({"n_train": self.n_train}))

    def load_label_counts(self, folder: Path) -> None:
        """Read what :meth:`save_label_counts` wrote into `folder` (a Path), when it is there.

        Raises:
            OSError, ValueError, KeyError: train_stats.json missing or unreadable beside
                label_counts.npy (model loaders turn these into ModelFormatError).
        """
        if (folder / "label_counts.npy").is_file():
            self.label_counts = np.load(folder / "label_counts.npy")
            self.n_train = json.loads((folder / "train_stats.json").read_text())["n_train"]


class XmcModel(LabelSpace):
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
            X = smat.csr_matrix(texts_or_X, dtype=np.float32)
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
        X = self.featurize(texts_or_X)
        d = self.params.disentangle
        if d is not None and d.merge != "max":
            return predict_merged(self.ranker, X, d.merge, beam_size=beam_size, only_topk=topk,
                                  post_processor=post_processor)
        return self.ranker.predict(X, beam_size=beam_size, only_topk=topk, post_processor=post_processor)

    def predict_labels(self, texts_or_X, topk: int = 5, **kw) -> list[list[tuple[str, float]]]:
        """The top labels of every document by name.

        Args:
            texts_or_X: N texts or an N × D feature matrix, as :meth:`predict`.
            topk: labels per document (int >= 1).
            **kw: beam_size, post_processor (see :meth:`predict`).

        Returns:
            N lists of (label name, float score), best first (ties: lower label id first).

        Raises:
            ValueError: as :meth:`predict`.
        """
        return self.named_rankings(self.predict(texts_or_X, topk=topk, **kw))

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
            meta = {
                "format_version": FORMAT_VERSION,
                "method": self.method,
                "n_labels": self.n_labels,
                "n_features": self.ranker.n_features,
                "has_text_featurizer": self.featurizer is not None,
                "params": self.params.to_dict(),
                "info": self.info,
            }
            (tmp / "params.json").write_text(json.dumps(meta, indent=2))
            with open(tmp / "labels.txt", "w", encoding="utf-8") as fh:
                fh.write("".join(f"{name}\n" for name in self.label_names))
            if self.featurizer is not None:
                self.featurizer.save(tmp / "featurizer")
            self.ranker.save(tmp / "ranker")
            self.save_label_counts(tmp)
            if self.copies is not None:
                self.copies.write_parquet(tmp / "copies.parquet")
        return path

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
            with open(path / "labels.txt", encoding="utf-8", newline="\n") as fh:
                names = fh.read().split("\n")[:-1]
            featurizer = TfidfVectorizer.load(path / "featurizer") if meta.get("has_text_featurizer") else None
            ranker = XLinearModel.load(path / "ranker")
            model = cls(XRLinearParams.from_dict(meta["params"]), names, ranker, featurizer,
                        meta.get("method", "xr-linear"), meta.get("info"))
            model.load_label_counts(path)
            if (path / "copies.parquet").is_file():
                model.copies = _read_copies(path / "copies.parquet")
        except ModelFormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            # a file missing, truncated or unparsable (json.JSONDecodeError and
            # UnicodeDecodeError are ValueErrors)
            raise ModelFormatError(
                _one_line(f"{path}: incomplete or corrupt model folder ({type(e).__name__}: {e}); retrain the model")
            ) from None
        return model


def _read_copies(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except pl.exceptions.PolarsError as e:  # not a ValueError: say which file, as for the others
        raise ModelFormatError(_one_line(f"{path}: unreadable copies table ({type(e).__name__}: {e}); "
                                         "retrain the model")) from None


def read_model_meta(path: str | Path) -> dict:
    """params.json of a model folder, checked: a JSON object of this format version.

    Args:
        path: the model folder (str or Path).

    Returns:
        dict: format_version, method, n_labels, params, info, ...

    Raises:
        ModelFormatError: (one line naming the folder or file) no params.json, unreadable or not
            a JSON object, or a format_version other than FORMAT_VERSION.
    """
    path = Path(path)
    meta_file = path / "params.json"
    if not meta_file.is_file():
        raise ModelFormatError(f"{path}: not a model folder (no params.json)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(_one_line(f"{meta_file}: unreadable model metadata ({e})")) from None
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{meta_file}: unreadable model metadata (not a JSON object)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{meta_file}: model format version {version!r}, this xmc reads version {FORMAT_VERSION}; retrain the model"
        )
    return meta


#: model kinds beyond XR-Linear: method → (module, class); imported only when such a model is loaded
_MODEL_CLASSES = {
    "xr-transformer": ("xmc_core.xtransformer", "XTransformerModel"),
    "xlgen": ("xmc_core.xlgen", "XLGenModel"),
}


def load_model(path: str | Path):
    """Load any model folder, dispatching on the method recorded in its params.json.

    Args:
        path: the model folder (str or Path).

    Returns:
        XmcModel ("xr-linear", "xr-linear-ld"), XTransformerModel ("xr-transformer") or
        XLGenModel ("xlgen"); the latter two import torch.

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
        XmcModel whose predict gives N × L float32 CSR scores.

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
        copies are made here, `model.copies` is their `copy_table`.

    Raises:
        ValueError: X and Y row counts differ, or Y's width is not the tree's label count.
    """
    memory = memory or StageMemory()
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
    """

    metrics: dict
    n_test: int
    predict_s: float
    unseen_test_labels: int

    def flat(self) -> dict:
        """One flat dict: {"p@1": percent rounded to 4 places, ..., "n_test", "predict_s"
        (seconds, 3 places), "unseen_test_labels"}."""
        out = {f"{m}@{k}": round(v, 4) for m, ks in self.metrics.items() for k, v in ks.items()}
        out.update({"n_test": self.n_test, "predict_s": round(self.predict_s, 3),
                    "unseen_test_labels": self.unseen_test_labels})
        return out


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
                   metric_params=None, topk: int | None = None, beam_size: int | None = None) -> Evaluation:
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

    Returns:
        Evaluation: metrics in percent, n_test, predict_s (seconds), unseen_test_labels.

    Raises:
        ValueError: topk or beam_size not an integer >= 1; Y with a negative or non-finite
            entry, or a row count other than N; as the model's predict.
    """
    from .metrics import MetricParams, ranking_metrics

    mp = metric_params or MetricParams()
    topk = evaluation_topk(topk, mp)
    check_label_matrix(Y, inputs.shape[0] if hasattr(inputs, "shape") else len(inputs))
    Y = model.align_labels(Y, label_names)
    t0 = time.perf_counter()
    P = model.predict(inputs, topk=topk, beam_size=beam_size)
    predict_s = time.perf_counter() - t0
    if Y.shape[1] > P.shape[1]:
        P = smat.csr_matrix((P.data, P.indices, P.indptr), shape=Y.shape)
    inv_prop = model.inverse_propensity(mp.propensity_A, mp.propensity_B, n_cols=Y.shape[1])
    result = ranking_metrics(Y, P, mp, inv_prop=inv_prop)
    return Evaluation(result, int(Y.shape[0]), predict_s, model.unseen_label_count(Y))
