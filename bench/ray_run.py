#!/usr/bin/env python3
"""Train XR-Linear with the Ray engine on a local multi-node Ray cluster; print ONE JSON line.

    .venv/bin/python bench/ray_run.py --train-X X.trn.npz --train-Y Y.trn.npz --test-X X.tst.npz \
        --test-Y Y.tst.npz [--nodes 2] [--cpus-per-node 1] [--split-level 1] [--params '{...}']

The cluster is `ray.cluster_utils.Cluster` (--nodes raylets on this machine, each with its own
object store and workers): what `ray start` gives on --nodes machines, without the network. X goes
into the object store once and the driver keeps no private copy (it reads the stored one).

Memory per node, sampled every --interval seconds during training: the proportional set size (PSS,
/proc/PID/smaps_rollup) summed over the node's processes: its raylet (which holds the node's
object store), the raylet's worker processes and, on the head node, the GCS and the other head
processes plus this driver. PSS splits a shared page among the processes that map it, so the
object store is counted once, on its node. The row reports each node's peak of that sum; the
largest is "peak_node_mb". train_s covers PIFA + tree + rankers + assembly (Ray start excluded),
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
        self.samples = 0
        self._stop_evt = threading.Event()

    def run(self):
        while not self._stop_evt.is_set():
            kids = _children()
            for i, roots in enumerate(self.roots):
                pids = _tree(roots, kids)
                if i == 0:
                    pids.add(self.driver)  # the driver runs on the head node
                else:
                    pids.discard(self.driver)
                self.peaks[i] = max(self.peaks[i], sum(_pss_mb(p) for p in pids))
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

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus_per_node,
                                                            "include_dashboard": False})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=args.cpus_per_node)
    ray.init(address=cluster.address, log_to_driver=False)
    nodes = [cluster.head_node, *cluster.worker_nodes]
    roots = [[p.process.pid for _, ps in n.all_processes.items() for p in ps] for n in nodes]

    # X as bench/ours_run.py takes it: rows l2-normalized already (featurized as the peers get it)
    Ytr = smat.load_npz(args.train_Y).tocsr().astype(np.float32)
    Xtr = smat.load_npz(args.train_X).tocsr().astype(np.float32)
    Xtr.sort_indices()
    X_ref = ray.put(Xtr)
    del Xtr  # the driver reads the stored X (zero-copy) from here on

    sampler = NodeSampler(roots, args.interval, os.getpid())
    sampler.start()
    stages = {}
    subtrees = []

    def log(rec):
        if rec["stage"] == "subtree":
            subtrees.append(rec)
        else:
            stages[rec["stage"]] = round(rec["seconds"], 3)

    t0 = time.perf_counter()
    tree, ranker = train_xlinear_ray(X_ref, Ytr, params, RayParams(split_level=args.split_level,
                                                                  cpus_per_task=args.cpus_per_node), log=log)
    train_s = time.perf_counter() - t0
    sampler.stop()
    ray.shutdown()
    cluster.shutdown()

    # prediction input as XmcModel.featurize (bench/ours_run.py's path) makes it: rows l2-normalized
    Xte = l2_normalize_rows(smat.load_npz(args.test_X).tocsr().astype(np.float32))
    Yte = smat.load_npz(args.test_Y).tocsr()
    t0 = time.perf_counter()
    P = ranker.predict(Xte, beam_size=args.beam_size, only_topk=10)
    predict_s = time.perf_counter() - t0
    res = ranking_metrics(Yte, P)
    print(json.dumps({
        "peer": "xmc-ray", "train_s": round(train_s, 4), "predict_s": round(predict_s, 4),
        "peak_node_mb": round(max(sampler.peaks), 1), "node_peak_mb": [round(v, 1) for v in sampler.peaks],
        "samples": sampler.samples, "interval_s": args.interval,
        "p@1": round(res["p"][1], 4), "p@3": round(res["p"][3], 4), "p@5": round(res["p"][5], 4),
        "n_test": int(Yte.shape[0]), "n_train": int(Ytr.shape[0]), "n_labels": int(Ytr.shape[1]),
        "nodes": args.nodes, "cpus_per_node": args.cpus_per_node, "split_level": args.split_level,
        "train_detail_s": stages, "tree_levels": tree.level_sizes(),
        "subtrees": [{k: r[k] for k in ("root", "n_labels", "seconds", "worker_peak_rss_mb")} for r in subtrees],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
