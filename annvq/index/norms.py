"""Storage of per-vector squared norms ||x_hat||^2 needed by additive codecs under L2.

Stored as 8-bit codes uniform between the training minimum and maximum (``nbits=8``, one byte per
vector) or as float32 (``nbits=32``). The index keeps decoded float32 norms in memory for scanning.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError


class NormCodec:
    """Uniform scalar codec for one non-negative value per vector."""

    def __init__(self, nbits: int = 8, vmin: float = 0.0, vmax: float = 1.0) -> None:
        if nbits not in (8, 32):
            raise InvalidInputError(f"norm_bits must be 8 or 32, got {nbits}")
        self.nbits, self.vmin, self.vmax = nbits, float(vmin), float(vmax)

    @property
    def nbytes(self) -> int:
        return self.nbits // 8

    @property
    def dtype(self) -> type:
        return np.uint8 if self.nbits == 8 else np.float32

    def fit(self, norms: np.ndarray) -> NormCodec:
        self.vmin, self.vmax = float(norms.min()), float(norms.max())
        return self

    def _step(self) -> float:
        return (self.vmax - self.vmin) / 255.0 if self.vmax > self.vmin else 1.0

    def encode(self, norms: np.ndarray) -> np.ndarray:
        if self.nbits == 32:
            return norms.astype(np.float32)
        q = np.rint((norms - self.vmin) / self._step())
        return np.clip(q, 0, 255).astype(np.uint8)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        if self.nbits == 32:
            return np.asarray(stored, dtype=np.float32)
        return (self.vmin + self._step() * np.asarray(stored, dtype=np.float32)).astype(np.float32)
