"""Inverted-file kernels: choose the lists to probe (flat top-k or a tree descent), scan the probed
lists of each query into one top-k heap, and compute exact distances for re-ranking.

Codes are stored sorted by list; list ``l`` occupies rows ``offsets[l]:offsets[l + 1]``. The distance of
row ``i`` in list ``l`` to query ``q`` probed at position ``p`` is

    consts[q, p] + bias[i] + sum_m table[m, codes[i, m]]

where ``table`` is either one per query (``tables[q]``, optionally plus a per-list ``term[l]``) or one
per (query, probe) (``tables[q * nprobe + p]``). Heaps hold row positions; callers map them to ids.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .adc import _sift_down, heap_init, heap_sorted

_SHORT_LIST = 64  # below this many codes, two lookups per code beat building the list's table


@njit(cache=True)
def _scan_one(t, codes, bias, has_bias, const, base, hd, hi):
    """One list's codes (a slice) against a table (M, K); pushes row ``base + i``."""
    M = codes.shape[1]
    worst = hd[0]
    for i in range(codes.shape[0]):
        s = const + bias[i] if has_bias else const
        for m in range(M):
            s += t[m, codes[i, m]]
        if s < worst:
            _sift_down(hd, hi, s, base + i)
            worst = hd[0]


@njit(cache=True)
def _scan_two(t, u, codes, bias, has_bias, const, base, hd, hi):
    """Like ``_scan_one`` against the sum of two tables, without building it (for short lists)."""
    M = codes.shape[1]
    worst = hd[0]
    for i in range(codes.shape[0]):
        s = const + bias[i] if has_bias else const
        for m in range(M):
            c = codes[i, m]
            s += t[m, c] + u[m, c]
        if s < worst:
            _sift_down(hd, hi, s, base + i)
            worst = hd[0]


@njit(cache=True, parallel=True)
def ivf_scan(tables, per_probe, term, probes, consts, codes, offsets, bias, k):
    """Top-k rows per query over its probed lists, parallel over queries; returns ``(D, R)`` ascending.

    ``tables``: (nq, M, K), or (nq * nprobe, M, K) when ``per_probe``. ``term``: (nlist, M, K) added
    to the query's table for each list, or an empty (0, M, K) array. ``probes`` (nq, nprobe) list
    numbers (-1 = skip), ``consts`` (nq, nprobe), ``bias`` (n,) or empty. ``R`` holds row positions
    (-1 pads when fewer than k rows were scanned).
    """
    nq, nprobe = probes.shape
    M = codes.shape[1]
    K = tables.shape[2]
    hd, hi = heap_init(nq, k)
    has_term = term.shape[0] > 0
    has_bias = bias.shape[0] > 0
    for q in prange(nq):
        buf = np.empty((M, K), dtype=np.float32)
        for p in range(nprobe):
            l = probes[q, p]
            if l < 0:
                continue
            s0 = offsets[l]
            s1 = offsets[l + 1]
            if s1 == s0:
                continue
            t = tables[q * nprobe + p] if per_probe else tables[q]
            c = consts[q, p]
            b = bias[s0:s1] if has_bias else bias
            if not has_term:
                _scan_one(t, codes[s0:s1], b, has_bias, c, s0, hd[q], hi[q])
            elif s1 - s0 < _SHORT_LIST:
                _scan_two(t, term[l], codes[s0:s1], b, has_bias, c, s0, hd[q], hi[q])
            else:
                tl = term[l]
                for m in range(M):
                    for j in range(K):
                        buf[m, j] = t[m, j] + tl[m, j]
                _scan_one(buf, codes[s0:s1], b, has_bias, c, s0, hd[q], hi[q])
    return heap_sorted(hd, hi)


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


@njit(cache=True, parallel=True)
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


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def exact_distances(xq, mem, disk, where, use_ip):
    """Exact distances of each query to its candidates, parallel over queries.

    ``where[q, j]`` >= 0 names row ``mem[where]``, <= -2 names row ``disk[-2 - where]``, and -1 an
    empty slot (distance +inf). Squared L2, or the negated inner product when ``use_ip``. Allowing
    reassociation lets the sums over dimensions vectorise.
    """
    nq, kk = where.shape
    d = xq.shape[1]
    out = np.empty((nq, kk), dtype=np.float32)
    for q in prange(nq):
        for j in range(kk):
            w = where[q, j]
            if w == -1:
                out[q, j] = np.inf
                continue
            v = mem[w] if w >= 0 else disk[-2 - w]
            s = np.float32(0.0)
            if use_ip:
                for t in range(d):
                    s -= xq[q, t] * v[t]
            else:
                for t in range(d):
                    r = xq[q, t] - v[t]
                    s += r * r
            out[q, j] = s
    return out


@njit(cache=True, parallel=True)
def coarse_topk(xq, dots, c_norms, nprobe, use_ip):
    """The ``nprobe`` best centroids per query from ``dots = xq @ centroids.T``, ``(D, L)`` ascending.

    Scores are squared L2 distances ``||q||^2 + ||c||^2 - 2 q.c`` (clipped at 0), or ``-q.c`` when
    ``use_ip``.
    """
    nq, nlist = dots.shape
    hd, hi = heap_init(nq, nprobe)
    for q in prange(nq):
        qn = np.float32(0.0)
        if not use_ip:
            for j in range(xq.shape[1]):
                qn += xq[q, j] * xq[q, j]
        worst = hd[q, 0]
        for c in range(nlist):
            s = -dots[q, c] if use_ip else max(qn + c_norms[c] - 2.0 * dots[q, c], np.float32(0.0))
            if s < worst:
                _sift_down(hd[q], hi[q], s, c)
                worst = hd[q, 0]
    return heap_sorted(hd, hi)
