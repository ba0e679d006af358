"""Additive quantization (Babenko & Lempitsky, CVPR 2014): M full-dimensional codebooks, codes chosen
jointly by beam search over unordered codebook choices, codebooks by least squares."""
from __future__ import annotations

import numpy as np

from .additive import AdditiveCodec, least_squares_codebooks
from .rq import ResidualQuantizer


class AdditiveQuantizer(AdditiveCodec):
    """AQ with ``M`` codebooks of ``nbits`` bits.

    Training starts from a residual quantizer (its codebooks and beam codes, beam ``train_beam_size``),
    then alternates ``niter`` times: least-squares codebooks for the current codes, and re-encoding by
    beam search of width ``train_beam_size``. To leave the RQ basin, each least-squares update is
    followed by an annealed random perturbation of the codebooks, Gaussian with per-dimension
    standard deviation ``perturb * T * std(x_d) / M`` where ``T = (1 - (i+1)/niter) ** 0.5`` falls to
    0 (the stochastic relaxation idea of LSQ++, Martinez et al. 2018); ``perturb=0`` disables it.
    Encoding extends each of ``beam_size`` partial codes with a codeword of any unused codebook and
    keeps the best distinct code sets (codeword cross products are precomputed). Search under L2
    needs the stored ``||x_hat||^2``.
    """

    kind = "aq"

    def __init__(
        self,
        d: int,
        M: int = 8,
        nbits: int = 8,
        beam_size: int = 16,
        train_beam_size: int = 8,
        niter: int = 24,
        perturb: float = 0.5,
        niter_kmeans: int = 25,
        max_train_points: int = 65536,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(d, M, nbits, random_state)
        self.beam_size, self.train_beam_size = int(beam_size), int(train_beam_size)
        self.niter, self.perturb = int(niter), float(perturb)
        self.niter_kmeans, self.max_train_points = int(niter_kmeans), int(max_train_points)

    def fit(self, x: np.ndarray) -> AdditiveQuantizer:
        x = self._check_train(x, self.max_train_points)
        rq = ResidualQuantizer(self.d, self.M, self.nbits, beam_size=self.train_beam_size, niter=self.niter_kmeans,
                               refine_iters=0, max_train_points=self.max_train_points,
                               random_state=self.random_state).fit(x)
        self._set_codebooks(rq.codebooks)
        codes = rq._beam(x, self.train_beam_size, True)
        rng = np.random.default_rng(self.random_state)
        noise_sd = (self.perturb / self.M) * x.std(axis=0)
        for i in range(self.niter):
            codebooks = least_squares_codebooks(x, codes, self.codebooks)
            temperature = (1.0 - (i + 1) / self.niter) ** 0.5
            if self.perturb > 0 and temperature > 0:
                codebooks += (temperature * noise_sd * rng.standard_normal(codebooks.shape)).astype(np.float32)
            self._set_codebooks(codebooks)
            codes = self._beam(x, self.train_beam_size, False)
        self._set_codebooks(least_squares_codebooks(x, codes, self.codebooks))
        self._trained = True
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._require_trained()
        return self._beam(self._check_x(x), self.beam_size, False).astype(self.code_dtype)
