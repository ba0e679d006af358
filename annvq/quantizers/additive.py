"""Shared machinery of additive codecs (RQ, AQ, CQ): x is approximated by a sum of one full-dimensional
codeword from each of ``M`` codebooks, ``x_hat = sum_m C[m, code[m]]``.

ADC under L2 expands ``||q - x_hat||^2 = ||q||^2 - 2 q.x_hat + ||x_hat||^2``: the tables hold
``-2 q.c`` (with ``||q||^2`` folded into the first codebook's table) and the index adds the stored
``||x_hat||^2`` per vector (``needs_norm("l2")`` is True). Codeword norms and cross inner products
are precomputed once per codebook change; the encoders only need those and ``x.c``.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from ..errors import InvalidInputError
from ..kernels import sq_norms
from ..kernels.additive import code_gram, decode_sum, scatter_rows
from ..kernels.beam import beam_search
from ..kernels.cq import icm_encode
from .base import Quantizer

MAX_TABLE_CODEWORDS = 4096  # keep the (M*K)^2 cross-product table (<= 64 MB) and dense solves below this
_BLOCK_BYTES = 32 << 20  # cap on the (block, M*K) x.c matrix while encoding


def _hash_keys(mk: int) -> np.ndarray:
    """Fixed random keys identifying codewords in order-free set hashes (beam de-duplication)."""
    return np.random.default_rng(0x5EED).integers(0, 2**63, size=mk, dtype=np.uint64)


def codeword_tables(codebooks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(flat (M*K, d), norms (M*K,), cross (M*K, M*K))`` for codebooks (M, K, d), all float32.

    ``cross`` holds every codeword inner product; it is empty (0, 0) when M*K exceeds
    ``MAX_TABLE_CODEWORDS``, and kernels then compute the products they need on the fly.
    """
    M, K, d = codebooks.shape
    flat = np.ascontiguousarray(codebooks.reshape(M * K, d), dtype=np.float32)
    norms = sq_norms(flat)
    cross = flat @ flat.T if M * K <= MAX_TABLE_CODEWORDS else np.empty((0, 0), dtype=np.float32)
    return flat, norms, np.ascontiguousarray(cross, dtype=np.float32)


def _block_rows(mk: int) -> int:
    return max(1, _BLOCK_BYTES // (4 * mk))


def beam_encode(
    x: np.ndarray,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray],
    K: int,
    beam_size: int,
    fixed_order: bool,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Beam search codes for ``x``: ``(codes (n, B, M) int32, dists (n, B))``.

    ``tables`` are the :func:`codeword_tables` of the codebooks, with ``K`` codewords per codebook.
    ``fixed_order`` picks codebooks in order (residual quantization); otherwise any unused codebook
    may come next (additive quantization). ``init`` = (codes with -1 for unchosen codebooks, dists)
    continues an existing beam. ``dists`` are ``||x - x_hat||^2 - ||x||^2``, best first.
    """
    flat, norms, cross = tables
    M = flat.shape[0] // K
    n = x.shape[0]
    if init is None:
        codes = np.full((n, 1, M), -1, dtype=np.int32)
        dists = np.zeros((n, 1), dtype=np.float32)
    else:
        codes, dists = init
    keys = _hash_keys(M * K)
    out_c = np.empty((n, beam_size, M), dtype=np.int32)
    out_d = np.empty((n, beam_size), dtype=np.float32)
    step = _block_rows(M * K)
    for s in range(0, n, step):
        xdots = x[s : s + step] @ flat.T
        out_c[s : s + step], out_d[s : s + step] = beam_search(
            xdots, norms, cross, flat, codes[s : s + step], dists[s : s + step], K, beam_size, fixed_order, keys
        )
    return out_c, out_d


def least_squares_codebooks(
    x: np.ndarray, codes: np.ndarray, codebooks: np.ndarray, ridge: float = 1e-3, shrink: float = 0.0,
    max_dense: int = MAX_TABLE_CODEWORDS,
) -> np.ndarray:
    """Codebooks (M, K, d) minimising ``||x - B C||^2 + ridge ||C - C0||^2 + shrink ||C||^2`` for fixed codes.

    ``B`` is the one-hot code matrix and ``C0`` the current ``codebooks``; the small proximal ridge
    fixes the gauge freedom (moving a vector between codebooks) and leaves unused codewords where
    they are. Both weights count as vectors per codeword (``B^T B`` holds the codeword counts on its
    diagonal). ``shrink`` > 0 regularises for real: when the training vectors barely outnumber the
    M*K codewords, ``B^T B`` is nearly singular and the plain solution reproduces them with huge,
    cancelling codewords that no encoder finds again. Solved by Cholesky on ``B^T B`` when
    M*K <= ``max_dense``, else by Jacobi-preconditioned conjugate gradients with ``B^T B`` applied
    implicitly (memory O(M*K*d)).
    """
    M, K, d = codebooks.shape
    c0 = codebooks.reshape(M * K, d).astype(np.float64)
    rhs, counts = scatter_rows(x, codes, K)
    rhs += ridge * c0
    if M * K <= max_dense:
        G = code_gram(codes, K)
        G[np.diag_indices_from(G)] += ridge + shrink
        sol = cho_solve(cho_factor(G, overwrite_a=True), rhs, overwrite_b=True)
    else:
        sol = _cg_solve(codes, K, counts, ridge + shrink, rhs, c0)
    return sol.astype(np.float32).reshape(M, K, d)


def _cg_solve(codes: np.ndarray, K: int, counts: np.ndarray, ridge: float, rhs: np.ndarray, c0: np.ndarray,
              maxiter: int = 100, tol: float = 1e-6) -> np.ndarray:
    """Solve ``(B^T B + ridge I) C = rhs`` by preconditioned CG, each product costing O(n M d)."""
    def apply(c: np.ndarray) -> np.ndarray:
        return scatter_rows(decode_sum(c, codes, K), codes, K)[0] + ridge * c

    inv_diag = 1.0 / (counts + ridge)[:, None]
    c = c0.copy()
    r = rhs - apply(c)
    z = inv_diag * r
    p = z.copy()
    rz = float(np.vdot(r, z))
    stop = tol * tol * float(np.vdot(rhs, rhs))
    for _ in range(maxiter):
        if float(np.vdot(r, r)) <= stop:
            break
        ap = apply(p)
        alpha = rz / float(np.vdot(p, ap))
        c += alpha * p
        r -= alpha * ap
        z = inv_diag * r
        rz_new = float(np.vdot(r, z))
        p = z + (rz_new / rz) * p
        rz = rz_new
    return c


class AdditiveCodec(Quantizer):
    """Base class of the additive codecs: holds ``codebooks`` (M, K, d), decodes by summing codewords,
    builds ADC tables, and keeps the codeword norms and cross products used by the encoders."""

    def __init__(self, d: int, M: int, nbits: int, random_state: int | None) -> None:
        if int(d) < 1 or int(M) < 1:
            raise InvalidInputError(f"d and M must be positive, got d={d}, M={M}")
        self.d, self.M, self.nbits = int(d), int(M), int(nbits)
        _ = self.code_dtype  # validates nbits
        self.random_state = random_state
        self._set_codebooks(np.zeros((self.M, self.ksub, self.d), dtype=np.float32))
        self._trained = False

    def _set_codebooks(self, codebooks: np.ndarray) -> None:
        self.codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
        self._tables = codeword_tables(self.codebooks)
        self._flat, self._cnorms, self._cross = self._tables

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._set_codebooks(self._expect_shape(arrays, "codebooks", (self.M, self.ksub, self.d)))

    def _check_train(self, x: np.ndarray, max_train_points: int) -> np.ndarray:
        """Validated training vectors, subsampled to ``max_train_points``."""
        x = self._check_x(x)
        if x.shape[0] < self.ksub:
            raise InvalidInputError(
                f"{type(self).__name__} with nbits={self.nbits} needs at least {self.ksub} training vectors, "
                f"got {x.shape[0]}")
        if x.shape[0] > max_train_points:
            rng = np.random.default_rng(self.random_state)
            x = x[np.sort(rng.choice(x.shape[0], max_train_points, replace=False))]
        return x

    def needs_norm(self, metric: str) -> bool:
        return metric == "l2"

    def codeword_norms(self) -> np.ndarray:
        """Squared norms (M, K) of every codeword."""
        return self._cnorms.reshape(self.M, self.ksub)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.table_decode(codes)

    def table_decode(self, codes: np.ndarray) -> np.ndarray:
        """The sum of the codewords: what the ADC tables score."""
        self._require_trained()
        codes = self._check_codes(codes)
        return decode_sum(self._flat, codes, self.ksub)

    def _error(self, x: np.ndarray, codes: np.ndarray) -> float:
        """Mean squared error of ``x`` reconstructed from ``codes`` (n, M) with the current codebooks."""
        return float(np.mean(np.sum((x - decode_sum(self._flat, codes, self.ksub)) ** 2, axis=1)))

    def _beam(self, x: np.ndarray, beam_size: int, fixed_order: bool) -> np.ndarray:
        """Best codes (n, M) int32 of a beam search with the trained codebooks."""
        return beam_encode(x, self._tables, self.ksub, beam_size, fixed_order)[0][:, 0]

    def _icm(self, x: np.ndarray, codes: np.ndarray, sweeps: int, mu: float, eps: float, rounds: int = 0,
             perturb: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """ICM from ``codes`` (penalty ``mu (cross - eps)^2``; 0 for plain ICM; at most ``sweeps`` sweeps),
        then ``rounds`` of iterated local search perturbing ``perturb`` codebooks; in blocks of vectors.
        Returns the codes and each vector's objective minus ``||x||^2``."""
        out = np.empty_like(codes, dtype=np.int32)
        obj = np.empty(x.shape[0], dtype=np.float64)
        step = _block_rows(self.M * self.ksub)
        for s in range(0, x.shape[0], step):
            xdots = x[s : s + step] @ self._flat.T
            out[s : s + step], obj[s : s + step] = icm_encode(
                xdots, self._cnorms, self._cross, self._flat, codes[s : s + step], self.ksub, mu, eps, sweeps, rounds,
                perturb, seed)
        return out, obj

    def _query_dots(self, xq: np.ndarray) -> np.ndarray:
        """q.c for every query and codeword, shaped (nq, M, K)."""
        return (xq @ self._flat.T).reshape(xq.shape[0], self.M, self.ksub)

    def lookup_tables(self, xq: np.ndarray, metric: str = "l2") -> np.ndarray:
        """``-2 q.c`` with ``||q||^2`` added to codebook 0 (L2, plus the stored norm), or ``-q.c`` (ip)."""
        self._require_trained()
        xq = self._check_x(xq, "xq")
        dots = self._query_dots(xq)
        if metric != "l2":
            return np.ascontiguousarray(-dots)
        t = -2.0 * dots
        t[:, 0, :] += sq_norms(xq)[:, None]
        return t
