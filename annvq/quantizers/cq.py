"""Composite quantization (Zhang, Du & Wang, ICML 2014): additive codebooks constrained so that the cross
term ``sum_{i != j} c_i.c_j`` is (nearly) the same constant ``eps`` for every vector.

Then ``sum_m ||q - c_m||^2 = ||q - x_hat||^2 + (M-1)||q||^2 - eps`` up to the cross term's spread, so
search needs only the M*K table of query-to-codeword distances and no per-vector norm.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize

from ..kernels import sq_norms
from ..kernels.additive import cross_terms as cross_term_kernel
from ..kernels.additive import decode_sum, scatter_rows
from ..kmeans import KMeans
from .additive import AdditiveCodec, beam_encode


class CompositeQuantizer(AdditiveCodec):
    """CQ with ``M`` codebooks of ``nbits`` bits.

    Training minimises ``sum ||x - x_hat||^2 + mu sum (cross(x) - eps)^2``, starting from product
    quantization (codewords in disjoint coordinate blocks, so every cross term is 0), and alternates
    ``niter`` times: L-BFGS on the codebooks (``lbfgs_iters`` steps), ICM code updates
    (``icm_sweeps``) and the closed-form ``eps`` (mean cross term). The penalty weight is
    ``mu = penalty / s`` with ``s`` the mean squared distance of the training vectors to their mean,
    so ``penalty`` is scale-free. Encoding starts from a beam search (width ``beam_size``) and runs
    penalised ICM, so new vectors keep their cross term near the trained ``eps``.
    """

    kind = "cq"

    def __init__(
        self,
        d: int,
        M: int = 8,
        nbits: int = 8,
        penalty: float = 10.0,
        niter: int = 10,
        lbfgs_iters: int = 20,
        icm_sweeps: int = 3,
        beam_size: int = 4,
        niter_kmeans: int = 25,
        max_train_points: int = 65536,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(d, M, nbits, random_state)
        self.penalty, self.niter, self.lbfgs_iters = float(penalty), int(niter), int(lbfgs_iters)
        self.icm_sweeps, self.beam_size = int(icm_sweeps), int(beam_size)
        self.niter_kmeans, self.max_train_points = int(niter_kmeans), int(max_train_points)
        self.eps = 0.0
        self.mu = 0.0

    def get_params(self) -> dict[str, Any]:
        return {
            **self._common_params(), "penalty": self.penalty, "niter": self.niter, "lbfgs_iters": self.lbfgs_iters,
            "icm_sweeps": self.icm_sweeps, "beam_size": self.beam_size, "niter_kmeans": self.niter_kmeans,
            "max_train_points": self.max_train_points, "random_state": self.random_state,
        }

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks, "eps_mu": np.array([self.eps, self.mu])}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._set_arrays(arrays)
        self.eps, self.mu = (float(v) for v in self._expect_shape(arrays, "eps_mu", (2,)))

    def needs_norm(self, metric: str) -> bool:
        return False

    def lookup_tables(self, xq: np.ndarray, metric: str = "l2") -> np.ndarray:
        """``||q - c||^2`` per codeword minus ``(M-1)||q||^2 - eps`` (folded into codebook 0), so the sum
        approximates ``||q - x_hat||^2``; ``-q.c`` for "ip"."""
        self._require_trained()
        xq = self._check_x(xq, "xq")
        dots = self._query_dots(xq)
        if metric != "l2":
            return np.ascontiguousarray(-dots)
        t = self.codeword_norms()[None, :, :] - 2.0 * dots
        t[:, 0, :] += (sq_norms(xq) + self.eps)[:, None]
        return t

    def cross_terms(self, codes: np.ndarray) -> np.ndarray:
        """``sum_{i != j} c_i.c_j`` per code (n,), the term CQ keeps near ``eps``."""
        self._require_trained()
        codes = self._check_codes(codes).astype(np.int32)
        return cross_term_kernel(self._cross, self._flat, codes, self.ksub)

    # --- training ----------------------------------------------------------------------------------
    def fit(self, x: np.ndarray) -> "CompositeQuantizer":
        x = self._check_train(x, self.max_train_points)
        scale = float(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1)))
        self.mu = self.penalty / max(scale, 1e-30)
        codes = self._init_product(x)
        self.eps = 0.0
        x64 = x.astype(np.float64)
        for _ in range(self.niter):
            self._update_codebooks(x64, codes)
            codes = self._icm(x, codes, self.icm_sweeps, self.mu, self.eps)
            self.eps = float(np.mean(cross_term_kernel(self._cross, self._flat, codes, self.ksub)))
        self._trained = True
        return self

    def _init_product(self, x: np.ndarray) -> np.ndarray:
        """Product-quantizer start: codebook m lives on the m-th block of coordinates (cross terms all 0)."""
        rng = np.random.default_rng(self.random_state)
        codebooks = np.zeros((self.M, self.ksub, self.d), dtype=np.float32)
        codes = np.empty((x.shape[0], self.M), dtype=np.int32)
        for m, dims in enumerate(np.array_split(np.arange(self.d), self.M)):
            km = KMeans(self.ksub, niter=self.niter_kmeans, init="random", random_state=int(rng.integers(2**31)))
            xs = np.ascontiguousarray(x[:, dims])
            codebooks[m][:, dims] = km.fit(xs).centroids
            codes[:, m] = km.predict(xs)
        self._set_codebooks(codebooks)
        return codes

    def _update_codebooks(self, x64: np.ndarray, codes: np.ndarray) -> None:
        """L-BFGS steps on the penalised objective over all codewords, codes and eps fixed."""
        n, K, mu, eps = x64.shape[0], self.ksub, self.mu, self.eps
        offsets = np.arange(self.M) * K
        shape = (self.M * K, self.d)

        def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
            c = flat.reshape(shape)
            xh = decode_sum(c, codes, K)
            r = x64 - xh
            cn = np.einsum("ij,ij->i", c, c)
            e = np.einsum("ij,ij->i", xh, xh) - cn[codes + offsets].sum(axis=1) - eps
            f = (np.einsum("ij,ij->", r, r) + mu * float(e @ e)) / n
            vals = np.empty((n, self.d + 1))
            vals[:, : self.d] = -2.0 * r + (4.0 * mu) * e[:, None] * xh
            vals[:, self.d] = e
            sums = scatter_rows(vals, codes, K)[0]
            grad = (sums[:, : self.d] - (4.0 * mu) * sums[:, self.d :] * c) / n
            return f, grad.ravel()

        res = minimize(objective, self._flat.astype(np.float64).ravel(), jac=True, method="L-BFGS-B",
                       options={"maxiter": self.lbfgs_iters, "maxcor": 5})
        self._set_codebooks(res.x.reshape(self.M, K, self.d))

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._require_trained()
        x = self._check_x(x)
        codes = beam_encode(x, self._tables, self.ksub, self.beam_size, False)[0][:, 0]
        return self._icm(x, codes, self.icm_sweeps, self.mu, self.eps).astype(self.code_dtype)
