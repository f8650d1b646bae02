"""What every model kind shares: the label space, the model-folder contract, label sets and
calibrated probabilities.

Model kinds (`model.XmcModel` for xr-linear / xr-linear-ld, `xtransformer.XTransformerModel`,
`xlgen.XLGenModel`) subclass :class:`ModelBase` and add how they score: ``predict(inputs, topk,
beam_size, ...)`` → N × L float32 CSR. The base gives them, once:

- label names, training label counts, alignment of an evaluation split's labels (`LabelSpace`);
- ranked label names (`predict_labels`);
- a :class:`calibration.Calibration` fitted on held-out documents (`calibrate`), and with it
  probabilities (`predict_proba`) and label sets (`predict_sets`, policy "micro" or "macro");
- the folder contract: ``params.json`` (``format_version``, ``method``, ``n_labels``, ``params``,
  ``info``), ``labels.txt`` (one name per line, line index = label id), ``label_titles.txt`` (the
  same lines' titles, when the dataset has them), ``label_counts.npy`` +
  ``train_stats.json``, and ``calibration/`` (calibration.json, calibration.npz) when calibrated.
  Folders written before calibration existed load unchanged (no calibration).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as smat

from .calibration import Calibration, CalibrationParams, fit_calibration
from .folders import atomic_dir, mark

__all__ = ["FORMAT_VERSION", "ModelFormatError", "NotCalibratedError", "LabelSpace", "ModelBase", "read_model_meta",
           "read_label_names", "one_line"]

#: version of the model folder layout written to params.json (int); `read_model_meta` refuses others
FORMAT_VERSION = 1

#: the model folder's sub-folder holding a fitted calibration
CALIBRATION_DIR = "calibration"


class ModelFormatError(ValueError):
    """A model folder that is missing, incomplete or of another format version.

    A ValueError subclass; the message is one line naming the folder or file.
    """


class NotCalibratedError(ValueError):
    """Probabilities or label sets asked of a model that has no calibration (one line, says how
    to fit one)."""


def one_line(message: str) -> str:
    """`message` with every run of whitespace (newlines included) made one space (str)."""
    return " ".join(str(message).split())


def read_model_meta(path: str | Path) -> dict:
    """params.json of a model folder, checked: a JSON object of this format version.

    Args:
        path: the model folder (str or Path).

    Returns:
        dict: format_version, method, n_labels, params, info, ...

    Raises:
        ModelFormatError: (one line naming the folder or file) no such folder, no params.json,
            unreadable or not a JSON object, or a format_version other than FORMAT_VERSION.
    """
    path = Path(path)
    meta_file = path / "params.json"
    if not meta_file.is_file():
        if not path.exists():
            raise ModelFormatError(f"{path}: no such model folder")
        raise ModelFormatError(f"{path}: not a model folder (no params.json)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(one_line(f"{meta_file}: unreadable model metadata ({e})")) from None
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{meta_file}: unreadable model metadata (not a JSON object)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{meta_file}: model format version {version!r}, this xmc reads version {FORMAT_VERSION}; retrain the model"
        )
    return meta


def read_label_names(path: str | Path) -> list[str]:
    """The label names of a model folder's labels.txt (line index = label id).

    Args:
        path: the model folder (str or Path).

    Raises:
        OSError, UnicodeDecodeError: the file is missing or not UTF-8.
    """
    with open(Path(path) / "labels.txt", encoding="utf-8", newline="\n") as fh:
        return fh.read().split("\n")[:-1]


class LabelSpace:
    """Label names and training label statistics shared by every model kind (XR-Linear,
    XR-Transformer, XLGen): aligning an evaluation split's labels, PSP@k propensities, unseen
    labels. Subclasses set `label_names`, `label_counts` and `n_train`."""

    label_names: list[str]
    label_counts: np.ndarray | None = None  # (L,) int64 training positives per label
    n_train: int | None = None
    #: L titles for people (the dataset's label_names.tsv), or None; kept in label_titles.txt
    label_titles: list[str] | None = None

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


class ModelBase(LabelSpace):
    """The shared base of every model kind (see the module docstring).

    Subclasses set `method` (str), `params` (a Params with ``to_dict``), `info` (dict) and
    `label_names`, and implement ``predict(inputs, topk=None, beam_size=None, ...)`` → N × L
    float32 CSR of scores, plus ``save`` / ``load`` built on :meth:`write_common` /
    :meth:`load_common`.

    Attributes:
        calibration: the fitted :class:`calibration.Calibration`, or None.
    """

    method: str = ""
    calibration: Calibration | None = None
    #: why a folder's calibration/ was not loaded (unreadable, or fitted for another model), or None
    calibration_error: str | None = None
    #: sha256 (16 hex) of the params.json this model was loaded from or saved as
    params_sha: str | None = None

    def predict(self, inputs, topk: int | None = None, beam_size: int | None = None, **kw) -> smat.csr_matrix:
        """Scores of the top labels (implemented by each model kind).

        Args:
            inputs: N documents (texts, or an N × D matrix for feature-vector models).
            topk: labels kept per row (None: the model's default).
            beam_size: the model's search width (None: its default).
            **kw: kind-specific options (post_processor, ensemble, ...).

        Returns:
            N × L float32 CSR.
        """
        raise NotImplementedError

    def predict_labels(self, inputs, topk: int = 5, **kw) -> list[list[tuple[str, float]]]:
        """The top labels of every document by name.

        Args:
            inputs: N documents as the model's `predict` reads them (texts, or an N × D matrix
                for feature-vector models).
            topk: labels per document (int >= 1).
            **kw: the model's `predict` options (beam_size, post_processor, ...).

        Returns:
            N lists of (label name, float score), best first (ties: lower label id first).

        Raises:
            ValueError: as the model's `predict`.
        """
        return self.named_rankings(self.predict(inputs, topk=topk, **kw))

    # -- calibration ---------------------------------------------------------------------------
    def calibrate(self, inputs, Y: smat.spmatrix, label_names: Sequence[str],
                  params: CalibrationParams | None = None, info: dict | None = None,
                  beam_size: int | None = None) -> Calibration:
        """Fit probabilities and decision policies on held-out documents and keep them on the model.

        Args:
            inputs: N held-out documents (as `predict` reads them); never documents the model was
                trained on, or the probabilities come out over-confident.
            Y: N × L' their labels (sparse; nonzero = positive), columns named `label_names`.
            label_names: L' names of Y's columns (aligned to the model's labels by name).
            params: :class:`calibration.CalibrationParams` (None: defaults).
            info: what the documents are, recorded in `calibration.info` (e.g. {"source": "dev"}).
            beam_size: beam of the held-out predictions (None: the model's).

        Returns:
            The fitted :class:`calibration.Calibration` (also set as `self.calibration`).

        Raises:
            ValueError: Y's row count is not N; the model predicts no label at all.
        """
        params = params or CalibrationParams()
        P = self.predict(inputs, topk=params.topk, beam_size=beam_size)
        Ya = self.align_labels(Y, label_names)
        if Ya.shape[0] != P.shape[0]:
            raise ValueError(f"calibrate: {P.shape[0]} documents, {Ya.shape[0]} label rows")
        self.calibration = fit_calibration(P, Ya, self.label_counts, params, info)
        return self.calibration

    def _calibration(self) -> Calibration:
        if self.calibration is None:
            if self.calibration_error:
                raise NotCalibratedError(f"this model's calibration was not loaded ({self.calibration_error}); run "
                                         "'xmc calibrate --model MODEL --data DATA' again (it replaces calibration/)")
            raise NotCalibratedError(
                f"this {self.method} model has no calibration: run 'xmc calibrate --model MODEL --data DATA' "
                "(or train with --calibrate)")
        return self.calibration

    def predict_proba(self, inputs, topk: int | None = None, **kw) -> smat.csr_matrix:
        """Calibrated probabilities of the top labels.

        Args:
            inputs: N documents, as `predict` reads them.
            topk: labels per document (None: the calibration's topk).
            **kw: the model's `predict` options.

        Returns:
            N × L float32 CSR with values in [0, 1], the sparsity of ``predict(inputs, topk)``.

        Raises:
            NotCalibratedError: the model has no calibration.
            ValueError: as the model's `predict`.
        """
        cal = self._calibration()
        return cal.proba(self.predict(inputs, topk=topk or cal.params.topk, **kw))

    def predict_sets(self, inputs, policy: str = "micro", **kw) -> smat.csr_matrix:
        """Each document's label set, with its labels' probabilities.

        Args:
            inputs: N documents, as `predict` reads them.
            policy: "micro" (one threshold, best micro-F1 on the held-out documents) or "macro"
                (per-label thresholds, best macro-F1).
            **kw: the model's `predict` options.

        Returns:
            N × L float32 CSR: the set's labels hold their probabilities (indices sorted).

        Raises:
            NotCalibratedError: the model has no calibration.
            ValueError: an unknown policy; as the model's `predict`.
        """
        return self._sets(inputs, policy, **kw)[0]

    def _sets(self, inputs, policy: str, **kw) -> tuple[smat.csr_matrix, smat.csr_matrix]:
        """(the sets with their probabilities, the raw scores of the same entries)."""
        from .sparse import keep_entries

        cal = self._calibration()
        P = self.predict(inputs, topk=cal.params.max_set_size, **kw)
        Pp = cal.proba(P)  # P's sparsity: one mask selects both
        keep = cal.set_mask(Pp, policy, P)
        return keep_entries(Pp, keep), keep_entries(P, keep)

    def named_sets(self, inputs, policy: str = "micro", **kw) -> list[list[tuple[str, float]]]:
        """:meth:`predict_sets` by name.

        Args:
            inputs: N documents, as `predict` reads them.
            policy: "micro" or "macro" (see :meth:`predict_sets`).
            **kw: the model's `predict` options.

        Returns:
            N lists of (label name, probability), most probable first (ties: higher score first).
        """
        S, R = self._sets(inputs, policy, **kw)
        out = []
        for i in range(S.shape[0]):
            a, b = S.indptr[i], S.indptr[i + 1]
            order = np.lexsort((-R.data[a:b].astype(np.float64), -S.data[a:b].astype(np.float64)))
            out.append([(self.label_names[S.indices[a + j]], float(S.data[a + j])) for j in order])
        return out

    # -- the folder contract ---------------------------------------------------------------------
    def base_meta(self) -> dict:
        """The params.json entries every kind writes: format_version, method, n_labels, params, info."""
        return {"format_version": FORMAT_VERSION, "method": self.method, "n_labels": self.n_labels,
                "params": self.params.to_dict(), "info": self.info}

    def write_common(self, folder: Path, meta: dict | None = None) -> None:
        """Write params.json (:meth:`base_meta` updated with `meta`), labels.txt, the label counts
        and calibration/ (when calibrated) into `folder` (a Path that exists, being built)."""
        params_json = json.dumps({**self.base_meta(), **(meta or {})}, indent=2).encode("utf-8")
        (folder / "params.json").write_bytes(params_json)
        self.params_sha = _sha(params_json)
        with open(folder / "labels.txt", "w", encoding="utf-8") as fh:
            fh.write("".join(f"{name}\n" for name in self.label_names))
        self.save_label_counts(folder)
        if self.label_titles is not None and len(self.label_titles) == self.n_labels:
            with open(folder / "label_titles.txt", "w", encoding="utf-8") as fh:
                fh.write("".join(" ".join(str(t).split()) + "\n" for t in self.label_titles))
        if self.calibration is not None:
            self.calibration.info["model_sha"] = self.params_sha  # which model it belongs to
            (folder / CALIBRATION_DIR).mkdir()
            mark(folder / CALIBRATION_DIR, "calibration")  # `save_calibration` may replace it later
            self.calibration.save(folder / CALIBRATION_DIR)

    def load_common(self, folder: Path) -> None:
        """Read the label counts and calibration/ of a model folder, where present.

        A calibration/ that cannot be read, covers another label count, or was fitted for another
        model (its `model_sha` is not this params.json's) is left unloaded: the model still ranks,
        and `calibration_error` says why (asking for sets then says to calibrate again).

        Raises:
            OSError, ValueError, KeyError: the label counts are there but unreadable (loaders turn
                these into ModelFormatError).
        """
        self.load_label_counts(folder)
        if (folder / "label_titles.txt").is_file():
            titles = (folder / "label_titles.txt").read_text(encoding="utf-8").split("\n")[:-1]
            self.label_titles = titles if len(titles) == self.n_labels else None
        self.params_sha = _sha((folder / "params.json").read_bytes())
        if (folder / CALIBRATION_DIR).is_dir():
            try:
                cal = Calibration.load(folder / CALIBRATION_DIR)
                if cal.n_labels != self.n_labels:
                    raise ValueError(f"it covers {cal.n_labels} labels, the model has {self.n_labels}")
                if cal.info.get("model_sha") not in (None, self.params_sha):
                    raise ValueError("it was fitted for another model trained into this folder")
                self.calibration = cal
            except Exception as e:  # any damage: rank without it (corrupt npz raises many kinds)
                self.calibration_error = one_line(f"{folder / CALIBRATION_DIR}: {type(e).__name__}: {e}")[:300]

    def save_calibration(self, path: str | Path) -> Path:
        """Write (or replace) only the calibration/ part of this model's existing folder, atomically.

        Args:
            path: the model folder this model was loaded from or saved to.

        Returns:
            The calibration folder (Path).

        Raises:
            NotCalibratedError: nothing to write.
            ModelFormatError: `path` is not a model folder of this model's method and label count.
            PathInUseError: path/calibration holds something xmc did not write.
        """
        cal = self._calibration()
        path = Path(path)
        meta = read_model_meta(path)
        if meta.get("method") != self.method or meta.get("n_labels") != self.n_labels:
            raise ModelFormatError(f"{path}: a {meta.get('method')} model of {meta.get('n_labels')} labels, not this "
                                   f"{self.method} model of {self.n_labels}")
        sha = _sha((path / "params.json").read_bytes())
        if self.params_sha is not None and sha != self.params_sha:
            raise ModelFormatError(f"{path}: the model folder was replaced since this model was read (another "
                                   "training?); its calibration was not written: calibrate the new model")
        cal.info["model_sha"] = sha
        with atomic_dir(path / CALIBRATION_DIR, kind="calibration") as tmp:
            cal.save(tmp)
        return path / CALIBRATION_DIR


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
