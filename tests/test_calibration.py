"""Label sets and calibrated probabilities (xmc_core.calibration, model_base.ModelBase)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as smat

from conftest import clustered_problem
from xmc_core.calibration import (Calibration, CalibrationParams, best_threshold, fit_calibration, label_thresholds,
                                  shared_threshold)
from xmc_core.metrics import calibration_metrics, set_report
from xmc_core.model import XRLinearParams, XmcModel, evaluate_model, train_xr_linear
from xmc_core.model_base import NotCalibratedError

XMC = [sys.executable, "-m", "xmc_core.cli"]


# ----------------------------------------------------------------------------- policies by hand

def test_micro_threshold_by_hand():
    # cuts after 1..5 pairs: F1 = 2/4, 4/5, 4/6, 4/7, 6/8 -> the second cut (p >= 0.8) wins
    t, f1 = best_threshold(np.array([.9, .8, .6, .5, .4]), np.array([1, 1, 0, 0, 1], bool), n_true=3)
    assert t == pytest.approx(0.8) and f1 == pytest.approx(0.8)
    # positives outside the candidates still count: n_true 5 -> 2/6, 4/7, 4/8, 4/9, 6/10
    t, f1 = best_threshold(np.array([.9, .8, .6, .5, .4]), np.array([1, 1, 0, 0, 1], bool), n_true=5)
    assert t == pytest.approx(0.4) and f1 == pytest.approx(0.6)
    # forced pairs (the top label under at_least_one) are in every set
    t, f1 = best_threshold(np.array([.2, .9]), np.array([0, 1], bool), n_true=1, forced=np.array([True, False]))
    assert t == pytest.approx(0.9) and f1 == pytest.approx(2 / 3)
    # nothing right: only the forced pairs
    t, _ = best_threshold(np.array([.5]), np.array([False]), n_true=2)
    assert t == float("inf")


def test_label_and_shared_thresholds_by_hand():
    p = np.array([.9, .3, .7, .2])
    t = np.array([1, 0, 0, 1], bool)
    lab = np.array([0, 0, 1, 1])
    n_true = np.array([1, 1])
    thr, f1 = label_thresholds(p, t, lab, n_true, np.array([True, True]))
    # label 0: cut at .9 -> F1 1; label 1: cut at .7 -> 0, at .2 -> 2/3
    assert thr.tolist() == pytest.approx([.9, .2]) and f1.tolist() == pytest.approx([1.0, 2 / 3])
    thr, _ = label_thresholds(p, t, lab, n_true, np.array([True, False]))
    assert np.isnan(thr[1])
    # one threshold for both: sums 1, 1, 2/3 + 0, 2/3 + 2/3 along .9 .7 .3 .2 -> .2
    assert shared_threshold(p, t, lab, n_true, np.array([True, True])) == pytest.approx(0.2)
    # label 0 alone: best at .9
    assert shared_threshold(p, t, lab, n_true, np.array([True, False])) == pytest.approx(0.9)


def test_decide_caps_and_keeps_the_top_label():
    cal = Calibration(CalibrationParams(max_set_size=2, at_least_one=True), {-1: (np.array([0., 1.]), np.array([0., 1.]))},
                      np.full(4, -1), 0.5, np.array([0.95, 0.1, 0.5, 0.5], np.float32))
    Pp = smat.csr_matrix(np.array([[0.9, 0.8, 0.7, 0.0], [0.2, 0.1, 0.0, 0.0]], np.float32))
    S = cal.decide(Pp, "micro").toarray()
    np.testing.assert_allclose(S, [[0.9, 0.8, 0, 0], [0.2, 0, 0, 0]], rtol=1e-6)  # capped at 2; row 1 keeps its top
    S = cal.decide(Pp, "macro").toarray()
    # label 0 needs 0.95 but is each row's top label; label 1 needs 0.1; label 2 is past the cap
    np.testing.assert_allclose(S, [[0.9, 0.8, 0, 0], [0.2, 0.1, 0, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="policy"):
        cal.decide(Pp, "weighted")


def test_set_report_and_ece_by_hand():
    Y = smat.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], np.float32))
    S = smat.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]], np.float32))
    r = set_report(Y, S, train_counts=np.array([60, 3, 0]))
    # TP 2 of 3 predicted, 3 true; label F1s: 1, 2/3, 0 (label 2 never true)
    assert r["micro_precision"] == pytest.approx(200 / 3) and r["micro_recall"] == pytest.approx(200 / 3)
    assert r["macro_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert r["macro_f1_all"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert r["frequent_micro_f1"] == pytest.approx(100.0) and r["few_micro_recall"] == pytest.approx(50.0)
    assert r["zero_micro_precision"] == 0.0 and r["zero_labels"] == 0
    # ECE: bins of 0.9 (1 right of 1) and 0.3 (0 of 2... one right): |0.9-1|*1/3 + |0.3-0.5|*2/3
    P = smat.csr_matrix(np.array([[0.9, 0.3, 0], [0, 0.3, 0]], np.float32))
    Y2 = smat.csr_matrix(np.array([[1, 0, 0], [0, 1, 0]], np.float32))
    cm = calibration_metrics(Y2, P, n_bins=10)
    assert cm["ece"] == pytest.approx(100 * (0.1 / 3 + 0.2 * 2 / 3))
    assert cm["brier"] == pytest.approx((0.01 + 0.09 + 0.49) / 3)


# ----------------------------------------------------------------------------- probabilities

@pytest.mark.parametrize("method", ["isotonic", "platt"])
@pytest.mark.parametrize("groups", ["global", "frequency"])
def test_probabilities_are_monotone_in_the_score_and_calibrated(method, groups):
    rng = np.random.default_rng(0)
    n, L = 3000, 30
    counts = rng.integers(0, 200, L)
    s = rng.random((n, L)).astype(np.float32)
    # the truth follows a known curve of the score: P(right) = s^2
    Ytrue = (rng.random((n, L)) < s ** 2).astype(np.float32)
    P, Y = smat.csr_matrix(s), smat.csr_matrix(Ytrue)
    cal = fit_calibration(P, Y, counts, CalibrationParams(method=method, groups=groups, min_group_pairs=100))
    grid = np.linspace(0, 1, 101, dtype=np.float32)
    G = smat.csr_matrix(np.tile(grid[:, None], (1, L)))
    prob = cal.proba(G).toarray()
    assert (np.diff(prob, axis=0) >= -1e-7).all()  # every label: non-decreasing in the score
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    P2 = smat.csr_matrix(rng.random((n, L)).astype(np.float32))
    Y2 = smat.csr_matrix((rng.random((n, L)) < P2.toarray() ** 2).astype(np.float32))
    raw_ece = calibration_metrics(Y2, P2)["ece"]
    ece = calibration_metrics(Y2, cal.proba(P2))["ece"]
    assert raw_ece > 10 and ece < (2.0 if method == "isotonic" else 6.0)


# ----------------------------------------------------------------------------- models

@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    X, Y = clustered_problem(n=900, n_labels=40, seed=1)
    names = [f"l{j}" for j in range(40)]
    params = XRLinearParams.from_dict({"tree": {"max_leaf_size": 8}})
    model = train_xr_linear(Y[:600], names, params, X=X[:600])
    model.set_label_counts(Y[:600])
    folder = tmp_path_factory.mktemp("m") / "model"
    model.save(folder)  # an uncalibrated folder, as older xmc wrote
    cal = model.calibrate(X[600:750], Y[600:750], names, CalibrationParams(min_group_pairs=50))
    return model, folder, cal, X, Y, names


def test_an_uncalibrated_folder_predicts_and_says_how_to_calibrate(calibrated):
    model, folder, _, X, _, _ = calibrated
    old = XmcModel.load(folder)
    assert old.calibration is None and not (folder / "calibration").exists()
    assert (old.predict(X[750:]) != model.predict(X[750:])).nnz == 0
    with pytest.raises(NotCalibratedError, match="xmc calibrate"):
        old.predict_sets(X[750:])


def test_calibration_saves_loads_and_only_its_part_is_replaced(calibrated, tmp_path):
    model, folder, cal, X, Y, names = calibrated
    before = {p.name: p.read_bytes() for p in (folder / "ranker").iterdir()}
    model.save_calibration(folder)
    assert {p.name: p.read_bytes() for p in (folder / "ranker").iterdir()} == before
    loaded = XmcModel.load(folder)
    assert loaded.calibration.threshold == pytest.approx(cal.threshold)
    S1, S2 = model.predict_sets(X[750:], "macro"), loaded.predict_sets(X[750:], "macro")
    assert (S1 != S2).nnz == 0 and S1.nnz > 0
    P = loaded.predict_proba(X[750:])
    assert P.data.min() >= 0 and P.data.max() <= 1
    # a whole save of a calibrated model writes it too
    model.save(tmp_path / "again")
    assert XmcModel.load(tmp_path / "again").calibration.label_threshold.tolist() == cal.label_threshold.tolist()
    # every set holds its top label, at most max_set_size labels
    sizes = np.diff(S1.indptr)
    assert sizes.min() >= 1 and sizes.max() <= cal.params.max_set_size
    # evaluation adds the sets' numbers
    ev = evaluate_model(loaded, X[750:], Y[750:], names)
    flat = ev.flat()
    assert 0 < flat["set_micro_f1"] <= 100 and flat["ece"] < flat["ece_raw"]
    assert {"frequent_micro_f1", "few_micro_f1", "zero_micro_f1", "brier"} <= set(flat)


def test_a_damaged_or_stale_calibration_leaves_a_model_that_ranks(calibrated, tmp_path):
    model, _, _, X, Y, names = calibrated
    folder = model.save(tmp_path / "m")
    (folder / "calibration" / "calibration.npz").write_bytes(b"not a zip")
    damaged = XmcModel.load(folder)  # the ranker is intact: it still ranks
    assert damaged.calibration is None and "calibration" in damaged.calibration_error
    assert (damaged.predict(X[750:]) != model.predict(X[750:])).nnz == 0
    with pytest.raises(NotCalibratedError, match="again"):
        damaged.predict_sets(X[750:])
    damaged.calibrate(X[600:750], Y[600:750], names, CalibrationParams(min_group_pairs=50))
    damaged.save_calibration(folder)  # calibrating again repairs it
    assert XmcModel.load(folder).calibration is not None
    # a model trained into the folder while a calibration was being fitted: not written ...
    stale = XmcModel.load(folder)
    XmcModel.load(folder).save(folder)  # the same weights, a new params.json (a new save)
    (folder / "params.json").write_text((folder / "params.json").read_text().replace('"info": {', '"info": {"x": 1, ', 1))
    with pytest.raises(Exception, match="replaced since"):
        stale.save_calibration(folder)
    # ... and one fitted for another model is not used
    import shutil

    other = model.save(tmp_path / "other")
    shutil.rmtree(folder / "calibration")
    shutil.copytree(other / "calibration", folder / "calibration")
    assert "another model" in XmcModel.load(folder).calibration_error


def test_bad_settings_and_bad_held_out_data_are_refused(calibrated):
    model, _, _, X, Y, names = calibrated
    for bad in ({"seed": "x"}, {"seed": 1.5}, {"at_least_one": "no"}, {"threshold_shrinkage": float("inf")},
                {"topk": 5, "max_set_size": 10}, {"holdout_frac": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CalibrationParams.from_dict(bad)
    with pytest.raises(ValueError, match="at least 10 held-out documents"):
        model.calibrate(X[600:605], Y[600:605], names)
    # held-out labels of another label space (names the model does not know)
    with pytest.raises(ValueError, match="labels of this model"):
        model.calibrate(X[600:750], Y[600:750], [f"other{j}" for j in range(40)])
    # a huge topk is the whole label space, not a huge buffer
    assert np.diff(model.predict(X[:3], topk=10**9, beam_size=10**9).indptr).max() <= 40


def test_ties_of_probability_go_to_the_higher_score():
    cal = Calibration(CalibrationParams(max_set_size=1, topk=1), {-1: (np.array([0., 1.]), np.array([.5, .5]))},
                      np.full(3, -1), 0.9, np.full(3, 0.9, np.float32))
    P = smat.csr_matrix(np.array([[0.2, 0.6, 0.4]], np.float32))
    Pp = cal.proba(P)  # all 0.5: the flat map
    assert cal.decide(Pp, "micro", P).indices.tolist() == [1]  # the top label by score
    assert cal.decide(Pp, "micro").indices.tolist() == [0]  # without scores: stored order


# ----------------------------------------------------------------------------- command line

WORDS = {f"topic{j}": [f"w{j}_{k}" for k in range(6)] for j in range(12)}


def _raw_dataset(root: Path, splits=("train", "dev", "test"), n=(400, 150, 150), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    labels = sorted(WORDS)
    for split, m in zip(splits, n):
        texts, labs = [], []
        for _ in range(m):
            ls = rng.choice(len(labels), size=rng.integers(1, 3), replace=False)
            words = [w for l in ls for w in rng.choice(WORDS[labels[l]], 4)] + [f"noise{rng.integers(50)}"]
            texts.append(" ".join(rng.permutation(words)))
            labs.append(" ".join(labels[l] for l in ls))
        (root / f"{split}_texts.txt").write_text("\n".join(texts) + "\n")
        (root / f"{split}_labels.txt").write_text("\n".join(labs) + "\n")
    return root


def _xmc(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*XMC, *map(str, args)], capture_output=True, text=True)


def test_cli_calibrate_predict_sets_and_evaluate(tmp_path):
    data = _raw_dataset(tmp_path / "data")
    model = tmp_path / "model"
    r = _xmc("train", "--data", data, "--model", model)
    assert r.returncode == 0, r.stderr
    r = _xmc("predict", "--model", model, "--text", "w0_1 w0_2", "--sets")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "xmc calibrate" in r.stderr
    # the training documents are refused: the probabilities would be over-confident
    r = _xmc("calibrate", "--model", model, "--data", data, "--split", "train")
    assert r.returncode == 2 and "trained on these documents" in r.stderr
    r = _xmc("calibrate", "--model", model, "--data", data, "--calibration-params", '{"seed": "x"}')
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "seed" in r.stderr
    r = _xmc("calibrate", "--model", model, "--data", data, "--max-rows", 3)
    assert r.returncode == 2 and "cannot calibrate" in r.stderr and r.stderr.count("\n") == 1
    r = _xmc("calibrate", "--model", model, "--data", data)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["source"] == "dev" and out["n_docs"] == 150
    r = _xmc("predict", "--model", model, "--text", "w0_1 w0_2 w0_3 w5_0 w5_1 w5_2", "--sets", "--policy", "macro")
    line = json.loads(r.stdout)
    assert line["labels"][:2] and set(line["labels"]) <= set(WORDS) and "topic0" in line["labels"]
    assert all(0.0 <= p <= 1.0 for p in line["probabilities"])
    for bad in (["--policy", "macro"], ["--sets", "--topk", "3"]):  # --policy goes with --sets; a set has no topk
        r = _xmc("predict", "--model", model, "--text", "w0_1", *bad)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, bad
    r = _xmc("evaluate", "--model", model, "--data", data, "--json")
    ev = json.loads(r.stdout)
    assert ev["set_micro_f1"] > 50 and ev["policy"] == "micro" and "ece" in ev and "frequent_micro_f1" in ev


def test_cli_train_calibrate_holds_out_without_a_dev_split(tmp_path):
    data = _raw_dataset(tmp_path / "data", splits=("train", "test"), n=(500, 100))
    r = _xmc("train", "--data", data, "--model", tmp_path / "m", "--calibrate",
             "--calibration-params", '{"holdout_frac": 0.2, "seed": 3}')
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["calibration"]["source"] == "holdout" and out["calibration"]["n_docs"] == 100
    assert out["n_train"] == 500  # the saved model is trained on every training document
    info = json.loads((tmp_path / "m" / "calibration" / "calibration.json").read_text())["info"]
    assert info["holdout_frac"] == 0.2 and info["seed"] == 3
    r = _xmc("train", "--data", data, "--model", tmp_path / "m2", "--calibrate", "--calibration-params", '{"topk": 0}')
    assert r.returncode == 2 and "--calibration-params" in r.stderr and "topk" in r.stderr


def test_cli_train_calibrate_refit_trains_on_train_and_dev(tmp_path):
    from xmc_core.model import load_model

    data = _raw_dataset(tmp_path / "data")  # 400 train, 150 dev
    r = _xmc("train", "--data", data, "--model", tmp_path / "refit", "--calibrate", "--refit", "--preset", "sets")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_train"] == 550 and out["trained_on"] == "train+dev"
    assert out["calibration"]["source"] == "dev" and out["calibration"]["n_docs"] == 150
    r = _xmc("train", "--data", data, "--model", tmp_path / "plain", "--calibrate", "--preset", "sets")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_train"] == 400
    # the calibration is the train-only model's on dev (what plain --calibrate fits); the saved
    # model learned from the dev documents too
    refit, plain = load_model(tmp_path / "refit"), load_model(tmp_path / "plain")
    assert refit.calibration.threshold == pytest.approx(plain.calibration.threshold)
    np.testing.assert_allclose(refit.calibration.label_threshold, plain.calibration.label_threshold, rtol=1e-6)
    assert refit.calibration.info["final_model"] == "train+dev"
    assert json.loads((tmp_path / "refit" / "params.json").read_text())["params"]["ranker"]["Cp"] == 3.0
    assert refit.label_counts.sum() == plain.label_counts.sum() + plain.calibration.info["n_positives"]
    r = _xmc("predict", "--model", tmp_path / "refit", "--text", "w0_1 w0_2 w0_3", "--sets")
    assert r.returncode == 0 and "topic0" in json.loads(r.stdout)["labels"]
    # --refit needs --calibrate, and an xr-linear method
    for bad, says in ((["--refit"], "--refit goes with --calibrate"),
                      (["--calibrate", "--refit", "--method", "xlgen"], "--refit: xr-linear")):
        r = _xmc("train", "--data", data, "--model", tmp_path / "bad", *bad)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, (bad, r.stderr)
        assert not (tmp_path / "bad").exists()
    # without a dev split --calibrate already trains the saved model on everything: --refit is that
    data2 = _raw_dataset(tmp_path / "data2", splits=("train", "test"), n=(500, 100))
    r = _xmc("train", "--data", data2, "--model", tmp_path / "nodev", "--calibrate", "--refit")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["calibration"]["source"] == "holdout" and out["n_train"] == 500 and "trained_on" not in out


def test_sibling_calibration_is_the_train_only_models():
    from xmc_core.model import sibling_calibration

    X, Y = clustered_problem(n=600, n_labels=24, seed=4)
    X = (X * 3.0).tocsr()  # rows of norm 3: training would normalize them
    names = [f"l{j}" for j in range(Y.shape[1])]
    params = XRLinearParams().merged({"ranker": {"threads": 1}, "tree": {"threads": 1}})
    X_before = X.copy()
    cal = sibling_calibration(Y[:400], names, params, X[400:], Y[400:], CalibrationParams(topk=5, max_set_size=5), X=X[:400],
                              info={"source": "dev"})
    assert (X != X_before).nnz == 0  # the caller's matrix is not normalized in place
    model = train_xr_linear(Y[:400], names, params, X=X[:400])
    model.set_label_counts(Y[:400])
    own = model.calibrate(X[400:], Y[400:], names, CalibrationParams(topk=5, max_set_size=5))
    assert cal.threshold == pytest.approx(own.threshold) and cal.info["source"] == "dev"
    np.testing.assert_allclose(cal.label_threshold, own.label_threshold, rtol=1e-6)
