"""Batch predictions as Parquet: the one output format of `xmc predict --engine ray` and the
Dagster `batch_predictions` asset, whichever engine scored the documents.

A shard file holds one row per document: doc (int64, the document's number in the whole input,
in input order), labels (list<string>, best first) and scores (list<float32>, the model's scores
of those labels). It is written under a temporary name and renamed, so a reader sees it whole or
not at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["write_predictions", "predict_shard", "split_shards"]


def write_predictions(path: str | Path, first_doc: int, results: Sequence[Sequence[tuple[str, float]]]) -> int:
    """Write one shard of `predict_labels` results.

    Args:
        path: the .parquet file to write (its folder exists).
        first_doc: number of the shard's first document in the whole input (int >= 0).
        results: per document, (label name, score) pairs best first.

    Returns:
        The number of rows written (int).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(results)
    table = pa.table({
        "doc": pa.array(np.arange(first_doc, first_doc + n, dtype=np.int64)),
        "labels": pa.array([[str(name) for name, _ in r] for r in results], type=pa.list_(pa.string())),
        "scores": pa.array([[float(s) for _, s in r] for r in results], type=pa.list_(pa.float32())),
    })
    path = str(path)
    tmp = path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return n


def predict_shard(model, inputs, path: str | Path, first_doc: int, topk: int = 5, beam_size: int | None = None) -> int:
    """Score `inputs` (texts or an n × D CSR) with a loaded model and write them as one shard.

    Returns:
        The number of documents (int).
    """
    return write_predictions(path, first_doc, model.predict_labels(inputs, topk=topk, beam_size=beam_size))


def split_shards(inputs, rows: int) -> list:
    """`inputs` (texts or an n × D CSR) cut into consecutive shards of at most `rows` documents,
    in order; one empty shard when there are no documents (so the output still has a file).

    Args:
        inputs: list of texts or an n × D scipy CSR matrix.
        rows: documents per shard (int >= 1).

    Returns:
        list of slices of `inputs`.
    """
    n = inputs.shape[0] if hasattr(inputs, "shape") else len(inputs)
    return [inputs[i:i + rows] for i in range(0, n, rows)] or [inputs]
