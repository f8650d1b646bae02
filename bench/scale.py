#!/usr/bin/env python3
"""Scaling curve: xmc XR-Linear vs PECOS on synthetic Zipfian sets of growing label counts.

    .venv/bin/python bench/scale.py --labels 10000 100000 1000000 [--train N ...] [--density sparse|dense] --threads 2

Each size is generated once by xmc's own generator (`xmc synth`, cached under bench/out/synth/),
then run through bench/compare_peers.py (same features, same threads, each system in its own
process), which writes the rows to the DuckDB `benchmark` table and bench/results/; a PNG of training time, prediction time and
peak RSS against labels is written next to it (bench/out/scale.png).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


#: (words_per_doc, labels_per_doc) of `SynthParams` per --density. Realised per training document
#: on 100k labels / 300k documents: default ~72 nonzeros and 2.7 labels; sparse ~22 and 1.9 (short
#: texts, as yso-finna-en's titles); dense ~80 and ~4 (PROVENANCE.md of each set has the counts).
DENSITY = {"default": (80, 3.0), "sparse": (24, 2.0), "dense": (90, 4.4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--train", type=int, nargs="+", default=None,
                    help="training documents per size (default: 3 per label, at least 30k)")
    ap.add_argument("--test-frac", type=float, default=0.1)
    ap.add_argument("--density", choices=sorted(DENSITY), default="default",
                    help="words and labels per document: " + "; ".join(
                        f"{k}: {v[0]} words, {v[1]} labels drawn" for k, v in DENSITY.items()))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", nargs="*", default=["pecos"])
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    ap.add_argument("--save-rankers", default=None, help="passed to compare_peers.py (for bench/latency.py)")
    args = ap.parse_args(argv)

    from xmc_core.synth import SynthParams, write_synth

    synth_root = Path(args.out) / "synth"
    names = []
    for i, L in enumerate(args.labels):
        n_train = args.train[i] if args.train else max(30_000, 3 * L)
        n_test = max(1000, int(args.test_frac * n_train))
        words, labels = DENSITY[args.density]
        name = f"synth-{L}l-{n_train}d" + ("" if args.density == "default" else f"-{args.density}")
        folder = synth_root / name
        if not (folder / "train.txt.gz").is_file():
            print(f"generating {name} ...", flush=True)
            write_synth(folder, SynthParams(n_labels=L, n_train=n_train, n_test=n_test,
                                            n_features=max(20_000, 2 * L), words_per_doc=words,
                                            labels_per_doc=labels, seed=0))
        names.append(name)
    cmd = [sys.executable, str(REPO / "bench" / "compare_peers.py"), "--data-root", str(synth_root),
           "--datasets", *names, "--threads", str(args.threads), "--db", args.db, "--out", args.out]
    if args.peers:
        cmd += ["--peers", *args.peers]
    if args.save_rankers:
        cmd += ["--save-rankers", args.save_rankers]
    subprocess.run(cmd, check=True)
    plot(args.db, names, Path(args.out) / "scale.png")
    return 0


def plot(db: str, datasets: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    from xmc_core.results_db import read_benchmark

    df = read_benchmark(db).filter(pl.col("dataset").is_in(datasets))
    # latest row per (dataset, system)
    df = df.sort("created_at").group_by(["dataset", "system"]).last().sort("n_labels")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, col, title in zip(axes, ("train_s", "predict_s", "peak_rss_mb"),
                              ("training seconds", "prediction seconds", "peak RSS (MB)")):
        for system in df["system"].unique().sort().to_list():
            sub = df.filter(pl.col("system") == system)
            ax.plot(sub["n_labels"].to_list(), sub[col].to_list(), marker="o", label=system)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("labels")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    print(f"plot: {png}")


if __name__ == "__main__":
    sys.exit(main())
