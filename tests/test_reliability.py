"""Issue 8, bad input at the CLI level: every malformed input is one line
`xmc: error: FILE[:LINE]: FIELD: message` with exit status 2 and no traceback, and nothing that
was already built (an existing --model folder) is touched. Also: empty and label-less documents
are kept, predicted and counted; test labels never seen in training are counted; a 10 MB document
is accepted; the same seed gives the same model and metrics.

The reader-level checks behind these messages (file, line and field of each problem) are in
tests/test_data.py; here they are exercised through `xmc` itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xmc_core.cli import main

TOPICS = {
    "grain": "wheat corn harvest barley silo tonnes crop farmer",
    "oil": "crude barrel opec refinery pipeline petroleum drilling",
    "money": "bank interest rate dollar currency loan deposit",
    "ship": "port vessel cargo tanker harbour freight dock",
    "metal": "copper gold zinc mine ore smelter nickel",
    "tech": "software chip computer network server processor",
}


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    """n short documents, each about one or two topics; labels are the topic names."""
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)
    texts, labels = [], []
    for _ in range(n):
        picked = rng.choice(len(names), size=rng.integers(1, 3), replace=False)
        words = []
        for j in picked:
            words += rng.choice(TOPICS[names[j]].split(), size=6).tolist()
        words += rng.choice("the of and a to in market report said".split(), size=4).tolist()
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(" ".join(names[j] for j in picked))
    return texts, labels


def _raw_dataset(root: Path, train=None, test=None, *, label_map: list[str] | None = None, seed: int = 0) -> Path:
    """A raw-text dataset folder; train/test are (texts, labels) pairs (default: generated)."""
    train = train or _corpus(150, seed)
    test = test or _corpus(40, seed + 1)
    for split, (texts, labels) in (("train", train), ("test", test)):
        _write(root / f"{split}_texts.txt", "".join(t + "\n" for t in texts))
        _write(root / f"{split}_labels.txt", "".join(l + "\n" for l in labels))
    if label_map is not None:
        _write(root / "label_map.txt", "".join(n + "\n" for n in label_map))
    return root


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under folder (what "byte-identical" compares)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _xmc(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xmc_core.cli", *args], input=stdin,
                          capture_output=True, timeout=120)


def _assert_one_line_error(proc: subprocess.CompletedProcess, prefix: str | None = None) -> str:
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("xmc: error: ")
    if prefix is not None:
        assert err.startswith(f"xmc: error: {prefix}"), err
    assert proc.stdout == b""
    return err.strip()


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    """A small raw-text model trained through the CLI (shared, never modified by the tests)."""
    base = tmp_path_factory.mktemp("text_model")
    data = _raw_dataset(base / "data")
    model = base / "model"
    assert main(["train", "--data", str(data), "--model", str(model)]) == 0
    return model


@pytest.fixture(scope="module")
def bow_model(tmp_path_factory) -> Path:
    """A small bag-of-words model (no text featurizer)."""
    from xmc_core.synth import SynthParams, write_synth

    base = tmp_path_factory.mktemp("bow_model")
    data = write_synth(base / "synth", SynthParams(n_labels=30, n_train=200, n_test=50, n_features=300))
    model = base / "model"
    assert main(["train", "--data", str(data), "--model", str(model)]) == 0
    return model


# --------------------------------------------------------------------------- bad training data


def _bad(root: Path, case: str) -> tuple[Path, int | None, str]:
    """Write the dataset of one bad-input case; returns (file, line or None, field) the error names."""
    texts, labels = _corpus(6, 0)
    if case == "mismatched-line-counts":
        _raw_dataset(root, (texts, labels + ["oil"]))
        return root / "train_labels.txt", 7, "lines"
    if case == "non-utf8":
        _raw_dataset(root, (texts, labels))
        _write(root / "train_texts.txt", ("\n".join(texts[:3]) + "\nbad \xff byte\n").encode("latin-1"))
        _write(root / "train_labels.txt", "\n".join(labels[:4]) + "\n")
        return root / "train_texts.txt", 4, "encoding"
    if case == "unknown-label-name":
        _raw_dataset(root, (texts, labels[:5] + ["no-such-label"]), label_map=sorted(TOPICS))
        return root / "train_labels.txt", 6, "label"
    if case == "label-id-out-of-range-xc":
        _write(root / "train.txt", "3 4 3\n0 0:1\n1,5 1:1\n2 2:1\n")
        return root / "train.txt", 3, "label"
    if case == "label-id-out-of-range-pecos":
        _write(root / "X.trn.txt", "red apple\ngreen pear\n")
        _write(root / "Y.trn.txt", "0\n1,7\n")
        _write(root / "output-items.txt", "fruit\nred\ngreen\n")
        return root / "Y.trn.txt", 2, "label"
    if case == "nan-feature-value":
        _write(root / "train.txt", "2 4 3\n0 0:nan\n1 1:1\n")
        return root / "train.txt", 2, "value"
    if case == "negative-feature-value":
        _write(root / "train.txt", "2 4 3\n0 0:1\n1 1:-0.5 2:1\n")
        return root / "train.txt", 3, "value"
    if case == "empty-file":
        _raw_dataset(root, (texts, labels))
        _write(root / "train_texts.txt", "")
        return root / "train_texts.txt", 1, "file"
    if case == "empty-dataset":
        _write(root / "train.txt", "0 4 3\n")
        return root / "train.txt", None, "documents"
    if case == "no-labels-at-all":
        _raw_dataset(root, (texts, [""] * len(texts)))
        return root / "train_labels.txt", None, "label"
    raise AssertionError(case)


BAD_CASES = ["mismatched-line-counts", "non-utf8", "unknown-label-name", "label-id-out-of-range-xc",
             "label-id-out-of-range-pecos", "nan-feature-value", "negative-feature-value", "empty-file",
             "empty-dataset", "no-labels-at-all"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_training_data_is_one_line_and_leaves_existing_model_untouched(tmp_path, text_model, case):
    path, line, field = _bad(tmp_path / "data", case)
    model = tmp_path / "model"
    shutil.copytree(text_model, model)
    before = _snapshot(model)

    proc = _xmc("train", "--data", str(tmp_path / "data"), "--model", str(model))

    where = str(path) if line is None else f"{path}:{line}"
    _assert_one_line_error(proc, f"{where}: {field}: ")
    assert _snapshot(model) == before  # the existing model folder is byte-identical
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"]  # no temporary left behind


def test_untrainable_data_is_one_line_error(tmp_path, text_model):
    """Well-formed but unlearnable data (no term in min_df documents) fails cleanly too."""
    _raw_dataset(tmp_path / "data", (["alpha beta", "gamma delta"], ["x", "y"]))
    model = tmp_path / "model"
    shutil.copytree(text_model, model)
    before = _snapshot(model)
    err = _assert_one_line_error(_xmc("train", "--data", str(tmp_path / "data"), "--model", str(model)))
    assert "min_df" in err and str(tmp_path / "data") in err
    assert _snapshot(model) == before


# --------------------------------------------------------------------------- bad models / options


def test_corrupt_or_mismatched_model_is_one_line_error(tmp_path, capsys, text_model, bow_model):
    def run(*args) -> str:
        capsys.readouterr()
        assert main(list(args)) == 2
        out = capsys.readouterr()
        assert out.out == "" and out.err.count("\n") == 1 and out.err.startswith("xmc: error: ")
        return out.err

    bad_json = tmp_path / "bad_json"
    shutil.copytree(text_model, bad_json)
    (bad_json / "params.json").write_text("{truncated")
    assert "params.json: unreadable model metadata" in run("predict", "--model", str(bad_json), "--text", "oil")

    truncated = tmp_path / "truncated"
    shutil.copytree(text_model, truncated)
    w0 = truncated / "ranker" / "W0.npz"
    w0.write_bytes(w0.read_bytes()[:100])
    assert "incomplete or corrupt model folder" in run("predict", "--model", str(truncated), "--text", "oil")

    missing = tmp_path / "missing"
    shutil.copytree(text_model, missing)
    (missing / "labels.txt").unlink()
    assert "incomplete or corrupt model folder" in run("predict", "--model", str(missing), "--text", "oil")

    assert "nope: no such model folder" in run("predict", "--model", str(tmp_path / "nope"), "--text", "oil")
    (tmp_path / "empty").mkdir()
    assert "empty: not a model folder (no params.json)" in run("predict", "--model", str(tmp_path / "empty"),
                                                               "--text", "oil")
    assert "no text featurizer" in run("predict", "--model", str(bow_model), "--text", "oil")
    assert "--topk: must be >= 1" in run("predict", "--model", str(text_model), "--text", "oil", "--topk", "0")
    assert "--max-rows: must be >= 1" in run("train", "--data", str(tmp_path), "--model", str(tmp_path / "m"),
                                             "--max-rows", "0")
    (tmp_path / "a-file").write_text("x")
    data = _raw_dataset(tmp_path / "data")
    assert "a-file" in run("train", "--data", str(data), "--model", str(tmp_path / "a-file" / "model"))


def test_non_utf8_stdin_is_one_line_error(text_model):
    proc = _xmc("predict", "--model", str(text_model), stdin=b"oil barrel\ncrude \xfe\n")
    _assert_one_line_error(proc, "<stdin>:2: encoding: ")


# --------------------------------------------------------------------------- odd but valid input


def test_empty_and_unlabelled_documents_are_kept_predicted_and_counted(tmp_path, capsys):
    train_texts, train_labels = _corpus(150, 3)
    train_texts[:3] = ["", "   ", "crude barrel opec"]
    train_labels[:3] = ["oil", "", ""]  # an empty document with a label; two without labels
    test_texts, test_labels = _corpus(20, 4)
    test_texts[:2] = ["", "copper gold mine"]
    test_labels[:2] = ["metal", ""]
    test_labels[2] = "tech tech tech"  # duplicated labels collapse
    data = _raw_dataset(tmp_path / "data", (train_texts, train_labels), (test_texts, test_labels))
    model = tmp_path / "model"

    assert main(["train", "--data", str(data), "--model", str(model)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["n_train"] == 150

    assert main(["predict", "--model", str(model), "--data", str(data), "--topk", "3"]) == 0
    preds = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [p["doc"] for p in preds] == list(range(20))
    assert all(len(p["labels"]) == 3 for p in preds)  # the empty document is predicted too

    assert main(["evaluate", "--model", str(model), "--data", str(data), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n_test"] == 20 and ev["unseen_test_labels"] == 0
    # The printed metrics are those of the rankings above, scored here by hand against the labels
    # written to the file; the label-less test document stays in the denominator (20, not 19) and
    # the empty document's label counts like any other.
    truth = [set(labels.split()) for labels in test_labels]
    assert sum(not y for y in truth) == 1
    ranked = [p["labels"] for p in preds]
    for k in (1, 3):
        expected_p = 100 * sum(len(set(r[:k]) & y) for r, y in zip(ranked, truth)) / (k * 20)
        expected_r = 100 * sum(len(set(r[:k]) & y) / len(y) for r, y in zip(ranked, truth) if y) / 20
        assert (ev[f"p@{k}"], ev[f"r@{k}"]) == (pytest.approx(expected_p, abs=0.01), pytest.approx(expected_r, abs=0.01)), k
    assert ev["r@10"] <= 100 * 19 / 20 + 1e-6


def test_unseen_test_labels_are_counted_and_reported(tmp_path, capsys):
    train = _corpus(150, 5)
    test_texts, test_labels = _corpus(20, 6)
    data_seen = _raw_dataset(tmp_path / "seen", train, (test_texts, test_labels))
    unseen = list(test_labels)
    unseen[0] += " brand-new-1"
    unseen[1] = "brand-new-2"  # this document's only label was never seen in training
    unseen[2] += " brand-new-1"
    data_unseen = _raw_dataset(tmp_path / "unseen", train, (test_texts, unseen))
    model = tmp_path / "model"
    assert main(["train", "--data", str(data_seen), "--model", str(model)]) == 0
    capsys.readouterr()

    evals = {}
    for name, data in (("seen", data_seen), ("unseen", data_unseen)):
        assert main(["evaluate", "--model", str(model), "--data", str(data), "--json"]) == 0
        evals[name] = json.loads(capsys.readouterr().out)
    assert evals["seen"]["unseen_test_labels"] == 0
    assert evals["unseen"]["unseen_test_labels"] == 2
    assert evals["unseen"]["n_test"] == evals["seen"]["n_test"] == 20
    # the unseen labels are in |y|: recall drops, precision of the same predictions does not rise
    assert evals["unseen"]["r@10"] < evals["seen"]["r@10"]
    assert evals["unseen"]["p@1"] <= evals["seen"]["p@1"]

    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(data_unseen)]) == 0  # the table view
    assert "unseen_test_labels  2" in capsys.readouterr().out


def test_ten_megabyte_document_is_accepted_and_featurized(tmp_path, capsys, monkeypatch):
    """Decision: a 10 MB line is one (long) document: it is read, featurized, trained on,
    evaluated and predicted like any other."""
    rng = np.random.default_rng(7)
    words = " ".join(TOPICS.values()).split()
    big = " ".join(rng.choice(words, size=1_100_000).tolist())
    while len(big) < 10 * 2**20:
        big += " " + big[: 10 * 2**20 - len(big)]
    assert len(big.encode()) >= 10 * 2**20 and "\n" not in big
    train_texts, train_labels = _corpus(150, 8)
    train_texts[10], train_labels[10] = big, "grain oil"
    test_texts, test_labels = _corpus(10, 9)
    test_texts[3] = big
    data = _raw_dataset(tmp_path / "data", (train_texts, train_labels), (test_texts, test_labels))
    model = tmp_path / "model"

    assert main(["train", "--data", str(data), "--model", str(model)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_train"] == 150
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_test"] == 10

    stdin = big + "\n\nzzzqx unseenword qqq\n\t\u2028\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["predict", "--model", str(model), "--topk", "4"]) == 0
    preds = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(preds) == 4 and all(len(p["labels"]) == 4 for p in preds)


def test_predict_odd_text_through_the_cli(text_model):
    """Unseen words, empty text and long text via --text and stdin in a real process."""
    for text in ("zzzqx unseenword", "", "  \t ", "oil " * 20_000):
        proc = _xmc("predict", "--model", str(text_model), "--text", text, "--topk", "3")
        assert proc.returncode == 0, proc.stderr
        [line] = proc.stdout.decode().splitlines()
        assert len(json.loads(line)["labels"]) == 3
    proc = _xmc("predict", "--model", str(text_model), "--topk", "2",
                stdin=("\n" + "crude barrel " * 400_000 + "\r\nqqq\n").encode())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 3 and all(len(json.loads(l)["labels"]) == 2 for l in lines)


# --------------------------------------------------------------------------- determinism


def _model_arrays(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.suffix == ".npz":
            with np.load(p) as z:
                out.update({f"{rel}:{k}": z[k] for k in z.files})
        elif p.suffix == ".npy":
            out[rel] = np.load(p)
    return out


@pytest.mark.parametrize("kind", ["raw-text", "bag-of-words"])
def test_same_seed_gives_same_model_and_metrics(tmp_path, capsys, kind):
    if kind == "raw-text":
        data = _raw_dataset(tmp_path / "data", seed=11)
    else:
        from xmc_core.synth import SynthParams, write_synth

        p = SynthParams(n_labels=60, n_train=400, n_test=100, n_features=400, seed=3)
        data = write_synth(tmp_path / "data", p)
        again = write_synth(tmp_path / "data-again", p)
        data_files = {k: v for k, v in _snapshot(data).items() if k.endswith(".gz")}
        assert len(data_files) == 2  # train and test; PROVENANCE.md records when and where
        assert data_files == {k: v for k, v in _snapshot(again).items() if k.endswith(".gz")}
    params = json.dumps({"tree": {"seed": 5, "max_leaf_size": 4, "nr_splits": 4}})
    evals, arrays = [], []
    for run in ("a", "b"):
        model = tmp_path / f"model-{run}"
        assert main(["train", "--data", str(data), "--model", str(model), "--params", params,
                     "--threads", "2"]) == 0
        assert main(["evaluate", "--model", str(model), "--data", str(data), "--json"]) == 0
        ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        ev.pop("predict_s")
        ev.pop("model")
        evals.append(ev)
        arrays.append(_model_arrays(model))
        for name in ("labels.txt", "featurizer/vocab.txt"):
            if (model / name).exists():
                assert (model / name).read_bytes() == (tmp_path / "model-a" / name).read_bytes()
    assert evals[0] == evals[1]
    assert arrays[0].keys() == arrays[1].keys()
    assert any(k.startswith("ranker/W") for k in arrays[0])
    for key, a in arrays[0].items():
        np.testing.assert_array_equal(a, arrays[1][key], err_msg=key)
