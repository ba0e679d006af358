"""Composite quantization (Zhang, Du & Wang, ICML 2014): additive codebooks constrained so that the cross
term ``sum_{i != j} c_i.c_j`` is (nearly) the same constant ``eps`` for every vector.

Then ``sum_m ||q - c_m||^2 = ||q - x_hat||^2 + (M-1)||q||^2 - eps`` up to the cross term's spread, so
search needs only the M*K table of query-to-codeword distances and no per-vector norm.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from ..errors import InvalidInputError
from ..kernels import sq_norms
from ..kernels.additive import cross_terms as cross_term_kernel
from ..kernels.additive import decode_sum, scatter_rows
from ..kmeans import KMeans
from .additive import AdditiveCodec, beam_encode, least_squares_codebooks
from .opq import OPQ
from .rq import ResidualQuantizer

_INITS = ("auto", "product", "residual")


class CompositeQuantizer(AdditiveCodec):
    """CQ with ``M`` codebooks of ``nbits`` bits.

    Training minimises ``sum ||x - x_hat||^2 + mu sum (cross(x) - eps)^2``. The penalty weight is
    ``mu = penalty / s`` with ``s`` (:meth:`penalty_scale`) the mean squared distance of the training
    vectors to their mean, so ``penalty`` is scale-free. The stages:

    1. Start (``init``): "product" (OPQ codebooks, each living on its block of rotated coordinates,
       so every cross term is 0), "residual" (residual quantizer codebooks) or "auto". "auto" refines
       both ``probe_iters`` unconstrained rounds and goes on with the one of lower penalised error at
       the first penalty weight of stage 3, since a start that fits well only through widely spread
       cross terms loses that fit to the penalty: SIFT-like and low-rank data go on from the product
       start, normalised embeddings from the residual one. With fewer training vectors than codewords
       (``n < M * 2**nbits``), "auto" takes the product start, skips stage 2 and applies ``mu`` in full
       from the first round: unconstrained rounds there interpolate the training set with codewords
       whose codes, once the penalty returns, no encoder finds again (64-D digits, CQ8x8 on 1,597
       vectors: MSE 80 that way, 3.3 this way).
    2. ``niter_free`` unconstrained rounds (additive quantization: least-squares codebooks, ICM codes).
       Each codebook update is damped by a proximal ridge (weight ``ridge``, toward the previous
       codebooks) and regularised by a pull toward 0 (weight ``shrink``), both in vectors per
       codeword. Without them, training on about as many vectors as there are codewords (M*K) fits
       the training vectors exactly with huge, cancelling codewords, whose codes no encoder finds:
       CQ4x8 on 1,000 normalised vectors ended with an MSE of 2.6, above the data's energy of 1.
    3. ``niter`` penalised rounds: L-BFGS on the codebooks (``lbfgs_iters`` steps), new codes, then
       the closed-form ``eps`` (mean cross term). ``mu`` rises geometrically from ``mu / 100`` over
       the first ``ramp`` rounds, so the codebooks leave the unconstrained optimum gradually. Codes
       come from ICM started at the previous codes, except in the last ``niter_encoder`` rounds, where
       they come from the encoder itself: the codebooks then fit the codes that encoding finds.

    Codes are improved by ICM (at most ``icm_sweeps`` sweeps) plus iterated local search,
    ``train_ils_rounds`` rounds in training and ``ils_rounds`` when encoding. The encoder starts from
    two beam searches (width ``beam_size``; codebooks in order, and in any order) that ignore the
    penalty, raises the penalty to ``mu`` in three ICM steps, runs the local search, and keeps the
    better of the two codes per vector. Search needs no stored norm: see :meth:`lookup_tables`.
    """

    kind = "cq"

    def __init__(
        self,
        d: int,
        M: int = 8,
        nbits: int = 8,
        penalty: float = 10.0,
        niter: int = 10,
        niter_free: int = 10,
        ridge: float = 1.0,
        shrink: float = 0.1,
        ramp: int = 5,
        niter_encoder: int = 5,
        lbfgs_iters: int = 20,
        icm_sweeps: int = 10,
        train_ils_rounds: int = 4,
        ils_rounds: int = 16,
        beam_size: int = 4,
        init: str = "auto",
        probe_iters: int = 2,
        niter_kmeans: int = 25,
        max_train_points: int = 65536,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(d, M, nbits, random_state)
        if init not in _INITS:
            raise InvalidInputError(f"init must be one of {', '.join(_INITS)}, got {init!r}")
        self.penalty, self.niter, self.niter_free = float(penalty), int(niter), int(niter_free)
        self.ridge, self.shrink = float(ridge), float(shrink)
        if not (self.ridge >= 0 and self.shrink >= 0 and 0 < self.ridge + self.shrink < np.inf):
            raise InvalidInputError(f"ridge and shrink must be finite, >= 0 and not both 0, got {ridge}, {shrink}")
        self.ramp, self.niter_encoder, self.lbfgs_iters = int(ramp), int(niter_encoder), int(lbfgs_iters)
        self.icm_sweeps, self.train_ils_rounds = int(icm_sweeps), int(train_ils_rounds)
        self.ils_rounds = int(ils_rounds)
        self.beam_size, self.init, self.probe_iters = int(beam_size), init, int(probe_iters)
        self.niter_kmeans, self.max_train_points = int(niter_kmeans), int(max_train_points)
        self.eps = 0.0
        self.mu = 0.0

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
        return self._cross_of(self._check_codes(codes).astype(np.int32))

    def _cross_of(self, codes: np.ndarray) -> np.ndarray:
        """:meth:`cross_terms` of int32 codes with the current codebooks, trained or not."""
        return cross_term_kernel(self._cross, self._flat, codes, self.ksub)

    # --- training ----------------------------------------------------------------------------------
    def fit(self, x: np.ndarray) -> CompositeQuantizer:
        x = self._check_train(x, self.max_train_points)
        mu = self.penalty / max(self.penalty_scale(x), 1e-30)
        self.mu = self.eps = 0.0
        few = self.init == "auto" and x.shape[0] < self.M * self.ksub
        ramp = 0 if few else self.ramp
        codes = self._init(x, "product") if few else self._start(x, self._weight(0, ramp, mu))
        x64 = x.astype(np.float64)
        self.eps = self._mean_cross(codes)
        for t in range(self.niter):
            self.mu = self._weight(t, ramp, mu)
            self._update_codebooks(x64, codes)
            if t >= self.niter - self.niter_encoder:
                codes = self._encode_codes(x, self.train_ils_rounds, seed=t)
            else:
                codes = self._icm(x, codes, self.icm_sweeps, self.mu, self.eps, self.train_ils_rounds, seed=t)[0]
            self.eps = self._mean_cross(codes)
        self.mu = mu
        self._trained = True
        return self

    @staticmethod
    def penalty_scale(x: np.ndarray) -> float:
        """The unit of ``penalty``: the mean squared distance of ``x`` to its mean, so that the absolute
        weight is ``mu = penalty / penalty_scale(x)``."""
        return float(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1)))

    def _mean_cross(self, codes: np.ndarray) -> float:
        return float(np.mean(self._cross_of(codes)))

    @staticmethod
    def _weight(t: int, ramp: int, mu: float) -> float:
        """Penalty weight of penalised round ``t``: from ``mu / 100`` up to ``mu`` over ``ramp`` rounds."""
        return mu * 0.01 ** max(0.0, 1.0 - t / ramp) if ramp > 0 else mu

    def _init(self, x: np.ndarray, kind: str) -> np.ndarray:
        """Set the codebooks of start ``kind`` ("product" or "residual") and return its codes."""
        codebooks, codes = self._init_product(x) if kind == "product" else self._init_residual(x)
        self._set_codebooks(codebooks)
        return codes

    def _start(self, x: np.ndarray, mu0: float) -> np.ndarray:
        """Codebooks and codes after the start and the unconstrained rounds (stages 1 and 2); "auto"
        ranks the starts by ``error + mu0 * var(cross)`` after the probe rounds."""
        starts = ("product", "residual") if self.init == "auto" else (self.init,)
        probe = min(self.probe_iters, self.niter_free) if len(starts) > 1 else 0
        best = None
        for i, kind in enumerate(starts):
            codes = self._free_rounds(x, self._init(x, kind), probe, seed=1000 * (i + 1))
            err = self._error(x, codes) + mu0 * float(np.var(self._cross_of(codes)))
            if best is None or err < best[0]:
                best = (err, self.codebooks, codes)
        _, codebooks, codes = best
        self._set_codebooks(codebooks)
        return self._free_rounds(x, codes, self.niter_free - probe, seed=3000)

    def _free_rounds(self, x: np.ndarray, codes: np.ndarray, rounds: int, seed: int) -> np.ndarray:
        """Unconstrained additive quantization rounds: least-squares codebooks, then ICM codes."""
        for t in range(rounds):
            self._set_codebooks(least_squares_codebooks(x, codes, self.codebooks, self.ridge, self.shrink))
            codes = self._icm(x, codes, self.icm_sweeps, 0.0, 0.0, self.train_ils_rounds, seed=seed + t)[0]
        return codes

    def _init_product(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Product start: codebook m lives on the m-th block of coordinates (cross terms all 0), after an
        OPQ rotation when M divides d (else on blocks of the raw coordinates)."""
        if self.d % self.M == 0:
            opq = OPQ(self.d, self.M, self.nbits, niter_final=self.niter_kmeans, max_train_points=self.max_train_points,
                      random_state=self.random_state).fit(x)
            dsub = self.d // self.M
            codebooks = np.stack([opq.pq.codebooks[m] @ opq.R[:, m * dsub : (m + 1) * dsub].T for m in range(self.M)])
            return codebooks.astype(np.float32), opq.encode(x).astype(np.int32)
        rng = np.random.default_rng(self.random_state)
        codebooks = np.zeros((self.M, self.ksub, self.d), dtype=np.float32)
        codes = np.empty((x.shape[0], self.M), dtype=np.int32)
        for m, dims in enumerate(np.array_split(np.arange(self.d), self.M)):
            km = KMeans(self.ksub, niter=self.niter_kmeans, init="random", random_state=int(rng.integers(2**31)))
            xs = np.ascontiguousarray(x[:, dims])
            codebooks[m][:, dims] = km.fit(xs).centroids
            codes[:, m] = km.predict(xs)
        return codebooks, codes

    def _init_residual(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residual start: the codebooks and beam-search codes of a residual quantizer."""
        rq = ResidualQuantizer(self.d, self.M, self.nbits, beam_size=8, niter=self.niter_kmeans, refine_iters=0,
                               max_train_points=self.max_train_points, random_state=self.random_state).fit(x)
        return rq.codebooks, rq._beam(x, 8, True)

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

    def _encode_codes(self, x: np.ndarray, rounds: int, seed: int = 0) -> np.ndarray:
        """Codes (n, M) int32: the better, per vector, of two beam searches (codebooks in order, in any
        order) each followed by ICM with the penalty raised to ``mu`` in three steps and ``rounds`` of
        iterated local search."""
        best_codes, best_obj = None, None
        for fixed_order in (True, False):
            codes = beam_encode(x, self._tables, self.ksub, self.beam_size, fixed_order)[0][:, 0]
            for f in (0.01, 0.1):
                codes = self._icm(x, codes, self.icm_sweeps, f * self.mu, self.eps)[0]
            codes, obj = self._icm(x, codes, self.icm_sweeps, self.mu, self.eps, rounds, seed=seed)
            if best_codes is None:
                best_codes, best_obj = codes, obj
            else:
                better = obj < best_obj
                best_codes[better] = codes[better]
        return best_codes

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._require_trained()
        return self._encode_codes(self._check_x(x), self.ils_rounds).astype(self.code_dtype)
