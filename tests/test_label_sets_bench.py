"""The XR-Transformer rows of bench/label_sets.py on a tiny raw-text dataset: the encoder never sees
a held-out document, its embeddings are cached by their settings, and the row is scored like the
others."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS.parent / "bench"))
sys.path.insert(0, str(TESTS))

import label_sets  # noqa: E402
from test_xtransformer import PARAMS, tiny_texts  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A raw-text dataset without a dev split (so 10% of train is held out), prepared as the bench does."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    texts, Y, names = tiny_texts(n=240)
    for split, rows in (("train", range(200)), ("test", range(200, 240))):
        (root / f"{split}_texts.txt").write_text("".join(texts[i] + "\n" for i in rows))
        (root / f"{split}_labels.txt").write_text(
            "".join(" ".join(names[j] for j in Y[i].indices) + "\n" for i in rows))
    out = root.parent / (root.name + "-sets")
    meta = label_sets.prepare(root, out)
    data = {k: label_sets.load(out, k) for k in ("X.trn", "Y.trn", "X.dev", "Y.dev", "X.tst", "Y.tst")}
    return root, out, meta, data


def _row(tiny, system, monkeypatch=None):
    root, out, meta, data = tiny
    counts = np.diff(data["Y.trn"].tocsc().indptr)
    return label_sets.xr_transformer_row(root.name, system, root.parent, out, meta, 1, PARAMS, [1.0, 3.0], data,
                                         counts)


def test_fine_tuning_sees_only_the_training_part_and_the_cache_is_per_setting(tiny, monkeypatch):
    import xmc_core.xtransformer as xt

    root, out, meta, data = tiny
    assert meta["n_dev"] == 20 and meta["n_trn"] == 180 and meta["raw_text"] is True
    seen = []
    real = xt.fit_encoder

    def spy(texts, X, Y, params, *a, **k):
        seen.append((len(texts), X.shape[0], Y.shape[0], params.finetune.steps_per_level))
        return real(texts, X, Y, params, *a, **k)

    monkeypatch.setattr(xt, "fit_encoder", spy)
    tuned = _row(tiny, "xr-transformer")
    assert seen == [(180, 180, 180, 1)]  # the 180 training documents, none of the 20 held out
    assert tuned["extra"]["encoder_cached"] is False and tuned["extra"]["finetune_s"] > 0
    again = _row(tiny, "xr-transformer")
    assert len(seen) == 1 and again["extra"]["encoder_cached"] is True  # same settings: no second fine-tuning
    assert (again["p1"], again["extra"]["micro_f1"]) == (tuned["p1"], tuned["extra"]["micro_f1"])
    pre = _row(tiny, "xr-transformer-pretrained")
    assert len(seen) == 1 and pre["extra"]["encoder_cached"] is False and pre["extra"]["finetune_s"] == 0
    assert len(list(out.glob("encoder-*"))) == 2


def test_the_row_is_scored_like_the_others(tiny):
    row = _row(tiny, "xr-transformer-pretrained")
    ex = row["extra"]
    assert row["system"] == "xmc xr-transformer (pretrained)"
    assert row["n_train"] == 200 and row["n_test"] == 40
    assert ex["ranker_C"] in (1.0, 3.0) and set(ex["heldout_micro_macro_all_macro_f1_by_C"]) == {"1", "3"}
    for key in ("micro_f1", "macro_f1", "macro_f1_all", "ece", "ece_raw", "few_macro_f1", "few_ece", "few_ece_raw"):
        assert 0.0 <= ex[key] <= 100.0, key
    # train_s counts the encoder's work on the training and held-out documents and the final rankers
    assert row["train_s"] >= ex["embed_s"]["trn"] + ex["embed_s"]["dev"] - 0.01
    assert row["predict_s"] >= ex["embed_s"]["tst"] - 0.01
    assert ex["params"]["finetune"]["steps_per_level"] == 0 and ex["params"]["ranker"]["Cp"] == ex["ranker_C"]
