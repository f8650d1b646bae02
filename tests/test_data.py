"""Tests for xmc_core.data (dataset readers / writer)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from xmc_core.data import DataFormatError, detect_layout, load_dataset, write_xc

from conftest import shared_dataset


def _write(path: Path, content: str | bytes) -> Path:
    data = content.encode("utf-8") if isinstance(content, str) else content
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _raise_format(root, **kw) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        load_dataset(root, **kw)
    return info.value


def _assert_names(err: DataFormatError, path: Path, line: int | None, field: str | None = None):
    msg = str(err)
    assert "\n" not in msg
    assert err.path == str(path)
    assert err.line == line
    if line is None:
        assert msg.startswith(f"{path}: ")
    else:
        assert msg.startswith(f"{path}:{line}: ")
    if field is not None:
        assert err.field == field
        assert f": {field}: " in msg


# --------------------------------------------------------------------------- #
# DataFormatError
# --------------------------------------------------------------------------- #
def test_error_message_format():
    e = DataFormatError("a/b.txt", 3, "label", "bad\nthing")
    assert str(e) == "a/b.txt:3: label: bad thing"
    assert isinstance(e, ValueError)
    assert str(DataFormatError("a", None, "file", "gone")) == "a: file: gone"


# --------------------------------------------------------------------------- #
# raw-text layout
# --------------------------------------------------------------------------- #
def test_reuters_slice(reuters_dir):
    ds = load_dataset(reuters_dir, max_rows=200)
    assert ds.layout == "raw-text"
    assert ds.name == "reuters-21578"
    assert ds.n_labels == 90 and ds.label_names[0] == "acq"
    assert ds.train.n == 200 and ds.test is not None and ds.test.n == 200
    assert ds.dev is None and ds.n_features is None
    Y = ds.train.Y
    assert isinstance(Y, sp.csr_matrix) and Y.dtype == np.float32 and Y.shape == (200, 90)
    assert Y.has_sorted_indices and np.all(Y.data == 1.0)
    assert len(ds.train.texts) == 200 and all(isinstance(t, str) for t in ds.train.texts)
    # first train document's labels as in the file
    with gzip.open(reuters_dir / "train_labels.txt.gz", "rt", encoding="utf-8") as f:
        first = f.readline().split()
    got = {ds.label_names[j] for j in Y[0].indices}
    assert got == set(first)


def _raw_fixture(root: Path, *, label_map: bool = True) -> Path:
    _write(root / "train_texts.txt", "doc one\n\ndoc\u2028three with sep\n")
    _write(root / "train_labels.txt.gz", "b a b\nc\n\n")
    _write(root / "test_texts.txt", "t1\nt2\n")
    _write(root / "test_labels.txt", "a\nd\n")
    if label_map:
        _write(root / "label_map.txt", "a\nb\nc\nd\ne\n")
    return root


def test_raw_text_fixture(tmp_path):
    ds = load_dataset(_raw_fixture(tmp_path / "toy"))
    assert ds.layout == "raw-text" and ds.name == "toy"
    assert ds.label_names == ["a", "b", "c", "d", "e"]
    # U+2028 stays inside the document; the empty document is kept
    assert ds.train.texts == ["doc one", "", "doc\u2028three with sep"]
    Y = ds.train.Y.toarray()
    # duplicate "b" collapsed to a single 1.0; a document without labels is kept
    np.testing.assert_array_equal(
        Y, [[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    )
    assert ds.test.Y.toarray().tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 1, 0]]
    assert ds.dev is None


def test_label_titles_from_label_names_tsv(tmp_path):
    root = _raw_fixture(tmp_path / "toy")
    assert load_dataset(root).label_titles is None
    # header, rows in any order, extra columns ignored, an id the dataset lacks skipped, "e" untitled
    _write(root / "label_names.tsv", "id\ttitle\tparents\nb\tsecond  label\t7\na\tfirst\n\nzz\tnot here\n"
           "d\tfourth\nc\tthird\n")
    ds = load_dataset(root)
    assert ds.label_names == ["a", "b", "c", "d", "e"]
    assert ds.label_titles == ["first", "second label", "third", "fourth", "e"]
    # bad rows name the file, the line and the field
    for content, line, field in (("id\ttitle\na first\n", 2, "title"), ("id\ttitle\na\tx\nb\t \n", 3, "title"),
                                 ("id\ttitle\na\tx\nb\ty\na\tz\n", 4, "label")):
        _write(root / "label_names.tsv", content)
        _assert_names(_raise_format(root), root / "label_names.tsv", line, field)


def test_eurlex_label_titles_are_eurovoc_terms():
    ds = load_dataset(shared_dataset("eurlex57k"), splits=("train",), max_rows=5)
    titles = dict(zip(ds.label_names, ds.label_titles))
    assert ds.n_labels == 4271 and titles["3"] == "adhesive" and titles["4"] == "State trading"


def test_raw_text_without_label_map_uses_union(tmp_path):
    ds = load_dataset(_raw_fixture(tmp_path / "toy", label_map=False))
    assert ds.label_names == ["a", "b", "c", "d"]
    ds_train = load_dataset(tmp_path / "toy", splits=("train",))
    assert ds_train.label_names == ["a", "b", "c"] and ds_train.test is None


def test_raw_text_numeric_names_are_names(tmp_path):
    root = tmp_path / "num"
    _write(root / "train_texts.txt", "x\ny\n")
    _write(root / "train_labels.txt", "1519 7\n7\n")
    _write(root / "label_map.txt", "7\n1519\n")
    ds = load_dataset(root)
    assert ds.train.Y.toarray().tolist() == [[1, 1], [1, 0]]


def test_unknown_label_name(tmp_path):
    root = _raw_fixture(tmp_path / "toy")
    _write(root / "test_labels.txt", "a\nzzz\n")
    err = _raise_format(root)
    _assert_names(err, root / "test_labels.txt", 2, "label")
    assert "zzz" in str(err)


def test_mismatched_line_counts(tmp_path):
    root = _raw_fixture(tmp_path / "toy")
    _write(root / "test_labels.txt", "a\nd\nb\n")
    err = _raise_format(root)
    _assert_names(err, root / "test_labels.txt", 3, "lines")
    assert "test_texts.txt" in str(err) and "test_labels.txt" in str(err)
    assert " 2 " in str(err) and " 3 " in str(err)


def test_empty_file(tmp_path):
    root = _raw_fixture(tmp_path / "toy")
    _write(root / "test_texts.txt", "")
    err = _raise_format(root)
    _assert_names(err, root / "test_texts.txt", 1, "file")
    assert "empty" in str(err)


def test_non_utf8(tmp_path):
    root = _raw_fixture(tmp_path / "toy")
    _write(root / "train_texts.txt", b"fine\nbad \xff byte\nok\n")
    err = _raise_format(root)
    _assert_names(err, root / "train_texts.txt", 2, "encoding")


def test_missing_labels_file_named(tmp_path):
    root = _raw_fixture(tmp_path / "toy")
    (root / "test_labels.txt").unlink()
    err = _raise_format(root)
    assert "test_labels.txt" in str(err) and "missing" in str(err)


def test_no_layout(tmp_path):
    root = tmp_path / "junk"
    _write(root / "train_texts.txt", "x\n")
    with pytest.raises(DataFormatError) as info:
        detect_layout(root)
    msg = str(info.value)
    assert msg.startswith(f"{root}: layout: ")
    assert "train_labels.txt" in msg and "train.txt" in msg and "X.trn.txt" in msg


# --------------------------------------------------------------------------- #
# xc-bow layout
# --------------------------------------------------------------------------- #
XC_TRAIN = (
    "4 6 3\n"
    "0,2 0:1 3:2.5\n"
    " 1:1 5:0.25\n"  # no labels: starts with a space
    "1:3 2:1\n"  # no labels: starts directly with f:v
    "2,2,1 4:1\n"  # duplicate label collapsed
)


def test_xc_bow_fixture(tmp_path):
    root = tmp_path / "bow"
    _write(root / "train.txt.gz", XC_TRAIN)
    _write(root / "test.txt", "1 6 3\n1 0:1\n")
    ds = load_dataset(root)
    assert ds.layout == "xc-bow"
    assert ds.label_names == ["0", "1", "2"] and ds.n_features == 6
    X, Y = ds.train.X, ds.train.Y
    assert X.dtype == np.float32 and Y.dtype == np.float32
    assert X.shape == (4, 6) and Y.shape == (4, 3)
    np.testing.assert_array_equal(
        X.toarray(),
        [[1, 0, 0, 2.5, 0, 0], [0, 1, 0, 0, 0, 0.25], [0, 3, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0]],
    )
    assert Y.toarray().tolist() == [[1, 0, 1], [0, 0, 0], [0, 0, 0], [0, 1, 1]]
    assert ds.test.n == 1 and ds.test.texts is None
    ds2 = load_dataset(root, max_rows=2)
    assert ds2.train.n == 2 and ds2.test.n == 1


@pytest.mark.parametrize(
    "line, field",
    [
        ("0 0:1 x:2", "feature"),  # non-integer feature
        ("0 0:1 2:abc", "value"),  # non-float value
        ("0 0:1 21", "feature"),  # missing colon
        ("0 0:1 6:1", "feature"),  # feature id >= F
        ("3 0:1", "label"),  # label id >= L
        ("-1 0:1", "label"),  # negative label
        ("0 0:nan", "value"),
        ("0 0:inf", "value"),
        ("0 0:-1", "value"),
        ("0 1:1 1:2", "feature"),  # duplicate feature
    ],
)
def test_xc_bad_lines(tmp_path, line, field):
    root = tmp_path / "bow"
    _write(root / "train.txt", f"3 6 3\n0 0:1\n{line}\n1 1:1\n")
    err = _raise_format(root)
    _assert_names(err, root / "train.txt", 3, field)


@pytest.mark.parametrize(
    "content",
    ["3 6\n0 0:1\n", "a b c\n0 0:1\n", "2 6 3\n0 0:1\n", "1 6 3\n0 0:1\n1 1:1\n"],
)
def test_xc_bad_header_or_count(tmp_path, content):
    root = tmp_path / "bow"
    _write(root / "train.txt", content)
    err = _raise_format(root)
    _assert_names(err, root / "train.txt", 1, "header")


def test_write_xc_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X = sp.random(50, 30, density=0.2, format="csr", dtype=np.float32, random_state=1)
    X.data = (X.data * 10).astype(np.float32)
    X.data[::3] = np.round(X.data[::3])
    X.data[1] = np.float32(1e-7)
    Yd = (rng.random((50, 7)) < 0.3).astype(np.float32)
    Yd[3] = 0  # a row without labels
    Yd[4] = 0  # ... this one has no features either
    Y = sp.csr_matrix(Yd)
    Xd = X.toarray()
    Xd[4] = 0
    X = sp.csr_matrix(Xd)
    root = tmp_path / "rt"
    write_xc(root / "train.txt.gz", X, Y)
    write_xc(root / "test.txt", X[:5], Y[:5])
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    ds = load_dataset(root)
    assert (ds.train.X != X).nnz == 0 and ds.train.X.shape == X.shape
    np.testing.assert_array_equal(ds.train.X.toarray(), X.toarray())
    np.testing.assert_array_equal(ds.train.Y.toarray(), Y.toarray())
    np.testing.assert_array_equal(ds.test.X.toarray(), X[:5].toarray())
    assert ds.n_labels == 7 and ds.n_features == 30


# --------------------------------------------------------------------------- #
# pecos-xmc-base layout
# --------------------------------------------------------------------------- #
def _pecos_fixture(root: Path, *, npz: bool) -> Path:
    _write(root / "X.trn.txt", "red apple\ngreen pear\nbanana\n")
    _write(root / "X.tst.txt", "apple pie\n")
    _write(root / "output-items.txt", "fruit\nred\ngreen\nyellow\n")
    Y_trn = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=np.float32))
    Y_tst = sp.csr_matrix(np.array([[1, 0, 0, 1]], dtype=np.float32))
    if npz:
        sp.save_npz(root / "Y.trn.npz", Y_trn, compressed=False)
        sp.save_npz(root / "Y.tst.npz", Y_tst)
    else:
        _write(root / "Y.trn.txt", "0,1\n2,0,2\n\n")
        _write(root / "Y.tst.txt.gz", "0,3\n")
    tf = root / "tfidf-attnxml"
    tf.mkdir()
    sp.save_npz(tf / "X.trn.npz", sp.csr_matrix(np.eye(3, 5, dtype=np.float64) * 0.5))
    sp.save_npz(tf / "X.tst.npz", sp.csr_matrix(np.ones((1, 5))))
    return root


@pytest.mark.parametrize("npz", [True, False])
def test_pecos_fixture(tmp_path, npz):
    root = _pecos_fixture(tmp_path / "pecos", npz=npz)
    ds = load_dataset(root)
    assert ds.layout == "pecos-xmc-base"
    assert ds.label_names == ["fruit", "red", "green", "yellow"]
    assert ds.train.texts == ["red apple", "green pear", "banana"]
    assert ds.train.Y.toarray().tolist() == [[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert ds.test.Y.toarray().tolist() == [[1, 0, 0, 1]]
    assert ds.train.Y.dtype == np.float32 and ds.train.Y.has_sorted_indices
    assert ds.n_features == 5 and ds.train.X.dtype == np.float32
    np.testing.assert_array_equal(ds.train.X.toarray(), np.eye(3, 5) * 0.5)
    assert load_dataset(root, max_rows=2).train.X.shape == (2, 5)


def test_pecos_bad_label_id(tmp_path):
    root = _pecos_fixture(tmp_path / "pecos", npz=False)
    _write(root / "Y.trn.txt", "0,1\n2,9\n\n")
    err = _raise_format(root)
    _assert_names(err, root / "Y.trn.txt", 2, "label")


def test_pecos_mismatched_rows(tmp_path):
    root = _pecos_fixture(tmp_path / "pecos", npz=True)
    _write(root / "X.trn.txt", "only\ntwo\n")
    err = _raise_format(root)
    _assert_names(err, root / "Y.trn.npz", 3, "lines")
    assert "X.trn.txt" in str(err)


def test_delicious_rewrite_is_byte_identical(tmp_path):
    """Reading the real XC file and writing it back gives the same bytes."""
    delicious = shared_dataset("delicious")
    ds = load_dataset(delicious, splits=("train",))
    assert (ds.train.n, ds.n_features, ds.n_labels) == (12920, 500, 983)
    assert int(np.sum(np.diff(ds.train.Y.indptr) == 0)) == 12  # label-less points kept
    out = tmp_path / "train.txt"
    write_xc(out, ds.train.X, ds.train.Y)
    with gzip.open(delicious / "train.txt.gz", "rb") as f:
        assert out.read_bytes() == f.read()
