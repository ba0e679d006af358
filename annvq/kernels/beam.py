"""Beam-search encoding for additive codecs: residual quantization (fixed codebook order) and additive
quantization (any unused codebook next).

With codewords c and the vector x, adding codeword c to a partial reconstruction S changes the
squared error by ``||c||^2 - 2 x.c + 2 sum_{s in S} s.c``, so a step needs only the precomputed
``x.c`` for every codeword, the codeword norms and the codeword cross products (see
:func:`annvq.kernels.additive.pair_dot`); no residual vector is formed.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .additive import pair_dot


@njit(cache=True, inline="always")
def _push(hd, hi, hh, v, label, h):
    """Replace the root of the max-heap (hd, hi, hh) by (v, label, set hash h) and sift it down."""
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
        hh[pos] = hh[child]
        pos = child
    hd[pos] = v
    hi[pos] = label
    hh[pos] = h


@njit(cache=True, nogil=True, parallel=True)
def beam_search(xdots, cnorms, cross, cb, codes, dists, K, beam_size, fixed_order, hash_keys):
    """Complete the partial codes of a beam for every vector; returns ``(codes, dists)`` sorted best first.

    ``xdots`` (n, M*K) float32 holds x.c for every codeword; ``cnorms`` (M*K,) their squared norms;
    ``cross`` (M*K, M*K) the codeword inner products (or an empty array: computed from ``cb``).
    ``codes`` (n, B_in, M) int32 is the incoming beam, -1 marking codebooks not chosen yet (the same
    ones in every entry); ``dists`` (n, B_in) is each entry's ``||x - x_hat||^2 - ||x||^2``, +inf for
    unused slots. Each step extends every entry by one codeword: of codebook ``first unused`` when
    ``fixed_order`` (RQ), of any unused codebook otherwise (AQ), and keeps the ``beam_size`` best,
    skipping candidates that repeat an already kept set of codewords (``hash_keys`` (M*K,) uint64
    random keys, summed into an order-free set hash). The returned beam has ``beam_size`` entries.
    """
    n, b_in, M = codes.shape
    MK = M * K
    out_codes = np.full((n, beam_size, M), -1, dtype=np.int32)
    out_dists = np.full((n, beam_size), np.inf, dtype=np.float32)
    steps = 0
    for m in range(M):
        if codes[0, 0, m] < 0:
            steps += 1
    has_table = cross.shape[0] > 0
    two = np.float32(2.0)
    for i in prange(n):
        cur = codes[i].copy()
        cur_d = dists[i].copy()
        unary = np.empty(MK, dtype=np.float32)
        for r in range(MK):
            unary[r] = cnorms[r] - two * xdots[i, r]
        acc = np.empty(K, dtype=np.float32)
        hb = np.empty(max(b_in, beam_size), dtype=np.uint64)
        for _ in range(steps):
            nb = cur.shape[0]
            hd = np.full(beam_size, np.inf, dtype=np.float32)
            hi = np.full(beam_size, -1, dtype=np.int64)
            hh = np.zeros(beam_size, dtype=np.uint64)
            for b in range(nb):
                h = np.uint64(0)
                for j in range(M):
                    if cur[b, j] >= 0:
                        h += hash_keys[j * K + cur[b, j]]
                hb[b] = h
            for b in range(nb):
                if not np.isfinite(cur_d[b]):
                    continue
                for m in range(M):
                    if cur[b, m] >= 0:
                        continue
                    base = m * K
                    for k in range(K):
                        acc[k] = unary[base + k]
                    for j in range(M):
                        if cur[b, j] < 0:
                            continue
                        rj = j * K + cur[b, j]
                        if has_table:
                            crow = cross[rj, base : base + K]
                            for k in range(K):
                                acc[k] += two * crow[k]
                        else:
                            for k in range(K):
                                acc[k] += two * pair_dot(cross, cb, rj, base + k)
                    db = cur_d[b]
                    for k in range(K):
                        v = db + acc[k]
                        if v < hd[0]:
                            h = hb[b] + hash_keys[base + k]
                            dup = False
                            if not fixed_order:  # a fixed order never reaches one set twice
                                for s in range(beam_size):
                                    if hh[s] == h and hi[s] >= 0:
                                        dup = True
                                        break
                            if not dup:
                                _push(hd, hi, hh, v, b * MK + base + k, h)
                    if fixed_order:
                        break
            nxt = np.full((beam_size, M), -1, dtype=np.int32)
            nxt_d = np.full(beam_size, np.inf, dtype=np.float32)
            for s in range(beam_size):
                lab = hi[s]
                if lab < 0:
                    continue
                row = lab % MK
                nxt[s] = cur[lab // MK]
                nxt[s, row // K] = row % K
                nxt_d[s] = hd[s]
            cur = nxt
            cur_d = nxt_d
        order = np.argsort(cur_d[: min(cur_d.shape[0], beam_size)], kind="mergesort")
        for s in range(order.shape[0]):
            out_codes[i, s] = cur[order[s]]
            out_dists[i, s] = cur_d[order[s]]
    return out_codes, out_dists
