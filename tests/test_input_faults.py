"""Issue 20, inputs that trip other XMC tools, by kind, on inputs these tests write themselves:

- nothing outside a folder xmc wrote is ever replaced or deleted (`--model`, `xmc synth`, the
  checkpoint folder, the Python API's `save`s, the artifact store);
- one text policy (UTF-8 only, CRLF = LF, label names as people see them) for files, gzip, stdin,
  `--text` and the Python API;
- Y validated in every layout (values, ids against the declared or observed label count);
- the PECOS layout with or without `tfidf-*`, saying which features were used;
- settings validated when parsed (encoder positions, topk);
- DuckDB (tests/test_results_db.py): a bounded wait naming the holder, a missing file is an error;
- dataset folders whose names cannot be partition keys are named and skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import require_module
from xmc_core.cli import main

TEXTS = ["crude oil prices rise", "wheat grain harvest", "oil output falls", "grain exports wheat",
         "interest rates cut", "crude oil and wheat", "rates on bank loans", "oil refinery output"]
LABELS = ["crude", "grain wheat", "crude", "grain wheat", "interest", "crude wheat", "interest", "crude"]


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _raw(root: Path, texts=TEXTS, labels=LABELS, eol: str = "\n", test: bool = True) -> Path:
    _write(root / "train_texts.txt", "".join(t + eol for t in texts))
    _write(root / "train_labels.txt", "".join(l + eol for l in labels))
    if test:
        _write(root / "test_texts.txt", "".join(t + eol for t in texts[:3]))
        _write(root / "test_labels.txt", "".join(l + eol for l in labels[:3]))
    return root


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def _xmc(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xmc_core.cli", *args], input=stdin, capture_output=True,
                          timeout=300)


def _one_line_error(rc: int, err: str, *names: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("xmc: error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("faults")
    data = _raw(base / "data")
    assert main(["train", "--data", str(data), "--model", str(base / "m"), "--threads", "1"]) == 0
    return base / "m"


# --------------------------------------------------------------------------- nothing is ever replaced


@pytest.mark.parametrize("target", ["parent-of-data", "data-folder", "a-file", "symlink", "generated-dataset",
                                    "part-of-a-model", "dataset-inside-a-model"])
def test_model_path_that_xmc_did_not_write_is_refused_untouched(tmp_path, capsys, target, model):
    from xmc_core.folders import mark

    proj = tmp_path / "proj"
    data = _raw(proj / "ds")
    _write(proj / "notes.txt", "my notes\n")
    os.symlink(proj / "ds", proj / "link")
    if target == "generated-dataset":
        mark(data, "dataset")  # as `xmc synth` marks what it writes: a dataset, not a model
    elif target == "part-of-a-model":
        import shutil

        shutil.copytree(model, proj / "m")
        data = proj / "ds"
    elif target == "dataset-inside-a-model":
        import shutil

        shutil.copytree(model, proj / "m")
        data = _raw(proj / "m" / "ds")
    path = {"parent-of-data": proj, "data-folder": data, "a-file": proj / "notes.txt", "symlink": proj / "link",
            "generated-dataset": data, "part-of-a-model": proj / "m" / "ranker",
            "dataset-inside-a-model": proj / "m"}[target]
    before = _snapshot(tmp_path)
    t0 = time.perf_counter()
    rc, out, err = _main(capsys, "train", "--data", str(data), "--model", str(path), "--threads", "1")
    _one_line_error(rc, err, str(path))
    assert out == ""
    assert _snapshot(tmp_path) == before  # nothing deleted, renamed, or left behind
    assert time.perf_counter() - t0 < 5  # refused before loading or training


def test_model_folder_xmc_wrote_is_replaced_and_a_failed_retrain_keeps_it(tmp_path, capsys):
    from xmc_core.folders import MARKER, folder_kind

    data = _raw(tmp_path / "d")
    m = tmp_path / "m"
    assert _main(capsys, "train", "--data", str(data), "--model", str(m), "--threads", "1")[0] == 0
    assert folder_kind(m) == "model" and json.loads((m / MARKER).read_text())["kind"] == "model"
    assert folder_kind(m / "ranker") == "ranker" and folder_kind(m / "featurizer") == "featurizer"
    first = _snapshot(m)
    # retrain on other data: replaced in place
    other = _raw(tmp_path / "d2", texts=TEXTS[::-1], labels=LABELS[::-1])
    assert _main(capsys, "train", "--data", str(other), "--model", str(m), "--threads", "1")[0] == 0
    second = _snapshot(m)
    assert second != first
    # a retrain that fails keeps the model, and leaves no temporary sibling
    bad = _raw(tmp_path / "bad", texts=["a b"], labels=["x"], test=False)
    rc, _, err = _main(capsys, "train", "--data", str(bad), "--model", str(m), "--threads", "1")
    _one_line_error(rc, err, str(bad))
    assert _snapshot(m) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "d", "d2", "m"]


def test_an_empty_folder_is_filled(tmp_path, capsys):
    data = _raw(tmp_path / "d")
    (tmp_path / "m").mkdir()
    assert _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m"), "--threads", "1")[0] == 0
    assert (tmp_path / "m" / "params.json").is_file()


def test_model_folder_of_an_older_xmc_without_marker_is_replaceable(tmp_path, capsys):
    from xmc_core.folders import MARKER

    data = _raw(tmp_path / "d")
    m = tmp_path / "m"
    assert _main(capsys, "train", "--data", str(data), "--model", str(m), "--threads", "1")[0] == 0
    (m / MARKER).unlink()  # as written before the marker existed
    assert _main(capsys, "train", "--data", str(data), "--model", str(m), "--threads", "1")[0] == 0
    assert (m / MARKER).is_file()
    # but a folder with a params.json of its own is not a model
    other = tmp_path / "other"
    _write(other / "params.json", json.dumps({"lr": 0.1}))
    rc, _, err = _main(capsys, "train", "--data", str(data), "--model", str(other), "--threads", "1")
    _one_line_error(rc, err, str(other))
    assert json.loads((other / "params.json").read_text()) == {"lr": 0.1}


def test_checkpoint_and_synth_paths_are_checked_before_any_work(tmp_path, capsys):
    data = _raw(tmp_path / "d")
    user = _write(tmp_path / "m.checkpoint" / "mine.txt", "keep\n").parent
    t0 = time.perf_counter()
    rc, _, err = _main(capsys, "train", "--method", "xr-transformer", "--data", str(data), "--model",
                       str(tmp_path / "m"), "--threads", "1")
    _one_line_error(rc, err, str(user))
    assert time.perf_counter() - t0 < 5 and (user / "mine.txt").read_text() == "keep\n"
    assert not (tmp_path / "m").exists()
    rc, _, err = _main(capsys, "synth", str(data), "--labels", "5", "--train", "10", "--test", "5")
    _one_line_error(rc, err, str(data))
    assert sorted(p.name for p in data.iterdir()) == ["test_labels.txt", "test_texts.txt", "train_labels.txt",
                                                       "train_texts.txt"]
    # a folder xmc synth wrote is regenerated
    out = tmp_path / "s"
    for seed in ("0", "1"):
        assert _main(capsys, "synth", str(out), "--labels", "5", "--train", "10", "--test", "5", "--seed", seed)[0] == 0


def test_python_api_saves_refuse_folders_xmc_did_not_write(tmp_path, model):
    from xmc_core.folders import PathInUseError, atomic_dir, remove_xmc_folder
    from xmc_core.model import load_model

    user = _write(tmp_path / "user" / "thesis.tex", "\\section{}\n").parent
    before = _snapshot(tmp_path)
    m = load_model(model)
    for save in (m.save, m.featurizer.save, m.ranker.save, remove_xmc_folder):
        with pytest.raises(PathInUseError, match="thesis.tex"):
            save(user)
    with pytest.raises(PathInUseError):
        with atomic_dir(user / "thesis.tex"):
            pass
    assert _snapshot(tmp_path) == before
    # an error inside atomic_dir leaves the old folder and no temporary sibling
    m.save(tmp_path / "copy")
    saved = _snapshot(tmp_path / "copy")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "copy") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("crash while writing")
    assert _snapshot(tmp_path / "copy") == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "user"]


def test_artifact_store_claims_only_new_or_empty_folders(tmp_path):
    from dagster import Failure

    from xmc_assets.resources import ArtifactStore
    from xmc_core.folders import PathInUseError, check_replaceable, is_xmc_folder, remove_xmc_folder

    user = _write(tmp_path / "mine" / "a.txt", "a\n").parent
    with pytest.raises(Failure, match="did not write"):
        ArtifactStore(base_dir=str(user)).root()
    assert sorted(p.name for p in user.iterdir()) == ["a.txt"]
    store = ArtifactStore(base_dir=str(tmp_path / "store"))
    folder = store.folder("ds", "tfidf")
    assert is_xmc_folder(folder)  # everything below the root is xmc's ...
    # ... but not the root itself, nor a path that only spells its way through it
    for path in (store.root(), store.root() / ".." / "mine", store.root() / "ds" / ".." / ".." / "mine"):
        with pytest.raises(PathInUseError):
            check_replaceable(path, kind="model")
    os.symlink(user, store.root() / "ds" / "link")
    with pytest.raises(PathInUseError):
        remove_xmc_folder(store.root() / "ds" / "link" / ".")
    assert sorted(p.name for p in user.iterdir()) == ["a.txt"]


# --------------------------------------------------------------------------- one text policy


def test_non_utf8_bytes_are_one_line_errors_wherever_they_come_from(tmp_path, model):
    latin1 = "café crème crude".encode("latin-1")
    # --text: argv bytes that are not UTF-8
    proc = subprocess.run([sys.executable, "-m", "xmc_core.cli", "predict", "--model", str(model), "--text",
                           os.fsdecode(latin1)], capture_output=True, timeout=300)
    msg = _one_line_error(proc.returncode, proc.stderr.decode(), "--text:1: encoding", "0xe9")
    assert "byte 4" in msg
    # stdin, second line
    proc = _xmc("predict", "--model", str(model), stdin=b"crude oil\n" + latin1 + b"\n")
    _one_line_error(proc.returncode, proc.stderr.decode(), "<stdin>:2: encoding", "0xe9")
    # a gzipped test split, line 3
    data = _raw(tmp_path / "d")
    (data / "test_texts.txt").unlink()
    _write(data / "test_texts.txt.gz", gzip.compress(b"oil\nwheat\n" + latin1 + b"\n"))
    proc = _xmc("evaluate", "--model", str(model), "--data", str(data))
    _one_line_error(proc.returncode, proc.stderr.decode(), "test_texts.txt.gz:3: encoding")


def test_strings_that_are_not_unicode_from_the_python_side(capsys, model):
    for argv in (["predict", "--model", str(model), "--text", "oil \ud800"],
                 ["train", "--data", "x", "--model", "y", "--params", '{"tfidf": {"min_df": "\ud800"}}']):
        rc, _, err = _main(capsys, *argv)
        _one_line_error(rc, err, "encoding", "U+D800")


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16LE"), ("utf-32", "UTF-32LE")])
@pytest.mark.parametrize("layout", ["raw-text", "xc-bow"])
def test_utf16_and_utf32_files_are_named_with_their_encoding(tmp_path, capsys, encoding, name, layout):
    if layout == "raw-text":
        data = _raw(tmp_path / "d")
        path = data / "train_texts.txt"
    else:
        path = _write(tmp_path / "d" / "train.txt", "2 3 2\n0 0:1\n1 2:1\n")
        data = path.parent
    path.write_bytes(path.read_bytes().decode().encode(encoding))
    rc, _, err = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m"))
    _one_line_error(rc, err, f"{path}:1: encoding", name, "iconv")


def test_crlf_files_and_stdin_give_the_same_model_and_predictions(tmp_path, capsys):
    lf, crlf = _raw(tmp_path / "lf"), _raw(tmp_path / "crlf", eol="\r\n")
    _write(crlf / "label_map.txt", "crude\r\ngrain\r\ninterest\r\nwheat\r\n")
    _write(lf / "label_map.txt", "crude\ngrain\ninterest\nwheat\n")
    for d in (lf, crlf):
        assert _main(capsys, "train", "--data", str(d), "--model", str(tmp_path / f"m-{d.name}"), "--threads", "1")[0] == 0
    a, b = tmp_path / "m-lf", tmp_path / "m-crlf"
    assert (a / "labels.txt").read_bytes() == (b / "labels.txt").read_bytes() == b"crude\ngrain\ninterest\nwheat\n"
    assert (a / "ranker" / "W0.npz").read_bytes() == (b / "ranker" / "W0.npz").read_bytes()
    outs = [_xmc("predict", "--model", str(m), stdin=b"crude oil" + eol + b"wheat grain" + eol).stdout
            for m, eol in ((a, b"\n"), (b, b"\r\n"))]
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 2


def test_label_names_are_compared_as_people_see_them(tmp_path, capsys):
    nfc, nfd = "café", unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    labels = [nfc, nfd, "crude", nfd, nfc, "crude", "crude", nfc]
    data = _raw(tmp_path / "d", labels=labels, test=False)
    assert _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m"), "--threads", "1")[0] == 0
    assert (tmp_path / "m" / "labels.txt").read_text(encoding="utf-8").split() == ["café", "crude"]
    # a label_map.txt in one form matches labels in the other
    _write(data / "label_map.txt", f"crude\n{nfd}\n")
    assert _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m2"), "--threads", "1")[0] == 0
    # an invisible character makes no second label: an error naming file, line and character
    _write(data / "train_labels.txt", "".join(l + "\n" for l in ["crude", "café\u200b"] + labels[2:]))
    rc, _, err = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m3"))
    _one_line_error(rc, err, f"{data / 'train_labels.txt'}:2: label", "U+200B", "ZERO WIDTH SPACE")
    for bad_file, content in (("label_map.txt", "crude\ncafé\u00ad\n"), ("label_names.tsv", "id\ttitle\ncrude\x07\tCrude\n")):
        _write(data / "train_labels.txt", "".join(l + "\n" for l in labels))
        _write(data / bad_file, content)
        rc, _, err = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m4"))
        _one_line_error(rc, err, f"{data / bad_file}:2: label")
        (data / bad_file).unlink()


def test_python_api_texts_follow_the_same_policy(model):
    from xmc_core.model import load_model
    from xmc_core.textio import DataFormatError

    m = load_model(model)
    nfc, nfd = "café crude oil", unicodedata.normalize("NFD", "café crude oil")
    assert (m.predict([nfc]) != m.predict([nfd])).nnz == 0
    assert (m.featurizer.transform([nfc]) != m.featurizer.transform([nfd])).nnz == 0
    with pytest.raises(DataFormatError, match=r"texts\[1\]: encoding: .*U\+DCE9"):
        m.predict(["oil", "caf\udce9"])


# --------------------------------------------------------------------------- Y validated everywhere


def _pecos(root: Path, Y_trn, *, items: bool = True, tfidf: bool = False, ids: list[str] | None = None) -> Path:
    texts = TEXTS
    _write(root / "X.trn.txt", "".join(t + "\n" for t in texts))
    _write(root / "X.tst.txt", "".join(t + "\n" for t in texts[:3]))
    if ids is not None:
        _write(root / "Y.trn.txt", "".join(i + "\n" for i in ids))
    else:
        buf = io.BytesIO()
        sp.save_npz(buf, sp.csr_matrix(Y_trn))
        _write(root / "Y.trn.npz", buf.getvalue())
    Y_tst = sp.csr_matrix(np.eye(3, 4, dtype=np.float32))
    buf = io.BytesIO()
    sp.save_npz(buf, Y_tst)
    _write(root / "Y.tst.npz", buf.getvalue())
    if items:
        _write(root / "output-items.txt", "crude\ngrain\ninterest\nwheat\n")
    if tfidf:
        rng = np.random.default_rng(0)
        for tag, n in (("trn", len(texts)), ("tst", 3)):
            X = sp.random(n, 6, density=0.5, format="csr", dtype=np.float32, random_state=rng)
            X.data += 0.1
            buf = io.BytesIO()
            sp.save_npz(buf, X)
            _write(root / "tfidf-attnxml" / f"X.{tag}.npz", buf.getvalue())
    return root


def _y(values) -> np.ndarray:
    Y = np.zeros((len(TEXTS), 4), np.float32)
    Y[np.arange(len(TEXTS)), np.arange(len(TEXTS)) % 4] = 1
    for (r, c), v in values.items():
        Y[r, c] = v
    return Y


def test_plus_minus_one_label_matrix_is_refused(tmp_path, capsys):
    Y = np.where(_y({}) > 0, 1.0, -1.0)  # the {-1, +1} matrix of PECOS#87
    data = _pecos(tmp_path / "d", Y)
    rc, _, err = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m"))
    msg = _one_line_error(rc, err, f"{data / 'Y.trn.npz'}: label", "row 1", "value -1")
    assert "label id 1 (column 1 counted from 0)" in msg and not (tmp_path / "m").exists()
    for bad, what in ((np.nan, "value nan"), (-0.5, "value -0.5")):
        data = _pecos(tmp_path / f"d{what}", _y({(3, 2): bad}))
        rc, _, err = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m"))
        _one_line_error(rc, err, "Y.trn.npz: label", "row 4 (line 4 of", "label id 2 (column 2 counted from 0)", what)


def test_python_api_refuses_a_plus_minus_one_label_matrix():
    from xmc_core.model import train_xr_linear

    Y = sp.csr_matrix(np.where(_y({}) > 0, 1.0, -1.0))
    with pytest.raises(ValueError, match=r"Y: row 0, column 1: value -1"):
        train_xr_linear(Y, ["crude", "grain", "interest", "wheat"], texts=TEXTS)
    with pytest.raises(ValueError, match="3 label names for 4 label columns"):
        train_xr_linear(sp.csr_matrix(_y({})), ["crude", "grain", "interest"], texts=TEXTS)


def test_graded_relevance_counts_as_relevant(tmp_path):
    from xmc_core.data import load_dataset

    graded = load_dataset(_pecos(tmp_path / "g", _y({(0, 1): 2.5, (1, 2): 0.2})))
    binary = load_dataset(_pecos(tmp_path / "b", _y({(0, 1): 1, (1, 2): 1})))
    assert (graded.train.Y != binary.train.Y).nnz == 0 and set(graded.train.Y.data) == {1.0}


@pytest.mark.parametrize("ids, line, what", [
    (["0", "1", "4104233000", "2", "0", "1", "2", "3"], 3, "label id 4104233000"),  # database keys, not indices
    (["0", "1", "987001", "2", "0", "1", "2", "3"], 3, "a model would have 987,002 labels"),
    (["0", "1", "2", "99999999999999999999", "0", "1", "2", "3"], 4, "too large"),
    (["0", "1", "2", "3", "-1", "1", "2", "3"], 5, "'-1' is not a non-negative integer"),
    (["0", "1", "2", "3", "1.5", "1", "2", "3"], 5, "'1.5' is not a non-negative integer"),
])
def test_pecos_label_ids_are_checked_against_the_observed_label_count(tmp_path, capsys, ids, line, what):
    data = _pecos(tmp_path / "d", None, items=False, ids=ids)
    t0 = time.perf_counter()
    rc, _, err = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m"))
    _one_line_error(rc, err, f"{data / 'Y.trn.txt'}:{line}: label", what)
    assert time.perf_counter() - t0 < 10  # no model of billions of labels is attempted


def test_dense_ids_without_output_items_keep_unused_labels(tmp_path):
    from xmc_core.data import load_dataset

    ds = load_dataset(_pecos(tmp_path / "d", None, items=False, ids=["0", "2", "5", "2", "0", "5", "2", "9"]),
                      splits=("train",))
    assert ds.n_labels == 10  # ids are column indices: 1, 3, 4, 6, 7, 8 are labels without positives


@pytest.mark.parametrize("header, what", [
    ("4 5 40000000", "declares 40,000,000 labels but the largest label id used is 2"),
    ("4 50000000 3", "declares 50,000,000 features but the largest feature id used is 4"),
    ("4 5 4104233000", "each count must be below 2**31"),
    ("4 5 4611686018427387903", "each count must be below 2**31"),
])
def test_xc_header_sizes_are_checked_against_the_ids_used(tmp_path, capsys, header, what):
    data = tmp_path / "x"
    _write(data / "train.txt", f"{header}\n0,1 0:1 1:1\n1 1:1 2:1\n2 3:1 4:1\n0 0:1\n")
    rc, _, err = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m"))
    _one_line_error(rc, err, f"{data / 'train.txt'}:1: header", what)


def test_a_real_header_with_few_labels_used_loads(tmp_path):
    """5,000 labels, 200 documents: a few hundred labels occur, the largest ids among them."""
    from xmc_core.data import load_dataset
    from xmc_core.synth import SynthParams, write_synth

    ds = load_dataset(write_synth(tmp_path / "s", SynthParams(n_labels=5000, n_train=200, n_test=20)))
    used = np.unique(ds.train.Y.indices).shape[0]
    assert ds.n_labels == 5000 and used < 500


@pytest.mark.parametrize("line, field, what", [
    ("0, 1 0:1 1:1", "label", "no space inside the label list"),
    ("0 ,1 0:1 1:1", "label", "no space inside the label list"),
    ("0 1 0:1 1:1", "label", "separated by ','"),
])
def test_xc_label_list_with_spaces_names_the_problem(tmp_path, capsys, line, field, what):
    data = tmp_path / "x"
    _write(data / "train.txt", f"4 5 3\n{line}\n1 1:1 2:1\n2 3:1 4:1\n0 0:1\n")
    rc, _, err = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m"))
    _one_line_error(rc, err, f"{data / 'train.txt'}:2: {field}", what)


def test_xc_tab_after_labels_and_trailing_blank_line(tmp_path, capsys):
    data = tmp_path / "x"
    _write(data / "train.txt", "4 5 3\n0,1\t0:1 1:1\n1 1:1 2:1\n2\t3:1 4:1\n0 0:1\n")
    assert _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m"))[0] == 0
    _write(data / "train.txt", "4 5 3\n0,1 0:1 1:1\n1 1:1 2:1\n2 3:1 4:1\n0 0:1\n\n")
    rc, _, err = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "m"))
    _one_line_error(rc, err, "train.txt:1: header", "declares 4 rows but the file has 5", "line 6", "trailing blank line")


@pytest.mark.parametrize("params", ['{}', '{"tree": {"max_leaf_size": 2, "nr_splits": 2}}'])
@pytest.mark.parametrize("method", ["xr-linear", "xr-linear-ld"])
def test_labels_without_positives_stay_in_the_label_space_and_rank_last(tmp_path, capsys, method, params):
    data = _raw(tmp_path / "d")
    _write(data / "label_map.txt", "acq\ncrude\ngrain\ninterest\nship\nwheat\nzinc\n")  # no document has acq, ship, zinc
    m = tmp_path / "m"
    assert _main(capsys, "train", "--method", method, "--data", str(data), "--model", str(m), "--threads", "1",
                 "--params", params)[0] == 0
    rc, out, _ = _main(capsys, "predict", "--model", str(m), "--text", "zinc ship acq crude", "--topk", "10",
                       "--beam-size", "10")
    pred = json.loads(out)
    assert rc == 0 and len(pred["labels"]) == 7
    assert pred["labels"][4:] == ["acq", "ship", "zinc"] and len(set(pred["scores"][4:])) == 1
    assert pred["scores"][4] < min(pred["scores"][:4])
    rc, out, _ = _main(capsys, "evaluate", "--model", str(m), "--data", str(data), "--json")
    assert rc == 0 and json.loads(out)["p@1"] == 100.0


# --------------------------------------------------------------------------- the PECOS layout, with tfidf-*


def test_pecos_layout_with_tfidf_folder_trains_on_text_or_matrix_and_says_which(tmp_path, capsys):
    data = _pecos(tmp_path / "d", _y({(0, 1): 1}), tfidf=True)
    rc, out, _ = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "text"), "--threads", "1")
    info = json.loads(out)
    assert rc == 0 and info["features"].startswith("text: TF-IDF fitted on X.trn.txt")
    assert "tfidf-attnxml/X.trn.npz not used" in info["features"]
    rc, out, _ = _main(capsys, "train", "--data", str(data), "--model", str(tmp_path / "mat"), "--features",
                       "matrix", "--threads", "1")
    info = json.loads(out)
    assert rc == 0 and info["features"].startswith("matrix: tfidf-attnxml/X.trn.npz (6 columns")
    assert info["n_features"] == 6
    # evaluate and predict --data feed each model what it was trained on
    for m in ("text", "mat"):
        rc, out, _ = _main(capsys, "evaluate", "--model", str(tmp_path / m), "--data", str(data), "--json")
        assert rc == 0 and json.loads(out)["n_test"] == 3
        rc, out, _ = _main(capsys, "predict", "--model", str(tmp_path / m), "--data", str(data), "--topk", "2")
        assert rc == 0 and len(out.splitlines()) == 3
    rc, _, err = _main(capsys, "predict", "--model", str(tmp_path / "mat"), "--text", "crude oil")
    _one_line_error(rc, err, "--text", "feature vectors")
    # without the folder: text, and --features matrix says what is missing
    data2 = _pecos(tmp_path / "d2", _y({}))
    rc, _, err = _main(capsys, "train", "--data", str(data2), "--model", str(tmp_path / "m2"), "--features", "matrix")
    _one_line_error(rc, err, "--features matrix", str(data2), "tfidf-*/X.trn.npz")


# --------------------------------------------------------------------------- settings validated when parsed


@pytest.mark.parametrize("method, params, what", [
    ("xr-transformer", {"encoder": {"max_length": 1024}}, "encoder.max_length 1024 exceeds the encoder's maximum of 512"),
    ("xr-transformer", {"finetune": {"max_length": 600}}, "finetune.max_length 600 exceeds"),
    ("xlgen", {"max_length": 513}, "max_length 513 exceeds"),
    ("xlgen", {"max_labels": 600}, "decoder positions"),
])
def test_lengths_beyond_the_encoder_positions_fail_before_any_work(tmp_path, capsys, method, params, what):
    require_module("torch")
    data = _raw(tmp_path / "d")
    t0 = time.perf_counter()
    rc, _, err = _main(capsys, "train", "--method", method, "--data", str(data), "--model", str(tmp_path / "m"),
                       "--params", json.dumps(params))
    _one_line_error(rc, err, "--params:", what)
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "m").exists()


def test_encoder_positions_come_from_the_checkpoint_config(tmp_path):
    from xmc_core.encoder import EncoderError, check_lengths, max_positions

    bert = _write(tmp_path / "bert" / "config.json", json.dumps({"model_type": "bert", "max_position_embeddings": 512})).parent
    roberta = _write(tmp_path / "roberta" / "config.json",
                     json.dumps({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1})).parent
    short = _write(tmp_path / "short" / "config.json", json.dumps({"max_position_embeddings": 512})).parent
    _write(short / "tokenizer_config.json", json.dumps({"model_max_length": 256}))
    assert [max_positions(str(p)) for p in (bert, roberta, short)] == [512, 512, 256]
    check_lengths(str(roberta), {"encoder.max_length": 512})
    with pytest.raises(EncoderError, match="encoder.max_length 513 exceeds the encoder's maximum of 512"):
        check_lengths(str(roberta), {"encoder.max_length": 513})


def test_dagster_settings_check_encoder_positions():
    require_module("torch")
    from dagster import Failure

    from xmc_assets.resources import XmcSettings, XTransformerSettings

    with pytest.raises(Failure, match="encoder.max_length 1024 exceeds"):
        XTransformerSettings(params_json='{"encoder": {"max_length": 1024}}').params(XmcSettings())


def test_evaluate_topk_limits_the_ranking(tmp_path, capsys, model):
    data = _raw(tmp_path / "d")
    res = {}
    for k in ("1", "10"):
        rc, out, _ = _main(capsys, "evaluate", "--model", str(model), "--data", str(data), "--json", "--topk", k)
        res[k] = json.loads(out)
    one, ten = res["1"], res["10"]
    assert one["p@1"] == ten["p@1"]
    assert one["p@3"] <= 100 / 3 + 1e-3 < ten["p@3"]
    assert one["r@3"] == one["r@1"] < ten["r@3"]
    rc, _, err = _main(capsys, "evaluate", "--model", str(model), "--data", str(data), "--topk", "0")
    _one_line_error(rc, err, "--topk")


def test_predict_topk_and_beam_are_checked_at_the_python_boundary(model):
    from xmc_core.model import load_model

    m = load_model(model)
    assert m.predict(["crude oil"], topk=50).nnz == 4  # all L labels
    for bad in ({"topk": 0}, {"beam_size": 0}, {"topk": 2.5}, {"topk": True}):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            m.predict(["crude oil"], **bad)


# --------------------------------------------------------------------------- partition keys


def test_dataset_folders_that_cannot_be_partition_keys_are_named_and_skipped(tmp_path, capsys, monkeypatch):
    from dagster import DagsterInstance, build_sensor_context

    from xmc_assets.main import main as job_main
    from xmc_assets.partitions import dataset_folders_sensor
    from xmc_assets.resources import DataRoot

    root = tmp_path / "root"
    names = ["plain", "news,2024", "corpus...v2", "set[1]", "tab\tname", " padded"]
    for name in names:
        _raw(root / name)
    data_root = DataRoot(path=str(root), synthetic_dir=str(tmp_path / "synth"))
    assert data_root.dataset_names() == ["plain"]
    skipped = data_root.scan()[1]
    assert sorted(Path(f).name for f in skipped) == sorted(names[1:])
    assert "separates keys" in skipped[str(root / "news,2024")]
    assert "U+0009" in skipped[str(root / "tab\tname")]
    ctx = build_sensor_context(instance=DagsterInstance.ephemeral(), resources={"data_root": data_root})
    res = dataset_folders_sensor(ctx)
    assert [k for r in res.dynamic_partitions_requests for k in r.partition_keys] == ["plain"]
    # the main job says why, before any work
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    rc = job_main(["--data-root", str(root), "--dataset", "news,2024"])
    err = capsys.readouterr().err
    assert rc == 2 and "xmc: error: dataset" in err and "news,2024" in err and "separates keys" in err
