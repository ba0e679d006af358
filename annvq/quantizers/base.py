"""The one interface every codec implements; indexes compose a ``Quantizer`` and never subclass it."""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from .._validate import as_vectors
from ..errors import FormatError, InvalidInputError, NotTrainedError

_REGISTRY: dict[str, type[Quantizer]] = {}


def code_dtype(nbits: int) -> type:
    """uint8 sub-codes for nbits <= 8, uint16 for nbits <= 16."""
    if not 1 <= nbits <= 16:
        raise InvalidInputError(f"nbits must be between 1 and 16, got {nbits}")
    return np.uint8 if nbits <= 8 else np.uint16


class Quantizer(ABC):
    """A vector codec: ``fit`` learns codebooks, ``encode``/``decode`` map vectors to codes and back.

    Codes are (n, M) integer arrays with ``M`` sub-codes of ``nbits`` bits each. ``lookup_tables``
    returns ADC tables (nq, M, K) such that the distance (L2: squared; "ip": negated inner product)
    between a query and a code is ``sum_m T[q, m, code[m]]``, plus ``||decode(code)||^2`` for codecs
    whose ``needs_norm("l2")`` is true (additive codecs); the index stores that norm per vector.
    """

    kind: ClassVar[str]
    # True when the ADC tables only approximate decode(): indexes then re-rank the best
    # ``k_factor * k`` ADC candidates by their exact distance to ``decode(code)``; such a codec
    # has an int attribute ``k_factor``, the default a search's ``k_factor=`` overrides
    rerank_decoded: ClassVar[bool] = False
    d: int
    M: int
    nbits: int
    random_state: int | None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            _REGISTRY[cls.kind] = cls

    # --- shape facts -------------------------------------------------------------------------
    @property
    def ksub(self) -> int:
        """Codewords per codebook (2**nbits)."""
        return 1 << self.nbits

    @property
    def code_dtype(self) -> type:
        return code_dtype(self.nbits)

    @property
    def code_size(self) -> int:
        """Bytes stored per encoded vector: ``M`` sub-codes of 1 byte (nbits <= 8) or 2 bytes (nbits <= 16);
        excludes any norm an index stores. ``M * nbits`` is the information content."""
        return self.M * np.dtype(self.code_dtype).itemsize

    @property
    def is_trained(self) -> bool:
        return self._trained

    def needs_norm(self, metric: str) -> bool:
        """True when search under ``metric`` adds ||x_hat||^2 per vector to the table sum."""
        return False

    # --- checks --------------------------------------------------------------------------------
    def _require_trained(self) -> None:
        if not self._trained:
            raise NotTrainedError(f"{type(self).__name__} is not trained: call fit() first")

    def _check_x(self, x, name: str = "x") -> np.ndarray:
        return as_vectors(x, self.d, name)

    def _check_codes(self, codes) -> np.ndarray:
        c = np.asarray(codes)
        if c.ndim == 1:
            c = c[None, :]
        if c.ndim != 2 or c.shape[1] != self.M:
            raise InvalidInputError(f"codes: expected shape (n, {self.M}), got {c.shape}")
        if c.dtype.kind not in "iu":
            raise InvalidInputError(f"codes: expected integer codes, got dtype {c.dtype}")
        if c.size and (c.min() < 0 or c.max() >= self.ksub):
            raise InvalidInputError(f"codes: values must lie in [0, {self.ksub})")
        return np.ascontiguousarray(c, dtype=self.code_dtype)

    # --- the interface -------------------------------------------------------------------------
    @abstractmethod
    def fit(self, x: np.ndarray) -> Quantizer:
        """Learn the codebooks from training vectors (n, d); returns self."""

    @abstractmethod
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes (n, M) of dtype ``code_dtype`` for vectors (n, d)."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstructions (n, d) float32 of codes (n, M)."""

    def table_decode(self, codes: np.ndarray) -> np.ndarray:
        """The reconstructions (n, d) that the ADC tables score: ``decode`` unless ``rerank_decoded``.

        Indexes derive the per-row scan terms (stored norms, IVF biases) from these, so that a
        scan's distance is the one to a single vector; for a re-ranking codec that vector is its
        tables' approximation, not the exact decode.
        """
        return self.decode(codes)

    @abstractmethod
    def lookup_tables(self, xq: np.ndarray, metric: str = "l2") -> np.ndarray:
        """ADC tables (nq, M, K) float32 for queries (nq, d); see the class docstring."""

    def linear_ip(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(w, b)`` with ``sum_m T[q, m, code[m]] = b[q] + sum_m w[q, m] * code[m]`` for the "ip"
        tables ``T``, when they are affine in the code values (scalar quantization); else None.

        A scan can then take a SIMD dot product with the codes instead of ``M`` table lookups.
        """
        return None

    # --- persistence ----------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-serialisable scalars), read back from the attributes of the same
        names, as scikit-learn estimators do."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    @abstractmethod
    def _get_arrays(self) -> dict[str, np.ndarray]:
        """Learned arrays, keyed by name."""

    @abstractmethod
    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore learned arrays; validate shapes."""

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(params, arrays) to persist a trained codec; ``from_state`` restores it."""
        self._require_trained()
        return {"kind": self.kind, **self.get_params()}, self._get_arrays()

    @staticmethod
    def from_params(params: dict[str, Any]) -> Quantizer:
        """An untrained codec from ``{"kind": ..., **get_params()}``; FormatError when they are invalid."""
        params = dict(params)
        kind = params.pop("kind", None)
        cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise FormatError(f"unknown codec kind {kind!r}")
        try:
            return cls(**params)
        except (TypeError, KeyError, ValueError, ArithmeticError, MemoryError) as exc:
            raise FormatError(f"invalid stored {kind} codec parameters: {exc}") from None

    @staticmethod
    def from_state(params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Quantizer:
        """A trained codec from :meth:`get_state`'s output; every array must be finite and well shaped."""
        q = Quantizer.from_params(params)
        for name, a in arrays.items():
            a = np.asarray(a)
            if a.dtype.kind not in "fiu" or (a.dtype.kind == "f" and not np.isfinite(a).all()):
                raise FormatError(f"invalid stored {q.kind} codec: array {name!r} is not finite numbers")
        try:
            q._set_arrays(arrays)
        except (TypeError, KeyError, ValueError) as exc:
            raise FormatError(f"invalid stored {q.kind} codec: {type(exc).__name__}: {exc}") from None
        q._trained = True
        return q

    def _expect_shape(self, arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
        a = np.asarray(arrays[name])
        if a.shape != shape:
            raise ValueError(f"array {name!r} has shape {a.shape}, expected {shape}")
        return a

    def sdc(self, codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
        """Symmetric code-to-code distances: squared L2 (na, nb) between two code sets' reconstructions."""
        self._require_trained()
        a = self.decode(codes_a).astype(np.float64)
        b = self.decode(codes_b).astype(np.float64)
        d2 = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (a @ b.T)
        return np.maximum(d2, 0.0).astype(np.float32)

    def mse(self, x: np.ndarray) -> float:
        """Mean squared reconstruction error per vector (sum over dimensions, mean over vectors)."""
        from ..datasets.groundtruth import mse

        x = self._check_x(x)
        return mse(x, self.decode(self.encode(x)))

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({p})"
