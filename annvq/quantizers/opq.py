"""Optimized product quantization: learn an orthogonal rotation R so that PQ of x·R loses least.

Non-parametric OPQ (Ge et al. 2013): alternate (1) PQ training on the rotated data, warm-started
from the previous codebooks, and (2) the orthogonal Procrustes update R = U V^T where
U S V^T = svd(X^T X_hat), X_hat being the PQ reconstruction in the rotated space.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .base import Quantizer
from .pq import ProductQuantizer


class OPQ(Quantizer):
    """Rotation + PQ. ``niter`` alternations with ``niter_pq`` k-means steps each, then a final PQ fit."""

    kind = "opq"

    def __init__(
        self,
        d: int,
        M: int = 8,
        nbits: int = 8,
        niter: int = 20,
        niter_pq: int = 4,
        niter_final: int = 25,
        max_train_points: int = 65536,
        random_state: int | None = 0,
    ) -> None:
        self.d, self.M, self.nbits = int(d), int(M), int(nbits)
        self.niter, self.niter_pq, self.niter_final = int(niter), int(niter_pq), int(niter_final)
        self.max_train_points = int(max_train_points)
        self.random_state = random_state
        self.pq = ProductQuantizer(d, M, nbits, niter=niter_final, random_state=random_state)
        self.R = np.eye(self.d, dtype=np.float32)
        self._trained = False

    def get_params(self) -> dict[str, Any]:
        return {
            "d": self.d, "M": self.M, "nbits": self.nbits, "niter": self.niter, "niter_pq": self.niter_pq,
            "niter_final": self.niter_final, "max_train_points": self.max_train_points,
            "random_state": self.random_state,
        }

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"R": self.R, "codebooks": self.pq.codebooks}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.R = self._expect_shape(arrays, "R", (self.d, self.d)).astype(np.float32)
        self.pq._set_arrays(arrays)
        self.pq._trained = True

    def fit(self, x: np.ndarray) -> "OPQ":
        x = self._check_x(x)
        if x.shape[0] < self.ksub:
            raise InvalidInputError(f"OPQ with nbits={self.nbits} needs at least {self.ksub} training vectors, got {x.shape[0]}")
        rng = np.random.default_rng(self.random_state)
        if x.shape[0] > self.max_train_points:
            x = x[np.sort(rng.choice(x.shape[0], self.max_train_points, replace=False))]
        R = np.eye(self.d, dtype=np.float32)
        inner = ProductQuantizer(self.d, self.M, self.nbits, niter=self.niter_pq, random_state=self.random_state)
        codebooks = None
        x64 = x.astype(np.float64)
        for _ in range(self.niter):
            xr = x @ R
            inner.fit(xr, init_codebooks=codebooks)
            codebooks = inner.codebooks.copy()
            xhat = inner.decode(inner.encode(xr)).astype(np.float64)
            u, _, vt = np.linalg.svd(x64.T @ xhat)
            R = (u @ vt).astype(np.float32)
        self.R = R
        self.pq.fit(x @ R, init_codebooks=codebooks)
        self._trained = True
        return self

    def rotate(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x @ self.R)

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._require_trained()
        return self.pq.encode(self.rotate(self._check_x(x)))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._require_trained()
        return np.ascontiguousarray(self.pq.decode(codes) @ self.R.T)

    def lookup_tables(self, xq: np.ndarray, metric: str = "l2") -> np.ndarray:
        self._require_trained()
        return self.pq.lookup_tables(self.rotate(self._check_x(xq, "xq")), metric)
