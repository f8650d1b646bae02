"""Ray execution engine: XR-Linear training as Ray tasks, and batch prediction by actors.

Training decomposition (after PECOS's distributed XR-Linear, ``pecos/distributed/xmc/xlinear``,
there over MPI: a meta-problem over the top of the tree, then independent sub-trees; here over
Ray tasks and the object store):

- X and Y (CSC) are put in the object store once; every task reads them zero-copy and copies out
  only its rows and labels. No task reads a stored Z: a task computes the PIFA rows of its own
  labels (each row as `pifa` of all labels computes it), because Z is larger than X (127M
  nonzeros against 74M for 1M labels / 1M documents);
- the top of the label tree, binary depths above the sub-tree roots (the nodes of level
  `split_level - 1`), is one task per node: a node's two children are submitted when it returns;
- every sub-tree's clustering below its root is one task;
- the rankers of every level are cut into chunks of consecutive parents of about equal cost
  (active instances × children), `chunks_per_worker` per worker and level, and each chunk is one
  task, largest first. The top levels' chunks (the meta-problem) start as soon as the top of
  the tree is known, beside the sub-tree clustering. A sub-tree is not one ranker task, as in
  PECOS: with Zipf-distributed labels one of 64 sub-trees held 47% of the ranker work
  (run ray-20261130T044953-a9d2c4) and set the makespan;
- the driver only schedules, and assembles the codes into one :class:`LabelTree` and each
  level's weight columns (contiguous per chunk) into one :class:`XLinearModel`, an ordinary
  model folder that loads and predicts without Ray.

Same model: every 2-means node takes the seed it has in the whole tree (`tree.binary_codes`
first_depth/prefix) and every ranker parent its instance-order seed (`_train_level`
parent_offset); a chunk's instance blocks are the same rows in the same order. So the tree and
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
from .sparse import binarize, first_entry
from .tree import LabelTree, binary_codes, chain_bits, tree_from_codes
from .xlinear import XLinearModel, _train_level

__all__ = ["RayParams", "RayEngine", "RayRunError", "train_xlinear_ray", "train_rankers_ray", "predict_files_ray", "ray_session"]

#: test hook: when set to a path, the first training task that finds no file there creates it and
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
    split_level: tree level whose nodes root the sub-tree clustering tasks (1: the top level's
        clusters, as PECOS does; deeper levels give more, smaller tasks, and more of the tree one
        node per task above them). Clipped to the tree's depth - 1.
    cpus_per_task: CPUs Ray reserves for one task; the task's threads (int >= 1).
    max_retries: retries of a task whose worker or node died (Ray's system-failure retries; a
        task that raises is not retried).
    chunks_per_worker: every level's rankers are cut into about this many tasks per worker (int
        >= 1), of equal cost (active instances × children): more give a better balance and
        smaller tasks, each one slicing its rows of X.
    """

    address: str | None = None
    split_level: int = 1
    cpus_per_task: int = 1
    max_retries: int = 3
    chunks_per_worker: int = 8

    def __post_init__(self):
        if self.split_level < 1:
            raise ValueError(f"RayParams.split_level: must be >= 1, got {self.split_level}")
        if self.cpus_per_task < 1:
            raise ValueError(f"RayParams.cpus_per_task: must be >= 1, got {self.cpus_per_task}")
        if self.max_retries < 0:
            raise ValueError(f"RayParams.max_retries: must be >= 0, got {self.max_retries}")
        if self.chunks_per_worker < 1:
            raise ValueError(f"RayParams.chunks_per_worker: must be >= 1, got {self.chunks_per_worker}")


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


def _task_result(value, t0: float):
    """What every task returns: (value, seconds, the worker process's peak MiB)."""
    return value, time.perf_counter() - t0, peak_rss_mb()


def _pifa_rows(X, Y_csc, labels, pifa_params, threads: int = 1):
    """PIFA rows of `labels` (ascending): each row is computed as `pifa` of all labels computes
    it (Yᵀ X row by row, then l2 rows), so a task builds the embeddings of its own labels from
    X and Y instead of reading a stored Z (972 MiB for 1M labels, nearly twice X)."""
    Yk = Y_csc if len(labels) == Y_csc.shape[1] else Y_csc[:, labels]
    return pifa(X, Yk, pifa_params, threads=threads)


def _check_finite(X, where: str) -> None:
    """ValueError naming the first row of X that holds a NaN or inf. Run by the tasks that read
    every row (the root's split, the level-0 chunk), so a bad X fails the run once, not once
    per task."""
    bad = ~np.isfinite(X.data)
    if bad.any():
        row, _, _ = first_entry(X, bad)
        raise ValueError(f"X row {row}: a non-finite feature value (NaN or inf); {where} cannot be trained on it")


def _node_task(X, Y_csc, members, d, n, pifa_params, tree_params, threads):
    """One node of the top of the tree: the 2-means sides of its labels `members` (ascending),
    node `n` of binary depth `d` of the whole tree (its seed is the one it has there).

    X: N × D float32 CSR, Y_csc: N × L CSC (zero-copy from the object store). Returns
    (sides (m,) int64, seconds, peak MiB)."""
    reset_peak()
    t0 = time.perf_counter()
    _maybe_die()
    if d == 0:
        _check_finite(X, "the label tree")
    Z = _pifa_rows(X, Y_csc, members, pifa_params, threads)
    sides = binary_codes(Z, d + 1, tree_params.kmeans_max_iter, tree_params.seed, 1, first_depth=d, prefix=n,
                         overwrite_indices=True)
    return _task_result(sides, t0)


def _subtree_codes_task(X, Y_csc, labels, root, first_depth, depth, pifa_params, tree_params, threads):
    """One sub-tree's clustering: the codes of its labels (ascending) below `root`, a node of
    binary depth `first_depth`, down to binary depth `depth`. Returns (codes (L_k,) int64,
    seconds, peak MiB)."""
    reset_peak()
    t0 = time.perf_counter()
    _maybe_die()
    Z = _pifa_rows(X, Y_csc, labels, pifa_params, threads)
    codes = binary_codes(Z, depth, tree_params.kmeans_max_iter, tree_params.seed, threads, first_depth=first_depth,
                         prefix=root, overwrite_indices=True)
    return _task_result(codes, t0)


@dataclass
class _Chunk:
    """Ranker work of one task: parents lo..hi-1 of level t. labels: (L_c,) int64 ascending, the
    labels under those parents; M: L_c × m 0/1 CSR, which of the m children (level-t nodes, in
    their global order) holds each label; C: m × (hi-lo) CSC, the parents' children (C[t]'s
    block); cost: Σ active instances × children, the solver's work to scale."""

    t: int
    lo: int
    hi: int
    labels: np.ndarray
    M: smat.csr_matrix
    C: smat.csc_matrix
    cost: float


def _chunk_task(X, Y_csc, chunk: _Chunk, ranker_params, threads):
    """The rankers of one chunk: level chunk.t's weight columns of parents lo..hi-1, trained on
    the instances active for them (TFN; level 0: all instances) in their global order, each
    parent with its whole-model seed, so the columns equal `XLinearModel.train`'s. Each parent's
    block is gathered straight from the stored X (no copy of the chunk's rows).
    Returns ((D+1) × nnz(chunk.C) float32 CSC, seconds, peak MiB)."""
    reset_peak()
    t0 = time.perf_counter()
    _maybe_die()
    N = X.shape[0]
    Y_t = binarize(Y_csc[:, chunk.labels].tocsr() @ chunk.M)  # N × m, the children's targets
    where = f"level {chunk.t} parents {chunk.lo}..{chunk.hi - 1}"
    if chunk.t == 0:  # the root is active for every instance, labelled or not
        active = smat.csc_matrix(np.ones((N, 1), np.float32))
        _check_finite(X, where)
    else:
        active = binarize(Y_t @ chunk.C).tocsc()
    params = type(ranker_params)(**{**ranker_params.to_dict(), "threads": threads})
    W = _train_level(X, Y_t, chunk.C, active, params, threads, parent_offset=chunk.lo, desc=f"rankers {where}")
    return _task_result(W, t0)


def _plan_level(tree: LabelTree, t: int, Y: smat.csr_matrix, n_chunks: int) -> list[_Chunk]:
    """Level t of `tree` (its levels 0..t at least final) cut into about `n_chunks` runs of
    parents of equal cost (active instances × children; a heavier parent alone)."""
    C = tree.C[t]
    n_children = np.diff(C.indptr).astype(np.float64)
    if t == 0:
        act = np.array([Y.shape[0]], np.float64)
    else:
        act = np.diff(binarize(Y @ tree.label_to_level(t - 1)).tocsc().indptr).astype(np.float64)
    cost = act * n_children
    target = max(cost.sum() / max(n_chunks, 1), 1.0)
    L2N = tree.label_to_level(t).tocsc() if t < tree.depth - 1 else None
    chunks, lo, acc = [], 0, 0.0
    P = C.shape[1]
    for p in range(P):
        acc += cost[p]
        if acc >= target or p == P - 1:
            hi = p + 1
            S = C[:, lo:hi]
            children = np.unique(S.indices)
            if L2N is None:  # the leaf level: the children are the labels
                labels = children.astype(np.int64)
                M = smat.identity(len(labels), np.float32, format="csr")
            else:
                sub = L2N[:, children].tocsr()
                labels = np.flatnonzero(np.diff(sub.indptr)).astype(np.int64)
                M = sub[labels]
            chunks.append(_Chunk(t, lo, hi, labels, M, smat.csc_matrix(C[children][:, lo:hi]), float(cost[lo:hi].sum())))
            lo, acc = hi, 0.0
    return chunks


class _Tasks:
    """The run's Ray tasks in flight: submitted with a kind and a key, collected as they finish
    (a task's own exception re-raised as itself, Ray's failures as RayRunError)."""

    def __init__(self, ray_params: RayParams, emit):
        import ray

        self.ray, self.emit, self.pending = ray, emit, {}
        self.fns = {name: _remote(fn, ray_params) for name, fn in
                    (("node", _node_task), ("subtree", _subtree_codes_task), ("chunk", _chunk_task))}

    def submit(self, kind: str, key, *args):
        self.pending[self.fns[kind].remote(*args)] = (kind, key)

    def submit_chunks(self, chunks: list[_Chunk], X_ref, Y_ref, ranker_params, threads):
        for c in sorted(chunks, key=lambda c: -c.cost):  # largest first
            self.submit("chunk", c, X_ref, Y_ref, c, ranker_params, threads)

    def next(self):
        """(kind, key, value) of the next task to finish; its record emitted."""
        done, _ = self.ray.wait(list(self.pending), num_returns=1)
        kind, key = self.pending.pop(done[0])
        try:
            value, sec, peak = _get(done[0])
        except BaseException:
            # the run has failed: the tasks still queued or running would only occupy a cluster
            # the driver may not own (one joined by address is left running)
            for ref in self.pending:
                self.ray.cancel(ref, force=True)
            self.pending.clear()
            raise
        if kind == "chunk":
            rec = {"stage": "chunk", "level": key.t, "parents": [key.lo, key.hi], "n_labels": len(key.labels),
                   "nnz_W": int(value.nnz)}
        elif kind == "subtree":
            rec = {"stage": "subtree", "root": key[0], "n_labels": len(key[1])}
        else:
            rec = {"stage": "tree_node", "depth": key[0], "node": key[1], "n_labels": len(key[2])}
        self.emit({**rec, "seconds": round(sec, 3), "worker_peak_rss_mb": round(peak, 1)})
        return kind, key, value


class _Pieces:
    """The chunks' weight columns, kept on the driver's disk (a temporary folder) as they come
    in; the stored copy of a piece is freed once it is written, so the driver holds nothing of W
    while the tasks run.

    `assemble` streams each level's pieces, in parent order, into one file per array and maps
    the files read-only: the model's W is in the page cache and on disk, not in the driver's
    memory (1.87 GB of weights for 1M labels, more than the driver holds otherwise). The files
    are unlinked once mapped; the mappings keep them readable until the model is dropped."""

    def __init__(self):
        import tempfile

        self.dir = tempfile.TemporaryDirectory(prefix="xmc-ray-W-")
        self.meta: dict[int, list[tuple[int, int, int, str]]] = {}

    def add(self, t: int, lo: int, W: smat.csc_matrix) -> None:
        path = os.path.join(self.dir.name, f"W{t}-{lo}.npz")
        np.savez(path, data=W.data, indices=W.indices, indptr=W.indptr)
        self.meta.setdefault(t, []).append((lo, W.shape[1], int(W.nnz), path))

    def assemble(self, n_levels: int, D1: int) -> list[smat.csc_matrix]:
        """Each level's chunks side by side in parent order: (D+1) × nnz(C[t]) float32 CSC,
        int32 indices (scipy's hstack would upcast them), data and indices memory-mapped."""
        out = []
        for t in range(n_levels):
            parts = sorted(self.meta.pop(t, []))
            nnz = sum(p[2] for p in parts)
            n_cols = sum(p[1] for p in parts)
            indptr = np.zeros(n_cols + 1, np.int64)
            paths = {k: os.path.join(self.dir.name, f"W{t}.{k}.npy") for k in ("indices", "data")}
            files = {k: open(paths[k], "wb") for k in paths}
            for k, dtype in (("indices", np.int32), ("data", np.float32)):
                np.lib.format.write_array_header_1_0(files[k], {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                                "fortran_order": False, "shape": (nnz,)})
            c = q = 0
            for _, m, k, path in parts:
                with np.load(path) as f:
                    # int64 before the offset: a chunk's indptr is int32, and q + int32 stays int32
                    # under NumPy 2, wrapping once a level passes 2**31 weights
                    indptr[c + 1:c + m + 1] = q + f["indptr"][1:].astype(np.int64)
                    f["indices"].astype(np.int32, copy=False).tofile(files["indices"])
                    f["data"].astype(np.float32, copy=False).tofile(files["data"])
                os.remove(path)
                c, q = c + m, q + k
            for f in files.values():
                f.close()
            indices, data = (np.load(paths[k], mmap_mode="r") for k in ("indices", "data"))
            W = smat.csc_matrix((data, indices, indptr.astype(np.int32 if nnz < 2**31 else np.int64)),
                                shape=(D1, n_cols))
            W.has_sorted_indices = True
            out.append(W)
        self.dir.cleanup()
        return out


def _n_workers(ray_params: RayParams) -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1) // ray_params.cpus_per_task))


def train_rankers_ray(X: smat.csr_matrix, Y: smat.spmatrix, tree: LabelTree, params,
                      ray_params: RayParams | None = None, log: Callable[[dict], None] | None = None) -> XLinearModel:
    """The rankers of a given tree (`XLinearModel.train`'s result), every level cut into chunks of
    parents of equal cost, each chunk one Ray task.

    What the Dagster `rankers` asset runs when a Ray resource is configured: the tree (plain or
    disentangled) is an input there.

    Args:
        X: N × D float32 CSR, rows l2-normalized. Y: N × L label matrix, entries > 0 positives.
        tree: any :class:`LabelTree` over the L labels (label copies allowed).
        params: :class:`model.XRLinearParams` (ranker and pred sections; TFN negatives).
        ray_params: :class:`RayParams`. log: as :func:`train_xlinear_ray` ("chunk" records).

    Returns:
        XLinearModel equal to ``XLinearModel.train(X, Y, tree, params.ranker, params.pred)``.

    Raises:
        ValueError: MAN negatives; a task's own error. RayRunError: as :func:`train_xlinear_ray`.
    """
    import ray

    ray_params = ray_params or RayParams()
    emit = log or (lambda rec: None)
    _check_tfn(params)
    X_ref, X, Y = _checked(X, Y)
    X_ref, Y_ref = X_ref if X_ref is not None else ray.put(X), ray.put(Y.tocsc())
    tasks = _Tasks(ray_params, emit)
    n_chunks = _n_workers(ray_params) * ray_params.chunks_per_worker
    for t in range(tree.depth):
        tasks.submit_chunks(_plan_level(tree, t, Y, n_chunks), X_ref, Y_ref, params.ranker, ray_params.cpus_per_task)
    pieces = _Pieces()
    t0 = time.perf_counter()
    while tasks.pending:
        _, c, W_c = tasks.next()
        pieces.add(c.t, c.lo, W_c)
        del W_c
    emit({"stage": "rankers_tasks", "seconds": time.perf_counter() - t0})
    D1 = X.shape[1] + 1
    del X, X_ref, Y_ref  # the store frees X here unless the caller holds a reference
    return _assembled(pieces, tree, D1, params, emit)


def _assembled(pieces: _Pieces, tree: LabelTree, D1: int, params, emit) -> XLinearModel:
    """The model of the chunks' columns (`_Pieces.assemble`), with its "assemble" record."""
    t0 = time.perf_counter()
    W = pieces.assemble(tree.depth, D1)
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


def train_xlinear_ray(X: smat.csr_matrix, Y: smat.spmatrix, params, ray_params: RayParams | None = None,
                      log: Callable[[dict], None] | None = None) -> tuple[LabelTree, XLinearModel]:
    """PIFA → label tree → rankers of XR-Linear, every part of the work a Ray task.

    Runs inside a Ray session (:class:`ray_session`, or `ray.init` by the caller). The driver
    only schedules: the top of the tree (binary depths above the sub-tree roots) one node per
    task, each sub-tree's clustering one task, and the rankers of every level in chunks of
    parents of equal cost (:func:`train_rankers_ray`'s), the top levels' chunks as soon as the
    top of the tree is known. Tasks compute the PIFA rows of their own labels from X and Y.

    Args:
        X: N × D float32 CSR, rows l2-normalized; or an ObjectRef of one (float32, sorted
            indices) already in the object store, read zero-copy (the driver then holds no copy).
        Y: N × L label matrix (sparse), entries > 0 positives.
        params: :class:`model.XRLinearParams` (pifa, tree, ranker, pred sections; TFN negatives,
            no disentangle section).
        ray_params: :class:`RayParams` (None: defaults).
        log: receives {"stage", "seconds", ...} records: one "tree_node", "subtree" or "chunk"
            per task as it finishes (with the worker process's "worker_peak_rss_mb"; sub-trees
            with "root" and "n_labels", chunks with "level", "parents" and "nnz_W"), then "label_tree",
            "rankers_tasks" (wall seconds of each phase) and "assemble".

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
    D1 = X.shape[1] + 1
    tp = params.tree
    bits = chain_bits(L, tp)
    s = min(ray_params.split_level, len(bits))
    if s == 0:  # a flat tree: one problem, nothing to split
        tree = tree_from_codes(np.zeros(L, np.int64), [])
        return tree, XLinearModel.train(X, Y, tree, params.ranker, params.pred)
    b = bits[s - 1]  # binary depth of the sub-tree roots
    X_ref, Y_ref = X_ref if X_ref is not None else ray.put(X), ray.put(Y.tocsc())
    del X  # the tasks read the stored X
    tasks = _Tasks(ray_params, emit)
    n_chunks = _n_workers(ray_params) * ray_params.chunks_per_worker
    threads = ray_params.cpus_per_task

    # the top of the tree, a node per task: a node's children are submitted when it returns,
    # a sub-tree's clustering when its root is known; then the top levels' rankers
    t_tree = time.perf_counter()
    codes = np.zeros(L, np.int64)  # binary code at the depth reached so far, then the leaf code
    members0 = np.arange(L, dtype=np.int64)
    tasks.submit("node", (0, 0, members0), X_ref, Y_ref, members0, 0, 0, params.pifa, tp, threads)
    tree_top_left = (1 << b) - 1  # top-of-tree nodes not returned yet
    sub_codes: dict[int, tuple] = {}
    pieces = _Pieces()
    tree = None
    t_tasks = None

    def submit_subtree(root, labels):
        tasks.submit("subtree", (root, labels), X_ref, Y_ref, labels, root, b, bits[-1], params.pifa, tp, threads)

    while tasks.pending:
        kind, key, value = tasks.next()
        if kind == "node":
            d, n, members = key
            codes[members] = 2 * n + value
            tree_top_left -= 1
            for child in (2 * n, 2 * n + 1):
                labels = members[value == child - 2 * n]
                if d + 1 < b:
                    tasks.submit("node", (d + 1, child, labels), X_ref, Y_ref, labels, d + 1, child, params.pifa, tp,
                                 threads)
                else:
                    submit_subtree(child, labels)
            if tree_top_left == 0:  # the top levels' rankers: their nodes are known now
                top = tree_from_codes(codes, bits[:s])
                for t in range(s):
                    tasks.submit_chunks(_plan_level(top, t, Y, n_chunks), X_ref, Y_ref, params.ranker, threads)
        elif kind == "subtree":
            # codes keep their depth-b values until every sub-tree is in: the top levels'
            # chunks may still be planned from them
            sub_codes[key[0]] = (key[1], value)
            if len(sub_codes) == 1 << b:  # the whole tree: the rankers of the levels below the roots
                shift = bits[-1] - b
                for root, (labels, c) in sub_codes.items():
                    codes[labels] = (np.int64(root) << shift) | c
                sub_codes.clear()
                tree = tree_from_codes(codes, bits)
                emit({"stage": "label_tree", "seconds": time.perf_counter() - t_tree, "n_subtrees": 1 << b})
                t_tasks = time.perf_counter()
                for t in range(s, tree.depth):
                    tasks.submit_chunks(_plan_level(tree, t, Y, n_chunks), X_ref, Y_ref, params.ranker, threads)
        else:
            pieces.add(key.t, key.lo, value)
        del value
    emit({"stage": "rankers_tasks", "seconds": time.perf_counter() - t_tasks})
    del X_ref, Y_ref, tasks  # the store frees X here unless the caller holds a reference
    return tree, _assembled(pieces, tree, D1, params, emit)



class RayEngine:
    """The Ray engine as `model.fit_rankers` uses it: tree and rankers as Ray tasks.

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
