"""Asymmetric distance computation: lookup tables and code scans that keep the top-k in a heap.

A code is a row of ``M`` sub-codes (uint8 for nbits <= 8, uint16 for nbits <= 16). Its distance to a
query is ``bias[i] + sum_m T[m, code[m]]``; ``bias`` carries per-vector terms (e.g. ||x||^2 for additive
codecs) and is empty when unused. Every scan minimises; callers negate for similarities.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


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
def _sift_down(hd, hi, v, label):
    """Replace the root of the max-heap (hd, hi) with (v, label) and restore the heap property."""
    k = hd.shape[0]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        if child + 1 < k and hd[child + 1] > hd[child]:
            child += 1
        if hd[child] <= v:
            break
        hd[pos] = hd[child]
        hi[pos] = hi[child]
        pos = child
    hd[pos] = v
    hi[pos] = label


@njit(cache=True)
def heap_init(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty max-heaps for ``nq`` queries: distances +inf and labels -1."""
    hd = np.full((nq, k), np.inf, dtype=np.float32)
    hi = np.full((nq, k), -1, dtype=np.int64)
    return hd, hi


@njit(cache=True)
def heap_scan(table, codes, bias, labels, hd, hi):
    """Scan ``codes`` against one query's ``table`` (M, K), pushing ``labels[i]`` into the heap (hd, hi).

    The heap is a bounded max-heap of size k kept across calls, so several code lists (IVF) can be
    scanned into one result. ``bias`` is either empty or one float per code.
    """
    n, M = codes.shape
    has_bias = bias.shape[0] > 0
    worst = hd[0]
    for i in range(n):
        s = bias[i] if has_bias else np.float32(0.0)
        for m in range(M):
            s += table[m, codes[i, m]]
        if s < worst:
            _sift_down(hd, hi, s, labels[i])
            worst = hd[0]


@njit(cache=True)
def heap_sorted(hd, hi):
    """Sort max-heaps ascending by distance in place (heap sort, no allocation per query); returns them.

    Empty slots (+inf, -1) end up last.
    """
    nq, k = hd.shape
    for q in range(nq):
        d, lab = hd[q], hi[q]
        for end in range(k - 1, 0, -1):
            v, label = d[end], lab[end]
            d[end], lab[end] = d[0], lab[0]
            _sift_down(d[:end], lab[:end], v, label)
    return hd, hi


@njit(cache=True)
def scan_topk(table, codes, bias, labels, k):
    """Top-k (smallest) ADC distances for one query: returns ``(D (k,), I (k,))`` sorted ascending."""
    hd, hi = heap_init(1, k)
    heap_scan(table, codes, bias, labels, hd[0], hi[0])
    D, I = heap_sorted(hd, hi)
    return D[0], I[0]


@njit(cache=True, parallel=True)
def scan_topk_batch(tables, codes, bias, labels, k):
    """Top-k for a batch of queries ``tables`` (nq, M, K), parallel over queries.

    Codes are visited in blocks shared by all queries of a thread so a block stays in cache while
    several queries scan it.
    """
    nq = tables.shape[0]
    n = codes.shape[0]
    hd, hi = heap_init(nq, k)
    has_bias = bias.shape[0] > 0
    block = 16384
    nblocks = (n + block - 1) // block
    qchunk = 8
    ngroups = (nq + qchunk - 1) // qchunk
    for g in prange(ngroups):
        q0 = g * qchunk
        q1 = min(nq, q0 + qchunk)
        for b in range(nblocks):
            s0 = b * block
            s1 = min(n, s0 + block)
            for q in range(q0, q1):
                if has_bias:
                    heap_scan(tables[q], codes[s0:s1], bias[s0:s1], labels[s0:s1], hd[q], hi[q])
                else:
                    heap_scan(tables[q], codes[s0:s1], bias, labels[s0:s1], hd[q], hi[q])
    return heap_sorted(hd, hi)
