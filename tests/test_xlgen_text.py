"""XLGen's label-text decoding on tiny inputs: the label trie, trie-constrained beam search (only
valid titles, never a repeat, a label without training documents can come out), the decoder's
key/value cache against full recomputation, cached encoder states, save/load and resume after a
kill. 1–6 training steps per model; needs torch/transformers and the local MiniLM package."""

import json

import numpy as np
import pytest
from conftest import require_module
import scipy.sparse as smat

require_module("torch")
require_module("transformers")

import torch  # noqa: E402

from test_xlgen import LABELS, TINY, _synthetic, one_thread  # noqa: E402,F401  (one_thread: autouse fixture)
from xmc_core.cli import main  # noqa: E402
from xmc_core.encoder import pad_batch, tokenize  # noqa: E402
from xmc_core.label_trie import TrieTensors, build_trie  # noqa: E402
from xmc_core.model import load_model  # noqa: E402
from xmc_core.xlgen import (  # noqa: E402
    BOS,
    EOS,
    LSEP,
    XLGenModel,
    XLGenParams,
    build_targets,
    COPY_GAIN_SCALE,
    label_texts,
    load_state,
    save_state,
    train_xlgen,
    xlgen_checkpoint_key,
)

# titles as a dataset's label_names.tsv would give them: "gold" is a prefix of "gold bullion",
# and label 9 ("zinc ore") never occurs in training
TITLES = ["wheat", "crude oil", "gold", "ship", "coffee", "sugar", "money fx", "rubber", "gold bullion", "zinc ore"]
ZERO = 9


@pytest.fixture(scope="module")
def data():
    texts, Y = _synthetic(48, 0)
    Y = Y.tolil()
    Y[:, ZERO] = 0
    Y = Y.tocsr()
    Y.eliminate_zeros()
    test_texts, Yte = _synthetic(12, 1)
    return texts, Y, test_texts, Yte


@pytest.fixture(scope="module")
def models(data):
    texts, Y, _, _ = data
    return {v: train_xlgen(texts, Y, LABELS, XLGenParams(variant=v, decoding="label_text", **TINY),
                           label_titles=TITLES) for v in ("base", "mcg")}


# --------------------------------------------------------------------------- the trie


def test_trie_ranges_walk_and_decode():
    seqs = [[5, 6, 1], [5, 1], [7, 1], [5, 6, 8, 1]]  # 1 ends a label; [5] prefixes three labels
    trie = build_trie(seqs)
    assert trie.n_labels == 4 and trie.max_length == 4
    for lid, seq in enumerate(seqs):
        node = trie.walk(seq)
        assert trie.node_label[node] == lid
        assert trie.pos_label[trie.label_pos[lid]] == lid
    # the labels below a node are one run of trie positions
    u = trie.walk([5])
    below = set(trie.pos_label[trie.node_lo[u]:trie.node_hi[u]].tolist())
    assert below == {0, 1, 3}
    assert trie.walk([9]) == -1
    assert trie.decode([5, 6, 1, 7, 1, 5, 6, 8, 1]) == [0, 2, 3]
    assert trie.decode([5, 6]) == []  # an unfinished name is not a label
    with pytest.raises(ValueError, match="same token sequence"):
        build_trie([[5, 1], [5, 1]])
    with pytest.raises(ValueError, match="empty"):
        build_trie([[5, 1], []])


def test_trie_step_allows_only_subtrees_with_valid_labels():
    seqs = [[5, 6, 1], [5, 1], [7, 1], [5, 6, 8, 1]]
    trie = build_trie(seqs)
    tt = TrieTensors(trie, "cpu")
    node = torch.tensor([0, 0, trie.walk([5])])
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[1, trie.label_pos[[0, 1, 3]]] = False  # hypothesis 1 may only write label 2 ([7, 1])
    valid[2, trie.label_pos[1]] = False  # hypothesis 2, after [5], may not end there
    allowed, nxt = tt.allowed(node, valid, 10)
    assert allowed[0].nonzero().ravel().tolist() == [5, 7]
    assert allowed[1].nonzero().ravel().tolist() == [7]
    assert allowed[2].nonzero().ravel().tolist() == [6]
    assert int(nxt[2, 6]) == trie.walk([5, 6]) and int(nxt[1, 5]) == -1


# --------------------------------------------------------------------------- vocabulary and targets


def test_label_texts_and_text_targets(models, data):
    assert label_texts(["a_b", "c"], ["", "Title"]) == ["a b", "Title"]
    texts, Y, _, _ = data
    m = models["base"]
    v = m.vocab
    assert v.text and v.n_special == 5 and v.label_texts == TITLES
    # every title round-trips through its pieces and the trie
    for lid in range(len(TITLES)):
        seq = v.label_sequence(lid)
        assert seq[-1] == LSEP and v.labels_of(np.asarray(seq)) == [lid]
        words = m.tokenizer.convert_ids_to_tokens(v.piece_ids[np.asarray(seq[:-1]) - v.label_offset].tolist())
        assert m.tokenizer.convert_tokens_to_string(words) == TITLES[lid]
    targets = build_targets(Y, v, "base")
    for i, seq in enumerate(targets[:10]):
        labels = v.labels_of(np.asarray(seq))
        assert sorted(labels) == sorted(Y.indices[Y.indptr[i]:Y.indptr[i + 1]].tolist())
        assert list(np.argsort(v.label_rank[labels])) == list(range(len(labels)))  # frequency-rank order
        assert seq[-1] == EOS


def test_titles_that_tokenize_alike_stay_distinct(data):
    texts, Y, _, _ = data
    titles = list(TITLES)
    titles[1] = "Wheat"  # the uncased tokenizer reads it as "wheat"
    m = train_xlgen(texts, Y, LABELS, XLGenParams(decoding="label_text", **{**TINY, "steps": 1}), label_titles=titles)
    assert m.vocab.label_texts[0] == "wheat wheat" and m.vocab.label_texts[1] == "Wheat crude"
    assert len({tuple(m.vocab.label_sequence(l)) for l in range(len(titles))}) == len(titles)


# --------------------------------------------------------------------------- decoding


def test_cached_decoding_matches_full_recomputation(models, data):
    _, _, test_texts, _ = data
    m = models["mcg"]
    flat, offsets = tokenize(m.tokenizer, test_texts[:3], 32)
    ids, mask = (torch.from_numpy(a) for a in pad_batch(flat, offsets, np.arange(3), 0))
    seq = torch.tensor([[BOS] + m.vocab.label_sequence(2) + m.vocab.label_sequence(8) + [EOS]] * 3)
    with torch.inference_mode():
        hidden, pooled = m.module.encode(ids, mask)
        full = m.module.decode(hidden, mask, pooled, seq)
        logits, cache, steps = None, None, []
        for t in range(seq.shape[1]):
            logits, cache = m.module.step(hidden, mask, pooled, seq[:, t], cache)
            steps.append(logits)
    np.testing.assert_allclose(torch.stack(steps, 1).numpy(), full.numpy(), atol=1e-4)


@pytest.mark.parametrize("variant", ["base", "mcg"])
def test_trie_decoding_emits_valid_titles_once_even_from_noise(models, data, variant):
    """Random output biases push decoding everywhere; every hypothesis still writes whole titles,
    in increasing frequency rank, none twice, at most max_labels, and ends with EOS."""
    _, _, test_texts, _ = data
    m = models[variant]
    v = m.vocab
    saved = m.module.out_bias.detach().clone()
    try:
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                m.module.out_bias.copy_(saved + 6.0 * torch.randn(saved.shape, generator=g))
            flat, offsets = tokenize(m.tokenizer, test_texts, 32)
            ids, mask = (torch.from_numpy(a) for a in pad_batch(flat, offsets, np.arange(len(test_texts)), 0))
            with torch.inference_mode():
                hidden, pooled = m.module.encode(ids, mask)
                toks, scores = m._beam_search(hidden, mask, pooled, 3)
            for b in range(toks.shape[0]):
                for w in range(toks.shape[1]):
                    if not np.isfinite(scores[b, w]):
                        continue
                    row = toks[b, w]
                    row = row[row != 0]
                    assert row[-1] == EOS
                    segment = row[1:-1]
                    if variant == "mcg":
                        segment = segment[np.flatnonzero(segment == 3)[0] + 1:]  # after SEP
                    labels = v.labels_of(segment)
                    rebuilt = [t for lab in labels for t in v.label_sequence(lab)]
                    assert segment.tolist() == rebuilt  # whole titles only, nothing else
                    assert len(set(labels)) == len(labels) <= m.params.max_labels
                    assert list(v.label_rank[labels]) == sorted(v.label_rank[labels])
    finally:
        with torch.no_grad():
            m.module.out_bias.copy_(saved)


def test_a_label_without_training_documents_can_be_generated(models, data):
    _, Y, test_texts, _ = data
    m = models["base"]
    assert m.label_counts[ZERO] == 0 and np.diff(smat.csc_matrix(Y).indptr)[ZERO] == 0
    saved = m.module.out_bias.detach().clone()
    pieces = [t for t in m.vocab.label_sequence(ZERO)]
    try:
        with torch.no_grad():
            m.module.out_bias[pieces] += 30.0  # "zinc", "ore" and LSEP: the zero-shot title is the likeliest
        sets = m.generate(test_texts).sets
    finally:
        with torch.no_grad():
            m.module.out_bias.copy_(saved)
    assert all(ZERO in s for s in sets)
    assert all(len(set(s)) == len(s) for s in sets)


# --------------------------------------------------------------------------- the copy prior


@pytest.fixture(scope="module")
def copy_model(data):
    texts, Y, _, _ = data
    return train_xlgen(texts, Y, LABELS, XLGenParams(decoding="label_text", copy_prior=True, **TINY),
                       label_titles=TITLES)


def test_copy_prior_is_the_idf_of_the_title_pieces_in_the_text(copy_model, data):
    texts, _, _, _ = data
    m = copy_model
    v = m.vocab
    flat, offsets = tokenize(m.tokenizer, texts, TINY["max_length"])
    piece = {int(p): j for j, p in enumerate(v.piece_ids)}
    n = len(texts)
    for word in ("zinc", "ore", "gold", "oil"):
        [wp] = m.tokenizer(word, add_special_tokens=False)["input_ids"]
        df = sum(wp in flat[offsets[i]:offsets[i + 1]] for i in range(n))
        assert v.piece_idf[piece[wp]] == pytest.approx(np.log((n + 1) / (df + 1)) / np.log(n + 1), rel=1e-6)
    assert v.piece_idf[piece[m.tokenizer.convert_tokens_to_ids("ore")]] == pytest.approx(1.0)  # in no text
    doc = ["zinc ore prices said"]
    f, o = tokenize(m.tokenizer, doc, TINY["max_length"])
    c = v.copy_vector(f, o, [0])[0]
    on = {m.tokenizer.convert_ids_to_tokens(int(v.piece_ids[t - v.label_offset])) for t in np.flatnonzero(c)}
    assert on == {"zinc", "ore"}  # "prices", "said": in no title
    with pytest.raises(ValueError, match="copy_prior"):
        XLGenParams(copy_prior=True)  # label_token decoding has no title pieces


def test_copy_prior_lets_the_text_name_a_label_no_training_document_has(copy_model, data):
    """With a large gain, a text that says "zinc ore" gets the zero-shot title; one that does not, never."""
    m = copy_model
    saved = m.module.copy_gain.detach().clone()
    try:
        with torch.no_grad():
            m.module.copy_gain.fill_(40.0 / COPY_GAIN_SCALE)
        with_words = m.generate(["zinc ore shipments said traders", "ore of zinc week"]).sets
        without = m.generate(["gold prices week", "coffee sugar market"]).sets
    finally:
        with torch.no_grad():
            m.module.copy_gain.copy_(saved)
    assert all(ZERO in s for s in with_words)
    assert not any(ZERO in s for s in without)
    assert m.copy_gain is not None


def test_copy_prior_model_round_trips(copy_model, data, tmp_path):
    _, _, test_texts, _ = data
    before = copy_model.generate(test_texts)
    copy_model.save(tmp_path / "copy")
    loaded = load_model(tmp_path / "copy")
    assert loaded.params.copy_prior
    assert loaded.copy_gain == copy_model.copy_gain == float(copy_model.module.copy_gain.detach()) * COPY_GAIN_SCALE
    np.testing.assert_array_equal(loaded.vocab.piece_idf, copy_model.vocab.piece_idf)
    after = loaded.generate(test_texts)
    assert after.sets == before.sets
    np.testing.assert_allclose(after.scores.toarray(), before.scores.toarray(), atol=1e-5)


# --------------------------------------------------------------------------- persistence, resume, caching


def test_save_load_round_trip(models, data, tmp_path):
    _, _, test_texts, _ = data
    m = models["mcg"]
    assert m.copy_gain is None  # no copy prior
    before = m.generate(test_texts)
    m.save(tmp_path / "gen")
    loaded = load_model(tmp_path / "gen")
    assert isinstance(loaded, XLGenModel) and loaded.params.decoding == "label_text"
    assert loaded.vocab.label_texts == TITLES
    after = loaded.generate(test_texts)
    assert after.sets == before.sets
    np.testing.assert_allclose(after.scores.toarray(), before.scores.toarray(), atol=1e-5)
    old = json.loads((tmp_path / "gen" / "params.json").read_text())
    old["params"].pop("decoding")  # a folder from before label_text decoding loads as label_token
    from xmc_core.xlgen import XLGenParams as P
    assert P.from_dict(old["params"]).decoding == "label_token"


def test_resume_after_a_kill_repeats_the_uninterrupted_run(data, tmp_path):
    texts, Y, test_texts, _ = data
    params = XLGenParams(variant="bcl", decoding="label_text", **{**TINY, "steps": 6, "batch_size": 16})
    straight = train_xlgen(texts, Y, LABELS, params, label_titles=TITLES)

    class Killed(Exception):
        pass

    def kill_after_saving(state):
        save_state(state, tmp_path / "ckpt")
        if state.step >= 3:
            raise Killed

    with pytest.raises(Killed):
        train_xlgen(texts, Y, LABELS, params, label_titles=TITLES, on_checkpoint=kill_after_saving,
                    checkpoint_every=2)
    key = xlgen_checkpoint_key(texts, Y, params, label_texts(LABELS, TITLES))
    state = load_state(tmp_path / "ckpt", key)
    assert state is not None and state.step == 3  # 48 documents / 16: the epoch ends at step 3
    assert load_state(tmp_path / "ckpt", "another key") is None
    records = []
    resumed = train_xlgen(texts, Y, LABELS, params, label_titles=TITLES, resume=state, log=records.append)
    assert resumed.info["resumed_at_step"] == 3
    assert [r["step"] for r in records if r["stage"] == "epoch"] == [6]  # the epoch it ran
    assert [r["step"] for r in resumed.info["epochs"]] == [3, 6]  # both, the first from the checkpoint
    for (k, a), (_, b) in zip(straight.module.state_dict().items(), resumed.module.state_dict().items()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=k)
    assert resumed.generate(test_texts).sets == straight.generate(test_texts).sets
    with pytest.raises(ValueError, match="other settings or data"):
        train_xlgen(texts, Y, LABELS, XLGenParams(**{**params.to_dict(), "lr": 0.5}), label_titles=TITLES,
                    resume=state)


def test_cached_encoder_states_give_the_encoders_output(data):
    texts, Y, test_texts, _ = data
    records = []
    m = train_xlgen(texts, Y, LABELS, XLGenParams(decoding="label_text", cache_encoder_states=True,
                                                  **{**TINY, "steps": 2, "freeze_layers": 4}),
                    label_titles=TITLES, log=records.append)
    assert [r["frozen_layers"] for r in records if r["stage"] == "encoder_cache"] == [4]
    assert all(np.isfinite(r["loss"]) for r in records if r["stage"] == "train")
    flat, offsets = tokenize(m.tokenizer, test_texts[:4], 32)
    ids, mask = (torch.from_numpy(a) for a in pad_batch(flat, offsets, np.arange(4), 0))
    with torch.inference_mode():
        full, _ = m.module.encode(ids, mask)
        part, _ = m.module.encode_from(m.module.frozen_states(ids, mask, 4).half().float(), mask, 4)
    real = mask.bool()
    np.testing.assert_allclose(part[real].numpy(), full[real].numpy(), atol=0.05)
    with pytest.raises(ValueError, match="freeze_layers"):
        XLGenParams(cache_encoder_states=True, freeze_layers=0)


def test_cli_trains_label_text_with_titles_and_leaves_no_checkpoint(tmp_path, capsys):
    texts, Y = _synthetic(40, 3)
    root = tmp_path / "ds"
    root.mkdir()
    for split, (tx, Yx) in {"train": (texts[:32], Y[:32]), "test": (texts[32:], Y[32:])}.items():
        (root / f"{split}_texts.txt").write_text("\n".join(tx) + "\n")
        (root / f"{split}_labels.txt").write_text(
            "\n".join(" ".join(LABELS[j] for j in Yx[i].indices) for i in range(Yx.shape[0])) + "\n")
    (root / "label_names.tsv").write_text("id\ttitle\n" + "".join(f"{n}\t{t}\n" for n, t in zip(LABELS, TITLES)))
    params = json.dumps({"decoding": "label_text", **{k: v for k, v in TINY.items() if k != "n_clusters"}})
    assert main(["train", "--method", "xlgen", "--data", str(root), "--model", str(tmp_path / "m"),
                 "--params", params]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["decoding"] == "label_text"
    assert not (tmp_path / "m.checkpoint").exists()
    model = load_model(tmp_path / "m")
    assert model.vocab.label_texts[1] == "crude oil"


def test_copy_scale_scales_the_copy_gain_when_decoding(copy_model):
    """copy_scale s decodes as a model whose gain is s times the trained one; 1 is as trained."""
    m = copy_model
    texts = ["zinc ore shipments said traders", "gold prices week"]
    g = m.module.copy_gain.detach().clone()
    try:
        m.params.copy_scale = 20.0
        scaled = m.generate(texts)
        m.params.copy_scale = 1.0
        with torch.no_grad():
            m.module.copy_gain.mul_(20.0)
        by_gain = m.generate(texts)
    finally:
        m.params.copy_scale = 1.0
        with torch.no_grad():
            m.module.copy_gain.copy_(g)
    assert scaled.sets == by_gain.sets
    np.testing.assert_allclose(scaled.scores.toarray(), by_gain.scores.toarray(), atol=1e-4)
    assert scaled.sets != m.generate(texts).sets  # and it does change what comes out here
