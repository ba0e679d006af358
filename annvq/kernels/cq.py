"""Iterated conditional modes (ICM) code updates for composite quantization, with iterated local search.

Per vector, the objective is ``||x - sum_m c_m||^2 + mu * (sum_{i != j} c_i.c_j - eps)^2``. ICM visits
the codebooks in turn and picks, with the other codewords fixed, the codeword minimising it exactly;
each sweep never increases the objective. ICM stops in the first local minimum, so iterated local
search (as in LSQ, Martinez et al. 2016) then perturbs the best code found (a few codebooks set to
random codewords), runs ICM again and keeps the result when it is better.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .additive import pair_dot

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _splitmix(state):
    """One step of the splitmix64 generator: (new state, 64 random bits)."""
    state = state + _GOLDEN
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _interactions(cross, cb, c, K, Y):
    """Fill ``Y[m, k] = sum_{j != m} c_j . (codeword k of codebook m)`` for the codeword rows ``c``."""
    M = c.shape[0]
    has_table = cross.shape[0] > 0
    Y[:] = 0.0
    for m in range(M):
        base = m * K
        for j in range(M):
            if j == m:
                continue
            if has_table:
                crow = cross[c[j], base : base + K]
                for k in range(K):
                    Y[m, k] += crow[k]
            else:
                for k in range(K):
                    Y[m, k] += pair_dot(cross, cb, c[j], base + k)


@njit(cache=True, nogil=True)
def _swap(cross, cb, c, Y, j, row, K):
    """Set codebook ``j``'s codeword row to ``row``, updating the interactions of the other codebooks."""
    old = c[j]
    if old == row:
        return
    has_table = cross.shape[0] > 0
    for m in range(c.shape[0]):
        if m == j:
            continue
        base = m * K
        if has_table:
            for k in range(K):
                Y[m, k] += cross[row, base + k] - cross[old, base + k]
        else:
            for k in range(K):
                Y[m, k] += pair_dot(cross, cb, row, base + k) - pair_dot(cross, cb, old, base + k)
    c[j] = row


@njit(cache=True, nogil=True)
def _descend(unary, cross, cb, c, Y, K, mu, eps, max_sweeps):
    """ICM sweeps over the codeword rows ``c`` (in place, interactions ``Y`` kept current) until a sweep
    changes nothing or ``max_sweeps`` ran; returns the objective minus ``||x||^2``.

    ``unary`` (M*K,) holds ``||c||^2 - 2 x.c`` of every codeword for this vector."""
    M = c.shape[0]
    total = 0.0
    for m in range(M):
        total += Y[m, c[m] - m * K]
    vals = np.empty(K, dtype=np.float64)
    for _ in range(max_sweeps):
        changed = False
        for m in range(M):
            base = m * K
            cur = c[m] - base
            other = total - 2.0 * Y[m, cur]
            oe = other - eps
            for k in range(K):
                e = oe + 2.0 * Y[m, k]
                vals[k] = unary[base + k] + 2.0 * Y[m, k] + mu * e * e
            arg = np.argmin(vals)
            if arg != cur:
                _swap(cross, cb, c, Y, m, base + arg, K)
                changed = True
            total = other + 2.0 * Y[m, arg]
        if not changed:
            break
    v = total + mu * (total - eps) * (total - eps)
    for m in range(M):
        v += unary[c[m]]
    return v


@njit(cache=True, nogil=True, parallel=True)
def icm_encode(xdots, cnorms, cross, cb, codes, K, mu, eps, n_sweeps, n_rounds=0, n_perturb=2, seed=0):
    """Improve ``codes`` (n, M) by ICM (at most ``n_sweeps`` sweeps, stopping when one changes nothing),
    then ``n_rounds`` rounds of iterated local search (perturb ``n_perturb`` codebooks of the best
    code, ICM again, keep if better); returns ``(codes (n, M) int32, objective (n,) float64)``, the
    objective without the constant ``||x||^2``.

    ``xdots`` (n, M*K) holds x.c for every codeword, ``cnorms`` (M*K,) their squared norms, ``cross``
    (M*K, M*K) their inner products (or an empty array: computed from ``cb`` (M*K, d)).
    ``mu`` weights the penalty keeping the cross term at ``eps``; ``mu = 0`` is plain ICM. Each
    vector keeps its codewords' interactions with every other codebook up to date as codes change,
    so a visit costs O(K) and a change O(M K). The random perturbations come from a splitmix64
    stream per vector seeded by ``seed`` and the vector's starting code, so a vector's result depends
    on nothing else in the batch: not on threads, blocking, or its row (a sharded build encodes
    exactly as one process does).
    """
    n, M = codes.shape
    out = np.empty((n, M), dtype=np.int32)
    out_obj = np.empty(n, dtype=np.float64)
    for i in prange(n):
        unary = np.empty(xdots.shape[1], dtype=np.float64)
        for r in range(xdots.shape[1]):
            unary[r] = cnorms[r] - 2.0 * xdots[i, r]
        c = np.empty(M, dtype=np.int64)
        for m in range(M):
            c[m] = m * K + codes[i, m]
        Y = np.empty((M, K), dtype=np.float64)
        _interactions(cross, cb, c, K, Y)
        best_obj = _descend(unary, cross, cb, c, Y, K, mu, eps, n_sweeps)
        trial = c.copy()
        TY = Y.copy()
        state = np.uint64(seed) * _GOLDEN
        for m in range(M):
            state, _h = _splitmix(state ^ np.uint64(c[m]))
        for _ in range(n_rounds):
            for _p in range(n_perturb):
                state, r = _splitmix(state)
                m = np.int64(r % np.uint64(M))
                _swap(cross, cb, trial, TY, m, m * K + np.int64((r >> np.uint64(32)) % np.uint64(K)), K)
            obj = _descend(unary, cross, cb, trial, TY, K, mu, eps, n_sweeps)
            if obj < best_obj:
                best_obj = obj
                c[:] = trial
                Y[:] = TY
            else:
                trial[:] = c
                TY[:] = Y
        for m in range(M):
            out[i, m] = c[m] - m * K
        out_obj[i] = best_obj
    return out, out_obj
