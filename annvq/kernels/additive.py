"""Kernels shared by additive codecs (RQ, AQ, CQ), whose reconstruction is a sum of one codeword per codebook.

Codebooks are passed flattened: ``cb`` is (M*K, d) with codeword k of codebook m at row ``m*K + k``,
so a code row (M,) addresses rows ``m*K + code[m]``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, parallel=True)
def decode_sum(cb: np.ndarray, codes: np.ndarray, K: int) -> np.ndarray:
    """Reconstructions (n, d), in the dtype of ``cb``: the sum over m of ``cb[m*K + codes[i, m]]``."""
    n, M = codes.shape
    d = cb.shape[1]
    out = np.zeros((n, d), dtype=cb.dtype)
    for i in prange(n):
        for m in range(M):
            row = m * K + codes[i, m]
            for t in range(d):
                out[i, t] += cb[row, t]
    return out


@njit(cache=True, nogil=True)
def scatter_rows(values: np.ndarray, codes: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """``B^T values`` for the one-hot code matrix B: per-codeword sums (M*K, d) float64 and counts (M*K,)."""
    n, M = codes.shape
    d = values.shape[1]
    sums = np.zeros((M * K, d), dtype=np.float64)
    counts = np.zeros(M * K, dtype=np.float64)
    for i in range(n):
        for m in range(M):
            row = m * K + codes[i, m]
            counts[row] += 1.0
            for t in range(d):
                sums[row, t] += values[i, t]
    return sums, counts


@njit(cache=True, nogil=True)
def code_gram(codes: np.ndarray, K: int) -> np.ndarray:
    """``B^T B`` (M*K, M*K) float64: how many vectors use both codeword a and codeword b."""
    n, M = codes.shape
    G = np.zeros((M * K, M * K), dtype=np.float64)
    for i in range(n):
        for a in range(M):
            ra = a * K + codes[i, a]
            for b in range(M):
                G[ra, b * K + codes[i, b]] += 1.0
    return G


@njit(cache=True, nogil=True, parallel=True)
def cross_terms(cross: np.ndarray, cb: np.ndarray, codes: np.ndarray, K: int) -> np.ndarray:
    """Per-vector ``sum_{i != j} c_i . c_j`` (float64) from the codeword cross-product table.

    ``cross`` is (M*K, M*K) or empty, in which case the products are computed from ``cb``.
    """
    n, M = codes.shape
    out = np.zeros(n, dtype=np.float64)
    for i in prange(n):
        s = 0.0
        for a in range(M):
            ra = a * K + codes[i, a]
            for b in range(a + 1, M):
                s += pair_dot(cross, cb, ra, b * K + codes[i, b])
        out[i] = 2.0 * s
    return out


@njit(cache=True, inline="always")
def pair_dot(cross: np.ndarray, cb: np.ndarray, ra: int, rb: int) -> float:
    """Inner product of codewords ``ra`` and ``rb``: a table look-up, or computed when no table is kept."""
    if cross.shape[0] > 0:
        return cross[ra, rb]
    s = 0.0
    for t in range(cb.shape[1]):
        s += cb[ra, t] * cb[rb, t]
    return s
