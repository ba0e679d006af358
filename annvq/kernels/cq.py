"""Iterated conditional modes (ICM) code updates for composite quantization.

Per vector, the objective is ``||x - sum_m c_m||^2 + mu * (sum_{i != j} c_i.c_j - eps)^2``. ICM visits
the codebooks in turn and picks, with the other codewords fixed, the codeword minimising it exactly;
each sweep never increases the objective.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .additive import pair_dot


@njit(cache=True, parallel=True)
def icm_encode(xdots, cnorms, cross, cb, codes, K, mu, eps, n_sweeps):
    """Improve ``codes`` (n, M) by ``n_sweeps`` ICM sweeps; returns new int32 codes.

    ``xdots`` (n, M*K) holds x.c for every codeword, ``cnorms`` (M*K,) their squared norms, ``cross``
    (M*K, M*K) their inner products (or an empty array: computed from ``cb`` (M*K, d)).
    ``mu`` weights the penalty keeping the cross term at ``eps``; ``mu = 0`` is plain ICM.
    """
    n, M = codes.shape
    out = np.empty((n, M), dtype=np.int32)
    has_table = cross.shape[0] > 0
    for i in prange(n):
        c = np.empty(M, dtype=np.int64)
        for m in range(M):
            c[m] = m * K + codes[i, m]
        total = 0.0
        for a in range(M):
            for b in range(a + 1, M):
                total += 2.0 * pair_dot(cross, cb, c[a], c[b])
        yd = np.empty(K, dtype=np.float64)
        for _ in range(n_sweeps):
            for m in range(M):
                base = m * K
                yd[:] = 0.0
                for j in range(M):
                    if j == m:
                        continue
                    if has_table:
                        crow = cross[c[j], base : base + K]
                        for k in range(K):
                            yd[k] += crow[k]
                    else:
                        for k in range(K):
                            yd[k] += pair_dot(cross, cb, c[j], base + k)
                other = total - 2.0 * yd[c[m] - base]
                best = np.inf
                arg = c[m] - base
                for k in range(K):
                    e = other + 2.0 * yd[k] - eps
                    v = cnorms[base + k] - 2.0 * xdots[i, base + k] + 2.0 * yd[k] + mu * e * e
                    if v < best:
                        best = v
                        arg = k
                c[m] = base + arg
                total = other + 2.0 * yd[arg]
        for m in range(M):
            out[i, m] = c[m] - m * K
    return out
