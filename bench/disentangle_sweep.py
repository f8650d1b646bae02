#!/usr/bin/env python3
"""Label disentanglement sweep: max_copies = 1..6 against plain XR-Linear, same features.

    .venv/bin/python bench/disentangle_sweep.py [--datasets delicious bibtex synthetic-ambiguous]
        [--copies 1 2 3 4 5 6] [--seeds 0 1 2] [--beams 3 5] [--rounds 1] [--merge max]
        [--threads 2] [--params '{...}'] [--flat] [--ceiling-max-beam 128]

Real datasets read bench/out/data/<ds>/xmc/{X,Y}.{trn,tst}.npz (written by bench/compare_peers.py);
`synthetic-ambiguous` is generated (xmc_core.synth, ambiguous_frac 0.3). Per dataset and seed
(the tree's and the rankers' seed): plain XR-Linear, then xr-linear-ld per max_copies (the same
PIFA tree; train_s covers PIFA + tree + first matcher + reassignment + rankers). The table shows
means over the seeds: P@1/3/5, the spread of P@1 over seeds, the final model's matcher recall on
the test split (share of true (doc, label) pairs with a cluster of the label in the beam), P@1 and
recall at the extra beam widths, and P@1 with a beam as wide as the widest level ("P@1 all": every
label scored, so recall 100%; the most that added reach alone could give), copies added and train
seconds. `--flat` adds a one-level model per seed (every label scored by its one-vs-all ranker, no
matcher factor: what a label tree costs or gives against no tree at all; system "xr-linear-flat").
"P@1 all" is skipped (NaN) where the widest level is wider than --ceiling-max-beam (yso-finna-en:
256 clusters, 25k labels per document). Every (seed, config) appends a row to the DuckDB
`benchmark` table (bench="disentangle"; max_copies, rounds, seed and the per-beam numbers in
`extra`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTH = "synthetic-ambiguous"


def load(ds: str, out: Path):
    import numpy as np
    import scipy.sparse as smat

    if ds == SYNTH:
        from xmc_core.synth import SynthParams, generate
        from xmc_core.sparse import l2_normalize_rows

        Xtr, Ytr, Xte, Yte = generate(SynthParams(n_labels=2000, n_train=20000, n_test=4000, n_features=20000,
                                                  ambiguous_frac=0.3, seed=0))
        return l2_normalize_rows(Xtr), Ytr, l2_normalize_rows(Xte), Yte
    d = out / "data" / ds / "xmc"  # xmc's own features
    if not (d / "X.trn.npz").is_file():
        raise SystemExit(f"{d}: no cached features; run bench/compare_peers.py --datasets {ds} first")
    m = [smat.load_npz(d / f"{k}.npz").tocsr().astype(np.float32) for k in ("X.trn", "Y.trn", "X.tst", "Y.tst")]
    return tuple(m)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["delicious", "bibtex", SYNTH])
    ap.add_argument("--copies", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--merge", default="max", choices=["max", "mean"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="tree and ranker seeds; the table shows means over them (plain and LD share a seed's tree)")
    ap.add_argument("--beams", nargs="+", type=int, default=[3, 5],
                    help="extra beam widths at which P@1 and matcher recall are also measured")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default="{}", help="extra XRLinearParams overrides (JSON), e.g. a disentangle section")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--flat", action="store_true",
                    help="also train a one-level (flat one-vs-all) model per seed, as a reference")
    ap.add_argument("--ceiling-max-beam", type=int, default=128,
                    help="skip 'P@1 all' where the widest level is wider than this")
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    ap.add_argument("--db", default=str(REPO / "data" / "xmc.duckdb"))
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, str(REPO))
    import numpy as np

    from xmc_core.disentangle import matcher_recall
    from xmc_core.label_embedding import pifa
    from xmc_core.metrics import ranking_metrics
    from xmc_core.model import XRLinearParams, fit_rankers
    from xmc_core.tree import build_tree

    sys.path.insert(0, str(REPO / "bench"))
    from record import Run

    run = Run("disentangle", settings=vars(args))
    run_id = run.run_id
    summaries = []
    extra_params = json.loads(args.params)
    beams = sorted(set(args.beams))
    rows = []
    for ds in args.datasets:
        Xtr, Ytr, Xte, Yte = load(ds, Path(args.out))
        names = [str(i) for i in range(Ytr.shape[1])]
        configs = ([] if args.no_baseline else [None]) + (["flat"] if args.flat else []) + list(args.copies)
        per_config: dict = {}
        for seed in args.seeds:
            for copies in configs:
                ov = {**extra_params,
                      "ranker": {**extra_params.get("ranker", {}), "threads": args.threads, "seed": seed},
                      "tree": {**extra_params.get("tree", {}), "threads": args.threads, "seed": seed}}
                ov.pop("disentangle", None)
                if copies == "flat":  # one leaf holding every label: a one-level tree
                    ov["tree"]["max_leaf_size"] = int(Ytr.shape[1])
                elif copies is not None:
                    ov["disentangle"] = {**extra_params.get("disentangle", {}), "max_copies": copies,
                                         "rounds": args.rounds, "merge": args.merge}
                params = XRLinearParams().merged(ov)
                t0 = time.perf_counter()
                Z = pifa(Xtr, Ytr, params.pifa)
                tree = build_tree(Z, params.tree)
                model = fit_rankers(Xtr, Ytr, names, params, tree=tree)
                train_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                P = model.predict(Xte, topk=10)
                predict_s = time.perf_counter() - t0
                res = ranking_metrics(Yte, P)
                beam = params.pred.beam_size
                rec = 100.0 * matcher_recall(model.ranker, model.ranker.tree, Xte, Yte)
                # the recall ceiling: a beam as wide as the widest level scores every label
                full = max(model.ranker.tree.level_sizes()[:-1] or [1])
                at_beam = {}
                for b in [*beams, full]:
                    if b == full and b > args.ceiling_max_beam and b not in beams:
                        at_beam[b] = {"p1": float("nan"), "recall": 100.0}
                        continue
                    Pb = model.predict(Xte, topk=10, beam_size=b)
                    at_beam[b] = {"p1": ranking_metrics(Yte, Pb)["p"][1],
                                  "recall": 100.0 * matcher_recall(model.ranker, model.ranker.tree, Xte, Yte, b)}
                added = model.info.get("disentangle", {}).get("copies_added", 0)
                p = [res["p"][k] for k in (1, 3, 5)]
                per_config.setdefault(copies, []).append(
                    {"p": p, "recall": rec, "train_s": train_s, "added": added,
                     "at": [at_beam[b]["p1"] for b in beams] + [at_beam[full]["p1"]],
                     "rec_at": [at_beam[b]["recall"] for b in beams]})
                rows.append({
                    "bench": "disentangle", "dataset": ds,
                    "system": "xr-linear-flat" if copies == "flat" else model.method,
                    "threads": args.threads, "n_labels": int(Ytr.shape[1]), "n_train": int(Ytr.shape[0]),
                    "n_test": int(Yte.shape[0]), "train_s": train_s, "predict_s": predict_s, "p1": p[0],
                    "p3": p[1], "p5": p[2],
                    "extra": {"max_copies": copies if isinstance(copies, int) else 1,
                              "rounds": args.rounds if isinstance(copies, int) else 0, "seed": seed,
                              "flat": copies == "flat",
                              "merge": args.merge, "matcher_recall": rec, "copies_added": added,
                              "beam_size": beam, "full_beam": full,
                              "at_beam": {str(b): v for b, v in at_beam.items()},
                              "disentangle": model.info.get("disentangle"), "params": params.to_dict()},
                })
        summaries.append(print_table(ds, per_config, beams, len(args.seeds)))
    run.finish(args.db, rows, notes="Means over seeds, as printed:\n\n```\n" + "\n\n".join(summaries) + "\n```")
    print(f"\n{len(rows)} rows appended to {args.db} (table benchmark, run_id {run_id})")
    return 0


def print_table(ds: str, per_config: dict, beams: list[int], n_seeds: int) -> str:
    """Means over seeds; dP@1 and x_plain against the plain rows (None) when present, and the
    spread (max - min over seeds) of P@1. Returns the printed text."""
    import numpy as np

    cols = " ".join(f"{'P@1 b' + str(b):>8} {'rec b' + str(b):>7}" for b in beams)
    header = (f"{ds} ({n_seeds} seed{'s' if n_seeds > 1 else ''}; means)\n"
              f"{'copies':>6} {'P@1':>6} {'±':>5} {'P@3':>6} {'P@5':>6} {'dP@1':>6} {'recall':>7} {cols} "
              f"{'P@1 all':>7} {'added':>6} {'train_s':>8} {'x_plain':>7}")
    lines = [header, "-" * len(header.splitlines()[-1])]
    base = per_config.get(None)
    for copies, runs in per_config.items():
        p = np.mean([r["p"] for r in runs], axis=0)
        p1s = [r["p"][0] for r in runs]
        at = np.mean([r["at"] for r in runs], axis=0)
        rec_at = np.mean([r["rec_at"] for r in runs], axis=0)
        train_s = float(np.mean([r["train_s"] for r in runs]))
        d1 = p[0] - np.mean([r["p"][0] for r in base]) if base else float("nan")
        ratio = train_s / np.mean([r["train_s"] for r in base]) if base else float("nan")
        extra = " ".join(f"{a:8.2f} {r:7.2f}" for a, r in zip(at[:-1], rec_at))
        lines.append(f"{('-' if copies is None else copies):>6} {p[0]:6.2f} {max(p1s) - min(p1s):5.2f} {p[1]:6.2f} {p[2]:6.2f} "
              f"{d1:+6.2f} {np.mean([r['recall'] for r in runs]):7.2f} {extra} {at[-1]:7.2f} "
              f"{int(np.mean([r['added'] for r in runs])):6d} {train_s:8.2f} {ratio:7.2f}")
    print("\n" + "\n".join(lines), flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
