"""Issue 8, crashes and concurrent runs lose nothing.

* A materialization SIGKILLed while the rankers train leaves no model behind; rerunning it gives
  exactly the metrics of an undisturbed run (in DuckDB), so no partial artifact was read.
* Two pipeline runs writing the same DuckDB file at once both succeed, and all their rows are there.
* A process killed in the middle of writing a model folder or an artifact file leaves the previous
  version byte-identical and loadable (temporary name + rename).

`python -m xmc_assets.main` has no option for the artifact folder or the DuckDB file: both are
`data/...` under the repository root, i.e. next to the `xmc_assets` package. So each pipeline run
here uses a copy of the two packages in a temporary folder as its repository root, with its own
DAGSTER_HOME, and never touches the checkout's data/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as smat

from xmc_core.results_db import read_evaluation

REPO = Path(__file__).resolve().parents[1]
DATASET = "synth"


def _copy_repo(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for pkg in ("xmc_core", "xmc_assets"):
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _start(repo: Path, home: Path, data_root: Path, dataset: str, log: Path) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("XMC_DATA_ROOT", None)  # the data root comes from --data-root only
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "xmc_assets.main", "--dataset", dataset, "--data-root", str(data_root)],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"pipeline run timed out:\n{log.read_text(errors='replace')[-3000:]}")
    assert rc == 0, log.read_text(errors="replace")[-3000:]


def _metric_rows(db: Path, dataset: str) -> pl.DataFrame:
    df = read_evaluation(db)
    return df.filter(pl.col("dataset") == dataset).select(["run_id", "metric", "k", "value"])


def _values(rows: pl.DataFrame) -> dict[tuple[str, int], float]:
    return {(m, k): v for m, k, v in zip(rows["metric"], rows["k"], rows["value"])}


def test_sigkill_during_rankers_then_rerun_matches_undisturbed_run(tmp_path):
    from xmc_core.synth import SynthParams, write_synth

    data = tmp_path / "datasets"
    write_synth(data / DATASET, SynthParams(n_labels=300, n_train=3000, n_test=500, seed=0))
    write_synth(data / "tiny", SynthParams(n_labels=20, n_train=150, n_test=40, n_features=200, seed=1))
    repo_a, repo_b = _copy_repo(tmp_path / "repo-a"), _copy_repo(tmp_path / "repo-b")

    # Undisturbed run A, and at the same time run C of another dataset writing the same DuckDB
    # file (separate Dagster instances), and run B that is killed while its rankers train.
    a = _start(repo_a, tmp_path / "home-a", data, DATASET, tmp_path / "a.log")
    c = _start(repo_a, tmp_path / "home-c", data, "tiny", tmp_path / "c.log")
    b = _start(repo_b, tmp_path / "home-b", data, DATASET, tmp_path / "b1.log")

    b_art = repo_b / "data" / "artifacts" / DATASET
    tree_file = b_art / "disentangled_tree" / "tree.npz"  # written last by disentangled_tree: rankers start next
    deadline = time.monotonic() + 180
    while not tree_file.exists():
        assert b.poll() is None, (tmp_path / "b1.log").read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "run B never reached the rankers step"
        time.sleep(0.02)
    time.sleep(0.1)  # inside the rankers step (it trains for seconds on this dataset)
    os.killpg(b.pid, signal.SIGKILL)
    assert b.wait(30) == -signal.SIGKILL
    # Killed while the rankers trained: no model folder (only, at most, a temporary sibling),
    # and nothing reached DuckDB.
    assert not (b_art / "model").exists(), "rankers finished before the kill: make the dataset bigger"
    assert not _metric_rows(repo_b / "data" / "xmc.duckdb", DATASET).height

    # Rerun B to completion in the same folders and Dagster instance.
    b2 = _start(repo_b, tmp_path / "home-b", data, DATASET, tmp_path / "b2.log")
    _finish(a, tmp_path / "a.log")
    _finish(c, tmp_path / "c.log")
    _finish(b2, tmp_path / "b2.log")

    rows_a = _metric_rows(repo_a / "data" / "xmc.duckdb", DATASET)
    rows_b = _metric_rows(repo_b / "data" / "xmc.duckdb", DATASET)
    assert rows_a["run_id"].n_unique() == 1 and rows_b["run_id"].n_unique() == 1
    assert rows_a.height == rows_b.height >= 16
    assert _values(rows_b) == _values(rows_a)  # exactly the same numbers
    assert _values(rows_a)[("p", 1)] > 50
    for run, log in (("A", "a.log"), ("B", "b2.log")):
        assert "| p |" in (tmp_path / log).read_text(errors="replace"), run  # the printed table

    # Runs A and C wrote one DuckDB file at the same time: both complete, no lock error.
    all_rows = read_evaluation(repo_a / "data" / "xmc.duckdb")
    per_run = all_rows.group_by(["run_id", "dataset"]).len().sort("dataset")
    assert per_run["dataset"].to_list() == [DATASET, "tiny"]
    assert per_run["len"].to_list() == [rows_a.height, rows_a.height]


# --------------------------------------------------------------------------- killed writers

_KILLED_MODEL_SAVE = """
import sys, time
from pathlib import Path
import xmc_core.xlinear as xl
from xmc_core.model import XmcModel

model_dir, marker = sys.argv[1], Path(sys.argv[2])
model = XmcModel.load(model_dir)
save_ranker = xl.XLinearModel.save

def save_then_hang(self, folder):
    save_ranker(self, folder)          # the new files are half way written ...
    marker.write_text("writing")
    time.sleep(120)                    # ... when the process is killed

xl.XLinearModel.save = save_then_hang
model.label_names = [n + "-new" for n in model.label_names]
model.save(model_dir)
"""

_KILLED_ARTIFACT_WRITE = """
import sys, time
from pathlib import Path
import scipy.sparse as smat
import xmc_assets.resources as res

base, marker = sys.argv[1], Path(sys.argv[2])

def half_then_hang(fh, M, compressed=True):
    fh.write(b"PK\\x03\\x04 half of an npz")
    fh.flush()
    marker.write_text("writing")
    time.sleep(120)

res.smat.save_npz = half_then_hang
res.ArtifactStore(base_dir=base).write_sparse("ds", "tfidf", "X_train.npz", smat.identity(5, format="csr"))
"""


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_and_kill(script: str, *args: str, marker: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", script, *args, str(marker)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode(errors="replace"))
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def test_killed_model_save_leaves_previous_model(tmp_path, toy):
    from xmc_core.model import XmcModel, XRLinearParams, fit_rankers

    X, Y = toy
    model = fit_rankers(X, Y, [f"l{i}" for i in range(Y.shape[1])], XRLinearParams())
    model.set_label_counts(Y)
    folder = tmp_path / "model"
    model.save(folder)
    before = _snapshot(folder)
    expected = model.predict(X[:20], topk=5).toarray()

    _run_and_kill(_KILLED_MODEL_SAVE, str(folder), marker=tmp_path / "marker")

    assert _snapshot(folder) == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.tmp-")]
    assert len(leftovers) == 1  # the half-written folder, under its temporary name only
    again = XmcModel.load(folder)
    assert again.label_names == model.label_names
    np.testing.assert_array_equal(again.predict(X[:20], topk=5).toarray(), expected)
    # the next save replaces the folder completely
    model.save(folder)
    assert _snapshot(folder) == before


def test_killed_artifact_write_leaves_previous_file(tmp_path):
    from xmc_assets.resources import ArtifactStore

    store = ArtifactStore(base_dir=str(tmp_path / "artifacts"))
    old = smat.random(4, 6, density=0.5, format="csr", random_state=0)
    path = store.write_sparse("ds", "tfidf", "X_train.npz", old)
    before = path.read_bytes()

    _run_and_kill(_KILLED_ARTIFACT_WRITE, str(tmp_path / "artifacts"), marker=tmp_path / "marker")

    assert path.read_bytes() == before
    assert (store.read_sparse("ds", "tfidf", "X_train.npz") != old).nnz == 0
    names = sorted(p.name for p in path.parent.iterdir())
    assert names[1:] == ["X_train.npz"] and names[0].startswith(".X_train.npz.tmp-")
