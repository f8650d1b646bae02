"""A benchmark run's record in the repository: ``bench/results/<run_id>.csv`` and ``.md``.

The DuckDB file (``data/xmc.duckdb``) is local to one checkout, so a number the README quotes from
it could not be checked by anyone else. Every bench script therefore ends with :func:`finish`:
it appends the run's rows to the DuckDB ``benchmark`` table, reads them back and exports them
next to the code — a CSV of the rows as stored (``extra`` as JSON text) and a markdown page with
the run id, the date, the machine (CPU model, cores, memory, load average before and after: a
timing taken beside other work says so), the commit (``-dirty`` when tracked files differed from
it), the command line and the settings, then the rows as a table. ``tests/test_bench_records.py``
checks that every run id the README cites has both files and that the README's benchmark tables
quote numbers those files hold.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
#: environment variable naming another folder for the records (scratch runs); default RESULTS
RESULTS_ENV = "XMC_BENCH_RESULTS"

#: Columns of the markdown table, in order (the CSV keeps every column of the ``benchmark`` table).
MD_COLUMNS = ("dataset", "system", "threads", "n_labels", "n_train", "n_test", "train_s", "predict_s",
              "peak_rss_mb", "p1", "p3", "p5")


def shown(path: Path) -> Path:
    """`path` relative to the repository when it lies inside it (a record under $XMC_BENCH_RESULTS
    may not)."""
    path = Path(path)
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def new_run_id(bench: str) -> str:
    """``<bench>-<UTC yyyymmddThhmmss>-<6 hex>``, the form the README cites."""
    return f"{bench}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    """The machine a run measured: CPU model, logical cores, memory (GiB), OS, Python, 1-min load."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gb": _memory_gb(),
            "os": platform.platform(), "python": platform.python_version(),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def commit() -> str:
    """The checkout's commit, ``-dirty`` when tracked files (outside ``bench/results``) differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


class Run:
    """One benchmark run: its id, and the machine and commit seen when it started."""

    def __init__(self, bench: str, settings: Mapping | None = None, argv: Sequence[str] | None = None):
        self.bench = bench
        self.run_id = new_run_id(bench)
        self.settings = dict(settings or {})
        self.argv = list(sys.argv if argv is None else argv)
        self.machine = machine()
        self.commit = commit()
        self.started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        # the long steps this process runs report on stderr (the table stays on stdout);
        # XMC_QUIET=1 keeps it silent
        from xmc_core import progress

        progress.install(progress.for_stream(sys.stderr, quiet=os.environ.get("XMC_QUIET", "") not in ("", "0")))

    def finish(self, db: str | os.PathLike, rows: Sequence[Mapping], notes: str = "",
               out: str | os.PathLike = RESULTS) -> tuple[Path, Path]:
        """Append ``rows`` to DuckDB ``benchmark`` (their ``run_id`` set to this run's) and export them.

        Returns the paths of the CSV and markdown files written under ``out`` (``$XMC_BENCH_RESULTS``
        instead of bench/results when set: a scratch run, with ``--db`` elsewhere too).
        """
        from xmc_core.results_db import append_benchmark

        rows = [{**r, "run_id": self.run_id} for r in rows]
        if rows:
            append_benchmark(db, rows)
        if out == RESULTS:  # a scratch run (a try-out, a noisy repeat) sends its record elsewhere
            out = os.environ.get(RESULTS_ENV) or RESULTS
        return self.export(db, notes, out)

    def export(self, db: str | os.PathLike, notes: str = "", out: str | os.PathLike = RESULTS) -> tuple[Path, Path]:
        """Write ``<out>/<run_id>.csv`` and ``.md`` from this run's rows as DuckDB holds them."""
        from xmc_core.results_db import read_benchmark

        df = read_benchmark(db, self.run_id)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        csv, md = out / f"{self.run_id}.csv", out / f"{self.run_id}.md"
        df.with_columns(df["created_at"].cast(str)).write_csv(csv)
        end = machine()
        m = self.machine
        lines = [f"# {self.run_id}", "",
                 f"- bench: `{self.bench}`; started {self.started}, {len(df)} rows",
                 f"- machine: {m['cpu']}, {m['cores']} logical cores, {m['memory_gb']} GiB; {m['os']}; "
                 f"Python {m['python']}",
                 f"- load average (1 min): {m['loadavg_1m']} at the start, {end['loadavg_1m']} at the end",
                 f"- commit: `{self.commit}`",
                 f"- command: `{shlex.join(self.argv)}`",
                 f"- settings: `{json.dumps(self.settings, sort_keys=True, default=str)}`"]
        if notes:
            lines += ["", notes.strip()]
        lines += ["", "| " + " | ".join(MD_COLUMNS) + " | extra |", "|" + "---|" * (len(MD_COLUMNS) + 1)]
        for row in df.iter_rows(named=True):
            cells = [_cell(row[c]) for c in MD_COLUMNS] + [f"`{row['extra']}`" if row["extra"] else ""]
            lines.append("| " + " | ".join(cells) + " |")
        md.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"record: {shown(csv)} and .md", flush=True)
        return csv, md


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.0f}"
    return str(v)
