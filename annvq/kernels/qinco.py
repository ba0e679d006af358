"""Kernels of the QINCo neural residual codec: the per-step network, decoding and beam encoding.

Step m >= 1 turns a base codeword ``c`` and the partial reconstruction ``x_hat`` into the codeword it adds:

    f_m(c, x_hat) = c + W_out g(W_c c + W_x x_hat + b_in) + b_out,
    g = L residual blocks  z <- z + W_2 relu(W_1 z)   (width ``de``, hidden ``dh``)

Step 0 sees ``x_hat = 0``, where a network would only re-parametrise its codebook, so it adds the
base codeword itself. The networks of steps 1..M-1 are stacked on a leading axis of length M - 1
(see :class:`QincoWeights`); network ``m - 1`` belongs to step ``m``. ``W_c c + b_in``
depends on the codeword alone, so it is one (K, de) table per step (:func:`qinco_tables`), and ``W_x
x_hat`` is computed once per partial reconstruction, not once per candidate. Everything runs on
NumPy/BLAS (large batched products) plus one Numba kernel for the beam bookkeeping.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from .beam import _push

_BLOCK_FLOATS = 4 << 20  # cap on the (candidates, max(d, dh)) work arrays of one encoding block


class QincoWeights(NamedTuple):
    """Network weights of all steps, float32, in the normalised space (see the module docstring)."""

    codebooks: np.ndarray  # (M, K, d) base codewords
    w_c: np.ndarray  # (M - 1, d, de)
    w_x: np.ndarray  # (M - 1, d, de)
    b_in: np.ndarray  # (M - 1, de)
    w_1: np.ndarray  # (M - 1, L, de, dh)
    w_2: np.ndarray  # (M - 1, L, dh, de)
    w_out: np.ndarray  # (M - 1, de, d)
    b_out: np.ndarray  # (M - 1, d)


class QincoTables(NamedTuple):
    """Per-codeword products of the weights that encoding and decoding reuse (see :func:`qinco_tables`)."""

    proj: np.ndarray  # (M - 1, K, de) W_c c + b_in for the codewords of steps 1..M-1
    cb_norms: np.ndarray  # (M, K) ||c||^2


def qinco_tables(w: QincoWeights) -> QincoTables:
    proj = np.matmul(w.codebooks[1:], w.w_c) + w.b_in[:, None, :]
    return QincoTables(np.ascontiguousarray(proj, dtype=np.float32), np.einsum("mkd,mkd->mk", w.codebooks, w.codebooks))


def residual_blocks(w: QincoWeights, m: int, z: np.ndarray) -> np.ndarray:
    """Network ``m``'s residual blocks applied to input embeddings ``z`` (N, de), in place; returns ``z``."""
    for blk in range(w.w_1.shape[1]):
        h = z @ w.w_1[m, blk]
        np.maximum(h, 0.0, out=h)
        z += h @ w.w_2[m, blk]
    return z


def step_codewords(w: QincoWeights, m: int, c: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Codewords (N, d) of network ``m`` from base codewords ``c`` (N, d) and embeddings after the blocks ``z``."""
    out = z @ w.w_out[m]
    out += c
    out += w.b_out[m]
    return out


def qinco_decode(w: QincoWeights, proj: np.ndarray, codes: np.ndarray, steps: int | None = None) -> np.ndarray:
    """Normalised reconstructions (n, d) of codes (n, M), from their first ``steps`` sub-codes (all by default).

    ``proj`` is the ``proj`` table of :func:`qinco_tables`.
    """
    M, _, d = w.codebooks.shape
    steps = M if steps is None else steps
    if steps == 0:
        return np.zeros((codes.shape[0], d), dtype=np.float32)
    x_hat = w.codebooks[0][codes[:, 0]]
    for m in range(1, steps):
        k = codes[:, m]
        z = residual_blocks(w, m - 1, proj[m - 1][k] + x_hat @ w.w_x[m - 1])
        x_hat += step_codewords(w, m - 1, w.codebooks[m][k], z)
    return x_hat


def qinco_encode(w: QincoWeights, t: QincoTables, x: np.ndarray, preselect: int, beam_size: int,
                 threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Codes (n, M) int32 and normalised reconstructions (n, d) of normalised vectors ``x`` (n, d).

    At each step every partial code of the beam pre-selects its ``preselect`` nearest base codewords
    to its residual, the network computes their true codewords, and the ``beam_size`` best
    extensions are kept. The greedy path (best extension of the greedy path at every step) is
    followed too, so the result is never worse than ``beam_size=1`` with the same ``preselect``.
    Vectors are processed in blocks so the candidate arrays stay a few MB; ``threads`` workers
    encode blocks side by side. The work is BLAS products and NumPy operations that release the GIL:
    on 2 cores, 2 workers with single-threaded BLAS encoded 1.9x-2.0x as many SIFT vectors per second
    as one (multi-threaded BLAS alone gained nothing), with the same codes.
    """
    n, d = x.shape
    M, K, _ = w.codebooks.shape
    A = min(int(preselect), K)
    B = int(beam_size)
    width = max(d, w.w_1.shape[-1], 1)
    step = max(1, min(_BLOCK_FLOATS // ((B + 1) * A * width), -(-n // max(1, threads))))
    codes = np.empty((n, M), dtype=np.int32)
    x_hat = np.empty((n, d), dtype=np.float32)

    def run(s: int) -> None:
        codes[s : s + step], x_hat[s : s + step] = _encode_block(w, t, x[s : s + step], A, B)

    starts = range(0, n, step)
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(threads, len(starts)), initializer=numba.set_num_threads, initargs=(1,)) as ex:
            for _ in ex.map(run, starts):
                pass
    else:
        for s in starts:
            run(s)
    return codes, x_hat


def _encode_block(w: QincoWeights, t: QincoTables, x: np.ndarray, A: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    n, d = x.shape
    M = w.codebooks.shape[0]
    de = t.proj.shape[2]
    E = B + 1  # slots per vector: the beam plus the greedy path when it fell out of the beam
    codes = np.zeros((n, E, M), dtype=np.int32)
    x_hat = np.zeros((n, E, d), dtype=np.float32)
    err = np.full((n, E), np.inf, dtype=np.float32)
    err[:, 0] = np.einsum("ij,ij->i", x, x)
    in_beam = np.zeros((n, E), dtype=np.bool_)
    in_beam[:, 0] = True
    greedy = np.zeros(n, dtype=np.int64)
    for m in range(M):
        rows = np.flatnonzero(np.isfinite(err).ravel())  # live (vector, slot) pairs, vector-major
        vec = rows // E
        xh = x_hat.reshape(n * E, d)[rows]
        res = x[vec] - xh
        # pre-selection: the A base codewords nearest to each residual (up to the constant ||res||^2)
        pre = res @ w.codebooks[m].T
        pre *= -2.0
        pre += t.cb_norms[m]
        if A < pre.shape[1]:
            cand = np.argpartition(pre, A - 1, axis=1)[:, :A]
        else:
            cand = np.broadcast_to(np.arange(A), pre.shape).copy()
        # the network on the candidates only, and the error of each extension
        if m == 0:
            out = w.codebooks[0][cand]
        else:
            z = t.proj[m - 1][cand] + (xh @ w.w_x[m - 1])[:, None, :]
            z = residual_blocks(w, m - 1, z.reshape(-1, de))
            out = step_codewords(w, m - 1, w.codebooks[m][cand.ravel()], z).reshape(len(rows), A, d)
        out -= res[:, None, :]
        child_err = np.einsum("rad,rad->ra", out, out)
        src, pick, nxt_beam, nxt_greedy = beam_select(child_err, vec, rows % E, in_beam, greedy, n, B)
        live = src >= 0
        s_rows, s_pick = src[live], pick[live]
        new_codes = np.zeros_like(codes)
        new_xh = np.zeros_like(x_hat)
        new_err = np.full_like(err, np.inf)
        new_codes[live] = codes.reshape(n * E, M)[rows[s_rows]]
        new_codes[live, m] = cand[s_rows, s_pick]
        new_xh[live] = x[vec[s_rows]] + out[s_rows, s_pick]  # out holds f - res = x_hat_new - x
        new_err[live] = child_err[s_rows, s_pick]
        codes, x_hat, err, in_beam, greedy = new_codes, new_xh, new_err, nxt_beam, nxt_greedy
    best = np.argmin(err, axis=1)
    idx = np.arange(n)
    return codes[idx, best], x_hat[idx, best]


@njit(cache=True, nogil=True, parallel=True)
def beam_select(child_err, vec, slot, in_beam, greedy, n, B):
    """Choose the next beam from the extensions of the live (vector, slot) rows.

    ``child_err`` (R, A) holds the error of extending row r by its a-th candidate; rows are grouped by
    vector (``vec``, ascending) and ``slot`` is each row's slot. The new beam of a vector is the ``B``
    best extensions of its rows with ``in_beam`` set, plus, when it is not among them, the best
    extension of its ``greedy`` slot. Returns ``(src, pick, in_beam, greedy)`` over the (n, B + 1)
    new slots: the source row and candidate of each slot (-1 when empty), whether the slot belongs to
    the beam, and each vector's greedy slot.
    """
    A = child_err.shape[1]
    E = B + 1
    src = np.full((n, E), -1, dtype=np.int64)
    pick = np.zeros((n, E), dtype=np.int64)
    nb = np.zeros((n, E), dtype=np.bool_)
    ng = np.zeros(n, dtype=np.int64)
    starts = np.searchsorted(vec, np.arange(n + 1))
    for i in prange(n):
        r0, r1 = starts[i], starts[i + 1]
        hd = np.full(B, np.inf, dtype=np.float32)  # max-heap of the B best extensions, labelled r * A + a
        hl = np.full(B, -1, dtype=np.int64)
        hz = np.zeros(B, dtype=np.uint64)  # the heap's set-hash slot, unused here
        g_row, g_pick, g_err = -1, 0, np.float32(np.inf)
        for r in range(r0, r1):
            s = slot[r]
            if s == greedy[i]:
                for a in range(A):
                    if child_err[r, a] < g_err:
                        g_err, g_row, g_pick = child_err[r, a], r, a
            if not in_beam[i, s]:
                continue
            for a in range(A):
                v = child_err[r, a]
                if v < hd[0]:
                    _push(hd, hl, hz, v, r * A + a, np.uint64(0))
        order = np.argsort(hd, kind="mergesort")
        g_slot = -1
        j = 0
        for t in range(B):
            lab = hl[order[t]]
            if lab < 0:
                continue
            src[i, j], pick[i, j], nb[i, j] = lab // A, lab % A, True
            if lab == g_row * A + g_pick:
                g_slot = j
            j += 1
        if g_slot < 0 and g_row >= 0:
            src[i, j], pick[i, j] = g_row, g_pick
            g_slot = j
        ng[i] = g_slot
    return src, pick, nb, ng
