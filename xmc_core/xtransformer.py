"""XR-Transformer: a transformer encoder fine-tuned level by level on a label tree, then XR-Linear
rankers on [TF-IDF ⊕ embedding] (Zhang et al., "Fast multi-resolution transformer fine-tuning
for extreme multi-label text classification", NeurIPS 2021).

Recipe (`train_xr_transformer`):

1. TF-IDF features X (N × D float32 CSR, l2 rows), PIFA label embeddings Z = PIFA(X, Y) and a
   *fine-tuning tree* from them (`FineTuneParams.nr_splits / max_leaf_size`: e.g. reuters-21578's
   90 labels → levels [16, 90], eurlex57k → [4, 64, 1024, 4271]) — the resolutions of the
   coarse-to-fine schedule.
2. XR-Linear rankers on X over that tree (`xmc_core.xlinear`). They give, per level t, the TF-IDF
   block of the joint ranker and the matcher-aware negatives (MAN: the level-(t-1) beam).
3. Fine-tuning, t = 0 .. T-1, each level starting from the encoder and heads of the previous one:
   the active (document, node) pairs are the children of the document's positive parents (TFN)
   and of its beam at t-1 (MAN); each pair is scored by a linear ranker over [TF-IDF ⊕ φ(x)]

       s_t(x, c) = α_t · w̃_c·x_tfidf + w_c·φ(x) + b_c

   with the TF-IDF block w̃_c fixed at its XR-Linear solution (a convex optimum already; only its
   gain α_t is learned), and φ (the encoder), w_c, b_c learned jointly under the squared hinge
   Cp/Cn·max(0, 1 − y·s)². A child's head starts from its parent's.
4. Embed all documents with the fine-tuned encoder (E: N × H float32, l2 rows; optionally
   projected on its top `concat.embed_dim` principal directions), concatenate
   X_cat = l2_rows([X ⊕ E]), build a refined PIFA tree on X_cat and train the final XR-Linear
   rankers on it (the `tree` / `ranker` sections of the params). Prediction featurizes a text the
   same way and runs beam search over those rankers: the encoder's and the TF-IDF scores meet in
   one linear model over the concatenated features, as in the paper.

No file path appears in the numerics: checkpoints pass through `FineTuneState` and a callback;
`save_state` / `load_state` read and write them (after each level, for resume).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as smat

from .encoder import (EncoderParams, autocast, check_lengths, encode, load_encoder, pad_batch, pick_device,
                      tokenize)
from .label_embedding import PifaParams, pifa
from .folders import atomic_dir
from . import progress
from .model import XRLinearParams, check_predict_args
from .model_base import ModelBase, ModelFormatError, one_line, read_label_names, read_model_meta
from .params import ParamsBase
from .sparse import binarize, check_label_matrix, l2_normalize_rows
from .tfidf import TfidfParams, TfidfVectorizer
from .tree import LabelTree, TreeParams, build_tree
from .xlinear import PredParams, RankerParams, XLinearModel, _score_children, _with_bias

__all__ = ["METHOD_XR_TRANSFORMER", "FineTuneParams", "EnsembleParams", "label_head", "XTransformerParams", "FineTuneState", "finetune_encoder",
           "train_xr_transformer", "train_with_checkpoints", "fit_encoder", "fit_concat_rankers", "checkpoint_key", "XTransformerModel", "concat_features",
           "save_state", "load_state", "ConcatParams", "fit_projection", "project", "concat_train_features"]

#: method name of an XR-Transformer model folder (params.json "method")
METHOD_XR_TRANSFORMER = "xr-transformer"


@dataclass
class FineTuneParams(ParamsBase):
    """Coarse-to-fine fine-tuning of the encoder (defaults sized for 2 CPU cores).

    nr_splits, max_leaf_size: the fine-tuning tree (its levels are the resolutions).
    steps_per_level: optimizer steps at each level (0: no fine-tuning, pretrained encoder only).
    batch_size: documents per step. max_length: tokens per document during fine-tuning.
    encoder_lr, head_lr: AdamW learning rates of the encoder and of the level heads (w, b, α).
    warmup: share of a level's steps with a linear warm-up (then linear decay to 0).
    Cp, Cn: squared-hinge weights of positive and negative pairs.
    negative_sampling: "tfn", "man" or "tfn+man" (the active pairs, as in the rankers).
    man_beam_size: beam of the TF-IDF matcher that gives MAN negatives.
    tfidf_gain_init: starting value of α, the learned gain of the TF-IDF block. On training
        documents the TF-IDF rankers' scores are close to perfect (they were fit there), so
        starting at α = 1 leaves the encoder almost no loss to learn from; at 0 the encoder learns
        first and the joint ranker takes TF-IDF in as far as it helps.
    max_doc_labels: documents with more labels than this are not sampled for fine-tuning (0: no
        limit); they stay in the rankers' training. Generic titles such as yso-finna-en's
        "Abstract." (3,083 labels) would otherwise put thousands of positive pairs into one batch.
    max_levels: fine-tune on the first max_levels levels of the tree only (0: all, down to the
        labels). On large label sets the coarse levels carry most of the gain for a fraction of
        the cost: the TF-IDF matcher is trained on those levels only, and the model has no label
        head (the "average" ensemble then falls back to the rankers).
    weight_decay: AdamW weight decay of the encoder's parameters (the heads get none).
    grad_clip: clip the encoder's gradient norm at this value (0: no clipping).
    seed: document sampling and head initialization. threads: torch CPU threads (0: default).

    Source: XR-Transformer's multi-resolution fine-tuning (Zhang et al. 2021, "Fast Multi-Resolution
    Transformer Fine-tuning for Extreme Multi-label Text Classification", NeurIPS).
    """

    nr_splits: int = 16
    max_leaf_size: int = 8
    steps_per_level: int = 150
    batch_size: int = 32
    max_length: int = 128
    encoder_lr: float = 3e-5
    head_lr: float = 5e-3
    warmup: float = 0.1
    weight_decay: float = 0.01
    Cp: float = 1.0
    Cn: float = 1.0
    negative_sampling: str = "tfn+man"
    man_beam_size: int = 10
    tfidf_gain_init: float = 0.0
    grad_clip: float = 1.0
    max_doc_labels: int = 100
    max_levels: int = 0
    seed: int = 0
    threads: int = 0

    def __post_init__(self):
        if self.negative_sampling not in ("tfn", "man", "tfn+man"):
            raise ValueError(f"FineTuneParams.negative_sampling: tfn, man or tfn+man, got {self.negative_sampling!r}")
        for name in ("steps_per_level", "max_doc_labels", "max_levels"):
            if getattr(self, name) < 0:
                raise ValueError(f"FineTuneParams.{name}: must be >= 0")
        for name in ("batch_size", "max_length", "man_beam_size", "max_leaf_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"FineTuneParams.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class EnsembleParams(ParamsBase):
    """How prediction combines the rankers on [TF-IDF ⊕ E] with the encoder's own label scores.

    method: "concat-only" (the rankers alone) or "average": over the union of the rankers' top
        list and the head's `head_topk` labels, (1 − weight)·ranker score + weight·σ(w_l·φ(x) + b_l),
        where w_l, b_l is the label level's head from fine-tuning (PECOS's "average" ensemble of
        the concat model and the transformer). Models without fine-tuning have no head and use
        the rankers alone. Default "concat-only": on reuters-21578 "average" measured P@1/3/5
        93.87 / 37.33 / 23.21 against 94.63 / 38.01 / 23.72 for the rankers alone.
    """

    method: str = "concat-only"
    weight: float = 0.5
    head_topk: int = 20

    def __post_init__(self):
        if self.method not in ("concat-only", "average"):
            raise ValueError(f"EnsembleParams.method: 'concat-only' or 'average', got {self.method!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"EnsembleParams.weight: must be in [0, 1], got {self.weight}")


@dataclass
class ConcatParams(ParamsBase):
    """How the embedding block joins the TF-IDF block in the final rankers' features.

    embed_dim: 0 keeps all H embedding dimensions; d > 0 projects the embeddings on their top d
        principal directions (fitted on the training embeddings, stored in the model) and
        l2-normalizes them again before the concatenation. The block is dense, so it sets the
        rankers' cost: on short texts (yso-finna-en: 21 TF-IDF nonzeros per title) 384 dense
        columns make the features 19× larger; d = 64 keeps them at about 4×.
    """

    embed_dim: int = 0

    def __post_init__(self):
        if self.embed_dim < 0:
            raise ValueError(f"ConcatParams.embed_dim: must be >= 0, got {self.embed_dim}")


def fit_projection(E: np.ndarray, d: int) -> dict:
    """Top-d principal directions (PCA) of the rows of E.

    Args:
        E: N × H float embeddings (computed in float64).
        d: number of directions, 1 <= d <= H.

    Returns:
        {"mean": (H,) float32, "components": H × d float32}, directions by decreasing variance,
        each signed so that its largest-magnitude entry is positive.

    Raises:
        ValueError: d outside 1..H.
    """
    E = np.asarray(E, dtype=np.float64)
    if not 0 < d <= E.shape[1]:
        raise ValueError(f"fit_projection: d must be in 1..{E.shape[1]}, got {d}")
    mean = E.mean(axis=0)
    cov = (E - mean).T @ (E - mean) / max(1, E.shape[0] - 1)
    vals, vecs = np.linalg.eigh(cov)  # ascending
    components = vecs[:, ::-1][:, :d]
    # a fixed sign per direction (largest |entry| positive), so refits give the same features
    flip = np.sign(components[np.abs(components).argmax(axis=0), np.arange(d)])
    return {"mean": mean.astype(np.float32), "components": (components * flip).astype(np.float32)}


def project(E: np.ndarray, projection: dict | None) -> np.ndarray:
    """E on the projection's directions, rows l2-normalized again.

    Args:
        E: N × H embeddings.
        projection: {"mean", "components"} from :func:`fit_projection`, or None.

    Returns:
        N × d float32 ndarray; E itself (unchanged) when projection is None.
    """
    if projection is None:
        return E
    P = (np.asarray(E, np.float32) - projection["mean"]) @ projection["components"]
    norms = np.linalg.norm(P, axis=1, keepdims=True)
    return (P / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class XTransformerParams:
    """All settings of an XR-Transformer model (nested sections; round-trips JSON).

    Attributes:
        tfidf, pifa, tree, ranker, pred: as in XR-Linear (:class:`XRLinearParams`); `tree` and
            `ranker` shape the refined tree and final rankers on the concatenated features (the
            TF-IDF matcher of the fine-tuning stage uses `ranker` too; its default threshold is
            0.01, not 0.1).
        encoder: :class:`EncoderParams`, which checkpoint and how texts are embedded.
        finetune: :class:`FineTuneParams`, the fine-tuning schedule.
        ensemble: :class:`EnsembleParams`, how prediction combines the rankers with the
            fine-tuned label head.
        concat: :class:`ConcatParams`, the embedding block of the rankers' features (all
            dimensions or a PCA projection).
    """

    tfidf: TfidfParams = field(default_factory=TfidfParams)
    pifa: PifaParams = field(default_factory=PifaParams)
    tree: TreeParams = field(default_factory=TreeParams)
    # threshold 0.01, not XR-Linear's 0.1: the embedding block's weights are small and dense, and
    # pruning them at 0.1 loses most of what the encoder adds (reuters-21578: P@1 94.30 vs 93.71)
    ranker: RankerParams = field(default_factory=lambda: RankerParams(threshold=0.01))
    pred: PredParams = field(default_factory=PredParams)
    encoder: EncoderParams = field(default_factory=EncoderParams)
    finetune: FineTuneParams = field(default_factory=FineTuneParams)
    ensemble: EnsembleParams = field(default_factory=EnsembleParams)
    concat: ConcatParams = field(default_factory=ConcatParams)

    method = METHOD_XR_TRANSFORMER

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict {section: {key: value}}."""
        return {f.name: getattr(self, f.name).to_dict() for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict | None) -> "XTransformerParams":
        """Settings from a nested dict such as :meth:`to_dict` returns.

        Args:
            d: {section: {key: value}}; missing sections and keys take their defaults (None:
                all defaults).

        Returns:
            XTransformerParams.

        Raises:
            ValueError: an unknown section or key, a section that is not an object, or a value a
                section's own checks refuse (the message names the section).
        """
        d = dict(d or {})
        known = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"XTransformerParams: unknown section(s) {sorted(unknown)}; expected {sorted(known)}")
        kwargs = {}
        for name, sub in d.items():
            if not isinstance(sub, dict):
                raise ValueError(f"XTransformerParams.{name}: expected an object, got {sub!r}")
            default = known[name].default_factory()
            try:
                kwargs[name] = type(default).from_dict({**default.to_dict(), **sub})
            except (TypeError, ValueError) as e:
                raise ValueError(f"XTransformerParams.{name}: {e}") from None
        return cls(**kwargs)

    def merged(self, overrides: dict | None) -> "XTransformerParams":
        """A copy with nested overrides applied ({"finetune": {"steps_per_level": 0}} changes only that key).

        Args:
            overrides: {section: {key: value}} (None: no change).

        Returns:
            A new XTransformerParams (self is unchanged).

        Raises:
            ValueError: a section that is not an object, or an unknown section or key.
        """
        base = self.to_dict()
        for section, values in (overrides or {}).items():
            if not isinstance(values, dict):
                raise ValueError(f"XTransformerParams: section {section!r} must be an object, got {values!r}")
            base.setdefault(section, {}).update(values)
        return XTransformerParams.from_dict(base)

    def xr_linear(self) -> XRLinearParams:
        """The XR-Linear part of these settings (tfidf, pifa, tree, ranker, pred sections; the
        section objects are shared, not copied), as an :class:`XRLinearParams` without disentangle."""
        return XRLinearParams(tfidf=self.tfidf, pifa=self.pifa, tree=self.tree, ranker=self.ranker, pred=self.pred)

    def check_lengths(self) -> None:
        """`encoder.max_length` and `finetune.max_length` within the encoder's positions (reads its
        config, loads no weights): a setting that would fail inside torch after minutes of work
        fails here, when the settings are parsed.

        Raises:
            EncoderError (a ValueError): one line naming the setting, its value and the limit.
        """
        check_lengths(self.encoder.name, {"encoder.max_length": self.encoder.max_length,
                                          "finetune.max_length": self.finetune.max_length})


@dataclass
class FineTuneState:
    """What a finished level leaves for the next one (and for resume).

    key: what the checkpoint belongs to (settings and data fingerprint, set by the caller); a
    checkpoint of another key is not resumed.
    levels_done: number of finished levels. encoder_state: the encoder's state_dict (torch
    tensors, CPU). heads: per finished level t, {"W": H × K_t float32, "b": (K_t,), "alpha": ()}.
    history: per finished level {"level", "n_nodes", "steps", "loss", "seconds", "active_pairs"}.
    """

    levels_done: int = 0
    encoder_state: dict | None = None
    heads: list = field(default_factory=list)
    history: list = field(default_factory=list)
    key: str = ""


def save_state(state: FineTuneState, folder: str | Path) -> None:
    """Write a fine-tuning checkpoint folder atomically (a crash leaves the previous checkpoint).

    Args:
        state: the :class:`FineTuneState` to save.
        folder: destination (str or Path), kind "checkpoint": encoder.pt (torch state_dict),
            heads.npz (float32 W{t}, b{t}, alpha{t}) and state.json (levels_done, history, key).

    Raises:
        PathInUseError: `folder` exists and is not a folder xmc wrote.
    """
    import torch

    with atomic_dir(folder, kind="checkpoint") as tmp:
        torch.save(state.encoder_state, tmp / "encoder.pt")
        arrays = {}
        for t, h in enumerate(state.heads):
            for k, v in h.items():
                arrays[f"{k}{t}"] = np.asarray(v, dtype=np.float32)
        np.savez(tmp / "heads.npz", **arrays)
        (tmp / "state.json").write_text(json.dumps({"levels_done": state.levels_done, "history": state.history,
                                                      "key": state.key}))


def load_state(folder: str | Path, key: str | None = None) -> FineTuneState | None:
    """The fine-tuning checkpoint saved in `folder` by :func:`save_state`.

    Args:
        folder: the checkpoint folder (str or Path); it need not exist.
        key: the expected :func:`checkpoint_key` (None: accept any).

    Returns:
        FineTuneState (encoder state on CPU, heads as float32 arrays), or None when there is no
        state.json or it belongs to another key.

    Raises:
        OSError, KeyError, ValueError: a checkpoint with missing or unreadable files.
    """
    import torch

    from .checkpoint import read_checkpoint_meta

    folder = Path(folder)
    meta = read_checkpoint_meta(folder, key)
    if meta is None:
        return None
    with np.load(folder / "heads.npz") as arrs:
        heads = [{k: arrs[f"{k}{t}"] for k in ("W", "b", "alpha")} for t in range(meta["levels_done"])]
    enc = torch.load(folder / "encoder.pt", map_location="cpu", weights_only=True)
    return FineTuneState(meta["levels_done"], enc, heads, meta["history"], meta.get("key", ""))


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------
def _active_pairs(Xb, Y, tree: LabelTree, matcher: XLinearModel, t: int, ft: FineTuneParams):
    """Active (document, node) pairs of level t with their TF-IDF scores and targets.

    Returns CSR matrices over N × K_t: S (float32 raw TF-IDF ranker scores) and P (1.0 where the
    pair is positive), sharing one sparsity pattern.
    """
    N = Xb.shape[0]
    C = tree.C[t]
    Y_t = Y if t == tree.depth - 1 else binarize(Y @ tree.label_to_level(t))
    if t == 0:
        rows = np.arange(N, dtype=np.int64)
        parents = np.zeros(N, dtype=np.int64)
    else:
        parts = []
        if "tfn" in ft.negative_sampling:
            parts.append(binarize(Y @ tree.label_to_level(t - 1)))
        if "man" in ft.negative_sampling:
            partial = XLinearModel(LabelTree(tree.C[:t]), matcher.W[:t], matcher.bias, matcher.pred_params)
            parts.append(binarize(partial._beam(Xb, ft.man_beam_size, ft.man_beam_size, "l3-hinge",
                                                level_scores=True)))
        A = binarize(sum(parts[1:], parts[0])).tocsr()
        A.sort_indices()
        rows = np.repeat(np.arange(N, dtype=np.int64), np.diff(A.indptr))
        parents = A.indices.astype(np.int64)
    r, j, v = _score_children(Xb, matcher.W[t], C.indptr, rows, parents)
    nodes = C.indices[j].astype(np.int64)
    S = smat.csr_matrix((v.astype(np.float32), (r, nodes)), shape=(N, C.shape[0]))
    S.sum_duplicates()  # a node is reached once per pair; duplicates cannot occur in a plain tree
    S.sort_indices()
    Yc = smat.csr_matrix(Y_t)
    pos = np.asarray(Yc[np.repeat(np.arange(N), np.diff(S.indptr)), S.indices]).ravel() > 0
    P = smat.csr_matrix((pos.astype(np.float32), S.indices, S.indptr), shape=S.shape)
    return S, P


def finetune_encoder(
    encoder,
    tokens: tuple[np.ndarray, np.ndarray],
    X: smat.csr_matrix,
    Y: smat.csr_matrix,
    tree: LabelTree,
    matcher: XLinearModel,
    ft: FineTuneParams,
    device: str = "cpu",
    state: FineTuneState | None = None,
    on_level: Callable[[FineTuneState], None] | None = None,
    log: Callable[[dict], None] | None = None,
    pad_id: int = 0,
    precision: str = "auto",
) -> FineTuneState:
    """Fine-tune `encoder` (a TextEncoder, updated in place) coarse to fine over `tree`.

    tokens: (flat ids, offsets) of the N training documents (`encoder.tokenize`). X: N × D float32
    CSR (l2 rows). Y: N × L binary. matcher: XR-Linear on X over `tree`. state: a checkpoint to
    resume from (its finished levels are skipped). on_level(state) runs after each level.
    precision: EncoderParams.precision (bfloat16 autocast or not).
    Returns the final state (heads of every level, history).
    """
    import torch

    emit = log or (lambda rec: None)
    state = state or FineTuneState()
    if state.encoder_state is not None:
        encoder.load_state_dict(state.encoder_state)
    encoder.to(device)
    Xb = _with_bias(X, matcher.bias)
    Y = binarize(Y)
    H = encoder.hidden_size
    for t in range(state.levels_done, tree.depth):
        t0 = time.perf_counter()
        rng = np.random.default_rng([ft.seed, t])
        torch.manual_seed(ft.seed * 1009 + t)  # per level (dropout too): a resumed run repeats it exactly
        K = tree.C[t].shape[0]
        steps = ft.steps_per_level
        # the level's batches are drawn first, so the active pairs are computed for the sampled
        # documents only (yso-finna-en: 9,600 of 522,788 titles at 300 steps of 32, not 10^8 pairs)
        n_labels = np.diff(Y.indptr)
        eligible = np.flatnonzero((n_labels > 0) & ((n_labels <= ft.max_doc_labels) | (ft.max_doc_labels == 0)))
        batches = []
        if len(eligible) > 0:
            order, pos_ptr = rng.permutation(eligible), 0
            for _ in range(steps):
                if pos_ptr + ft.batch_size > len(order):
                    order, pos_ptr = rng.permutation(eligible), 0
                batches.append(order[pos_ptr:pos_ptr + ft.batch_size])
                pos_ptr += ft.batch_size
        sampled = np.unique(np.concatenate(batches)) if batches else np.zeros(0, np.int64)
        S, P = _active_pairs(Xb[sampled], Y[sampled], tree, matcher, t, ft) if batches else (None, None)
        # heads: a child starts from its parent (level 0: zeros)
        if t == 0 or not state.heads:
            W0 = np.zeros((H, K), np.float32)
            b0 = np.zeros(K, np.float32)
        else:
            parent_of = np.asarray(tree.C[t].argmax(axis=1)).ravel()
            prev = state.heads[t - 1]
            W0, b0 = prev["W"][:, parent_of].copy(), prev["b"][parent_of].copy()
        W_head = torch.nn.Parameter(torch.from_numpy(W0).to(device))
        b_head = torch.nn.Parameter(torch.from_numpy(b0).to(device))
        alpha = torch.nn.Parameter(torch.full((), float(ft.tfidf_gain_init), device=device))
        losses = []
        if batches:  # empty without steps or without an eligible document
            encoder.train()
            opt = torch.optim.AdamW([
                {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": ft.encoder_lr,
                 "weight_decay": ft.weight_decay},
                {"params": [W_head, b_head, alpha], "lr": ft.head_lr, "weight_decay": 0.0},
            ])
            warm = max(1, int(round(ft.warmup * steps)))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
            bar = progress.task(f"fine-tune level {t + 1}", len(batches), "step")
            for step, batch in enumerate(batches):
                ids, mask = pad_batch(tokens[0], tokens[1], batch, pad_id)
                local = np.searchsorted(sampled, batch)
                Sb, Pb = S[local], P[local]
                r = torch.from_numpy(np.repeat(np.arange(len(batch)), np.diff(Sb.indptr))).to(device)
                c = torch.from_numpy(Sb.indices.astype(np.int64)).to(device)
                s_tf = torch.from_numpy(Sb.data).to(device)
                y = torch.from_numpy(2.0 * Pb.data - 1.0).to(device)
                cost = torch.where(y > 0, torch.full_like(y, ft.Cp), torch.full_like(y, ft.Cn))
                with autocast(device, precision):
                    emb = encoder(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
                emb = emb.float()
                s = alpha * s_tf + (emb[r] * W_head[:, c].T).sum(1) + b_head[c]
                loss = (cost * torch.clamp(1.0 - y * s, min=0.0) ** 2).sum() / len(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if ft.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(encoder.parameters(), ft.grad_clip)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                bar.update()
                if (step + 1) % 25 == 0 or step + 1 == steps:
                    emit({"stage": "finetune_step", "level": t, "step": step + 1, "steps": steps,
                          "loss": float(np.mean(losses[-25:])), "seconds": time.perf_counter() - t0})
            bar.close()
        rec = {"level": t, "n_nodes": int(K), "steps": steps, "sampled_docs": int(len(sampled)),
               "active_pairs": int(S.nnz) if S is not None else 0,
               "loss_first": float(np.mean(losses[:10])) if losses else None,
               "loss": float(np.mean(losses[-25:])) if losses else None,
               "alpha": float(alpha.detach()), "seconds": time.perf_counter() - t0}
        emit({"stage": "finetune_level", **rec})
        state = FineTuneState(
            levels_done=t + 1,
            encoder_state={k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()},
            heads=state.heads[:t] + [{"W": W_head.detach().cpu().numpy(), "b": b_head.detach().cpu().numpy(),
                                      "alpha": np.float32(alpha.detach().cpu())}],
            history=state.history[:t] + [rec],
            key=state.key,
        )
        if on_level is not None:
            on_level(state)
    return state


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def concat_features(X: smat.csr_matrix, E: np.ndarray) -> smat.csr_matrix:
    """l2_rows([X ⊕ E]): N × (D + H) float32 CSR from TF-IDF rows X and embeddings E (N × H)."""
    if X.shape[0] != E.shape[0]:
        raise ValueError(f"concat_features: X has {X.shape[0]} rows, E has {E.shape[0]}")
    Xc = smat.hstack([smat.csr_matrix(X, dtype=np.float32), smat.csr_matrix(E.astype(np.float32))], format="csr")
    return l2_normalize_rows(Xc)


def concat_train_features(X: smat.csr_matrix, E: np.ndarray, concat: ConcatParams):
    """(X_cat, projection): the rankers' training features and the fitted projection (None when
    `concat.embed_dim` is 0 or not below the embedding width)."""
    projection = fit_projection(E, concat.embed_dim) if 0 < concat.embed_dim < E.shape[1] else None
    return concat_features(X, project(E, projection)), projection


def _average_with_head(P: smat.csr_matrix, E: np.ndarray, head: dict, weight: float, head_topk: int,
                       topk: int, chunk: int = 2048) -> smat.csr_matrix:
    """(1 − weight)·P + weight·σ(E·W + b) over the union of P's entries and the head's top labels.

    P: N × L float32 CSR (ranker scores in [0, 1]). E: N × H. Returns N × L float32 CSR, topk per row.
    """
    W = np.asarray(head["W"], np.float32)
    b = np.asarray(head["b"], np.float32)
    N, L = P.shape
    P = smat.csr_matrix(P)
    rows_out, cols_out, vals_out = [], [], []
    kh = min(head_topk, L)
    for a in range(0, N, chunk):
        z = min(N, a + chunk)
        S = 1.0 / (1.0 + np.exp(-(E[a:z] @ W + b)))  # (n, L) head probabilities
        Pc = P[a:z].toarray()
        cand = Pc > 0
        top = np.argpartition(-S, kh - 1, axis=1)[:, :kh] if kh < L else np.tile(np.arange(L), (z - a, 1))
        np.put_along_axis(cand, top, True, axis=1)
        score = np.where(cand, (1.0 - weight) * Pc + weight * S, -np.inf)
        k = min(topk, L)
        best = np.argpartition(-score, k - 1, axis=1)[:, :k]
        v = np.take_along_axis(score, best, axis=1)
        keep = np.isfinite(v)
        r = np.repeat(np.arange(a, z), k).reshape(z - a, k)
        rows_out.append(r[keep]); cols_out.append(best[keep]); vals_out.append(v[keep])
    out = smat.csr_matrix((np.concatenate(vals_out).astype(np.float32),
                           (np.concatenate(rows_out), np.concatenate(cols_out))), shape=(N, L))
    out.sort_indices()
    return out


class XTransformerModel(ModelBase):
    """A trained XR-Transformer: TF-IDF featurizer + fine-tuned encoder + rankers on [X ⊕ E].

    Folder layout: params.json (method "xr-transformer"), labels.txt, featurizer/, encoder/
    (a Hugging Face checkpoint: config, weights, tokenizer), ranker/ (XLinearModel on the
    concatenated features), head.npz / projection.npz when present, and what every kind has
    (label counts, calibration/: `model_base`).
    """

    method = METHOD_XR_TRANSFORMER

    def __init__(self, params: XTransformerParams, label_names: Sequence[str], featurizer: TfidfVectorizer,
                 tokenizer, encoder, ranker: XLinearModel, info: dict | None = None, head: dict | None = None,
                 projection: dict | None = None):
        if len(label_names) != ranker.n_labels:
            raise ValueError(f"XTransformerModel: {len(label_names)} label names for {ranker.n_labels} labels")
        self.params = params
        self.label_names = list(label_names)
        self.featurizer = featurizer
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.ranker = ranker
        self.info = dict(info or {})
        if head is not None and np.asarray(head["W"]).shape[1] != len(self.label_names):
            raise ValueError(f"XTransformerModel: head scores {np.asarray(head['W']).shape[1]} labels, "
                             f"the model has {len(self.label_names)}")
        self.head = head  # {"W": H × L float32, "b": (L,) float32}: the label level's head, or None
        self.projection = projection  # {"mean": (H,), "components": H × d}: see ConcatParams, or None
        self.label_counts = None
        self.n_train = None
        self.calibration = None

    @property
    def n_features(self) -> int:
        """D + d, the feature width the rankers score (TF-IDF and the embedding block; int)."""
        return self.ranker.n_features

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """N × H float32 l2-normalized embeddings of raw texts."""
        return encode(self.encoder, self.tokenizer, list(texts), self.params.encoder)

    def features(self, texts) -> tuple[smat.csr_matrix, np.ndarray]:
        """(X_cat, E) of raw texts: N × (D + H) float32 CSR [TF-IDF ⊕ embedding], N × H embeddings."""
        if isinstance(texts, str):
            texts = [texts]
        if smat.issparse(texts) or isinstance(texts, np.ndarray):
            raise ValueError("an XR-Transformer model reads raw texts, not feature vectors")
        texts = list(texts)
        E = self.embed(texts)
        return concat_features(self.featurizer.transform(texts), project(E, self.projection)), E

    def featurize(self, texts) -> smat.csr_matrix:
        """The rankers' features of raw `texts`: N × (D + d) float32 CSR, the X_cat of :meth:`features`.

        Raises:
            ValueError: a feature matrix instead of texts; a text that is not valid Unicode.
        """
        return self.features(texts)[0]

    def predict(self, texts, topk: int | None = None, beam_size: int | None = None,
                post_processor: str | None = None, ensemble: str | None = None) -> smat.csr_matrix:
        """Scores of the top labels of raw texts: rankers on [TF-IDF ⊕ embedding], optionally
        averaged with the fine-tuned label head (see `EnsembleParams`).

        Args:
            texts: N documents (str, or one str).
            topk: labels kept per row (None: `params.pred.only_topk`).
            beam_size: nodes kept per tree level (None: the model's).
            post_processor: a key of `xlinear.POST_PROCESSORS` (None: the model's).
            ensemble: "concat-only" or "average" (None: `params.ensemble.method`).

        Returns:
            N × L float32 CSR with at most topk entries per row.

        Raises:
            ValueError: topk or beam_size not an integer >= 1; a feature matrix instead of
                texts; a text that is not valid Unicode.

        Source:
            Zhang et al. 2021, "Fast Multi-Resolution Transformer Fine-tuning for Extreme
            Multi-label Text Classification", NeurIPS (PECOS ``XTransformer.predict``).
        """
        check_predict_args(topk, beam_size)
        Xc, E = self.features(texts)
        return self.predict_features(Xc, E, topk, beam_size, post_processor, ensemble)

    def predict_features(self, Xc: smat.csr_matrix, E: np.ndarray, topk: int | None = None,
                         beam_size: int | None = None, post_processor: str | None = None,
                         ensemble: str | None = None) -> smat.csr_matrix:
        """`predict` from ready features: Xc (N × (D + H) CSR, `concat_features`) and E (N × H)."""
        topk = topk or self.ranker.pred_params.only_topk
        P = self.ranker.predict(Xc, beam_size=beam_size, only_topk=topk, post_processor=post_processor)
        ens = self.params.ensemble
        method = ensemble or ens.method
        if method == "concat-only" or self.head is None:
            return P
        return _average_with_head(P, E, self.head, ens.weight, max(ens.head_topk, topk), topk)

    def save(self, path: str | Path) -> Path:
        """Write the model folder atomically (`folders.atomic_dir`).

        Files: params.json, labels.txt, featurizer/ (TF-IDF), encoder/ (backbone + tokenizer),
        ranker/ (`XLinearModel.save`), head.npz and projection.npz when present, label counts.

        Args:
            path: destination folder (str or Path); missing, empty, or a model folder xmc wrote.

        Returns:
            The folder as a Path.

        Raises:
            PathInUseError: `path` holds something that is not an xmc model folder.
        """
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.write_common(tmp, {"n_features": self.ranker.n_features, "has_text_featurizer": True})
            self.featurizer.save(tmp / "featurizer")
            self.encoder.save(tmp / "encoder")
            self.tokenizer.save_pretrained(str(tmp / "encoder"))
            self.ranker.save(tmp / "ranker")
            if self.head is not None:
                np.savez(tmp / "head.npz", W=np.asarray(self.head["W"], np.float32),
                         b=np.asarray(self.head["b"], np.float32))
            if self.projection is not None:
                np.savez(tmp / "projection.npz", **self.projection)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "XTransformerModel":
        """Load a model folder written by :meth:`save` (imports torch and transformers).

        Args:
            path: the model folder (str or Path).

        Returns:
            XTransformerModel ready to predict (encoder on CPU until predict picks a device).

        Raises:
            ModelFormatError: one line naming the folder, when it is missing, of another format
                version, or incomplete / corrupt.
        """
        path = Path(path)
        meta = read_model_meta(path)
        try:
            params = XTransformerParams.from_dict(meta["params"])
            names = read_label_names(path)
            featurizer = TfidfVectorizer.load(path / "featurizer")
            tokenizer, encoder = load_encoder(params.encoder, checkpoint=path / "encoder")
            ranker = XLinearModel.load(path / "ranker")
            head = None
            if (path / "head.npz").is_file():
                with np.load(path / "head.npz") as z:
                    head = {"W": z["W"], "b": z["b"]}
            projection = None
            if (path / "projection.npz").is_file():
                with np.load(path / "projection.npz") as z:
                    projection = {"mean": z["mean"], "components": z["components"]}
            model = cls(params, names, featurizer, tokenizer, encoder, ranker, meta.get("info"), head, projection)
            model.load_common(path)
        except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
            raise ModelFormatError(
                one_line(f"{path}: incomplete or corrupt model folder ({type(e).__name__}: {e}); retrain the model")
            ) from None
        return model


def finetune_tree(Z, ft: FineTuneParams, seed: int = 0) -> LabelTree:
    """The tree whose levels are the fine-tuning resolutions (from PIFA on TF-IDF)."""
    return build_tree(Z, TreeParams(nr_splits=ft.nr_splits, max_leaf_size=ft.max_leaf_size, seed=seed))


def fit_encoder(texts: Sequence[str], X: smat.csr_matrix, Y: smat.spmatrix, params: XTransformerParams,
                log: Callable[[dict], None] | None = None, resume: FineTuneState | None = None,
                on_level: Callable[[FineTuneState], None] | None = None, Z=None):
    """Stages 1-3: fine-tuning tree from PIFA on X, TF-IDF matcher on it, level-by-level fine-tuning.

    texts: N raw documents; X: their N × D float32 CSR TF-IDF rows (l2); Y: N × L binary.
    Z: PIFA label embeddings of X when already computed (L × D). Returns (tokenizer, encoder,
    state or None when steps_per_level is 0, the fine-tuning tree, device).
    """
    import torch

    emit = log or (lambda rec: None)
    ft = params.finetune
    if ft.threads:
        torch.set_num_threads(ft.threads)
    torch.manual_seed(ft.seed)
    device = pick_device(params.encoder.device)
    t0 = time.perf_counter()
    Z = pifa(X, Y, params.pifa) if Z is None else Z
    tree_ft = finetune_tree(Z, ft, seed=params.tree.seed)
    Y_ft = Y
    if 0 < ft.max_levels < tree_ft.depth:
        # the first max_levels levels only: their last level's nodes play the labels
        Y_ft = binarize(Y @ tree_ft.label_to_level(ft.max_levels - 1))
        tree_ft = LabelTree(tree_ft.C[:ft.max_levels])
    # without fine-tuning steps nothing reads the matcher (eurlex57k: 290 s saved)
    matcher = XLinearModel.train(X, Y_ft, tree_ft, params.ranker, params.pred) if ft.steps_per_level > 0 else None
    emit({"stage": "tfidf_matcher", "seconds": time.perf_counter() - t0, "level_sizes": tree_ft.level_sizes()})
    t0 = time.perf_counter()
    tokenizer, encoder = load_encoder(params.encoder)
    state = resume
    if ft.steps_per_level > 0:
        tokens = tokenize(tokenizer, list(texts), ft.max_length)
        state = finetune_encoder(encoder, tokens, X, binarize(Y_ft), tree_ft, matcher, ft, device, state, on_level, log,
                                 tokenizer.pad_token_id or 0, params.encoder.precision)
        encoder.load_state_dict(state.encoder_state)
    else:
        state = None
    emit({"stage": "finetune", "seconds": time.perf_counter() - t0, "device": device,
          "levels": state.history if state else []})
    return tokenizer, encoder, state, tree_ft, device


def fit_concat_rankers(X: smat.csr_matrix, E: np.ndarray, Y: smat.spmatrix, params: XTransformerParams,
                       log: Callable[[dict], None] | None = None, tree: LabelTree | None = None):
    """Stage 4: refined PIFA tree on X_cat = l2_rows([X ⊕ project(E)]) (unless given) and XR-Linear rankers.

    Returns (tree, XLinearModel over N × (D + d) features, per-level records, projection or None).
    """
    emit = log or (lambda rec: None)
    Xc, projection = concat_train_features(X, E, params.concat)
    if tree is None:
        t0 = time.perf_counter()
        tree = build_tree(pifa(Xc, Y, params.pifa), params.tree)
        emit({"stage": "refined_tree", "seconds": time.perf_counter() - t0, "level_sizes": tree.level_sizes()})
    t0 = time.perf_counter()
    levels: list[dict] = []

    def level_log(rec):
        levels.append(rec)
        emit({"stage": "rankers_level", **rec})

    ranker = XLinearModel.train(Xc, Y, tree, params.ranker, params.pred, log=level_log)
    emit({"stage": "rankers", "seconds": time.perf_counter() - t0})
    return tree, ranker, levels, projection


def train_xr_transformer(
    texts: Sequence[str],
    Y: smat.spmatrix,
    label_names: Sequence[str],
    params: XTransformerParams | None = None,
    log: Callable[[dict], None] | None = None,
    resume: FineTuneState | None = None,
    on_level: Callable[[FineTuneState], None] | None = None,
) -> XTransformerModel:
    """Train an XR-Transformer: TF-IDF → fine-tuning tree → TF-IDF matcher → fine-tuned encoder →
    refined tree → rankers on [TF-IDF ⊕ embedding].

    Args:
        texts: N raw documents (str).
        Y: N × L label matrix (sparse or dense), entries > 0 are positives.
        label_names: L label names.
        params: :class:`XTransformerParams` (None: defaults).
        log: receives {"stage", "seconds" (wall time, s), ...} records (and per-step
            fine-tuning records).
        resume, on_level: a checkpoint to resume from and a callback after each fine-tuning
            level (see `finetune_encoder`).

    Returns:
        XTransformerModel whose predict gives N × L float32 CSR scores.

    Raises:
        EncoderError: an encoder or max_length setting that cannot work (before any training).
        ValueError: Y with a negative or non-finite entry or a row count other than N; TF-IDF
            with no term in >= min_df documents.
        DataFormatError: a text that is not valid Unicode.

    Source:
        Zhang et al. 2021, "Fast Multi-Resolution Transformer Fine-tuning for Extreme Multi-label
        Text Classification", NeurIPS (PECOS ``pecos/xmc/xtransformer``).
    """
    params = params or XTransformerParams()
    params.check_lengths()
    emit = log or (lambda rec: None)
    texts = list(texts)
    check_label_matrix(Y, len(texts))
    Y = binarize(Y)
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    featurizer = TfidfVectorizer(params.tfidf)
    X = featurizer.fit_transform(texts)
    emit({"stage": "features", "seconds": time.perf_counter() - t0, "n_features": X.shape[1]})
    tokenizer, encoder, state, tree_ft, device = fit_encoder(texts, X, Y, params, log, resume, on_level)
    t0 = time.perf_counter()
    E = encode(encoder, tokenizer, texts, params.encoder, device)
    emit({"stage": "embed", "seconds": time.perf_counter() - t0, "n_docs": len(texts)})
    _, ranker, levels, projection = fit_concat_rankers(X, E, Y, params, log)
    encoder.to("cpu")
    info = {"finetune": state.history if state else [], "device": device, "levels": levels,
            "finetune_tree": tree_ft.level_sizes(), "train_s": time.perf_counter() - t_all}
    return XTransformerModel(params, label_names, featurizer, tokenizer, encoder, ranker, info,
                             label_head(state, Y.shape[1]), projection)


def label_head(state: FineTuneState | None, n_labels: int | None = None) -> dict | None:
    """The label level's head of a finished fine-tuning (the fine-tuning tree's last level is the
    labels themselves).

    Args:
        state: the finished :class:`FineTuneState`, or None.
        n_labels: L; a last head of another width is not the label level (None: no check).

    Returns:
        {"W": H × L float32, "b": (L,) float32}, or None without fine-tuning or when the last
        fine-tuned level is not the labels (`FineTuneParams.max_levels`).
    """
    if state is None or not state.heads:
        return None
    last = state.heads[-1]
    if n_labels is not None and np.asarray(last["W"]).shape[1] != n_labels:
        return None
    return {"W": np.asarray(last["W"], np.float32), "b": np.asarray(last["b"], np.float32)}


def checkpoint_key(texts: Sequence[str], Y: smat.spmatrix, params: XTransformerParams) -> str:
    """Fingerprint of what a fine-tuning checkpoint depends on: the settings and the training data.

    Args:
        texts: the N training documents; Y: their N × L labels (sparsity pattern hashed);
        params: :class:`XTransformerParams` (all sections hashed).

    Returns:
        40-character hex SHA-1 (str), as `xmc_core.checkpoint.checkpoint_key`.
    """
    from .checkpoint import checkpoint_key as key

    return key(texts, Y, params.to_dict())


def train_with_checkpoints(texts: Sequence[str], Y: smat.spmatrix, label_names: Sequence[str],
                           params: XTransformerParams, checkpoint_dir: str | Path,
                           log: Callable[[dict], None] | None = None) -> XTransformerModel:
    """`train_xr_transformer` that writes a checkpoint after each fine-tuning level to
    `checkpoint_dir` and, when a checkpoint of the same settings and data is there, resumes from
    its last finished level. The caller removes the folder once the model is saved."""
    emit = log or (lambda rec: None)
    key = checkpoint_key(texts, Y, params)
    state = load_state(checkpoint_dir, key)
    if state is not None:
        emit({"stage": "resume", "levels_done": state.levels_done, "checkpoint": str(checkpoint_dir)})
    else:
        state = FineTuneState(key=key)
    return train_xr_transformer(texts, Y, label_names, params, log=log, resume=state,
                                on_level=lambda st: save_state(st, checkpoint_dir))
