#!/usr/bin/env python3
"""Train XR-Linear with the Ray engine on a local multi-node Ray cluster; print ONE JSON line.

    .venv/bin/python bench/ray_run.py --train-X X.trn.npz --train-Y Y.trn.npz --test-X X.tst.npz \
        --test-Y Y.tst.npz [--nodes 2] [--cpus-per-node 1] [--head-cpus 0] [--split-level 1] \
        [--chunks-per-worker 8] [--params '{...}']

The cluster is `ray.cluster_utils.Cluster`: a head node with --head-cpus CPUs for tasks (0 by
default: it runs the driver only, as the README's RayCluster manifest) and --nodes task nodes of
--cpus-per-node CPUs, each a raylet on this machine with its own object store and workers: what
`ray start` gives on that many machines, without the network. X goes into the object store once
and the driver keeps no reference of its own (it reads the stored one), so the store frees it
once the tasks are done.

Memory per node, sampled every --interval seconds during training: the proportional set size (PSS,
/proc/PID/smaps_rollup) summed over the node's processes: its raylet (which holds the node's
object store), the raylet's worker processes and, on the head node, the GCS and the other head
processes plus this driver. PSS splits a shared page among the processes that map it, so the
object store is counted once, on its node. The row reports each node's peak of that sum; the
largest is "peak_node_mb", "node_peak_at_s" says when each peaked and "node_series_mb" gives
each node's largest sum per 5-second window. train_s covers PIFA + tree + rankers + assembly (Ray start excluded),
as bench/ours_run.py's does; P@k is computed after training, outside the sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from ours_run import add_data_args, bench_params  # this folder: the options and settings of every bench run


#: what a task record of the engine's log keeps in the row
TASK_KEYS = ("stage", "depth", "node", "root", "level", "parents", "n_labels", "nnz_W", "seconds",
             "worker_peak_rss_mb")
#: seconds per point of the per-node memory series in the row (each point the window's largest sum)
SERIES_S = 5.0


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(pids: list[int], kids: dict[int, list[int]]) -> set[int]:
    out, stack = set(), list(pids)
    while stack:
        p = stack.pop()
        if p in out:
            continue
        out.add(p)
        stack.extend(kids.get(p, []))
    return out


class NodeSampler(threading.Thread):
    """Peak PSS sum per node (MiB), sampled every `interval` s until stopped."""

    def __init__(self, node_roots: list[list[int]], interval: float, driver_pid: int):
        super().__init__(daemon=True)
        self.roots, self.interval, self.driver = node_roots, interval, driver_pid
        self.peaks = [0.0] * len(node_roots)
        self.peak_at = [0.0] * len(node_roots)  # seconds after the start
        self.series: list[list[float]] = []  # [t, MiB of node 0, node 1, ...] per SERIES_S window
        self.samples = 0
        self._stop_evt = threading.Event()

    def run(self):
        t0 = time.perf_counter()
        while not self._stop_evt.is_set():
            kids = _children()
            now = time.perf_counter() - t0
            if not self.series or now >= self.series[-1][0] + SERIES_S:
                self.series.append([round(now, 1)] + [0.0] * len(self.roots))
            for i, roots in enumerate(self.roots):
                pids = _tree(roots, kids)
                if i == 0:
                    pids.add(self.driver)  # the driver runs on the head node
                else:
                    pids.discard(self.driver)
                mb = sum(_pss_mb(p) for p in pids)
                if mb > self.peaks[i]:
                    self.peaks[i], self.peak_at[i] = mb, round(now, 1)
                self.series[-1][i + 1] = round(max(self.series[-1][i + 1], mb), 1)
            self.samples += 1
            self._stop_evt.wait(self.interval)

    def stop(self):
        self._stop_evt.set()
        self.join()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    add_data_args(ap)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--split-level", type=int, default=1)
    ap.add_argument("--head-cpus", type=int, default=0,
                    help="CPUs of the head node, where the driver runs (0: a head of its own beside the "
                         "--nodes task nodes; > 0: the head is one of the --nodes)")
    ap.add_argument("--chunks-per-worker", type=int, default=8, help="RayParams.chunks_per_worker")
    ap.add_argument("--interval", type=float, default=0.25, help="memory sampling interval (s)")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    import numpy as np
    import ray
    import scipy.sparse as smat
    from ray.cluster_utils import Cluster

    from xmc_core.engine_ray import RayParams, train_xlinear_ray
    from xmc_core.metrics import ranking_metrics
    from xmc_core.sparse import l2_normalize_rows

    params = bench_params(args.params, args.cpus_per_node, args.beam_size)

    # the head runs the driver and no tasks (num-cpus 0, as the README's RayCluster manifest), or
    # is one of the --nodes when --head-cpus is given
    head_cpus = args.head_cpus
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    for _ in range(args.nodes - (1 if head_cpus else 0)):
        cluster.add_node(num_cpus=args.cpus_per_node)
    ray.init(address=cluster.address, log_to_driver=False)
    nodes = [cluster.head_node, *cluster.worker_nodes]
    roots = [[p.process.pid for _, ps in n.all_processes.items() for p in ps] for n in nodes]

    # X as bench/ours_run.py takes it: rows l2-normalized already (featurized as the peers get it)
    Ytr = smat.load_npz(args.train_Y).tocsr().astype(np.float32)
    Xtr = smat.load_npz(args.train_X).tocsr().astype(np.float32)
    Xtr.sort_indices()
    # the driver reads the stored X (zero-copy) from here on, and holds no reference of its own
    # to it, so the store frees X once the tasks are done, before the model is assembled
    X_box = [ray.put(Xtr)]
    del Xtr

    sampler = NodeSampler(roots, args.interval, os.getpid())
    sampler.start()
    stages = {}
    tasks = []  # one record per Ray task: tree_node, subtree, chunk

    def log(rec):
        if "worker_peak_rss_mb" in rec:
            tasks.append({k: v for k, v in rec.items() if k in TASK_KEYS})
        else:
            stages[rec["stage"]] = round(rec["seconds"], 3)

    t0 = time.perf_counter()
    tree, ranker = train_xlinear_ray(X_box.pop(), Ytr, params, RayParams(split_level=args.split_level,
                                                                  cpus_per_task=args.cpus_per_node,
                                                                  chunks_per_worker=args.chunks_per_worker), log=log)
    train_s = time.perf_counter() - t0
    sampler.stop()
    ray.shutdown()
    cluster.shutdown()

    # prediction input as XmcModel.featurize (bench/ours_run.py's path) makes it: rows l2-normalized
    Xte = l2_normalize_rows(smat.load_npz(args.test_X).tocsr().astype(np.float32))
    Yte = smat.load_npz(args.test_Y).tocsr()
    # timed as bench/ours_run.py times it: the beam layout built first (prepare_s), then a warm-up
    # and the median of three calls
    from timing import timed_predictions

    t0 = time.perf_counter()
    ranker.prepare()
    prepare_s = time.perf_counter() - t0
    P, predict_s, _ = timed_predictions(lambda X: ranker.predict(X, beam_size=args.beam_size, only_topk=10), Xte)
    res = ranking_metrics(Yte, P)
    print(json.dumps({
        "peer": "xmc-ray", "train_s": round(train_s, 4), "predict_s": round(predict_s, 4),
        "prepare_s": round(prepare_s, 4), "peak_node_mb": round(max(sampler.peaks), 1), "node_peak_mb": [round(v, 1) for v in sampler.peaks],
        "node_peak_at_s": sampler.peak_at, "node_series_mb": sampler.series,
        "samples": sampler.samples, "interval_s": args.interval,
        "p@1": round(res["p"][1], 4), "p@3": round(res["p"][3], 4), "p@5": round(res["p"][5], 4),
        "n_test": int(Yte.shape[0]), "n_train": int(Ytr.shape[0]), "n_labels": int(Ytr.shape[1]),
        "nodes": args.nodes, "cpus_per_node": args.cpus_per_node, "head_cpus": head_cpus,
        "split_level": args.split_level, "chunks_per_worker": args.chunks_per_worker,
        "train_detail_s": stages, "tree_levels": tree.level_sizes(),
        "tasks": tasks,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
