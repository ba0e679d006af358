"""Inverted-file index: a coarse quantizer splits the space into ``nlist`` cells, residuals are encoded.

A vector x in list l is stored as the codes of its residual r = x - c_l. A query visits only the
``nprobe`` lists whose centroids score best. Under L2 the distance to a stored vector expands as

    ||q - c - r^||^2 = ||q - c||^2 + (||r^||^2 + 2 c.r^) - 2 q.r^

The first term is the coarse search's score, the middle one a float per stored vector (the bias,
computed exactly from the decoded residual when vectors are added or loaded), and the last one a
lookup table of the query alone ("ip" tables are linear in the query, so the tables of 2q give it).
So a query builds one table whatever ``nprobe`` and whatever the codec, and a probed list costs
only its scan. Under "ip", q.(c + r^) = q.c + q.r^: the same table plus a constant per list. For a
codec whose tables are affine in the code values (SQ, see ``Quantizer.linear_ip``) the table sum is
a dot product of the codes with one weight vector per query, which the scan computes with SIMD.

With ``rerank=True`` the exact vectors are kept as a per-vector column that :func:`annvq.load` leaves
on disk; search then re-ranks the best ``k_factor * k`` ADC candidates by their exact distance.
"""
from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from ..errors import AnnvqError, FormatError, InvalidInputError
from ..kernels.ivf import exact_distances, ivf_scan
from ..quantizers import Quantizer
from .base import BaseIndex
from .coarse import make_coarse

_TABLE_BYTES = 2 << 20  # lookup tables of one query block: small enough to stay in cache until scanned
_DECODE_ROWS = 65536  # rows decoded at a time when computing the biases


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted, unique) of an HDF5 dataset, one slice per chunk touched.

    HDF5 reads (and checksums) whole chunks, so a slice per chunk costs what the chunk costs, while
    h5py's fancy indexing adds a per-row selection overhead that dominates for thousands of rows.
    """
    out = np.empty((len(rows),) + ds.shape[1:], dtype=ds.dtype)
    step = ds.chunks[0] if ds.chunks else max(ds.shape[0], 1)
    chunk = rows // step
    starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]]) if len(rows) else np.empty(0, dtype=np.int64)
    for a, b in zip(starts, np.r_[starts[1:], len(rows)]):
        lo, hi = int(rows[a]), int(rows[b - 1]) + 1
        out[a:b] = ds[lo:hi][rows[a:b] - lo]
    return out


class IVFIndex(BaseIndex):
    """IVF index over residual codes of any codec (faiss ``IndexIVFPQ``, ``IndexIVFScalarQuantizer``...).

    ``coarse``: "flat" (k-means, exhaustive probing) or "tree" (hierarchical k-means with
    ``branching`` children per node, probed with a beam of ``beam`` nodes). ``nprobe``, ``rerank``
    and ``k_factor`` are search defaults that ``search(..., nprobe=, rerank=, k_factor=)`` overrides.
    Codes are kept sorted by list (``offsets[l]:offsets[l + 1]`` is list l).
    """

    index_type = "ivf"
    lazy_columns = ("vectors",)
    keeps_norms = False  # the exact ||r^||^2 enters the in-memory bias instead

    def __init__(
        self,
        codec: Quantizer,
        nlist: int,
        metric: str = "l2",
        coarse: str = "flat",
        rerank: bool = False,
        nprobe: int = 1,
        k_factor: int = 4,
        branching: int = 32,
        beam: int = 4,
        coarse_niter: int = 20,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(codec, metric)
        self.coarse = make_coarse(coarse, nlist, branching=branching, beam=beam, niter=coarse_niter, random_state=random_state)
        self.nlist = self.coarse.nlist
        self.rerank = bool(rerank)
        self.nprobe = _positive_int(nprobe, "nprobe")
        self.k_factor = _positive_int(k_factor, "k_factor")
        self.codes = np.empty((0, codec.M), dtype=codec.code_dtype)
        self.lists = np.empty(0, dtype=np.int32)  # list of every row, ascending
        self.offsets = np.zeros(self.nlist + 1, dtype=np.int64)
        self._bias = np.empty(0, dtype=np.float32)  # per row ||r^||^2 + 2 c.r^ (L2 only)
        self._vectors = np.empty((0, self.d), dtype=np.float32)  # exact vectors held in memory
        self._vec_ptr = np.empty(0, dtype=np.int64)  # per row: row of _vectors, or -1 - (row in source file)

    # --- training and encoding -----------------------------------------------------------------
    def _extra_trained(self) -> bool:
        return self.coarse.is_trained

    def _residuals(self, x: np.ndarray, lists: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x - self.coarse.centroids[lists])

    def _train(self, x: np.ndarray) -> None:
        self.coarse.fit(x)
        self.codec.fit(self._residuals(x, self.coarse.assign(x)))

    def _row_bias(self, codes: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """``||r^||^2 + 2 c.r^`` of every row (decoded in blocks), or empty when the metric needs none."""
        if self.metric != "l2":
            return np.empty(0, dtype=np.float32)
        out = np.empty(len(codes), dtype=np.float32)
        for s in range(0, len(codes), _DECODE_ROWS):
            r = self.codec.decode(codes[s : s + _DECODE_ROWS])
            r2c = 2.0 * self.coarse.centroids[lists[s : s + _DECODE_ROWS]]
            r2c += r
            out[s : s + _DECODE_ROWS] = np.einsum("ij,ij->i", r, r2c)
        return out

    def _encode_columns(self, x: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        lists = self.coarse.assign(x)
        codes = self.codec.encode(self._residuals(x, lists))
        cols = {"ids": ids, "lists": lists.astype(np.int32), "codes": codes}
        if self.rerank:
            cols["vectors"] = x
        return cols

    def _add(self, x: np.ndarray, ids: np.ndarray) -> None:
        cols = self._encode_columns(x, ids)
        new_lists = cols["lists"]
        order = np.argsort(new_lists, kind="stable")
        counts = np.bincount(new_lists, minlength=self.nlist)
        before = np.concatenate([[0], np.cumsum(counts)])
        # old rows shift by the new rows of earlier lists; new rows go to the end of their list
        old_dest = np.arange(self.ntotal) + before[self.lists]
        new_dest = self.offsets[new_lists[order] + 1] + np.arange(len(order))

        def merged(old: np.ndarray, new: np.ndarray) -> np.ndarray:
            out = np.empty((len(old) + len(new),) + old.shape[1:], dtype=old.dtype)
            out[old_dest] = old
            out[new_dest] = new[order]
            return out

        self.codes = merged(self.codes, cols["codes"])
        self.lists = merged(self.lists, new_lists)
        self.ids = merged(self.ids, ids)
        if self.metric == "l2":
            self._bias = merged(self._bias, self._row_bias(cols["codes"], new_lists))
        if self.rerank:
            ptr = len(self._vectors) + np.arange(len(ids), dtype=np.int64)
            self._vectors = np.concatenate([self._vectors, x])
            self._vec_ptr = merged(self._vec_ptr, ptr)
        self.offsets = self.offsets + before

    # --- search ----------------------------------------------------------------------------------
    def _search(self, xq: np.ndarray, k: int, nprobe: int | None = None, rerank: bool | None = None,
                k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        nprobe = min(_positive_int(self.nprobe if nprobe is None else nprobe, "nprobe"), self.nlist)
        rerank = self.rerank if rerank is None else bool(rerank)
        decoded = self.codec.rerank_decoded and not rerank  # exact vectors, when kept, rank better
        kk = self._decoded_shortlist(k, k_factor) if decoded else k
        k_factor = _positive_int(self.k_factor if k_factor is None else k_factor, "k_factor")
        if rerank and not self.rerank:
            raise InvalidInputError("rerank: this index keeps no exact vectors (build it with rerank=True)")
        if rerank:
            kk = k * k_factor
        D, R = self._adc_search(xq, kk, nprobe)
        if rerank:
            D, R = self._rerank(xq, R, k)
        elif decoded:
            D, R = self._rerank_decoded(xq, R, k)
        return D, self._ids_of_rows(R)

    def _adc_search(self, xq: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """ADC top-k row positions ``(D, R)`` of every query over its ``nprobe`` best lists."""
        cm = self._codec_metric
        nq, M, K = xq.shape[0], self.codec.M, self.codec.ksub
        block = max(1, _TABLE_BYTES // (M * K * 4))
        D = np.empty((nq, k), dtype=np.float32)
        R = np.empty((nq, k), dtype=np.int64)
        for s in range(0, nq, block):
            q = xq[s : s + block]
            consts, probes = self.coarse.search(q, nprobe, cm)
            qq = 2.0 * q if cm == "l2" else q
            linear = self.codec.linear_ip(qq)
            if linear is not None:
                weights, offset = linear
                tables = np.empty((0, M, K), dtype=np.float32)
                consts = consts + offset[:, None]
            else:
                weights = np.empty((0, M), dtype=np.float32)
                tables = self.codec.lookup_tables(qq, "ip")
            D[s : s + block], R[s : s + block] = ivf_scan(
                tables, weights, probes, consts, self.codes, self.offsets, self._bias, k)
        return D, R

    def _rerank(self, xq: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact distances of the candidate rows (vectors in memory or in the source file); best ``k``."""
        valid = rows >= 0
        where = np.where(valid, self._vec_ptr[np.maximum(rows, 0)] if self.ntotal else 0, -1)
        on_disk = valid & (where < 0)
        disk = np.empty((0, self.d), dtype=np.float32)
        if on_disk.any():
            file_rows, inv = np.unique(-1 - where[on_disk], return_inverse=True)
            disk = self._read_file_rows(file_rows)
            where[on_disk] = -2 - inv
        dist = exact_distances(xq, self._vectors, disk, where, self.metric != "l2")
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        D = np.take_along_axis(dist, order, axis=1)
        R = np.where(np.isfinite(D), np.take_along_axis(rows, order, axis=1), -1)
        return D, R

    def _read_file_rows(self, file_rows: np.ndarray) -> np.ndarray:
        """Exact vectors at sorted, unique rows of the source file's ``vectors`` column."""
        if self.source_path is None:
            raise AnnvqError("exact vectors live in a file, but this index has no source_path")
        try:
            with h5py.File(self.source_path, "r") as f:
                return _read_rows(f["columns"]["vectors"], file_rows)
        except (KeyError, OSError) as exc:
            raise FormatError(f"{self.source_path}: cannot read the exact vectors for re-ranking: {exc}") from None

    def _fetch_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Exact vectors of rows: from memory, or from the file the index came from."""
        ptr = self._vec_ptr[rows]
        out = np.empty((len(rows), self.d), dtype=np.float32)
        mem = ptr >= 0
        out[mem] = self._vectors[ptr[mem]]
        if not mem.all():
            file_rows, inv = np.unique(-1 - ptr[~mem], return_inverse=True)
            out[~mem] = self._read_file_rows(file_rows)[inv]
        return out

    # --- removal, reconstruction ----------------------------------------------------------------
    def _keep_rows(self, keep: np.ndarray) -> None:
        self.codes = np.ascontiguousarray(self.codes[keep])
        self.lists = self.lists[keep]
        self.ids = self.ids[keep]
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(self.lists, minlength=self.nlist))])
        if self.metric == "l2":
            self._bias = self._bias[keep]
        if self.rerank:
            ptr = self._vec_ptr[keep]
            mem = ptr >= 0
            self._vectors = self._vectors[ptr[mem]]
            ptr[mem] = np.arange(int(mem.sum()))
            self._vec_ptr = ptr

    def _reconstruct_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.coarse.centroids[self.lists[rows]] + self.codec.decode(self.codes[rows])

    def list_sizes(self) -> np.ndarray:
        """Number of vectors in every list (nlist,)."""
        return np.diff(self.offsets)

    # --- persistence --------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        attrs, arrays = super()._state()
        attrs.update(self.coarse.params(), rerank=self.rerank, nprobe=self.nprobe, k_factor=self.k_factor,
                     coarse_random_state=self.coarse.random_state)
        arrays.update(self.coarse.arrays())
        return attrs, arrays

    def _columns(self) -> dict[str, np.ndarray]:
        cols = {"ids": self.ids, "lists": self.lists, "codes": self.codes}
        if self.rerank:
            # read every vector into memory: the file they came from may be the one being replaced
            self._vectors = self._fetch_vectors(np.arange(self.ntotal))
            self._vec_ptr = np.arange(self.ntotal, dtype=np.int64)
            cols["vectors"] = self._vectors
        return cols

    @classmethod
    def _construct(cls, codec: Quantizer, attrs: dict[str, Any], arrays: dict[str, np.ndarray]) -> "IVFIndex":
        try:
            idx = cls(codec, nlist=int(attrs["nlist"]), metric=attrs["metric"], coarse=attrs["coarse"], rerank=bool(attrs["rerank"]), nprobe=int(attrs["nprobe"]),
                      k_factor=int(attrs["k_factor"]), branching=int(attrs.get("branching", 32)),
                      beam=int(attrs.get("beam", 4)), coarse_niter=int(attrs["coarse_niter"]),
                      random_state=attrs.get("coarse_random_state"))
        except (KeyError, TypeError, InvalidInputError) as exc:
            raise FormatError(f"invalid IVF index attributes: {exc}") from None
        idx.coarse.set_arrays(arrays, codec.d)
        return idx

    def _load_columns(self, columns: dict[str, np.ndarray]) -> None:
        try:
            codes = np.asarray(columns["codes"])
            lists = np.asarray(columns["lists"], dtype=np.int64)
        except KeyError as exc:
            raise FormatError(f"IVF index file lacks column {exc}") from None
        n = len(columns["ids"])
        if codes.shape != (n, self.codec.M) or lists.shape != (n,):
            raise FormatError(f"codes {codes.shape} / lists {lists.shape} do not match {n} ids and M={self.codec.M}")
        if n and (int(codes.max()) >= self.codec.ksub or lists.min() < 0 or lists.max() >= self.nlist):
            raise FormatError("codes or list numbers out of range: the file is corrupt")
        order = np.argsort(lists, kind="stable")  # rows appended on disk are not yet grouped by list
        self.codes = np.ascontiguousarray(codes[order], dtype=self.codec.code_dtype)
        self.lists = lists[order].astype(np.int32)
        self.ids = np.asarray(columns["ids"], dtype=np.int64)[order]
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(self.lists, minlength=self.nlist))])
        self._bias = self._row_bias(self.codes, self.lists)
        if self.rerank:
            self._vectors = np.empty((0, self.d), dtype=np.float32)
            self._vec_ptr = -1 - order.astype(np.int64)

    def __repr__(self) -> str:
        return (f"IVFIndex(codec={self.codec!r}, nlist={self.nlist}, coarse={self.coarse.kind!r}, "
                f"metric={self.metric!r}, rerank={self.rerank}, ntotal={self.ntotal})")
