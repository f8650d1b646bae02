from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as smat

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
    d = SHARED_DATA / "reuters-21578"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    return d
