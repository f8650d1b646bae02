"""Evaluation and benchmark history in a DuckDB file.

Two append-only tables (history is never overwritten):

* ``evaluation`` — one row per (run, dataset, model, split, metric, k);
* ``benchmark``  — one row per benchmark measurement (fixed schema, see
  :data:`BENCHMARK_COLUMNS`).

Concurrency: DuckDB lets one *process* hold a database file at a time.  Every call
opens a short-lived connection, does its work in one transaction and closes it; when the
file is locked by another process it retries with jittered exponential backoff for up to
:data:`LOCK_TIMEOUT_S` seconds (writers) or :data:`READ_LOCK_TIMEOUT_S` (readers), so
concurrent writers from several processes all succeed, then raises
:class:`DatabaseLockedError` naming the file and the process that holds it (a DuckDB shell,
a notebook; dagster#19068).  A file that is not a DuckDB database is an
:class:`EvaluationDBError` at once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import random
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import duckdb
import polars as pl

__all__ = [
    "EVALUATION_COLUMNS",
    "BENCHMARK_COLUMNS",
    "LOCK_TIMEOUT_S",
    "READ_LOCK_TIMEOUT_S",
    "EvaluationDBError",
    "DatabaseLockedError",
    "append_evaluation",
    "append_benchmark",
    "read_evaluation",
    "read_benchmark",
    "p_at_k_table",
]

#: (name, DuckDB type) of table ``evaluation``.
EVALUATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "VARCHAR"),
    ("dataset", "VARCHAR"),
    ("model", "VARCHAR"),
    ("split", "VARCHAR"),
    ("metric", "VARCHAR"),
    ("k", "INTEGER"),
    ("value", "DOUBLE"),
    ("created_at", "TIMESTAMP"),
    ("params", "VARCHAR"),  # JSON text
)

#: (name, DuckDB type) of table ``benchmark``.
BENCHMARK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "VARCHAR"),
    ("bench", "VARCHAR"),
    ("dataset", "VARCHAR"),
    ("system", "VARCHAR"),
    ("threads", "INTEGER"),
    ("n_labels", "BIGINT"),
    ("n_train", "BIGINT"),
    ("n_test", "BIGINT"),
    ("train_s", "DOUBLE"),
    ("predict_s", "DOUBLE"),
    ("peak_rss_mb", "DOUBLE"),
    ("p1", "DOUBLE"),
    ("p3", "DOUBLE"),
    ("p5", "DOUBLE"),
    ("created_at", "TIMESTAMP"),
    ("extra", "VARCHAR"),  # JSON text
)

#: Writers give up waiting for another process's lock after this many seconds.
LOCK_TIMEOUT_S: float = 60.0
#: Readers (``xmc runs``, the P@1 check's baseline) give up sooner: a person is waiting.
READ_LOCK_TIMEOUT_S: float = 5.0


class EvaluationDBError(OSError):
    """The evaluation database cannot be opened (one line, names the file)."""


class DatabaseLockedError(EvaluationDBError):
    """Another process held the database file for the whole wait (names the file and the holder)."""


def _lock_holder(message: str) -> str | None:
    """"PID N (program)" from DuckDB's lock-conflict message, None when it is not one."""
    m = re.search(r"Conflicting lock is held in (.*?) \(PID (\d+)\)", message)
    if m:
        return f"PID {m.group(2)} ({m.group(1)})"
    return "another process" if "Could not set lock" in message else None

_POLARS_TYPES = {
    "VARCHAR": pl.Utf8,
    "INTEGER": pl.Int32,
    "BIGINT": pl.Int64,
    "DOUBLE": pl.Float64,
    "TIMESTAMP": pl.Datetime("us"),
}


# --------------------------------------------------------------------------- connection


def _now() -> _dt.datetime:
    """Current UTC time as a naive datetime (DuckDB ``TIMESTAMP`` has no zone)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


def _to_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


@contextlib.contextmanager
def _connect(
    db_path: str | os.PathLike, read_only: bool = False, timeout_s: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Short-lived connection, retried while another process holds the file lock."""
    path = Path(db_path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    if timeout_s is None:
        timeout_s = READ_LOCK_TIMEOUT_S if read_only else LOCK_TIMEOUT_S
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.Error as e:
            message = " ".join(str(e).split())
            holder = _lock_holder(message)
            if holder is None:
                raise EvaluationDBError(f"{path}: cannot open the evaluation database ({message})") from None
            if time.monotonic() >= deadline:
                raise DatabaseLockedError(f"{path}: locked by {holder} for {timeout_s:g} s; try again once it "
                                          "has closed the file") from None
            time.sleep(min(delay * (0.5 + random.random()), max(deadline - time.monotonic(), 0)))
            delay = min(delay * 2.0, 1.0)
    try:
        yield con
    finally:
        con.close()


def _create_sql(table: str, columns: Sequence[tuple[str, str]]) -> str:
    cols = ", ".join(f"{name} {typ}" for name, typ in columns)
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols})"


def _append(db_path, table: str, columns: Sequence[tuple[str, str]], rows: list[tuple]) -> int:
    """Create ``table`` if missing and insert ``rows`` in a single transaction."""
    names = [name for name, _ in columns]
    frame = pl.DataFrame(
        rows, schema={name: _POLARS_TYPES[typ] for name, typ in columns}, orient="row"
    )
    with _connect(db_path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(_create_sql(table, columns))
            if rows:
                con.register("_xmc_new_rows", frame.to_arrow())
                con.execute(
                    f"INSERT INTO {table} ({', '.join(names)}) "
                    f"SELECT {', '.join(names)} FROM _xmc_new_rows"
                )
                con.unregister("_xmc_new_rows")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return len(rows)


def _fetch_arrow(rel: duckdb.DuckDBPyRelation):
    """Relation as a pyarrow Table across DuckDB versions (``to_arrow_table`` in 1.4+/2.x,
    ``arrow`` before)."""
    fetch = getattr(rel, "to_arrow_table", None) or getattr(rel, "arrow")
    return fetch()


def _read(db_path, table: str, columns, where: str = "", args: Sequence = ()) -> pl.DataFrame:
    empty = pl.DataFrame(schema={name: _POLARS_TYPES[typ] for name, typ in columns})
    if not Path(db_path).exists():
        return empty
    with _connect(db_path, read_only=True) as con:
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
        ).fetchall()[0][0]
        if not exists:
            return empty
        return pl.from_arrow(
            # No ORDER BY: DuckDB keeps insertion order for plain scans, and the tables are
            # append-only, so this is chronological (and stable within one call).
            _fetch_arrow(con.sql(f"SELECT * FROM {table} {where}", params=list(args)))
        )


# --------------------------------------------------------------------------- evaluation


def _metric_rows(metrics) -> list[tuple[str, int, float]]:
    if isinstance(metrics, Mapping):
        return [
            (str(metric), int(k), float(v))
            for metric, by_k in metrics.items()
            for k, v in sorted(by_k.items())
        ]
    return [(str(r["metric"]), int(r["k"]), float(r["value"])) for r in metrics]


def append_evaluation(
    db_path: str | os.PathLike,
    run_id: str,
    dataset: str,
    model: str,
    split: str,
    metrics: Mapping[str, Mapping[int, float]] | Sequence[Mapping],
    params: Mapping,
) -> int:
    """Append one row per (metric, k) to table ``evaluation`` (created if missing).

    Args:
        db_path: DuckDB file (parent folders are created).
        metrics: ``{"p": {1: 85.2, ...}, ...}`` as returned by
            :func:`xmc_core.metrics.ranking_metrics`, or the flat
            ``[{"metric", "k", "value"}, ...]`` of :func:`xmc_core.metrics.metrics_table`.
        params: run parameters, stored as JSON text (non-JSON values via ``str``).

    Returns:
        Number of rows written.  All rows of one call share ``created_at``.
    """
    created_at, params_json = _now(), _to_json(dict(params))
    rows = [
        (str(run_id), str(dataset), str(model), str(split), metric, k, value, created_at, params_json)
        for metric, k, value in _metric_rows(metrics)
    ]
    return _append(db_path, "evaluation", EVALUATION_COLUMNS, rows)


def read_evaluation(db_path: str | os.PathLike, run_id: str | None = None) -> pl.DataFrame:
    """Rows of table ``evaluation`` (all runs, or one ``run_id``), oldest first.

    Returns an empty frame with the :data:`EVALUATION_COLUMNS` schema when the file or
    table does not exist.
    """
    if run_id is None:
        return _read(db_path, "evaluation", EVALUATION_COLUMNS)
    return _read(db_path, "evaluation", EVALUATION_COLUMNS, "WHERE run_id = ?", [str(run_id)])


def p_at_k_table(db_path: str | os.PathLike, run_id: str) -> pl.DataFrame:
    """Wide view of run `run_id` in the database file `db_path`, for printing / markdown.

    One row per (dataset, model, split, metric) — metrics in the order they were written —
    and one column per k, named ``"@1"``, ``"@3"``, ...  If the same cell was appended
    more than once, the latest value wins.
    """
    df = read_evaluation(db_path, run_id)
    index = ["dataset", "model", "split", "metric"]
    if df.is_empty():
        return pl.DataFrame(schema={c: pl.Utf8 for c in index})
    ks = sorted(df["k"].unique().to_list())
    # Rows are in insertion order, so "last" is the latest value and maintain_order keeps
    # the (dataset, model, split, metric) rows in the order they were first written.
    wide = df.pivot(
        on="k", index=index, values="value", aggregate_function="last", maintain_order=True
    )
    return wide.select(index + [str(k) for k in ks]).rename({str(k): f"@{k}" for k in ks})


# --------------------------------------------------------------------------- benchmark


def append_benchmark(db_path: str | os.PathLike, rows: Sequence[Mapping]) -> int:
    """Append benchmark measurements to table ``benchmark`` (created if missing).

    Each row is a dict keyed by :data:`BENCHMARK_COLUMNS` names; missing keys are NULL,
    ``created_at`` defaults to now (UTC), ``extra`` (any JSON-able value) is stored as JSON
    text.  Keys outside the schema are rejected with ``ValueError`` so that nothing is
    silently dropped — put them in ``extra``.

    Returns:
        Number of rows written.
    """
    names = [name for name, _ in BENCHMARK_COLUMNS]
    created_at = _now()
    out: list[tuple] = []
    for row in rows:
        unknown = set(row) - set(names)
        if unknown:
            raise ValueError(f"unknown benchmark columns {sorted(unknown)}; put them in 'extra'")
        values = dict(row)
        values.setdefault("created_at", created_at)
        if values.get("extra") is not None and not isinstance(values["extra"], str):
            values["extra"] = _to_json(values["extra"])
        out.append(tuple(values.get(name) for name in names))
    return _append(db_path, "benchmark", BENCHMARK_COLUMNS, out)


def read_benchmark(db_path: str | os.PathLike, run_id: str | None = None) -> pl.DataFrame:
    """Rows of table ``benchmark`` (all, or one ``run_id``), oldest first."""
    if run_id is None:
        return _read(db_path, "benchmark", BENCHMARK_COLUMNS)
    return _read(db_path, "benchmark", BENCHMARK_COLUMNS, "WHERE run_id = ?", [str(run_id)])


# --------------------------------------------------------------------------- runs and acceptance

__all__ += [
    "ACCEPTED_RUNS_COLUMNS",
    "list_runs",
    "compare_runs",
    "record_accepted_run",
    "last_accepted_run",
    "read_accepted_runs",
]

#: (name, DuckDB type) of table ``accepted_runs``: runs whose P@1 passed the regression check,
#: the baseline of the next check for the same dataset (and the same ``max_rows`` slice; NULL:
#: the whole dataset).
ACCEPTED_RUNS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("dataset", "VARCHAR"),
    ("run_id", "VARCHAR"),
    ("p1", "DOUBLE"),
    ("accepted_at", "TIMESTAMP"),
    ("max_rows", "BIGINT"),
)

_RUNS_KS = (1, 3, 5)


def list_runs(
    db_path: str | os.PathLike, dataset: str | None = None, limit: int | None = None
) -> pl.DataFrame:
    """One row per evaluated (run, dataset, model, split), oldest first: ``run_id``, ``dataset``,
    ``model``, ``split``, ``created_at`` and ``p@1``, ``p@3``, ``p@5`` (NULL when not stored).

    ``limit`` keeps the latest ``limit`` rows.
    """
    df = read_evaluation(db_path)
    if dataset is not None:
        df = df.filter(pl.col("dataset") == dataset)
    index = ["run_id", "dataset", "model", "split"]
    p_cols = [f"p@{k}" for k in _RUNS_KS]
    schema = {"run_id": pl.Utf8, "dataset": pl.Utf8, "model": pl.Utf8, "split": pl.Utf8,
              "created_at": pl.Datetime("us"), **{c: pl.Float64 for c in p_cols}}
    if df.is_empty():
        return pl.DataFrame(schema=schema)
    base = df.group_by(index, maintain_order=True).agg(pl.col("created_at").min())
    p = df.filter((pl.col("metric") == "p") & pl.col("k").is_in(list(_RUNS_KS)))
    for k, col in zip(_RUNS_KS, p_cols):
        vals = (p.filter(pl.col("k") == k).group_by(index, maintain_order=True)
                .agg(pl.col("value").last().alias(col)))
        base = base.join(vals, on=index, how="left")
    out = base.sort("created_at", maintain_order=True).select(list(schema)).cast(schema)
    return out.tail(limit) if limit is not None else out


def compare_runs(db_path: str | os.PathLike, run_a: str, run_b: str) -> pl.DataFrame:
    """Metric by metric: ``metric``, ``k``, ``a``, ``b``, ``delta`` (= b − a; NULL when one run
    lacks the metric), in the order run A wrote them (then B's extras).

    Args:
        db_path: the evaluation database file; run_a, run_b: the two run ids (A is the baseline).

    Returns:
        polars DataFrame with columns metric (str), k (int), a, b, delta (float, percent).

    Raises:
        KeyError: naming a run id that has no rows in ``evaluation``.
        EvaluationDBError, DatabaseLockedError: the database cannot be opened / stays locked.
    """
    frames = []
    for name, run_id in (("a", run_a), ("b", run_b)):
        df = read_evaluation(db_path, run_id)
        if df.is_empty():
            raise KeyError(f"no run {run_id!r} in table evaluation of {db_path}")
        frames.append(
            df.group_by(["metric", "k"], maintain_order=True).agg(pl.col("value").last().alias(name))
        )
    a, b = frames
    merged = a.join(b, on=["metric", "k"], how="full", coalesce=True, maintain_order="left_right")
    return merged.with_columns((pl.col("b") - pl.col("a")).alias("delta")).select(
        ["metric", "k", "a", "b", "delta"]
    )


def record_accepted_run(
    db_path: str | os.PathLike, dataset: str, run_id: str, p1: float, max_rows: int | None = None
) -> int:
    """Append one row to ``accepted_runs`` (created if missing).

    Args:
        db_path: the evaluation database file.
        dataset: dataset name; run_id: the accepted run.
        p1: its P@1 in percent (float).
        max_rows: the training-row slice it ran on (None: the full dataset).

    Returns:
        Number of rows written (int, 1).

    Raises:
        EvaluationDBError, DatabaseLockedError: the database cannot be opened / stays locked.
    """
    row = (str(dataset), str(run_id), float(p1), _now(), None if max_rows is None else int(max_rows))
    return _append(db_path, "accepted_runs", ACCEPTED_RUNS_COLUMNS, [row])


def read_accepted_runs(db_path: str | os.PathLike, dataset: str | None = None) -> pl.DataFrame:
    """Rows of ``accepted_runs`` (all, or one dataset), oldest first."""
    if dataset is None:
        return _read(db_path, "accepted_runs", ACCEPTED_RUNS_COLUMNS)
    return _read(db_path, "accepted_runs", ACCEPTED_RUNS_COLUMNS, "WHERE dataset = ?", [str(dataset)])


def last_accepted_run(
    db_path: str | os.PathLike, dataset: str, max_rows: int | None = None
) -> dict | None:
    """The latest accepted run of ``dataset`` on the same ``max_rows`` slice, as a dict of
    :data:`ACCEPTED_RUNS_COLUMNS`, or None."""
    df = read_accepted_runs(db_path, dataset)
    df = df.filter(pl.col("max_rows").is_null() if max_rows is None else pl.col("max_rows") == int(max_rows))
    if df.is_empty():
        return None
    return df.sort("accepted_at", maintain_order=True).row(-1, named=True)
