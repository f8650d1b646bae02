import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as smat

REPO = Path(__file__).resolve().parents[1]
#: The real datasets, beside the checkout (``../shared/data``), wherever the clone lives.
SHARED_DATA = REPO.parent / "shared" / "data"


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but ''/0/false), where a missing requirement fails."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str):
    """Skip locally; fail in CI, so that CI can never pass by silently testing less."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a test that cannot run here fails instead of skipping)",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def shared_dataset(name: str) -> Path:
    """``../shared/data/<name>``; skips (locally) or fails (CI) when it is absent."""
    d = SHARED_DATA / name
    if not d.is_dir():
        missing(f"{d} not present (the real datasets are expected at ../shared/data from the repo root)")
    return d


def require_module(name: str):
    """``pytest.importorskip`` that fails in CI instead of skipping."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"module {name!r} not importable: {exc}")


def clustered_problem(n=600, n_labels=40, n_features=300, seed=0):
    """A learnable toy problem: each label owns a few features; documents mix their labels' features.

    Returns X (n × D float32 CSR, l2 rows), Y (n × L float32 CSR binary).
    """
    from xmc_core.sparse import l2_normalize_rows

    rng = np.random.default_rng(seed)
    feats_per_label = n_features // n_labels
    rows, cols, yr, yc = [], [], [], []
    for i in range(n):
        labels = rng.choice(n_labels, size=rng.integers(1, 4), replace=False)
        for l in labels:
            yr.append(i)
            yc.append(l)
            f = l * feats_per_label + rng.choice(feats_per_label, size=3, replace=False)
            rows.extend([i] * 3)
            cols.extend(f.tolist())
        noise = rng.choice(n_features, size=5, replace=False)
        rows.extend([i] * 5)
        cols.extend(noise.tolist())
    X = smat.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n_features))
    X.sum_duplicates()
    Y = smat.csr_matrix((np.ones(len(yr), np.float32), (yr, yc)), shape=(n, n_labels))
    return l2_normalize_rows(X), Y


@pytest.fixture
def toy():
    return clustered_problem()


@pytest.fixture
def reuters_dir():
    return shared_dataset("reuters-21578")
