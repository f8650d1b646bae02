"""The command line as a person meets it: progress on stderr only, help on every option, the
model card (`xmc info`) and explanations (`xmc explain`) that add up to the scores predict gives."""

import argparse
import io
import json
import threading

import numpy as np
import pytest

from xmc_core import progress
from xmc_core.cli import build_parser, main
from xmc_core.explain import ExplainParams, explain_model
from xmc_core.model import load_model
from xmc_core.model_card import data_fingerprint, model_card

TEXT = "wheat and grain exports to the soviet union rose as corn and sugar prices fell"


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_option_has_help_with_its_default():
    """A walk over argparse: every option and positional of every subcommand says what it does,
    and each one with a default names it."""
    parser = build_parser()
    commands = _subparsers(parser)
    assert {"train", "predict", "calibrate", "evaluate", "synth", "runs", "info", "explain"} <= set(commands)
    for name, sub in commands.items():
        assert sub.description and len(sub.description) >= 20, name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"xmc {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and len(action.help) >= 12, where
            default = action.default
            if default not in (None, False, argparse.SUPPRESS) and not isinstance(default, bool):
                assert "default" in action.help.lower(), f"{where}: default {default!r} not in its help"
    top = {a.dest: a for a in parser._actions}
    assert top["version"].help


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("xmc ") and out != "xmc unknown"


def test_log_reporter_lines_and_thread_safety():
    stream = io.StringIO()
    with progress.reporting(progress.LogReporter(stream, interval=0.0)):
        with progress.task("work", 8000, "item") as bar:
            threads = [threading.Thread(target=lambda: [bar.update() for _ in range(1000)]) for _ in range(8)]
            [t.start() for t in threads]
            [t.join() for t in threads]
        assert bar.n == 8000
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("xmc: work: ") for line in lines)
    assert lines[-1].startswith("xmc: work: 8000/8000 item (100%)") and lines[-1].endswith("done")
    # silent by default: a library call writes nothing
    with progress.task("quiet", 10, "item") as bar:
        bar.update(10)
    assert isinstance(progress._reporter, progress.Silent)


def test_for_stream_picks_by_terminal_and_quiet():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress.for_stream(Tty()), progress.TerminalReporter)
    assert isinstance(progress.for_stream(io.StringIO(), interval=1), progress.LogReporter)
    assert isinstance(progress.for_stream(Tty(), quiet=True), progress.Silent)
    bar_stream = Tty()
    with progress.reporting(progress.TerminalReporter(bar_stream, delay=0)):
        with progress.task("bar", 3, "doc") as bar:
            bar.update(3)
    drawn = bar_stream.getvalue()
    assert "bar" in drawn and "/3" in drawn and "\r" in drawn  # redrawn in place


def test_progress_never_reaches_stdout(tmp_path, capsys, monkeypatch):
    """synth, train, predict and evaluate with progress lines forced (every update): stdout holds
    only the JSON results, stderr the progress; --quiet leaves stderr empty."""
    monkeypatch.setenv("XMC_PROGRESS_INTERVAL", "0")
    data, model = tmp_path / "synth", tmp_path / "model"
    assert main(["synth", str(data), "--labels", "60", "--train", "600", "--test", "100"]) == 0
    assert main(["train", "--data", str(data), "--model", str(model), "--threads", "2",
                 "--params", '{"tree": {"max_leaf_size": 8, "nr_splits": 2}}']) == 0
    assert main(["predict", "--model", str(model), "--data", str(data), "--topk", "3"]) == 0
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--json"]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]  # every stdout line is JSON
    assert len(records) == 1 + 1 + 100 + 1
    assert "xmc: synth: documents" in err and "xmc: rankers level" in err and "xmc: predict" in err
    assert "xmc: label tree" in err
    assert all(line.startswith("xmc: ") for line in err.splitlines())
    assert main(["predict", "--model", str(model), "--data", str(data), "--topk", "3", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 100


@pytest.fixture(scope="module")
def reuters_models(tmp_path_factory, reuters_dir_module):
    """A two-level xr-linear model, an xr-linear-ld one and an accurate ensemble on a reuters slice."""
    root = tmp_path_factory.mktemp("explain")
    common = ["--data", str(reuters_dir_module), "--max-rows", "1500", "--threads", "2", "--quiet"]
    tree = '{"tree": {"max_leaf_size": 12, "nr_splits": 4}}'
    models = {}
    for name, extra in (("xr-linear", ["--params", tree]),
                        ("xr-linear-ld", ["--method", "xr-linear-ld", "--params",
                                          '{"tree": {"max_leaf_size": 12, "nr_splits": 4}, '
                                          '"disentangle": {"max_copies": 3, "min_share": 0.05}}']),
                        ("ensemble", ["--preset", "accurate", "--params", tree])):
        path = root / name
        assert main(["train", "--model", str(path), *common, *extra]) == 0
        models[name] = path
    return models


@pytest.fixture(scope="module")
def reuters_dir_module():
    from conftest import shared_dataset

    return shared_dataset("reuters-21578")


@pytest.mark.parametrize("kind", ["xr-linear", "xr-linear-ld", "ensemble"])
def test_explanation_adds_up_to_the_scores(reuters_models, kind):
    """Every level: the terms' contributions (all of them listed) plus the bias term are the raw
    score; the path's combined score is the label's score in predict (the winning copy's for
    xr-linear-ld; the members' weighted mean for the ensemble)."""
    model = load_model(reuters_models[kind])
    assert model.ranker.tree.depth >= 2 if kind != "ensemble" else model.members[0].ranker.tree.depth >= 2
    res = explain_model(model, TEXT, params=ExplainParams(topk=5, n_terms=10_000))
    P = model.predict([TEXT], topk=5)
    predicted = dict(zip((model.label_names[i] for i in P.indices), P.data))
    assert [e["label"] for e in res["labels"]] == sorted(predicted, key=lambda n: -predicted[n])
    for entry in res["labels"]:
        assert entry["predicted"] is not None
        for m in entry["members"]:
            for path in m["paths"]:
                for lv in path["levels"]:
                    listed = sum(t["contribution"] for t in lv["terms"])
                    assert listed == pytest.approx(lv["terms_sum"], abs=1e-9)
                    assert lv["terms_sum"] + lv["bias"] == pytest.approx(lv["raw"], abs=1e-6)
                    for t in lv["terms"]:
                        assert t["contribution"] == pytest.approx(t["feature"] * t["weight"], rel=1e-9)
                assert path["levels"][-1]["path_score"] == path["score"]
            assert m["score"] == max(p["score"] for p in m["paths"])
        if kind == "ensemble":
            mean = sum(m["weight"] * m["score"] for m in entry["members"])
            assert entry["score"] == pytest.approx(mean, rel=1e-4, abs=1e-6)
        else:
            assert entry["members"][0]["score"] == pytest.approx(predicted[entry["label"]], rel=1e-4, abs=1e-6)
    if kind == "xr-linear-ld":
        assert any(m["copies"] > 1 for e in explain_model(model, TEXT, labels=model.label_names,
                                                          params=ExplainParams(n_terms=1))["labels"]
                   for m in e["members"])


def test_explain_a_named_label_and_the_cli(reuters_models, capsys):
    path = reuters_models["xr-linear"]
    assert main(["explain", "--model", str(path), "--text", TEXT, "--label", "earn", "--label", "wheat",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [e["label"] for e in res["labels"]] == ["earn", "wheat"]
    top = res["labels"][1]["members"][0]["paths"][0]["levels"][-1]["terms"][0]
    assert top["term"] in {t["term"] for t in res["text_terms"]}
    # cluster names list their members' titles: the leaf is the label itself
    assert res["labels"][1]["members"][0]["paths"][0]["levels"][-1]["cluster"] == "wheat"
    assert main(["explain", "--model", str(path), "--text", TEXT, "--topk", "2"]) == 0
    text = capsys.readouterr().out
    assert "level 0" in text and "level 1" in text and "bias" in text
    assert main(["explain", "--model", str(path), "--text", TEXT, "--label", "no-such-label"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xmc: error:") and "no-such-label" in err and len(err.splitlines()) == 1


def test_info_json_round_trips_and_finds_the_last_evaluation(reuters_models, reuters_dir_module, tmp_path, capsys):
    path = reuters_models["xr-linear"]
    db = tmp_path / "h.duckdb"
    assert main(["info", str(path), "--json", "--db", str(db)]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card == json.loads(json.dumps(card)) == model_card(path, db=db)
    model = load_model(path)
    assert card["method"] == "xr-linear" and card["n_labels"] == model.n_labels == 90
    assert card["n_features"] == model.n_features == card["text_featurizer"]["vocabulary"]
    (ranker,) = card["rankers"]
    assert [lv["nodes"] for lv in ranker["levels"]] == model.ranker.tree.level_sizes()
    assert [lv["nnz_W"] for lv in ranker["levels"]] == [w.nnz for w in model.ranker.W]
    assert card["training"]["n_train"] == 1500 and card["training"]["train_s"] > 0
    assert card["model_sha"] == model.params_sha and card["last_evaluation"] is None
    assert card["size_bytes"] > 0 and "labels.txt" in card["files"]
    # the data fingerprint is the training split's (texts and labels)
    from xmc_core.data import load_dataset

    ds = load_dataset(reuters_dir_module, splits=("train",), max_rows=1500)
    assert card["training"]["data_fingerprint"] == data_fingerprint(ds.train.Y, ds.train.texts)
    assert data_fingerprint(ds.train.Y, ds.train.texts[:-1] + ["x"]) != card["training"]["data_fingerprint"]

    assert main(["evaluate", "--model", str(path), "--data", str(reuters_dir_module), "--max-rows", "200",
                 "--json", "--db", str(db)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert main(["info", str(path), "--json", "--db", str(db)]) == 0
    last = json.loads(capsys.readouterr().out)["last_evaluation"]
    assert last["run_id"] == ev["run_id"] and last["split"] == "test"
    assert last["metrics"]["p@1"] == pytest.approx(ev["p@1"], abs=0.01)
    # another model's card does not pick that evaluation up
    assert model_card(reuters_models["ensemble"], db=db)["last_evaluation"] is None
    assert len(model_card(reuters_models["ensemble"])["rankers"]) == 3
    assert main(["info", str(path), "--db", str(db)]) == 0
    text = capsys.readouterr().out
    assert "last evaluation: run " + ev["run_id"] in text and "data fingerprint" in text


def test_info_of_a_folder_that_is_not_a_model(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xmc: error:") and "params.json" in err and len(err.splitlines()) == 1


def test_cluster_names_use_the_most_frequent_titles():
    from xmc_core.explain import cluster_names, cluster_table
    from xmc_core.tree import LabelTree
    from xmc_core.xlinear import XLinearModel
    import scipy.sparse as smat

    leaf = np.array([0, 0, 0, 0, 1, 1])
    tree = LabelTree.from_leaf_assignment(leaf, 2)
    W = [smat.csc_matrix((4, c.nnz), dtype=np.float32) for c in tree.C]
    ranker = XLinearModel(tree, W)
    names = cluster_names(ranker.tree, ["a", "b", "c", "d", "e", "f"], np.array([1, 9, 5, 7, 0, 3]), k=3)
    assert names[0] == ["b / d / c (+1)", "f / e"]
    assert names[-1] == ["a", "b", "c", "d", "e", "f"]
    table = cluster_table(ranker.tree, list("abcdef"), np.array([1, 9, 5, 7, 0, 3]), k=2)
    assert table.rows() == [(0, 0, -1, 4, 22, "b / d (+2)"), (0, 1, -1, 2, 3, "f / e")]


def test_cluster_table_parents_follow_the_tree():
    from xmc_core.explain import cluster_table
    from xmc_core.tree import LabelTree, build_tree
    from conftest import clustered_problem
    from xmc_core.label_embedding import pifa
    from xmc_core.tree import TreeParams

    X, Y = clustered_problem(n=400, n_labels=40)
    tree = build_tree(pifa(X, Y), TreeParams(max_leaf_size=4, nr_splits=2))
    assert tree.depth >= 3
    counts = np.diff(Y.tocsc().indptr)
    table = cluster_table(tree, [f"t{i}" for i in range(40)], counts)
    assert table.height == sum(tree.level_sizes()[:-1])
    for t in range(1, tree.depth - 1):
        level = table.filter(table["level"] == t)
        above = table.filter(table["level"] == t - 1)
        # each cluster's labels are part of its parent's, and the children's sizes add up
        for parent, size in zip(above["cluster"], above["labels"]):
            assert level.filter(level["parent"] == parent)["labels"].sum() == size
    assert table.filter(table["level"] == 0)["train_positives"].sum() == counts.sum()
    assert cluster_table(tree, [f"t{i}" for i in range(40)], counts, max_rows=3).height == 3
