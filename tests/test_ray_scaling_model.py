"""The scaling model of `bench/ray_scale.py`: the engine's recorded tasks list-scheduled with
their dependencies (a tree node after its parent, sub-trees after their root's parent, the top
levels' chunks after the top of the tree, the other chunks after every sub-tree)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from ray_scale import list_schedule, scaling_table, task_graph  # noqa: E402


def test_list_schedule_respects_dependencies_and_takes_the_longest_ready_first():
    # a chain 0 → 1 (3 + 4 s) beside three free tasks of 2 s: two machines finish at 7 s
    assert list_schedule([3, 4, 2, 2, 2], [[], [0], [], [], []], 2) == 7
    # one machine: everything in sequence
    assert list_schedule([3, 4, 2, 2, 2], [[], [0], [], [], []], 1) == 13
    # longest first: 5 then 1+1+1+1 on the other machine, not 1+1 then 5
    assert list_schedule([1, 1, 1, 1, 5], [[]] * 5, 2) == 5


def _row():
    tasks = [{"stage": "tree_node", "depth": 0, "node": 0, "seconds": 10.0, "worker_peak_rss_mb": 900.0},
             {"stage": "tree_node", "depth": 1, "node": 0, "seconds": 4.0, "worker_peak_rss_mb": 500.0},
             {"stage": "tree_node", "depth": 1, "node": 1, "seconds": 6.0, "worker_peak_rss_mb": 500.0}]
    tasks += [{"stage": "subtree", "root": r, "seconds": 2.0, "worker_peak_rss_mb": 300.0} for r in range(4)]
    tasks += [{"stage": "chunk", "level": 0, "parents": [0, 1], "seconds": 5.0, "worker_peak_rss_mb": 700.0},
              {"stage": "chunk", "level": 1, "parents": [0, 2], "seconds": 3.0, "worker_peak_rss_mb": 400.0},
              {"stage": "chunk", "level": 1, "parents": [2, 4], "seconds": 3.0, "worker_peak_rss_mb": 400.0}]
    return {"tasks": tasks, "split_level": 1, "tree_levels": [4, 100], "n_labels": 100,
            "train_detail_s": {"assemble": 1.0}}


def test_task_graph_and_its_makespan():
    dur, deps = task_graph(_row())
    assert sum(dur) == 10 + 4 + 6 + 4 * 2 + 5 + 3 + 3
    # 1 worker: the sum plus the assembly; 128 workers: the critical path
    # root 10 → node 6 → its sub-trees 2 → the level-1 chunks 3 (level 0's 5 s ends with them)
    rows = {(r["basis"], r["workers"]): r for r in scaling_table(_row(), stored_mb=50.0)}
    assert rows[("measured tasks", 128)]["makespan_s"] == pytest.approx(10 + 6 + 2 + 3 + 1)
    assert rows[("measured tasks", 128)]["serial_s"] == pytest.approx(10 + 6 + 1)
    assert rows[("measured tasks", 2)]["makespan_s"] >= (sum(dur)) / 2
    assert rows[("measured tasks", 2)]["worker_mb"] == 950
    # ten times the labels: the top nodes ten times as long, ten times the sub-trees and chunks
    dur10, _ = task_graph(_row(), scale=10)
    assert sum(dur10) == pytest.approx(10 * sum(dur))
    # the level-0 chunk (50 s) after the top (160 s) is now the longest path, then the assembly
    assert rows[("extrapolated x10", 128)]["makespan_s"] == pytest.approx(100 + 60 + 50 + 10)
