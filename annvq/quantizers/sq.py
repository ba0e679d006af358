"""Scalar quantization: every dimension mapped uniformly to 2**nbits levels between its trained min and max."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..kernels import ip_tables, l2_tables
from .base import Quantizer


class ScalarQuantizer(Quantizer):
    """Per-dimension uniform quantizer (faiss ``SQ8`` for nbits=8): ``M = d`` one-dimensional codebooks.

    Range per dimension is [min, max] of the training data (``rs="minmax"``) or mean ± 3 std clipped
    to min/max (``rs="stddev"``), which trades saturation for a finer step on heavy-tailed data.
    Search reuses the generic ADC scan (each dimension has a table of 2**nbits entries), except where
    an index can use :meth:`linear_ip`: -q.x^ is affine in the codes, a dot product with q * step.
    """

    kind = "sq"

    def __init__(self, d: int, nbits: int = 8, rs: str = "minmax", random_state: int | None = None) -> None:
        if nbits > 8:
            raise InvalidInputError(f"ScalarQuantizer supports nbits <= 8, got {nbits}")
        if rs not in ("minmax", "stddev"):
            raise InvalidInputError(f"rs must be 'minmax' or 'stddev', got {rs!r}")
        self.d = self.M = int(d)
        self.nbits, self.rs, self.random_state = int(nbits), rs, random_state
        self.vmin = np.zeros(self.d, dtype=np.float32)
        self.step = np.ones(self.d, dtype=np.float32)
        self._trained = False

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"vmin": self.vmin, "step": self.step}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.vmin = self._expect_shape(arrays, "vmin", (self.d,)).astype(np.float32)
        self.step = self._expect_shape(arrays, "step", (self.d,)).astype(np.float32)

    def fit(self, x: np.ndarray) -> ScalarQuantizer:
        x = self._check_x(x)
        lo, hi = x.min(axis=0), x.max(axis=0)
        if self.rs == "stddev":
            mu, sd = x.mean(axis=0), x.std(axis=0)
            lo, hi = np.maximum(lo, mu - 3 * sd), np.minimum(hi, mu + 3 * sd)
        self.vmin = lo.astype(np.float32)
        span = (hi - lo).astype(np.float32)
        self.step = np.where(span > 0, span / (self.ksub - 1), 1.0).astype(np.float32)
        self._trained = True
        return self

    @property
    def codebooks(self) -> np.ndarray:
        """(d, K, 1) reconstruction levels, the form the ADC table kernels take."""
        levels = np.arange(self.ksub, dtype=np.float32)
        return (self.vmin[:, None] + self.step[:, None] * levels[None, :])[:, :, None]

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._require_trained()
        x = self._check_x(x)
        q = np.rint((x - self.vmin) / self.step)
        return np.clip(q, 0, self.ksub - 1).astype(self.code_dtype)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._require_trained()
        codes = self._check_codes(codes)
        return (self.vmin + self.step * codes.astype(np.float32)).astype(np.float32)

    def lookup_tables(self, xq: np.ndarray, metric: str = "l2") -> np.ndarray:
        self._require_trained()
        xq = self._check_x(xq, "xq")
        fn = l2_tables if metric == "l2" else ip_tables
        return fn(xq[:, :, None], self.codebooks)

    def linear_ip(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-q.x^ = -q.vmin - sum_j (q_j step_j) code_j: weights ``-xq * step`` and offsets ``-xq.vmin``."""
        self._require_trained()
        xq = self._check_x(xq, "xq")
        return np.ascontiguousarray(-xq * self.step, dtype=np.float32), (-(xq @ self.vmin)).astype(np.float32)
