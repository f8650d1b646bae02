"""Ray execution engine: XR-Linear training split into sub-trees, and batch prediction by actors.

Training decomposition (PECOS's distributed XR-Linear, ``pecos/distributed/xmc/xlinear``, there over
MPI; here over Ray tasks and the object store):

- the driver computes PIFA (Z), the top `split_level` levels of the label tree (binary 2-means down
  to the sub-tree roots) and the rankers of those levels: the meta-problem, over all N instances;
- every node of level `split_level - 1` roots one sub-tree. One Ray task per sub-tree clusters its
  labels the rest of the way down and trains the rankers of all levels below, on the instances
  that have a positive among its labels (TFN: exactly the instances active anywhere in it);
- X, Y (CSC) and Z are put in the object store once; a task reads them zero-copy and copies out
  only its rows (X, Y) and labels (Z). Tasks are submitted largest first (labels × instances), so
  Ray's queue hands the big ones out before the small ones;
- the driver assembles the codes into one :class:`LabelTree` and each level's weight columns
  (contiguous per sub-tree: nodes are numbered by their binary code) into one
  :class:`XLinearModel`, an ordinary model folder that loads and predicts without Ray.

Same model: every 2-means node takes the seed it has in the whole tree (`tree.binary_codes`
first_depth/prefix) and every ranker parent its instance-order seed (`XLinearModel.train`
parent_offset); a task's instance blocks are the same rows in the same order. So the tree and
the weights equal the single-process model's, bit for bit, with TFN negatives. MAN negatives need
the beam of the whole model above each level, so they (and label disentanglement) are refused.

Faults: a task whose worker process or node dies is retried by Ray (`RayParams.max_retries`,
system failures only) and recomputes the same result; a task that raises (bad data) fails the run
with its own exception, re-raised here without Ray's wrapping. No sockets or process pools of our
own: Ray is the distributed layer, imported only in this module.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as smat

from .label_embedding import pifa
from .memory import peak_rss_mb, reset_peak
from .params import ParamsBase
from .sparse import binarize
from .tree import LabelTree, binary_codes, chain_bits, tree_from_codes
from .xlinear import XLinearModel

__all__ = ["RayParams", "RayEngine", "RayRunError", "train_xlinear_ray", "train_rankers_ray", "predict_files_ray", "ray_session"]

#: test hook: when set to a path, the first sub-tree task that finds no file there creates it and
#: SIGKILLs its own worker process (a worker lost mid-task; Ray must retry it)
FAULT_ENV = "XMC_RAY_KILL_ONCE"
#: test hook: likewise, but the first task that runs on a node with the custom resource
#: FAULT_NODE_RESOURCE SIGKILLs that node's raylet, then itself (a node lost mid-task)
FAULT_NODE_ENV = "XMC_RAY_KILL_NODE_ONCE"
FAULT_NODE_RESOURCE = "xmc_fault_node"


@dataclass
class RayParams(ParamsBase):
    """Settings of the Ray engine.

    address: Ray cluster to join ("auto": the one `ray start` runs here; "ray://HOST:10001": Ray
        Client); None starts a local Ray for the run and stops it after.
    split_level: tree level whose nodes root the sub-tree tasks (1: the top level's clusters, as
        PECOS does; deeper levels give more, smaller tasks). Clipped to the tree's depth - 1.
    cpus_per_task: CPUs Ray reserves for one task; the task's threads (int >= 1).
    max_retries: retries of a task whose worker or node died (Ray's system-failure retries; a
        task that raises is not retried).
    """

    address: str | None = None
    split_level: int = 1
    cpus_per_task: int = 1
    max_retries: int = 3

    def __post_init__(self):
        if self.split_level < 1:
            raise ValueError(f"RayParams.split_level: must be >= 1, got {self.split_level}")
        if self.cpus_per_task < 1:
            raise ValueError(f"RayParams.cpus_per_task: must be >= 1, got {self.cpus_per_task}")
        if self.max_retries < 0:
            raise ValueError(f"RayParams.max_retries: must be >= 0, got {self.max_retries}")


class ray_session:
    """Context manager: join `address` (or start a local Ray when None); a Ray started here is
    shut down on exit, one joined is left running.

    Args:
        address: as :attr:`RayParams.address`.
        num_cpus: CPUs of a local Ray started here (None: all).
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address, self.num_cpus, self.started = address, num_cpus, False

    def __enter__(self):
        import ray

        if not ray.is_initialized():
            if self.address and self.address != "auto":
                _check_reachable(self.address)
            kw = {"address": self.address} if self.address else {"num_cpus": self.num_cpus}
            ray.init(**kw, include_dashboard=False, log_to_driver=True, configure_logging=False)
            self.started = True
        return self

    def __exit__(self, *exc):
        import ray

        if self.started:
            ray.shutdown()
        return False


class RayRunError(RuntimeError):
    """The run failed in Ray itself (a worker or node lost more often than the retries allow, the
    cluster gone); the message is one line, naming Ray's error class."""


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A preflight TCP connect to a Ray address ("HOST:PORT" or "ray://HOST:PORT"): ray.init keeps
    retrying an address nobody listens on for minutes, logging a line every few seconds.

    Raises:
        ConnectionError: the address is malformed or does not accept a connection in `timeout` s.
    """
    import socket

    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"Ray address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"Ray address {address}: nothing accepts connections there ({e.strerror or e}); "
                              "is 'ray start' running?") from None


def _get(refs):
    """ray.get that re-raises a task's own exception (its type and message), not Ray's wrapper,
    and Ray's own failures as :class:`RayRunError` (one line), the original chained."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException) and not isinstance(cause, RayError):
            raise cause.with_traceback(None) from None
        raise RayRunError(f"a Ray task failed: {type(e).__name__}: {_first_line(e)}") from e
    except RayError as e:
        raise RayRunError(f"a Ray task failed: {type(e).__name__}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _claim(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _maybe_die():
    """The fault-injection hooks of the tests (FAULT_ENV, FAULT_NODE_ENV); nothing when unset."""
    marker = os.environ.get(FAULT_ENV)
    if marker and _claim(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    marker = os.environ.get(FAULT_NODE_ENV)
    if marker:
        import ray

        here = ray.get_runtime_context().get_node_id()
        doomed = any(n["NodeID"] == here and n["Resources"].get(FAULT_NODE_RESOURCE) for n in ray.nodes())
        if doomed and _claim(marker):
            os.kill(os.getppid(), signal.SIGKILL)  # the raylet that started this worker: the node is gone
            os.kill(os.getpid(), signal.SIGKILL)


def _subtree_task(X, Y_csc, Z, labels, root, depth, bits_below, first_depth, parent_offset, tree_params,
                  ranker_params, pred_params, threads):
    """One sub-tree: the codes of its labels below `root` and the rankers of its levels.

    X: N × D float32 CSR (rows l2-normalized); Y_csc: N × L CSC; Z: L × D' label embeddings
    (zero-copy views from the object store). labels: (L_k,) int64 ascending, the sub-tree's
    labels. Returns (codes (L_k,) int64 below `root`, [W per level below], seconds, peak MiB)."""
    reset_peak()
    t0 = time.perf_counter()
    _maybe_die()
    Zk = Z[labels]
    codes = binary_codes(Zk, depth, tree_params.kmeans_max_iter, tree_params.seed, threads,
                         first_depth=first_depth, prefix=root)
    del Zk
    sub = tree_from_codes(codes, [b - first_depth for b in bits_below])
    W = _train_subtree(X, Y_csc, labels, sub, root, parent_offset, ranker_params, pred_params, threads)
    return codes, W, time.perf_counter() - t0, peak_rss_mb()


def _subtree_rankers_task(X, Y_csc, labels, sub, root, parent_offset, ranker_params, pred_params, threads):
    """One sub-tree of a given tree (`sub`, its chain below `root` over `labels`): its rankers.
    Returns (None, [W per level below], seconds, peak MiB)."""
    reset_peak()
    t0 = time.perf_counter()
    _maybe_die()
    W = _train_subtree(X, Y_csc, labels, sub, root, parent_offset, ranker_params, pred_params, threads)
    return None, W, time.perf_counter() - t0, peak_rss_mb()


def _train_subtree(X, Y_csc, labels, sub, root, parent_offset, ranker_params, pred_params, threads):
    """The rankers of sub-tree `sub` on the instances with a positive among `labels` (TFN: those
    active anywhere in it), taken in their global order so every block equals the whole model's."""
    Yk = Y_csc[:, labels].tocsr()
    rows = np.flatnonzero(np.diff(Yk.indptr))
    Yk = Yk[rows]
    Xk = X[rows]
    bad = ~np.isfinite(Xk.data)
    if bad.any():
        at = int(np.searchsorted(Xk.indptr, np.flatnonzero(bad)[0], side="right") - 1)
        raise ValueError(f"X row {int(rows[at])}: a non-finite feature value (NaN or inf); "
                         f"sub-tree {root} cannot be trained on it")
    ranker_params = type(ranker_params)(**{**ranker_params.to_dict(), "threads": threads})
    return XLinearModel.train(Xk, Yk, sub, ranker_params, pred_params, parent_offset=parent_offset).W


def _subtrees(tree: LabelTree, s: int):
    """Sub-trees rooted at the level-(s-1) nodes of a given tree: per root, (its labels ascending,
    its chain below as a LabelTree, the number of each local level's first parent in the whole tree).

    A root's weight columns at every level are the nonzeros of its parents' columns of C (one
    contiguous run, as CSC keeps each parent's children together), so the tasks' columns go side
    by side in root order. Internal nodes must be numbered contiguously per root (as every
    :func:`tree.build_tree` chain is, disentangled or not): a local node's seed is offset + its
    local number. Raises ValueError otherwise."""
    out = []
    for k in range(tree.C[s - 1].shape[0]):
        lo, hi = k, k + 1  # the parents' range at the current level
        chain, offsets = [], []
        for t in range(s, tree.depth):
            block = tree.C[t][:, lo:hi]
            offsets.append(lo)
            rows = np.unique(block.indices)
            if t == tree.depth - 1:
                labels = rows.astype(np.int64)
                chain.append(block[labels])
                break
            if len(rows) == 0 or rows[-1] - rows[0] + 1 != len(rows):
                raise ValueError(f"engine ray: the level-{t} nodes under sub-tree {k} are not numbered "
                                 "contiguously; its weights could not be assembled")
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            chain.append(block[lo:hi])
        out.append((labels, LabelTree(chain), offsets))
    return out


def train_rankers_ray(X: smat.csr_matrix, Y: smat.spmatrix, tree: LabelTree, params,
                      ray_params: RayParams | None = None, log: Callable[[dict], None] | None = None) -> XLinearModel:
    """The rankers of a given tree (`XLinearModel.train`'s result) with its sub-trees as Ray tasks.

    What the Dagster `rankers` asset runs when a Ray resource is configured: the tree (plain or
    disentangled) is an input there. The meta-problem (levels 0..split_level-1) is trained on the
    driver while the tasks run.

    Args:
        X: N × D float32 CSR, rows l2-normalized. Y: N × L label matrix, entries > 0 positives.
        tree: :class:`LabelTree` over the L labels whose levels are contiguous per sub-tree (any
            :func:`tree.build_tree` chain, disentangled or not).
        params: :class:`model.XRLinearParams` (ranker and pred sections; TFN negatives).
        ray_params: :class:`RayParams`. log: as :func:`train_xlinear_ray`.

    Returns:
        XLinearModel equal to ``XLinearModel.train(X, Y, tree, params.ranker, params.pred)``.

    Raises:
        ValueError: MAN negatives; a tree whose levels are not contiguous per sub-tree; a task's
            own error. RayRunError: as :func:`train_xlinear_ray`.
    """
    import ray

    ray_params = ray_params or RayParams()
    emit = log or (lambda rec: None)
    _check_tfn(params)
    X_ref, X, Y = _checked(X, Y)
    s = min(ray_params.split_level, tree.depth - 1)
    if s == 0:
        return XLinearModel.train(X, Y, tree, params.ranker, params.pred)
    parts = _subtrees(tree, s)
    Y_csc = Y.tocsc()
    col_nnz = np.diff(Y_csc.indptr)
    X_ref, Y_ref = X_ref if X_ref is not None else ray.put(X), ray.put(Y_csc)
    task = _remote(_subtree_rankers_task, ray_params)
    work = [col_nnz[labels].sum() * len(labels) for labels, _, _ in parts]
    refs = {}
    for k in np.argsort(-np.asarray(work), kind="stable"):
        labels, sub, offsets = parts[int(k)]
        refs[int(k)] = task.remote(X_ref, Y_ref, labels, sub, int(k), offsets, params.ranker, params.pred,
                                   ray_params.cpus_per_task)
    t0 = time.perf_counter()
    Y_top = binarize(Y @ tree.label_to_level(s - 1))
    top_W = XLinearModel.train(X, Y_top, LabelTree(tree.C[:s]), params.ranker, params.pred).W
    emit({"stage": "rankers_top", "seconds": time.perf_counter() - t0, "levels": s})
    results = _collect(refs, {k: len(parts[k][0]) for k in refs}, emit)
    t0 = time.perf_counter()
    W = list(top_W)
    for j in range(tree.depth - s):
        W.append(_hstack_csc([results[k][1][j] for k in range(len(parts))], X.shape[1] + 1))
    emit({"stage": "assemble", "seconds": time.perf_counter() - t0})
    return XLinearModel(tree, W, params.ranker.bias, params.pred)


def _check_tfn(params) -> None:
    if "man" in params.ranker.negative_sampling:
        raise ValueError("engine ray: MAN negatives need the whole model above each level; use negative_sampling tfn")


def _remote(fn, ray_params: RayParams):
    """`fn` as a Ray task of the engine's settings: its CPUs, and retries on system failures
    only (a task that raises fails the run at once)."""
    import ray

    return ray.remote(fn).options(num_cpus=ray_params.cpus_per_task, max_retries=ray_params.max_retries,
                                  retry_exceptions=False)


def _checked(X, Y):
    """(X_ref or None, X, Y): X as float32 CSR with sorted indices, Y binarized. X given as an
    ObjectRef is read zero-copy from the object store (it must be float32 CSR, indices sorted:
    a stored object is read-only), so the driver holds no private copy of it."""
    import ray

    X_ref = None
    if isinstance(X, ray.ObjectRef):
        X_ref, X = X, ray.get(X)
        if not (smat.isspmatrix_csr(X) and X.dtype == np.float32 and X.has_sorted_indices):
            raise ValueError("engine ray: an X in the object store must be a float32 CSR with sorted indices")
    else:
        X = smat.csr_matrix(X, dtype=np.float32)
        if not X.has_sorted_indices:
            X = X.sorted_indices()
    Y = binarize(Y)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"engine ray: X has {X.shape[0]} rows, Y has {Y.shape[0]}")
    return X_ref, X, Y


def _collect(refs: dict, n_labels: dict, emit) -> dict:
    """Results of the sub-tree tasks as they finish (one "subtree" record each)."""
    import ray

    results = {}
    pending = {ref: k for k, ref in refs.items()}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        k = pending.pop(done[0])
        codes_k, W_k, sec, peak = _get(done[0])
        results[k] = (codes_k, W_k)
        emit({"stage": "subtree", "root": k, "n_labels": n_labels[k], "seconds": round(sec, 3),
              "worker_peak_rss_mb": round(peak, 1)})
    return results


def train_xlinear_ray(X: smat.csr_matrix, Y: smat.spmatrix, params, ray_params: RayParams | None = None,
                      log: Callable[[dict], None] | None = None) -> tuple[LabelTree, XLinearModel]:
    """PIFA → label tree → rankers of XR-Linear with the sub-trees trained as Ray tasks.

    Runs inside a Ray session (:class:`ray_session`, or `ray.init` by the caller).

    Args:
        X: N × D float32 CSR, rows l2-normalized; or an ObjectRef of one (float32, sorted
            indices) already in the object store, read zero-copy (the driver then holds no copy).
        Y: N × L label matrix (sparse), entries > 0 positives.
        params: :class:`model.XRLinearParams` (pifa, tree, ranker, pred sections; TFN negatives,
            no disentangle section).
        ray_params: :class:`RayParams` (None: defaults).
        log: receives {"stage": "label_embeddings" | "label_tree_top" | "rankers_top" |
            "subtree" | "assemble", "seconds", ...} records; "subtree" ones carry the task's
            "root", "n_labels", "seconds" and the worker process's "worker_peak_rss_mb".

    Returns:
        (tree, ranker): equal to `build_tree(pifa(X, Y))` and `XLinearModel.train` on it with
        the same params.

    Raises:
        ValueError: MAN negatives or a disentangle section (not decomposable); X/Y shapes that
            do not match; a task's own error, re-raised as it was raised.
        RayRunError: a task lost more often than `max_retries` allows, or Ray itself failed.
    """
    import ray

    ray_params = ray_params or RayParams()
    emit = log or (lambda rec: None)
    _check_tfn(params)
    if params.disentangle is not None:
        raise ValueError("engine ray: label disentanglement is not decomposed; train xr-linear-ld locally")
    X_ref, X, Y = _checked(X, Y)
    N, L = Y.shape
    tp = params.tree
    threads = tp.threads if tp.threads > 0 else (os.cpu_count() or 1)

    t0 = time.perf_counter()
    Z = pifa(X, Y, params.pifa, threads=threads)
    emit({"stage": "label_embeddings", "seconds": time.perf_counter() - t0})
    bits = chain_bits(L, tp)
    s = min(ray_params.split_level, len(bits))
    if s == 0:  # a flat tree: one problem, nothing to split
        tree = tree_from_codes(np.zeros(L, np.int64), [])
        return tree, XLinearModel.train(X, Y, tree, params.ranker, params.pred)
    b = bits[s - 1]  # binary depth of the sub-tree roots
    t0 = time.perf_counter()
    top = binary_codes(Z, b, tp.kmeans_max_iter, tp.seed, threads)
    emit({"stage": "label_tree_top", "seconds": time.perf_counter() - t0, "n_subtrees": 1 << b})

    # one task per sub-tree root, largest first (labels × instances is its work's scale)
    order = np.argsort(top, kind="stable")
    bounds = np.searchsorted(top[order], np.arange((1 << b) + 1))
    Y_csc = Y.tocsc()
    col_nnz = np.diff(Y_csc.indptr)
    work = np.array([col_nnz[order[bounds[k]:bounds[k + 1]]].sum() * (bounds[k + 1] - bounds[k])
                     for k in range(1 << b)])
    X_ref, Y_ref, Z_ref = X_ref if X_ref is not None else ray.put(X), ray.put(Y_csc), ray.put(Z)
    del Z, Y_csc  # the stored copies are what the tasks read; the driver keeps Y (CSR) and X
    task = _remote(_subtree_task, ray_params)
    # level s+j's first parent under root k: k's first descendant at level s+j-1
    level_bits = [b] + bits[s:]  # binary depth of the parents of levels s, s+1, ...
    refs = {}
    for k in np.argsort(-work, kind="stable"):
        k = int(k)
        labels = order[bounds[k]:bounds[k + 1]].astype(np.int64)
        offsets = [k << (pb - b) for pb in level_bits]
        refs[k] = task.remote(X_ref, Y_ref, Z_ref, labels, k, bits[-1], bits[s:], b, offsets, tp,
                              params.ranker, params.pred, ray_params.cpus_per_task)

    # the meta-problem on the driver while the tasks run: levels 0..s-1 over the top nodes
    t0 = time.perf_counter()
    top_tree = tree_from_codes(top, bits[:s])  # levels 0..s-1, then the labels under them
    Y_top = binarize(Y @ smat.csr_matrix(top_tree.C[-1]))  # N × (level s-1 nodes)
    top_W = XLinearModel.train(X, Y_top, LabelTree(top_tree.C[:-1]), params.ranker, params.pred).W
    emit({"stage": "rankers_top", "seconds": time.perf_counter() - t0, "levels": s})

    results = _collect(refs, {k: int(bounds[k + 1] - bounds[k]) for k in refs}, emit)

    t0 = time.perf_counter()
    codes = np.empty(L, np.int64)
    shift = bits[-1] - b
    for k in range(1 << b):
        labels = order[bounds[k]:bounds[k + 1]]
        if len(labels):
            codes[labels] = (np.int64(k) << shift) | results[k][0]
    tree = tree_from_codes(codes, bits)
    W = list(top_W)
    for j in range(len(tree.C) - s):
        W.append(_hstack_csc([results[k][1][j] for k in range(1 << b) if k in results], X.shape[1] + 1))
    ranker = XLinearModel(tree, W, params.ranker.bias, params.pred)
    emit({"stage": "assemble", "seconds": time.perf_counter() - t0})
    return tree, ranker


class RayEngine:
    """The Ray engine as `model.fit_rankers` uses it: tree and rankers by sub-tree tasks.

    Args:
        params: :class:`RayParams`; training runs in a :class:`ray_session` of its address.
    """

    name = "ray"

    def __init__(self, params: RayParams | None = None):
        self.params = params or RayParams()

    def fit_xlinear(self, X, Y, params, log=None) -> tuple[LabelTree, XLinearModel]:
        """Tree and rankers: `train_xlinear_ray` inside a session of this engine's address.

        Args:
            X: N × D float32 CSR, rows l2-normalized. Y: N × L labels (sparse).
            params: :class:`model.XRLinearParams`. log: stage records, as `train_xlinear_ray`.

        Returns:
            (LabelTree, XLinearModel), equal to the local ones.
        """
        with ray_session(self.params.address):
            return train_xlinear_ray(X, Y, params, self.params, log)

    def fit_rankers(self, X, Y, tree: LabelTree, params, log=None) -> XLinearModel:
        """Rankers of a given tree: `train_rankers_ray` inside a session of this engine's address.

        Args:
            X: N × D float32 CSR, rows l2-normalized. Y: N × L labels (sparse).
            tree: the :class:`LabelTree`. params: :class:`model.XRLinearParams`. log: stage records.

        Returns:
            XLinearModel equal to ``XLinearModel.train(X, Y, tree, ...)``.
        """
        with ray_session(self.params.address):
            return train_rankers_ray(X, Y, tree, params, self.params, log)


def _hstack_csc(blocks: Sequence[smat.csc_matrix], n_rows: int) -> smat.csc_matrix:
    """Columns of CSC blocks side by side, int32 indices kept (scipy's hstack upcasts)."""
    nnz = sum(int(B.nnz) for B in blocks)
    n_cols = sum(B.shape[1] for B in blocks)
    indptr = np.zeros(n_cols + 1, np.int64)
    indices = np.empty(nnz, np.int32)
    data = np.empty(nnz, np.float32)
    c = p = 0
    for B in blocks:
        m = B.shape[1]
        indptr[c + 1:c + m + 1] = p + B.indptr[1:]
        indices[p:p + B.nnz] = B.indices
        data[p:p + B.nnz] = B.data
        c += m
        p += B.nnz
    W = smat.csc_matrix((data, indices, indptr.astype(np.int32 if nnz < 2**31 else np.int64)), shape=(n_rows, n_cols))
    W.has_sorted_indices = True
    return W


# ---------------------------------------------------------------------------------------------
# Batch prediction
# ---------------------------------------------------------------------------------------------
class _Predictor:
    """Ray actor: one model loaded once per worker; scores shards of documents."""

    def __init__(self, model_path: str):
        from .model import load_model

        self.model = load_model(model_path)

    def predict(self, shard: int, first_doc: int, inputs, out_path: str, topk: int, beam_size: int | None):
        from .batch import predict_shard

        t0 = time.perf_counter()
        n = predict_shard(self.model, inputs, out_path, first_doc, topk, beam_size)
        return shard, n, time.perf_counter() - t0


def predict_files_ray(model_path: str | Path, shards: Sequence, out_dir: str | Path, n_actors: int = 2,
                      topk: int = 5, beam_size: int | None = None,
                      log: Callable[[dict], None] | None = None) -> dict:
    """Score document shards on Ray actors (the model loaded once per actor) into Parquet.

    Args:
        model_path: a model folder (any kind `model.load_model` reads).
        shards: sequence of inputs, each a list of texts or an n_i × D CSR; shard i's documents
            are numbered after those of shards 0..i-1 (input order).
        out_dir: folder for ``part-00000.parquet``, ... (one per shard in :mod:`batch`'s format:
            doc, labels, scores; rows in input order): a new path or a
            predictions folder xmc wrote, replaced only when every shard is written. On a
            cluster it must be a filesystem all nodes share.
        n_actors: model replicas (int >= 1), each a Ray actor of 1 CPU.
        topk, beam_size: as `predict_labels`.
        log: receives one {"stage": "shard", "shard", "n", "seconds"} per shard.

    Returns:
        {"n_docs", "n_shards", "seconds", "docs_per_s", "out", "files": [paths]}.

    Raises:
        folders.PathInUseError: out_dir holds something xmc did not write; a shard's own error
            (as raised in the actor).
    """
    import ray

    from .folders import atomic_dir

    emit = log or (lambda rec: None)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    Actor = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)(_Predictor)
    actors = [Actor.remote(str(Path(model_path).resolve())) for _ in range(max(1, min(n_actors, len(shards))))]
    n_docs = 0
    # the shards are written into a temporary sibling folder that replaces out_dir only when all
    # are there: a failed run leaves out_dir as it was
    with atomic_dir(out_dir, kind="predictions") as tmp:
        refs, first = [], 0
        for i, inputs in enumerate(shards):
            path = tmp.resolve() / f"part-{i:05d}.parquet"
            refs.append(actors[i % len(actors)].predict.remote(i, first, inputs, str(path), topk, beam_size))
            first += inputs.shape[0] if hasattr(inputs, "shape") else len(inputs)
        for shard, n, sec in _get(refs):
            n_docs += n
            emit({"stage": "shard", "shard": shard, "n": n, "seconds": round(sec, 3)})
    seconds = time.perf_counter() - t0
    files = [str(out_dir / f"part-{i:05d}.parquet") for i in range(len(shards))]
    return {"n_docs": n_docs, "n_shards": len(shards), "seconds": round(seconds, 3),
            "docs_per_s": round(n_docs / seconds, 1) if seconds > 0 else None, "out": str(out_dir),
            "files": files}
