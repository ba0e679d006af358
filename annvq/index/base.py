"""What every index shares: a trained model plus a list of segments holding the vectors.

An index *composes* a :class:`~annvq.quantizers.Quantizer` (and, for IVF, a coarse quantizer): that
is its model, fixed after training. Its vectors live in segments (:mod:`annvq.index.segments`): sealed
ones that never change but for deletion marks, and one growing segment that takes adds in O(batch).
A search scans every segment into one top-k per query inside the kernels. Subclasses decide how
vectors are encoded into rows and how a query visits a segment (``FlatIndex`` scans all rows,
``IVFIndex`` the ``nprobe`` best lists).

Before training, added vectors are kept raw (exact) and encoded when the index is trained, as a
vector database takes inserts before it builds its index; searching needs a trained index.
"""
from __future__ import annotations

import hashlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from .._threads import single_blas_thread
from .._validate import all_unique, as_ids, as_vectors, check_k, check_metric, missing_ids
from ..errors import AnnvqError, DuplicateIdError, FormatError, InvalidInputError, NotTrainedError
from ..kernels import best_k_stable, exact_distances, topk_init
from ..kernels.adc import topk_finish_batch
from ..kernels.fastscan import alive_bits, block_offsets
from ..quantizers import Quantizer
from .compaction import TieredMergePolicy
from .fastscan import FastScanLists
from .norms import NormCodec
from .params import FlatSearchParams, SearchParams, parse_params
from .segments import ROW_BITS, ROW_MASK, GrowingSegment, MemoryVectors, Rows, Segment

_INDEX_TYPES: dict[str, type[BaseIndex]] = {}
_MODEL_SERIALS = itertools.count(1)
_MAX_ID = np.iinfo(np.int64).max
_REENCODE_ROWS = 65536  # rows re-encoded at a time by a retrain
_RESCORE_FACTOR = 2  # fast-scan rescore: candidates re-scored per result when k_factor is not given
SEAL_ROWS = 65536


@dataclass(frozen=True)
class Encoded:
    """A batch encoded by an index's model (:meth:`BaseIndex.encode`): the checked vectors and their rows.

    ``model`` identifies the model; :meth:`BaseIndex.add` re-encodes a batch whose model was replaced.
    """

    vectors: np.ndarray
    rows: Rows
    model: int


class BaseIndex(ABC):
    """Common behaviour of annvq indexes.

    ``metric``: ``"l2"`` (squared distances, ascending), ``"ip"`` (inner products, descending) or
    ``"cosine"`` (vectors normalised on the way in, cosine similarity, descending). External ids are
    non-negative int64, unique, and stay attached to their vector across removals and merges.
    ``rerank=True`` keeps the exact vectors (``Refine``): searches then re-rank the best
    ``k_factor * k`` code candidates by exact distance. ``seal_rows`` bounds the growing segment;
    ``merge_policy`` decides :meth:`compact`'s merges, run after every seal when ``auto_compact``.
    """

    index_type: ClassVar[str]
    params_type: ClassVar[type[SearchParams]] = FlatSearchParams

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "index_type" in cls.__dict__:
            _INDEX_TYPES[cls.index_type] = cls

    def __init__(self, codec: Quantizer, metric: str = "l2", *, rerank: bool = False, k_factor: int = 4,
                 norm_bits: int = 8, seal_rows: int = SEAL_ROWS, merge_policy: TieredMergePolicy | None = None,
                 auto_compact: bool = True, fast_scan: bool = False) -> None:
        if not isinstance(codec, Quantizer):
            raise InvalidInputError(f"codec must be a Quantizer, got {type(codec).__name__}")
        if fast_scan and (codec.kind not in ("pq", "opq") or codec.nbits != 4):
            raise InvalidInputError(f"fast_scan: the fast-scan layout takes 4-bit PQ or OPQ codes, got "
                                    f"{type(codec).__name__} with nbits={codec.nbits}")
        self.fast_scan = bool(fast_scan)
        self.codec = codec
        self.d = codec.d
        self.metric = check_metric(metric)
        self.rerank = bool(rerank)
        self.k_factor = positive_int(k_factor, "k_factor")
        self.norms = NormCodec(norm_bits) if self._stores_norms() else None
        self.seal_rows = positive_int(seal_rows, "seal_rows")
        self.merge_policy = merge_policy or TieredMergePolicy()
        self.auto_compact = bool(auto_compact)
        self.spec: str | None = None  # set by index_factory so files and services can show it
        self.storage: Any = None  # the stored copy this index was loaded from or saved to (annvq.storage)
        self.reencoded_from: str | None = None  # after a retrain: "exact" or "reconstructed"
        self.labels: np.ndarray | None = None  # optional int64 class label of every id 0..len-1 (LVQ prototypes)
        self.segments: list[Segment] = []
        self._growing = self._new_growing()
        self._next_seg_id = 1
        self._next_id = 0
        self._fingerprint: str | None = None
        self._model_serial = next(_MODEL_SERIALS)  # changes whenever the model does

    # --- facts ---------------------------------------------------------------------------------
    @property
    def codec_metric(self) -> str:
        """The metric the codec's tables use: "l2", or "ip" for inner product and cosine."""
        return "l2" if self.metric == "l2" else "ip"

    @property
    def nlist(self) -> int:
        return 1

    @property
    def ntotal(self) -> int:
        """Live vectors (encoded, or raw while untrained)."""
        return sum(s.nlive for s in self.segments) + self._growing.nlive

    @property
    def is_trained(self) -> bool:
        return self.codec.is_trained and self._extra_trained()

    def _extra_trained(self) -> bool:
        return True

    def _stores_norms(self) -> bool:
        """Whether rows carry a stored ||x_hat||^2 (additive codecs of a flat index under L2)."""
        return False

    def needs_bias(self) -> bool:
        """Whether every row of a sealed segment carries a scan bias even when nothing is deleted (stored
        norms; a fast-scan segment keeps its terms in per-list tables instead, and raw rows, before
        training, have none)."""
        return self.is_trained and self.norms is not None and not self.fast_scan

    @property
    def code_size(self) -> int:
        """Bytes stored per vector: one code element per sub-code (1 or 2 bytes), or half a byte in the
        fast-scan layout, plus the norm when kept."""
        if self.fast_scan:
            return (self.codec.M + 1) // 2
        itemsize = np.dtype(self.codec.code_dtype).itemsize
        return self.codec.M * itemsize + (self.norms.nbytes if self.norms is not None else 0)

    @property
    def ids(self) -> np.ndarray:
        """Every live id (an O(ntotal) copy, in segment order)."""
        parts = [s.ids[s.live_rows()] for s in self.segments]
        parts.append(self._growing.ids[self._growing.live_slots()])
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def fingerprint(self) -> str:
        """Hash of the trained model (codebooks, rotation, centroids and parameters): equal fingerprints
        mean interchangeable codes."""
        self._require_trained()
        if self._fingerprint is None:
            attrs, arrays = self.model_state()
            arrays.pop("labels", None)  # labels name classes; they do not change what a code means
            h = hashlib.sha256(repr(sorted(attrs.items())).encode())
            for name in sorted(arrays):
                a = np.ascontiguousarray(arrays[name])
                h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
                h.update(a.tobytes())
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    def memory_usage(self) -> dict[str, int]:
        """Bytes held in memory: ``model``, ``sealed`` segments, ``growing`` segment and ``total``."""
        _, arrays = self.model_state() if self.is_trained else ({}, {})
        out = {"model": int(sum(np.asarray(a).nbytes for a in arrays.values())),
               "sealed": sum(s.memory_usage() for s in self.segments), "growing": self._growing.memory_usage()}
        out["total"] = sum(out.values())
        return out

    def info(self) -> dict[str, Any]:
        """Facts for humans and services: spec, sizes, segments, deleted rows, memory."""
        return {"type": self.index_type, "spec": self.spec, "metric": self.metric, "d": self.d,
                "trained": self.is_trained, "ntotal": self.ntotal, "code_size": self.code_size,
                "codec": type(self.codec).__name__, "rerank": self.rerank, "segments": len(self.segments),
                "growing": self._growing.nlive, "deleted": sum(s.ndeleted for s in self.segments),
                "memory_bytes": self.memory_usage()["total"]}

    # --- input handling ------------------------------------------------------------------------
    def prepare(self, x: Any, name: str = "x") -> np.ndarray:
        """``x`` checked and converted as this index stores it: float32 (n, d), finite, and unit-norm
        under the cosine metric. Raises a subclass of AnnvqError naming the problem."""
        x = as_vectors(x, self.d, name)
        if self.metric == "cosine":
            n = np.linalg.norm(x, axis=1, keepdims=True)
            if (n == 0).any():
                raise InvalidInputError(f"{name}: zero vector has no direction under the cosine metric "
                                        f"(row {int(np.flatnonzero(n[:, 0] == 0)[0])})")
            x = np.ascontiguousarray(x / n, dtype=np.float32)
        return x

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise NotTrainedError(f"{type(self).__name__} is not trained ({self.ntotal} raw vectors waiting): "
                                  "call train() first")

    def _view(self) -> list[Segment | GrowingSegment]:
        """The segments a search or lookup visits, in label order (sealed, then the growing one)."""
        return [*self.segments, self._growing] if self._growing.n else list(self.segments)

    def locate(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(segment position, row)`` of each id in :meth:`_view` order; -1, -1 where absent."""
        ids = as_id_array(ids)
        if ids.shape[0] == 1:  # one id: scalar lookups, segment by segment
            i = int(ids[0])
            for pos, s in enumerate(self._view()):
                found = s.lookup_one(i)
                if found >= 0:
                    return np.array([pos], dtype=np.int64), np.array([found], dtype=np.int64)
            return np.full(1, -1, dtype=np.int64), np.full(1, -1, dtype=np.int64)
        seg = np.full(ids.shape[0], -1, dtype=np.int64)
        row = np.full(ids.shape[0], -1, dtype=np.int64)
        todo = np.arange(ids.shape[0])
        for pos, s in enumerate(self._view()):
            if not todo.size:
                break
            r = s.lookup(ids[todo])
            hit = r >= 0
            seg[todo[hit]], row[todo[hit]] = pos, r[hit]
            todo = todo[~hit]
        return seg, row

    def _locate_all(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`locate` for ids that must all be stored: UnknownIdError naming the missing ones."""
        seg, row = self.locate(ids)
        if (seg < 0).any():
            missing_ids(ids, ids[seg >= 0])
        return seg, row

    def contains(self, ids: Any) -> np.ndarray:
        """Boolean mask: which of ``ids`` are stored (live)."""
        return self.locate(ids)[0] >= 0

    def next_free_ids(self, n: int) -> np.ndarray:
        """The ids ``add(x)`` would give ``n`` new vectors: counting up from one past the largest id ever
        added; when that would pass 2**63 - 1, the smallest ids not in use."""
        if self._next_id + n - 1 <= _MAX_ID:
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        used = np.sort(self.ids)
        free: list[np.ndarray] = []
        prev, need = -1, n
        for u in [*used.tolist(), _MAX_ID + 1]:
            gap = u - prev - 1
            if gap > 0:
                take = min(gap, need)
                free.append(np.arange(prev + 1, prev + 1 + take, dtype=np.int64))
                need -= take
                if not need:
                    return np.concatenate(free)
            prev = u
        raise InvalidInputError(f"ids: fewer than {n} unused ids remain")

    def _new_ids(self, ids: Any, n: int) -> np.ndarray:
        if ids is None:
            return self.next_free_ids(n)
        ids = as_ids(ids, n)
        if ids.size and ids.min() < 0:
            raise InvalidInputError("ids: must be non-negative (-1 marks an empty result slot)")
        if ids.size and ids.min() >= self._next_id:  # past every id ever added: none can be stored
            return ids
        clash = ids[self.contains(ids)]
        if clash.size:
            raise DuplicateIdError(f"ids already in the index: {', '.join(map(str, clash[:10]))}")
        return ids

    # --- the public API ------------------------------------------------------------------------
    def train(self, x: Any = None) -> BaseIndex:
        """Train the model on ``x`` (default: the raw vectors added so far, or the kept exact vectors).

        An index that already holds vectors is retrained: a new model is trained and every vector is
        re-encoded, from its exact value where the index has it (raw vectors, ``Refine``), otherwise
        from its reconstruction; :attr:`reencoded_from` tells which.
        """
        if not self.ntotal:  # nothing to re-encode: train this model (and the codec given to it) in place
            if x is None:
                x = self._exact_training_vectors()
            self._fit_model(self.prepare(x, "x"))
            return self
        new = self.retrained(x)
        storage = self.storage
        vars(self).update(vars(new))
        self.storage = storage
        return self

    def retrained(self, x: Any = None) -> BaseIndex:
        """A new index with a model trained on ``x`` and this index's vectors re-encoded (see :meth:`train`).

        Reads only sealed segments and the growing segment's rows present when called, so it may run
        outside any lock while writes continue on this index (they must then be replayed on the result).
        """
        if x is None:
            x = self._exact_training_vectors()
        x = self.prepare(x, "x")
        new = self.empty_like()
        new._fit_model(x)
        new._next_id, new._next_seg_id = self._next_id, self._next_seg_id
        source = None
        for ids, vectors, exact in self.iter_vectors():
            new._add_rows(new._encode(vectors, ids))
            source = "exact" if exact else "reconstructed"
        new.reencoded_from = source
        new._next_id = self._next_id
        return new

    def _fit_model(self, x: np.ndarray) -> None:
        """Train the model of an empty index on prepared vectors."""
        self._train_model(x)
        if self.norms is not None:
            self.norms.fit(self._norm_values(self.codec.encode(x)))
        self._growing = self._new_growing()
        self._fingerprint = None
        self._model_serial = next(_MODEL_SERIALS)

    def _exact_training_vectors(self) -> np.ndarray:
        parts = [x for _, x, exact in self.iter_vectors() if exact]
        if not parts:
            raise InvalidInputError("train: no training vectors given and the index holds no exact vectors "
                                    "to train on (add vectors before training, or pass x)")
        return np.concatenate(parts)

    def empty_like(self) -> BaseIndex:
        """An untrained, empty index with the same type, codec parameters and options."""
        new = self._construct_like()
        new.spec, new.seal_rows, new.merge_policy, new.auto_compact = (
            self.spec, self.seal_rows, self.merge_policy, self.auto_compact)
        return new

    def iter_vectors(self, batch: int = _REENCODE_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        """``(ids, vectors, exact)`` batches of every live vector: exact ones where the index keeps them
        (raw, or ``Refine``), else reconstructions from the codes."""
        segments: list[Segment | GrowingSegment] = [*self.segments, self._growing]
        for seg in segments:
            rows = seg.live_rows() if isinstance(seg, Segment) else seg.live_slots()
            for s in range(0, rows.shape[0], batch):
                r = rows[s : s + batch]
                if self._keeps_vectors():
                    yield seg.ids[r], seg.read_vectors(r), True
                else:
                    yield seg.ids[r], self._decode_rows(seg.codes_at(r), seg.lists_of(r)), False

    def _keeps_vectors(self) -> bool:
        """Whether rows carry exact vectors: raw rows before training, and ``Refine`` indexes."""
        return self.rerank or not self.is_trained

    def encode(self, x: Any) -> Encoded:
        """Vectors checked and encoded by this index's model, ready for :meth:`add`; changes nothing.

        Encoding is the costly part of an add and reads only the model, so callers that serialise
        writes (a service) can encode outside their lock, several batches at a time.
        """
        x = self.prepare(x, "x")
        with single_blas_thread(x.shape[0]):
            return Encoded(x, self._encode(x, np.empty(0, np.int64)), self._model_serial)

    def check_add(self, x: Any, ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, ids)`` as :meth:`add` would store them, or the error it would raise; changes nothing.

        For callers that record an operation (a write-ahead log) before applying it. ``x`` may be an
        :class:`Encoded` batch.
        """
        x = x.vectors if isinstance(x, Encoded) else self.prepare(x, "x")
        return x, self._new_ids(ids, x.shape[0])

    def check_remove(self, ids: Any) -> np.ndarray:
        """The ids :meth:`remove` would delete, or the error it would raise; changes nothing."""
        ids = as_id_array(ids)
        if not ids.size:
            raise InvalidInputError("ids: empty list")
        if not all_unique(ids):
            raise InvalidInputError("ids: repeated ids in one remove call")
        found = self.contains(ids)
        if not found.all():
            missing_ids(ids, ids[found])
        return ids

    def add(self, x: Any, ids: Any = None) -> np.ndarray:
        """Store vectors (or a batch from :meth:`encode`); returns their external ids (counting up when
        ``ids`` is None).

        Before training they are kept raw and encoded by :meth:`train`. Costs O(len(x)) whatever the
        size of the index.
        """
        batch = x if isinstance(x, Encoded) and x.model == self._model_serial else \
            self.encode(x.vectors if isinstance(x, Encoded) else x)
        new_ids = self._new_ids(ids, batch.vectors.shape[0])
        self._add_rows(replace(batch.rows, ids=new_ids))
        return new_ids

    def _add_rows(self, rows: Rows) -> None:
        self._next_id = max(self._next_id, int(rows.ids.max()) + 1)
        if rows.ids.shape[0] >= self.seal_rows:
            order = np.argsort(rows.lists, kind="stable")
            offsets = np.concatenate([[0], np.cumsum(np.bincount(rows.lists, minlength=self._nlist_now()))])
            self._append_segment(self._segment_from_rows(rows.take(order), offsets.astype(np.int64)))
            return
        self._growing.append(rows)
        if self._growing.n >= self.seal_rows:
            self.seal()

    def _segment_from_rows(self, rows: Rows, offsets: np.ndarray) -> Segment:
        seg_id = self._next_seg_id
        self._next_seg_id += 1
        return self._pack(Segment(seg_id, rows.ids, rows.codes, offsets, rows.bias, rows.norms,
                                  None if rows.vectors is None else MemoryVectors(rows.vectors)))

    def _pack(self, seg: Segment) -> Segment:
        """A sealed segment of a fast-scan index holds its codes packed (and no scan bias: its lists'
        terms are in the per-list tables, its deletions in the live bits)."""
        if self.fast_scan and seg.packed is None and seg.codes is not None and self.is_trained:
            seg.packed = FastScanLists.from_codes(seg.codes, seg.offsets, seg.deleted)
            seg.codes, seg.bias = None, np.empty(0, np.float32)
        return seg

    def _append_segment(self, seg: Segment) -> None:
        self.segments.append(seg)
        if self.auto_compact:
            self.compact()

    def seal(self) -> Segment | None:
        """Turn the growing segment into a sealed one (None when it holds nothing)."""
        g = self._growing
        if not g.n:
            return None
        self._growing = self._new_growing()
        if not g.nlive:
            return None
        seg = self._pack(g.seal(self._next_seg_id, self.needs_bias()))
        self._next_seg_id += 1
        self._append_segment(seg)
        return seg

    def _new_growing(self) -> GrowingSegment:
        trained = self.is_trained
        nlist = self._nlist_now()
        # chunks of about twice the rows a list gets before the segment is sealed: few chunks per probed
        # list to scan, and at most one partly filled chunk per list of slack
        chunk_rows = 1 << int(np.clip(np.log2(max(1, 2 * self.seal_rows // nlist)), 4, 10))
        return GrowingSegment(nlist, self.codec.M if trained else 0, self.codec.code_dtype if trained else np.uint8,
                              self.d, self._keeps_vectors(),
                              self.norms.dtype if self.norms is not None and trained else None, chunk_rows)

    def _nlist_now(self) -> int:
        """Lists of the rows being stored: ``nlist`` once trained, one list of raw rows before."""
        return self.nlist if self.is_trained else 1

    def search(self, xq: Any, k: int = 10, params: SearchParams | dict[str, Any] | None = None,
               **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)`` of shape (nq, k): distances and external ids, best first; -1 ids pad short results.

        L2 gives squared distances (ascending); ip and cosine give similarities (descending). Search
        parameters come as ``params`` (this index type's :attr:`params_type`, or a dict) or keywords.
        """
        p = parse_params(self.params_type, params, kwargs, f"a {self.index_type} index")
        self._require_trained()
        return self._search(self.prepare(xq, "xq"), check_k(k), p, None)

    def _search(self, xq: np.ndarray, k: int, p: SearchParams, assigned: tuple[np.ndarray, np.ndarray] | None
                ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` of prepared queries; ``assigned``: the coarse ``(scores, lists)`` when already known."""
        rerank = self._reranks(p)
        if rerank and not self.rerank:
            raise InvalidInputError("rerank: this index keeps no exact vectors (build it with Refine)")
        if p.rescore and not self.fast_scan:
            raise InvalidInputError("rescore: only fast-scan indexes (PQ<M>x4fs) rank by quantised tables")
        # codecs whose tables only approximate decode() (QINCo) re-rank by the decoded vectors instead
        decoded = self.codec.rerank_decoded and not rerank
        default_factor = self.k_factor if rerank else getattr(self.codec, "k_factor", 1)
        kk = k * (p.k_factor or default_factor) if rerank or decoded else k
        # fast-scan ranks by quantised distances; with rescore, the best k_factor * k are re-scored by
        # the float tables inside the scan, and the best k of those kept
        depth = k * (p.k_factor or _RESCORE_FACTOR) if self._rescores(p) else kk
        view = self._view()
        with single_blas_thread(xq.shape[0]):
            rd, ri, cnt, thresh = topk_init(xq.shape[0], depth)
            self._scan(xq, view, (rd, ri, cnt, thresh), depth, p, assigned)
            D, L = topk_finish_batch(rd, ri, cnt, kk)
            if rerank or decoded:
                D, L = self._rerank(xq, view, L, k, exact=rerank)
        I = _ids_of_labels(view, L)
        if self.metric != "l2":
            D = -D
        D[I < 0] = np.inf if self.metric == "l2" else -np.inf
        return D, I

    def _reranks(self, p: SearchParams) -> bool:
        """Whether a search with ``p`` re-ranks its candidates by the exact vectors."""
        return self.rerank if p.rerank is None else bool(p.rerank)

    def _rescores(self, p: SearchParams) -> bool:
        """Whether a fast-scan search with ``p`` re-scores its best quantised candidates with the float
        tables; with exact re-ranking the quantised best go straight to the exact vectors."""
        return self.fast_scan and bool(p.rescore) and not self._reranks(p)

    def _rerank(self, xq: np.ndarray, view: list, labels: np.ndarray, k: int,
                exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Distances of the candidate labels to their exact vectors (or, ``exact=False``, to their decoded
        codes); the best ``k`` per query."""
        use_ip = self.metric != "l2"
        dist = np.full(labels.shape, np.inf, dtype=np.float32)
        segpos = np.where(labels >= 0, labels >> ROW_BITS, -1)
        for pos, seg in enumerate(view):
            mask = segpos == pos
            if not mask.any():
                continue
            held = seg.held_vectors(np.where(mask, labels & ROW_MASK, -1)) if exact else None
            if held is None:  # decoded, or read from a file: each row once
                rows, inv = np.unique(labels[mask] & ROW_MASK, return_inverse=True)
                vectors = seg.read_vectors(rows) if exact else self._decode_rows(seg.codes_at(rows), seg.lists_of(rows))
                where = np.full(labels.shape, -1, dtype=np.int64)
                where[mask] = inv
                held = (vectors, where)
            part = exact_distances(xq, *held, use_ip)
            dist = part if len(view) == 1 else np.where(mask, part, dist)
        return best_k_stable(dist, labels, k)

    def remove(self, ids: Any) -> int:
        """Delete vectors by external id; unknown or repeated ids raise before anything changes.

        Costs O(len(ids) * segments): the rows are marked deleted, and merges reclaim their space.
        """
        ids = as_id_array(ids)
        if not all_unique(ids):
            raise InvalidInputError("ids: repeated ids in one remove call")
        seg, row = self._locate_all(ids)
        view = self._view()
        for pos in np.unique(seg):
            view[pos].delete_rows(row[seg == pos])
        return int(ids.shape[0])

    def reconstruct(self, id: int) -> np.ndarray:
        """Decoded vector (d,) for one external id."""
        return self.reconstruct_batch([id])[0]

    def reconstruct_batch(self, ids: Any) -> np.ndarray:
        """Vectors for ``ids``: decoded from their codes (raw vectors while untrained)."""
        ids = as_id_array(ids)
        seg, row = self._locate_all(ids)
        out = np.empty((ids.shape[0], self.d), dtype=np.float32)
        view = self._view()
        if not self.is_trained:
            return self.fetch(ids)[0]
        for pos in np.unique(seg):
            s, r = view[pos], row[seg == pos]
            out[seg == pos] = self._decode_rows(s.codes_at(r), s.lists_of(r))
        return out

    def fetch(self, ids: Any) -> tuple[np.ndarray, bool]:
        """``(vectors, exact)`` for ``ids``: the exact vectors where the index keeps them (raw before
        training, ``Refine``), else reconstructions from the codes."""
        if not self._keeps_vectors():
            return self.reconstruct_batch(ids), False
        ids = as_id_array(ids)
        seg, row = self._locate_all(ids)
        out = np.empty((ids.shape[0], self.d), dtype=np.float32)
        view = self._view()
        for pos in np.unique(seg):
            s, r = view[pos], row[seg == pos]
            order = np.argsort(r)
            got = np.empty((r.shape[0], self.d), dtype=np.float32)
            got[order] = s.read_vectors(r[order])
            out[seg == pos] = got
        return out, True

    def compact(self, full: bool = False) -> int:
        """Merge sealed segments as the merge policy says (all into one when ``full``, which seals the
        growing segment first); returns how many merges ran."""
        if full:
            self.seal()
        groups = self.plan_compaction(full=full)
        for members in groups:
            self.commit_merge(members, *self.merge_segments(members))
        return len(groups)

    def plan_compaction(self, full: bool = False) -> list[list[Segment]]:
        """The merges :meth:`compact` would run, as groups of sealed segments."""
        return [[self.segments[i] for i in g] for g in self.merge_policy.plan(self.segments, full=full)]

    def merge_segments(self, group: list[Segment]) -> tuple[Segment, list[np.ndarray]]:
        """One sealed segment with the live rows of ``group``, in list order, and the deleted rows of each
        member it saw. Reads only; safe outside a lock while writes continue (pass both to
        :meth:`commit_merge`)."""
        seen = [s.dead_rows() for s in group]  # one reading of each tombstone set, for live rows and commit
        parts = [(s, np.setdiff1d(np.arange(s.n), dead, assume_unique=True)) for s, dead in zip(group, seen)]
        lists = np.concatenate([s.lists()[r] for s, r in parts])
        order = np.argsort(lists, kind="stable")
        cat = lambda f: np.concatenate([f(s, r) for s, r in parts])[order]  # noqa: E731
        ids = cat(lambda s, r: s.ids[r])
        codes = cat(lambda s, r: s.codes_at(r))
        bias = cat(lambda s, r: s.bias[r]) if self.needs_bias() else np.empty(0, np.float32)
        norms = cat(lambda s, r: s.norms[r]) if self.norms is not None and self.is_trained else None
        vectors = MemoryVectors(cat(lambda s, r: s.read_vectors(r))) if self._keeps_vectors() else None
        offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=group[0].nlist))]).astype(np.int64)
        seg_id = self._next_seg_id
        self._next_seg_id += 1
        return self._pack(Segment(seg_id, ids, codes, offsets, bias, norms, vectors)), seen

    def commit_merge(self, group: list[Segment], merged: Segment, seen: list[np.ndarray]) -> None:
        """Replace ``group`` by ``merged``, carrying over the rows deleted since the merge read them."""
        for s, dead_then in zip(group, seen):
            late = np.setdiff1d(s.dead_rows(), dead_then, assume_unique=True)
            rows = merged.lookup(s.ids[late]) if late.size else late
            if (rows >= 0).any():
                merged.delete_rows(rows[rows >= 0])
        pos = min(self.segments.index(s) for s in group)
        kept = [s for s in self.segments if all(s is not g for g in group)]
        kept.insert(min(pos, len(kept)), merged)
        self.segments = [s for s in kept if s.n]

    def frozen(self) -> BaseIndex:
        """A read-only snapshot of the current vectors for background work (retraining): the growing
        segment is sealed, and the snapshot shares the sealed rows with this index but keeps its own
        deletion marks, so later writes to this index do not show through it."""
        self.seal()
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.segments = [s.snapshot() for s in self.segments]
        view._growing = self._new_growing()
        return view

    def save(self, path: Any) -> Any:
        """Write the index to a directory (see :mod:`annvq.storage`); to its own directory, only what
        changed since the last save is written. Returns what was written (files, bytes)."""
        from ..storage import save

        return save(self, path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(codec={self.codec!r}, metric={self.metric!r}, ntotal={self.ntotal})"

    # --- persistence: the model, and segments from stored columns --------------------------------
    def model_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(attrs, arrays)`` describing the model: index parameters, codec state, coarse arrays."""
        params, codec_arrays = self.codec.get_state()
        attrs: dict[str, Any] = {"index_type": self.index_type, "metric": self.metric, "d": self.d,
                                 "spec": self.spec or "", "rerank": self.rerank, "k_factor": self.k_factor,
                                 "fast_scan": self.fast_scan, "codec": params, **self._extra_attrs()}
        if self.norms is not None:
            attrs.update(norm_bits=self.norms.nbits, norm_min=self.norms.vmin, norm_max=self.norms.vmax)
        arrays = {f"codec_{k}": v for k, v in codec_arrays.items()}
        arrays.update(self._extra_arrays())
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels, dtype=np.int64)
        return attrs, arrays

    def untrained_state(self) -> dict[str, Any]:
        """Parameters of an untrained index (codec parameters without learned arrays)."""
        return {"index_type": self.index_type, "metric": self.metric, "d": self.d, "spec": self.spec or "",
                "rerank": self.rerank, "k_factor": self.k_factor, "fast_scan": self.fast_scan,
                "codec": {"kind": self.codec.kind, **self.codec.get_params()},
                "norm_bits": self.norms.nbits if self.norms is not None else None, **self._extra_attrs()}

    @staticmethod
    def from_state(attrs: dict[str, Any], arrays: dict[str, np.ndarray] | None) -> BaseIndex:
        """An empty index from :meth:`model_state` (trained) or :meth:`untrained_state` (``arrays`` None).

        Every parameter and array is checked; a bad one raises FormatError naming it.
        """
        if not isinstance(attrs, dict) or not isinstance(attrs.get("codec"), dict):
            raise FormatError("index attributes: not a mapping with codec parameters")
        cls = index_class(str(attrs.get("index_type")))
        try:
            if arrays is None:
                codec = Quantizer.from_params(attrs["codec"])
            else:
                codec = Quantizer.from_state(attrs["codec"], {k[6:]: v for k, v in arrays.items()
                                                              if k.startswith("codec_")})
            index = cls._from_attrs(codec, attrs)
            index.spec = str(attrs.get("spec") or "") or None
            if int(attrs["d"]) != index.d:
                raise FormatError(f"d={attrs['d']} does not match the codec's d={index.d}")
            if arrays is not None:
                index._set_extra_arrays(arrays)
                if "labels" in arrays:
                    labels = np.asarray(arrays["labels"])
                    if labels.ndim != 1 or labels.dtype.kind not in "iu":
                        raise FormatError(f"labels: expected a 1-D integer array, got {labels.dtype} of shape "
                                          f"{labels.shape}")
                    index.labels = labels.astype(np.int64)
                if index.norms is not None:
                    index.norms = NormCodec(int(attrs["norm_bits"]), float(attrs["norm_min"]),
                                            float(attrs["norm_max"]))
                    if not (np.isfinite(index.norms.vmin) and np.isfinite(index.norms.vmax)
                            and index.norms.vmin <= index.norms.vmax):
                        raise FormatError("norm range: not finite or min > max")
                index._growing = index._new_growing()
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, AnnvqError) as exc:
            raise FormatError(f"index parameters: {type(exc).__name__}: {exc}") from None
        return index

    def segment_columns(self, seg: Segment) -> dict[str, Any]:
        """What storage writes for a sealed segment: ids, codes, offsets, norms; vectors as a source."""
        cols: dict[str, Any] = {"ids": seg.ids, "offsets": seg.offsets}
        if seg.packed is not None:
            cols["packed"] = seg.packed.packed
        else:
            cols["codes"] = seg.codes
        if seg.norms is not None:
            cols["norms"] = seg.norms
        if seg.vectors is not None:
            cols["vectors"] = seg.vectors
        return cols

    def segment_from_columns(self, seg_id: int, cols: dict[str, Any], dead: np.ndarray) -> Segment:
        """A sealed segment from stored columns (``vectors`` may be a lazy source), with every invariant
        the scans rely on checked; raises FormatError naming the broken one."""
        trained = self.is_trained
        ids = _column(cols, "ids", np.int64, 1)
        n = ids.shape[0]
        if n and ids.min() < 0:
            raise FormatError("ids: negative id stored")
        if not all_unique(ids):
            raise FormatError("ids: repeated within a segment")
        M = self.codec.M if trained else 0
        offsets = _column(cols, "offsets", np.int64, 1)
        nlist = self._nlist_now()
        if offsets.shape != (nlist + 1,) or offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 0).any():
            raise FormatError(f"offsets: not {nlist + 1} non-decreasing list offsets from 0 to {n}")
        packed = None
        if self.fast_scan and trained:
            try:  # every 4-bit value is a valid code: the layout's shape is all there is to check
                packed = FastScanLists(_column(cols, "packed", np.dtype(np.uint8), 2), offsets,
                                       np.zeros(block_offsets(offsets)[-1], np.uint32), M)
            except InvalidInputError as exc:
                raise FormatError(f"packed: {exc}") from None
            packed.alive[:] = alive_bits(packed.offsets, packed.boffsets, np.zeros(0, dtype=bool))
            codes = None
        else:
            codes = _column(cols, "codes", np.dtype(self.codec.code_dtype) if trained else np.uint8, 2)
            if codes.shape != (n, M):
                raise FormatError(f"codes: shape {codes.shape}, expected ({n}, {M})")
            if trained and n and int(codes.max()) >= self.codec.ksub:
                raise FormatError(f"codes: values >= {self.codec.ksub}")
        norms = None
        if self.norms is not None and trained:
            norms = _column(cols, "norms", np.dtype(self.norms.dtype), 1)
            if norms.shape != (n,) or (norms.dtype.kind == "f" and not np.isfinite(norms).all()):
                raise FormatError("norms: wrong shape or not finite")
        vectors = cols.get("vectors")
        if self._keeps_vectors():
            if vectors is None:
                raise FormatError("vectors: this index keeps exact vectors but the segment has none")
            if isinstance(vectors, np.ndarray):
                if vectors.shape != (n, self.d) or vectors.dtype != np.float32 or not np.isfinite(vectors).all():
                    raise FormatError(f"vectors: expected finite float32 ({n}, {self.d})")
                vectors = MemoryVectors(vectors)
        elif vectors is not None:
            raise FormatError("vectors: stored for an index that keeps none")
        dead = np.asarray(dead)
        if dead.size and (dead.dtype.kind not in "iu" or dead.min() < 0 or dead.max() >= n
                          or (np.diff(dead) <= 0).any()):
            raise FormatError("tombstones: not sorted, unique rows of the segment")
        bias = self._bias_of(codes, offsets, norms) if trained and codes is not None else np.empty(0, np.float32)
        return Segment(seg_id, ids, codes, offsets, bias, norms, vectors, dead.astype(np.int64), packed)

    def set_segments(self, segments: list[Segment], next_seg_id: int, next_id: int) -> None:
        """Install loaded segments (ids must be unique across them) and the counters storage kept."""
        all_ids = np.concatenate([s.ids[s.live_rows()] for s in segments]) if segments else np.empty(0, np.int64)
        if not all_unique(all_ids):
            raise FormatError("ids: the same id is live in two segments")
        if segments and next_seg_id <= max(s.seg_id for s in segments):
            raise FormatError("next segment id is not above the stored segments' ids")
        if all_ids.size and next_id <= int(all_ids.max()) and next_id <= _MAX_ID:
            raise FormatError("next id is not above the stored ids")
        self.segments = [self._pack(seg) for seg in segments]  # a fast-scan index scans packed segments
        self._growing = self._new_growing()
        self._next_seg_id, self._next_id = int(next_seg_id), int(next_id)

    @property
    def next_segment_id(self) -> int:
        return self._next_seg_id

    @property
    def next_id(self) -> int:
        return self._next_id

    # --- what subclasses provide ---------------------------------------------------------------
    @abstractmethod
    def _construct_like(self) -> BaseIndex:
        """An untrained, empty index with this one's constructor parameters."""

    @abstractmethod
    def _train_model(self, x: np.ndarray) -> None:
        """Train the codec (and any coarse quantizer) on prepared vectors."""

    @abstractmethod
    def _encode_trained(self, x: np.ndarray, ids: np.ndarray) -> Rows:
        """Rows for prepared vectors with a trained model."""

    def _encode(self, x: np.ndarray, ids: np.ndarray) -> Rows:
        if not self.is_trained:
            n = x.shape[0]
            return Rows(ids, np.zeros(n, np.int64), np.empty((n, 0), np.uint8), np.empty(0, np.float32), None, x)
        return self._encode_trained(x, ids)

    @abstractmethod
    def _bias_of(self, codes: np.ndarray, offsets: np.ndarray, norms: np.ndarray | None) -> np.ndarray:
        """Per-row scan bias of stored rows (empty when the index needs none)."""

    @abstractmethod
    def _decode_rows(self, codes: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """Reconstructions of rows from their codes and list numbers."""

    @abstractmethod
    def _scan(self, xq: np.ndarray, view: list, state: tuple, k: int, params: SearchParams,
              assigned: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Offer the rows of every segment of ``view`` to the reservoirs ``state`` (labels by position);
        ``assigned``: the coarse ``(scores, lists)`` of an inverted-file index, when the caller has them."""

    def _norm_values(self, codes: np.ndarray) -> np.ndarray:
        xh = self.codec.table_decode(codes)
        return np.einsum("ij,ij->i", xh, xh)

    @classmethod
    @abstractmethod
    def _from_attrs(cls, codec: Quantizer, attrs: dict[str, Any]) -> BaseIndex:
        """An index around ``codec`` with the parameters in ``attrs`` (as :meth:`model_state` wrote them)."""

    def _extra_attrs(self) -> dict[str, Any]:
        return {}

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_extra_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`_extra_arrays` returned (coarse centroids...); by default there is nothing."""
        return None


def _column(cols: dict[str, Any], name: str, dtype: npt.DTypeLike, ndim: int) -> np.ndarray:
    if name not in cols:
        raise FormatError(f"{name}: missing")
    a = cols[name]
    if not isinstance(a, np.ndarray) or a.dtype != np.dtype(dtype) or a.ndim != ndim:
        got = f"{a.dtype} {a.ndim}-D" if isinstance(a, np.ndarray) else type(a).__name__
        raise FormatError(f"{name}: expected {np.dtype(dtype)} {ndim}-D, got {got}")
    return a


def _ids_of_labels(view: list, labels: np.ndarray) -> np.ndarray:
    """External ids of result labels ((segment position << ROW_BITS) | row); -1 stays -1."""
    if len(view) == 1:  # one segment: labels are its rows
        ids = view[0].ids
        return np.where(labels >= 0, ids[np.maximum(labels, 0) & ROW_MASK], -1) if ids.size else \
            np.full(labels.shape, -1, dtype=np.int64)
    out = np.full(labels.shape, -1, dtype=np.int64)
    segpos = np.where(labels >= 0, labels >> ROW_BITS, -1)
    for pos, seg in enumerate(view):
        mask = segpos == pos
        if mask.any():
            out[mask] = seg.ids[labels[mask] & ROW_MASK]
    return out


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def as_id_array(ids: Any) -> np.ndarray:
    """Ids to look up or delete, as a 1-D int64 array; non-integer input raises."""
    arr = np.atleast_1d(np.asarray(ids))
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InvalidInputError(f"ids: expected a 1-D sequence of integer ids, got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.int64)


def index_class(index_type: str) -> type[BaseIndex]:
    try:
        return _INDEX_TYPES[index_type]
    except KeyError:
        raise FormatError(f"unknown index type {index_type!r}") from None
