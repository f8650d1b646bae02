#!/usr/bin/env python3
"""Memory of `xmc train` and `xmc evaluate`, stage by stage: peak and final resident memory.

    .venv/bin/python bench/memory_profile.py --data ../shared/data/eurlex57k bench/out/synth/NAME \
        [--threads 2] [--params '{...}']

Each dataset is trained with ``xmc train -v`` and evaluated on its test split with
``xmc evaluate -v``, each in its own process, as a user runs them. Their stage lines
(`xmc_core.memory`: a stage's peak is the high-water mark of resident memory reset when the
stage starts) become one row per stage: ``train_s``/``predict_s`` the stage's seconds,
``peak_rss_mb`` its peak (MiB), ``extra`` the stage line (rss_mb at its end, the level's W_mb,
...). A ``total`` row per phase has the whole process's peak (the largest of ``wait4``'s ru_maxrss and
the stage peaks: resetting the high-water mark also resets what ru_maxrss reports at exit). Prints a
table, appends the rows to DuckDB ``benchmark`` and exports them (bench/record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
XMC = [sys.executable, "-m", "xmc_core.cli"]


def run_stages(cmd: list[str]) -> tuple[list[dict], dict, float, float]:
    """Run `cmd`; its -v stage lines (stderr), its stdout JSON, wall seconds, peak RSS (MiB)."""
    import threading

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    buf = {}
    readers = [threading.Thread(target=lambda k, f: buf.__setitem__(k, f.read()), args=(k, f))
               for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    # wait4, not Popen.wait: its rusage is this child's own peak RSS
    _, status, usage = os.wait4(proc.pid, 0)
    for r in readers:
        r.join()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = buf["out"], buf["err"]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    stages = []
    for line in err.splitlines():
        line = line.strip()
        if line.startswith("{") and '"stage"' in line:
            stages.append(json.loads(line))
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return stages, result, wall, usage.ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", required=True, help="dataset folders")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default=None, help="xmc train --params (JSON)")
    ap.add_argument("--label", default="", help="a word for this build in the rows (e.g. before / after)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "memprof"))
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    args = ap.parse_args(argv)

    from record import Run

    run = Run("memory", settings=vars(args))
    rows, notes = [], []
    env_threads = {"OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads)}
    os.environ.update(env_threads)
    for data in args.data:
        ds = Path(data).name
        model = Path(args.out) / ds
        train_cmd = [*XMC, "train", "--data", str(data), "--model", str(model), "--threads", str(args.threads), "-v"]
        if args.params:
            train_cmd += ["--params", args.params]
        eval_cmd = [*XMC, "evaluate", "--model", str(model), "--data", str(data), "--json", "-v"]
        table = [f"**{ds}**", "", "| phase | stage | seconds | peak_rss_mb | rss_mb at end | detail |", "|---|---|---|---|---|---|"]
        print(f"\n{ds}\n{'phase':<8} {'stage':<18} {'seconds':>8} {'peak_mb':>8} {'rss_mb':>8}  detail")
        for phase, cmd in (("train", train_cmd), ("predict", eval_cmd)):
            stages, result, wall, peak = run_stages(cmd)
            # the stage peaks reset the kernel's high-water mark, so ru_maxrss alone can miss the peak
            peak = max([peak, *(r["peak_rss_mb"] for r in stages)])
            for rec in [*stages, {"stage": "total", "seconds": wall, "peak_rss_mb": round(peak, 1)}]:
                name = rec["stage"] + (f"_{rec['level']}" if "level" in rec else "")
                if rec["stage"] == "rankers_level":
                    name = f"level_{rec['level']}"
                detail = {k: v for k, v in rec.items()
                          if k in ("W_mb", "X_mb", "Z_mb", "largest_block_mb", "active_pairs", "nnz_W", "n_features")}
                secs = round(float(rec.get("seconds", 0.0)), 3)
                print(f"{phase:<8} {name:<18} {secs:8.2f} {rec['peak_rss_mb']:8.0f} {rec.get('rss_mb', float('nan')):8.0f}  "
                      f"{json.dumps(detail) if detail else ''}", flush=True)
                table.append(f"| {phase} | {name} | {secs} | {rec['peak_rss_mb']} | {rec.get('rss_mb', '')} | "
                             f"{json.dumps(detail) if detail else ''} |")
                rows.append({"bench": "memory-profile", "dataset": ds, "system": f"xmc{'-' + args.label if args.label else ''}",
                             "threads": args.threads,
                             "n_labels": result.get("n_labels"), "n_train": result.get("n_train"),
                             "n_test": result.get("n_test"),
                             "train_s" if phase == "train" else "predict_s": secs,
                             "peak_rss_mb": rec["peak_rss_mb"],
                             "p1": result.get("p@1") if name == "total" and phase == "predict" else None,
                             "extra": {"phase": phase, "stage": name, **{k: v for k, v in rec.items()
                                                                         if k not in ("stage", "seconds", "peak_rss_mb")}}})
        notes += table + [""]
    run.finish(args.db, rows, notes="\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
