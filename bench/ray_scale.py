#!/usr/bin/env python3
"""Ray engine against one process, side by side on the same data, and a scaling model.

    .venv/bin/python bench/ray_scale.py --data bench/out/data/synth-1000000l-1000000d/xmc \
        [--nodes 2] [--cpus-per-node 1] [--threads 2] [--split-level 1] [--model-split-level 2]
    .venv/bin/python bench/ray_scale.py --model-from RUN_ID     # the scaling model of a recorded run

Per dataset folder (X.trn.npz, Y.trn.npz, X.tst.npz, Y.tst.npz, as bench/compare_peers.py
prepares them): `bench/ours_run.py` (one process, --threads threads) and `bench/ray_run.py`
(--nodes local Ray nodes of --cpus-per-node CPUs, `ray.cluster_utils.Cluster`), one after the
other. Rows: train_s, predict_s, P@1/3/5 and peak_rss_mb, which is the single process's training
peak (its PIFA, tree and ranker stages; the test split it also holds is included) or, for Ray,
the largest node's peak (PSS of the node's processes plus its object store, bench/ray_run.py).

Scaling model (--model-split-level, one more Ray run; or --model-from a recorded run): the
measured tasks (top-of-tree nodes, sub-tree clusterings, ranker chunks) list-scheduled with their
dependencies over W = 2, 8, 32, 128 workers, plus the driver's assembly, give the makespan; the
serial part is the chain of top-of-tree nodes from the root's split down, which no worker count
shortens. Per-worker memory is the largest task's worker peak plus the stored X and Y each node
maps. 10M labels are extrapolated, not measured: top-of-tree nodes and top-level chunks ten times
as long (they cover all labels or all documents), ten times as many sub-trees and lower chunks of
the same sizes.
A table on stdout, rows in DuckDB `benchmark` (bench/record.py), a plot in bench/out/.
"""

from __future__ import annotations

import argparse
import heapq
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def _run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"ray_scale: {' '.join(cmd[:3])} failed (exit {proc.returncode})")
    return json.loads(lines[-1])


def _files(d: Path) -> list[str]:
    return ["--train-X", str(d / "X.trn.npz"), "--train-Y", str(d / "Y.trn.npz"),
            "--test-X", str(d / "X.tst.npz"), "--test-Y", str(d / "Y.tst.npz")]


def list_schedule(durations: list[float], deps: list[list[int]], workers: int) -> float:
    """Makespan of tasks with dependencies on `workers` machines: whenever a machine is free it
    takes the longest ready task (as the engine submits its chunks), a task is ready when the
    tasks it depends on have finished."""
    n = len(durations)
    waiting = [len(d) for d in deps]
    children: list[list[int]] = [[] for _ in range(n)]
    for i, ds in enumerate(deps):
        for j in ds:
            children[j].append(i)
    ready = [(-durations[i], i) for i in range(n) if not waiting[i]]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []
    now, idle, done = 0.0, workers, 0
    while done < n:
        while ready and idle:
            _, i = heapq.heappop(ready)
            heapq.heappush(running, (now + durations[i], i))
            idle -= 1
        now, i = heapq.heappop(running)
        idle += 1
        done += 1
        for c in children[i]:
            waiting[c] -= 1
            if not waiting[c]:
                heapq.heappush(ready, (-durations[c], c))
    return now


def task_graph(ray_row: dict, scale: int = 1) -> tuple[list[float], list[list[int]]]:
    """The engine's tasks of a recorded run as (seconds, dependencies): a tree node after its
    parent, a sub-tree after its root's parent, the top levels' ranker chunks after the whole
    top of the tree, the others after every sub-tree. scale > 1 extrapolates to `scale` times
    the labels and documents: top-of-tree nodes and top-level chunks `scale` times as long (they
    cover all labels or all documents), sub-trees and the lower chunks `scale` times as many."""
    if "tasks" not in ray_row:
        raise SystemExit("ray_scale: this run predates the task records (bench/ray_run.py 'tasks'); run it again")
    recs = ray_row["tasks"]
    s = min(ray_row["split_level"], len(ray_row["tree_levels"]) - 1)
    dur: list[float] = []
    deps: list[list[int]] = []

    def add(sec, on):
        dur.append(sec)
        deps.append(on)
        return len(dur) - 1

    node_id = {}
    for r in sorted((r for r in recs if r["stage"] == "tree_node"), key=lambda r: r["depth"]):
        d, n = r["depth"], r["node"]
        node_id[(d, n)] = add(r["seconds"] * scale, [node_id[(d - 1, n >> 1)]] if d else [])
    b = 1 + max(d for d, _ in node_id)
    top_done = add(0.0, list(node_id.values()))
    subs = [add(r["seconds"], [node_id[(b - 1, r["root"] >> 1)]])
            for r in recs if r["stage"] == "subtree" for _ in range(scale)]
    subs_done = add(0.0, subs)
    for r in recs:
        if r["stage"] == "chunk" and r["level"] < s:
            add(r["seconds"] * scale, [top_done])
        elif r["stage"] == "chunk":
            for _ in range(scale):
                add(r["seconds"], [subs_done])
    return dur, deps


def scaling_table(ray_row: dict, stored_mb: float) -> list[dict]:
    """Makespan and per-worker memory at 2..128 workers, measured (1M) and extrapolated (10M).

    Makespan: the recorded tasks list-scheduled with their dependencies (`task_graph`,
    `list_schedule`), plus the driver's assembly. serial_s: what no worker count shortens, the
    longest chain of top-of-tree nodes (the root's split first) plus the assembly. Per-worker
    memory: the largest task's worker peak plus the stored X and Y a node maps."""
    d = ray_row["train_detail_s"]
    worker_mb = max(t["worker_peak_rss_mb"] for t in ray_row["tasks"])
    rows = []
    for scale, label in ((1, "measured tasks"), (10, "extrapolated x10")):
        dur, deps = task_graph(ray_row, scale)
        chain = [0.0] * len(dur)
        for i in range(len(dur)):  # tasks are listed after what they depend on
            chain[i] = dur[i] + max((chain[j] for j in deps[i]), default=0.0)
        n_nodes = sum(1 for r in ray_row["tasks"] if r["stage"] == "tree_node")
        serial = max(chain[:n_nodes]) + d.get("assemble", 0) * scale
        for W in (2, 8, 32, 128):
            span = list_schedule(dur, deps, W) + d.get("assemble", 0) * scale
            rows.append({"labels": ray_row["n_labels"] * scale, "basis": label, "workers": W,
                         "tasks": sum(1 for x in dur if x > 0), "serial_s": round(serial, 1),
                         "makespan_s": round(span, 1), "speedup_vs_1": round(sum(dur) / span, 2),
                         "worker_mb": round(worker_mb + stored_mb * scale, 0)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=None)
    ap.add_argument("--model-from", default=None, metavar="RUN_ID",
                    help="only the scaling model, from the xmc-ray rows of a recorded run (bench/results/RUN_ID.csv)")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split-level", type=int, default=1)
    ap.add_argument("--model-split-level", type=int, default=None,
                    help="also run Ray at this split level and take the scaling model from it (default: "
                         "from the --split-level run)")
    ap.add_argument("--params", default="{}")
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    args = ap.parse_args(argv)
    from record import Run, shown

    run = Run("ray", settings=vars(args))
    if args.model_from:
        return model_from(args, run)
    if not args.data:
        ap.error("give --data DIR ... (or --model-from RUN_ID)")
    py = sys.executable
    rows, table = [], []
    for data in args.data:
        d = Path(data)
        name = d.name
        single = _run([py, str(REPO / "bench" / "ours_run.py"), *_files(d), "--threads", str(args.threads),
                       "--params", args.params])
        sp = single["stage_peak_mb"]
        single_peak = max(v for k, v in sp.items() if k.startswith(("label_", "rankers")) and v)
        dist = _run([py, str(REPO / "bench" / "ray_run.py"), *_files(d), "--nodes", str(args.nodes),
                     "--cpus-per-node", str(args.cpus_per_node), "--split-level", str(args.split_level),
                     "--params", args.params])
        for sys_name, r, peak, threads in (("xmc", single, single_peak, args.threads),
                                           ("xmc-ray", dist, dist["peak_node_mb"], args.nodes * args.cpus_per_node)):
            rows.append({"bench": "ray-vs-single", "dataset": name, "system": sys_name, "threads": threads,
                         "n_labels": r["n_labels"], "n_train": r["n_train"], "n_test": r["n_test"],
                         "train_s": r["train_s"], "predict_s": r["predict_s"], "peak_rss_mb": peak,
                         "p1": r["p@1"], "p3": r["p@3"], "p5": r["p@5"], "extra": r})
        table.append((name, single, single_peak, dist))
        fine = dist
        if args.model_split_level:
            fine = _run([py, str(REPO / "bench" / "ray_run.py"), *_files(d), "--nodes", str(args.nodes),
                         "--cpus-per-node", str(args.cpus_per_node), "--split-level", str(args.model_split_level),
                         "--params", args.params])
            rows.append({"bench": "ray-vs-single", "dataset": name, "system": f"xmc-ray-split{args.model_split_level}",
                         "threads": args.nodes * args.cpus_per_node, "n_labels": fine["n_labels"],
                         "n_train": fine["n_train"], "n_test": fine["n_test"], "train_s": fine["train_s"],
                         "predict_s": fine["predict_s"], "peak_rss_mb": fine["peak_node_mb"], "p1": fine["p@1"],
                         "p3": fine["p@3"], "p5": fine["p@5"], "extra": fine})
        # the scaling model of the finer run when there is one, else of the run above
        stored_mb = sum((d / f).stat().st_size for f in ("X.trn.npz", "Y.trn.npz")) / 2**20
        model = scaling_table(fine, stored_mb)
        for m in model:
            rows.append({"bench": "ray-scaling-model", "dataset": name, "system": f"model-{m['workers']}w-{m['labels']}l",
                         "threads": m["workers"], "n_labels": m["labels"], "train_s": m["makespan_s"],
                         "peak_rss_mb": m["worker_mb"], "extra": m})
        _print_model(name, model)
        _plot(model, REPO / "bench" / "out" / f"ray_scaling_{name}.png")

    print(f"\n{'dataset':<34} {'train s (1p / ray)':>20} {'ratio':>6} {'peak MB (1p / node)':>21} {'ratio':>6} "
          f"{'P@1/3/5 1p':>20} {'P@1/3/5 ray':>20}")
    for name, s, sp, r in table:
        print(f"{name:<34} {s['train_s']:>9.1f} / {r['train_s']:<8.1f} {r['train_s'] / s['train_s']:>6.2f} "
              f"{sp:>9.0f} / {r['peak_node_mb']:<9.0f} {r['peak_node_mb'] / sp:>6.2f} "
              f"{s['p@1']:.2f}/{s['p@3']:.2f}/{s['p@5']:.2f}".ljust(20) + f" {r['p@1']:.2f}/{r['p@3']:.2f}/{r['p@5']:.2f}")
    csv, md = run.finish(args.db, rows)
    print(f"\nrecorded {run.run_id}: {shown(csv)}")
    return 0


def _print_model(name: str, model: list[dict]) -> None:
    print("\nscaling model (" + name + "):")
    print(f"{'labels':>9} {'basis':>17} {'workers':>7} {'tasks':>6} {'serial_s':>9} {'makespan_s':>10} "
          f"{'speedup':>7} {'worker_mb':>9}")
    for m in model:
        print(f"{m['labels']:>9} {m['basis']:>17} {m['workers']:>7} {m['tasks']:>6} {m['serial_s']:>9} "
              f"{m['makespan_s']:>10} {m['speedup_vs_1']:>7} {m['worker_mb']:>9}")


def model_from(args, run) -> int:
    """The scaling model of every xmc-ray row of a recorded run (its task seconds and peaks)."""
    import csv

    from record import shown

    src = REPO / "bench" / "results" / f"{args.model_from}.csv"
    rows = []
    for r in csv.DictReader(open(src, encoding="utf-8")):
        if not r["system"].startswith("xmc-ray"):
            continue
        extra = json.loads(r["extra"])
        data = REPO / "bench" / "out" / "data" / r["dataset"]
        stored_mb = sum((data / f).stat().st_size for f in ("X.trn.npz", "Y.trn.npz")) / 2**20 if data.is_dir() else 0.0
        model = scaling_table(extra, stored_mb)
        _print_model(r["dataset"], model)
        _plot(model, REPO / "bench" / "out" / f"ray_scaling_{r['dataset']}.png")
        for m in model:
            rows.append({"bench": "ray-scaling-model", "dataset": r["dataset"],
                         "system": f"model-{m['workers']}w-{m['labels']}l", "threads": m["workers"],
                         "n_labels": m["labels"], "train_s": m["makespan_s"], "peak_rss_mb": m["worker_mb"],
                         "extra": {**m, "from_run": args.model_from}})
    csv_path, _ = run.finish(args.db, rows, notes=f"scaling model from {args.model_from}")
    print(f"\nrecorded {run.run_id}: {shown(csv_path)}")
    return 0


def _plot(model: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for basis in sorted({m["basis"] for m in model}):
        pts = [m for m in model if m["basis"] == basis]
        ax.plot([m["workers"] for m in pts], [m["makespan_s"] for m in pts], marker="o",
                label=f"{pts[0]['labels']:,} labels ({basis})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("Ray workers (1 CPU each)")
    ax.set_ylabel("training makespan (s)")
    ax.set_title("XR-Linear on Ray: scaling model from measured task times")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
