"""Tests for xmc_core.results_db (DuckDB history)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import time

import duckdb
import polars as pl
import pytest

from xmc_core import results_db as R
from xmc_core.cli import main

METRICS = {"p": {1: 80.0, 3: 60.0, 5: 45.0}, "ndcg": {1: 80.0, 3: 70.0, 5: 68.0}}


def test_append_twice_keeps_history(tmp_path):
    db = tmp_path / "sub" / "dir" / "results.duckdb"  # parent folders created
    n1 = R.append_evaluation(db, "run-a", "eurlex", "xr-linear", "test", METRICS, {"beam": 10})
    n2 = R.append_evaluation(
        db, "run-b", "eurlex", "xr-linear", "test",
        [{"metric": "p", "k": 1, "value": 81.5}], {"beam": 20, "path": tmp_path},
    )
    assert (n1, n2) == (6, 1)
    df = R.read_evaluation(db)
    assert df.height == 7
    assert [c for c, _ in R.EVALUATION_COLUMNS] == df.columns
    assert df["run_id"].to_list() == ["run-a"] * 6 + ["run-b"]
    a = R.read_evaluation(db, "run-a")
    assert a.height == 6
    assert dict(zip(zip(a["metric"], a["k"]), a["value"])) == {
        (m, k): v for m, by_k in METRICS.items() for k, v in by_k.items()
    }
    assert json.loads(a["params"][0]) == {"beam": 10}
    assert json.loads(R.read_evaluation(db, "run-b")["params"][0])["path"] == str(tmp_path)
    assert a["created_at"].dtype == pl.Datetime("us")
    assert a["created_at"].n_unique() == 1  # one timestamp per call
    # appending the same run again keeps the old rows (never overwrite)
    R.append_evaluation(db, "run-a", "eurlex", "xr-linear", "test", {"p": {1: 90.0}}, {})
    assert R.read_evaluation(db, "run-a").height == 7
    assert R.read_evaluation(db).height == 8


def test_read_missing(tmp_path):
    db = tmp_path / "none.duckdb"
    df = R.read_evaluation(db)
    assert df.is_empty() and df.columns == [c for c, _ in R.EVALUATION_COLUMNS]
    assert not db.exists()  # reading does not create the file
    R.append_benchmark(db, [{"run_id": "x", "bench": "b"}])
    assert R.read_evaluation(db, "x").is_empty()  # file exists, table does not
    assert R.p_at_k_table(db, "x").is_empty()


def test_p_at_k_table(tmp_path):
    db = tmp_path / "r.duckdb"
    R.append_evaluation(db, "r1", "eurlex", "m", "test", METRICS, {})
    R.append_evaluation(db, "r2", "eurlex", "m", "test", {"p": {1: 1.0}}, {})
    R.append_evaluation(db, "r1", "eurlex", "m", "test", {"p": {1: 82.0}}, {})  # newer value
    t = R.p_at_k_table(db, "r1")
    assert t.columns == ["dataset", "model", "split", "metric", "@1", "@3", "@5"]
    assert t["metric"].to_list() == ["p", "ndcg"]
    assert t.row(0) == ("eurlex", "m", "test", "p", 82.0, 60.0, 45.0)
    assert t.row(1) == ("eurlex", "m", "test", "ndcg", 80.0, 70.0, 68.0)


def test_append_benchmark_missing_keys_are_null(tmp_path):
    db = tmp_path / "b.duckdb"
    n = R.append_benchmark(
        db,
        [
            {"run_id": "r", "bench": "eurlex", "system": "xmc", "threads": 8, "train_s": 1.5,
             "p1": 80.1, "extra": {"note": "warm"}},
            {"run_id": "r", "bench": "eurlex", "system": "pecos"},
        ],
    )
    assert n == 2
    df = R.read_benchmark(db)
    assert df.columns == [c for c, _ in R.BENCHMARK_COLUMNS]
    assert df["threads"].to_list() == [8, None]
    assert df["train_s"].to_list() == [1.5, None]
    assert df["n_labels"].to_list() == [None, None]
    assert json.loads(df["extra"][0]) == {"note": "warm"}
    assert df["extra"][1] is None
    assert df["created_at"].null_count() == 0
    R.append_benchmark(db, [{"run_id": "s", "bench": "x"}])
    assert R.read_benchmark(db).height == 3 and R.read_benchmark(db, "s").height == 1
    with pytest.raises(ValueError, match="unknown benchmark columns"):
        R.append_benchmark(db, [{"run_id": "r", "typo_col": 1}])
    assert R.read_benchmark(db).height == 3


# --------------------------------------------------------------------------- concurrency


def _hold_lock(db: str, opened, seconds: float) -> None:
    con = duckdb.connect(db)  # exclusive file lock for this process
    opened.set()
    time.sleep(seconds)
    con.close()


def _writer(db: str, name: str, n_calls: int, start) -> None:
    start.wait()
    for i in range(n_calls):
        R.append_evaluation(db, f"{name}-{i}", "ds", name, "test", METRICS, {"i": i})
        R.append_benchmark(db, [{"run_id": f"{name}-{i}", "bench": name, "threads": i}])


def test_concurrent_writers(tmp_path):
    db = str(tmp_path / "concurrent" / "results.duckdb")
    R.append_evaluation(db, "init", "ds", "m", "test", {"p": {1: 1.0}}, {})
    ctx = mp.get_context("spawn")
    opened, start = ctx.Event(), ctx.Event()
    # a third process holds the file lock for a while, so the writers must retry
    holder = ctx.Process(target=_hold_lock, args=(db, opened, 1.5))
    holder.start()
    assert opened.wait(60)
    n_calls = 8
    writers = [ctx.Process(target=_writer, args=(db, name, n_calls, start)) for name in "ab"]
    for w in writers:
        w.start()
    start.set()
    for p in [holder, *writers]:
        p.join(120)
    assert [p.exitcode for p in [holder, *writers]] == [0, 0, 0]
    df = R.read_evaluation(db)
    assert df.height == 1 + 2 * n_calls * 6
    per_run = df.group_by("run_id").len()
    assert per_run.filter(pl.col("run_id") != "init")["len"].to_list() == [6] * (2 * n_calls)
    bench = R.read_benchmark(db)
    assert sorted(bench["run_id"].to_list()) == sorted(
        f"{n}-{i}" for n in "ab" for i in range(n_calls)
    )


@contextlib.contextmanager
def _locked(db: str, seconds: float):
    """Another process holding `db` for up to `seconds`; yields that process."""
    ctx = mp.get_context("spawn")
    opened = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(db, opened, seconds))
    holder.start()
    try:
        assert opened.wait(60)
        yield holder
    finally:
        holder.join(60)


def test_lock_timeout_is_bounded(tmp_path, monkeypatch):
    db = str(tmp_path / "t.duckdb")
    R.append_evaluation(db, "init", "ds", "m", "test", {"p": {1: 1.0}}, {})
    with _locked(db, 2.0) as holder:
        monkeypatch.setattr(R, "LOCK_TIMEOUT_S", 0.3)
        t0 = time.monotonic()
        with pytest.raises(R.DatabaseLockedError, match=f"{db}: locked by PID {holder.pid}"):
            R.append_evaluation(db, "x", "ds", "m", "test", {"p": {1: 1.0}}, {})
        assert time.monotonic() - t0 < 1.8
    assert R.read_evaluation(db)["run_id"].to_list() == ["init"]


# --------------------------------------------------------------------------- issue 20: the CLI's reads


def test_locked_duckdb_is_a_bounded_wait_naming_the_holder(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "runs.duckdb")
    R.append_evaluation(db, "r1", "ds", "m", "test", {"p": {1: 90.0}}, {})
    with _locked(db, 4.0) as holder:
        monkeypatch.setattr(R, "READ_LOCK_TIMEOUT_S", 0.5)
        t0 = time.monotonic()
        err = _runs_error(capsys, db)
        assert time.monotonic() - t0 < 3 and f"locked by PID {holder.pid}" in err
        with pytest.raises(R.DatabaseLockedError, match=rf"{db}: locked by PID {holder.pid} .*try again"):
            R.list_runs(db)
    assert R.list_runs(db)["run_id"].to_list() == ["r1"]


def _runs_error(capsys, db) -> str:
    rc = main(["runs", "--db", str(db)])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == "" and cap.err.count("\n") == 1 and cap.err.startswith("xmc: error: "), cap
    return cap.err


def test_missing_or_foreign_duckdb_file_is_an_error(tmp_path, capsys):
    err = _runs_error(capsys, tmp_path / "nope.duckdb")
    assert "nope.duckdb" in err and "no such file" in err
    foreign = tmp_path / "notes.duckdb"
    foreign.write_text("not a database\n")
    t0 = time.perf_counter()
    err = _runs_error(capsys, foreign)
    assert str(foreign) in err and "cannot open the evaluation database" in err
    assert time.perf_counter() - t0 < 3  # not retried as if locked
