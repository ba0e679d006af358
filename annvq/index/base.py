"""What every index shares: input checks, metrics, external ids, norms for additive codecs, persistence.

An index *composes* a :class:`~annvq.quantizers.Quantizer`; subclasses decide where codes live and
how a query visits them (``FlatIndex`` scans all, ``IVFIndex`` scans ``nprobe`` lists).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from .._threads import search_threads
from .._validate import as_ids, as_vectors, check_k, check_metric, missing_ids
from ..errors import DuplicateIdError, FormatError, InvalidInputError, NotTrainedError
from ..kernels.ivf import exact_distances
from ..quantizers import Quantizer
from .norms import NormCodec

_INDEX_TYPES: dict[str, type["BaseIndex"]] = {}
_RERANK_FLOATS = 8 << 20  # decoded candidate floats held at once while re-ranking by decode


class BaseIndex(ABC):
    """Common behaviour of annvq indexes.

    ``metric``: ``"l2"`` (squared distances, ascending), ``"ip"`` (inner products, descending) or
    ``"cosine"`` (vectors normalised on the way in, cosine similarity, descending). External ids are
    int64, unique, and stay attached to their vector across removals.
    """

    index_type: ClassVar[str]
    lazy_columns: ClassVar[tuple[str, ...]] = ()  # per-vector arrays left on disk by ``load``
    keeps_norms: ClassVar[bool] = True  # store ||x^||^2 for codecs that need it (see NormCodec)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "index_type" in cls.__dict__:
            _INDEX_TYPES[cls.index_type] = cls

    def __init__(self, codec: Quantizer, metric: str = "l2", norm_bits: int = 8) -> None:
        if not isinstance(codec, Quantizer):
            raise InvalidInputError(f"codec must be a Quantizer, got {type(codec).__name__}")
        self.codec = codec
        self.d = codec.d
        self.metric = check_metric(metric)
        self.norms = NormCodec(norm_bits) if self.keeps_norms and codec.needs_norm(self._codec_metric) else None
        self.ids = np.empty(0, dtype=np.int64)
        self._order: np.ndarray | None = None  # argsort of ids, rebuilt lazily after changes
        self.spec: str | None = None  # set by index_factory so files and services can show it
        self.source_path = None  # the HDF5 file this index was loaded from, if any

    # --- facts ---------------------------------------------------------------------------------
    @property
    def _codec_metric(self) -> str:
        return "l2" if self.metric == "l2" else "ip"

    @property
    def ntotal(self) -> int:
        return int(self.ids.shape[0])

    @property
    def is_trained(self) -> bool:
        return self.codec.is_trained and self._extra_trained()

    def _extra_trained(self) -> bool:
        return True

    @property
    def code_size(self) -> int:
        """Bytes stored per vector: the codec's packed code plus the norm byte(s) when used."""
        return self.codec.code_size + (self.norms.nbytes if self.norms is not None else 0)

    # --- input handling ------------------------------------------------------------------------
    def _prepare(self, x, name: str) -> np.ndarray:
        x = as_vectors(x, self.d, name)
        if self.metric == "cosine":
            n = np.linalg.norm(x, axis=1, keepdims=True)
            if (n == 0).any():
                raise InvalidInputError(f"{name}: zero vector has no direction under the cosine metric (row {int(np.flatnonzero(n[:, 0] == 0)[0])})")
            x = np.ascontiguousarray(x / n, dtype=np.float32)
        return x

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise NotTrainedError(f"{type(self).__name__} is not trained: call train() first")

    def _sorted_ids(self) -> np.ndarray:
        """Stored ids in ascending order (the argsort is cached until the next add or remove)."""
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
        return self.ids[self._order]

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are stored (binary search, no per-call hashing of all ids)."""
        sorted_ids = self._sorted_ids()
        if sorted_ids.shape[0] == 0:
            return np.zeros(ids.shape[0], dtype=bool)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.shape[0] - 1)
        return sorted_ids[pos] == ids

    def _rows_of(self, ids) -> np.ndarray:
        """Row positions of external ``ids``; raises UnknownIdError naming the missing ones."""
        ids = np.atleast_1d(np.asarray(ids))
        if ids.dtype.kind not in "iu":
            raise InvalidInputError(f"ids: expected integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64).reshape(-1)
        found = self._present(ids)
        if not found.all():
            missing_ids(ids, ids[found])
        return self._order[np.searchsorted(self._sorted_ids(), ids)]

    def _ids_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """External ids of row positions, keeping -1 (no result) as -1."""
        if self.ntotal == 0:
            return np.full(rows.shape, -1, dtype=np.int64)
        return np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)

    def _new_ids(self, ids, n: int) -> np.ndarray:
        if ids is None:
            start = int(self.ids.max()) + 1 if self.ntotal else 0
            return np.arange(start, start + n, dtype=np.int64)
        ids = as_ids(ids, n)
        clash = ids[self._present(ids)]
        if clash.size:
            raise DuplicateIdError(f"ids already in the index: {', '.join(map(str, clash[:10]))}")
        return ids

    def _norm_values(self, codes: np.ndarray) -> np.ndarray:
        xh = self.codec.decode(codes)
        return np.einsum("ij,ij->i", xh, xh)

    # --- re-ranking by decode (codecs with ``rerank_decoded``) -----------------------------------
    def _decoded_shortlist(self, k: int, k_factor: Any) -> int:
        """ADC candidates to re-rank: ``k * k_factor``, the codec's ``k_factor`` when None."""
        kf = self.codec.k_factor if k_factor is None else k_factor
        if isinstance(kf, bool) or not isinstance(kf, (int, np.integer)) or kf < 1:
            raise InvalidInputError(f"k_factor must be a positive integer, got {kf!r}")
        return k * int(kf)

    def _rerank_decoded(self, xq: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` of the candidate rows (nq, kk) by exact distance to their decoded vectors: ``(D, R)``,
        -1 rows padding. Queries go in blocks so at most ~``_RERANK_FLOATS`` decoded floats are held."""
        nq, kk = rows.shape
        D = np.empty((nq, k), dtype=np.float32)
        R = np.empty((nq, k), dtype=np.int64)
        step = max(1, _RERANK_FLOATS // (kk * self.d))
        for s in range(0, nq, step):
            blk = rows[s : s + step]
            valid = blk >= 0
            uniq, inv = np.unique(blk[valid], return_inverse=True)
            vecs = self._reconstruct_rows(uniq) if uniq.size else np.empty((0, self.d), dtype=np.float32)
            where = np.full(blk.shape, -1, dtype=np.int64)
            where[valid] = inv
            dist = exact_distances(xq[s : s + step], vecs, vecs[:0], where, self.metric != "l2")
            order = np.argsort(dist, axis=1, kind="stable")[:, :k]
            D[s : s + step] = np.take_along_axis(dist, order, axis=1)
            R[s : s + step] = np.where(np.isfinite(D[s : s + step]), np.take_along_axis(blk, order, axis=1), -1)
        return D, R

    # --- the public API ------------------------------------------------------------------------
    def train(self, x) -> "BaseIndex":
        """Train the codec (and any coarse quantizer) on ``x``."""
        x = self._prepare(x, "x")
        self._train(x)
        if self.norms is not None:
            self.norms.fit(self._norm_values(self.codec.encode(x)))
        return self

    def add(self, x, ids=None) -> np.ndarray:
        """Encode and store vectors; returns their external ids (0.. upward when ``ids`` is None)."""
        self._require_trained()
        x = self._prepare(x, "x")
        new_ids = self._new_ids(ids, x.shape[0])
        self._add(x, new_ids)
        self._order = None
        return new_ids

    def search(self, xq, k: int = 10, **params: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)`` of shape (nq, k): distances and external ids, best first; -1 ids pad short results.

        L2 gives squared distances (ascending); ip and cosine give similarities (descending).
        """
        self._require_trained()
        k = check_k(k)
        xq = self._prepare(xq, "xq")
        with search_threads(xq.shape[0]):
            D, I = self._search(xq, k, **params)
        if self.metric != "l2":
            D = -D
        D[I < 0] = np.inf if self.metric == "l2" else -np.inf
        return D, I

    def remove(self, ids) -> int:
        """Delete vectors by external id; unknown ids raise before anything changes. Returns the count."""
        rows = self._rows_of(ids)
        if np.unique(rows).shape[0] != rows.shape[0]:
            raise InvalidInputError("ids: repeated ids in one remove call")
        keep = np.ones(self.ntotal, dtype=bool)
        keep[rows] = False
        self._keep_rows(keep)
        self._order = None
        return int(rows.shape[0])

    def reconstruct(self, id: int) -> np.ndarray:
        """Decoded vector (d,) for one external id."""
        return self.reconstruct_batch([id])[0]

    def reconstruct_batch(self, ids) -> np.ndarray:
        self._require_trained()
        return self._reconstruct_rows(self._rows_of(ids))

    def save(self, path) -> None:
        """Write the index to an HDF5 file (atomically; see :mod:`annvq.io`)."""
        from ..io import save

        save(self, path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(codec={self.codec!r}, metric={self.metric!r}, ntotal={self.ntotal})"

    # --- what subclasses provide ---------------------------------------------------------------
    @abstractmethod
    def _train(self, x: np.ndarray) -> None: ...

    @abstractmethod
    def _add(self, x: np.ndarray, ids: np.ndarray) -> None: ...

    @abstractmethod
    def _search(self, xq: np.ndarray, k: int, **params: Any) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _keep_rows(self, keep: np.ndarray) -> None: ...

    @abstractmethod
    def _reconstruct_rows(self, rows: np.ndarray) -> np.ndarray: ...

    # persistence protocol used by annvq.io: fixed attrs/arrays and per-vector columns
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        attrs: dict[str, Any] = {"metric": self.metric, "d": self.d, "spec": self.spec or ""}
        arrays: dict[str, np.ndarray] = {}
        if self.norms is not None:
            attrs.update(norm_bits=self.norms.nbits, norm_min=self.norms.vmin, norm_max=self.norms.vmax)
        return attrs, arrays

    @abstractmethod
    def _columns(self) -> dict[str, np.ndarray]:
        """Per-vector arrays (first axis ntotal), in row order; always includes ``ids``."""

    @abstractmethod
    def _encode_columns(self, x: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Per-vector arrays for new vectors, as ``_columns`` would hold them (used to append on disk)."""

    @classmethod
    def _restore(cls, codec: Quantizer, attrs: dict[str, Any], arrays: dict[str, np.ndarray], columns: dict[str, np.ndarray]) -> "BaseIndex":
        idx = cls._construct(codec, attrs, arrays)
        if idx.norms is not None:
            if "norm_bits" not in attrs:
                raise FormatError("file lacks the norm parameters this codec needs")
            idx.norms = NormCodec(int(attrs["norm_bits"]), float(attrs["norm_min"]), float(attrs["norm_max"]))
        idx.spec = attrs.get("spec") or None
        idx._load_columns(columns)
        return idx

    @classmethod
    @abstractmethod
    def _construct(cls, codec: Quantizer, attrs: dict[str, Any], arrays: dict[str, np.ndarray]) -> "BaseIndex": ...

    @abstractmethod
    def _load_columns(self, columns: dict[str, np.ndarray]) -> None: ...


def index_class(index_type: str) -> type[BaseIndex]:
    try:
        return _INDEX_TYPES[index_type]
    except KeyError:
        raise FormatError(f"unknown index type {index_type!r}") from None
