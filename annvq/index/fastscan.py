"""Packed 4-bit codes of one segment, grouped in lists, searched with the fast-scan kernels.

:class:`FastScanLists` knows nothing about ids, files or coarse quantizers: it holds the codes of rows
``0 .. n-1`` (sorted by list) in the block layout of :mod:`annvq.kernels.fastscan`, which rows are
deleted, and answers "offer the rows of these lists to this top-k reservoir". A caller that keeps
several segments (sealed packed ones, a growing unpacked one) gives each segment a ``label_base``,
scans them all into one reservoir, then maps labels back to segments and ids.

Distances: row ``r`` of list ``l`` probed by query ``q`` at position ``p`` is at

    consts[q, p] + sum_m (qtab[q, m, c_m] + ptab[l, m, c_m])

(``ptab`` omitted when None). The scan ranks rows by a uint8-quantised estimate of it; :meth:`rescore`
gives the exact float sum. For IVF-PQ under L2 with residual codes, :func:`query_tables` and
:func:`list_tables` give ``qtab = -2 q.cb`` and ``ptab = ||cb||^2 + 2 c.cb``, and ``consts`` is the
coarse score ``||q - c||^2``: the sum is ``||q - c - r^||^2``, so one query table serves every probe.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import InvalidInputError
from ..kernels.adc import topk_init
from ..kernels.fastscan import (
    BLOCK,
    DEFAULT_PATH,
    PATHS,
    alive_bits,
    block_offsets,
    finish_all,
    pack_codes,
    rescore,
    scan_flat,
    scan_lists,
    scan_unpacked,
    set_alive,
    unpack_codes,
    unpack_rows,
)
from ..quantizers import OPQ, ProductQuantizer, Quantizer


class Reservoir(NamedTuple):
    """Top-k reservoirs of a batch of queries: the arrays of :func:`annvq.kernels.adc.topk_init`
    (``2k + 32`` slots per query) and k. Every scan over any segment adds to it in place."""

    dist: np.ndarray  # (nq, 2k + 32) float32 candidate distances
    label: np.ndarray  # (nq, 2k + 32) int64 candidate labels
    filled: np.ndarray  # (nq,) int64 slots in use
    threshold: np.ndarray  # (nq,) float32: candidates at or above it cannot enter
    k: int


def new_reservoir(nq: int, k: int) -> Reservoir:
    """Empty reservoirs for ``nq`` queries keeping the best ``k``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    dist, label, filled, threshold = topk_init(nq, int(k))
    return Reservoir(dist, label, filled, threshold, int(k))


def finish_reservoir(res: Reservoir, sort: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The best ``res.k`` of every reservoir: ``(D, L)`` (nq, k), ascending (``sort``) or in no particular
    order (enough for candidates about to be re-scored); +inf / -1 pad short results."""
    return finish_all(res.dist, res.label, res.filled, res.k, sort)


def best_k(D: np.ndarray, L: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest of each row of ``D`` (nq, kk) with their labels, ascending (after a re-scoring;
    entries at +inf should carry label -1)."""
    D = np.array(D, dtype=np.float32)  # a copy: the selection reorders it
    L = np.array(L, dtype=np.int64)
    return finish_all(D, L, np.full(D.shape[0], D.shape[1], dtype=np.int64), k, True)


def _pq_of(codec: Quantizer) -> tuple[ProductQuantizer, np.ndarray | None]:
    if isinstance(codec, OPQ):
        return codec.pq, codec.R
    if isinstance(codec, ProductQuantizer):
        return codec, None
    raise InvalidInputError(f"fast-scan needs a PQ or OPQ codec, got {type(codec).__name__}")


def query_tables(codec: Quantizer, xq: np.ndarray, metric: str = "l2", ivf: bool = False) -> np.ndarray:
    """``qtab`` (nq, M, 16) of queries ``xq`` for a 4-bit PQ/OPQ ``codec``.

    Flat: the codec's own tables (squared L2, or negated inner product for ``metric="ip"``). IVF
    (``ivf=True``, residual codes): ``-2 q.cb`` under L2 (the rest is in :func:`list_tables` and the
    coarse score), ``-q.cb`` under "ip".
    """
    pq, _ = _pq_of(codec)
    if pq.nbits != 4:
        raise InvalidInputError(f"fast-scan needs 4-bit codes, the codec has nbits={pq.nbits}")
    if ivf and metric == "l2":
        return codec.lookup_tables(2.0 * np.asarray(xq, dtype=np.float32), "ip")
    return codec.lookup_tables(xq, metric)


def list_tables(codec: Quantizer, centroids: np.ndarray, metric: str = "l2") -> np.ndarray | None:
    """``ptab`` (nlist, M, 16) = ``||cb||^2 + 2 c.cb`` per list centroid ``c`` for residual PQ/OPQ codes
    under L2 (in the codec's rotated space for OPQ); None under "ip", where lists add only a constant."""
    if metric != "l2":
        return None
    pq, R = _pq_of(codec)
    c = np.asarray(centroids, dtype=np.float32)
    if R is not None:
        c = c @ R
    cb = pq.codebooks  # (M, 16, dsub)
    csub = c.reshape(c.shape[0], pq.M, pq.dsub)
    out = 2.0 * np.einsum("lmd,mjd->lmj", csub, cb)
    out += np.einsum("mjd,mjd->mj", cb, cb)[None]
    return np.ascontiguousarray(out, dtype=np.float32)


def _path(path: str | int | None) -> int:
    if path is None:
        return DEFAULT_PATH
    if isinstance(path, str):
        if path not in PATHS:
            raise InvalidInputError(f"path must be one of {sorted(PATHS)}, got {path!r}")
        return PATHS[path]
    if path not in (0, 1, 2):
        raise InvalidInputError(f"path must be 0, 1 or 2, got {path!r}")
    return int(path)


class FastScanLists:
    """The packed codes of one segment: ``n`` rows of ``M`` 4-bit sub-codes in ``nlist`` lists.

    Attributes: ``packed`` (nblocks, Mp * 16) uint8 block layout; ``offsets`` (nlist + 1,) int64 rows of
    every list; ``boffsets`` (nlist + 1,) int64 blocks of every list; ``alive`` (nblocks,) uint32 live
    bit per slot (deleted rows and padding clear). Rows are numbered in list order.
    """

    def __init__(self, packed: np.ndarray, offsets: np.ndarray, alive: np.ndarray, M: int) -> None:
        self.M = int(M)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.boffsets = block_offsets(self.offsets)
        self.packed = np.ascontiguousarray(packed, dtype=np.uint8)
        self.alive = np.ascontiguousarray(alive, dtype=np.uint32)
        mp = self.M + (self.M & 1)
        if self.packed.shape != (self.boffsets[-1], mp * 16) or self.alive.shape != (self.boffsets[-1],):
            raise InvalidInputError(f"packed {self.packed.shape} / alive {self.alive.shape} do not match "
                                    f"{self.boffsets[-1]} blocks of M={self.M}")

    @classmethod
    def from_codes(cls, codes: np.ndarray, list_offsets: np.ndarray | None = None,
                   deleted: np.ndarray | None = None) -> FastScanLists:
        """Pack codes (n, M) with values < 16, rows sorted by list (``list_offsets`` (nlist + 1,); None
        for one list); ``deleted`` (n,) bool marks tombstoned rows."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.dtype.kind not in "iu":
            raise InvalidInputError(f"codes: expected an integer (n, M) array, got {codes.dtype} {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() > 15):
            raise InvalidInputError("codes: fast-scan packs 4-bit codes (values 0..15)")
        offsets = _check_offsets(list_offsets, codes.shape[0])
        dead = _check_deleted(deleted, codes.shape[0])
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        bo = block_offsets(offsets)
        return cls(pack_codes(codes, offsets, bo), offsets, alive_bits(offsets, bo, dead), codes.shape[1])

    # --- facts ---------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Rows held, deleted ones included."""
        return int(self.offsets[-1])

    @property
    def nlist(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def code_size(self) -> int:
        """Bytes per vector in the packed layout (M / 2, rounded up)."""
        return (self.M + 1) // 2

    @property
    def nbytes(self) -> int:
        """Memory held by the packed codes, padding and live bits included."""
        return int(self.packed.nbytes + self.alive.nbytes + self.offsets.nbytes + self.boffsets.nbytes)

    def codes(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Unpacked codes (len(rows), M) uint8 of ``rows`` (all rows when None)."""
        if rows is None:
            return unpack_codes(self.packed, self.offsets, self.boffsets, self.M)
        return unpack_rows(self.packed, self.offsets, self.boffsets, self._rows(rows), self.M)

    def _rows(self, rows) -> np.ndarray:
        r = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if r.size and (r.min() < 0 or r.max() >= self.ntotal):
            raise InvalidInputError(f"rows must lie in [0, {self.ntotal})")
        return r

    def delete(self, rows) -> None:
        """Tombstone rows: searches never return them again."""
        set_alive(self.alive, self.offsets, self.boffsets, self._rows(rows), False)

    def live_count(self) -> int:
        return int(np.unpackbits(self.alive.view(np.uint8)).sum())

    # --- search --------------------------------------------------------------------------------------
    def search(self, qtab: np.ndarray, reservoir: Reservoir, probes: np.ndarray | None = None,
               consts: np.ndarray | None = None, ptab: np.ndarray | None = None, label_base: int = 0,
               path: str | int | None = None) -> None:
        """Offer the live rows of every query's probed lists to ``reservoir`` (updated in place).

        ``qtab`` (nq, M, 16) float32; ``probes`` (nq, nprobe) int64 list numbers, best first (-1 skips;
        None: list 0, i.e. a flat segment); ``consts`` (nq, nprobe) float32 (None: zeros); ``ptab``
        (nlist, M, 16) or None. Row ``r`` enters with label ``label_base + r`` and its quantised distance.
        ``path`` forces a kernel ("portable", "avx2", "avx512" or 0/1/2); default: the host's best.
        """
        qtab, ptab, probes, consts = _check_tables(qtab, ptab, probes, consts, self.M, self.nlist)
        _check_reservoir(reservoir, qtab.shape[0])
        rd, ri, cnt, thresh, k = reservoir
        p = _path(path)
        if self.nlist == 1 and ptab.shape[0] == 0 and probes.shape[1] == 1 and (probes == 0).all():
            scan_flat(qtab, consts[:, 0], self.packed, self.alive, int(label_base), rd, ri, cnt, thresh, k, p)
        else:
            scan_lists(qtab, ptab, probes, consts, self.packed, self.alive, self.offsets, self.boffsets,
                       int(label_base), rd, ri, cnt, thresh, k, p)

    def rescore(self, qtab: np.ndarray, labels: np.ndarray, dist: np.ndarray, probes: np.ndarray | None = None,
                consts: np.ndarray | None = None, ptab: np.ndarray | None = None, label_base: int = 0) -> None:
        """Overwrite ``dist`` (nq, kk) float32 with the exact float table sums of the candidates
        ``labels`` (nq, kk) in ``[label_base, label_base + ntotal)``; other labels are left alone.
        Same ``qtab``/``probes``/``consts``/``ptab`` as the search that found them."""
        qtab, ptab, probes, consts = _check_tables(qtab, ptab, probes, consts, self.M, self.nlist)
        if labels.shape != dist.shape or labels.shape[0] != qtab.shape[0] or dist.dtype != np.float32:
            raise InvalidInputError("labels and dist must be (nq, kk) int64 / float32 arrays matching qtab")
        rescore(qtab, ptab, probes, consts, self.packed, self.offsets, self.boffsets, int(label_base),
                np.ascontiguousarray(labels, dtype=np.int64), dist)

    def search_topk(self, qtab: np.ndarray, k: int, probes: np.ndarray | None = None,
                    consts: np.ndarray | None = None, ptab: np.ndarray | None = None, k_factor: int = 0,
                    label_base: int = 0, path: str | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(D, L)`` of this segment alone, ascending. With ``k_factor`` >= 1 the best
        ``k_factor * k`` by quantised distance are re-scored with exact float table sums first."""
        kk = k * k_factor if k_factor else k
        res = new_reservoir(qtab.shape[0], kk)
        self.search(qtab, res, probes, consts, ptab, label_base, path)
        D, L = finish_reservoir(res, sort=not k_factor)
        if k_factor:
            self.rescore(qtab, L, D, probes, consts, ptab, label_base)
            D, L = best_k(D, L, k)
        return D, L


def _check_offsets(list_offsets: np.ndarray | None, n: int) -> np.ndarray:
    if list_offsets is None:
        offsets = np.array([0, n], dtype=np.int64)
    else:
        offsets = np.ascontiguousarray(list_offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.shape[0] < 2 or offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 0).any():
        raise InvalidInputError(f"list_offsets must rise from 0 to n={n}")
    return offsets


def _check_deleted(deleted: np.ndarray | None, n: int) -> np.ndarray:
    dead = np.zeros(0, dtype=bool) if deleted is None else np.asarray(deleted, dtype=bool)
    if dead.shape not in ((0,), (n,)):
        raise InvalidInputError(f"deleted: expected ({n},) booleans, got shape {dead.shape}")
    return dead


def _check_tables(qtab, ptab, probes, consts, M: int, nlist: int):
    qtab = np.ascontiguousarray(qtab, dtype=np.float32)
    if qtab.ndim != 3 or qtab.shape[1:] != (M, 16):
        raise InvalidInputError(f"qtab: expected (nq, {M}, 16), got {qtab.shape}")
    nq = qtab.shape[0]
    if ptab is None:
        ptab = np.empty((0, M, 16), dtype=np.float32)
    else:
        ptab = np.ascontiguousarray(ptab, dtype=np.float32)
        if ptab.shape != (nlist, M, 16):
            raise InvalidInputError(f"ptab: expected ({nlist}, {M}, 16), got {ptab.shape}")
    probes = np.zeros((nq, 1), dtype=np.int64) if probes is None else np.ascontiguousarray(probes, dtype=np.int64)
    if probes.ndim != 2 or probes.shape[0] != nq or (probes.size and probes.max() >= nlist):
        raise InvalidInputError(f"probes: expected ({nq}, nprobe) list numbers below {nlist}")
    if consts is None:
        consts = np.zeros(probes.shape, dtype=np.float32)
    else:
        consts = np.ascontiguousarray(consts, dtype=np.float32)
    if consts.shape != probes.shape:
        raise InvalidInputError(f"consts: expected shape {probes.shape}, got {consts.shape}")
    return qtab, ptab, probes, consts


def _check_reservoir(res: Reservoir, nq: int) -> None:
    if not isinstance(res, Reservoir) or res.dist.shape != (nq, 2 * res.k + 32):
        raise InvalidInputError(f"reservoir: expected new_reservoir({nq}, k)")


def search_unpacked(codes: np.ndarray, qtab: np.ndarray, reservoir: Reservoir, list_offsets: np.ndarray | None = None,
                    probes: np.ndarray | None = None, consts: np.ndarray | None = None, ptab: np.ndarray | None = None,
                    deleted: np.ndarray | None = None, label_base: int = 0) -> None:
    """:meth:`FastScanLists.search` for codes not packed yet ((n, M) uint8, rows sorted by list), with
    exact float tables: a growing segment scanned into the same reservoir as the packed ones.
    ``deleted`` (n,) bool tombstones rows."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n = codes.shape[0]
    offsets = _check_offsets(list_offsets, n)
    qtab, ptab, probes, consts = _check_tables(qtab, ptab, probes, consts, codes.shape[1], offsets.shape[0] - 1)
    _check_reservoir(reservoir, qtab.shape[0])
    dead = _check_deleted(deleted, n)
    bias = np.where(dead, np.inf, 0.0).astype(np.float32)  # +inf never beats a threshold
    rd, ri, cnt, thresh, k = reservoir
    scan_unpacked(qtab, ptab, probes, consts, codes, offsets, bias, int(label_base), rd, ri, cnt, thresh, k)


def rescore_exact(view: list, state: tuple, k: int, qtab: np.ndarray, probes: np.ndarray | None = None,
                  consts: np.ndarray | None = None, ptab: np.ndarray | None = None) -> None:
    """Keep the best ``k`` candidates of the reservoirs ``state`` (``topk_init`` arrays of the segments of
    ``view``, labels ``(position << 40) | row``) and replace their quantised distances by the exact float
    table sums, for candidates of packed segments; candidates of unpacked segments have exact distances
    already. The reservoirs then hold ``k`` candidates ranked by exact code distance."""
    rd, ri, cnt, _ = state
    D, L = finish_all(rd, ri, cnt, k, False)
    for pos, seg in enumerate(view):
        if getattr(seg, "packed", None) is not None:
            seg.packed.rescore(qtab, L, D, probes, consts, ptab, pos << 40)
    rd[:, :k] = D  # finish_all put every query's candidates first, the -1 padding after them
    ri[:, :k] = L
    cnt[:] = (L >= 0).sum(axis=1)


__all__ = [
    "BLOCK",
    "FastScanLists",
    "Reservoir",
    "best_k",
    "finish_reservoir",
    "list_tables",
    "new_reservoir",
    "query_tables",
    "rescore_exact",
    "search_unpacked",
]
