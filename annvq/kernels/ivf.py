"""Inverted-file kernels: choose the lists to probe (flat top-k or a tree descent), scan the probed
lists of each query into its top-k reservoir, and compute exact distances for re-ranking.

A segment's rows are grouped by list in *extents*: runs of consecutive rows of one list. List ``l``
starts at extent ``head[l]`` (-1: empty) and extent ``e`` covers rows ``start[e]:start[e] + length[e]``,
followed by extent ``next[e]`` (-1: the last). A sealed segment has one extent per list; a growing
segment chains fixed-size chunks. The distance of row ``i`` of list ``l`` to query ``q`` probed at
position ``p`` is

    consts[q, p] + bias[i] + sum_m tables[q, m, codes[i, m]]

(or ``sum_m weights[q, m] * codes[i, m]`` for codecs whose tables are affine in the code values),
with one table per query whatever the list: everything that depends on the list is folded into the
per-probe constant and the per-row bias (+inf for a deleted row, which is therefore never admitted).
Results are labels ``base + row``; callers map them to ids.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .adc import admit, insert_sorted, scan_codes, topk_finish, topk_init
from .simd import prefetch

_PREFETCH_BYTES = 1024  # head of the next extent loaded ahead


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _linear_dists(w, codes, bias, const, out):
    """``out[i] = const + bias[i] + sum_j w[j] * codes[i, j]``: a dot product that vectorises
    (reassociation allowed) where a table scan would make one lookup per dimension."""
    has_bias = bias.shape[0] > 0
    for i in range(codes.shape[0]):
        s = np.float32(0.0)
        for j in range(codes.shape[1]):
            s += w[j] * np.float32(codes[i, j])
        out[i] = s + const + bias[i] if has_bias else s + const


@njit(cache=True, nogil=True, parallel=True)
def ivf_scan(tables, weights, probes, consts, codes, bias, head, start, length, nxt, base, rd, ri, cnt, thresh, k):
    """Offer the rows of every probed list to each query's reservoir (see :func:`~annvq.kernels.adc.topk_init`).

    Parallel over queries; the reservoirs carry over between calls, so the segments of an index fill
    one top-k per query. The table sum of a code comes from ``tables`` (nq, M, K), or, when ``weights``
    (nq, M) is not empty, from the dot product of the code values with ``weights[q]`` (scalar
    quantization). ``probes`` (nq, nprobe) list numbers (-1 = skip), ``consts`` (nq, nprobe), ``bias``
    (n,) or empty; ``head``/``start``/``length``/``nxt`` describe the extents (module docstring).
    """
    nq, nprobe = probes.shape
    linear = weights.shape[0] > 0
    has_bias = bias.shape[0] > 0
    longest = 0
    if linear:
        for e in range(length.shape[0]):
            longest = max(longest, length[e])
    for q in prange(nq):
        dq, iq = rd[q], ri[q]
        c_, t_ = cnt[q], thresh[q]
        dist = np.empty(longest, dtype=np.float32)
        for p in range(nprobe):
            l = probes[q, p]
            if l < 0:
                continue
            e = head[l]
            while e >= 0:
                s0 = start[e]
                s1 = s0 + length[e]
                _prefetch_extent(codes, bias, start, length, _following(e, p, q, probes, head, nxt))
                b = bias[s0:s1] if has_bias else bias
                if linear:
                    _linear_dists(weights[q], codes[s0:s1], b, consts[q, p], dist)
                    c_, t_ = admit(dist, s1 - s0, base + s0, dq, iq, c_, t_, k)
                else:
                    c_, t_ = scan_codes(tables[q], codes[s0:s1], b, consts[q, p], base + s0, dq, iq, c_, t_, k)
                e = nxt[e]
        cnt[q], thresh[q] = c_, t_


@njit(cache=True, nogil=True, inline="always")
def _following(e, p, q, probes, head, nxt):
    """The extent scanned after extent ``e`` of probe ``p`` of query ``q`` (-1: none)."""
    if nxt[e] >= 0:
        return nxt[e]
    for r in range(p + 1, probes.shape[1]):
        if probes[q, r] >= 0 and head[probes[q, r]] >= 0:
            return head[probes[q, r]]
    return -1


@njit(cache=True, nogil=True, inline="always")
def _prefetch_extent(codes, bias, start, length, e):
    """Start loading the head of extent ``e`` (its first ``_PREFETCH_BYTES`` of codes, and their biases)
    while the current one is scanned: each extent is a jump to a new place in memory, which the
    hardware prefetcher only follows after a few misses. Short extents, as segments make, pay that
    start-up cost often."""
    if e < 0:
        return
    M = codes.shape[1]
    n = min(length[e], max(1, _PREFETCH_BYTES // M))
    s0 = start[e]
    for t in range(s0 * M, (s0 + n) * M, 64):
        prefetch(codes, t)
    if bias.shape[0] > 0:
        for t in range(s0, s0 + n, 16):
            prefetch(bias, t)


@njit(cache=True, inline="always")
def _node_score(xq, q, cents, node, use_ip):
    d = xq.shape[1]
    s = np.float32(0.0)
    if use_ip:
        for j in range(d):
            s -= xq[q, j] * cents[node, j]
    else:
        for j in range(d):
            r = xq[q, j] - cents[node, j]
            s += r * r
    return s


@njit(cache=True, nogil=True, parallel=True)
def tree_search(xq, cents, first, nchild, leaf, beam, nprobe, pool, use_ip):
    """Beam descent of a centroid tree: the ``nprobe`` best leaves per query, ``(D, L)`` ascending.

    Node 0 is the root; node ``v``'s children are ``first[v] .. first[v] + nchild[v]``; ``leaf[v]``
    is the leaf (list) number or -1 for an internal node. At every level the ``beam`` best internal
    nodes are expanded; every leaf met is kept as a candidate (``pool`` bounds their number). Scores
    are squared L2 distances, or negated inner products when ``use_ip``.
    """
    nq = xq.shape[0]
    D = np.full((nq, nprobe), np.inf, dtype=np.float32)
    L = np.full((nq, nprobe), -1, dtype=np.int64)
    maxchild = 1
    for v in range(nchild.shape[0]):
        maxchild = max(maxchild, nchild[v])
    for q in prange(nq):
        lscore = np.empty(pool, dtype=np.float32)
        lid = np.empty(pool, dtype=np.int64)
        nleaf = 0
        cur = np.zeros(1, dtype=np.int64)
        while cur.shape[0] > 0:
            cand = np.empty(cur.shape[0] * maxchild, dtype=np.int64)
            cscore = np.empty(cur.shape[0] * maxchild, dtype=np.float32)
            ncand = 0
            for a in range(cur.shape[0]):
                v = cur[a]
                for c in range(first[v], first[v] + nchild[v]):
                    s = _node_score(xq, q, cents, c, use_ip)
                    if leaf[c] >= 0:
                        lscore[nleaf] = s
                        lid[nleaf] = leaf[c]
                        nleaf += 1
                    else:
                        cand[ncand] = c
                        cscore[ncand] = s
                        ncand += 1
            order = np.argsort(cscore[:ncand])
            cur = cand[:ncand][order[: min(beam, ncand)]]
        order = np.argsort(lscore[:nleaf])
        for j in range(min(nprobe, nleaf)):
            D[q, j] = lscore[order[j]]
            L[q, j] = lid[order[j]]
    return D, L


@njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})
def exact_distances(xq, vectors, where, use_ip):
    """Exact distances of each query to its candidates, parallel over queries.

    ``where[q, j]`` >= 0 names row ``vectors[where]``; -1 is an empty slot (distance +inf). Squared
    L2, or the negated inner product when ``use_ip``. Allowing reassociation lets the sums over
    dimensions vectorise. The candidates are scattered rows of a large array, so a query's rows are
    prefetched while the one before it is computed.
    """
    nq, kk = where.shape
    d = xq.shape[1]
    out = np.empty((nq, kk), dtype=np.float32)
    for q in prange(nq):
        if q + 1 < nq:
            _prefetch_rows(vectors, where[q + 1])
        for j in range(kk):
            w = where[q, j]
            if w < 0:
                out[q, j] = np.inf
                continue
            s = np.float32(0.0)
            if use_ip:
                for t in range(d):
                    s -= xq[q, t] * vectors[w, t]
            else:
                for t in range(d):
                    r = xq[q, t] - vectors[w, t]
                    s += r * r
            out[q, j] = s
    return out


@njit(cache=True, nogil=True, parallel=True)
def best_k_stable(dist, labels, k):
    """The ``k`` smallest of each row of ``dist`` (nq, kk), ascending, ties in row order (the first
    ``k`` of a stable argsort), with their ``labels``; +inf entries and short rows give -1 labels."""
    nq, kk = dist.shape
    D = np.full((nq, k), np.inf, dtype=np.float32)
    L = np.full((nq, k), -1, dtype=np.int64)
    for q in prange(nq):
        n = 0
        for j in range(kk):
            d = dist[q, j]
            if n == k and not d < D[q, k - 1]:
                continue
            i = n if n < k else k - 1
            while i > 0 and D[q, i - 1] > d:
                D[q, i] = D[q, i - 1]
                L[q, i] = L[q, i - 1]
                i -= 1
            D[q, i] = d
            L[q, i] = labels[q, j] if d < np.inf else -1
            n = min(n + 1, k)
    return D, L


@njit(cache=True, nogil=True)
def best_k_by_id(dist, ids, k, descending):
    """The ``k`` best of each row of ``dist`` (nq, n) with their ``ids``: smallest first (largest when
    ``descending``), equal distances by smaller id; entries with id -1 are left out. Returns ``(D, I,
    C)`` (nq, k) with ``C`` the column each came from; short rows are padded with +inf (-inf when
    ``descending``), id -1 and column -1. Serial: it merges a few candidates per query, where a
    thread pool's start-up would cost more than the work."""
    nq, n = dist.shape
    D = np.full((nq, k), -np.inf if descending else np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    C = np.full((nq, k), -1, dtype=np.int64)
    sign = np.float32(-1.0) if descending else np.float32(1.0)
    for q in range(nq):
        m = 0
        for j in range(n):
            w = ids[q, j]
            if w < 0:
                continue
            key = sign * dist[q, j]
            if m == k:
                last = sign * D[q, k - 1]
                if not (key < last or (key == last and w < I[q, k - 1])):
                    continue
            i = m if m < k else k - 1
            while i > 0:
                prev = sign * D[q, i - 1]
                if not (prev > key or (prev == key and I[q, i - 1] > w)):
                    break
                D[q, i], I[q, i], C[q, i] = D[q, i - 1], I[q, i - 1], C[q, i - 1]
                i -= 1
            D[q, i], I[q, i], C[q, i] = dist[q, j], w, j
            m = min(m + 1, k)
    return D, I, C


@njit(cache=True, nogil=True, inline="always")
def _prefetch_rows(vectors, rows):
    """Prefetch every cache line of ``vectors[rows]`` (-1 rows skipped)."""
    d = vectors.shape[1]
    step = max(1, 64 // vectors.itemsize)
    for w in rows:
        if w >= 0:
            for t in range(0, d, step):
                prefetch(vectors, w * d + t)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _sq_norm(v):
    """``v . v`` with reassociation allowed, so the sum vectorises."""
    s = np.float32(0.0)
    for j in range(v.shape[0]):
        s += v[j] * v[j]
    return s


_INSERT_NPROBE = 4  # coarse_topk: up to this many lists, a sorted insertion beats the reservoir


@njit(cache=True, nogil=True, inline="always")
def _coarse_score(qn, cn, dot, use_ip):
    """Squared L2 distance ``qn + cn - 2 dot`` clipped at 0, or ``-dot`` under inner product."""
    return -dot if use_ip else max(qn + cn - np.float32(2.0) * dot, np.float32(0.0))


@njit(cache=True, nogil=True, parallel=True)
def coarse_topk(xq, dots, c_norms, nprobe, use_ip):
    """The ``nprobe`` best centroids per query from ``dots = xq @ centroids.T``, ``(D, L)`` ascending.

    Scores are squared L2 distances ``||q||^2 + ||c||^2 - 2 q.c`` (clipped at 0), or ``-q.c`` when
    ``use_ip``. Up to ``_INSERT_NPROBE`` lists, each score below the current worst is inserted into the
    sorted result directly (ties keep the lower list number); beyond, queries go in groups that share
    one score buffer offered to a reservoir.
    """
    nq, nlist = dots.shape
    D = np.empty((nq, nprobe), dtype=np.float32)
    L = np.empty((nq, nprobe), dtype=np.int64)
    if nprobe <= _INSERT_NPROBE:
        for q in prange(nq):
            d, lab = D[q], L[q]
            d[:] = np.inf
            lab[:] = -1
            qn = np.float32(0.0) if use_ip else _sq_norm(xq[q])
            worst = np.float32(np.inf)
            for c in range(nlist):
                s = _coarse_score(qn, c_norms[c], dots[q, c], use_ip)
                if s < worst:
                    insert_sorted(d, lab, nprobe - 1, s, c)
                    worst = d[nprobe - 1]
        return D, L
    rd, ri, cnt, thresh = topk_init(nq, nprobe)
    group = 16
    for g in prange((nq + group - 1) // group):
        scores = np.empty(nlist, dtype=np.float32)
        for q in range(g * group, min(nq, (g + 1) * group)):
            qn = np.float32(0.0) if use_ip else _sq_norm(xq[q])
            for c in range(nlist):
                scores[c] = _coarse_score(qn, c_norms[c], dots[q, c], use_ip)
            c_, t_ = admit(scores, nlist, 0, rd[q], ri[q], cnt[q], thresh[q], nprobe)
            topk_finish(rd[q], ri[q], c_, nprobe, D[q], L[q])
    return D, L
