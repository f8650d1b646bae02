"""`xmc serve`: the HTTP API answers what `predict` answers, refuses bad requests with a one-line
4xx, and a reload never serves a folder that does not load."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import require_module

require_module("httpx")  # starlette's TestClient
from starlette.testclient import TestClient  # noqa: E402

from xmc_core.cli import main  # noqa: E402
from xmc_core.model import load_model  # noqa: E402
from xmc_core.serve import ModelHolder, ServeParams, build_app  # noqa: E402

TEXTS = ["wheat and grain exports to the soviet union", "opec agreed to cut crude oil output", "bank rates"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from conftest import shared_dataset

    reuters = shared_dataset("reuters-21578")
    root = tmp_path_factory.mktemp("serve")
    text_model, calibrated = root / "text", root / "calibrated"
    common = ["--data", str(reuters), "--max-rows", "1200", "--threads", "2", "--quiet"]
    assert main(["train", "--model", str(text_model), *common]) == 0
    assert main(["train", "--model", str(calibrated), "--calibrate", *common]) == 0
    data, bow = root / "synth", root / "bow"
    assert main(["synth", str(data), "--labels", "30", "--train", "300", "--test", "20", "--quiet"]) == 0
    assert main(["train", "--data", str(data), "--model", str(bow), "--threads", "2", "--quiet"]) == 0
    return {"text": text_model, "calibrated": calibrated, "bow": bow, "bow_data": data, "reuters": reuters,
            "common": common}


def _client(path, **params):
    return TestClient(build_app(ModelHolder(path), ServeParams(**params)))


def test_predict_answers_what_the_model_predicts(models):
    client = _client(models["text"])
    r = client.post("/predict", json={"texts": TEXTS, "topk": 4})
    assert r.status_code == 200
    expected = load_model(models["text"]).predict_labels(TEXTS, topk=4)
    results = r.json()["results"]
    assert [res["labels"] for res in results] == [[n for n, _ in labels] for labels in expected]
    for res, labels in zip(results, expected):
        # the model's float32 scores, exactly: written in the fewest digits that read back as them
        assert [np.float32(v) for v in res["scores"]] == [np.float32(s) for _, s in labels] and "set" not in res
    assert len(client.post("/predict", json={"texts": TEXTS[:1]}).json()["results"][0]["labels"]) == 5  # default topk


def _same_csr(a, b) -> bool:
    return (a.indptr.tolist() == b.indptr.tolist() and a.indices.tolist() == b.indices.tolist()
            and a.data.tobytes() == b.data.tobytes())


def test_one_document_at_a_time_equals_the_batch_for_every_model_kind(models, tmp_path):
    """A request of one document goes through the one-row beam (`XLinearModel._beam_rows`), a
    batch of 12 through the batch beam: the same labels and the same float32 scores, bit for
    bit, for a plain model, a disentangled one whose copies are merged by their mean, a 3-tree
    ensemble, and a bag-of-words model (XR-Transformer: tests/test_xtransformer.py)."""
    from xmc_core.data import load_dataset
    from xmc_core.xlinear import FEW_ROWS

    ld, ens = tmp_path / "ld", tmp_path / "ensemble"
    assert main(["train", "--model", str(ld), "--method", "xr-linear-ld", "--params",
                 '{"disentangle": {"merge": "mean"}}', *models["common"]]) == 0
    assert main(["train", "--model", str(ens), "--preset", "accurate", *models["common"]]) == 0
    texts = [f"{t} {w}" for t in TEXTS for w in ("prices", "report", "talks", "in march")]
    assert len(texts) > FEW_ROWS
    for path in (models["text"], ld, ens):
        model = load_model(path)
        batch = model.predict(texts, topk=6)
        for i, text in enumerate(texts):
            assert _same_csr(model.predict([text], topk=6), batch[i]), (path.name, i)
    bow = load_model(models["bow"])
    X = load_dataset(models["bow_data"], splits=("train", "test")).test.X
    batch = bow.predict(X, topk=6)
    assert X.shape[0] > FEW_ROWS
    for i in range(X.shape[0]):
        assert _same_csr(bow.predict(X[i], topk=6), batch[i]), ("bow", i)
    # the service's row path (no scipy matrix): the matrix path's labels and float32 scores, for a
    # bag-of-words model (rows normalized here), a text model given TF-IDF rows (taken as they
    # are) and copies merged by their mean (which goes the matrix way)
    for model, M in ((bow, X), (load_model(models["text"]), load_model(models["text"]).featurize(texts)),
                     (load_model(ld), load_model(ld).featurize(texts))):
        want = model.predict_labels(M, topk=6)
        for i in range(M.shape[0]):
            a, b = M.indptr[i], M.indptr[i + 1]
            got = model.predict_row_labels(M.indices[a:b], M.data[a:b], topk=6)
            assert [n for n, _ in got] == [n for n, _ in want[i]], i
            assert np.array([s for _, s in got], np.float32).tobytes() == np.array([s for _, s in want[i]], np.float32).tobytes()


def test_calibrated_models_answer_label_sets(models):
    client = _client(models["calibrated"])
    res = client.post("/predict", json={"texts": TEXTS}).json()["results"]
    sets = load_model(models["calibrated"]).named_sets(TEXTS, policy="micro")
    for r, labels in zip(res, sets):
        assert r["set"]["labels"] == [n for n, _ in labels]
        assert all(0.0 <= p <= 1.0 for p in r["set"]["probabilities"])


def test_bag_of_words_rows(models):
    from xmc_core.data import load_dataset

    client = _client(models["bow"])
    ds = load_dataset(models["bow_data"], splits=("train", "test"))
    X = ds.test.X[:5].tocsr()
    rows = [{str(j): float(v) for j, v in zip(X[i].indices, X[i].data)} for i in range(5)]
    r = client.post("/predict", json={"rows": rows, "topk": 3})
    assert r.status_code == 200
    expected = load_model(models["bow"]).predict_labels(X, topk=3)
    assert [res["labels"] for res in r.json()["results"]] == [[n for n, _ in labels] for labels in expected]
    for res, labels in zip(r.json()["results"], expected):  # the row path's scores are the matrix path's
        assert [np.float32(v) for v in res["scores"]] == [np.float32(s) for _, s in labels]
    # a feature id twice ("7" and "07") is one feature, its values summed, as in a matrix
    twice = client.post("/predict", json={"rows": [{"7": 0.25, "07": 0.5, "9": 1.0}], "topk": 3}).json()
    once = client.post("/predict", json={"rows": [{"7": 0.75, "9": 1.0}], "topk": 3}).json()
    assert twice == once
    backwards = [{k: row[k] for k in reversed(list(row))} for row in rows]  # ids in any order
    assert client.post("/predict", json={"rows": backwards, "topk": 3}).json() == r.json()
    bad = client.post("/predict", json={"texts": ["a text"]})
    assert bad.status_code == 400 and "send rows" in bad.json()["error"]


@pytest.mark.parametrize("body, status, words", [
    (b"", 400, "empty"),
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"texts": ["a"], "lang": "en"}', 400, "lang: unknown field"),
    (b'{"texts": ["a"], "rows": [{"1": 1}]}', 400, "exactly one"),
    (b"{}", 400, "exactly one"),
    (b'{"texts": "a text"}', 400, "non-empty list"),
    (b'{"texts": []}', 400, "non-empty list"),
    (b'{"texts": ["a", 3]}', 400, "texts[1]: a string"),
    (b'{"texts": ["a"], "topk": 0}', 400, "topk: between 1"),
    (b'{"texts": ["a"], "topk": "5"}', 400, "topk: an integer"),
    (b'{"texts": ["a"], "topk": true}', 400, "topk: an integer"),
    (b'{"rows": [{"x": 1}]}', 400, "not an integer"),
    (b'{"rows": [{"99999999": 1}]}', 400, "out of range"),
    (b'{"rows": [{"3": "high"}]}', 400, "finite number"),
    (b'{"rows": [[1, 2]]}', 400, "rows[0]: an object"),
    (b'{"texts": ["\\ud800"]}', 400, "surrogate"),  # a lone UTF-16 half: no text
])
def test_malformed_requests_get_a_one_line_4xx(models, body, status, words):
    client = _client(models["text"])
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert words in message and "\n" not in message


def test_limits_answer_413_and_routes_405_404(models):
    client = _client(models["text"], max_body_bytes=2000, max_docs=4)
    assert client.post("/predict", json={"texts": ["x" * 3000]}).status_code == 413
    assert client.post("/predict", json={"texts": ["a"] * 5}).status_code == 413
    assert client.post("/predict", json={"texts": ["a"] * 4}).status_code == 200
    client = _client(models["text"], max_text_chars=10)
    assert "at most 10" in client.post("/predict", json={"texts": ["x" * 11]}).json()["error"]
    assert client.get("/predict").status_code == 405
    assert client.get("/nothing").status_code == 404


def test_health_model_card_and_reload(models, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(models["text"], folder)
    holder = ModelHolder(folder)
    client = TestClient(build_app(holder))
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["method"] == "xr-linear" and health["n_labels"] == 90
    card = client.get("/model").json()
    assert card["model_sha"] == health["model_sha"] and card["n_labels"] == 90
    before = client.post("/predict", json={"texts": TEXTS}).json()

    # another model trained into the folder (atomically, as xmc train does): reload swaps it in
    assert main(["train", "--model", str(folder), "--data", str(models["reuters"]), "--max-rows", "600",
                 "--threads", "2", "--quiet"]) == 0
    assert client.post("/predict", json={"texts": TEXTS}).json() == before  # still the loaded model
    r = client.post("/reload")
    assert r.status_code == 200 and r.json()["model_sha"] != health["model_sha"]
    assert client.get("/health").json()["model_sha"] == r.json()["model_sha"]
    served = client.post("/predict", json={"texts": TEXTS}).json()
    assert served["results"][0]["labels"] == [n for n, _ in load_model(folder).predict_labels(TEXTS[:1])[0]]

    # a folder that does not load: 409, and the model that was serving goes on serving
    sha = r.json()["model_sha"]
    (folder / "ranker" / "W0.npz").write_bytes(b"not a matrix")
    r = client.post("/reload")
    assert r.status_code == 409 and "still serving" in r.json()["error"] and sha in r.json()["error"]
    assert client.post("/predict", json={"texts": TEXTS}).json() == served
    assert client.get("/health").json()["model_sha"] == sha


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_xmc_serve_runs_uvicorn_on_loopback(models, tmp_path):
    port = _free_port()
    xmc = Path(sys.executable).with_name("xmc")
    proc = subprocess.Popen([str(xmc), "serve", "--model", str(models["text"]), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["url"] == f"http://127.0.0.1:{port}" and ready["method"] == "xr-linear"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    assert json.loads(resp.read())["status"] == "ok"
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.2)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=json.dumps({"texts": TEXTS}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert len(json.loads(resp.read())["results"]) == 3
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends; an impatient user sends it twice
        time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
    err = proc.stderr.read()
    assert proc.returncode == 0 and "Traceback" not in err, err  # a clean stop, no traceback


def test_a_folder_that_is_not_a_model_fails_before_listening(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path), "--port", str(_free_port())]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("xmc: error:") and "params.json" in err
