"""The data of an index: a list of segments sharing one trained model.

A :class:`Segment` is sealed: its rows (ids, codes, per-row scan bias, optional exact vectors) are
grouped by list and never change, except that rows can be marked deleted (a tombstone). A deleted
row's scan bias is +inf, so the scan kernels never admit it and a search still returns k results
when k live vectors exist. The :class:`GrowingSegment` takes new rows in O(batch) per add, appending
them to per-list chains of fixed-size chunks; sealing it copies its rows into list order.

Rows are found by external id without touching other segments: a sealed segment keeps its ids
sorted (computed on first lookup), the growing segment a hash map.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidInputError
from ..kernels.segments import append_rows, chain_order, chunks_needed

ROW_BITS = 40  # a result label is (segment position << ROW_BITS) | row
ROW_MASK = (1 << ROW_BITS) - 1


class VectorSource(Protocol):
    """Exact vectors of a sealed segment: in memory, or read on demand from a stored file."""

    in_memory: bool
    n: int
    d: int

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Vectors (len(rows), d) float32 at sorted, unique ``rows``."""
        ...

    def close(self) -> None: ...


class MemoryVectors:
    """Exact vectors held in a NumPy array."""

    in_memory = True

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.n, self.d = vectors.shape

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.vectors[rows]

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes)

    def close(self) -> None:
        pass


@dataclass
class Rows:
    """New rows encoded by an index, ready to append: one entry per vector, in input order."""

    ids: np.ndarray  # int64
    lists: np.ndarray  # int64 list numbers (0 for a flat index)
    codes: np.ndarray  # (n, M)
    bias: np.ndarray  # float32 scan bias, or empty when the index needs none
    norms: np.ndarray | None = None  # stored norm codes (flat additive codecs under L2)
    vectors: np.ndarray | None = None  # exact vectors when the index keeps them

    def take(self, order: np.ndarray) -> Rows:
        pick = lambda a: None if a is None else a[order]  # noqa: E731
        return Rows(self.ids[order], self.lists[order], self.codes[order],
                    self.bias[order] if self.bias.size else self.bias, pick(self.norms), pick(self.vectors))


def _extents_of_offsets(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(head, start, length, next)`` with one extent per non-empty list (see annvq.kernels.ivf)."""
    sizes = np.diff(offsets)
    nlist = sizes.shape[0]
    head = np.where(sizes > 0, np.arange(nlist, dtype=np.int64), -1)
    return head, offsets[:-1].astype(np.int64), sizes.astype(np.int64), np.full(nlist, -1, dtype=np.int64)


class Segment:
    """Sealed rows of an index, grouped by list: rows ``offsets[l]:offsets[l + 1]`` belong to list ``l``.

    ``bias`` is the per-row scan term (+inf for deleted rows), or empty while the index needs none and
    nothing is deleted. ``norms`` are stored norm codes (flat additive codecs), ``vectors`` the exact
    vectors when the index keeps them. ``seg_id`` names the segment in storage.
    """

    def __init__(self, seg_id: int, ids: np.ndarray, codes: np.ndarray | None, offsets: np.ndarray, bias: np.ndarray,
                 norms: np.ndarray | None = None, vectors: VectorSource | None = None,
                 deleted: np.ndarray | None = None, packed: Any = None) -> None:
        self.seg_id = int(seg_id)
        self.ids, self.codes, self.offsets = ids, codes, offsets
        self.packed = packed  # the codes in the fast-scan layout (annvq.index.fastscan.FastScanLists) instead
        self.bias, self.norms, self.vectors = bias, norms, vectors
        self.deleted: np.ndarray | None = None
        self.ndeleted = 0
        self.tomb_version = 0  # bumped on every delete; storage compares it with what it has written
        self.extents = _extents_of_offsets(offsets)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self.stored: Any = None  # the storage layer's record of this segment's file, once written
        if deleted is not None and deleted.size:
            self.delete_rows(deleted)
            self.tomb_version = 0

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nlive(self) -> int:
        return self.n - self.ndeleted

    @property
    def nlist(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def lists_of(self, rows: np.ndarray) -> np.ndarray:
        """List number of each row."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def lists(self) -> np.ndarray:
        """List number of every row (n,)."""
        return np.repeat(np.arange(self.nlist, dtype=np.int64), np.diff(self.offsets))

    def codes_at(self, rows: np.ndarray) -> np.ndarray:
        """Codes (len(rows), M) of ``rows``, unpacked from the fast-scan layout when the segment uses it."""
        if self.packed is not None:
            return self.packed.codes(rows)
        assert self.codes is not None
        return self.codes[rows]

    def read_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Exact vectors of sorted, unique ``rows`` (the index keeps them)."""
        assert self.vectors is not None
        return self.vectors.read(rows)

    def held_vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The in-memory array of exact vectors and the position in it of each of ``rows`` (any shape,
        -1 kept as -1), for reading them in place; None when they are read from a file."""
        if not isinstance(self.vectors, MemoryVectors):
            return None
        return self.vectors.vectors, rows

    def _by_id(self) -> tuple[np.ndarray, np.ndarray]:
        """The ids sorted, and the row of each (built on first use)."""
        if self._sorted is None:
            order = np.argsort(self.ids, kind="stable")
            self._sorted = (self.ids[order], order)
        return self._sorted

    def lookup_one(self, id: int) -> int:
        """:meth:`lookup` of a single id, without the array work (a reconstruct of one id is a loop
        of these over the segments)."""
        sorted_ids, order = self._by_id()
        p = int(sorted_ids.searchsorted(id))
        if p == sorted_ids.shape[0] or sorted_ids[p] != id:
            return -1
        row = int(order[p])
        return -1 if self.deleted is not None and self.deleted[row] else row

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id among the live rows, -1 where absent."""
        sorted_ids, order = self._by_id()
        if not sorted_ids.shape[0]:
            return np.full(ids.shape[0], -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.shape[0] - 1)
        rows = np.where(sorted_ids[pos] == ids, order[pos], -1)
        if self.deleted is not None:
            rows[(rows >= 0) & self.deleted[np.maximum(rows, 0)]] = -1
        return rows

    def delete_rows(self, rows: np.ndarray) -> None:
        """Mark live ``rows`` deleted: they stay stored but are never scanned or looked up again."""
        if self.deleted is None:
            self.deleted = np.zeros(self.n, dtype=bool)
        self.deleted[rows] = True
        if self.packed is not None:
            self.packed.delete(rows)  # its live bits are what its scan reads
        else:
            if not self.bias.size:
                self.bias = np.zeros(self.n, dtype=np.float32)
            self.bias[rows] = np.inf
        self.ndeleted = int(self.deleted.sum())
        self.tomb_version += 1

    def dead_rows(self) -> np.ndarray:
        """Sorted rows marked deleted (the tombstones)."""
        return np.empty(0, np.int64) if self.deleted is None else np.flatnonzero(self.deleted)

    def live_rows(self) -> np.ndarray:
        return np.arange(self.n) if self.deleted is None else np.flatnonzero(~self.deleted)

    def snapshot(self) -> Segment:
        """A view sharing this segment's rows but with its own copy of the deletion marks, so later
        deletes on this segment do not show through it."""
        view = object.__new__(Segment)
        view.__dict__.update(self.__dict__)
        view.bias = self.bias.copy()
        view.deleted = None if self.deleted is None else self.deleted.copy()
        if self.packed is not None:
            view.packed = copy.copy(self.packed)
            view.packed.alive = self.packed.alive.copy()
        return view

    def memory_usage(self) -> int:
        total = self.ids.nbytes + self.offsets.nbytes + self.bias.nbytes
        total += self.packed.nbytes if self.packed is not None else 0 if self.codes is None else self.codes.nbytes
        total += 0 if self.norms is None else self.norms.nbytes
        total += 0 if self.deleted is None else self.deleted.nbytes
        total += 0 if self._sorted is None else self._sorted[0].nbytes + self._sorted[1].nbytes
        if self.vectors is not None and self.vectors.in_memory:
            total += self.vectors.nbytes  # type: ignore[attr-defined]
        return int(total)

    def close(self) -> None:
        if self.vectors is not None:
            self.vectors.close()


class GrowingSegment:
    """Rows appended in O(batch): per-list chains of ``chunk_rows``-slot chunks in one growable arena.

    Slots past a chunk's fill are never scanned. Exact vectors, when kept, go to an append-order
    buffer with one pointer per slot, so chunk slack costs no vector memory.
    """

    def __init__(self, nlist: int, M: int, code_dtype: type, d: int, keep_vectors: bool, norm_dtype: type | None,
                 chunk_rows: int = 32) -> None:
        self.nlist, self.M, self.d, self.chunk_rows = nlist, M, d, chunk_rows
        self.head = np.full(nlist, -1, dtype=np.int64)
        self.tail = np.full(nlist, -1, dtype=np.int64)
        self.nchunks = 0
        self.n = 0  # rows appended (live and deleted)
        self.ndeleted = 0
        self._slot_of: dict[int, int] = {}
        cap = 4
        self.fill = np.zeros(cap, dtype=np.int64)
        self.nxt = np.full(cap, -1, dtype=np.int64)
        self.start = np.arange(cap, dtype=np.int64) * chunk_rows
        self.codes: np.ndarray = np.zeros((cap * chunk_rows, M), dtype=code_dtype)
        self.ids = np.full(cap * chunk_rows, -1, dtype=np.int64)
        self.bias = np.zeros(cap * chunk_rows, dtype=np.float32)
        self.norms: np.ndarray | None = None if norm_dtype is None else np.zeros(cap * chunk_rows, dtype=norm_dtype)
        self.vec_of_slot = np.full(cap * chunk_rows, -1, dtype=np.int64) if keep_vectors else None
        self.vectors = np.zeros((64 if keep_vectors else 0, d), dtype=np.float32)

    @property
    def nlive(self) -> int:
        return self.n - self.ndeleted

    @property
    def extents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.head, self.start, self.fill, self.nxt

    def _grow_chunks(self, need: int) -> None:
        cap = self.fill.shape[0]
        if self.nchunks + need <= cap:
            return
        new = max(2 * cap, self.nchunks + need)
        r = self.chunk_rows

        def grown(a: np.ndarray, size: int, value: float | int) -> np.ndarray:
            out = np.full((size,) + a.shape[1:], value, dtype=a.dtype)
            out[: a.shape[0]] = a
            return out

        self.fill = grown(self.fill, new, 0)
        self.nxt = grown(self.nxt, new, -1)
        self.start = np.arange(new, dtype=np.int64) * r
        self.codes = grown(self.codes, new * r, 0)
        self.ids = grown(self.ids, new * r, -1)
        self.bias = grown(self.bias, new * r, 0)
        if self.norms is not None:
            self.norms = grown(self.norms, new * r, 0)
        if self.vec_of_slot is not None:
            self.vec_of_slot = grown(self.vec_of_slot, new * r, -1)

    def append(self, rows: Rows) -> None:
        """Append encoded rows (ids already checked unique by the index)."""
        lists = np.ascontiguousarray(rows.lists, dtype=np.int64)
        if lists.size and (lists.min() < 0 or lists.max() >= self.nlist):  # the kernels index by list unchecked
            raise InvalidInputError(f"rows for lists {lists.min()}..{lists.max()} in a segment of {self.nlist} lists "
                                    "(the index was changed outside train())")
        self._grow_chunks(int(chunks_needed(lists, self.tail, self.fill, self.chunk_rows)))
        slots, self.nchunks = append_rows(lists, self.head, self.tail, self.fill, self.nxt, self.nchunks,
                                          self.chunk_rows)
        self.codes[slots] = rows.codes
        self.ids[slots] = rows.ids
        if rows.bias.size:
            self.bias[slots] = rows.bias
        if self.norms is not None:
            self.norms[slots] = rows.norms
        if self.vec_of_slot is not None:
            n0 = self.n
            if n0 + len(slots) > self.vectors.shape[0]:
                grown = np.zeros((max(2 * self.vectors.shape[0], n0 + len(slots)), self.d), dtype=np.float32)
                grown[:n0] = self.vectors[:n0]
                self.vectors = grown
            self.vectors[n0 : n0 + len(slots)] = rows.vectors
            self.vec_of_slot[slots] = np.arange(n0, n0 + len(slots))
        self._slot_of.update(zip(rows.ids.tolist(), slots.tolist()))
        self.n += len(slots)

    def lookup_one(self, id: int) -> int:
        """Slot of one live id, -1 where absent."""
        return self._slot_of.get(id, -1)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each live id, -1 where absent."""
        get = self._slot_of.get
        return np.fromiter((get(i, -1) for i in ids.tolist()), dtype=np.int64, count=ids.shape[0])

    def delete_rows(self, slots: np.ndarray) -> None:
        self.bias[slots] = np.inf
        for i in self.ids[slots].tolist():
            del self._slot_of[i]
        self.ndeleted += len(slots)

    def read_vectors(self, slots: np.ndarray) -> np.ndarray:
        assert self.vec_of_slot is not None  # the index keeps exact vectors
        return self.vectors[self.vec_of_slot[slots]]

    def held_vectors(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        assert self.vec_of_slot is not None
        return self.vectors, np.where(slots >= 0, self.vec_of_slot[np.maximum(slots, 0)], -1)

    def codes_at(self, slots: np.ndarray) -> np.ndarray:
        return self.codes[slots]

    def lists_of(self, slots: np.ndarray) -> np.ndarray:
        """List number of each slot (from its chunk's chain)."""
        owner = np.full(self.nchunks, -1, dtype=np.int64)
        for l in np.flatnonzero(self.head >= 0):
            c = self.head[l]
            while c >= 0:
                owner[c] = l
                c = self.nxt[c]
        return owner[slots // self.chunk_rows]

    def live_slots(self) -> np.ndarray:
        slots, _ = chain_order(self.head, self.fill, self.nxt, self.chunk_rows)
        return slots[np.isfinite(self.bias[slots])]

    def seal(self, seg_id: int, needs_bias: bool) -> Segment:
        """The live rows as a sealed segment in list order (deleted rows are dropped)."""
        slots, offsets = chain_order(self.head, self.fill, self.nxt, self.chunk_rows)
        live = np.isfinite(self.bias[slots])
        if not live.all():
            lists = np.repeat(np.arange(self.nlist), np.diff(offsets))[live]
            slots = slots[live]
            offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=self.nlist))]).astype(np.int64)
        vectors = None
        if self.vec_of_slot is not None:
            vectors = MemoryVectors(self.vectors[self.vec_of_slot[slots]])
        return Segment(seg_id, self.ids[slots], self.codes[slots], offsets,
                       self.bias[slots] if needs_bias else np.empty(0, np.float32),
                       None if self.norms is None else self.norms[slots], vectors)

    def memory_usage(self) -> int:
        total = sum(a.nbytes for a in (self.head, self.tail, self.fill, self.nxt, self.start, self.codes, self.ids,
                                       self.bias, self.vectors))
        total += 0 if self.norms is None else self.norms.nbytes
        total += 0 if self.vec_of_slot is None else self.vec_of_slot.nbytes
        return int(total + 100 * len(self._slot_of))  # a dict entry with two small ints: about 100 bytes
