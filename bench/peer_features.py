"""What the peers featurize from, and their features made in their own environment.

xmc writes, per dataset, a `common` folder: Y.<split>.npz and the documents as its reader read
them, not featurized (texts.<split>.txt, one a line, or bow.<split>.npz, the dataset's counts).
`peer_featurize` runs bench/peer_featurize.py with the peers' Python (scikit-learn's TF-IDF, see
there) into a folder of its own, with the labels linked beside the features, so that a peer never
reads xmc's matrices. Used by bench/compare_peers.py and bench/label_sets.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import scipy.sparse as smat

REPO = Path(__file__).resolve().parents[1]
PEERS_PY = REPO / "bench" / ".venv-peers" / "bin" / "python"


def link(src: Path, dst: Path) -> None:
    """dst a hard link to src (replacing it)."""
    dst.unlink(missing_ok=True)
    os.link(src, dst)


def write_common(common: Path, splits: dict) -> None:
    """common/Y.<k>.npz and texts.<k>.txt (raw text) or bow.<k>.npz (bag of words) of each split
    k: (texts or None, X or None, Y)."""
    common.mkdir(parents=True, exist_ok=True)
    for k, (texts, X, Y) in splits.items():
        smat.save_npz(common / f"Y.{k}.npz", smat.csr_matrix(Y, dtype=np.float32), compressed=False)
        if texts is not None:  # one document a line, as the raw-text layout holds them
            with open(common / f"texts.{k}.txt", "w", encoding="utf-8") as f:
                f.writelines(t.replace("\r", " ").replace("\n", " ") + "\n" for t in texts)
        else:
            smat.save_npz(common / f"bow.{k}.npz", smat.csr_matrix(X, dtype=np.float32), compressed=False)


def peer_featurize(common: Path, out: Path) -> dict:
    """The peers' own features of the splits in `common` (cached in `out`: X.<k>.npz, with
    common's Y.<k>.npz linked beside them); returns bench/peer_featurize.py's meta."""
    meta_file = out / "meta.json"
    splits = [p.name.split(".")[1] for p in common.glob("Y.*.npz")]
    if meta_file.is_file() and all((out / f"X.{k}.npz").is_file() for k in splits):
        return json.loads(meta_file.read_text())
    if not PEERS_PY.exists():
        raise SystemExit(f"{PEERS_PY} missing: run bash bench/setup_peers.sh first")
    proc = subprocess.run([str(PEERS_PY), str(REPO / "bench" / "peer_featurize.py"), "--common", str(common),
                           "--out", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"peer featurization failed on {common}:\n{proc.stderr[-3000:]}")
    for k in splits:
        link(common / f"Y.{k}.npz", out / f"Y.{k}.npz")
    return json.loads(meta_file.read_text())
