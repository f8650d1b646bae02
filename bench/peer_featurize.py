#!/usr/bin/env python3
"""The peers' features, made as their own users make them: scikit-learn in the peers' environment.

Run with the peers venv (bench/setup_peers.sh), by bench/compare_peers.py:

    bench/.venv-peers/bin/python bench/peer_featurize.py --common DIR --out DIR

DIR (--common) holds what xmc's reader read from the dataset, not featurized: texts.<split>.txt
(one document a line, UTF-8) for a raw-text dataset, or bow.<split>.npz (the dataset's own
bag-of-words counts) for a bag-of-words one, for the splits trn, tst and, where present, dev.
Writes X.<split>.npz (float32 CSR) for each into --out:

* raw text: `sklearn.feature_extraction.text.TfidfVectorizer(ngram_range=(1, 2), min_df=2,
  sublinear_tf=True, dtype=float32)` fitted on the training texts, `transform` of the others
  (its own tokenizer, `(?u)\\b\\w\\w+\\b` lowercased; l2 rows) — the settings PECOS's, omikuji's and
  napkinXC's users pair with their learners, and the ones xmc's own TF-IDF defaults to;
* bag of words: the given counts with rows scaled to unit l2 norm (`sklearn.preprocessing.normalize`).

Prints one JSON line: {"features": ..., "featurize_s": ..., "n_features": ..., "sklearn": version}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def _texts(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--common", required=True, help="texts.{trn,tst}.txt or bow.{trn,tst}.npz")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import sklearn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    common, out = Path(args.common), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    splits = [k for k in ("trn", "dev", "tst")
              if (common / f"texts.{k}.txt").is_file() or (common / f"bow.{k}.npz").is_file()]
    if (common / "texts.trn.txt").is_file():
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, dtype=np.float32)
        X = {"trn": vec.fit_transform(_texts(common / "texts.trn.txt"))}
        X.update({k: vec.transform(_texts(common / f"texts.{k}.txt")) for k in splits if k != "trn"})
        kind = "sklearn-tfidf"
    else:
        X = {k: normalize(sp.load_npz(common / f"bow.{k}.npz").tocsr().astype(np.float32)) for k in splits}
        kind = "bow-l2"
    for k in splits:
        M = sp.csr_matrix(X[k], dtype=np.float32)
        M.sort_indices()
        sp.save_npz(out / f"X.{k}.npz", M, compressed=False)
    Xtr = X["trn"]
    meta = {"features": kind, "featurize_s": round(time.perf_counter() - t0, 2), "n_features": int(Xtr.shape[1]),
            "sklearn": sklearn.__version__}
    (out / "meta.json").write_text(json.dumps(meta))
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
