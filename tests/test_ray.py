"""The Ray engine on a local two-node cluster (`ray.cluster_utils.Cluster`, 2 nodes × 1 CPU):
the distributed model equals the single-process one, a killed worker is retried into the same
model, a task's own error reaches the caller as itself, and batch prediction equals `predict`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.sparse as smat

from conftest import require_module

ray = require_module("ray")

from xmc_core.engine_ray import FAULT_ENV, RayEngine, RayParams, RayRunError, predict_files_ray  # noqa: E402
from xmc_core.model import XRLinearParams, load_model, train_xr_linear  # noqa: E402
from xmc_core.synth import SynthParams, generate  # noqa: E402

PARAMS = {"tree": {"max_leaf_size": 20, "nr_splits": 4, "threads": 1}, "ranker": {"threads": 1}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    # the fault hook's marker exists: no task dies until a test removes it
    marker = tmp_path_factory.mktemp("fault") / "killed"
    marker.touch()
    os.environ[FAULT_ENV] = str(marker)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, log_to_driver=False)
    yield marker
    ray.shutdown()
    c.shutdown()
    os.environ.pop(FAULT_ENV, None)


@pytest.fixture(scope="module")
def problem():
    Xtr, Ytr, Xte, Yte = generate(SynthParams(n_labels=600, n_train=1500, n_test=300, n_features=2000, seed=3))
    names = [f"l{i}" for i in range(Ytr.shape[1])]
    local = train_xr_linear(Ytr, names, XRLinearParams().merged(PARAMS), X=Xtr)
    return Xtr, Ytr, Xte, names, local


def _same_model(a, b):
    ta, tb = a.ranker.tree, b.ranker.tree
    assert ta.level_sizes() == tb.level_sizes()
    for Ca, Cb in zip(ta.C, tb.C):
        assert np.array_equal(Ca.indptr, Cb.indptr) and np.array_equal(Ca.indices, Cb.indices)
    assert len(a.ranker.W) == len(b.ranker.W)
    for Wa, Wb in zip(a.ranker.W, b.ranker.W):
        assert Wa.shape == Wb.shape
        assert np.array_equal(Wa.indptr, Wb.indptr) and np.array_equal(Wa.indices, Wb.indices)
        assert np.array_equal(Wa.data, Wb.data)  # bit for bit


@pytest.mark.parametrize("split_level", [1, 2])
def test_distributed_model_equals_local(cluster, problem, split_level):
    Xtr, Ytr, _, names, local = problem
    recs = []
    dist = train_xr_linear(Ytr, names, XRLinearParams().merged(PARAMS), X=Xtr, log=recs.append,
                           engine=RayEngine(RayParams(split_level=split_level)))
    assert local.ranker.tree.level_sizes() == [2, 8, 32, 600]
    _same_model(local, dist)
    subtrees = [r for r in recs if r["stage"] == "subtree"]
    assert len(subtrees) == [2, 8][split_level - 1]
    assert sum(r["n_labels"] for r in subtrees) == 600
    # the tasks ran on both nodes' workers (each reports its own process's peak)
    assert all(r["worker_peak_rss_mb"] > 0 for r in subtrees)


def test_killed_worker_is_retried_into_the_same_model(cluster, problem):
    Xtr, Ytr, _, names, local = problem
    cluster.unlink()  # the next sub-tree task SIGKILLs its worker once
    dist = train_xr_linear(Ytr, names, XRLinearParams().merged(PARAMS), X=Xtr,
                           engine=RayEngine(RayParams(max_retries=2)))
    assert cluster.exists()  # a task did die
    _same_model(local, dist)


def test_killed_worker_without_retries_fails_the_run(cluster, problem):
    Xtr, Ytr, _, names, _ = problem
    cluster.unlink()
    with pytest.raises(RayRunError, match=r"^a Ray task failed: \w*(Crashed|Died|Worker)\w*: ") as err:
        train_xr_linear(Ytr, names, XRLinearParams().merged(PARAMS), X=Xtr,
                        engine=RayEngine(RayParams(max_retries=0)))
    assert "\n" not in str(err.value)
    assert cluster.exists()


def test_a_tasks_error_is_raised_as_itself(cluster, problem):
    Xtr, Ytr, _, names, _ = problem
    X = Xtr.copy().astype(np.float32)
    X.data[X.indptr[7]] = np.nan  # row 7
    with pytest.raises(ValueError) as err:
        train_xr_linear(Ytr, names, XRLinearParams().merged(PARAMS), X=X, engine=RayEngine())
    msg = str(err.value)
    assert msg.startswith("X row 7: a non-finite feature value"), msg
    assert "Traceback" not in msg and "ray" not in msg.lower()
    assert type(err.value) is ValueError


def test_man_negatives_are_refused(cluster, problem):
    Xtr, Ytr, _, names, _ = problem
    params = XRLinearParams().merged({**PARAMS, "ranker": {"negative_sampling": "tfn+man"}})
    with pytest.raises(ValueError, match="MAN negatives"):
        train_xr_linear(Ytr, names, params, X=Xtr, engine=RayEngine())


def test_batch_prediction_equals_predict(cluster, problem, tmp_path):
    Xtr, Ytr, Xte, names, local = problem
    folder = local.save(tmp_path / "model")
    model = load_model(folder)
    shards = [Xte[i:i + 70] for i in range(0, Xte.shape[0], 70)]  # 5 shards, the last short
    res = predict_files_ray(folder, shards, tmp_path / "preds", n_actors=2, topk=5)
    assert res["n_docs"] == Xte.shape[0] and res["n_shards"] == 5 and res["docs_per_s"] > 0
    import polars as pl

    df = pl.concat([pl.read_parquet(f) for f in res["files"]])
    assert df["doc"].to_list() == list(range(Xte.shape[0]))
    ref = model.predict_labels(Xte, topk=5)
    for row, labels, scores in zip(ref, df["labels"].to_list(), df["scores"].to_list()):
        assert labels == [n for n, _ in row]
        assert np.allclose(scores, [s for _, s in row], rtol=0, atol=1e-6)
    # a second run replaces the folder it wrote; a folder xmc did not write is refused
    predict_files_ray(folder, shards[:1], tmp_path / "preds", n_actors=1)
    assert sorted(p.name for p in (tmp_path / "preds").glob("*.parquet")) == ["part-00000.parquet"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        predict_files_ray(folder, shards[:1], other, n_actors=1)
    assert (other / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("split_level", [1, 2, 3])
def test_rankers_of_a_given_disentangled_tree_equal_local(cluster, problem, split_level):
    """The Dagster path: the tree is an input (here with label copies: a label in two leaf
    clusters of different sub-trees); the rankers equal XLinearModel.train's bit for bit."""
    from xmc_core.engine_ray import train_rankers_ray
    from xmc_core.tree import LabelTree
    from xmc_core.xlinear import XLinearModel

    Xtr, Ytr, _, _, local = problem
    tree = local.ranker.tree
    leaf = tree.C[-1].tolil()
    leaf[5, tree.C[-1].shape[1] - 1] = 1  # label 5 copied into the last leaf cluster (another sub-tree)
    leaf[17, 0] = 1
    tree = LabelTree([*tree.C[:-1], smat.csc_matrix(leaf)])
    params = XRLinearParams().merged(PARAMS)
    from xmc_core.model import fit_rankers  # noqa: F401  (the asset's call path is fit_rankers → engine)

    ref = XLinearModel.train(Xtr, Ytr, tree, params.ranker, params.pred)
    dist = train_rankers_ray(Xtr, Ytr, tree, params, RayParams(split_level=split_level))
    for Wa, Wb in zip(ref.W, dist.W):
        assert Wa.shape == Wb.shape
        assert np.array_equal(Wa.indptr, Wb.indptr) and np.array_equal(Wa.indices, Wb.indices)
        assert np.array_equal(Wa.data, Wb.data)


def test_dagster_rankers_on_ray_and_batch_predictions(cluster, reuters_dir, tmp_path):
    """The code location with the ray_engine resource enabled: `rankers` trains its sub-trees as
    Ray tasks (the weights equal XLinearModel.train on the same artifacts), and
    `batch_predictions` scores an incoming batch on actors, equal to the model's own predictions."""
    import gzip

    from dagster import DagsterInstance, build_sensor_context, materialize

    from xmc_assets.assets import xr_linear_assets
    from xmc_assets.batch import IncomingBatches, batch_partitions, batch_predictions, incoming_batches_sensor
    from xmc_assets.checks import xr_linear_checks
    from xmc_assets.partitions import dataset_partitions
    from xmc_assets.resources import ArtifactStore, DataRoot, EvaluationDB, RayEngineResource, XmcSettings
    from xmc_core.tree import LabelTree
    from xmc_core.xlinear import XLinearModel

    ds = "reuters-21578"
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(dataset_partitions.name, [ds])
    resources = {
        "data_root": DataRoot(path=str(reuters_dir.parent), synthetic_dir=str(tmp_path / "synthetic")),
        "artifacts": ArtifactStore(base_dir=str(tmp_path / "artifacts")),
        "evaluation_db": EvaluationDB(path=str(tmp_path / "xmc.duckdb")),
        "xmc_settings": XmcSettings(max_rows=600, params_json=json.dumps({"tree": {"max_leaf_size": 10}})),
        "ray_engine": RayEngineResource(enabled=True, actors=2),
        "incoming": IncomingBatches(root=str(tmp_path / "incoming")),
    }
    result = materialize([*xr_linear_assets, *xr_linear_checks], instance=instance, resources=resources,
                         partition_key=ds)
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata
            for e in result.get_asset_materialization_events()}["rankers"]
    assert meta["engine"].value == "ray" and meta["ray_tasks"].value >= 2

    art = tmp_path / "artifacts" / ds
    model = load_model(art / "model")
    X = smat.load_npz(art / "tfidf" / "X_train.npz").tocsr()
    Y = smat.load_npz(art / "corpus" / "Y_train.npz").tocsr()
    tree = LabelTree.from_arrays(np.load(art / "disentangled_tree" / "tree.npz"))
    params = model.params
    ref = XLinearModel.train(X, Y, tree, params.ranker, params.pred)
    for Wa, Wb in zip(ref.W, model.ranker.W):
        assert np.array_equal(Wa.indices, Wb.indices) and np.array_equal(Wa.data, Wb.data)

    with gzip.open(reuters_dir / "test_texts.txt.gz", "rt", encoding="utf-8") as f:
        texts = [next(f).rstrip("\n") for _ in range(40)]
    (tmp_path / "incoming" / ds).mkdir(parents=True)
    (tmp_path / "incoming" / ds / "b1.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    with build_sensor_context(instance=instance, resources={"incoming": resources["incoming"]}) as context:
        req = incoming_batches_sensor(context)
    assert [r.partition_key for r in req.run_requests] == [f"{ds}/b1"]
    instance.add_dynamic_partitions(batch_partitions.name, [f"{ds}/b1"])
    out = materialize([batch_predictions], instance=instance, resources=resources, partition_key=f"{ds}/b1")
    assert out.success
    import polars as pl

    df = pl.read_parquet(sorted((art / "batch_predictions" / "b1").glob("part-*.parquet")))
    assert df["doc"].to_list() == list(range(40))
    want = model.predict_labels(texts, topk=5)
    assert df["labels"].to_list() == [[n for n, _ in r] for r in want]



def test_cli_engine_ray_train_and_predict(cluster, tmp_path, capsys):
    """`xmc train --engine ray` gives the model `xmc train` gives; `xmc predict --engine ray`
    writes the shards of `xmc predict`'s lines; wrong combinations are one-line errors."""
    from xmc_core.cli import main
    from xmc_core.synth import write_synth

    data = tmp_path / "syn"
    write_synth(data, SynthParams(n_labels=300, n_train=800, n_test=150, n_features=1500, seed=5))
    params = json.dumps(PARAMS)
    assert main(["train", "--data", str(data), "--model", str(tmp_path / "m1"), "--params", params]) == 0
    assert main(["train", "--data", str(data), "--model", str(tmp_path / "m2"), "--params", params,
                 "--engine", "ray"]) == 0
    out = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert out[-1]["engine"] == "ray" and "engine" not in out[0]
    _same_model(load_model(tmp_path / "m1"), load_model(tmp_path / "m2"))

    assert main(["predict", "--model", str(tmp_path / "m2"), "--data", str(data)]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert main(["predict", "--model", str(tmp_path / "m2"), "--data", str(data), "--engine", "ray",
                 "--out", str(tmp_path / "preds"), "--shard-rows", "40"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_docs"] == 150 and summary["n_shards"] == 4 and summary["engine"] == "ray"
    import polars as pl

    df = pl.concat([pl.read_parquet(tmp_path / "preds" / f"part-{i:05d}.parquet") for i in range(4)])
    assert df["labels"].to_list() == [ln["labels"] for ln in lines]

    (tmp_path / "notmine").mkdir()
    (tmp_path / "notmine" / "x.txt").write_text("keep")
    for argv, why in (
        (["predict", "--model", str(tmp_path / "m2"), "--data", str(data), "--engine", "ray",
          "--out", str(tmp_path / "notmine")], "--out"),
        (["predict", "--model", str(tmp_path / "m2"), "--data", str(data), "--engine", "ray"], "--out"),
        (["train", "--data", str(data), "--model", str(tmp_path / "m3"), "--engine", "ray",
          "--params", json.dumps({"ranker": {"negative_sampling": "man"}})], "MAN"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("xmc: error:") and why in err[0], err
    assert (tmp_path / "notmine" / "x.txt").read_text() == "keep"



def test_an_unreachable_ray_address_fails_fast_in_one_line():
    """ray.init retries a dead address for minutes; the session checks it first."""
    import socket
    import time

    from xmc_core.engine_ray import _check_reachable

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ConnectionError, match=r"nothing accepts connections there") as err:
            _check_reachable(address, timeout=2.0)
        assert "\n" not in str(err.value)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ConnectionError, match="expected HOST:PORT"):
        _check_reachable("localhost")


def test_lost_node_is_retried_into_the_same_model(problem, tmp_path):
    """A node (its raylet, object store and workers) killed mid-task: Ray reschedules the task on
    the nodes left and the model is the same. Its own cluster: head + 2 nodes × 1 CPU, the last
    one doomed (`engine_ray.FAULT_NODE_RESOURCE`)."""
    from ray.cluster_utils import Cluster

    from xmc_core.engine_ray import FAULT_NODE_ENV, FAULT_NODE_RESOURCE

    Xtr, Ytr, _, names, local = problem
    if ray.is_initialized():  # the module's cluster: this test needs one it may damage
        ray.shutdown()
    marker = tmp_path / "node-killed"
    os.environ[FAULT_NODE_ENV] = str(marker)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        c.add_node(num_cpus=1)
        doomed = c.add_node(num_cpus=1, resources={FAULT_NODE_RESOURCE: 1})
        ray.init(address=c.address, log_to_driver=False)
        c.wait_for_nodes()
        dist = train_xr_linear(Ytr, names, XRLinearParams().merged(PARAMS), X=Xtr,
                               engine=RayEngine(RayParams(split_level=2, max_retries=3)))
        assert marker.exists()  # a task did run there
        import time

        for _ in range(60):  # the GCS marks a node dead after missed health checks
            dead = [n["NodeID"] for n in ray.nodes() if not n["Alive"]]
            if dead:
                break
            time.sleep(1)
        assert dead == [doomed.node_id]  # and its node died
        _same_model(local, dist)
    finally:
        os.environ.pop(FAULT_NODE_ENV, None)
        ray.shutdown()
        c.shutdown()
