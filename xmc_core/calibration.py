"""From rankings to label sets: calibrated probabilities and decision policies.

A model's beam scores (XR-Linear's l3-hinge products, XLGen's generation scores) rank labels
but are not probabilities: every margin >= 1 scores exactly 1.0 under l3-hinge. A
:class:`Calibration` is fitted on held-out documents, never on the documents the model was
trained on:

1. **Probabilities.** Every (document, label) pair of the model's top-k on the held-out
   documents is an example (score, was the label right). A monotone map score → probability is
   fitted on them: isotonic regression (Zadrozny & Elkan 2002) or Platt's sigmoid (Platt 1999),
   one map for all labels ("global") or one per label-frequency group ("frequency": labels
   grouped by training positives on a log2 scale; a group with too few held-out pairs uses the
   global map). The map is kept as its breakpoints (isotonic) or (a, b) (Platt), so applying it
   needs only numpy.
2. **Decision policies**, fitted on the same pairs' probabilities:
   - "micro": one global threshold t maximizing micro-F1;
   - "macro": a threshold per label maximizing that label's F1 (macro-F1 is their sum, so this is
     its maximum on the held-out documents) for labels with at least `min_label_positives`
     held-out positives, shrunk toward the shared threshold by `threshold_shrinkage`; the other
     labels share one threshold maximizing their summed F1;
   - both: at most `max_set_size` labels per document, and (`at_least_one`) the top label always.
   The F1 denominators count every held-out positive, also those outside the top-k, so a
   threshold is not rewarded for labels the beam never reaches.

Probabilities are those of the labels a model returns (its top-k); a label outside the beam has
no probability (read: about 0). All arrays: probabilities float32, thresholds float32 (L,).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as smat

from .params import ParamsBase
from .sparse import keep_entries, row_ids

__all__ = ["CalibrationParams", "Calibration", "POLICIES", "fit_calibration", "pair_targets", "frequency_groups",
           "best_threshold", "label_thresholds", "shared_threshold", "row_ranks", "holdout_split"]

#: decision policies a Calibration holds
POLICIES = ("micro", "macro")
#: fewest held-out documents, and right (document, label) pairs among their top-k, to calibrate on
MIN_DOCS = 10
#: see MIN_DOCS
MIN_RIGHT = 5

_METHODS = ("isotonic", "platt", "none")
_GROUPS = ("global", "frequency")


@dataclass
class CalibrationParams(ParamsBase):
    """Settings of :func:`fit_calibration` (round-trip JSON).

    Attributes:
        method: "isotonic" (default; chosen by measurement on eurlex57k dev, README "Label
            sets"), "platt", or "none" (the scores clipped to [0, 1] are taken as probabilities:
            thresholds only, for a model whose scores are probabilities already, as napkinXC's PLT).
        groups: "frequency" (one map per log2 training-frequency group) or "global".
        topk: labels scored per held-out document (the pairs the maps and thresholds see; the
            model's predict is asked for as many). int >= 1.
        min_group_pairs: a frequency group with fewer held-out pairs, or fewer than 10 right
            ones, uses the global map. int >= 1.
        min_label_positives: labels with at least this many held-out positives get their own
            "macro" threshold. int >= 1.
        threshold_shrinkage: k >= 0: a label's own threshold t_l, fitted on its n_l held-out
            positives, is pulled toward the shared one t_s as (n_l t_l + k t_s) / (n_l + k), since a
            threshold fitted on three positives is mostly noise (k 5 chosen on eurlex57k's dev halves;
            0: no shrinkage).
        max_set_size: most labels in one document's set (int >= 1); also the cap the thresholds
            are fitted under.
        at_least_one: every document's set holds at least its top label.
        holdout_frac: without a dev split, the share of training documents held out for
            calibration (0 < f < 1; see `xmc train --calibrate`).
        seed: seed of that held-out slice.
    """

    method: str = "isotonic"
    groups: str = "frequency"
    topk: int = 20
    min_group_pairs: int = 500
    min_label_positives: int = 3
    threshold_shrinkage: float = 5.0
    max_set_size: int = 20
    at_least_one: bool = True
    holdout_frac: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.method not in _METHODS:
            raise ValueError(f"CalibrationParams.method must be one of {_METHODS}, got {self.method!r}")
        if self.groups not in _GROUPS:
            raise ValueError(f"CalibrationParams.groups must be one of {_GROUPS}, got {self.groups!r}")
        for name in ("topk", "min_group_pairs", "min_label_positives", "max_set_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CalibrationParams.{name} must be an integer >= 1, got {v!r}")
        if self.topk < self.max_set_size:
            raise ValueError(f"CalibrationParams.topk ({self.topk}) must be >= max_set_size ({self.max_set_size}): "
                             "the thresholds are fitted on the top-k candidates a set is drawn from")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"CalibrationParams.seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.at_least_one, bool):
            raise ValueError(f"CalibrationParams.at_least_one must be true or false, got {self.at_least_one!r}")
        for name, ok in (("threshold_shrinkage", lambda v: 0.0 <= v < float("inf")),
                         ("holdout_frac", lambda v: 0.0 < v < 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(float(v)):
                raise ValueError(f"CalibrationParams.{name} must be a number "
                                 f"{'>= 0' if name == 'threshold_shrinkage' else 'in (0, 1)'}, got {v!r}")


def holdout_split(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded held-out slice of n documents: (held, rest), sorted int64 row ids; held has
    round(frac * n) rows, drawn without replacement by ``np.random.default_rng(seed)``."""
    held = np.sort(np.random.default_rng(seed).choice(n, size=int(round(frac * n)), replace=False))
    return held, np.setdiff1d(np.arange(n), held)


def frequency_groups(label_counts: np.ndarray) -> np.ndarray:
    """The calibration group of every label: 0 for labels never seen in training, else
    1 + floor(log2(count)) (1: seen once, 2: 2–3 times, 3: 4–7, ...).

    Args:
        label_counts: (L,) training positives per label (ints >= 0).

    Returns:
        (L,) int64 group ids.
    """
    c = np.asarray(label_counts, dtype=np.int64)
    out = np.zeros(c.shape[0], np.int64)
    seen = c > 0
    out[seen] = 1 + np.floor(np.log2(c[seen])).astype(np.int64)
    return out


def pair_targets(P: smat.csr_matrix, Y: smat.spmatrix) -> np.ndarray:
    """For every stored entry of P (in CSR order), whether Y has a positive there.

    Args:
        P: N × L CSR of predicted scores (stored entries are the pairs; a stored 0.0 counts).
        Y: N × L' ground truth (L' >= L; nonzero = positive).

    Returns:
        (nnz(P),) bool.
    """
    Y = smat.csr_matrix(Y)
    Y.eliminate_zeros()
    width = max(P.shape[1], Y.shape[1])
    keys_y = np.sort(row_ids(Y.indptr) * width + Y.indices.astype(np.int64))
    return np.isin(row_ids(P.indptr) * width + P.indices.astype(np.int64), keys_y, assume_unique=False)


def row_ranks(P: smat.csr_matrix, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """For P (N × L CSR): the (nnz,) int64 rank of every entry within its row by decreasing score
    (0 = best); ties by decreasing `tiebreak` ((nnz,) values, e.g. the raw scores behind
    probabilities), then by stored order."""
    n = P.nnz
    rows = row_ids(P.indptr)
    second = np.zeros(n) if tiebreak is None else -np.asarray(tiebreak, np.float64)
    order = np.lexsort((second, -P.data.astype(np.float64), rows))  # by row, score desc, tiebreak desc
    ranks = np.empty(n, np.int64)
    starts = P.indptr[:-1][rows[order]]
    ranks[order] = np.arange(n, dtype=np.int64) - starts
    return ranks


def best_threshold(proba: np.ndarray, target: np.ndarray, n_true: int, forced: np.ndarray | None = None) -> tuple[float, float]:
    """The threshold t maximizing micro-F1 when a pair is predicted iff proba >= t.

    Args:
        proba: (n,) probabilities of the candidate pairs.
        target: (n,) bool, whether each pair is right.
        n_true: all positives of the held-out documents (>= target.sum(); those outside the
            candidates count as misses).
        forced: (n,) bool, pairs predicted whatever t is (the top label under `at_least_one`),
            or None.

    Returns:
        (t, micro-F1 in [0, 1] at t). With no right pair t is +inf (predict only the forced ones).
    """
    proba = np.asarray(proba, np.float64)
    target = np.asarray(target, bool)
    forced = np.zeros(proba.shape[0], bool) if forced is None else np.asarray(forced, bool)
    base_tp, base_pred = float(target[forced].sum()), float(forced.sum())
    p, t = proba[~forced], target[~forced]
    order = np.argsort(-p, kind="stable")
    p, t = p[order], t[order]
    tp = base_tp + np.cumsum(t)
    n_pred = base_pred + np.arange(1, p.shape[0] + 1)
    # a cut can only fall after the last of a run of equal probabilities
    last = np.ones(p.shape[0], bool)
    last[:-1] = p[1:] != p[:-1]
    denom = n_pred + n_true
    f1 = np.where(last & (denom > 0), 2.0 * tp / np.maximum(denom, 1), -1.0)
    f1_none = 2.0 * base_tp / (base_pred + n_true) if base_pred + n_true > 0 else 0.0
    if p.shape[0] == 0 or f1.max() <= f1_none:
        return float("inf"), float(f1_none)
    i = int(np.argmax(f1))
    return float(p[i]), float(f1[i])


def label_thresholds(proba: np.ndarray, target: np.ndarray, labels: np.ndarray, n_true_l: np.ndarray,
                     eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label thresholds maximizing each eligible label's F1 = 2 TP / (predicted + positives).

    Args:
        proba, target, labels: (n,) probability, rightness and label id of every candidate pair.
        n_true_l: (L,) held-out positives per label.
        eligible: (L,) bool, the labels that get a threshold of their own.

    Returns:
        (thresholds (L,) float64, NaN for labels not eligible or with no right pair;
        f1 (L,) float64 best F1 of each eligible label, 0 elsewhere).
    """
    L = n_true_l.shape[0]
    thr = np.full(L, np.nan)
    best = np.zeros(L)
    keep = eligible[labels]
    p, t, lab = np.asarray(proba, np.float64)[keep], np.asarray(target, bool)[keep], labels[keep]
    if p.shape[0] == 0:
        return thr, best
    order = np.lexsort((-p, lab))  # by label, probability descending
    p, t, lab = p[order], t[order], lab[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    seg = np.repeat(np.arange(starts.shape[0]), np.diff(np.r_[starts, p.shape[0]]))
    ctp = np.cumsum(t)
    ctp_before = np.r_[0, ctp][starts][seg]
    tp = ctp - ctp_before
    n_pred = np.arange(p.shape[0]) - starts[seg] + 1
    last = np.ones(p.shape[0], bool)
    last[:-1] = (p[1:] != p[:-1]) | (lab[1:] != lab[:-1])
    f1 = np.where(last, 2.0 * tp / (n_pred + n_true_l[lab]), -1.0)
    # the best cut of every label: the maximum of its segment
    seg_best = np.full(starts.shape[0], -1.0)
    np.maximum.at(seg_best, seg, f1)
    is_best = (f1 == seg_best[seg]) & (f1 > 0)
    first = np.full(starts.shape[0], -1, np.int64)
    idx = np.flatnonzero(is_best)
    # the first (highest threshold) best cut of each label
    first_seen = np.unique(seg[idx], return_index=True)
    first[first_seen[0]] = idx[first_seen[1]]
    ok = first >= 0
    thr[lab[starts[ok]]] = p[first[ok]]
    best[lab[starts[ok]]] = f1[first[ok]]
    return thr, best


def shared_threshold(proba: np.ndarray, target: np.ndarray, labels: np.ndarray, n_true_l: np.ndarray,
                     members: np.ndarray) -> float:
    """One threshold maximizing the summed F1 of the `members` labels (macro-F1 over them).

    Sweeping pairs by decreasing probability, a pair changes only its own label's F1; the sum at
    every cut is the running sum of those changes.

    Args:
        proba, target, labels: (n,) probability, rightness and label id of every candidate pair.
        n_true_l: (L,) held-out positives per label.
        members: (L,) bool, the labels that share the threshold.

    Returns:
        float threshold (+inf when no member has a right pair).
    """
    keep = members[labels]
    p, t, lab = np.asarray(proba, np.float64)[keep], np.asarray(target, bool)[keep], labels[keep]
    if not t.any():
        return float("inf")
    order = np.argsort(-p, kind="stable")
    p, t, lab = p[order], t[order], lab[order]
    # cumulative predicted / right counts of each pair's label up to and including it
    by_label = np.lexsort((np.arange(p.shape[0]), lab))
    lab_s, t_s = lab[by_label], t[by_label]
    starts = np.flatnonzero(np.r_[True, lab_s[1:] != lab_s[:-1]])
    seg = np.repeat(np.arange(starts.shape[0]), np.diff(np.r_[starts, lab_s.shape[0]]))
    n_pred_s = np.arange(lab_s.shape[0]) - starts[seg] + 1
    ctp = np.cumsum(t_s)
    tp_s = ctp - np.r_[0, ctp][starts][seg]
    f1_s = 2.0 * tp_s / (n_pred_s + n_true_l[lab_s])
    prev_s = np.where(n_pred_s > 1, np.r_[0.0, f1_s[:-1]], 0.0)
    delta = np.empty(p.shape[0])
    delta[by_label] = f1_s - prev_s
    total = np.cumsum(delta)
    last = np.ones(p.shape[0], bool)
    last[:-1] = p[1:] != p[:-1]
    total = np.where(last, total, -np.inf)
    i = int(np.argmax(total))
    return float(p[i]) if total[i] > 0 else float("inf")


def _fit_isotonic(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(s.astype(np.float64), y.astype(np.float64))
    return iso.X_thresholds_.astype(np.float64), iso.y_thresholds_.astype(np.float64)


def _fit_platt(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    if y.all() or not y.any():  # one class: a constant sigmoid(b) near it
        q = min(max(float(y.mean()) if y.size else 0.0, 1e-6), 1 - 1e-6)
        return np.array([0.0]), np.array([float(np.log(q / (1 - q)))])
    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(s.reshape(-1, 1).astype(np.float64), y.astype(np.int64))
    # stored as (a, b) of sigmoid(a s + b) in two 1-element arrays
    return np.array([float(lr.coef_[0, 0])]), np.array([float(lr.intercept_[0])])


def _fit_none(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.array([0.0, 1.0]), np.array([0.0, 1.0])  # the identity on [0, 1], clipped outside


@dataclass
class Calibration:
    """A fitted score → probability map and the decision policies (see the module docstring).

    Attributes:
        params: the :class:`CalibrationParams` it was fitted with.
        maps: {group id: (x, y)}; isotonic: breakpoints (float64, x increasing); Platt: ([a], [b]).
            Group -1 is the global map; others are `frequency_groups` ids.
        label_group: (L,) int64 group of each label (all -1 with groups "global").
        threshold: the "micro" policy's global threshold (float; +inf: top label only).
        label_threshold: (L,) float32 "macro" thresholds (labels without their own hold the shared one).
        info: what it was fitted on and how well (n_docs, n_pairs, source, held-out F1s, ...).
    """

    params: CalibrationParams
    maps: dict[int, tuple[np.ndarray, np.ndarray]]
    label_group: np.ndarray
    threshold: float
    label_threshold: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def n_labels(self) -> int:
        """L, the labels the calibration covers (int)."""
        return int(self.label_group.shape[0])

    def _apply(self, g: int, s: np.ndarray) -> np.ndarray:
        x, y = self.maps.get(g, self.maps[-1])
        if self.params.method == "platt":
            return 1.0 / (1.0 + np.exp(-(x[0] * s + y[0])))
        return np.interp(s, x, y)

    def proba(self, P: smat.csr_matrix) -> smat.csr_matrix:
        """Calibrated probabilities of a model's scores.

        Args:
            P: N × L' float32 CSR of a model's `predict` output (L' >= L; columns past L, if any,
                use the global map).

        Returns:
            N × L' float32 CSR with P's sparsity, values in [0, 1], non-decreasing in the score
            within a label group.
        """
        P = smat.csr_matrix(P, dtype=np.float32, copy=True)
        s = P.data.astype(np.float64)
        lab = P.indices
        groups = np.full(lab.shape[0], -1, np.int64)
        inside = lab < self.n_labels
        groups[inside] = self.label_group[lab[inside]]
        out = np.empty(s.shape[0])
        for g in np.unique(groups):
            m = groups == g
            out[m] = self._apply(int(g), s[m])
        P.data = np.clip(out, 0.0, 1.0).astype(np.float32)
        return P

    def decide(self, Pp: smat.csr_matrix, policy: str = "micro", P: smat.csr_matrix | None = None) -> smat.csr_matrix:
        """Label sets from calibrated probabilities.

        Args:
            Pp: N × L' float32 CSR of probabilities (:meth:`proba`).
            policy: "micro" (the global threshold) or "macro" (per-label thresholds).
            P: the raw scores Pp was made of (same sparsity), which break ties of probability in
                the top-label and set-size rules (None: stored order).

        Returns:
            N × L' float32 CSR holding each document's set, the values its probabilities (indices
            sorted): entries >= their threshold, at most `max_set_size` per row (the most
            probable), and the row's most probable label when `at_least_one`.

        Raises:
            ValueError: an unknown policy.
        """
        Pp = smat.csr_matrix(Pp, dtype=np.float32)
        return keep_entries(Pp, self.set_mask(Pp, policy, P))

    def set_mask(self, Pp: smat.csr_matrix, policy: str = "micro", P: smat.csr_matrix | None = None) -> np.ndarray:
        """Which entries of Pp (in its storage order) :meth:`decide` puts in the sets: (nnz,) bool.
        Arguments and errors as :meth:`decide`."""
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        Pp = smat.csr_matrix(Pp, dtype=np.float32)
        if policy == "micro":
            thr = np.full(Pp.nnz, self.threshold)
        else:
            t = np.concatenate([self.label_threshold.astype(np.float64),
                                np.full(max(Pp.shape[1] - self.n_labels, 0), self.threshold)])
            thr = t[Pp.indices]
        rank = row_ranks(Pp, None if P is None else smat.csr_matrix(P).data)
        keep = (Pp.data >= thr) & (rank < self.params.max_set_size)
        if self.params.at_least_one:
            keep |= rank == 0
        return keep

    # -- persistence ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write calibration.npz (label_group, label_threshold, map_{g}_x / map_{g}_y, and `meta`:
        the JSON of params, threshold, groups and info) into `folder` (a Path that exists), and
        calibration.json, the same JSON for people. `load` reads only the .npz: one file, so a
        reader never pairs the arrays of one calibration with the settings of another."""
        folder = Path(folder)
        meta = json.dumps({"params": self.params.to_dict(), "threshold": _json_float(self.threshold),
                           "groups": sorted(int(g) for g in self.maps), "info": self.info}, indent=2)
        arrays = {"label_group": self.label_group.astype(np.int64),
                  "label_threshold": self.label_threshold.astype(np.float32), "meta": np.array(meta)}
        for g, (x, y) in self.maps.items():
            arrays[f"map_{g}_x"] = np.asarray(x, np.float64)
            arrays[f"map_{g}_y"] = np.asarray(y, np.float64)
        np.savez(folder / "calibration.npz", **arrays)
        (folder / "calibration.json").write_text(meta)

    @classmethod
    def load(cls, folder: str | Path) -> "Calibration":
        """Read what :meth:`save` wrote into `folder`.

        Raises:
            OSError, ValueError, KeyError: a file missing or unreadable (model loaders turn these
                into ModelFormatError).
        """
        folder = Path(folder)
        with np.load(folder / "calibration.npz") as z:
            meta = json.loads(str(z["meta"]))
            maps = {int(g): (z[f"map_{g}_x"], z[f"map_{g}_y"]) for g in meta["groups"]}
            label_group, label_threshold = z["label_group"], z["label_threshold"]
        return cls(CalibrationParams.from_dict(meta["params"]), maps, label_group,
                   float(meta["threshold"]), label_threshold, meta.get("info", {}))


def _json_float(x: float):
    return x if np.isfinite(x) else "inf"


def fit_calibration(P: smat.csr_matrix, Y: smat.spmatrix, label_counts: np.ndarray | None,
                    params: CalibrationParams | None = None, info: dict | None = None) -> Calibration:
    """Fit the probability maps and both decision policies on held-out predictions.

    Args:
        P: N × L float32 CSR, the model's top-`params.topk` scores on N held-out documents.
        Y: N × L' their ground truth aligned to the model's label ids (L' >= L; columns past L
            are labels the model does not know: their positives count as misses).
        label_counts: (L,) training positives per label (None: groups "global" is used).
        params: :class:`CalibrationParams` (None: defaults).
        info: extra entries for `Calibration.info` (e.g. where the documents came from).

    Returns:
        Calibration; its info adds n_docs, n_pairs, n_positives, the held-out micro-F1 of the
        "micro" policy and macro-F1 of the "macro" policy (in-sample, percent) and the number of
        labels with their own threshold.

    Raises:
        ValueError: P and Y with different row counts; fewer than MIN_DOCS documents; no stored
            pair in P; fewer than half of Y's positives on the model's labels (data of another
            label space); fewer than MIN_RIGHT right pairs.

    Source:
        Isotonic calibration: Zadrozny & Elkan 2002 (KDD); Platt 1999; thresholds tuned per label
        for macro-F1: Lipton, Elkan & Naryanaswamy 2014, "Optimal thresholding of classifiers to
        maximize F1 measure" (ECML-PKDD).
    """
    params = params or CalibrationParams()
    P = smat.csr_matrix(P, dtype=np.float32)
    Y = smat.csr_matrix(Y)
    Y.eliminate_zeros()
    if P.shape[0] != Y.shape[0]:
        raise ValueError(f"fit_calibration: P has {P.shape[0]} rows, Y {Y.shape[0]}")
    if P.shape[0] < MIN_DOCS:
        raise ValueError(f"calibration needs at least {MIN_DOCS} held-out documents, got {P.shape[0]}")
    if P.nnz == 0:
        raise ValueError("the model predicted no label for any held-out document")
    L = P.shape[1]
    known = int(smat.csr_matrix(Y[:, :L]).nnz) if Y.shape[1] > L else int(Y.nnz)
    if Y.nnz and known < 0.5 * Y.nnz:
        raise ValueError(f"only {known} of the held-out documents' {Y.nnz} labels are labels of this model; "
                         "is this data of the label space the model was trained on?")
    target = pair_targets(P, Y)
    if target.sum() < MIN_RIGHT:
        raise ValueError(f"the model gets only {int(target.sum())} of the held-out labels right in its top "
                         f"{params.topk}; thresholds fitted on that would be noise (at least {MIN_RIGHT} needed)")
    s = P.data.astype(np.float64)
    fit = {"isotonic": _fit_isotonic, "platt": _fit_platt, "none": _fit_none}[params.method]
    maps = {-1: fit(s, target)}
    label_group = np.full(L, -1, np.int64)
    if params.groups == "frequency" and label_counts is not None:
        label_group = frequency_groups(np.asarray(label_counts)[:L])
        g_pair = label_group[P.indices]
        for g in np.unique(g_pair):
            m = g_pair == g
            if m.sum() >= params.min_group_pairs and target[m].sum() >= 10:
                maps[int(g)] = fit(s[m], target[m])
    cal = Calibration(params, maps, label_group, float("inf"), np.zeros(L, np.float32), dict(info or {}))
    proba = cal.proba(P).data.astype(np.float64)

    # the candidates of a set: the top max_set_size of each row; the top label under at_least_one
    rank = row_ranks(P)
    cand = rank < params.max_set_size
    forced = (rank == 0) if params.at_least_one else np.zeros(P.nnz, bool)
    n_true = int(Y.nnz)
    thr, f1_micro = best_threshold(proba[cand], target[cand], n_true, forced[cand])
    cal.threshold = thr

    Ymodel = Y[:, :L] if Y.shape[1] > L else Y
    n_true_l = np.bincount(Ymodel.indices, minlength=L).astype(np.int64)
    own = n_true_l >= params.min_label_positives
    lab = P.indices.astype(np.int64)
    c = cand & ~forced  # forced pairs are in every set; thresholds decide the rest
    t_l, _ = label_thresholds(proba[c], target[c], lab[c], n_true_l, own)
    shared = shared_threshold(proba[c], target[c], lab[c], n_true_l, ~own | np.isnan(t_l))
    pull = shared if np.isfinite(shared) else (thr if np.isfinite(thr) else 1.0)
    k = float(params.threshold_shrinkage)
    shrunk = (n_true_l * np.nan_to_num(t_l) + k * pull) / np.maximum(n_true_l + k, 1e-12)
    label_threshold = np.where(np.isnan(t_l), shared, shrunk)
    cal.label_threshold = label_threshold.astype(np.float32)

    from .metrics import set_report

    macro_f1 = set_report(Y, cal.decide(cal.proba(P), "macro", P))["macro_f1"]
    cal.info.update({
        "n_docs": int(P.shape[0]), "n_pairs": int(P.nnz), "n_positives": n_true,
        "n_right_pairs": int(target.sum()),
        "heldout_micro_f1": round(100.0 * f1_micro, 4),
        "heldout_macro_f1": round(macro_f1, 4),
        "labels_own_threshold": int(np.count_nonzero(~np.isnan(t_l))),
        "shared_threshold": _json_float(shared),
        "map_groups": sorted(int(g) for g in maps),
    })
    return cal
