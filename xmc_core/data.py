"""Dataset readers and writers for extreme multi-label classification (XMC).

Three on-disk layouts are recognised from the content of a dataset folder
(every file may also be gzip-compressed with a ``.gz`` suffix):

``raw-text``
    ``train_texts.txt`` / ``train_labels.txt`` (required), ``test_*`` and
    ``dev_*`` (optional), ``label_map.txt`` (optional).  One document per
    line; a labels line holds space-separated label *names*.  With a
    ``label_map.txt`` (one name per line, line index = label id) the names are
    looked up there; without it the label set is the sorted union of the names
    seen in the splits that are read.

``xc-bow``
    Extreme Classification Repository bag-of-words text format:
    ``train.txt`` (required) and ``test.txt`` (optional).  First line
    ``N F L``, then ``N`` lines ``l1,l2,... f:v f:v ...`` with 0-based ids.
    A point without labels has a line that starts with a space or directly
    with ``f:v``.

``pecos-xmc-base``
    PECOS ``xmc-base`` layout: ``X.trn.txt`` / ``X.tst.txt`` (one raw text per
    line), labels as ``Y.trn.npz`` / ``Y.tst.npz`` (scipy sparse, n x L) or
    ``Y.trn.txt`` / ``Y.tst.txt`` (comma-separated 0-based label ids per line),
    optional ``output-items.txt`` (label names, line index = label id) and
    optional TF-IDF features ``tfidf-*/X.trn.npz`` (``tfidf-attnxml`` is
    preferred when there are several; the splits then carry both the texts
    and that matrix, and the caller picks: ``xmc train --features``).
    In ``Y.*.npz`` every entry > 0 is a positive: 0/1, or graded relevance
    (read as relevant); a negative or non-finite entry is an error (a +1/-1
    matrix is not a label matrix).  Without ``output-items.txt`` the ids of
    ``Y.*.txt`` are column indices, L = the largest id + 1; ids that are
    sparse keys rather than indices (more than 10 slots per distinct id,
    beyond 10,000) are an error asking for ``output-items.txt``; a ``.npz``'s
    width may exceed its largest column used by at most as much.

Any layout may add ``label_names.tsv``: a header line, then ``id<TAB>title[<TAB>...]``
per label (the id as the splits name the label: a ``label_map.txt`` entry, a label name, or
the 0-based id of xc-bow), e.g. EUROVOC concept ``1309`` titled "import".  The titles are for
people (tables, plots); labels stay identified by their names.

Text is read under one policy (`xmc_core.textio`): UTF-8 only (a BOM is
dropped; UTF-16 or a Latin-1 byte is an error naming the line and byte), lines
end at "\\n" (CRLF reads as LF), label names are NFC-normalized and may not
hold invisible characters.

Every malformed input raises :class:`DataFormatError`, whose one-line message
names the file, the 1-based line (when there is one), the field and the
problem.

Notation follows the XMC papers: ``X`` is the n x F feature matrix, ``Y`` the
n x L binary label matrix.
"""

from __future__ import annotations

import gzip
import itertools
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from .sparse import binarize, first_bad_label, first_entry
from .textio import DataFormatError, label_name, strip_bom, text_lines

__all__ = [
    "DataFormatError",
    "Split",
    "Dataset",
    "LAYOUTS",
    "detect_layout",
    "load_dataset",
    "write_xc",
]

#: dataset folder layouts `detect_layout` recognizes and `load_dataset` reads
LAYOUTS: tuple[str, ...] = ("raw-text", "xc-bow", "pecos-xmc-base")

_SPLIT_NAMES: tuple[str, ...] = ("train", "test", "dev")
# PECOS file-name infixes for each split.
_PECOS_SPLIT: dict[str, str] = {"train": "trn", "test": "tst", "dev": "dev"}


# --------------------------------------------------------------------------- #
# Public types
# --------------------------------------------------------------------------- #
@dataclass
class Split:
    """One split (train / test / dev) of a dataset.

    Attributes:
        name: "train", "test" or "dev".
        Y: scipy.sparse.csr_matrix, shape (n, L), float32, binary (1.0),
            sorted indices, no duplicates.
        texts: list[str] of length n for raw-text layouts, else None.
        X: scipy.sparse.csr_matrix, shape (n, F), float32 with the values as
            stored on disk (not normalised), sorted indices; None when the
            layout has no features.
        files: the files the split was read from, as strings: the documents
            file first, then the labels file (one file for xc-bow), for
            error messages about the split as a whole (e.g. "no documents").
    """

    name: str
    Y: sp.csr_matrix
    texts: list[str] | None = None
    X: sp.csr_matrix | None = None
    files: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        """Number of documents (rows of Y)."""
        return int(self.Y.shape[0])


@dataclass
class Dataset:
    """A loaded XMC dataset.

    Attributes:
        name: the folder name.
        layout: "raw-text", "xc-bow" or "pecos-xmc-base".
        label_names: list[str] of length L; the index is the label id (the
            column of ``Split.Y``).
        train: the training split (always present).
        test, dev: optional splits.
        n_features: F for layouts with a feature matrix, else None.
        label_titles: list[str] of length L from ``label_names.tsv`` (a label
            without a row there keeps its name), or None without that file.
        features_dir: pecos-xmc-base with a ``tfidf-*`` folder: that folder
            (the splits then carry both ``texts`` and its ``X``), else None.
    """

    name: str
    layout: str
    label_names: list[str]
    train: Split
    test: Split | None = None
    dev: Split | None = None
    n_features: int | None = None
    label_titles: list[str] | None = None
    features_dir: str | None = None

    @property
    def n_labels(self) -> int:
        """L, the number of labels."""
        return len(self.label_names)

    def splits(self) -> dict[str, Split]:
        """The present splits by name, in train/test/dev order."""
        out = {"train": self.train}
        if self.test is not None:
            out["test"] = self.test
        if self.dev is not None:
            out["dev"] = self.dev
        return out


# --------------------------------------------------------------------------- #
# File helpers
# --------------------------------------------------------------------------- #
def _find(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root/name.gz``, whichever exists (plain preferred)."""
    for cand in (root / name, root / (name + ".gz")):
        if cand.is_file():
            return cand
    return None


def _open_binary(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_bytes(path: Path, max_lines: int | None) -> bytes:
    """Raw bytes of ``path`` (gunzipped), or only its first ``max_lines`` lines.

    Raises:
        DataFormatError: unreadable gzip stream, or the file is empty.
    """
    try:
        with _open_binary(path) as f:
            if max_lines is None:
                raw = f.read()
            else:
                raw = b"".join(itertools.islice(f, max_lines))
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataFormatError(path, None, "file", f"cannot decompress: {e}") from None
    if not raw:
        raise DataFormatError(path, 1, "file", "file is empty")
    return raw


def _split_lines_bytes(raw: bytes) -> list[bytes]:
    """Split on b"\\n" only; drop the empty piece after a final newline and a
    trailing b"\\r" on each line."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if b"\r" in raw:
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    return lines


def _read_text_lines(path: Path, max_lines: int | None = None) -> list[str]:
    """Lines of a text file (gunzipped) under the one text policy (`textio.text_lines`: UTF-8,
    split on "\\n" only, a trailing "\\r" and a leading BOM dropped).

    Raises:
        DataFormatError: empty file, bad gzip, or text that is not UTF-8 (naming the line and
            column of the first bad byte).
    """
    return text_lines(_read_bytes(path, max_lines), str(path))


def _check_aligned(path_a: Path, n_a: int, path_b: Path, n_b: int, unit: str = "lines") -> None:
    """Raise when two aligned files have different numbers of documents.

    The reported line is the first one that has no counterpart, in the longer
    file.
    """
    if n_a == n_b:
        return
    longer = path_a if n_a > n_b else path_b
    raise DataFormatError(
        longer,
        min(n_a, n_b) + 1,
        "lines",
        f"{path_a.name} has {n_a} {unit} but {path_b.name} has {n_b} {unit} "
        f"(they must be aligned line by line)",
    )


def _read_name_list(path: Path, *, unique: bool) -> list[str]:
    """One name per line (label_map.txt / output-items.txt), stripped, as people see it
    (`textio.label_name`)."""
    names = [label_name(s.strip(), path, i) for i, s in enumerate(_read_text_lines(path), start=1)]
    if unique:
        seen: dict[str, int] = {}
        for i, s in enumerate(names, start=1):
            if not s:
                raise DataFormatError(path, i, "label", "empty label name")
            if any(ch.isspace() for ch in s):
                raise DataFormatError(path, i, "label", f"label name {s!r} contains whitespace")
            if s in seen:
                raise DataFormatError(
                    path, i, "label", f"duplicate label name {s!r} (first on line {seen[s]})"
                )
            seen[s] = i
    return names


def _read_label_titles(path: Path, label_names: list[str]) -> list[str]:
    """Titles of the labels from ``label_names.tsv`` (header, then id<TAB>title[<TAB>...]); rows
    of ids the dataset does not have are skipped, labels without a row keep their name."""
    lines = _read_text_lines(path)
    titles: dict[str, str] = {}
    seen: dict[str, int] = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataFormatError(path, i, "title", "expected label id<TAB>title, found no tab")
        label, title = label_name(fields[0].strip(), path, i), " ".join(fields[1].split())
        if not label:
            raise DataFormatError(path, i, "label", "empty label id")
        if not title:
            raise DataFormatError(path, i, "title", f"empty title for label {label!r}")
        if label in seen:
            raise DataFormatError(path, i, "label", f"duplicate label id {label!r} (first on line {seen[label]})")
        seen[label] = i
        titles[label] = title
    return [titles.get(name, name) for name in label_names]


# --------------------------------------------------------------------------- #
# Sparse helpers
# --------------------------------------------------------------------------- #
def _index_dtype(*maxvals: int) -> type:
    return np.int32 if max(maxvals, default=0) < np.iinfo(np.int32).max else np.int64


def _label_matrix(counts: np.ndarray, cols: np.ndarray, n_labels: int) -> sp.csr_matrix:
    """Binary csr Y from per-row label counts and the flat label ids.

    Args:
        counts: int64 (n,), number of label tokens of each row.
        cols: int64 (sum(counts),), label ids in [0, n_labels), rows in order;
            may be unsorted and contain duplicates within a row.
        n_labels: L.

    Returns:
        csr_matrix (n, L) float32 with value 1.0, sorted indices, duplicates
        collapsed.
    """
    n = int(counts.shape[0])
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    key = rows * np.int64(max(n_labels, 1)) + cols.astype(np.int64, copy=False)
    key.sort()  # by (row, col); then drop repeats (duplicate labels on a line)
    if key.shape[0] > 1:
        keep = np.empty(key.shape[0], dtype=bool)
        keep[0] = True
        np.not_equal(key[1:], key[:-1], out=keep[1:])
        key = key[keep]
    rows = key // max(n_labels, 1)
    cols = key - rows * max(n_labels, 1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    idt = _index_dtype(int(key.shape[0]), n_labels)
    Y = sp.csr_matrix(
        (np.ones(key.shape[0], dtype=np.float32), cols.astype(idt), indptr.astype(idt)),
        shape=(n, n_labels),
    )
    Y.has_sorted_indices = True
    return Y


def _first_duplicate_row(indptr: np.ndarray, indices: np.ndarray) -> int | None:
    """Row of the first repeated column in a csr with sorted rows, else None."""
    if indices.shape[0] < 2:
        return None
    same = np.flatnonzero(indices[1:] == indices[:-1])
    if same.shape[0] == 0:
        return None
    starts = np.zeros(indices.shape[0] + 1, dtype=bool)
    starts[indptr] = True
    same = same[~starts[same + 1]]  # equal ids across a row boundary are fine
    if same.shape[0] == 0:
        return None
    return int(np.searchsorted(indptr, same[0], side="right") - 1)


# --------------------------------------------------------------------------- #
# Layout detection
# --------------------------------------------------------------------------- #
def _pecos_labels_file(root: Path, tag: str) -> Path | None:
    for name in (f"Y.{tag}.npz", f"Y.{tag}.txt"):
        p = _find(root, name)
        if p is not None:
            return p
    return None


def detect_layout(root) -> str:
    """Which of :data:`LAYOUTS` the folder ``root`` holds.

    Detection looks for the train files of each layout, in this order:
    raw-text (``train_texts.txt`` + ``train_labels.txt``), pecos-xmc-base
    (``X.trn.txt`` + ``Y.trn.npz``/``Y.trn.txt``), xc-bow (``train.txt``);
    each may end in ``.gz``.

    Raises:
        DataFormatError: naming the folder, when it is missing or no layout
            matches; the message lists what was expected and which half of a
            partly present layout is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, None, "layout", "dataset folder does not exist")
    texts = _find(root, "train_texts.txt")
    labels = _find(root, "train_labels.txt")
    if texts and labels:
        return "raw-text"
    xtrn = _find(root, "X.trn.txt")
    ytrn = _pecos_labels_file(root, "trn")
    if xtrn and ytrn:
        return "pecos-xmc-base"
    if _find(root, "train.txt"):
        return "xc-bow"

    hints = []
    if texts and not labels:
        hints.append("found train_texts.txt but train_labels.txt[.gz] is missing")
    if labels and not texts:
        hints.append("found train_labels.txt but train_texts.txt[.gz] is missing")
    if xtrn and not ytrn:
        hints.append("found X.trn.txt but Y.trn.npz / Y.trn.txt is missing")
    if ytrn and not xtrn:
        hints.append(f"found {ytrn.name} but X.trn.txt[.gz] is missing")
    if _find(root, "test.txt") or _find(root, "test_texts.txt") or _find(root, "X.tst.txt"):
        hints.append("a test file is present but the train file is missing")
    present = sorted(p.name for p in root.iterdir())
    shown = ", ".join(present[:12]) + (", ..." if len(present) > 12 else "")
    raise DataFormatError(
        root,
        None,
        "layout",
        "no known dataset layout; expected raw-text (train_texts.txt + train_labels.txt"
        " [+ test_*, dev_*, label_map.txt]), xc-bow (train.txt [+ test.txt]) or"
        " pecos-xmc-base (X.trn.txt + Y.trn.npz|Y.trn.txt [+ X.tst.txt, Y.tst.*,"
        " output-items.txt, tfidf-*/X.trn.npz]), each optionally .gz"
        + (f"; {'; '.join(hints)}" if hints else "")
        + f"; folder holds: {shown or 'nothing'}",
    )


# --------------------------------------------------------------------------- #
# raw-text layout
# --------------------------------------------------------------------------- #
def _line_of(counts: np.ndarray, pos: int) -> int:
    """1-based line of the flat token at `pos`, given per-line token counts."""
    return int(np.searchsorted(np.cumsum(counts), pos, side="right")) + 1


def _tokenize_label_lines(path: Path, lines: list[str]) -> tuple[np.ndarray, list[str]]:
    """Per-line token counts (int64 (n,)) and the flat list of label names, each as people see
    it (`textio.label_name`, checked once per distinct name)."""
    toks = [ln.split() for ln in lines]
    counts = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
    flat = list(itertools.chain.from_iterable(toks))
    renamed = {}
    for name in set(flat):
        if name.isascii() and name.isprintable():
            continue
        try:
            clean = label_name(name, path, None)
        except DataFormatError as e:
            raise DataFormatError(path, _line_of(counts, flat.index(name)), e.field, e.message) from None
        if clean != name:
            renamed[name] = clean
    if renamed:
        flat = [renamed.get(t, t) for t in flat]
    return counts, flat


def _map_names(
    path: Path, counts: np.ndarray, flat: list[str], name_to_id: dict[str, int], source: str
) -> np.ndarray:
    """Label names -> int64 ids; unknown name -> DataFormatError with its line."""
    try:
        return np.fromiter(map(name_to_id.__getitem__, flat), dtype=np.int64, count=len(flat))
    except KeyError as e:
        bad = e.args[0]
        line = _line_of(counts, flat.index(bad))
        raise DataFormatError(
            path, line, "label", f"unknown label name {bad!r} (not in {source})"
        ) from None


def _load_raw_text(root: Path, splits: Sequence[str], max_rows: int | None):
    files: dict[str, tuple[Path, Path]] = {}
    for s in splits:
        t, l = _find(root, f"{s}_texts.txt"), _find(root, f"{s}_labels.txt")
        if t is None and l is None:
            if s == "train":
                raise DataFormatError(root / "train_texts.txt", None, "file", "missing train split")
            continue
        if t is None or l is None:
            have, miss = (l, f"{s}_texts.txt") if t is None else (t, f"{s}_labels.txt")
            raise DataFormatError(
                root / miss, None, "file", f"missing: {have.name} is present but {miss}[.gz] is not"
            )
        files[s] = (t, l)

    texts: dict[str, list[str]] = {}
    tokens: dict[str, tuple[np.ndarray, list[str]]] = {}
    for s, (tp, lp) in files.items():
        texts[s] = _read_text_lines(tp, max_rows)
        label_lines = _read_text_lines(lp, max_rows)
        _check_aligned(tp, len(texts[s]), lp, len(label_lines))
        tokens[s] = _tokenize_label_lines(lp, label_lines)

    map_path = _find(root, "label_map.txt")
    if map_path is not None:
        label_names = _read_name_list(map_path, unique=True)
        source = map_path.name
    else:
        label_names = sorted(set().union(*(set(flat) for _, flat in tokens.values())))
        source = "the label set"
    name_to_id = {name: i for i, name in enumerate(label_names)}

    out: dict[str, Split] = {}
    for s, (tp, lp) in files.items():
        counts, flat = tokens[s]
        cols = _map_names(lp, counts, flat, name_to_id, source)
        out[s] = Split(name=s, Y=_label_matrix(counts, cols, len(label_names)), texts=texts[s],
                       files=(str(tp), str(lp)))
    return label_names, out, None


# --------------------------------------------------------------------------- #
# xc-bow layout
# --------------------------------------------------------------------------- #
def _parse_header(path: Path, line: bytes) -> tuple[int, int, int]:
    parts = line.split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        shown = line[:80].decode("utf-8", "replace")
        raise DataFormatError(path, 1, "header", f"expected 'N F L' (three non-negative integers), got {shown!r}")
    n, f, l = (int(p) for p in parts)
    if max(n, f, l) >= 2**31:  # ids are int32 downstream; N * L must not overflow int64
        raise DataFormatError(path, 1, "header", f"'N F L' = {n} {f} {l}: each count must be below 2**31")
    return n, f, l


def _split_xc_line(line: bytes) -> tuple[bytes, bytes]:
    """(labels part, features part) of one XC data line: the labels end at the first space or
    tab."""
    i = line.find(b" ")
    j = line.find(b"\t", 0, i if i >= 0 else len(line))
    if j >= 0:
        i = j
    head = line if i < 0 else line[:i]
    if b":" in head:  # no labels: the line starts directly with f:v
        return b"", line
    return head, (b"" if i < 0 else line[i + 1 :])


def _fromstring(buf: bytes, dtype, sep: str) -> np.ndarray | None:
    """np.fromstring in text mode; None when the text does not parse fully."""
    if not buf.strip():
        return np.zeros(0, dtype=dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return np.fromstring(buf, dtype=dtype, sep=sep)
    except (ValueError, DeprecationWarning):
        return None


def _parse_xc_fast(lab_parts, feat_parts, n_features: int, n_labels: int):
    """Vectorised parse of XC lines; None when anything looks off (the slow
    parser then finds and reports the exact problem)."""
    n = len(lab_parts)
    lab_counts = np.fromiter(
        ((p.count(b",") + 1) if p else 0 for p in lab_parts), dtype=np.int64, count=n
    )
    feat_counts = np.fromiter((p.count(b":") for p in feat_parts), dtype=np.int64, count=n)

    labs = _fromstring(b",".join(p for p in lab_parts if p), np.int64, ",")
    if labs is None or labs.shape[0] != int(lab_counts.sum()):
        return None
    if labs.shape[0] and (labs.min() < 0 or labs.max() >= n_labels):
        return None

    buf = b" ".join(feat_parts).replace(b":", b" ")
    # Integer-only text (counts, binary features) parses ~10x faster as int64.
    all_int = not buf.translate(None, delete=b"0123456789 \t\r+-")
    pairs = _fromstring(buf, np.int64 if all_int else np.float64, " ")
    del buf
    if pairs is None or pairs.shape[0] != 2 * int(feat_counts.sum()):
        return None
    fid = pairs[0::2]
    val = pairs[1::2]
    if fid.shape[0]:
        if fid.min() < 0 or fid.max() >= n_features or np.any(fid != np.floor(fid)):
            return None
        if not np.all(np.isfinite(val)) or val.min() < 0:
            return None
    return lab_counts, labs, feat_counts, fid.astype(np.int64), val.astype(np.float64)


def _parse_xc_slow(path: Path, lab_parts, feat_parts, n_features: int, n_labels: int, first_line: int):
    """Line-by-line parse with exact error reporting (line = first_line + row)."""
    lab_counts, labs, feat_counts, fids, vals = [], [], [], [], []
    for r, (lp, fp) in enumerate(zip(lab_parts, feat_parts)):
        line_no = first_line + r
        row_labs = []
        if lp:
            for tok in lp.split(b","):
                if not tok:
                    where = "ends with ','" if lp.endswith(b",") else "has an empty id between commas"
                    raise DataFormatError(
                        path, line_no, "label", f"the label list {lp[:40].decode('utf-8', 'replace')!r} {where}: "
                        "no space inside the label list (write '0,1 0:1', not '0, 1 0:1')")
                if not tok.isdigit():
                    raise DataFormatError(
                        path, line_no, "label", f"label id {tok[:40].decode('utf-8', 'replace')!r} is not a non-negative integer"
                    )
                lid = int(tok)
                if lid < 0 or lid >= n_labels:
                    raise DataFormatError(
                        path, line_no, "label", f"label id {lid} out of range [0, {n_labels})"
                    )
                row_labs.append(lid)
        row_f, row_v = [], []
        for tok in fp.split():
            shown = tok[:40].decode("utf-8", "replace")
            f_s, colon, v_s = tok.partition(b":")
            if not colon:
                if not row_f and tok.replace(b",", b"").isdigit():  # "0 ,1 0:1" or "0 1 0:1"
                    raise DataFormatError(
                        path, line_no, "label", f"{shown!r} follows the labels: labels are separated by ',' with no "
                        "space inside the label list (write '0,1 0:1')")
                raise DataFormatError(path, line_no, "feature", f"{shown!r} is not 'feature:value' (missing ':')")
            if not f_s.isdigit():
                raise DataFormatError(path, line_no, "feature", f"feature id in {shown!r} is not a non-negative integer")
            fid = int(f_s)
            if fid < 0 or fid >= n_features:
                raise DataFormatError(path, line_no, "feature", f"feature id {fid} out of range [0, {n_features})")
            try:
                v = float(v_s)
            except ValueError:
                raise DataFormatError(path, line_no, "value", f"value in {shown!r} is not a number") from None
            if not np.isfinite(v) or v < 0:
                raise DataFormatError(path, line_no, "value", f"value {v_s.decode('utf-8', 'replace')!r} must be finite and >= 0")
            row_f.append(fid)
            row_v.append(v)
        lab_counts.append(len(row_labs))
        labs.extend(row_labs)
        feat_counts.append(len(row_f))
        fids.extend(row_f)
        vals.extend(row_v)
    return (
        np.asarray(lab_counts, dtype=np.int64),
        np.asarray(labs, dtype=np.int64),
        np.asarray(feat_counts, dtype=np.int64),
        np.asarray(fids, dtype=np.int64),
        np.asarray(vals, dtype=np.float64),
    )


def _read_xc_file(path: Path, max_rows: int | None):
    """Read one XC BoW file.

    Returns:
        (X, Y, F, L): X csr (n, F) float32, Y csr (n, L) float32 binary.
    """
    raw = strip_bom(_read_bytes(path, None if max_rows is None else max_rows + 1), str(path))
    lines = _split_lines_bytes(raw)
    if not lines:
        raise DataFormatError(path, 1, "header", "the file holds no header line ('N F L')")
    n_decl, F, L = _parse_header(path, lines[0])
    rows = lines[1:]
    n = len(rows)
    if n > n_decl:
        blank = [i + 2 for i, r in enumerate(rows) if not r.strip()]
        hint = ""
        if blank and blank[-1] == n + 1 and n - n_decl <= len(blank):
            hint = f"; line {blank[-1]}, the last, is blank: a trailing blank line?"
        elif blank:
            hint = f"; line {blank[0]} is blank"
        raise DataFormatError(path, 1, "header", f"header declares {n_decl} rows but the file has "
                              f"{n if max_rows is None else 'more'} data lines{hint}")
    if n < (n_decl if max_rows is None else min(n_decl, max_rows)):
        raise DataFormatError(path, 1, "header", f"header declares {n_decl} rows but the file has only {n}")
    parts = [_split_xc_line(r) for r in rows]
    lab_parts = [p[0] for p in parts]
    feat_parts = [p[1] for p in parts]
    parsed = _parse_xc_fast(lab_parts, feat_parts, F, L)
    if parsed is None:
        parsed = _parse_xc_slow(path, lab_parts, feat_parts, F, L, first_line=2)
    lab_counts, labs, feat_counts, fids, vals = parsed

    Y = _label_matrix(lab_counts, labs, L)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(feat_counts, out=indptr[1:])
    idt = _index_dtype(int(indptr[-1]), F)
    X = sp.csr_matrix(
        (vals.astype(np.float32), fids.astype(idt), indptr.astype(idt)), shape=(n, F)
    )
    X.sort_indices()
    dup = _first_duplicate_row(X.indptr, X.indices)
    if dup is not None:
        raise DataFormatError(path, dup + 2, "feature", "the same feature id appears twice on the line")
    return X, Y, F, L


# A declared width (an XC header's L or F, the columns of a .npz) may exceed the largest id used by
# at most _ID_DENSITY times (+ the slack); ids without any declaration (PECOS Y.*.txt without
# output-items.txt) may leave at most that many slots per distinct id. A --max-rows slice, which
# may use few of the ids, gets _SLICE_SLACK times the slack.
_ID_DENSITY, _SLICE_SLACK = 10, 10_000
_LABEL_SLACK, _FEATURE_SLACK = 10_000, 1_000_000


def _check_width(path: Path, line: int | None, field: str, declared: int, ids: np.ndarray, what: str,
                 slack: int, sliced: bool) -> None:
    """A declared width far beyond the largest id used is a typo or ids that are keys, not
    indices: a model of that many labels (or features) would be almost all empty (or not fit in
    memory)."""
    largest = int(ids.max()) if ids.shape[0] else -1
    if declared > _ID_DENSITY * (largest + 1) + slack * (_SLICE_SLACK if sliced else 1):
        raise DataFormatError(path, line, field, f"declares {declared:,} {what}s but the largest {what} id used is "
                              f"{largest}; give the real count")


def _load_xc(root: Path, splits: Sequence[str], max_rows: int | None):
    out: dict[str, Split] = {}
    dims: tuple[int, int] | None = None
    for s in splits:
        p = _find(root, f"{s}.txt")
        if p is None:
            if s == "train":
                raise DataFormatError(root / "train.txt", None, "file", "missing train split")
            continue
        X, Y, F, L = _read_xc_file(p, max_rows)
        if dims is None:
            for declared, ids, what, slack in ((L, Y.indices, "label", _LABEL_SLACK), (F, X.indices, "feature", _FEATURE_SLACK)):
                _check_width(p, 1, "header", declared, ids, what, slack, sliced=max_rows is not None)
            dims = (F, L)
        elif dims != (F, L):
            raise DataFormatError(
                p, 1, "header",
                f"F={F}, L={L} differ from the train header's F={dims[0]}, L={dims[1]}",
            )
        out[s] = Split(name=s, Y=Y, X=X, files=(str(p),))
    assert dims is not None
    F, L = dims
    return [str(i) for i in range(L)], out, F


# --------------------------------------------------------------------------- #
# pecos-xmc-base layout
# --------------------------------------------------------------------------- #
def _load_npz(path: Path) -> sp.csr_matrix:
    try:
        M = sp.load_npz(path)
    except Exception as e:  # noqa: BLE001 - any failure means a bad file
        raise DataFormatError(path, None, "matrix", f"not a scipy sparse .npz file: {e}") from None
    if M.ndim != 2:
        raise DataFormatError(path, None, "matrix", f"expected a 2-d matrix, found {M.ndim} dimensions")
    M = sp.csr_matrix(M)
    if M.dtype.kind not in "biuf":
        raise DataFormatError(path, None, "matrix", f"values of type {M.dtype} (expected numbers)")
    return M


def _check_label_values(path: Path, Y: sp.csr_matrix, texts_file: Path) -> None:
    """Y of a PECOS .npz: entries > 0 are positives (0/1, or graded relevance read as relevant);
    a negative or non-finite entry is an error naming its row (from 1, as the texts' lines) and its
    label id (the column, from 0, as label ids are) (a ±1 matrix would otherwise make every label
    of every document a positive: PECOS#87)."""
    bad = first_bad_label(Y)
    if bad is not None:
        row, col, value = bad
        raise DataFormatError(
            path, None, "label",
            f"row {row + 1} (line {row + 1} of {texts_file.name}), label id {col} (column {col} counted from 0): "
            f"value {value:g}; Y holds 0/1 "
            "(entries > 0 are positives, graded relevance included); a +1/-1 matrix marks negatives with -1: "
            "store only the positives")


def _check_feature_values(path: Path, X: sp.csr_matrix) -> None:
    bad = ~np.isfinite(X.data)
    if bad.any():
        row, col, value = first_entry(X, bad)
        raise DataFormatError(path, None, "value", f"row {row + 1}, column {col}: value {value} is not finite")


def _parse_id_lines(path: Path, lines: list[str], n_labels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Lines of comma- (or space-) separated 0-based label ids.

    Returns:
        counts int64 (n,), flat ids int64.

    Raises:
        DataFormatError: naming the line of the first id that is not a non-negative integer or is
            not below `n_labels` (the labels of output-items.txt).
    """
    toks = [ln.replace(",", " ").split() for ln in lines]
    counts = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
    flat = list(itertools.chain.from_iterable(toks))
    joined = "".join(flat)
    ids = None
    if joined.isascii() and (joined.isdigit() or not joined):
        try:
            ids = np.fromiter(map(int, flat), dtype=np.int64, count=len(flat))
        except OverflowError:
            ids = None
    limit = n_labels if n_labels is not None else np.iinfo(np.int64).max
    bad_pos = None
    if ids is None:
        for pos, t in enumerate(flat):
            if not (t.isascii() and t.isdigit()):
                bad_pos, why = pos, f"label id {t[:40]!r} is not a non-negative integer"
                break
            if int(t) >= limit:
                bad_pos = pos
                why = (f"label id {t[:40]} out of range [0, {n_labels})" if n_labels is not None
                       else f"label id {t[:40]} is too large")
                break
    else:
        bad = np.flatnonzero(ids >= limit)
        if bad.shape[0]:
            bad_pos = int(bad[0])
            why = f"label id {ids[bad_pos]} out of range [0, {n_labels})"
    if bad_pos is not None:
        raise DataFormatError(path, _line_of(counts, bad_pos), "label", why)
    return counts, ids


def _check_id_density(raw_Y: dict, paths: dict, sliced: bool) -> None:
    """Without output-items.txt the label count is the largest id + 1: ids that are keys rather
    than column indices (4104233000) would make a model of billions of empty labels."""
    ids = [(s, v) for s, v in raw_Y.items() if not isinstance(v, sp.spmatrix) and v[1].shape[0]]
    if not ids:
        return
    distinct = np.unique(np.concatenate([v[1] for _, v in ids]))
    top = int(distinct[-1])
    if top + 1 <= _ID_DENSITY * len(distinct) + _LABEL_SLACK * (_SLICE_SLACK if sliced else 1):
        return
    s, (counts, flat) = max(ids, key=lambda sv: int(sv[1][1].max()))
    line = _line_of(counts, int(np.argmax(flat)))
    raise DataFormatError(
        paths[s][1], line, "label",
        f"label id {top}: without output-items.txt the ids are 0-based column indices, and only "
        f"{len(distinct)} distinct ids occur below {top + 1} (a model would have {top + 1:,} labels); "
        "give output-items.txt (one label per line, line = id) or renumber the ids 0..L-1")


def _pecos_tfidf_dir(root: Path) -> Path | None:
    cands = sorted(p for p in root.glob("tfidf-*") if p.is_dir() and _find(p, "X.trn.npz"))
    for p in cands:
        if p.name == "tfidf-attnxml":
            return p
    return cands[0] if cands else None


def _load_pecos(root: Path, splits: Sequence[str], max_rows: int | None):
    items = _find(root, "output-items.txt")
    label_names = _read_name_list(items, unique=False) if items is not None else None
    L = len(label_names) if label_names is not None else None
    tfidf = _pecos_tfidf_dir(root)

    texts: dict[str, list[str]] = {}
    raw_Y: dict[str, object] = {}
    paths: dict[str, tuple[Path, Path]] = {}
    for s in splits:
        tag = _PECOS_SPLIT[s]
        xp, yp = _find(root, f"X.{tag}.txt"), _pecos_labels_file(root, tag)
        if xp is None and yp is None:
            if s == "train":
                raise DataFormatError(root / "X.trn.txt", None, "file", "missing train split")
            continue
        if xp is None or yp is None:
            miss = f"X.{tag}.txt[.gz]" if xp is None else f"Y.{tag}.npz or Y.{tag}.txt[.gz]"
            have = (yp if xp is None else xp).name
            missing_path = root / (f"X.{tag}.txt" if xp is None else f"Y.{tag}.npz")
            raise DataFormatError(missing_path, None, "file", f"missing: {have} is present but {miss} is not")
        paths[s] = (xp, yp)
        texts[s] = _read_text_lines(xp, max_rows)
        if yp.name.endswith(".npz"):
            Y = _load_npz(yp)
            if max_rows is not None:
                Y = Y[:max_rows]
            if L is not None and Y.shape[1] != L:
                raise DataFormatError(
                    yp, None, "label", f"Y has {Y.shape[1]} columns but {items.name} lists {L} labels"
                )
            _check_aligned(xp, len(texts[s]), yp, Y.shape[0], unit="rows")
            _check_label_values(yp, Y, xp)
            if L is None:
                _check_width(yp, None, "label", Y.shape[1], Y.indices, "label column", _LABEL_SLACK,
                             sliced=max_rows is not None)
            raw_Y[s] = Y
        else:
            lines = _read_text_lines(yp, max_rows)
            _check_aligned(xp, len(texts[s]), yp, len(lines))
            raw_Y[s] = _parse_id_lines(yp, lines, L)

    if L is None:
        _check_id_density(raw_Y, paths, sliced=max_rows is not None)
        widths = []
        for v in raw_Y.values():
            if isinstance(v, sp.spmatrix):
                widths.append(v.shape[1])
            elif v[1].shape[0]:
                widths.append(int(v[1].max()) + 1)
        L = max(widths, default=0)
        label_names = [str(i) for i in range(L)]
    for s, v in raw_Y.items():
        if isinstance(v, sp.spmatrix) and v.shape[1] != L:
            raise DataFormatError(paths[s][1], None, "label", f"Y has {v.shape[1]} columns, expected {L}")

    out: dict[str, Split] = {}
    n_features = None
    for s in raw_Y:
        v = raw_Y[s]
        Y = binarize(v) if isinstance(v, sp.spmatrix) else _label_matrix(v[0], v[1], L)
        X = None
        if tfidf is not None:
            xf = _find(tfidf, f"X.{_PECOS_SPLIT[s]}.npz")
            if xf is not None:
                X = _load_npz(xf).astype(np.float32)
                if max_rows is not None:
                    X = X[:max_rows]
                _check_feature_values(xf, X)
                _check_width(xf, None, "feature", X.shape[1], X.indices, "feature column", _FEATURE_SLACK,
                             sliced=max_rows is not None)
                X.sum_duplicates()  # also sorts indices
                _check_aligned(paths[s][0], len(texts[s]), xf, X.shape[0], unit="rows")
                if n_features is None:
                    n_features = int(X.shape[1])
                elif X.shape[1] != n_features:
                    raise DataFormatError(
                        xf, None, "feature", f"X has {X.shape[1]} columns but train X has {n_features}"
                    )
        out[s] = Split(name=s, Y=Y, texts=texts[s], X=X, files=tuple(str(f) for f in paths[s]))
    return label_names, out, n_features


# --------------------------------------------------------------------------- #
# Public entry points
# --------------------------------------------------------------------------- #
_LOADERS = {"raw-text": _load_raw_text, "xc-bow": _load_xc, "pecos-xmc-base": _load_pecos}


def load_dataset(
    root, *, splits: Iterable[str] = ("train", "test", "dev"), max_rows: int | None = None
) -> Dataset:
    """Load the dataset in folder ``root`` (layout from :func:`detect_layout`).

    Args:
        root: dataset folder; its name becomes ``Dataset.name``.
        splits: which splits to read, a subset of ("train", "test", "dev");
            must include "train".  Missing optional splits are None.
        max_rows: read only the first ``max_rows`` documents of each split
            (>= 1), e.g. for fast tests.  Line-count checks then compare the
            truncated files.

    Returns:
        Dataset with csr float32 ``Y`` (n x L, binary) per split, ``texts``
        for raw-text layouts and ``X`` (n x F float32) for bag-of-words ones.
        Empty documents and documents without labels are kept; duplicate
        labels on one line are collapsed.

    Raises:
        DataFormatError: any malformed or missing file (file, line, field).
        ValueError: bad arguments (unknown split name, no "train", max_rows < 1).
    """
    root = Path(root)
    splits = tuple(dict.fromkeys(splits))
    unknown = [s for s in splits if s not in _SPLIT_NAMES]
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; expected a subset of {_SPLIT_NAMES}")
    if "train" not in splits:
        raise ValueError("splits must include 'train'")
    if max_rows is not None and int(max_rows) < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    layout = detect_layout(root)
    ordered = tuple(s for s in _SPLIT_NAMES if s in splits)
    label_names, parts, n_features = _LOADERS[layout](root, ordered, max_rows)
    titles_path = _find(root, "label_names.tsv")
    features_dir = _pecos_tfidf_dir(root) if layout == "pecos-xmc-base" and n_features is not None else None
    return Dataset(
        name=root.resolve().name,
        layout=layout,
        label_names=label_names,
        train=parts["train"],
        test=parts.get("test"),
        dev=parts.get("dev"),
        n_features=n_features,
        label_titles=_read_label_titles(titles_path, label_names) if titles_path is not None else None,
        features_dir=str(features_dir) if features_dir is not None else None,
    )


class _SegmentTable:
    """Byte strings addressed by segment id, for gathering output text."""

    def __init__(self, pieces: list[bytes]):
        lens = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        self.off = np.zeros(len(pieces), dtype=np.int64)
        np.cumsum(lens[:-1], out=self.off[1:])
        self.len = lens
        self.buf = np.frombuffer(b"".join(pieces), dtype=np.uint8)

    def gather(self, seg: np.ndarray) -> bytes:
        """Concatenation of the segments ``seg`` (int64 ids) as bytes."""
        lens = self.len[seg]
        out_off = np.cumsum(lens) - lens
        total = int(lens.sum())
        idx = np.repeat(self.off[seg] - out_off, lens)
        idx += np.arange(total, dtype=np.int64)
        return self.buf[idx].tobytes()


def _value_codes(v: np.ndarray) -> tuple[np.ndarray, list[bytes]] | None:
    """Codes into a small table of value strings when all values are small
    integers (counts, binary features); None otherwise."""
    if v.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), [b"0"]
    vmax = float(v.max())
    if vmax >= 1 << 20 or not np.all(v == np.floor(v)):
        return None
    return v.astype(np.int64), [str(i).encode() for i in range(int(vmax) + 1)]


def _xc_body(X: sp.csr_matrix, Y: sp.csr_matrix, rows_per_chunk: int) -> Iterable[bytes]:
    """XC text of the rows of (X, Y), in chunks of bytes (vectorised)."""
    n, F = X.shape
    L = Y.shape[1]
    # Segment ids: [0, L) "l" | [L, 2L) ",l" | [2L, 2L+F) " f:" | NL | SP | values...
    NL, SP, V0 = 2 * L + F, 2 * L + F + 1, 2 * L + F + 2
    fixed = (
        [str(i).encode() for i in range(L)]
        + [b",%d" % i for i in range(L)]
        + [b" %d:" % i for i in range(F)]
        + [b"\n", b" "]
    )
    codes = _value_codes(X.data)
    table = _SegmentTable(fixed + codes[1]) if codes is not None else None
    n_lab = np.diff(Y.indptr).astype(np.int64)
    n_feat = np.diff(X.indptr).astype(np.int64)
    for r0 in range(0, n, rows_per_chunk):
        r1 = min(n, r0 + rows_per_chunk)
        nl, nf = n_lab[r0:r1], n_feat[r0:r1]
        m = r1 - r0
        empty = (nl == 0) & (nf == 0)
        count = nl + 2 * nf + 1 + empty
        base = np.cumsum(count) - count
        seg = np.empty(int(count.sum()), dtype=np.int64)
        local = np.arange(m, dtype=np.int64)
        # labels
        ya, yb = int(Y.indptr[r0]), int(Y.indptr[r1])
        lrow = np.repeat(local, nl)
        rank = np.arange(yb - ya, dtype=np.int64) - (Y.indptr[r0:r1].astype(np.int64) - ya)[lrow]
        lab = Y.indices[ya:yb].astype(np.int64)
        seg[base[lrow] + rank] = np.where(rank == 0, lab, L + lab)
        # feature:value pairs
        xa, xb = int(X.indptr[r0]), int(X.indptr[r1])
        frow = np.repeat(local, nf)
        rank = np.arange(xb - xa, dtype=np.int64) - (X.indptr[r0:r1].astype(np.int64) - xa)[frow]
        pos = base[frow] + nl[frow] + 2 * rank
        seg[pos] = 2 * L + X.indices[xa:xb].astype(np.int64)
        if table is not None:
            seg[pos + 1] = V0 + codes[0][xa:xb]
            tab = table
        else:  # float values: a per-chunk table, 9 significant digits (exact float32)
            vals = X.data[xa:xb].tolist()
            seg[pos + 1] = V0 + np.arange(xb - xa, dtype=np.int64)
            tab = _SegmentTable(fixed + [(b"%.9g" % x) for x in vals])
        seg[base[empty]] = SP
        seg[base + count - 1] = NL
        yield tab.gather(seg)


def write_xc(path, X, Y) -> None:
    """Write ``X`` and ``Y`` in the Extreme Classification Repository format.

    Output: header ``N F L``, then per row ``l1,l2,... f:v f:v ...`` with
    sorted 0-based ids; a row without labels starts with a space.  Integer
    values are written without a decimal point, other values with 9
    significant digits (reads back to the same float32).  The file is
    gzip-compressed (level 1, mtime 0) when ``path`` ends in ``.gz``.  Writing
    is atomic: a temporary file in the same folder is renamed over ``path``
    with ``os.replace``.

    Args:
        path: output file.
        X: sparse or dense (n, F) non-negative finite features (stored as
            float32).
        Y: sparse or dense (n, L) labels; non-zero entries are the positives.
    """
    path = Path(path)
    X = sp.csr_matrix(X, dtype=np.float32)
    Y = sp.csr_matrix(Y)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    X.sum_duplicates()  # also sorts indices
    X.eliminate_zeros()
    Y = binarize(Y)
    n, F = X.shape
    L = Y.shape[1]
    if X.nnz and (not np.all(np.isfinite(X.data)) or X.data.min() < 0):
        raise ValueError("X values must be finite and >= 0")
    avg = max(1.0, (X.nnz + Y.nnz) / max(n, 1))
    rows_per_chunk = max(1, int(2_000_000 / avg))

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as raw:
            if path.name.endswith(".gz"):
                stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0)
            else:
                stream = raw
            stream.write(f"{n} {F} {L}\n".encode())
            for chunk in _xc_body(X, Y, rows_per_chunk):
                stream.write(chunk)
            if stream is not raw:
                stream.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
