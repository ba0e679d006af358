"""Asymmetric distance computation: lookup tables, and code scans that keep the top-k in a reservoir.

A code is a row of ``M`` sub-codes (uint8 for nbits <= 8, uint16 for nbits <= 16). Its distance to a
query is ``bias[i] + sum_m T[m, code[m]]``; ``bias`` carries per-vector terms (e.g. ||x||^2 for additive
codecs) and is empty when unused. Every scan minimises; callers negate for similarities.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .simd import ctz, flt_mask, loadf16


def l2_tables(xq_sub: np.ndarray, codebooks: np.ndarray, cb_norms: np.ndarray | None = None) -> np.ndarray:
    """Squared L2 tables ``T[q, m, j] = ||xq_sub[q, m] - codebooks[m, j]||^2``.

    ``xq_sub`` is (nq, M, dsub) and ``codebooks`` (M, K, dsub); one batched BLAS product writes
    straight into the (nq, M, K) result, then the norms are added in place. Pass the codewords'
    squared norms ``cb_norms`` (M, K) when searching repeatedly: it halves single-query cost.
    """
    t = _neg_dots(xq_sub, codebooks)
    t *= 2.0
    xq = np.asarray(xq_sub, dtype=np.float32)
    if cb_norms is None:
        cb = np.asarray(codebooks, dtype=np.float32)
        cb_norms = np.einsum("mkd,mkd->mk", cb, cb)
    t += np.einsum("qmd,qmd->qm", xq, xq)[:, :, None]
    t += cb_norms[None, :, :]
    np.maximum(t, 0.0, out=t)
    return t


def ip_tables(xq_sub: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Negated inner-product tables ``T[q, m, j] = -<xq_sub[q, m], codebooks[m, j]>`` (smaller is better)."""
    return _neg_dots(xq_sub, codebooks)


def _neg_dots(xq_sub: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """``-<xq_sub[q, m], codebooks[m, j]>`` as a C-contiguous (nq, M, K) float32 array."""
    q = np.asarray(xq_sub, dtype=np.float32).transpose(1, 0, 2)  # (M, nq, dsub) view
    cb = np.asarray(codebooks, dtype=np.float32)
    out = np.empty((q.shape[1], cb.shape[0], cb.shape[1]), dtype=np.float32)
    np.matmul(q, cb.transpose(0, 2, 1), out=out.transpose(1, 0, 2))
    np.negative(out, out=out)
    return out


@njit(cache=True, inline="always")
def _partition(d, lab, lo, hi, pivot, or_equal):
    """Move the entries of ``d[lo:hi]`` below ``pivot`` (or equal to it, with ``or_equal``) to the front,
    labels alongside; returns where the rest starts. Every step stores unconditionally and advances
    by the comparison's 0/1, so the loop has no data-dependent branch to mispredict."""
    j = lo
    for i in range(lo, hi):
        v = d[i]
        w = lab[i]
        d[i] = d[j]
        lab[i] = lab[j]
        d[j] = v
        lab[j] = w
        j += (v <= pivot) if or_equal else (v < pivot)
    return j


@njit(cache=True, nogil=True)
def select_range(d, lab, n, kmin, kmax):
    """Reorder ``d[:n]`` (and ``lab`` alongside) so that ``d[:m]`` holds the m smallest for some m with
    ``kmin <= m <= kmax`` (ties broken arbitrarily); returns m.

    Quickselect with branch-free partitions, in place, stopping at the first partition that lands in
    the range: the pivot is the median of three samples or, when few entries are wanted from a long
    range, the least of several samples (one pass then leaves about twice as many as wanted). When no
    entry is below the pivot, it is the least value and one more pass sets its copies apart, so runs of
    ties (quantised distances have many) cannot stall the search. Mispredicted branches dominated the
    cost of a Hoare partition on the short buffers of a top-k reservoir.
    """
    lo, hi = 0, n
    while True:
        # d[:lo] <= d[lo:hi] <= d[hi:n]; lo <= kmax and hi >= kmin
        if hi <= kmax:
            return hi
        if lo >= kmin:
            return lo
        want = kmin - lo
        samples = min(32, (hi - lo) // (2 * want))
        if samples >= 2:
            step = (hi - lo) // samples
            pivot = d[lo]
            for t in range(1, samples):
                pivot = min(pivot, d[lo + t * step])
        else:
            a, b, c = d[lo], d[(lo + hi) // 2], d[hi - 1]
            pivot = max(min(a, b), min(max(a, b), c))
        j = _partition(d, lab, lo, hi, pivot, False)
        if j > kmax:
            hi = j
        elif j >= kmin:
            return j
        elif j > lo:
            lo = j
        else:  # the pivot is the least of the range: set its copies apart (all equal, any count will do)
            j = _partition(d, lab, lo, hi, pivot, True)
            if j >= kmin:
                return min(j, kmax)
            lo = j


@njit(cache=True, nogil=True)
def select_k(d, lab, n, k):
    """Reorder ``d[:n]`` (and ``lab`` alongside) so ``d[:k]`` holds the k smallest; returns their maximum."""
    select_range(d, lab, n, k, k)
    worst = d[0]
    for a in range(1, k):
        worst = max(worst, d[a])
    return worst


@njit(cache=True, nogil=True)
def shrink(d, lab, n, k):
    """Make room in a full reservoir ``d[:n]``: keep its m smallest, k <= m <= max(k, n - 32), cheaply (the
    first partition that lands in that range); returns ``(m, their maximum)``, the new count and threshold.

    Stopping short of exactly k costs a somewhat higher threshold (a few more candidates admitted) and
    saves most partition rounds; topk_finish selects exactly.
    """
    m = select_range(d, lab, n, k, max(k, n - 32))
    worst = d[0]
    for a in range(1, m):
        worst = max(worst, d[a])
    return m, worst


@njit(cache=True, nogil=True)
def topk_init(nq: int, k: int):
    """Empty top-k reservoirs for ``nq`` queries: ``(dist, label, count, threshold)``.

    A reservoir takes every candidate below its threshold into a buffer of ``2k + 32`` slots; when the
    buffer fills, a quickselect keeps the best k to 2k (:func:`shrink`) and the threshold drops to the
    largest kept distance. That
    costs O(1) per accepted candidate where a heap costs O(log k), which matters for k = 100 on short
    inverted lists, where most candidates are accepted.
    """
    cap = 2 * k + 32
    return (np.empty((nq, cap), dtype=np.float32), np.empty((nq, cap), dtype=np.int64),
            np.zeros(nq, dtype=np.int64), np.full(nq, np.inf, dtype=np.float32))


@njit(cache=True, nogil=True)
def admit(dist, n, base, rd, ri, cnt, thresh, k):
    """Offer ``dist[:n]`` with labels ``base + j`` to the reservoir ``(rd, ri)``; returns ``(cnt, thresh)``.

    A candidate enters when it beats ``thresh``; when the reservoir fills, it is shrunk (:func:`shrink`)
    and ``thresh`` drops to the largest distance kept. Sixteen distances are compared with the threshold at once
    and only the lanes below it visited, so a long run of rejected candidates costs no branch each.
    """
    cap = rd.shape[0]
    n16 = n - n % 16
    for j0 in range(0, n16, 16):
        mask = flt_mask(loadf16(dist, j0), thresh)
        while mask != 0:
            j = j0 + ctz(mask)
            mask &= mask - 1
            s = dist[j]
            if s < thresh:  # the threshold may have dropped since the lanes were compared
                rd[cnt] = s
                ri[cnt] = base + j
                cnt += 1
                if cnt == cap:
                    cnt, thresh = shrink(rd, ri, cnt, k)
    for j in range(n16, n):
        s = dist[j]
        if s < thresh:
            rd[cnt] = s
            ri[cnt] = base + j
            cnt += 1
            if cnt == cap:
                cnt, thresh = shrink(rd, ri, cnt, k)
    return cnt, thresh


@njit(cache=True, nogil=True)
def scan_codes(table, codes, bias, const, base, rd, ri, cnt, thresh, k):
    """Offer ``const + bias[i] + sum_m table[m, codes[i, m]]`` with label ``base + i`` for every code.

    Candidates enter the reservoir ``(rd, ri)`` as in :func:`admit`. Four codes are summed at a time, so
    their chains of dependent additions overlap in the pipeline; the admission test is written out in
    this loop because calling a helper per code (returning ``(cnt, thresh)``) made the scan 3x slower.
    ``bias`` is empty or one float per code. Returns the reservoir's new ``(cnt, thresh)``.
    """
    n, M = codes.shape
    cap = rd.shape[0]
    has_bias = bias.shape[0] > 0
    n4 = n - n % 4
    c = np.float32(const)
    for i in range(0, n4 + 4, 4):
        if i < n4:
            s0 = s1 = s2 = s3 = c
            if has_bias:
                s0 += bias[i]
                s1 += bias[i + 1]
                s2 += bias[i + 2]
                s3 += bias[i + 3]
            for m in range(M):
                s0 += table[m, codes[i, m]]
                s1 += table[m, codes[i + 1, m]]
                s2 += table[m, codes[i + 2, m]]
                s3 += table[m, codes[i + 3, m]]
        else:  # the last n % 4 codes; +inf for the missing ones
            s0 = s1 = s2 = s3 = np.float32(np.inf)
            for j in range(n - n4):
                s = c + bias[i + j] if has_bias else c
                for m in range(M):
                    s += table[m, codes[i + j, m]]
                if j == 0:
                    s0 = s
                elif j == 1:
                    s1 = s
                else:
                    s2 = s
        for s, j in ((s0, 0), (s1, 1), (s2, 2), (s3, 3)):
            if s < thresh:
                rd[cnt] = s
                ri[cnt] = base + i + j
                cnt += 1
                if cnt == cap:
                    cnt, thresh = shrink(rd, ri, cnt, k)
    return cnt, thresh


@njit(cache=True, nogil=True, inline="always")
def insert_sorted(d, lab, j, v, w):
    """Put ``(v, w)`` into the ascending ``d[:j]`` (labels ``lab``), shifting the larger entries up one
    slot and overwriting slot ``j``; equal values keep their order ahead of ``v``."""
    while j > 0 and d[j - 1] > v:
        d[j] = d[j - 1]
        lab[j] = lab[j - 1]
        j -= 1
    d[j] = v
    lab[j] = w


@njit(cache=True, nogil=True)
def topk_finish(rd, ri, cnt, k, out_d, out_i):
    """Write a reservoir's best ``k`` ascending into ``out_d``/``out_i``; +inf / -1 pad missing slots."""
    if cnt > k:
        select_k(rd, ri, cnt, k)
        cnt = k
    if cnt <= 32:  # insertion sort in place: no allocation, fast for the usual small k
        for j in range(1, cnt):
            insert_sorted(rd, ri, j, rd[j], ri[j])
        out_d[:cnt] = rd[:cnt]
        out_i[:cnt] = ri[:cnt]
    else:
        order = np.argsort(rd[:cnt])
        for j in range(cnt):
            out_d[j] = rd[order[j]]
            out_i[j] = ri[order[j]]
    for j in range(cnt, k):
        out_d[j] = np.inf
        out_i[j] = -1


@njit(cache=True, nogil=True, parallel=True)
def flat_scan(tables, codes, bias, base, rd, ri, cnt, thresh, k):
    """Offer every code to each query's reservoir (see :func:`topk_init`), labels ``base + row``.

    Parallel over queries. Codes are visited in blocks shared by a group of queries, so a block stays
    in cache while the group scans it. The reservoirs ``(rd, ri, cnt, thresh)`` carry over between
    calls, so several code arrays (the segments of an index) fill one top-k per query.
    """
    nq = tables.shape[0]
    n = codes.shape[0]
    has_bias = bias.shape[0] > 0
    block = 16384
    qchunk = 8
    ngroups = (nq + qchunk - 1) // qchunk
    for g in prange(ngroups):
        q0 = g * qchunk
        q1 = min(nq, q0 + qchunk)
        for s0 in range(0, n, block):
            s1 = min(n, s0 + block)
            b = bias[s0:s1] if has_bias else bias
            for q in range(q0, q1):
                cnt[q], thresh[q] = scan_codes(tables[q], codes[s0:s1], b, 0.0, base + s0, rd[q], ri[q], cnt[q],
                                               thresh[q], k)


@njit(cache=True, nogil=True, parallel=True)
def topk_finish_batch(rd, ri, cnt, k):
    """``(D, R)`` (nq, k) ascending from the reservoirs of :func:`topk_init`; +inf / -1 pad short rows."""
    nq = rd.shape[0]
    D = np.empty((nq, k), dtype=np.float32)
    R = np.empty((nq, k), dtype=np.int64)
    for q in prange(nq):
        topk_finish(rd[q], ri[q], cnt[q], k, D[q], R[q])
    return D, R


def scan_topk_batch(tables: np.ndarray, codes: np.ndarray, bias: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows (smallest ADC distance) of ``codes`` for each query table of ``tables`` (nq, M, K):
    ``(D, R)``, row positions with -1 padding short results."""
    rd, ri, cnt, thresh = topk_init(tables.shape[0], k)
    flat_scan(tables, codes, bias, 0, rd, ri, cnt, thresh, k)
    return topk_finish_batch(rd, ri, cnt, k)
