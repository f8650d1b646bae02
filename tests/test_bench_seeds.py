"""Several seeds in the side-by-side bench: a row's means, its per-seed values, the seed passed on."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from compare_peers import SEED_MEAN_KEYS, mean_over_seeds  # noqa: E402
from ours_run import bench_params  # noqa: E402


def _run(p1, train_s, **extra):
    return {"peer": "x", "p@1": p1, "p@3": p1 / 2, "p@5": p1 / 3, "train_s": train_s, "predict_s": 1.0,
            "peak_rss_mb": 100.0 + p1, "seed": extra.pop("seed", None), **extra}


def test_one_seed_is_the_run_itself():
    r = _run(60.0, 2.0, version="1")
    assert mean_over_seeds([r], [None]) is r


def test_means_and_per_seed_values():
    runs = [_run(60.0, 2.0, seed=0, version="a"), _run(61.0, 4.0, seed=7, version="b"),
            _run(65.0, 9.0, seed=9, version="c")]
    row = mean_over_seeds(runs, [0, 7, 9])
    assert row["p@1"] == pytest.approx(62.0)
    assert row["p@3"] == pytest.approx(31.0)
    assert row["train_s"] == pytest.approx(5.0)
    assert row["peak_rss_mb"] == pytest.approx(162.0)
    assert row["sd_p@1"] == pytest.approx(statistics.stdev([60.0, 61.0, 65.0]))
    assert row["seeds"] == [0, 7, 9]
    assert [s["seed"] for s in row["per_seed"]] == [0, 7, 9]
    assert [s["p@1"] for s in row["per_seed"]] == [60.0, 61.0, 65.0]
    assert set(row["per_seed"][0]) == {"seed", *SEED_MEAN_KEYS}
    assert row["version"] == "a" and "seed" not in row  # the first run's other fields; no single seed


def test_bench_params_seed():
    p = bench_params("{}", 2, 10, "accurate", seed=100)
    assert (p.tree.seed, p.ranker.seed) == (100, 100)
    kept = bench_params('{"tree": {"seed": 5}}', 2, 10)
    assert kept.tree.seed == 5 and kept.ranker.seed == 0  # None keeps the settings' own
