#!/usr/bin/env python3
"""Load test of `xmc serve` on loopback: closed-loop clients at 1, 4 and 16 connections.

    .venv/bin/python bench/serve_load.py --model MODEL (--rows X.tst.npz | --texts FILE) \\
        [--connections 1 4 16] [--requests 2000] [--seconds 60] [--workers 1]

Starts `xmc serve --model MODEL` on a free loopback port (its own process, `--workers` uvicorn
workers), waits for /health, then for each connection count C runs C client threads, each with
one keep-alive HTTP connection, sending one document per POST /predict (topk 10) and the next
as soon as the answer is in (closed loop), until `--requests` answers or `--seconds` have passed
(bounded in count and time). The first 50 answers of each level warm up and are not counted.
Prints p50 / p99 latency (ms, client side: request written to answer read) and throughput
(answers per second) per level, counts every non-200 answer or connection error as a failure,
and appends one row per level to DuckDB `benchmark` (bench "serve-load", threads = connections,
predict_s = p50 seconds; p99, rps and failures in `extra`), exported to bench/results/.
The clients share the machine with the server: on 2 cores, 16 client threads take CPU from it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: answers of each level not counted (connections opening, caches warming)
WARMUP = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bodies(args) -> list[bytes]:
    """One request body per document: {"rows": [{id: value}]} or {"texts": [text]}, topk 10."""
    if args.rows:
        import scipy.sparse as smat

        X = smat.load_npz(args.rows).tocsr()
        n = min(X.shape[0], args.docs)
        return [json.dumps({"rows": [{str(j): float(v) for j, v in zip(X[i].indices, X[i].data)}], "topk": 10}).encode()
                for i in range(n)]
    with open(args.texts, encoding="utf-8") as fh:
        texts = [line.rstrip("\n") for _, line in zip(range(args.docs), fh)]
    return [json.dumps({"texts": [t], "topk": 10}).encode() for t in texts]


def _level(port: int, bodies: list[bytes], connections: int, requests: int, seconds: float) -> dict:
    """Closed-loop load at `connections`; latencies (s) of the counted answers and failures."""
    lock = threading.Lock()
    state = {"sent": 0, "answers": 0, "failures": 0, "lat": []}
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = k
        while time.monotonic() < deadline:
            with lock:
                if state["sent"] >= requests + WARMUP:
                    break
                state["sent"] += 1
            body = bodies[i % len(bodies)]
            i += connections
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            dt = time.perf_counter() - t0
            with lock:
                state["answers"] += 1
                if not ok:
                    state["failures"] += 1
                elif state["answers"] > WARMUP:
                    state["lat"].append(dt)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {**state, "wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model folder to serve")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--rows", help="an .npz CSR of bag-of-words rows (one request each)")
    src.add_argument("--texts", help="a text file, one document per line (one request each)")
    ap.add_argument("--docs", type=int, default=2000, help="distinct documents cycled through (default 2000)")
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=2000, help="counted answers per level (default 2000)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time limit per level (default 60)")
    ap.add_argument("--workers", type=int, default=1, help="xmc serve --workers (default 1)")
    ap.add_argument("--dataset", default=None, help="name recorded in DuckDB (default: the model folder's name)")
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    import numpy as np

    from record import Run

    run = Run("serve-load", settings=vars(args))
    bodies = _bodies(args)
    port = _free_port()
    xmc = Path(sys.executable).with_name("xmc")
    server = subprocess.Popen([str(xmc), "serve", "--model", args.model, "--port", str(port), "--workers",
                               str(args.workers), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = []
    try:
        ready = json.loads(server.stdout.readline() or "{}")
        if "url" not in ready:
            raise SystemExit(f"xmc serve did not start: {server.stderr.read()[-2000:]}")
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    health = json.loads(resp.read())
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"xmc serve not healthy: {server.stderr.read()[-2000:]}")
                time.sleep(0.2)
        name = args.dataset or Path(args.model).name
        print(f"{name}: {health['method']}, {health['n_labels']} labels, {len(bodies)} documents, "
              f"workers {args.workers}")
        print(f"{'connections':>11} {'answers':>8} {'failures':>8} {'p50_ms':>8} {'p99_ms':>8} {'rps':>8}")
        for c in args.connections:
            res = _level(port, bodies, c, args.requests, args.seconds)
            lat = np.asarray(res["lat"]) * 1000.0
            p50, p99 = (float(np.percentile(lat, q)) if len(lat) else float("nan") for q in (50, 99))
            rps = res["answers"] / res["wall_s"]
            print(f"{c:>11} {res['answers']:>8} {res['failures']:>8} {p50:8.2f} {p99:8.2f} {rps:8.1f}", flush=True)
            rows.append({"bench": "serve-load", "dataset": name, "system": "xmc-serve", "threads": c,
                         "n_labels": int(health["n_labels"]), "n_test": len(lat), "predict_s": p50 / 1000.0,
                         "extra": {"p50_ms": p50, "p99_ms": p99, "mean_ms": float(lat.mean()) if len(lat) else None,
                                   "rps": rps, "failures": res["failures"], "answers": res["answers"],
                                   "workers": args.workers, "wall_s": res["wall_s"], "topk": 10,
                                   "input": "rows" if args.rows else "texts"}})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    run.finish(args.db, rows)
    print(f"{len(rows)} rows appended to {args.db} (table benchmark, run_id {run.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
