"""XR-Linear: recursive linear matchers/rankers over a label tree, served by beam search.

Contracts
- X: N × D float32 CSR, rows l2-normalized. A constant bias feature (value `bias`) is appended
  inside the model, so weights are (D+1) × K.
- Y: N × L binary float32 CSR.
- tree: `LabelTree` with C[t] of shape K_t × K_{t-1} (C[-1]: L × K_last).
- W[t]: (D+1) × nnz(C[t]) float32 CSC. Column j scores node C[t].indices[j]; the columns of a
  parent p are indptr[p]:indptr[p+1] of C[t] (children of one parent are contiguous). A label
  that sits in several leaf clusters (label disentanglement) has one column per copy.

Training, per level t (coarse → fine): each parent's children get one-vs-rest L2-regularized
squared-hinge classifiers, trained on the instances "active" for that parent: teacher-forced
(TFN: the instance has a positive under the parent), matcher-aware (MAN: the model trained so far
routes the instance to the parent within its beam) or both. All children of a parent share their
instance block, so they are solved together: by dual coordinate descent (the default, solver="dcd":
liblinear's L2R_L2LOSS_SVC_DUAL, Hsieh et al. 2008, compiled in `kernels`) or by a batched primal
Newton-CG (solver="newton", TRON-style) whose work is sparse-dense matrix products: no Python loop
runs per label or per instance. Weights with |w| < threshold are pruned.

Source: PECOS XR-Linear (``pecos/xmc/xlinear/model.py``; Yu et al. 2022, "PECOS: Prediction for
Enormous and Correlated Output Spaces", JMLR).

Prediction: beam search. Level 0 scores the root's children; level t scores only the children of
the beam kept at t-1, combining transformed scores with the parent's (post-processor).
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as smat

from . import kernels, progress
from .folders import atomic_dir
from .params import ParamsBase
from .sparse import binarize

from .tree import LabelTree

__all__ = [
    "RankerParams",
    "PredParams",
    "XLinearModel",
    "POST_PROCESSORS",
    "solve_squared_hinge",
    "solve_squared_hinge_dcd",
]


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------
@dataclass
class RankerParams(ParamsBase):
    """Training settings of the linear rankers (PECOS names).

    Cp, Cn: loss weights of positive and negative examples.
    bias: value of the appended constant feature (0 disables the bias term).
    threshold: weights with |w| below it are pruned to zero.
    negative_sampling: "tfn", "man" or "tfn+man".
    solver: "dcd" (dual coordinate descent with shrinking, liblinear's L2R_L2LOSS_SVC_DUAL and
        PECOS's default; compiled, `kernels.dcd_squared_hinge`) or "newton" (batched primal
        Newton-CG in numpy, `solve_squared_hinge`).
    max_iter, eps (dcd): passes over a block's instances, and the stop when the spread of the
        projected gradient is <= eps (PECOS: 100, 0.1).
    newton_max_iter, newton_eps (newton): Newton iterations; stop when ||g|| <= eps * ||g_0||.
    cg_max_iter, cg_eps (newton): conjugate-gradient iterations and relative tolerance per Newton
        step. (newton_eps 1e-4 / cg_eps 0.1 measured against PECOS: looser settings, 1e-3 / 0.3,
        train ~1.7× faster on eurlex57k but lose ~0.1-0.2 P@1 there.)
    seed: instance order of the coordinate descent (dcd).
    man_beam_size: beam of the matcher that selects MAN negatives (None: PredParams.beam_size).
    threads: worker threads (-1: all cores).
    """

    Cp: float = 1.0
    Cn: float = 1.0
    bias: float = 1.0
    threshold: float = 0.1
    negative_sampling: str = "tfn"
    solver: str = "dcd"
    max_iter: int = 100
    eps: float = 0.1
    newton_max_iter: int = 20
    newton_eps: float = 1e-4
    cg_max_iter: int = 30
    cg_eps: float = 0.1
    man_beam_size: int | None = None
    threads: int = -1
    seed: int = 0

    def __post_init__(self):
        if self.solver not in ("dcd", "newton"):
            raise ValueError(f"RankerParams.solver: expected dcd or newton, got {self.solver!r}")
        if self.negative_sampling not in ("tfn", "man", "tfn+man"):
            raise ValueError(
                f"RankerParams.negative_sampling: expected tfn, man or tfn+man, got {self.negative_sampling!r}"
            )
        if self.Cp <= 0 or self.Cn <= 0:
            raise ValueError(f"RankerParams: Cp and Cn must be > 0, got {self.Cp}, {self.Cn}")
        if self.threshold < 0:
            raise ValueError(f"RankerParams.threshold: must be >= 0, got {self.threshold}")



@dataclass
class PredParams(ParamsBase):
    """Prediction settings (PECOS names).

    beam_size: nodes kept per tree level (int >= 1).
    only_topk: labels kept per document at the end (int >= 1).
    post_processor: score transform and combination, a key of `POST_PROCESSORS` ("l3-hinge":
        PECOS's default).
    threads: worker threads for batch scoring (-1: all cores).
    """

    beam_size: int = 10
    only_topk: int = 20
    post_processor: str = "l3-hinge"
    threads: int = -1

    def __post_init__(self):
        if self.beam_size < 1 or self.only_topk < 1:
            raise ValueError(f"PredParams: beam_size and only_topk must be >= 1, got {self.beam_size}, {self.only_topk}")
        if self.post_processor not in POST_PROCESSORS:
            raise ValueError(
                f"PredParams.post_processor: expected one of {sorted(POST_PROCESSORS)}, got {self.post_processor!r}"
            )



# ---------------------------------------------------------------------------------------------
# Post-processors: (transform of a raw score, how it combines with the parent's, root value)
# ---------------------------------------------------------------------------------------------
def _lp_hinge(p):
    return lambda v: np.exp(-np.maximum(1.0 - v, 0.0) ** p)


def _log_lp_hinge(p):
    return lambda v: -np.maximum(1.0 - v, 0.0) ** p


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _log_sigmoid(v):
    return -np.logaddexp(0.0, -v)


_MUL, _ADD, _NOOP = "mul", "add", "noop"
#: Score post-processors of the beam search by name (PECOS's names): name -> (transform of a raw
#: score, "mul" | "add" | "noop" combination with the parent's score, the root's score).
#: "l{p}-hinge" is exp(-max(0, 1 - v)^p), "log-l{p}-hinge" its log, p = 1..4.
POST_PROCESSORS: dict[str, tuple[Callable, str, float]] = {
    "noop": (lambda v: v, _NOOP, 0.0),
    "sigmoid": (_sigmoid, _MUL, 1.0),
    "log-sigmoid": (_log_sigmoid, _ADD, 0.0),
}
for _p in range(1, 5):
    POST_PROCESSORS[f"l{_p}-hinge"] = (_lp_hinge(_p), _MUL, 1.0)
    POST_PROCESSORS[f"log-l{_p}-hinge"] = (_log_lp_hinge(_p), _ADD, 0.0)


# (code, power) of each post-processor for the compiled beam step (`kernels.select_topk`)
_PP_CODES: dict[str, tuple[int, float]] = {
    "noop": (kernels.PP_NOOP, 1.0),
    "sigmoid": (kernels.PP_SIGMOID, 1.0),
    "log-sigmoid": (kernels.PP_LOG_SIGMOID, 1.0),
    **{f"l{p}-hinge": (kernels.PP_LP_HINGE, float(p)) for p in range(1, 5)},
    **{f"log-l{p}-hinge": (kernels.PP_LOG_LP_HINGE, float(p)) for p in range(1, 5)},
}


# ---------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------
def solve_squared_hinge(
    X: smat.csr_matrix,
    Ypos: np.ndarray,
    Cp: float = 1.0,
    Cn: float = 1.0,
    max_iter: int = 10,
    eps: float = 0.01,
    cg_max_iter: int = 20,
    cg_eps: float = 0.1,
    gram_max_n: int = 8192,
    threads: int = 1,
) -> np.ndarray:
    """K one-vs-rest L2-regularized squared-hinge SVMs on one shared instance block.

    minimize_w 0.5 ||w_k||² + Σ_i c_ik max(0, 1 - y_ik <w_k, x_i>)²,  c_ik = Cp if y_ik = +1 else Cn.

    Newton-CG with the generalized Hessian I + 2 Xᵀ D X, solved for all K columns at once (each
    column keeps its own CG and line-search state). Blocks with few instances and many features
    (n <= gram_max_n and n² small against nnz + d) run the same iteration in the span of the
    instances (`_solve_squared_hinge_gram`).

    Args:
        X: n × d float32 CSR instance block (include the bias column yourself).
        Ypos: n × K bool, True = positive.
        Cp, Cn: loss weights of positives and negatives (float > 0).
        max_iter: Newton iterations; eps: stop when ||g|| <= eps · ||g_0|| (per column).
        cg_max_iter, cg_eps: conjugate-gradient iterations and relative tolerance per step.
        gram_max_n: most instances for the Gram (dual-span) path.
        threads: worker threads for the sparse products (int; <= 1: none).

    Returns:
        W: d × K float32 dense; zeros when n = 0 or K = 0.

    Source:
        The primal truncated-Newton method of liblinear's L2R_L2LOSS_SVC (Lin, Weng & Keerthi
        2008, "Trust Region Newton Method for Large-Scale Logistic Regression", JMLR), here with
        an Armijo line search (`_armijo_steps`) in place of the trust region.
    """
    n, d = X.shape
    K = Ypos.shape[1]
    W = np.zeros((d, K), np.float32)
    if n == 0 or K == 0:
        return W
    X = smat.csr_matrix(X, dtype=np.float32)
    # Gram path when its dense n×n products (BLAS, ~10× the throughput of sparse/elementwise
    # passes) cost less than the primal's sparse products and d-length vector updates.
    if n <= gram_max_n and n * n <= 10 * (4 * X.nnz + 10 * d):
        return _solve_squared_hinge_gram(X, Ypos, Cp, Cn, max_iter, eps, cg_max_iter, cg_eps)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        return _solve_primal(X, Ypos, Cp, Cn, max_iter, eps, cg_max_iter, cg_eps, threads, pool)
    finally:
        if pool is not None:
            pool.shutdown()


def solve_squared_hinge_dcd(
    X: smat.csr_matrix,
    Ypos: np.ndarray,
    Cp: float = 1.0,
    Cn: float = 1.0,
    eps: float = 0.1,
    max_iter: int = 100,
    threads: int = 1,
    seed: int = 0,
    threshold: float | None = None,
    stats: list | None = None,
    lanes: bool = True,
):
    """The problem of `solve_squared_hinge` by dual coordinate descent (one column at a time).

    Columns are split over `threads` (the compiled loop releases the GIL); from 16 columns on,
    they go LANES (8) at a time through `kernels.dcd_squared_hinge_lanes`. A column's solution
    does not depend on `threads`.

    Args:
        X: n × d float32 CSR (bias column included; indices need not be sorted).
        Ypos: n × K bool, True = positive.
        Cp, Cn: loss weights of positives and negatives (float > 0).
        eps: stop when the spread of the projected gradient is <= eps (PECOS: 0.1).
        max_iter: most passes over the instances (PECOS: 100).
        threads: worker threads (int; <= 1: one).
        seed: seed of the instance order of each pass.
        threshold: when given, weights with |w| < threshold are pruned inside the kernel.
        stats: when given, receives one (K_part,) int64 array of coordinate visits per column
            (n per full pass) per worker.
        lanes: False solves every column alone (`kernels.dcd_squared_hinge`), never 8 at a time.

    Returns:
        W: d × K float32 dense; with a `threshold`, the pruned weights as triplets (rows int64,
        cols int64, values float32) with |value| >= threshold instead (no dense matrix is made).

    Source:
        Hsieh et al. 2008, "A Dual Coordinate Descent Method for Large-scale Linear SVM", ICML;
        liblinear's L2R_L2LOSS_SVC_DUAL (PECOS's default ranker solver).
    """
    n, d = X.shape
    K = Ypos.shape[1]
    X = smat.csr_matrix(X, dtype=np.float32)
    Y8 = np.ascontiguousarray(Ypos, dtype=np.uint8)
    # unsigned column ids: the compiled loop then needs no negative-index wraparound per access
    indptr, indices = np.asarray(X.indptr, np.int64), np.asarray(X.indices, np.int32).view(np.uint32)
    thr = 0.0 if threshold is None else float(threshold)

    def solve(cols):
        visits = np.zeros(len(cols), np.int64)
        args = (indptr, indices, X.data, d, Y8, cols, float(Cp), float(Cn), float(eps), int(max_iter), int(seed),
                thr, visits)
        if width > 1:
            f, kk, v = kernels.dcd_squared_hinge_lanes(*args, width)
        else:
            f, kk, v = kernels.dcd_squared_hinge(*args)
        if stats is not None:
            stats.append(visits)
        return f, cols[kk], v

    # Columns go through the solver LANES (8) at a time when there are at least 16: one visit of
    # a row serves the whole group (1.3-2× faster per column, measured on eurlex57k, yso-finna-en
    # and the synthetic sets). Fewer columns go one at a time, so that threads still share them.
    # Groups (threads get whole groups) depend on K alone, so a column's solution does not depend
    # on the threads. Thread parallelism at a level with one parent is then K / 8 groups.
    width = kernels.LANES if lanes and K >= 2 * kernels.LANES else 1
    n_groups = -(-K // width)
    if n == 0 or K == 0:
        parts = []
    elif threads <= 1 or n_groups == 1:
        parts = [solve(np.arange(K, dtype=np.int64))]
    else:
        chunks = [np.arange(g[0] * width, min((g[-1] + 1) * width, K), dtype=np.int64)
                  for g in np.array_split(np.arange(n_groups), min(threads, n_groups))]
        with ThreadPoolExecutor(len(chunks)) as ex:
            parts = list(ex.map(solve, chunks))
    if parts:
        r, c, v = (np.concatenate(x) for x in zip(*parts))
    else:
        r = c = np.zeros(0, np.int64)
        v = np.zeros(0, np.float32)
    if threshold is not None:
        return r, c, v
    W = np.zeros((d, K), np.float32)
    W[r, c] = v
    return W


def _solve_primal(X, Ypos, Cp, Cn, max_iter, eps, cg_max_iter, cg_eps, threads, pool) -> np.ndarray:
    n, d = X.shape
    K = Ypos.shape[1]
    W = np.zeros((d, K), np.float32)
    XF = _ThreadedCSR(X, threads, pool)
    XT = _ThreadedCSR(X.T.tocsr(), threads, pool)
    y = np.where(Ypos, np.float32(1.0), np.float32(-1.0))
    c = np.where(Ypos, np.float32(Cp), np.float32(Cn))
    z = np.zeros((n, K), np.float32)

    def grad(W, z, cols):
        yz = y[:, cols] * z
        act = yz < 1.0
        r = np.where(act, c[:, cols] * (z - y[:, cols]), np.float32(0.0))
        return W + 2.0 * (XT @ r), act

    cols = np.arange(K)
    g, act = grad(W, z, cols)
    g0 = np.linalg.norm(g, axis=0)  # indexed by column id
    for _ in range(max_iter):
        gn = np.linalg.norm(g, axis=0)
        keep = gn > eps * g0[cols]
        cols, g, act, gn = cols[keep], g[:, keep], act[:, keep], gn[keep]
        if len(cols) == 0:
            break
        Wc, zc = W[:, cols], z[:, cols]
        # Only rows inside some column's margin enter the generalized Hessian.
        rows = np.flatnonzero(act.any(axis=1))
        if len(rows) < n:
            Xr = X[rows]
            Xa, XaT = _ThreadedCSR(Xr, threads, pool), _ThreadedCSR(Xr.T.tocsr(), threads, pool)
        else:
            Xa, XaT = XF, XT
        Dm = np.where(act[rows], c[rows][:, cols], np.float32(0.0))
        # --- CG on (I + 2 Xᵀ D X) s = -g, per column. Truncated, unpreconditioned CG from s = 0
        # (the liblinear TRON recipe); on delicious/bibtex its early-stopped Newton steps rank
        # better than Jacobi-preconditioned steps run to the same tolerance. ---
        s = np.zeros_like(g)
        r = -g
        p = r.copy()
        rr = np.einsum("ij,ij->j", r, r, dtype=np.float64)
        tol = (cg_eps * gn) ** 2
        live = rr > tol
        for _ in range(cg_max_iter):
            if not live.any():
                break
            Hp = p + 2.0 * (XaT @ (Dm * (Xa @ p)))
            pHp = np.einsum("ij,ij->j", p, Hp, dtype=np.float64)
            # H is positive definite: pHp <= 0 is float32 rounding at a converged column (asked
            # for a tiny eps), where a step of rr / pHp would blow up into inf/NaN.
            live &= pHp > 0
            alpha = np.where(live, rr / np.maximum(pHp, 1e-30), 0.0).astype(np.float32)
            s += alpha * p
            r -= alpha * Hp
            rr_new = np.einsum("ij,ij->j", r, r, dtype=np.float64)
            live &= rr_new > tol
            beta = np.where(live, rr_new / np.maximum(rr, 1e-30), 0.0).astype(np.float32)
            p = r + beta * p
            rr = rr_new
        # --- backtracking line search (Armijo), per column; z moves along Xs without new products ---
        Xs = XF @ s
        ww = np.einsum("ij,ij->j", Wc, Wc, dtype=np.float64)
        ws = np.einsum("ij,ij->j", Wc, s, dtype=np.float64)
        ss = np.einsum("ij,ij->j", s, s, dtype=np.float64)
        gs = np.einsum("ij,ij->j", g, s, dtype=np.float64)
        step = _armijo_steps(zc, Xs, y[:, cols], c[:, cols], ww, ws, ss, gs)
        step32 = step.astype(np.float32)
        W[:, cols] = Wc + step32 * s
        z[:, cols] = zc + step32 * Xs
        cols = cols[step > 0]
        if len(cols) == 0:
            break
        g, act = grad(W[:, cols], z[:, cols], cols)
    return W




def _sq_hinge_objective(w_sq, z, y, c) -> np.ndarray:
    """Per column: 0.5 ||w||² + Σ_i c_i max(0, 1 - y_i z_i)² (w_sq given, z = X w: n × k)."""
    m = np.maximum(1.0 - y * z, 0.0)
    return 0.5 * w_sq + np.einsum("ij,ij->j", c, m * m, dtype=np.float64)


def _armijo_steps(z, dz, y, c, ww, ws, ss, gs) -> np.ndarray:
    """Per-column Newton step sizes: halve from 1 until the Armijo condition holds, 0 where no
    decrease is found. z, dz (X times the direction), y, c: n × k; ww, ws, ss, gs: per-column
    <w,w>, <w,s>, <s,s>, <g,s>, so no product with X is needed to evaluate a trial step."""
    f0 = _sq_hinge_objective(ww, z, y, c)
    step = np.ones(z.shape[1])
    todo = np.ones(z.shape[1], bool)
    for _ in range(20):
        idx = np.flatnonzero(todo)
        a = step[idx]
        zt = z[:, idx] + a.astype(np.float32) * dz[:, idx]
        ft = _sq_hinge_objective(ww[idx] + 2 * a * ws[idx] + a * a * ss[idx], zt, y[:, idx], c[:, idx])
        todo[idx[ft <= f0[idx] + 0.01 * a * gs[idx]]] = False
        if not todo.any():
            break
        step[todo] *= 0.5
    step[todo] = 0.0
    return step


class _ThreadedCSR:
    """A CSR matrix cut into row blocks whose products with dense matrices run in threads
    (scipy's sparse kernels release the GIL). `A @ B` stacks the blocks' results."""

    def __init__(self, A: smat.csr_matrix, threads: int, pool: ThreadPoolExecutor | None):
        self.shape = A.shape
        self.pool = pool if threads > 1 and A.nnz > 1_000_000 else None
        if self.pool is None:
            self.blocks = [A]
        else:
            # equal-nnz row blocks
            cuts = np.searchsorted(A.indptr, np.linspace(0, A.nnz, threads + 1)[1:-1])
            bounds = [0, *cuts.tolist(), A.shape[0]]
            self.blocks = [A[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def __matmul__(self, B: np.ndarray) -> np.ndarray:
        if self.pool is None:
            return self.blocks[0] @ B
        return np.vstack(list(self.pool.map(lambda blk: blk @ B, self.blocks)))


def _gram(X: smat.csr_matrix, dense_df: float = 0.05) -> np.ndarray:
    """G = X Xᵀ (n × n float32). Columns present in more than dense_df of the rows go through a
    dense BLAS product; the sparse product would cost df² per such column."""
    n = X.shape[0]
    df = np.bincount(X.indices, minlength=X.shape[1])
    frequent = df > dense_df * n
    if not frequent.any():
        return (X @ X.T).toarray().astype(np.float32)
    Xc = X.tocsc()
    Xd = Xc[:, np.flatnonzero(frequent)].toarray()
    G = Xd @ Xd.T
    rare = Xc[:, np.flatnonzero(~frequent)].tocsr()
    G += (rare @ rare.T).toarray()
    return G.astype(np.float32, copy=False)


def _solve_squared_hinge_gram(X, Ypos, Cp, Cn, max_iter, eps, cg_max_iter, cg_eps) -> np.ndarray:
    """`solve_squared_hinge` in the span of the instances.

    From w = 0, every Newton-CG iterate (gradient w + 2 Xᵀ r, Hessian products v + 2 Xᵀ D X v)
    stays in span{x_i}, so each d-vector v is kept as v̂ with v = Xᵀ v̂ together with its image
    ṽ = G v̂ = X v, G = X Xᵀ (n × n, dense). Inner products are v̂ · ũ, products with X are free,
    and the one product per CG step is a dense G @ (n × K). Same iterates, same stopping rule as
    the primal loop; W = Xᵀ B̂ at the end.
    """
    n, d = X.shape
    K = Ypos.shape[1]
    G = _gram(X)
    y = np.where(Ypos, np.float32(1.0), np.float32(-1.0))
    c = np.where(Ypos, np.float32(Cp), np.float32(Cn))
    B = np.zeros((n, K), np.float32)   # w = Xᵀ B
    Z = np.zeros((n, K), np.float32)   # z = X w = G B

    def dot(a, b):
        return np.einsum("ij,ij->j", a, b, dtype=np.float64)

    def grad(cols):
        yz = y[:, cols] * Z[:, cols]
        act = yz < 1.0
        r = np.where(act, c[:, cols] * (Z[:, cols] - y[:, cols]), np.float32(0.0))
        gh = B[:, cols] + 2.0 * r
        gt = Z[:, cols] + 2.0 * (G @ r)
        return gh, gt, act

    cols = np.arange(K)
    gh, gt, act = grad(cols)
    g0 = np.sqrt(np.maximum(dot(gh, gt), 0.0))
    for _ in range(max_iter):
        gn = np.sqrt(np.maximum(dot(gh, gt), 0.0))
        keep = gn > eps * g0[cols]
        cols, gh, gt, act, gn = cols[keep], gh[:, keep], gt[:, keep], act[:, keep], gn[keep]
        if len(cols) == 0:
            break
        Bc, Zc = B[:, cols], Z[:, cols]
        Dm = np.where(act, c[:, cols], np.float32(0.0))
        sh, st = np.zeros_like(gh), np.zeros_like(gt)
        rh, rt = -gh, -gt
        ph, pt = rh.copy(), rt.copy()
        rr = dot(rh, rt)
        tol = (cg_eps * gn) ** 2
        live = rr > tol
        for _ in range(cg_max_iter):
            if not live.any():
                break
            Hph = ph + 2.0 * (Dm * pt)
            Hpt = pt + 2.0 * (G @ (Dm * pt))
            pHp = dot(ph, Hpt)
            live &= pHp > 0  # as in the primal CG: rounding at a converged column
            alpha = np.where(live, rr / np.maximum(pHp, 1e-30), 0.0).astype(np.float32)
            sh += alpha * ph
            st += alpha * pt
            rh -= alpha * Hph
            rt -= alpha * Hpt
            rr_new = dot(rh, rt)
            live &= rr_new > tol
            beta = np.where(live, rr_new / np.maximum(rr, 1e-30), 0.0).astype(np.float32)
            ph = rh + beta * ph
            pt = rt + beta * pt
            rr = rr_new
        ww, ws, ss, gs = dot(Bc, Zc), dot(Bc, st), dot(sh, st), dot(gh, st)
        step = _armijo_steps(Zc, st, y[:, cols], c[:, cols], ww, ws, ss, gs)
        step32 = step.astype(np.float32)
        B[:, cols] = Bc + step32 * sh
        Z[:, cols] = Zc + step32 * st
        cols = cols[step > 0]
        if len(cols) == 0:
            break
        gh, gt, act = grad(cols)
    return np.asarray(X.T @ B, dtype=np.float32)

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _resolve_threads(threads: int) -> int:
    return max(1, os.cpu_count() or 1) if threads is None or threads < 1 else int(threads)


def _with_bias(X: smat.csr_matrix, bias: float) -> smat.csr_matrix:
    """X with a constant column `bias` appended (N × (D+1) float32 CSR, indices sorted; bias 0:
    an empty column). Built in place of a hstack, which goes through int64 COO triplets: this
    allocates the result alone (int32 indices where they fit)."""
    X = smat.csr_matrix(X, dtype=np.float32)
    if not X.has_sorted_indices:
        X = X.sorted_indices()
    N, D = X.shape
    if bias == 0:
        return smat.csr_matrix((X.data, X.indices, X.indptr), shape=(N, D + 1))
    idx_t = np.int32 if X.nnz + N < 2**31 and D + 1 < 2**31 else np.int64
    indptr = X.indptr.astype(idx_t) + np.arange(N + 1, dtype=idx_t)
    nnz = X.nnz + N
    is_bias = np.zeros(nnz, bool)
    is_bias[indptr[1:] - 1] = True  # the last entry of every row
    indices = np.empty(nnz, idx_t)
    indices[is_bias] = D
    indices[~is_bias] = X.indices
    data = np.empty(nnz, np.float32)
    data[is_bias] = bias
    data[~is_bias] = X.data
    Xb = smat.csr_matrix((data, indices, indptr), shape=(N, D + 1))
    Xb.has_sorted_indices = True
    return Xb


def _topk_flat(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, k: int):
    """Keep the k largest values per row of a flat (rows, cols, vals) list whose rows are grouped
    (non-decreasing). Returns (rows, cols, vals) sorted by row, then value descending.

    Rows are padded into a dense block (chunked to bound memory) and cut by argpartition.
    """
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    width = int(counts.max()) if len(counts) else 0
    if width == 0:
        return rows[:0], cols[:0], vals[:0]
    kk = min(k, width)
    chunk = max(1, (1 << 24) // width)
    out_r, out_c, out_v = [], [], []
    for lo in range(0, n_rows, chunk):
        hi = min(n_rows, lo + chunk)
        a, b = starts[lo], (starts[hi] if hi < n_rows else len(rows))
        r = rows[a:b] - lo
        pos = np.arange(a, b) - starts[rows[a:b]]
        M = np.full((hi - lo, width), -np.inf, np.float32)
        M[r, pos] = vals[a:b]
        idx = np.argpartition(-M, kk - 1, axis=1)[:, :kk] if kk < width else np.broadcast_to(np.arange(width), M.shape)
        top = np.take_along_axis(M, idx, 1)
        o = np.argsort(-top, axis=1, kind="stable")
        idx, top = np.take_along_axis(idx, o, 1), np.take_along_axis(top, o, 1)
        keep = np.isfinite(top)
        rr = np.broadcast_to(np.arange(lo, hi)[:, None], top.shape)[keep]
        out_r.append(rr)
        out_c.append(cols[starts[rr] + idx[keep]])
        out_v.append(top[keep])
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
class XLinearModel:
    """Trained rankers over a label tree (XR-Linear's matchers and ranker).

    Attributes:
        tree: :class:`LabelTree` of depth T.
        W: list of T float32 CSC matrices, W[t] is (D+1) × nnz(C[t]) (see module docstring).
        bias: value of the appended bias feature (float; 0: no bias term).
        pred_params: :class:`PredParams`, the defaults of :meth:`predict`.

    Args:
        tree, W, bias, pred_params: as the attributes (pred_params None: defaults).

    Raises:
        ValueError: len(W) differs from tree.depth, or W[t] has not nnz(C[t]) columns.

    Source:
        PECOS ``XLinearModel`` (``pecos/xmc/xlinear/model.py``; Yu et al. 2022, JMLR).
    """

    def __init__(self, tree: LabelTree, W: list[smat.csc_matrix], bias: float = 1.0,
                 pred_params: PredParams | None = None):
        if len(W) != tree.depth:
            raise ValueError(f"XLinearModel: {len(W)} weight matrices for a tree of depth {tree.depth}")
        for t, (w, c) in enumerate(zip(W, tree.C)):
            if w.shape[1] != c.nnz:
                raise ValueError(f"XLinearModel: W[{t}] has {w.shape[1]} columns, C[{t}] has {c.nnz} entries")
        self.tree = tree
        self.W = [smat.csc_matrix(w, dtype=np.float32) for w in W]
        self.bias = float(bias)
        self.pred_params = pred_params or PredParams()

    @property
    def n_features(self) -> int:
        """Number of input features D (int), the bias column not counted."""
        return self.W[0].shape[0] - 1

    @property
    def n_labels(self) -> int:
        """Number of labels L (int)."""
        return self.tree.n_labels

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        X: smat.csr_matrix,
        Y: smat.spmatrix,
        tree: LabelTree,
        params: RankerParams | None = None,
        pred_params: PredParams | None = None,
        log: Callable[[dict], None] | None = None,
        parent_offset: list[int] | None = None,
    ) -> "XLinearModel":
        """Train all levels, coarse to fine.

        At level t each parent's children get one-vs-rest L2-regularized squared-hinge SVMs on the
        instances active for that parent (negative sampling TFN, MAN or both; see the module
        docstring); weights with |w| < params.threshold are pruned.

        Args:
            X: N × D float32 CSR, rows l2-normalized (the bias column is appended here).
            Y: N × L label matrix, any scipy sparse; entries != 0 are positives.
            tree: :class:`LabelTree` over the L labels (C[-1] has L rows).
            params: :class:`RankerParams` (None: defaults, solver "dcd", TFN).
            pred_params: :class:`PredParams` kept on the model as predict's defaults; its
                beam_size is the MAN matcher's beam when params.man_beam_size is None.
            log: called once per level with {"level", "n_nodes", "n_parents", "seconds"
                (wall time, s), "nnz_W", "active_pairs", "W_mb" (the level's weights, MiB),
                "largest_block_mb" (the largest parent's gathered instance block, MiB)}.
            parent_offset: when `tree` is a sub-tree of a larger one (the distributed engine,
                :mod:`engine_ray`), the number in the whole tree of each level's first parent:
                a parent's instance-order seed is then the one it has there, so the sub-tree's
                weights equal that part of the whole model's (None: all zeros).

        Returns:
            XLinearModel with W[t] of shape (D+1) × nnz(C[t]), float32 CSC.

        Raises:
            ValueError: X and Y row counts differ, or Y's column count is not tree.n_labels.

        Source:
            PECOS ``XLinearModel.train`` (Yu et al. 2022, JMLR); per-block solver liblinear's
            L2R_L2LOSS_SVC_DUAL (Hsieh et al. 2008) or Newton-CG.
        """
        params = params or RankerParams()
        pred_params = pred_params or PredParams()
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"XLinearModel.train: X has {X.shape[0]} rows, Y has {Y.shape[0]}")
        if Y.shape[1] != tree.n_labels:
            raise ValueError(f"XLinearModel.train: Y has {Y.shape[1]} labels, the tree {tree.n_labels}")
        # X as float32 CSR with sorted indices; the bias column is appended to each gathered block
        # (`kernels.gather_rows`), not to a copy of X held through training
        X = smat.csr_matrix(X, dtype=np.float32)
        if not X.has_sorted_indices:
            X = X.sorted_indices()
        Y = binarize(Y)
        N = X.shape[0]
        threads = _resolve_threads(params.threads)
        man_beam = params.man_beam_size or pred_params.beam_size
        W: list[smat.csc_matrix] = []
        for t, C in enumerate(tree.C):
            t0 = time.perf_counter()
            # Targets of each node at this level (the leaf level: labels themselves).
            Y_t = Y if t == tree.depth - 1 else binarize(Y @ tree.label_to_level(t))
            # Active (instance, parent) pairs: M_{t-1}.
            if t == 0:
                active = smat.csc_matrix(np.ones((N, 1), np.float32))
            else:
                parts = []
                if "tfn" in params.negative_sampling:
                    parts.append(binarize(Y @ tree.label_to_level(t - 1)))
                if "man" in params.negative_sampling:
                    partial = cls(LabelTree(tree.C[:t]), W, params.bias, pred_params)
                    parts.append(binarize(partial._beam(_with_bias(X, params.bias), man_beam, man_beam, "l3-hinge",
                                                        level_scores=True)))
                active = binarize(sum(parts[1:], parts[0])).tocsc()
            stats: dict = {}
            W_t = _train_level(X, Y_t, C, active, params, threads, stats,
                               parent_offset=parent_offset[t] if parent_offset is not None else 0,
                               desc=f"rankers level {t + 1}/{tree.depth}")
            W.append(W_t)
            if log is not None:
                log({
                    "level": t,
                    "n_nodes": C.shape[0],
                    "n_parents": C.shape[1],
                    "seconds": time.perf_counter() - t0,
                    "nnz_W": int(W_t.nnz),
                    "active_pairs": int(active.nnz),
                    "W_mb": round((W_t.data.nbytes + W_t.indices.nbytes + W_t.indptr.nbytes) / 2**20, 1),
                    "largest_block_mb": round(stats.get("largest_block_bytes", 0) / 2**20, 1),
                })
        return cls(tree, W, params.bias, pred_params)

    # -- prediction -------------------------------------------------------------------------
    def predict(
        self,
        X: smat.csr_matrix,
        beam_size: int | None = None,
        only_topk: int | None = None,
        post_processor: str | None = None,
    ) -> smat.csr_matrix:
        """Beam search down the tree: scores of the top labels of every row of X.

        Level 0 scores the root's children; each later level scores only the children of the
        beam kept at the level above, combining the post-processed score with the parent's
        (multiplied for the hinge and sigmoid transforms, added for the log ones). A label with
        several leaf copies keeps its best copy's score.

        Args:
            X: N × D float32 CSR (or anything scipy converts), rows l2-normalized as in training.
            beam_size: nodes kept per level (None or 0: pred_params.beam_size).
            only_topk: labels kept per row at the end (None or 0: pred_params.only_topk).
            post_processor: a key of :data:`POST_PROCESSORS` (None: pred_params.post_processor).

        Returns:
            N × L float32 CSR, at most only_topk entries per row, indices sorted; entries are
            post-processed scores (in (0, 1] for "l3-hinge").

        Raises:
            ValueError: unknown post_processor, or X has not n_features columns.

        Source:
            PECOS ``XLinearModel.predict`` beam search (Yu et al. 2022, JMLR).
        """
        beam_size, only_topk, post_processor = self._options(beam_size, only_topk, post_processor, "predict")
        if not (isinstance(X, smat.csr_matrix) and X.dtype == np.float32):
            X = smat.csr_matrix(X, dtype=np.float32)
        if X.shape[1] != self.n_features:
            raise ValueError(f"predict: X has {X.shape[1]} features, the model expects {self.n_features}")
        if X.shape[0] <= FEW_ROWS:
            return self._beam_rows(X, beam_size, only_topk, post_processor)
        return self._beam(_with_bias(X, self.bias), beam_size, only_topk, post_processor)

    def predict_row(self, indices: np.ndarray, data: np.ndarray, beam_size: int | None = None,
                    only_topk: int | None = None, post_processor: str | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Beam search for one document given as arrays: what :meth:`predict` does for a
        one-row X, without building or reading a scipy matrix (a request of one document).

        Args:
            indices: the document's feature ids, strictly ascending, in [0, n_features).
            data: float32 values of those features, the row l2-normalized as in training.
            beam_size, only_topk, post_processor: as :meth:`predict`.

        Returns:
            (labels int64, scores float32): at most only_topk labels, best first (ties in the
            order the beam met them); the same labels and float32 scores, bit for bit, as row 0
            of ``predict`` on the same row.

        Raises:
            ValueError: unknown post_processor; indices not ascending, out of range, or not as
                many as data.
        """
        beam_size, only_topk, post_processor = self._options(beam_size, only_topk, post_processor, "predict_row")
        if len(indices) != len(data):
            raise ValueError(f"predict_row: {len(indices)} indices and {len(data)} values")
        if len(indices) and (indices[0] < 0 or indices[-1] >= self.n_features or (np.diff(indices) <= 0).any()):
            raise ValueError(f"predict_row: indices must ascend strictly within 0..{self.n_features - 1}")
        return self._row(indices, np.asarray(data, np.float32), beam_size, only_topk, post_processor)

    def _options(self, beam_size, only_topk, post_processor, caller: str) -> tuple[int, int, str]:
        """(beam_size, only_topk, post_processor) of a prediction call: None or 0 takes
        pred_params'; past the widest level / all labels a larger value changes nothing but the
        buffers' size. Raises ValueError naming `caller` for an unknown post_processor."""
        pp = self.pred_params
        beam_size = min(beam_size or pp.beam_size, max(self.tree.level_sizes()))
        only_topk = min(only_topk or pp.only_topk, self.n_labels)
        post_processor = post_processor or pp.post_processor
        if post_processor not in POST_PROCESSORS:
            raise ValueError(f"{caller}: unknown post_processor {post_processor!r}")
        return beam_size, only_topk, post_processor

    def _row(self, xi, xv, beam_size, only_topk, post_processor):
        """`predict_row` on checked arguments: one compiled call per level (`kernels.beam_row_step`)."""
        root, code, power, combine = _kernel_pp(post_processor)
        depth = len(self.W)
        bias = np.float32(self.bias)
        nodes, scores = np.zeros(1, np.int64), np.full(1, root, np.float32)
        for t, (C, W_t) in enumerate(zip(self.tree.C, self.W)):
            last = t == depth - 1
            nodes, scores = kernels.beam_row_step(
                xi, xv, self.n_features, bias, nodes, scores, *_level_chunks(W_t, C.indptr), C.indptr, C.indices,
                code, power, combine, only_topk if last else beam_size, last and C.nnz > C.shape[0])
        return nodes, scores

    def _beam_rows(self, X, beam_size, only_topk, post_processor) -> smat.csr_matrix:
        """`_beam` for a few rows (a request), one row at a time (`_row`): no appended bias
        column, no per-level pair arrays or threads. Same N × L CSR, bit for bit."""
        if not X.has_sorted_indices:
            X = X.sorted_indices()
        n_cols = self.tree.C[-1].shape[0]
        ptr, idx, val = [0], [], []
        for i in range(X.shape[0]):
            a, b = X.indptr[i], X.indptr[i + 1]
            nodes, scores = self._row(X.indices[a:b], X.data[a:b], beam_size, only_topk, post_processor)
            order = np.argsort(nodes)  # CSR column order, as `_beam`'s sort_indices leaves it
            idx.append(nodes[order])
            val.append(scores[order])
            ptr.append(ptr[-1] + len(nodes))
        idx_t = np.int32 if n_cols < 2**31 else np.int64  # scipy's own choice: it converts nothing
        return smat.csr_matrix((np.concatenate(val), np.concatenate(idx).astype(idx_t), np.asarray(ptr, idx_t)),
                               shape=(X.shape[0], n_cols))

    def _beam(self, Xb, beam_size, only_topk, post_processor, level_scores=False) -> smat.csr_matrix:
        """Beam search over all levels of this model.

        Returns N × K_last (level_scores=True: the last level's nodes, copies not merged) or N × L
        (labels, copies merged by max).
        """
        root, code, power, combine = _kernel_pp(post_processor)
        threads = _resolve_threads(self.pred_params.threads)
        N = Xb.shape[0]
        depth = self.tree.depth
        n_cols = self.tree.C[-1].shape[0]  # labels, or the last level's nodes of a partial tree
        # children per parent at each level: kept with the level's beam layout (`_level_chunks`)
        n_child_of = [_level_chunks(W_t, C.indptr)[4] for C, W_t in zip(self.tree.C, self.W)]
        widest = max(int(c.max(initial=0)) for c in n_child_of)
        # Rows go through in batches so the flat (pair, child) score arrays stay bounded.
        batch = max(1024, (1 << 25) // max(1, beam_size * widest))
        parts = []
        bar = progress.task("predict", N, "doc")
        for lo in range(0, N, batch):
            Xs = Xb if N <= batch else Xb[lo:min(N, lo + batch)]  # a scipy slice costs a request ~30 µs
            n = Xs.shape[0]
            rows = np.arange(n, dtype=np.int64)
            parents = np.zeros(n, dtype=np.int64)
            pscores = np.full(n, root, dtype=np.float32)
            row_ptr = np.arange(n + 1, dtype=np.int64)
            for t in range(depth):
                C, W_t = self.tree.C[t], self.W[t]
                last = t == depth - 1
                k = only_topk if last else beam_size
                n_child = n_child_of[t][parents]
                pair_start = np.zeros(len(parents), np.int64)
                np.cumsum(n_child[:-1], out=pair_start[1:])
                raw = _score_raw(Xs, W_t, C.indptr, rows, parents, pair_start, int(n_child.sum()), threads)
                top_node = np.empty((n, k), np.int64)
                top_score = np.empty((n, k), np.float32)
                merge = last and not level_scores and C.nnz > C.shape[0]

                def select(r0, r1):
                    kernels.select_topk(row_ptr[r0:r1 + 1], parents, pscores, pair_start, C.indptr, C.indices, raw,
                                        code, power, combine, k, merge, top_node[r0:r1], top_score[r0:r1])

                if threads > 1 and n >= 2048:
                    cuts = np.linspace(0, n, threads + 1).astype(np.int64)
                    with ThreadPoolExecutor(threads) as ex:
                        list(ex.map(select, cuts[:-1], cuts[1:]))
                else:
                    select(0, n)
                keep = top_node >= 0
                counts = keep.sum(axis=1)
                rows = np.repeat(np.arange(n, dtype=np.int64), counts)
                parents, pscores = top_node[keep], top_score[keep]
                row_ptr = np.zeros(n + 1, np.int64)
                np.cumsum(counts, out=row_ptr[1:])
            parts.append(smat.csr_matrix((pscores, parents, row_ptr), shape=(n, n_cols), dtype=np.float32))
            bar.update(n)
        bar.close()
        if len(parts) == 1:  # one batch (every request of a service): no stacking
            out = parts[0]
        else:
            out = smat.vstack(parts, format="csr") if parts else smat.csr_matrix((0, n_cols), dtype=np.float32)
        out.sort_indices()
        return out

    def prepare(self) -> "XLinearModel":
        """Build every level's beam-search layout now (`kernels.build_chunks`: the weights
        regrouped per parent), not on the first predict call. `load` does it; PECOS does the same
        when it loads a model for prediction. Returns self."""
        for C, W_t in zip(self.tree.C, self.W):
            _level_chunks(W_t, C.indptr)
        return self

    # -- persistence ------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write the model into `folder`, atomically (`folders.atomic_dir`, kind "ranker").

        Files: tree.npz (:meth:`LabelTree.to_arrays`), W{t}.npz (one float32 CSC per level,
        uncompressed) and ranker.json (bias, depth, pred_params).

        Args:
            folder: destination path (str or Path); replaced when it is an xmc "ranker" folder.

        Raises:
            PathInUseError: `folder` exists and is not a folder xmc wrote.
        """
        meta = {"bias": self.bias, "depth": self.tree.depth, "pred_params": self.pred_params.to_dict()}
        with atomic_dir(folder, kind="ranker") as tmp:
            np.savez(tmp / "tree.npz", **self.tree.to_arrays())
            for t, w in enumerate(self.W):
                smat.save_npz(tmp / f"W{t}.npz", w, compressed=False)
            (tmp / "ranker.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path, prepare: bool = True) -> "XLinearModel":
        """The model saved in `folder` by :meth:`save`, ready to predict.

        Args:
            folder: a folder written by :meth:`save` (str or Path).
            prepare: build the beam-search layout now (:meth:`prepare`); False: on the first
                predict call instead.

        Returns:
            XLinearModel with float32 CSC weights.

        Raises:
            FileNotFoundError: ranker.json, tree.npz or a W{t}.npz is missing.
            ValueError: the files do not form a consistent model (see :class:`XLinearModel`).
        """
        folder = Path(folder)
        meta = json.loads((folder / "ranker.json").read_text())
        with np.load(folder / "tree.npz") as arrs:
            tree = LabelTree.from_arrays(arrs)
        W = [smat.load_npz(folder / f"W{t}.npz").tocsc() for t in range(meta["depth"])]
        model = cls(tree, W, meta["bias"], PredParams.from_dict(meta["pred_params"]))
        return model.prepare() if prepare else model


def _kernel_pp(post_processor: str) -> tuple[float, int, float, int]:
    """(root score, transform code, power, combine code) of a post-processor for the compiled
    beam kernels (`kernels.select_topk`, `kernels.beam_row_step`)."""
    _, kind, root = POST_PROCESSORS[post_processor]
    code, power = _PP_CODES[post_processor]
    combine = {_MUL: kernels.COMBINE_MUL, _ADD: kernels.COMBINE_ADD, _NOOP: kernels.COMBINE_NOOP}[kind]
    return root, code, power, combine


#: Up to this many rows `predict` goes one row at a time (`kernels.beam_row_step`): cheaper than
#: a batch's per-level arrays for a request (8 rows of the dense 100k model, warm: 3.8 ms against
#: 4.9; still ahead at 32). Kept small until measured cold: a batch's scatter and threads win on
#: big inputs.
FEW_ROWS = 8


def _level_chunks(W_t: smat.csc_matrix, indptr: np.ndarray):
    """W_t regrouped by parent for beam scoring: each parent's children columns as a
    row-compressed chunk over the features where any child has a weight (see
    `kernels.score_pairs`), and a bucket index over each chunk's rows (`kernels.build_buckets`).
    Returns (recs, ent_off, entries, rec_off, n_child, b_shift, b_off, b_ptr). Built once
    per weight matrix and kept on it."""
    key = (id(indptr), len(indptr), W_t.nnz)
    cached = getattr(W_t, "_xmc_chunks", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    chunks = kernels.build_chunks(indptr, W_t.indptr, W_t.indices, W_t.data.astype(np.float32, copy=False),
                                  W_t.shape[0])
    buckets = kernels.build_buckets(chunks[0], chunks[3], W_t.shape[0], kernels.ROWS_PER_BUCKET)
    chunks = (*chunks, np.diff(indptr).astype(np.int64), *buckets)
    W_t._xmc_chunks = (key, chunks)
    return chunks


def _score_children(Xb, W_t, indptr, rows, parents, threads: int = 1):
    """Raw scores of every child of each (row, parent) pair.

    Xb: N × (D+1) CSR. W_t: (D+1) × nnz(C) CSC in children-contiguous order. rows, parents: the
    beam as flat arrays. Returns flat (row, column j of W_t, raw score) in the order of the
    pairs, each pair's children consecutive.
    """
    rows = np.asarray(rows, np.int64)
    parents = np.asarray(parents, np.int64)
    n_child = np.diff(indptr)[parents]
    total = int(n_child.sum())
    pair_start = np.zeros(len(parents), np.int64)
    np.cumsum(n_child[:-1], out=pair_start[1:])
    out_r = np.repeat(rows, n_child)
    out_j = np.repeat(indptr[parents] - pair_start, n_child) + np.arange(total)
    return out_r, out_j, _score_raw(Xb, W_t, indptr, rows, parents, pair_start, total, threads)


def _score_raw(Xb, W_t, indptr, rows, parents, pair_start, total, threads):
    """The raw scores of `_score_children` alone (float32, length total), pair q's children at
    pair_start[q]:. The compiled kernel scores the pairs grouped by parent, in threads."""
    layout = _level_chunks(W_t, indptr)
    out_v = np.empty(total, np.float32)
    order = np.argsort(parents, kind="stable")

    def run(sl):
        slot = kernels.scratch("slot", Xb.shape[1])
        present = kernels.scratch("present", (Xb.shape[1] >> 6) + 1, fill=0)
        kernels.score_pairs(Xb.indptr, Xb.indices, Xb.data, rows, parents, pair_start, order[sl], *layout,
                            slot, present, out_v)

    n_pairs = len(rows)
    if threads > 1 and n_pairs >= 4096:
        bounds = np.linspace(0, n_pairs, threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(run, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
    elif n_pairs:
        run(slice(0, n_pairs))
    return out_v


#: Raw score of a node that has no positive in the training set (a label listed in label_map.txt
#: or output-items.txt that no training document has, or a cluster of such labels): its ranker
#: would learn only from negatives and score new documents by accident. It scores this constant
#: instead, below what a trained ranker gives the labels it was trained on (l3-hinge: exp(-11^3)
#: = 0.0 in float32; sigmoid: 4.5e-5), every such label alike (PECOS#150).
NO_POSITIVE_SCORE = -10.0


def _no_positive_constant(W_t: smat.csc_matrix, Y_t, C, bias: float) -> smat.csc_matrix:
    """W_t with the column of every node that has no positive in Y_t replaced by the constant
    NO_POSITIVE_SCORE (one entry, in the bias row). Unchanged without a bias feature (bias 0).
    (`_train_level` puts the constant in while it assembles a level; this is for weights made
    elsewhere.)"""
    if bias <= 0:
        return W_t
    n_pos = np.diff(smat.csc_matrix(Y_t).indptr)
    empty = np.flatnonzero(n_pos[smat.csc_matrix(C).indices] == 0)
    if empty.shape[0] == 0:
        return W_t
    coo = W_t.tocoo()
    keep = ~np.isin(coo.col, empty)
    bias_row = W_t.shape[0] - 1
    rows = np.concatenate([coo.row[keep], np.full(empty.shape[0], bias_row, coo.row.dtype)])
    cols = np.concatenate([coo.col[keep], empty.astype(coo.col.dtype)])
    data = np.concatenate([coo.data[keep], np.full(empty.shape[0], NO_POSITIVE_SCORE / bias, np.float32)])
    W = smat.csc_matrix((data.astype(np.float32), (rows, cols)), shape=W_t.shape)
    W.sort_indices()
    return W


def _parent_columns(D1, n_cols, rows, cols, vals, no_positive, bias):
    """One parent's weights as CSC pieces: (counts per column (n_cols,), rows int32, values
    float32), entries sorted by (column, row). rows/cols/vals: its triplets, cols local to the
    parent (0..n_cols-1). Columns flagged in `no_positive` get the one bias-row entry
    NO_POSITIVE_SCORE / bias instead of whatever was trained (bias > 0)."""
    if bias > 0 and no_positive.any():
        keep = ~no_positive[cols]
        empty = np.flatnonzero(no_positive)
        rows = np.concatenate([rows[keep], np.full(len(empty), D1 - 1, rows.dtype)])
        cols = np.concatenate([cols[keep], empty.astype(cols.dtype)])
        vals = np.concatenate([vals[keep], np.full(len(empty), NO_POSITIVE_SCORE / bias, np.float32)])
    order = np.lexsort((rows, cols))
    counts = np.bincount(cols, minlength=n_cols).astype(np.int64)
    return counts, rows[order].astype(np.int32), vals[order].astype(np.float32, copy=False)


def _train_level(X, Y_t, C, active, params: RankerParams, threads: int, stats: dict | None = None,
                 parent_offset: int = 0, desc: str = "rankers") -> smat.csc_matrix:
    """Weights of one level: (D+1) × nnz(C) float32 CSC (int32 indices), children-contiguous
    column order; a node with no positive in Y_t scores NO_POSITIVE_SCORE (its column is the one
    bias-row entry; bias 0: empty).

    X: N × D float32 CSR, sorted indices, without the bias column: each parent's block is
    gathered with the bias entry appended to its rows (`kernels.gather_rows`), so no biased copy
    of X is held. Each block is solved and turned into its columns' CSC pieces (int32 rows,
    float32 values) inside its own job, so a level holds its gathered blocks only while they are
    solved and its weights as int32/float32 pieces, never as int64 triplets; the pieces are
    copied into the level's arrays one by one, each freed as it is copied.
    stats (out): "largest_block_bytes", the largest gathered instance block. parent_offset: the
    number of C's first parent in the whole tree (seeds are params.seed + that number). desc: the
    level's name in progress reports (parents done of n_parents)."""
    stats = {} if stats is None else stats
    stats.setdefault("largest_block_bytes", 0)
    C = smat.csc_matrix(C)
    Y_t = smat.csc_matrix(Y_t)
    active = smat.csc_matrix(active)
    n_parents = C.shape[1]
    N, D = X.shape
    D1 = D + 1
    bias = params.bias
    bias_col = D if bias != 0 else -1
    no_positive = (np.diff(Y_t.indptr) == 0)[C.indices]  # per column of W (node C.indices[j])
    # Few parents (the top level has one): spend the threads inside each block's products.
    inner_threads = max(1, threads // n_parents)

    def job(p):
        a, b = C.indptr[p], C.indptr[p + 1]
        if a == b:
            return p, None
        empty = (np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.float32))
        inst = active.indices[active.indptr[p]:active.indptr[p + 1]]
        if len(inst) == 0:
            return p, _parent_columns(D1, b - a, *empty, no_positive[a:b], bias)
        # the block's rows (bias entry appended), its columns renumbered to those used (first use
        # order; the solver's arithmetic does not depend on the numbering)
        indptr, indices, data, used = kernels.gather_rows(X.indptr, X.indices, X.data, inst,
                                                          kernels.scratch("colmap", D1), bias_col, bias)
        Xp = smat.csr_matrix((data, indices, indptr), shape=(len(inst), len(used)))
        Ypos = Y_t[:, C.indices[a:b]][inst].toarray() > 0
        stats["largest_block_bytes"] = max(stats["largest_block_bytes"],
                                           Xp.data.nbytes + Xp.indices.nbytes + Xp.indptr.nbytes + Ypos.nbytes)
        if params.solver == "dcd":
            r, k, v = solve_squared_hinge_dcd(Xp, Ypos, params.Cp, params.Cn, params.eps, params.max_iter,
                                              threads=inner_threads, seed=params.seed + parent_offset + p,
                                              threshold=params.threshold)
        else:
            Wp = solve_squared_hinge(
                Xp, Ypos, params.Cp, params.Cn, params.newton_max_iter, params.newton_eps, params.cg_max_iter,
                params.cg_eps, threads=inner_threads,
            )
            r, k = np.nonzero(np.abs(Wp) >= params.threshold) if params.threshold > 0 else np.nonzero(Wp)
            v = Wp[r, k]
            del Wp
        del Xp, Ypos
        rows = used[r].astype(np.int32)
        return p, _parent_columns(D1, b - a, rows, k, v.astype(np.float32, copy=False), no_positive[a:b], bias)

    # Big parents first so threads stay balanced.
    sizes = np.diff(active.indptr)
    order = np.argsort(-sizes[:n_parents], kind="stable")
    # progress in (instance, parent) pairs, the solvers' work, so that time left holds although
    # the big parents go first
    parents = f"{n_parents} parent" + ("s" if n_parents != 1 else "")
    with progress.task(f"{desc} ({parents})", int(sizes[:n_parents].sum()), "pair") as bar:
        def tracked(p):
            out = job(p)
            bar.update(int(sizes[p]))
            return out

        if threads > 1 and n_parents > 1:
            with ThreadPoolExecutor(threads) as ex:
                results = dict(ex.map(tracked, order))
        else:
            results = dict(tracked(p) for p in order)
    counts = np.zeros(C.nnz, np.int64)
    for p, res in results.items():
        if res is not None:
            counts[C.indptr[p]:C.indptr[p + 1]] = res[0]
    indptr = np.zeros(C.nnz + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    indices = np.empty(nnz, np.int32)
    data = np.empty(nnz, np.float32)
    for p in range(n_parents):
        res = results.pop(p, None)
        if res is not None:
            lo = indptr[C.indptr[p]]
            indices[lo:lo + len(res[1])] = res[1]
            data[lo:lo + len(res[2])] = res[2]
    idx_t = np.int32 if nnz < 2**31 else np.int64
    W = smat.csc_matrix((data, indices, indptr.astype(idx_t)), shape=(D1, C.nnz))
    W.has_sorted_indices = True
    return W
