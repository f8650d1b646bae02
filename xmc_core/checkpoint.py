"""What a training checkpoint belongs to: one fingerprint of the settings and the training data.

XR-Transformer (a checkpoint per fine-tuning level) and XLGen (a checkpoint every few hundred
steps) resume a killed run only from a checkpoint of the same settings and data; both key it with
`checkpoint_key`, and both find it with `read_checkpoint_meta` (its state.json).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as smat

__all__ = ["checkpoint_key", "read_checkpoint_meta"]


def checkpoint_key(texts: Sequence[str], Y: smat.spmatrix, settings: dict, extra: Sequence[str] = ()) -> str:
    """Fingerprint of what a checkpoint depends on.

    Args:
        texts: the N training documents (hashed in order).
        Y: their N × L labels (the sparsity pattern is hashed).
        settings: the model's settings as a JSON-serializable dict (keys sorted when hashed).
        extra: further strings the training reads (e.g. label titles), hashed in order.

    Returns:
        40-character hex SHA-1 (str).
    """
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    Y = smat.csr_matrix(Y)
    h.update(np.asarray(Y.indptr, np.int64).tobytes())
    h.update(np.asarray(Y.indices, np.int64).tobytes())
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    if len(extra):
        h.update(b"\1")
        for s in extra:
            h.update(str(s).encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    return h.hexdigest()


def read_checkpoint_meta(folder: str | Path, key: str | None = None) -> dict | None:
    """The state.json of a checkpoint folder, when it is there and belongs to `key`.

    Args:
        folder: the checkpoint folder (str or Path); it need not exist.
        key: the expected `checkpoint_key` (None: accept any).

    Returns:
        The parsed state.json (dict), or None when the folder has none or it holds another key.

    Raises:
        OSError, ValueError: an unreadable state.json.
    """
    path = Path(folder) / "state.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if key is not None and meta.get("key") != key:
        return None
    return meta
