"""XLGen on a tiny synthetic text set (1–2 training steps per variant): constrained decoding,
persistence, clusters, the PU setting, `load_model` dispatch and the CLI. Runs in well under a
minute on 2 CPU cores; needs torch/transformers and the local MiniLM package, nothing from a hub."""

import json

import numpy as np
import pytest
from conftest import require_module
import scipy.sparse as smat

require_module("torch")
require_module("transformers")

from xmc_core.cli import main  # noqa: E402
from xmc_core.metrics import set_metrics, tail_bucket_metrics, topk_sets  # noqa: E402
from xmc_core.model import ModelFormatError, load_model  # noqa: E402
from xmc_core.xlgen import (  # noqa: E402
    EOS,
    N_SPECIAL,
    SEP,
    XLGenModel,
    XLGenParams,
    _make_vocab,
    build_targets,
    evaluate_xlgen,
    frequency_rank,
    label_clusters,
    pu_drop_labels,
    train_xlgen,
)

# the label names' words also appear in the texts, so even two steps give the model a hint
LABELS = ["wheat", "crude", "gold", "ship", "coffee", "sugar", "money-fx", "rubber", "tin", "zinc"]
TINY = dict(steps=2, batch_size=8, max_length=32, n_clusters=3, beam_size=3, max_labels=4,
            eval_batch_size=16, cluster_docs_per_label=4, seed=0)


def _synthetic(n: int, seed: int):
    """n texts with 1–3 labels each; label frequencies fall off (the last labels are rare)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(LABELS) + 1) ** 1.5
    p /= p.sum()
    filler = "the of report said market prices week traders year".split()
    texts, rows = [], []
    for _ in range(n):
        labels = sorted(set(rng.choice(len(LABELS), size=rng.integers(1, 4), p=p).tolist()))
        words = [LABELS[l].replace("-", " ") for l in labels for _ in range(3)] + list(rng.choice(filler, 8))
        rng.shuffle(words)
        texts.append(" ".join(words))
        rows.append(labels)
    Y = smat.lil_matrix((n, len(LABELS)), dtype=np.float32)
    for i, labels in enumerate(rows):
        Y[i, labels] = 1.0
    return texts, Y.tocsr()


def _counted_set_f1(sets, Y):
    """(micro F1, macro F1 over labels present in Y), in percent, of label-id lists against Y,
    counted pair by pair."""
    Yd = Y.toarray() > 0
    tp = fp = fn = 0
    per = {}
    for i, labels in enumerate(sets):
        pred = set(int(l) for l in labels)
        true = set(np.flatnonzero(Yd[i]).tolist())
        tp, fp, fn = tp + len(pred & true), fp + len(pred - true), fn + len(true - pred)
        for l in pred | true:
            a, b, c = per.get(l, (0, 0, 0))
            per[l] = (a + (l in pred and l in true), b + (l in pred), c + (l in true))
    micro = 100.0 * 2 * tp / (2 * tp + fp + fn)
    macro = 100.0 * np.mean([2 * a / (b + c) for l, (a, b, c) in per.items() if c > 0])
    return micro, macro


def _counted_p1(P, Y):
    """P@1 in percent: the share of rows whose highest-scored label in P is in Y."""
    P = smat.csr_matrix(P)
    Yd = Y.toarray() > 0
    hits = [Yd[i, P.indices[P.indptr[i] + np.argmax(P.data[P.indptr[i]:P.indptr[i + 1]])]]
            if P.indptr[i + 1] > P.indptr[i] else False for i in range(P.shape[0])]
    return 100.0 * float(np.mean(hits))


@pytest.fixture(scope="module")
def data():
    train_texts, Ytr = _synthetic(48, 0)
    test_texts, Yte = _synthetic(12, 1)
    return train_texts, Ytr, test_texts, Yte


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and oversubscribed threads stall on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(data):
    texts, Y, _, _ = data
    # base trains in the PU setting (half of each document's labels dropped), the others on all labels
    return {v: train_xlgen(texts, Y, LABELS, XLGenParams(variant=v, pu_drop=0.5 if v == "base" else 0.0, **TINY))
            for v in ("base", "bcl", "mcg")}


# --------------------------------------------------------------------------- pure parts


def test_params_round_trip_and_errors():
    p = XLGenParams(variant="mcg", n_clusters=7, pu_drop=0.5)
    assert XLGenParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert XLGenParams().n_clusters == 30 and XLGenParams().pu_drop == 0.0
    with pytest.raises(ValueError, match="unknown key"):
        XLGenParams.from_dict({"variant": "base", "beams": 3})
    with pytest.raises(ValueError, match="variant"):
        XLGenParams(variant="t5")
    with pytest.raises(ValueError, match="pu_drop"):
        XLGenParams(pu_drop=1.0)


def test_pu_drop_is_seeded_and_drops_half():
    rng = np.random.default_rng(3)
    n, L = 4000, 50
    rows = np.repeat(np.arange(n), rng.integers(1, 5, size=n))
    Y = smat.csr_matrix((np.ones(len(rows), np.float32), (rows, rng.integers(0, L, size=len(rows)))), shape=(n, L))
    Y.data[:] = 1.0
    a, b, c = pu_drop_labels(Y, 0.5, seed=1), pu_drop_labels(Y, 0.5, seed=1), pu_drop_labels(Y, 0.5, seed=2)
    assert (a != b).nnz == 0 and (a != c).nnz > 0
    assert abs(1.0 - a.nnz / Y.nnz - 0.5) < 0.03
    assert (a - a.multiply(Y)).nnz == 0  # only drops, never adds
    assert (pu_drop_labels(Y, 0.0) != Y).nnz == 0
    # one-label documents lose their label half of the time (expected share, not floor(|y|/2))
    single = smat.identity(2000, dtype=np.float32, format="csr")
    assert abs(pu_drop_labels(single, 0.5, seed=0).nnz / 2000 - 0.5) < 0.05


def test_label_clusters_shapes_and_fallback():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 16)).astype(np.float32)
    Y = smat.random(40, 12, density=0.15, format="csr", random_state=0, dtype=np.float32)
    Y = smat.csr_matrix(Y[:, :11])  # keep column 11 empty by construction below
    Y = smat.hstack([Y, smat.csr_matrix((40, 1), dtype=np.float32)]).tocsr()
    fallback = rng.standard_normal((12, 16)).astype(np.float32)
    assign, centroids, Z = label_clusters(emb, Y, 4, seed=0, fallback=fallback)
    assert assign.shape == (12,) and assign.dtype == np.int64 and set(assign) <= set(range(4))
    assert centroids.shape == (4, 16) and Z.shape == (12, 16)
    np.testing.assert_allclose(np.linalg.norm(Z[11]), 1.0, rtol=1e-5)  # the empty label got its fallback
    again, _, _ = label_clusters(emb, Y, 4, seed=0, fallback=fallback)
    assert (again == assign).all()
    assert label_clusters(emb, Y, 50)[1].shape[0] == 12  # K clamped to L
    # a label's embedding is the normalized mean of its documents' rows (each positive counts once,
    # whatever Y stores: smat.random's values are not 1)
    Yd = Y.toarray() > 0
    for l in range(11):
        m = emb[Yd[:, l]].mean(axis=0)
        np.testing.assert_allclose(Z[l], m / np.linalg.norm(m), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(Z[11], fallback[11] / np.linalg.norm(fallback[11]), rtol=1e-5, atol=1e-6)
    # every label sits in the cluster of its nearest centroid (spherical: largest cosine)
    assert (assign == np.argmax(Z @ centroids.T, axis=1)).all()
    # three planted groups of labels, their documents around three orthogonal directions: K = 3
    # recovers the groups exactly
    docs = np.repeat(np.eye(16, dtype=np.float32)[:3], 10, axis=0) + 0.05 * rng.standard_normal((30, 16)).astype(np.float32)
    Yg = np.zeros((30, 9), np.float32)
    for l in range(9):
        Yg[(l // 3) * 10 + rng.choice(10, 4, replace=False), l] = 1
    planted, _, _ = label_clusters(docs, smat.csr_matrix(Yg), 3, seed=0)
    assert sorted(sorted(np.flatnonzero(planted == c).tolist()) for c in range(3)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_targets_follow_frequency_rank():
    counts = np.array([5, 9, 1, 9])
    assert frequency_rank(counts).tolist() == [2, 0, 3, 1]
    # clusters: 0 = labels {0, 2} (6 documents), 1 = labels {1, 3} (18): cluster 1 ranks first
    vocab = _make_vocab(counts, np.array([0, 1, 0, 1]))
    assert vocab.cluster_rank.tolist() == [1, 0]
    # tokens: 4 specials, then the 2 clusters by rank (4, 5), then the 4 labels by rank (6..9)
    assert N_SPECIAL == 4 and vocab.label_offset == 6 and vocab.size == 10
    Y = smat.csr_matrix(np.array([[1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 2]], np.float32))
    # doc 0: labels 0, 1, 2 = ranks 2, 0, 3; doc 1: label 2 (rank 3); doc 2: label 3 (rank 1)
    assert build_targets(Y, vocab, "base") == [[6, 8, 9, EOS], [9, EOS], [7, EOS]]
    assert build_targets(Y, vocab, "bcl") == [[6, 8, 9, EOS], [9, EOS], [7, EOS]]
    # mcg: the documents' cluster tokens by rank, SEP, then the labels (cluster 0 = token 5, 1 = 4)
    assert build_targets(Y, vocab, "mcg") == [[4, 5, SEP, 6, 8, 9, EOS], [5, SEP, 9, EOS], [4, SEP, 7, EOS]]


def test_tail_buckets_and_topk_sets():
    Y = smat.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1]], np.float32))
    P = smat.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float32))
    tails = tail_bucket_metrics(Y, P, train_counts=np.array([5, 0, 1]))  # column 3: never seen (0)
    assert tails["tail0_labels"] == 2 and tails["tail0_support"] == 3
    assert tails["tail0_recall"] == pytest.approx(100 * 2 / 3)  # labels 1 and 3: 2 of 3 found
    assert tails["tail1_support"] == 1 and tails["tail1_recall"] == 0.0 and tails["tail1_precision"] is None
    S = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.0, 0.7]])
    sets = topk_sets(S, np.diff(Y.indptr))
    assert sets.toarray().tolist() == [[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]]
    assert set_metrics(Y, sets)["micro_f1"] == pytest.approx(100 * 2 * 4 / 12)


# --------------------------------------------------------------------------- trained models


@pytest.mark.parametrize("variant", ["base", "bcl", "mcg"])
def test_constrained_decoding_emits_valid_sets(models, data, variant):
    model = models[variant]
    _, _, test_texts, _ = data
    gen = model.generate(test_texts, beam_size=3, topk=10)
    rank = model.vocab.label_rank
    for i, labels in enumerate(gen.sets):
        assert 1 <= len(labels) <= model.params.max_labels
        assert all(0 <= l < len(LABELS) for l in labels)
        assert len(set(labels)) == len(labels)
        assert list(rank[labels]) == sorted(rank[labels])  # frequency-rank order, so no repeats
        row = gen.scores[i]
        in_set = row.indices[row.data > 1.0]
        assert sorted(in_set) == sorted(labels)
        vals = [row[0, l] for l in labels]
        assert vals == sorted(vals, reverse=True)  # scores fall along the generated order
    assert gen.scores.shape == (len(test_texts), len(LABELS)) and gen.scores.dtype == np.float32
    if variant != "base":
        assert model.label_clusters.shape == (len(LABELS),)
        assert model.label_clusters.max() < 3


def test_mcg_labels_stay_in_generated_clusters(models, data):
    import torch

    model = models["mcg"]
    _, _, test_texts, _ = data
    v = model.vocab
    ids = model.tokenizer(test_texts[:4], padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.inference_mode():
        hidden, pooled = model.module.encode(ids["input_ids"], ids["attention_mask"])
        toks, scores = model._beam_search(hidden, ids["attention_mask"], pooled, 3)
    rank_to_label = v.rank_to_label()
    for b in range(toks.shape[0]):
        for w in range(toks.shape[1]):
            if not np.isfinite(scores[b, w]):
                continue
            seq = toks[b, w, 1:]
            sep = int(np.flatnonzero(seq == SEP)[0])
            cluster_ranks = set((seq[:sep] - 4).tolist())
            labels = rank_to_label[seq[sep + 1:][seq[sep + 1:] >= v.label_offset] - v.label_offset]
            assert 1 <= len(cluster_ranks) <= model.params.max_clusters
            assert {int(v.cluster_rank[v.label_cluster[l]]) for l in labels} <= cluster_ranks


def test_save_load_round_trip_and_dispatch(models, data, tmp_path):
    _, _, test_texts, Yte = data
    for variant in ("bcl", "mcg"):
        model = models[variant]
        before = model.predict(test_texts, topk=5)
        path = model.save(tmp_path / variant)
        loaded = load_model(path)
        assert isinstance(loaded, XLGenModel) and loaded.params == model.params
        after = loaded.predict(test_texts, topk=5)
        assert (before != after).nnz == 0 and np.array_equal(before.indices, after.indices)
        assert loaded.generated_sets(test_texts) == model.generated_sets(test_texts)
        assert (loaded.label_counts == model.label_counts).all()
    ev, extra = evaluate_xlgen(loaded, test_texts, Yte, LABELS)
    assert {"micro_f1", "macro_f1", "tail0_recall", "tail1_recall"} <= set(extra)
    assert "p" in ev.metrics and ev.n_test == len(test_texts)
    # the set metrics are those of the generated sets, the ranking metrics those of the scores,
    # counted here pair by pair
    gen = loaded.generate(test_texts, topk=5)  # one pass: the sets and the scores
    micro, macro = _counted_set_f1(gen.sets, Yte)
    assert extra["micro_f1"] == pytest.approx(micro, abs=1e-6) and extra["macro_f1"] == pytest.approx(macro, abs=1e-6)
    assert ev.metrics["p"][1] == pytest.approx(_counted_p1(gen.scores, Yte), abs=1e-6)
    (tmp_path / "mcg" / "weights.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="incomplete"):
        load_model(tmp_path / "mcg")


def test_pu_training_records_dropped_counts(models, data):
    _, Y, _, _ = data
    model = models["base"]
    assert model.params.pu_drop == 0.5
    assert (model.label_counts == np.diff(pu_drop_labels(Y, 0.5, seed=0).tocsc().indptr)).all()
    assert model.label_counts.sum() < Y.nnz and model.info["train_positives_before_pu"] == Y.nnz
    assert (models["mcg"].label_counts == np.diff(Y.tocsc().indptr)).all()


def _write_dataset(folder, data):
    train_texts, Ytr, test_texts, Yte = data
    folder.mkdir(parents=True)
    for split, texts, Y in (("train", train_texts, Ytr), ("test", test_texts, Yte)):
        (folder / f"{split}_texts.txt").write_text("".join(t + "\n" for t in texts))
        (folder / f"{split}_labels.txt").write_text(
            "".join(" ".join(LABELS[j] for j in Y[i].indices) + "\n" for i in range(Y.shape[0])))
    (folder / "label_map.txt").write_text("".join(n + "\n" for n in LABELS))
    return folder


def test_assets_materialize_mcg_chain(data, tmp_path):
    from dagster import DagsterInstance, materialize

    from xmc_assets.assets import corpus
    from xmc_assets.generative import GENERATIVE_ASSETS, XLGenSettings
    from xmc_assets.partitions import dataset_partitions
    from xmc_assets.resources import RayEngineResource, ArtifactStore, DataRoot, EvaluationDB, XmcSettings
    from xmc_core.results_db import read_evaluation

    _write_dataset(tmp_path / "data" / "tiny", data)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(dataset_partitions.name, ["tiny"])
    names = {"xlgen_label_clusters", "xlgen_mcg_model", "xlgen_mcg_metrics"}
    chosen = [a for a in GENERATIVE_ASSETS if a.key.to_user_string() in names]
    settings = XLGenSettings(params_json=json.dumps({**TINY, "steps": 1}))
    result = materialize([corpus, *chosen], instance=instance, partition_key="tiny", resources={
        "data_root": DataRoot(path=str(tmp_path / "data"), synthetic_dir=str(tmp_path / "synthetic")),
        "artifacts": ArtifactStore(base_dir=str(tmp_path / "artifacts")),
        "evaluation_db": EvaluationDB(path=str(tmp_path / "xmc.duckdb")),
        "xmc_settings": XmcSettings(),
        "ray_engine": RayEngineResource(),
        "xlgen_settings": settings,
    })
    assert result.success
    saved = load_model(tmp_path / "artifacts" / "tiny" / "xlgen_mcg" / "model")
    assert isinstance(saved, XLGenModel) and saved.params.variant == "mcg" and saved.params.steps == 1
    rows = read_evaluation(tmp_path / "xmc.duckdb", result.run_id)
    assert set(rows["model"]) == {"xlgen-mcg"}
    assert {"micro_f1", "macro_f1", "p"} <= set(rows["metric"])
    # the stored metrics are the saved model's on the test split, counted here
    _, _, test_texts, Yte = data
    stored = {(m, k): v for m, k, v in rows.select("metric", "k", "value").iter_rows()}
    gen = saved.generate(test_texts, topk=5)  # one pass: the sets and the scores
    micro, macro = _counted_set_f1(gen.sets, Yte)
    assert stored[("micro_f1", 0)] == pytest.approx(micro, abs=1e-6)
    assert stored[("macro_f1", 0)] == pytest.approx(macro, abs=1e-6)
    assert stored[("p", 1)] == pytest.approx(_counted_p1(gen.scores, Yte), abs=1e-6)
    meta = result.asset_materializations_for_node("xlgen_mcg_metrics")[0].metadata
    assert "micro_f1" in meta and "macro_f1" in meta


def test_cli_train_and_evaluate(data, tmp_path, capsys):
    _, _, test_texts, _ = data
    folder = _write_dataset(tmp_path / "ds", data)
    model = tmp_path / "model"
    params = json.dumps({"variant": "mcg", **{**TINY, "steps": 1}})
    assert main(["train", "--method", "xlgen", "--data", str(folder), "--model", str(model), "--params", params]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["method"] == "xlgen" and info["variant"] == "mcg" and info["train_s"] > 0
    assert main(["evaluate", "--model", str(model), "--data", str(folder), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("p@1", "p@5", "micro_f1", "macro_f1", "n_test", "predict_s"):
        assert key in ev
    # the printed metrics are the saved model's, counted here from its generated sets and scores
    saved = load_model(model)
    _, _, _, Yte = data
    gen = saved.generate(test_texts, topk=5)  # one pass: the sets and the scores
    micro, macro = _counted_set_f1(gen.sets, Yte)
    assert ev["micro_f1"] == pytest.approx(micro, abs=0.01) and ev["macro_f1"] == pytest.approx(macro, abs=0.01)
    assert ev["p@1"] == pytest.approx(_counted_p1(gen.scores, Yte), abs=0.01)
    assert ev["n_test"] == len(test_texts)
    assert main(["predict", "--model", str(model), "--text", "wheat wheat wheat", "--topk", "2"]) == 0
    # the generated set's labels first, in generated order, by name; at most --topk of them
    labels = json.loads(capsys.readouterr().out.strip())["labels"]
    generated = [LABELS[l] for l in saved.generated_sets(["wheat wheat wheat"])[0]]
    assert 1 <= len(labels) <= 2 and labels[:len(generated)] == generated[:2]
    assert main(["train", "--method", "xlgen", "--data", str(folder), "--model", str(tmp_path / "m2"),
                 "--params", '{"variant": "t5"}']) == 2
    assert "variant" in capsys.readouterr().err


def test_calibrated_sets_are_the_generated_sets_with_probabilities(models, data, tmp_path):
    from xmc_core.calibration import CalibrationParams
    from xmc_core.model_base import NotCalibratedError

    texts, Y, test_texts, Yte = data
    model = models["bcl"]
    with pytest.raises(NotCalibratedError):
        model.predict_sets(test_texts)
    model.calibrate(texts[:24], Y[:24], LABELS, CalibrationParams(min_group_pairs=1))
    try:
        S = model.predict_sets(test_texts, policy="macro")  # the decoder decides: the policy does not
        gen = model.generate(test_texts)
        assert [sorted(S.indices[S.indptr[i]:S.indptr[i + 1]].tolist()) for i in range(len(test_texts))] == \
            [sorted(s) for s in gen.sets]
        assert S.data.min() >= 0.0 and S.data.max() <= 1.0
        loaded = load_model(model.save(tmp_path / "cal"))
        assert loaded.calibration is not None and (loaded.predict_sets(test_texts) != S).nnz == 0
        _, extra = evaluate_xlgen(loaded, test_texts, Yte, LABELS)
        assert {"ece", "ece_raw", "brier"} <= set(extra)
    finally:
        model.calibration = None  # the module's models are shared
