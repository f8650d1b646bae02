#!/usr/bin/env python3
"""Convert an Extreme Classification Repository text file into scipy .npz matrices.

Input format (plain or .gz): first line "N F L", then one line per point
"l1,l2,... f:v f:v ..." with 0-based ids. A point without labels has a line that
starts with a space (its label field is empty); a line may also have no features.

Output: X (float32 CSR, N x F, rows l2-normalized unless --no-normalize) and
Y (float32 binary CSR, N x L), written with scipy.sparse.save_npz.

Only needs numpy + scipy, so it runs under either the project's or the peers' python:

    python bench/xc_to_npz.py /work/shared/data/bibtex/train.txt.gz X.trn.npz Y.trn.npz
"""

from __future__ import annotations

import argparse
import gzip
import sys

import numpy as np
import scipy.sparse as sp


def _open(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="ascii")
    return open(path, "rt", encoding="ascii")


def read_xc(path: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Read an XC-format file; returns raw (un-normalized) X float32 CSR and binary Y float32 CSR."""
    with _open(path) as f:
        header = f.readline().split()
        if len(header) != 3:
            raise ValueError(f"{path}: expected header 'N F L', got {header!r}")
        n, n_feat, n_lab = (int(t) for t in header)

        x_ptr, x_ind, x_val = [0], [], []
        y_ptr, y_ind = [0], []
        rows = 0
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip() and rows >= n:
                continue  # tolerate trailing blank lines
            toks = line.split(" ")
            # The first space-separated token is the label field (possibly empty),
            # unless it is a feature (contains ':'), i.e. a label-less line without the leading space.
            if toks and ":" not in toks[0]:
                lab_tok, feat_toks = toks[0], toks[1:]
            else:
                lab_tok, feat_toks = "", toks
            labs = sorted({int(t) for t in lab_tok.split(",") if t})
            feats: dict[int, float] = {}
            for t in feat_toks:
                if not t:
                    continue
                k, v = t.split(":")
                feats[int(k)] = float(v)
            if labs and (labs[0] < 0 or labs[-1] >= n_lab):
                raise ValueError(f"{path}:{lineno}: label id out of range [0,{n_lab})")
            keys = sorted(feats)
            if keys and (keys[0] < 0 or keys[-1] >= n_feat):
                raise ValueError(f"{path}:{lineno}: feature id out of range [0,{n_feat})")
            x_ind.extend(keys)
            x_val.extend(feats[k] for k in keys)
            x_ptr.append(len(x_ind))
            y_ind.extend(labs)
            y_ptr.append(len(y_ind))
            rows += 1
    if rows != n:
        raise ValueError(f"{path}: header says {n} points, read {rows}")

    X = sp.csr_matrix(
        (np.asarray(x_val, dtype=np.float32), np.asarray(x_ind, dtype=np.int32), np.asarray(x_ptr, dtype=np.int64)),
        shape=(n, n_feat),
    )
    Y = sp.csr_matrix(
        (np.ones(len(y_ind), dtype=np.float32), np.asarray(y_ind, dtype=np.int32), np.asarray(y_ptr, dtype=np.int64)),
        shape=(n, n_lab),
    )
    X.sort_indices()
    Y.sort_indices()
    return X, Y


def l2_normalize_rows(X: sp.csr_matrix) -> sp.csr_matrix:
    X = X.tocsr(copy=True).astype(np.float32)
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1), dtype=np.float64).ravel())
    norms[norms == 0] = 1.0
    X.data /= np.repeat(norms, np.diff(X.indptr)).astype(np.float32)
    return X


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="XC-format text file (.txt or .txt.gz)")
    ap.add_argument("out_x", help="output X .npz")
    ap.add_argument("out_y", help="output Y .npz")
    ap.add_argument("--no-normalize", action="store_true", help="keep raw feature values (default: l2-normalize rows)")
    args = ap.parse_args(argv)

    X, Y = read_xc(args.input)
    if not args.no_normalize:
        X = l2_normalize_rows(X)
    sp.save_npz(args.out_x, X)
    sp.save_npz(args.out_y, Y)
    n_nolab = int((np.diff(Y.indptr) == 0).sum())
    n_nofeat = int((np.diff(X.indptr) == 0).sum())
    print(
        f"{args.input}: X {X.shape} nnz={X.nnz} -> {args.out_x}; Y {Y.shape} nnz={Y.nnz} -> {args.out_y}; "
        f"rows without labels={n_nolab}, without features={n_nofeat}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
