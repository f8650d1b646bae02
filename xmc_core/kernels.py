"""Compiled inner loops (numba): the rankers' dual coordinate descent, the beam step, the tree's
balanced 2-means, and the row gather they share.

These are the places where the work is a loop over single instances (a coordinate-descent update
touches one row of X; a beam step scores one (instance, parent) pair; a 2-means round ranks one
label at a time), which no vectorized array expression expresses without materializing far more
than it computes. Everything here takes and returns plain arrays (CSR as indptr/indices/data, of
any integer type) and releases the GIL, so callers run them in threads.
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np
from numba.core.compiler_lock import global_compiler_lock

from .jit import njit  # numba's, with a cache that is safe across processes and settings

__all__ = ["dcd_squared_hinge", "score_pairs", "select_topk", "beam_row_step", "build_chunks", "build_buckets", "gather_rows",
           "balanced_2means", "renumber_nodes", "balanced_2means_rows", "scratch", "bigram_ids", "ngram_terms", "lookup_terms",
           "count_terms", "tfidf_weight", "remap_columns", "dcd_squared_hinge_lanes", "LANES",
           "slp_vectorized"]

_SCRATCH = threading.local()


def scratch(name: str, n: int, fill: int = -1) -> np.ndarray:
    """A per-thread int64 array of at least n entries, all `fill`, for the kernels that take one
    (`slot` (-1) and `present` (0) of score_pairs, `colmap` of gather_rows / balanced_2means) and
    leave it so: one allocation per thread, not one per call (a one-row request would pay it per
    level). A name always comes with the same fill."""
    arr = getattr(_SCRATCH, name, None)
    if arr is None or len(arr) < n:
        arr = np.full(n, fill, np.int64)
        setattr(_SCRATCH, name, arr)
    return arr


@njit(nogil=True, cache=True)
def _xorshift(state):
    x = state[0]
    x ^= (x << np.uint64(13)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x ^= x >> np.uint64(7)
    x ^= (x << np.uint64(17)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    state[0] = x
    return x


@njit(nogil=True, cache=True)
def _row_sqnorms(indptr, data):
    """Squared l2 norm of each CSR row (float64)."""
    n = indptr.shape[0] - 1
    sqnorm = np.zeros(n, np.float64)
    for i in range(n):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            s += data[p] * data[p]
        sqnorm[i] = s
    return sqnorm


@njit(nogil=True, cache=True)
def _shuffle(index, active, state):
    """index[:active] in a uniformly random order (Fisher-Yates on the xorshift stream)."""
    for s in range(active):
        # uniform in [s, active) by multiply-shift (no division in the hot loop)
        j = s + np.int64(((_xorshift(state) >> np.uint64(32)) * np.uint64(active - s)) >> np.uint64(32))
        tmp = index[s]
        index[s] = index[j]
        index[j] = tmp


@njit(nogil=True, cache=True)
def _triplet_buffers(n_features):
    """Empty (feature, column, value) buffers for `_emit_weights`, sized for one dense column."""
    cap = max(16, n_features)
    return np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.float32)


@njit(nogil=True, cache=True)
def _emit_weights(w, kk, threshold, out_f, out_k, out_v, nnz):
    """Append the entries of weight vector w with w != 0 and |w| >= threshold as triplets
    (feature, kk, value) at out_*[nnz:], growing the buffers; returns them and the new nnz."""
    for f in range(w.shape[0]):
        v = w[f]
        if v != 0.0 and abs(v) >= threshold:
            if nnz == out_f.shape[0]:
                cap = 2 * out_f.shape[0]
                out_f = _grow(out_f, cap)
                out_k = _grow(out_k, cap)
                out_v = _grow(out_v, cap)
            out_f[nnz] = f
            out_k[nnz] = kk
            out_v[nnz] = v
            nnz += 1
    return out_f, out_k, out_v, nnz


@njit(nogil=True, cache=True)
def dcd_squared_hinge(indptr, indices, data, n_features, Ypos, cols, Cp, Cn, eps, max_iter, seed, threshold,
                      visits):
    """One-vs-rest L2-regularized squared-hinge SVMs by dual coordinate descent with shrinking
    (Hsieh et al. 2008, the liblinear L2R_L2LOSS_SVC_DUAL solver), one column of Ypos at a time.

    indptr, indices, data: n × n_features CSR (float32 data, sorted indices not required).
    Ypos: n × K uint8 (1 = positive). cols: the columns of Ypos to solve (int64).
    Stops a column when max(PG) - min(PG) over the active instances is <= eps, or after
    max_iter passes. Returns the weights as triplets (feature, kk, value) with |value| >=
    threshold (threshold 0: the nonzeros), kk the position in `cols`, so no dense
    n_features × K matrix is made; visits[kk] (out) counts the coordinate updates examined.
    """
    n = indptr.shape[0] - 1
    K = cols.shape[0]
    out_f, out_k, out_v = _triplet_buffers(n_features)
    nnz = 0
    sqnorm = _row_sqnorms(indptr, data)
    diag_p = 0.5 / Cp
    diag_n = 0.5 / Cn
    w = np.zeros(n_features, np.float64)
    # per instance (alpha, Q_ii + D_ii, y, D_ii) side by side: one cache line per visited instance
    st = np.empty((n, 4), np.float64)
    index = np.empty(n, np.int64)
    state = np.empty(1, np.uint64)
    for kk in range(K):
        k = cols[kk]
        w[:] = 0.0
        for i in range(n):
            index[i] = i
            pos = Ypos[i, k] != 0
            st[i, 0] = 0.0
            st[i, 1] = sqnorm[i] + (diag_p if pos else diag_n)
            st[i, 2] = 1.0 if pos else -1.0
            st[i, 3] = diag_p if pos else diag_n
        state[0] = np.uint64(seed * 2654435761 + k * 40503 + 1)
        active = n
        # only a lower bound on alpha (squared hinge): shrinking needs the upper PG bound alone
        pg_max_old = np.inf
        it = 0
        while it < max_iter:
            pg_max = -np.inf
            pg_min = np.inf
            _shuffle(index, active, state)
            s = 0
            visits[kk] += active
            while s < active:
                i = index[s]
                alpha_i = st[i, 0]
                qd = st[i, 1]
                yi = st[i, 2]
                lo = indptr[i]
                hi = indptr[i + 1]
                wx = 0.0
                for p in range(lo, hi):
                    wx += w[indices[p]] * data[p]
                G = yi * wx - 1.0 + alpha_i * st[i, 3]
                PG = 0.0
                if alpha_i == 0.0:
                    if G > pg_max_old:
                        active -= 1
                        tmp = index[s]
                        index[s] = index[active]
                        index[active] = tmp
                        continue
                    elif G < 0.0:
                        PG = G
                else:
                    PG = G
                if PG > pg_max:
                    pg_max = PG
                if PG < pg_min:
                    pg_min = PG
                if abs(PG) > 1e-12:
                    new = alpha_i - G / qd
                    if new < 0.0:
                        new = 0.0
                    st[i, 0] = new
                    step = (new - alpha_i) * yi
                    for p in range(lo, hi):
                        w[indices[p]] += step * data[p]
                s += 1
            it += 1
            if pg_max - pg_min <= eps:
                if active == n:
                    break
                # converged on the shrunk set: check once more on all instances
                active = n
                pg_max_old = np.inf
                continue
            pg_max_old = pg_max if pg_max > 0.0 else np.inf
        out_f, out_k, out_v, nnz = _emit_weights(w, kk, threshold, out_f, out_k, out_v, nnz)
    return out_f[:nnz].copy(), out_k[:nnz].copy(), out_v[:nnz].copy()


@njit(nogil=True, cache=True)
def _grow(a, cap):
    """a copied into a new array of cap entries (compiled once per dtype)."""
    b = np.empty(cap, a.dtype)
    b[:a.shape[0]] = a
    return b


#: Rows of a chunk per bucket of its feature index (`build_buckets`): a lookup reads one bucket
#: bound pair and scans about this many 8-byte records, which share a cache line.
ROWS_PER_BUCKET = 2


def build_buckets(recs, rec_off, n_features, rows_per_bucket):
    """A bucket index over each chunk's sorted feature records (`build_chunks`), so that a
    feature's record is found in two memory reads instead of a search.

    Chunk c's features f fall in bucket f >> shift[c] (shift the smallest that leaves at most
    about rows/rows_per_bucket buckets); its records are rec_off[c] + ptr[off[c] + b] up to
    rec_off[c] + ptr[off[c] + b + 1]. Returns (shift int64 per chunk, off int64 per chunk,
    ptr int32): 4 bytes per rows_per_bucket rows of the layout, plus 4 per chunk (ptr from
    numpy, for huge pages, as `build_chunks`).
    """
    shift, off = _bucket_shifts(rec_off, n_features, rows_per_bucket)
    ptr = np.empty(int(off[-1]), np.int32)
    _fill_buckets(recs, rec_off, shift, off, ptr)
    return shift, off[:-1].copy(), ptr


@njit(nogil=True, cache=True)
def _bucket_shifts(rec_off, n_features, rows_per_bucket):
    n_chunks = rec_off.shape[0] - 1
    shift = np.zeros(n_chunks, np.int64)
    off = np.zeros(n_chunks + 1, np.int64)
    for c in range(n_chunks):
        want = max(1, (rec_off[c + 1] - rec_off[c] - 1) // rows_per_bucket)
        s = 0
        while ((n_features - 1) >> s) + 1 > want:
            s += 1
        shift[c] = s
        off[c + 1] = off[c] + ((n_features - 1) >> s) + 2
    return shift, off


@njit(nogil=True, cache=True)
def _fill_buckets(recs, rec_off, shift, off, ptr):
    for c in range(shift.shape[0]):
        lo = rec_off[c]
        m = rec_off[c + 1] - lo - 1  # the sentinel is no row
        s = shift[c]
        a = 0
        for b in range(off[c + 1] - off[c]):
            while a < m and (recs[2 * (lo + a)] >> s) < b:
                a += 1
            ptr[off[c] + b] = a


@njit(nogil=True, cache=True, inline="always")
def _find_row(recs, lo, ptr, bo, shift, f):
    """The record of feature f in the chunk whose records start at lo (`build_buckets`), or -1."""
    b = bo + (f >> shift)
    a = lo + ptr[b]
    e = lo + ptr[b + 1]
    while a < e:
        r = recs[2 * a]
        if r >= f:
            return a if r == f else -1
        a += 1
    return -1


# a feature's entries in `score_pairs`'s scatter slot: first entry << _COUNT_BITS | count
_COUNT_BITS = 24
_COUNT_MASK = (1 << _COUNT_BITS) - 1


@njit(nogil=True, cache=True)
def score_pairs(x_indptr, x_indices, x_data, pair_rows, pair_chunks, pair_out, order,
                recs, ent_off, entries, rec_off, n_child, b_shift, b_off, b_ptr, slot, present, out):
    """Raw scores of every child of each (instance, parent) pair of a beam step.

    x_*: the instances, CSR with sorted indices. Pair q scores instance pair_rows[q] against chunk
    pair_chunks[q] (a parent's children as a row-compressed block over the features where some
    child has a weight, see `build_chunks`) and writes n_child[c] scores to out[pair_out[q]:].
    Pairs are visited in `order`, which groups them by chunk. For each group, the cheaper of two
    ways to find an instance feature's record:

    * scatter: the chunk's entry spans (first entry << 24 | count) are written once into `slot`
      (a length-n_features int64 scratch array of -1, left as it was found), then one lookup
      per feature. Cost: 2 × the chunk's rows, plus nnz(x) per pair; what a batch wants. The
      chunk's features are also marked in `present` (an int64 scratch bitmap of n_features / 64
      + 1 words, zeros, left so): most of a document's features have no weight in a given chunk,
      and their test reads a bitmap that stays in cache (62 KB for eurlex57k's 498k features)
      instead of a 4 MB slot table (eurlex57k batch prediction ~1.2× faster).
    * lookup: the chunk's bucket index (b_shift, b_off, b_ptr: `build_buckets`) gives a
      feature's record in two reads. Cost: 2 × nnz(x) per pair; what one document (a request)
      or a few want against big chunks.

    Either way a feature's (child, weight) entries lie side by side and are added in the same
    order (the instance's features in order), so both give the same float32 sums, bit for bit.
    """
    vals = entries.view(np.float32)
    cur = -1
    scattered = False
    n_pairs = order.shape[0]
    for qq in range(n_pairs):
        q = order[qq]
        c = pair_chunks[q]
        if c != cur:
            if scattered:
                for a in range(rec_off[cur], rec_off[cur + 1] - 1):
                    f = recs[2 * a]
                    slot[f] = -1
                    present[f >> 6] = 0
            # the group's instance nonzeros decide between scatter and lookup
            work = 0
            g = qq
            while g < n_pairs and pair_chunks[order[g]] == c:
                i = pair_rows[order[g]]
                work += x_indptr[i + 1] - x_indptr[i]
                g += 1
            scattered = work >= 2 * (rec_off[c + 1] - rec_off[c] - 1)
            if scattered:  # a feature's entries straight from its slot: first << 24 | count
                base = ent_off[c]
                for a in range(rec_off[c], rec_off[c + 1] - 1):
                    f = recs[2 * a]
                    slot[f] = ((base + recs[2 * a + 1]) << _COUNT_BITS) | (recs[2 * a + 3] - recs[2 * a + 1])
                    present[f >> 6] |= np.int64(1) << (f & 63)
            cur = c
        i = pair_rows[q]
        o = pair_out[q]
        for t in range(n_child[c]):
            out[o + t] = 0.0
        lo = rec_off[c]
        base = ent_off[c]
        bo = b_off[c]
        sh = b_shift[c]
        for p in range(x_indptr[i], x_indptr[i + 1]):
            f = x_indices[p]
            if scattered:
                if not (present[f >> 6] >> (f & 63)) & 1:
                    continue
                span = slot[f]
                e0 = 2 * (span >> _COUNT_BITS)
                e1 = e0 + 2 * (span & _COUNT_MASK)
            else:
                a = _find_row(recs, lo, b_ptr, bo, sh, f)
                if a < 0:
                    continue
                e0 = 2 * (base + recs[2 * a + 1])
                e1 = 2 * (base + recs[2 * a + 3])
            xv = x_data[p]
            for e in range(e0, e1, 2):
                out[o + entries[e]] += xv * vals[e + 1]
    if scattered:
        for a in range(rec_off[cur], rec_off[cur + 1] - 1):
            f = recs[2 * a]
            slot[f] = -1
            present[f >> 6] = 0
    return out


# post-processor codes for `select_topk`: transform and how it combines with the parent's score
PP_NOOP, PP_SIGMOID, PP_LOG_SIGMOID, PP_LP_HINGE, PP_LOG_LP_HINGE = 0, 1, 2, 3, 4
COMBINE_MUL, COMBINE_ADD, COMBINE_NOOP = 0, 1, 2


@njit(nogil=True, cache=True)
def _transform(v, code, power):
    if code == PP_SIGMOID:
        return 1.0 / (1.0 + np.exp(-v))
    if code == PP_LOG_SIGMOID:
        return -np.logaddexp(0.0, -v)
    if code == PP_LP_HINGE or code == PP_LOG_LP_HINGE:
        m = 1.0 - v
        if m < 0.0:
            m = 0.0
        h = m ** power
        return np.exp(-h) if code == PP_LP_HINGE else -h
    return v


@njit(nogil=True, cache=True, inline="always")
def _select_row(q0, q1, pair_parent, pair_pscore, pair_start, child_ptr, child_node, raw,
                code, power, combine, k, merge_copies, tn, ts):
    """`select_topk` for one row: its pairs q0:q1 into tn, ts (length k). Returns the count kept."""
    cnt = 0
    for q in range(q0, q1):
        p = pair_parent[q]
        ps = pair_pscore[q]
        base = pair_start[q]
        a = child_ptr[p]
        for t in range(child_ptr[p + 1] - a):
            s = _transform(raw[base + t], code, power)
            if combine == COMBINE_MUL:
                s = s * ps
            elif combine == COMBINE_ADD:
                s = s + ps
            node = child_node[a + t]
            pos = -1
            if merge_copies:
                for u in range(cnt):
                    if tn[u] == node:
                        pos = u
                        break
                if pos >= 0:
                    if s <= ts[pos]:
                        continue
            if pos < 0:
                if cnt < k:
                    pos = cnt
                    cnt += 1
                elif s > ts[k - 1]:
                    pos = k - 1
                else:
                    continue
            # move up from pos while the one above scores lower
            while pos > 0 and ts[pos - 1] < s:
                ts[pos] = ts[pos - 1]
                tn[pos] = tn[pos - 1]
                pos -= 1
            ts[pos] = s
            tn[pos] = node
    for u in range(cnt, k):
        tn[u] = -1
        ts[u] = 0.0
    return cnt


@njit(nogil=True, cache=True)
def select_topk(row_pair_ptr, pair_parent, pair_pscore, pair_start, child_ptr, child_node, raw,
                code, power, combine, k, merge_copies, top_node, top_score):
    """Per row of a beam step: transform its children's raw scores, combine each with its parent's
    score, and keep the k best nodes (sorted, best first; -1 pads).

    row_pair_ptr: the row's pairs are row_pair_ptr[r]:row_pair_ptr[r+1]. Pair q's children are
    child_node[child_ptr[p]:child_ptr[p+1]] (p = pair_parent[q]) with raw scores at
    raw[pair_start[q]:]. merge_copies: a node met twice in a row (a label with copies in several
    clusters) keeps its best score once. top_node (n × k int64), top_score (n × k float32): out.
    """
    n = row_pair_ptr.shape[0] - 1
    for r in range(n):
        _select_row(row_pair_ptr[r], row_pair_ptr[r + 1], pair_parent, pair_pscore, pair_start, child_ptr,
                    child_node, raw, code, power, combine, k, merge_copies, top_node[r], top_score[r])


@njit(nogil=True, cache=True)
def beam_row_step(x_indices, x_data, bias_col, bias, parents, pscores,
                  recs, ent_off, entries, rec_off, n_child, b_shift, b_off, b_ptr,
                  child_ptr, child_node, code, power, combine, k, merge_copies):
    """One level of the beam search for one document, scoring and selection in one call: what
    `score_pairs` and `select_topk` do for a batch, without a batch's per-level arrays.

    x_indices (ascending), x_data (float32): the document's features; bias (float32) at feature
    bias_col is added after them when nonzero, as the batch path's appended column is. parents,
    pscores: the beam (nodes of the level above, their scores, best first). The level's layout
    (`build_chunks`, `build_buckets`) and tree (child_ptr, child_node: C's CSC arrays) as in the
    batch kernels. Returns the kept (nodes int64, scores float32), at most k, best first: the
    same float32 values, in the same order, as the batch path gives this row.
    """
    vals = entries.view(np.float32)
    n_beam = parents.shape[0]
    pair_start = np.empty(n_beam, np.int64)
    total = 0
    for q in range(n_beam):
        pair_start[q] = total
        total += n_child[parents[q]]
    raw = np.zeros(total, np.float32)
    nnz = x_indices.shape[0]
    m = nnz + (1 if bias != 0 else 0)
    feat = np.empty(m, np.int64)
    xval = np.empty(m, np.float32)
    feat[:nnz] = x_indices
    xval[:nnz] = x_data
    if m > nnz:
        feat[nnz] = bias_col
        xval[nnz] = bias
    # The lookups of all (pair, feature) run in phases, each a loop of independent reads
    # (bucket bounds, then records, then entries), so that the processor overlaps their cache
    # misses: a record is a random place in a layout of hundreds of MB, and one lookup after
    # another would wait for each miss in turn.
    n_look = n_beam * m
    pos = np.empty(n_look, np.int64)
    end = np.empty(n_look, np.int64)
    for q in range(n_beam):
        c = parents[q]
        lo = rec_off[c]
        bo = b_off[c]
        sh = b_shift[c]
        for j in range(m):
            b = bo + (feat[j] >> sh)
            pos[q * m + j] = lo + b_ptr[b]
            end[q * m + j] = lo + b_ptr[b + 1]
    for q in range(n_beam):
        for j in range(m):
            u = q * m + j
            a = pos[u]
            e = end[u]
            f = feat[j]
            while a < e and recs[2 * a] < f:
                a += 1
            pos[u] = a if a < e and recs[2 * a] == f else -1
    for q in range(n_beam):
        o = pair_start[q]
        base = ent_off[parents[q]]
        for j in range(m):
            a = pos[q * m + j]
            if a < 0:
                continue
            xv = xval[j]
            for e in range(2 * (base + recs[2 * a + 1]), 2 * (base + recs[2 * a + 3]), 2):
                raw[o + entries[e]] += xv * vals[e + 1]
    tn = np.empty(k, np.int64)
    ts = np.empty(k, np.float32)
    cnt = _select_row(0, n_beam, parents, pscores, pair_start, child_ptr, child_node, raw,
                      code, power, combine, k, merge_copies, tn, ts)
    return tn[:cnt], ts[:cnt]


def build_chunks(c_indptr, w_indptr, w_indices, w_data, n_features):
    """Regroup a level's weights by parent for `score_pairs` and `beam_row_step`.

    c_indptr: parent p's children are columns c_indptr[p]:c_indptr[p+1] of W (CSC: w_indptr,
    w_indices, w_data; children-contiguous, as a level's W is). Returns
    (recs, ent_off, entries, rec_off):

    * parent p's chunk has one record per feature where some child has a weight, ascending, then
      a sentinel: records rec_off[p] .. rec_off[p+1]-1 of recs (int32 pairs: recs[2a] the
      feature, n_features for the sentinel; recs[2a+1] where its entries start, counted from
      the chunk's first entry ent_off[p] (int64));
    * record a's entries are the (child, weight) pairs entries[2e], entries[2e + 1] (int32, the
      weight's float32 bits) for e in [ent_off[p] + recs[2a+1], ent_off[p] + recs[2a+3]): a
      feature's children side by side, in column order, the chunk's rows in feature order.

    A lookup reads one 8-byte record (feature and start together; the next record, usually in
    the same cache line, gives the end), then the entries. 8 bytes per row and 8 per entry.
    Beside the result it allocates three n_features scratch arrays only.

    The result's arrays come from numpy, not from numba: numpy asks the kernel for huge pages on
    big arrays (madvise), and a request's random reads into a layout of hundreds of MB then miss
    the TLB far less.

    Raises:
        ValueError: a chunk with 2**31 entries or more (its starts would not fit int32), or a
            parent with more than 2**24 children (a batch's scatter slot packs the count in 24 bits).
    """
    rec_off, ent_off = _chunk_rows(c_indptr, w_indptr, w_indices, n_features)
    recs = np.empty(2 * int(rec_off[-1]), np.int32)
    entries = np.empty(2 * int(w_indptr[len(w_indptr) - 1]), np.int32)
    _fill_chunks(c_indptr, w_indptr, w_indices, w_data, n_features, rec_off, ent_off, recs, entries)
    return recs, ent_off, entries, rec_off


@njit(nogil=True, cache=True)
def _chunk_rows(c_indptr, w_indptr, w_indices, n_features):
    """rec_off and ent_off of `build_chunks`."""
    n_parents = c_indptr.shape[0] - 1
    mark = np.full(n_features, -1, np.int64)
    rec_off = np.zeros(n_parents + 1, np.int64)
    ent_off = np.zeros(n_parents, np.int64)
    for p in range(n_parents):
        ent_off[p] = w_indptr[c_indptr[p]]
        if w_indptr[c_indptr[p + 1]] - w_indptr[c_indptr[p]] >= 2**31:
            raise ValueError("build_chunks: a parent's children have 2**31 weights or more")
        if c_indptr[p + 1] - c_indptr[p] > _COUNT_MASK:
            raise ValueError("build_chunks: a parent has more than 2**24 children")
        m = 0
        for c in range(c_indptr[p], c_indptr[p + 1]):
            for e in range(w_indptr[c], w_indptr[c + 1]):
                f = w_indices[e]
                if mark[f] != p:
                    mark[f] = p
                    m += 1
        rec_off[p + 1] = rec_off[p] + m + 1
    return rec_off, ent_off


@njit(nogil=True, cache=True)
def _fill_chunks(c_indptr, w_indptr, w_indices, w_data, n_features, rec_off, ent_off, recs, entries):
    """The records and entries of `build_chunks`, written into the arrays given."""
    n_parents = c_indptr.shape[0] - 1
    vals = entries.view(np.float32)
    slot = np.full(n_features, -1, np.int64)  # feature -> local row (first-seen order); -1: none yet
    feat = np.empty(n_features, np.int64)  # local row -> feature
    fill = np.zeros(n_features, np.int64)  # local row: entry count, then its next free entry
    for p in range(n_parents):
        lo = rec_off[p]
        m = 0
        for c in range(c_indptr[p], c_indptr[p + 1]):
            for e in range(w_indptr[c], w_indptr[c + 1]):
                f = w_indices[e]
                if slot[f] < 0:
                    slot[f] = m
                    feat[m] = f
                    fill[m] = 0
                    m += 1
                fill[slot[f]] += 1
        # records in feature order (the bucket index and a batch's scatter read them so), each
        # row's entries where the rows before it end
        perm = np.argsort(feat[:m])
        start = 0
        for r in range(m):
            j = perm[r]
            recs[2 * (lo + r)] = feat[j]
            recs[2 * (lo + r) + 1] = start
            count = fill[j]
            fill[j] = start
            start += count
        recs[2 * (lo + m)] = n_features
        recs[2 * (lo + m) + 1] = start
        base = ent_off[p]
        for c in range(c_indptr[p], c_indptr[p + 1]):
            for e in range(w_indptr[c], w_indptr[c + 1]):
                j = slot[w_indices[e]]
                g = base + fill[j]
                entries[2 * g] = c - c_indptr[p]
                vals[2 * g + 1] = w_data[e]
                fill[j] += 1
        for r in range(m):
            slot[feat[r]] = -1


@njit(nogil=True, cache=True)
def gather_rows(indptr, indices, data, rows, colmap, bias_col=-1, bias=0.0):
    """Rows `rows` of a CSR matrix with their columns renumbered 0.. in order of first use.

    colmap: int64 scratch of length n_columns (bias_col + 1 with a bias) filled with -1 (left
    so). bias_col >= 0 appends the entry (bias_col, bias) to every gathered row, last, as if the
    matrix had that constant column (`xlinear._with_bias`) without making that matrix. Returns
    (indptr, indices (int32), data, used): used[j] is the original column of local column j.
    O(nnz of the rows), whatever the width of the matrix.
    """
    m = rows.shape[0]
    extra = 1 if bias_col >= 0 else 0
    lptr = np.zeros(m + 1, np.int64)
    for r in range(m):
        i = rows[r]
        lptr[r + 1] = lptr[r] + indptr[i + 1] - indptr[i] + extra
    lind = np.empty(lptr[m], np.int32)
    ldat = np.empty(lptr[m], np.float32)
    used = np.empty(lptr[m], np.int64)
    n_cols = 0
    for r in range(m):
        i = rows[r]
        q = lptr[r]
        for p in range(indptr[i], indptr[i + 1]):
            f = indices[p]
            if colmap[f] < 0:
                colmap[f] = n_cols
                used[n_cols] = f
                n_cols += 1
            lind[q] = colmap[f]
            ldat[q] = data[p]
            q += 1
        if extra:
            if colmap[bias_col] < 0:
                colmap[bias_col] = n_cols
                used[n_cols] = bias_col
                n_cols += 1
            lind[q] = colmap[bias_col]
            ldat[q] = bias
    for c in range(n_cols):
        colmap[used[c]] = -1
    return lptr, lind, ldat, used[:n_cols].copy()


@njit(nogil=True, cache=True)
def balanced_2means(indptr, indices, data, members, colmap, i0, max_iter):
    """Balanced spherical 2-means of the rows `members` (m >= 2) of a CSR matrix.

    colmap: int64 scratch of length n_columns filled with -1 (left so): the members' columns are
    renumbered through it, so the work is O(nnz of the members), whatever the width. i0: the
    first seed (a position in members). See `_balanced_2means_local`; returns (m,) int64 sides.
    """
    lptr, lind, ldat, used = gather_rows(indptr, indices, data, members, colmap)
    n_cols = used.shape[0]
    return _balanced_2means_local(lptr, lind, ldat, None, n_cols, i0, max_iter)


@njit(nogil=True, cache=True)
def renumber_nodes(indptr, indices, order, bounds, colmap, used):
    """In place: the column ids of each node's rows renumbered 0.. in order of first use over the
    node's members (rows order[bounds[n]:bounds[n+1]], in that order): the numbering
    `gather_rows` gives a node's block, without making the block. The ids of a node's rows must
    be distinct columns across the node (true of a matrix's own ids, and of ids this renumbered
    per node at the depth above, since a node's members are all in one node above).

    colmap: int64 of length > every id, all -1 (left so); used: int64 scratch of that length.
    Returns (n_nodes,) int64: the columns each node uses.
    """
    n_nodes = bounds.shape[0] - 1
    n_cols = np.zeros(n_nodes, np.int64)
    for n in range(n_nodes):
        k = 0
        for r in range(bounds[n], bounds[n + 1]):
            i = order[r]
            for p in range(indptr[i], indptr[i + 1]):
                f = indices[p]
                if colmap[f] < 0:
                    colmap[f] = k
                    used[k] = f
                    k += 1
                indices[p] = colmap[f]
        for c in range(k):
            colmap[used[c]] = -1
        n_cols[n] = k
    return n_cols


@njit(nogil=True, cache=True)
def balanced_2means_rows(indptr, indices, data, members, n_cols, i0, max_iter):
    """`balanced_2means` of the rows `members` where they lie, their column ids already local
    to the node (`renumber_nodes`): the same sides, bit for bit, with no copy of the rows."""
    return _balanced_2means_local(indptr, indices, data, members, n_cols, i0, max_iter)


@njit(nogil=True, cache=True)
def _first_k_stable(v, k, side):
    """side[i] = 0 for the k smallest values of v, 1 for the rest, ties going to the lower index:
    the first k of a stable ascending sort, found in O(m) by a partition (a sort costs
    O(m log m) per 2-means round, and the top nodes hold all the labels)."""
    m = v.shape[0]
    if k <= 0:
        side[:] = 1
        return
    if k >= m:
        side[:] = 0
        return
    t = np.partition(v, k - 1)[k - 1]  # the k-th smallest value
    fill = k
    for i in range(m):
        if v[i] < t:
            fill -= 1
    for i in range(m):
        x = v[i]
        if x < t:
            side[i] = 0
        elif x == t and fill > 0:
            side[i] = 0
            fill -= 1
        else:
            side[i] = 1


@njit(inline="always")
def _row_of(rows, i):
    return i if rows is None else rows[i]


@njit(nogil=True, cache=True)
def _balanced_2means_local(indptr, indices, data, rows, n_cols, i0, max_iter):
    """Balanced spherical 2-means of m rows of a CSR matrix (m >= 2) whose column ids are
    0..n_cols-1: row i of the problem is rows[i] of the matrix (rows None: row i, a compact
    block of m rows).

    Seeds: row i0 and the row least similar to it. Each round ranks the rows by
    <z, c0> - <z, c1> and gives the first ceil(m/2) (stable order, lower index first on ties) to
    side 0; centroids are the normalized sums of each side. Stops when the sides repeat or after
    max_iter rounds. Returns (m,) int64 sides.
    """
    m = indptr.shape[0] - 1 if rows is None else rows.shape[0]
    n_left = (m + 1) // 2
    cd = np.zeros(n_cols, np.float64)  # c0 - c1: the ranking needs only the difference
    r0 = _row_of(rows, i0)
    for p in range(indptr[r0], indptr[r0 + 1]):
        cd[indices[p]] = data[p]
    sims = np.empty(m, np.float64)
    for i in range(m):
        r = _row_of(rows, i)
        s = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            s += data[p] * cd[indices[p]]
        sims[i] = s
    i1 = np.argmin(sims)
    if i1 == i0:
        i1 = (i0 + 1) % m
    r1 = _row_of(rows, i1)
    for p in range(indptr[r1], indptr[r1 + 1]):
        cd[indices[p]] -= data[p]
    total = np.zeros(n_cols, np.float64)
    for i in range(m):
        r = _row_of(rows, i)
        for p in range(indptr[r], indptr[r + 1]):
            total[indices[p]] += data[p]
    side = np.full(m, -1, np.int64)
    new_side = np.empty(m, np.int64)
    sum0 = np.zeros(n_cols, np.float64)
    for _ in range(max_iter):
        for i in range(m):
            r = _row_of(rows, i)
            s = 0.0
            for p in range(indptr[r], indptr[r + 1]):
                s += data[p] * cd[indices[p]]
            sims[i] = -s
        _first_k_stable(sims, n_left, new_side)
        same = True
        for i in range(m):
            if new_side[i] != side[i]:
                same = False
                break
        if same:
            break
        side[:] = new_side
        sum0[:] = 0.0
        for i in range(m):
            if side[i] == 0:
                r = _row_of(rows, i)
                for p in range(indptr[r], indptr[r + 1]):
                    sum0[indices[p]] += data[p]
        n0 = 0.0
        n1 = 0.0
        for f in range(n_cols):
            a = sum0[f]
            b = total[f] - a
            n0 += a * a
            n1 += b * b
        n0 = np.sqrt(n0) if n0 > 0 else 1.0
        n1 = np.sqrt(n1) if n1 > 0 else 1.0
        for f in range(n_cols):
            cd[f] = sum0[f] / n0 - (total[f] - sum0[f]) / n1
    return side


# -- TF-IDF counting: token ids in, CSR counts out ------------------------------------------------
@njit(nogil=True, cache=True)
def bigram_ids(tok, doc_ptr, n_tok):
    """Number the distinct bigrams of a tokenized corpus in O(n): positions are bucketed by their
    first token (a stable counting sort), then each bucket numbers its second tokens with a
    marker array. Ids follow (first token, second token): they depend on the token ids only,
    not on the order documents come in.

    tok: (n,) int32 or int64 token ids in [0, n_tok), -1 for none, n < 2**31; doc_ptr:
    (n_docs + 1,) int64. Returns bid (n,) int32 (the id of the bigram starting at each position,
    -1 where none), pair_a, pair_b (n_bigrams,) int64: the two token ids of each bigram.
    """
    n = tok.shape[0]
    start = np.zeros(n_tok + 1, np.int64)
    n_docs = doc_ptr.shape[0] - 1
    for d in range(n_docs):
        for p in range(doc_ptr[d], doc_ptr[d + 1] - 1):
            if tok[p] >= 0 and tok[p + 1] >= 0:
                start[tok[p] + 1] += 1
    for a in range(n_tok):
        start[a + 1] += start[a]
    order = np.empty(start[n_tok], np.int32)  # positions: < 2**31 (checked by the caller)
    fill = start[:n_tok].copy()
    for d in range(n_docs):
        for p in range(doc_ptr[d], doc_ptr[d + 1] - 1):
            a = tok[p]
            if a >= 0 and tok[p + 1] >= 0:
                order[fill[a]] = p
                fill[a] += 1
    bid = np.full(n, -1, np.int32)
    mark = np.full(n_tok, -1, np.int64)
    local = np.empty(n_tok, np.int64)
    pair_a = np.empty(start[n_tok], np.int64)
    pair_b = np.empty(start[n_tok], np.int64)
    nid = 0
    for a in range(n_tok):
        n0 = nid
        for q in range(start[a], start[a + 1]):
            b = tok[order[q] + 1]
            if mark[b] != a:
                mark[b] = a
                pair_a[nid] = a
                pair_b[nid] = b
                nid += 1
        if nid > n0 + 1:
            pair_b[n0:nid].sort()
        for i in range(n0, nid):
            local[pair_b[i]] = i
        for q in range(start[a], start[a + 1]):
            p = order[q]
            bid[p] = local[tok[p + 1]]
    return bid, pair_a[:nid].copy(), pair_b[:nid].copy()


@njit(nogil=True, cache=True)
def ngram_terms(tok, doc_ptr, bid, use_uni, use_bi, n_uni, T):
    """Term id of every uni/bigram occurrence, grouped by document: (T[:k], t_ptr). A unigram's
    term is its token id, a bigram's n_uni + its id in `bid`; tokens and bigrams with id -1 drop
    out. T: the output, room for (use_uni + use_bi) · len(tok) ids (int32 where the term count
    allows: the caller's choice, so a corpus-sized array is not allocated twice)."""
    n_docs = doc_ptr.shape[0] - 1
    t_ptr = np.zeros(n_docs + 1, np.int64)
    k = 0
    for d in range(n_docs):
        for p in range(doc_ptr[d], doc_ptr[d + 1]):
            if use_uni and tok[p] >= 0:
                T[k] = tok[p]
                k += 1
            if use_bi and bid[p] >= 0:
                T[k] = n_uni + bid[p]
                k += 1
        t_ptr[d + 1] = k
    return T[:k], t_ptr


@njit(nogil=True, cache=True)
def lookup_terms(tok, doc_ptr, n_tok, use_uni, use_bi, uni_col, bkeys, bcols, T):
    """Columns of a fitted vocabulary for every uni/bigram occurrence, grouped by document:
    (T[:k], t_ptr). uni_col: column of each token's unigram (-1: not in the vocabulary); bkeys
    (sorted) / bcols: a * n_tok + b of each vocabulary bigram and its column. T: the output,
    room for 2 · len(tok) columns (int32: the vocabulary is < 2**31)."""
    n_docs = doc_ptr.shape[0] - 1
    t_ptr = np.zeros(n_docs + 1, np.int64)
    nb = bkeys.shape[0]
    k = 0
    for d in range(n_docs):
        e = doc_ptr[d + 1]
        for p in range(doc_ptr[d], e):
            a = tok[p]
            if a < 0:
                continue
            if use_uni and uni_col[a] >= 0:
                T[k] = uni_col[a]
                k += 1
            if use_bi and nb > 0 and p + 1 < e and tok[p + 1] >= 0:
                key = a * n_tok + tok[p + 1]
                i = np.searchsorted(bkeys, key)
                if i < nb and bkeys[i] == key:
                    T[k] = bcols[i]
                    k += 1
        t_ptr[d + 1] = k
    return T[:k], t_ptr


@njit(nogil=True, cache=True)
def count_terms(T, t_ptr):
    """Per-document term counts as CSR (indptr, indices of T's dtype sorted, counts float32) from the
    term ids (>= 0) of each document's occurrences, T[t_ptr[d]:t_ptr[d+1]] (sorted in place)."""
    n_docs = t_ptr.shape[0] - 1
    indptr = np.zeros(n_docs + 1, np.int64)
    for d in range(n_docs):
        seg = T[t_ptr[d]:t_ptr[d + 1]]
        seg.sort()
        u = 0
        prev = -1
        for i in range(seg.shape[0]):
            if seg[i] != prev:
                u += 1
                prev = seg[i]
        indptr[d + 1] = indptr[d] + u
    indices = np.empty(indptr[n_docs], T.dtype)  # T's: int64 where the terms pass 2**31
    counts = np.zeros(indptr[n_docs], np.float32)
    for d in range(n_docs):
        q = indptr[d] - 1
        prev = -1
        for i in range(t_ptr[d], t_ptr[d + 1]):
            t = T[i]
            if t != prev:
                q += 1
                indices[q] = t
                prev = t
            counts[q] += 1.0
    return indptr, indices, counts


@njit(nogil=True, cache=True)
def tfidf_weight(indptr, indices, data, idf, sublinear, l2):
    """In place: data ← (1 + ln tf if sublinear else tf) · idf[column], rows scaled to unit l2
    norm when l2 (empty and all-zero rows stay zero)."""
    for d in range(indptr.shape[0] - 1):
        s = 0.0
        for p in range(indptr[d], indptr[d + 1]):
            v = data[p]
            if sublinear:
                v = 1.0 + np.log(v)
            v *= idf[indices[p]]
            data[p] = v
            s += v * v
        if l2 and s > 0.0:
            inv = 1.0 / np.sqrt(s)
            for p in range(indptr[d], indptr[d + 1]):
                data[p] *= inv


@njit(nogil=True, cache=True)
def remap_columns(indptr, indices, data, newcol):
    """CSR with column j renamed newcol[j] (-1: dropped); each row's indices sorted again."""
    n = indptr.shape[0] - 1
    out_ptr = np.zeros(n + 1, np.int64)
    for d in range(n):
        u = 0
        for p in range(indptr[d], indptr[d + 1]):
            if newcol[indices[p]] >= 0:
                u += 1
        out_ptr[d + 1] = out_ptr[d] + u
    out_ind = np.empty(out_ptr[n], indices.dtype)  # the input's: new columns are fewer
    out_dat = np.empty(out_ptr[n], data.dtype)
    for d in range(n):
        q0 = out_ptr[d]
        q = q0
        ordered = True
        for p in range(indptr[d], indptr[d + 1]):
            c = newcol[indices[p]]
            if c >= 0:
                if q > q0 and c < out_ind[q - 1]:
                    ordered = False
                out_ind[q] = c
                out_dat[q] = data[p]
                q += 1
        if not ordered:  # a monotone newcol keeps sorted rows sorted: no sort then
            o = np.argsort(out_ind[q0:q])
            out_ind[q0:q] = out_ind[q0:q][o]
            out_dat[q0:q] = out_dat[q0:q][o]
    return out_ptr, out_ind, out_dat


def slp_vectorized(dispatcher):
    """`dispatcher` (an njit function) called so that each of its specializations is compiled with
    LLVM's SLP (straight-line) vectorizer on.

    numba leaves the SLP vectorizer off by default (numba#8852, after miscompilations elsewhere),
    so the lane kernel's eight independent per-lane sums and updates compile to scalar
    multiply-adds; with it, to one 512-bit (or two 256-bit) operations each. Each lane's arithmetic
    is unchanged (no reassociation, no fused multiply-add: fastmath stays off), so the results are
    the same bit for bit (`tests/test_xlinear.py` checks them against the kernel run as plain
    Python); eurlex57k leaf blocks solve ~2× faster. The flag is numba's global setting, switched on
    only while this kernel compiles under numba's compiler lock, so other code is compiled as
    before. Call it from Python only (compiled callers would reach the plain dispatcher).
    """
    @functools.wraps(dispatcher.py_func)
    def call(*args):
        sig = tuple(dispatcher.typeof_pyval(a) for a in args)
        if sig not in dispatcher.overloads:
            with global_compiler_lock:
                if sig not in dispatcher.overloads:
                    old = numba.config.SLP_VECTORIZE
                    numba.config.SLP_VECTORIZE = 1
                    try:
                        dispatcher.compile(sig)
                    finally:
                        numba.config.SLP_VECTORIZE = old
        return dispatcher(*args)

    call.dispatcher = dispatcher
    return call


#: lanes of `dcd_squared_hinge_lanes`: columns solved together (8 float64 weights = one cache line)
LANES = 8


@njit(nogil=True, cache=True)
def _lane_rows(n):
    """n × LANES float64 zeros starting on a 64-byte boundary, so each row is exactly one cache line.

    numba aligns arrays to 32 bytes only: half of the allocations would put every row of w across
    two lines, each visit of a feature then touching two (measured up to 1.4× slower on eurlex57k
    blocks, depending on the block's size alone)."""
    buf = np.zeros(n * LANES + LANES, np.float64)
    off = ((64 - buf.ctypes.data % 64) % 64) // 8
    return buf[off:off + n * LANES].reshape((n, LANES))


@njit(nogil=True, cache=True)
def _dcd_squared_hinge_lanes(indptr, indices, data, n_features, Ypos, cols, Cp, Cn, eps, max_iter, seed,
                            threshold, visits, width):
    """`dcd_squared_hinge` for `width` (<= LANES) columns at a time, sharing each visit of an instance.

    Same arguments and result. Each group of `width` consecutive columns of `cols` keeps its weights side by side
    (w[f, lane]), so one pass over an instance's row computes all its lanes' margins and one more
    applies their updates: the row and the weights are read once for LANES problems. Every lane is
    liblinear's solver (its own alphas, shrinking and stopping rule); the lanes share the visit order,
    a random permutation of the instances still active in some lane, so a column's solution depends
    on which columns share its group (deterministic given `cols` and `seed`).
    """
    n = indptr.shape[0] - 1
    K = cols.shape[0]
    out_f, out_k, out_v = _triplet_buffers(n_features)
    nnz = 0
    sqnorm = _row_sqnorms(indptr, data)
    diag_p = 0.5 / Cp
    diag_n = 0.5 / Cn
    w = _lane_rows(n_features)
    alpha = _lane_rows(n)
    yv = _lane_rows(n)  # +1 / -1; 0 in a lane that has shrunk the instance
    n_act = np.zeros(LANES, np.int64)  # instances active per lane
    live = np.zeros(LANES, np.bool_)
    it = np.zeros(LANES, np.int64)
    pg_max_old = np.zeros(LANES, np.float64)
    pg_max = np.zeros(LANES, np.float64)
    pg_min = np.zeros(LANES, np.float64)
    wx = np.zeros(LANES, np.float64)
    step = np.zeros(LANES, np.float64)
    index = np.empty(n, np.int64)
    state = np.empty(1, np.uint64)
    for g0 in range(0, K, width):
        m = min(width, K - g0)
        w[:, :] = 0.0
        for i in range(n):
            index[i] = i
            for l in range(LANES):
                alpha[i, l] = 0.0
                if l < m:
                    yv[i, l] = 1.0 if Ypos[i, cols[g0 + l]] != 0 else -1.0
                else:
                    yv[i, l] = 0.0
        for l in range(LANES):
            live[l] = l < m
            n_act[l] = n if l < m else 0
            it[l] = 0
            pg_max_old[l] = np.inf
        state[0] = np.uint64(seed * 2654435761 + cols[g0] * 40503 + 1)
        active = n  # instances active in some lane: index[:active]
        n_live = m
        while n_live > 0:
            for l in range(LANES):
                pg_max[l] = -np.inf
                pg_min[l] = np.inf
                if live[l]:
                    visits[g0 + l] += n_act[l]
            _shuffle(index, active, state)
            s = 0
            while s < active:
                i = index[s]
                lo = indptr[i]
                hi = indptr[i + 1]
                # eight accumulators in registers (LANES is 8)
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
                for p in range(lo, hi):
                    f = indices[p]
                    x = data[p]
                    a0 += w[f, 0] * x
                    a1 += w[f, 1] * x
                    a2 += w[f, 2] * x
                    a3 += w[f, 3] * x
                    a4 += w[f, 4] * x
                    a5 += w[f, 5] * x
                    a6 += w[f, 6] * x
                    a7 += w[f, 7] * x
                wx[0] = a0; wx[1] = a1; wx[2] = a2; wx[3] = a3
                wx[4] = a4; wx[5] = a5; wx[6] = a6; wx[7] = a7
                any_step = False
                any_act = False
                for l in range(LANES):
                    step[l] = 0.0
                    yi = yv[i, l]
                    if yi == 0.0:
                        continue
                    a = alpha[i, l]
                    dg = diag_p if yi > 0.0 else diag_n
                    G = yi * wx[l] - 1.0 + a * dg
                    PG = 0.0
                    if a == 0.0:
                        if G > pg_max_old[l]:
                            # shrink: inactive in this lane; the sign is kept in alpha's place
                            yv[i, l] = 0.0
                            alpha[i, l] = -1.0 if yi < 0.0 else -2.0
                            n_act[l] -= 1
                            continue
                        elif G < 0.0:
                            PG = G
                    else:
                        PG = G
                    any_act = True
                    if PG > pg_max[l]:
                        pg_max[l] = PG
                    if PG < pg_min[l]:
                        pg_min[l] = PG
                    if abs(PG) > 1e-12:
                        new = a - G / (sqnorm[i] + dg)
                        if new < 0.0:
                            new = 0.0
                        alpha[i, l] = new
                        step[l] = (new - a) * yi
                        any_step = True
                if any_step:
                    s0, s1, s2, s3 = step[0], step[1], step[2], step[3]
                    s4, s5, s6, s7 = step[4], step[5], step[6], step[7]
                    for p in range(lo, hi):
                        f = indices[p]
                        x = data[p]
                        w[f, 0] += s0 * x
                        w[f, 1] += s1 * x
                        w[f, 2] += s2 * x
                        w[f, 3] += s3 * x
                        w[f, 4] += s4 * x
                        w[f, 5] += s5 * x
                        w[f, 6] += s6 * x
                        w[f, 7] += s7 * x
                if not any_act:
                    active -= 1
                    tmp = index[s]
                    index[s] = index[active]
                    index[active] = tmp
                    continue
                s += 1
            for l in range(LANES):
                if not live[l]:
                    continue
                it[l] += 1
                done = False
                if pg_max[l] - pg_min[l] <= eps:
                    if n_act[l] == n:
                        done = True
                    else:
                        # converged on the shrunk set: check once more on all instances
                        for i in range(n):
                            if yv[i, l] == 0.0:
                                yv[i, l] = 1.0 if alpha[i, l] == -2.0 else -1.0
                                alpha[i, l] = 0.0
                        n_act[l] = n
                        active = n
                        pg_max_old[l] = np.inf
                else:
                    pg_max_old[l] = pg_max[l] if pg_max[l] > 0.0 else np.inf
                if done or it[l] >= max_iter:
                    live[l] = False
                    n_live -= 1
                    # a finished lane takes no part in the visits any more
                    for i in range(n):
                        yv[i, l] = 0.0
        for l in range(m):
            out_f, out_k, out_v, nnz = _emit_weights(w[:, l], g0 + l, threshold, out_f, out_k, out_v, nnz)
    return out_f[:nnz].copy(), out_k[:nnz].copy(), out_v[:nnz].copy()


#: the lane kernel as callers use it: compiled with the SLP vectorizer (`slp_vectorized`)
dcd_squared_hinge_lanes = slp_vectorized(_dcd_squared_hinge_lanes)
