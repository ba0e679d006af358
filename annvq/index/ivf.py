"""Inverted-file index: a coarse quantizer splits the space into ``nlist`` cells, residuals are encoded.

A vector x in list l is stored as the codes of its residual r = x - c_l. A query visits only the
``nprobe`` lists whose centroids score best. Under L2 the distance to a stored vector expands as

    ||q - c - r^||^2 = ||q - c||^2 + (||r^||^2 + 2 c.r^) - 2 q.r^

The first term is the coarse search's score, the middle one a float per stored vector (the bias,
computed exactly from the decoded residual when vectors are added or loaded), and the last one a
lookup table of the query alone ("ip" tables are linear in the query, so the tables of 2q give it).
So a query builds one table whatever ``nprobe`` and whatever the codec, and a probed list costs
only its scan, in every segment. Under "ip", q.(c + r^) = q.c + q.r^: the same table plus a constant
per list. For a codec whose tables are affine in the code values (SQ, see ``Quantizer.linear_ip``)
the table sum is a dot product of the codes with one weight vector per query, which the scan
computes with SIMD.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import check_k, missing_ids
from ..errors import FormatError, InvalidInputError
from ..kernels.ivf import ivf_scan
from ..quantizers import Quantizer
from .base import BaseIndex, as_id_array, positive_int
from .coarse import make_coarse
from .fastscan import Reservoir, list_tables, rescore_exact
from .params import IVFSearchParams, SearchParams, parse_params
from .segments import ROW_BITS, Rows

_TABLE_BYTES = 2 << 20  # lookup tables of one query block: small enough to stay in cache until scanned
_DECODE_ROWS = 65536  # rows decoded at a time when computing the biases


class IVFIndex(BaseIndex):
    """IVF index over residual codes of any codec (faiss ``IndexIVFPQ``, ``IndexIVFScalarQuantizer``...).

    ``coarse``: "flat" (k-means, exhaustive probing) or "tree" (hierarchical k-means with
    ``branching`` children per node, probed with a beam of ``beam`` nodes). ``nprobe`` is the search
    default that ``search(..., nprobe=)`` overrides.
    """

    index_type = "ivf"
    params_type = IVFSearchParams

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
        **kw: Any,
    ) -> None:
        self.coarse = make_coarse(coarse, nlist, branching=branching, beam=beam, niter=coarse_niter,
                                  random_state=random_state)
        self.nprobe = positive_int(nprobe, "nprobe")
        super().__init__(codec, metric, rerank=rerank, k_factor=k_factor, **kw)

    @property
    def nlist(self) -> int:
        return self.coarse.nlist

    def _extra_trained(self) -> bool:
        return self.coarse.is_trained

    def needs_bias(self) -> bool:
        return self.is_trained and self.metric == "l2" and not self.fast_scan

    def _construct_like(self) -> IVFIndex:
        c = self.coarse
        return IVFIndex(type(self.codec)(**self.codec.get_params()), c.nlist, self.metric, c.kind, self.rerank,
                        self.nprobe, self.k_factor, getattr(c, "branching", 32), getattr(c, "beam", 4), c.niter,
                        c.random_state, fast_scan=self.fast_scan)

    # --- training and encoding -----------------------------------------------------------------
    def _residuals(self, x: np.ndarray, lists: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x - self.coarse.centroids[lists])

    def _train_model(self, x: np.ndarray) -> None:
        self.coarse.fit(x)
        self.codec.fit(self._residuals(x, self.coarse.assign(x)))

    def _row_bias(self, codes: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """``||r^||^2 + 2 c.r^`` of every row (decoded in blocks), or empty when the metric needs none."""
        if self.metric != "l2":
            return np.empty(0, dtype=np.float32)
        out = np.empty(len(codes), dtype=np.float32)
        for s in range(0, len(codes), _DECODE_ROWS):
            r = self.codec.table_decode(codes[s : s + _DECODE_ROWS])
            r2c = 2.0 * self.coarse.centroids[lists[s : s + _DECODE_ROWS]]
            r2c += r
            out[s : s + _DECODE_ROWS] = np.einsum("ij,ij->i", r, r2c)
        return out

    def _encode_trained(self, x: np.ndarray, ids: np.ndarray) -> Rows:
        lists = self.coarse.assign(x)
        codes = self.codec.encode(self._residuals(x, lists))
        return Rows(ids, lists, codes, self._row_bias(codes, lists), None, x if self.rerank else None)

    def _bias_of(self, codes: np.ndarray, offsets: np.ndarray, norms: np.ndarray | None) -> np.ndarray:
        return self._row_bias(codes, np.repeat(np.arange(self.nlist), np.diff(offsets)))

    def _decode_rows(self, codes: np.ndarray, lists: np.ndarray) -> np.ndarray:
        return self.coarse.centroids[lists] + self.codec.decode(codes)

    # --- search ----------------------------------------------------------------------------------
    def _scan(self, xq: np.ndarray, view: list, state: tuple, k: int, params: SearchParams,
              assigned: tuple[np.ndarray, np.ndarray] | None) -> None:
        nprobe = min(getattr(params, "nprobe", None) or self.nprobe, self.nlist)
        cm = self.codec_metric
        nq, M, K = xq.shape[0], self.codec.M, self.codec.ksub
        block = max(1, _TABLE_BYTES // (M * K * 4))
        rd, ri, cnt, thresh = state
        ptab = self._list_tables() if self.fast_scan else None
        for s in range(0, nq, block):
            q = xq[s : s + block]
            if assigned is None:
                consts, probes = self.coarse.search(q, nprobe, cm)
            else:
                consts, probes = assigned[0][s : s + block], assigned[1][s : s + block]
            qq = 2.0 * q if cm == "l2" else q
            linear = self.codec.linear_ip(qq)
            if linear is not None:
                weights, offset = linear
                tables = np.empty((0, M, K), dtype=np.float32)
                consts = consts + offset[:, None]
            else:
                weights = np.empty((0, M), dtype=np.float32)
                tables = self.codec.lookup_tables(qq, "ip")
            b = slice(s, s + block)
            block_state = (rd[b], ri[b], cnt[b], thresh[b])
            for pos, seg in enumerate(view):
                if getattr(seg, "packed", None) is not None:
                    seg.packed.search(tables, Reservoir(rd[b], ri[b], cnt[b], thresh[b], k), probes, consts, ptab,
                                      pos << ROW_BITS)
                    continue
                head, start, length, nxt = seg.extents
                ivf_scan(tables, weights, probes, consts, seg.codes, seg.bias, head, start, length, nxt,
                         pos << ROW_BITS, *block_state, k)
            if self._rescores(params):
                rescore_exact(view, block_state, k, tables, probes, consts, ptab)

    def search_preassigned(self, xq: Any, k: int, lists: Any, scores: Any,
                           params: SearchParams | dict[str, Any] | None = None, **kwargs: Any
                           ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` visiting lists already chosen, as faiss's ``search_preassigned``: a router that
        serves several indexes of one model (the shards of a build) searches the coarse quantizer once.

        ``lists`` (nq, nprobe) int64 list numbers, best first, -1 for none; ``scores`` (nq, nprobe) their
        coarse scores as ``coarse.search(xq, nprobe, codec_metric)`` returns them (squared distances to
        the centroids under L2, negated inner products under "ip"). The result equals :meth:`search`
        with that ``nprobe``.
        """
        p = parse_params(self.params_type, params, kwargs, f"a {self.index_type} index")
        self._require_trained()
        xq = self.prepare(xq, "xq")
        probes = np.ascontiguousarray(lists, dtype=np.int64)
        consts = np.ascontiguousarray(scores, dtype=np.float32)
        if probes.ndim != 2 or probes.shape[0] != xq.shape[0] or consts.shape != probes.shape:
            raise InvalidInputError(f"lists and scores must both be (nq={xq.shape[0]}, nprobe) arrays, got "
                                    f"{probes.shape} and {consts.shape}")
        if probes.size and (probes.min() < -1 or probes.max() >= self.nlist):
            raise InvalidInputError(f"lists: list numbers must be in [0, {self.nlist}) or -1")
        nprobe = getattr(p, "nprobe", None)
        if nprobe is not None and nprobe != probes.shape[1]:
            raise InvalidInputError(f"nprobe={nprobe} differs from the {probes.shape[1]} lists given per query")
        if not np.isfinite(consts[probes >= 0]).all():
            raise InvalidInputError("scores: not finite")
        return self._search(xq, check_k(k), p, (consts, probes))

    def _list_tables(self) -> np.ndarray | None:
        """Per-list tables of a fast-scan index (``||cb||^2 + 2 c.cb`` under L2; None under "ip"),
        computed once per model."""
        if getattr(self, "_ptab_model", None) != self._model_serial:
            self._ptab = list_tables(self.codec, self.coarse.centroids, self.codec_metric)
            self._ptab_model = self._model_serial
        return self._ptab

    def list_sizes(self) -> np.ndarray:
        """Number of live vectors in every list (nlist,)."""
        sizes = np.zeros(self.nlist, dtype=np.int64)
        if not self.is_trained:
            return sizes
        for seg in self.segments:
            sizes += np.bincount(seg.lists()[seg.live_rows()], minlength=self.nlist)
        g = self._growing
        if g.n:
            sizes += np.bincount(g.lists_of(g.live_slots()), minlength=self.nlist)
        return sizes

    def list_of(self, ids: Any) -> np.ndarray:
        """The inverted list holding each id; UnknownIdError names ids not stored."""
        self._require_trained()
        ids = as_id_array(ids)
        seg, row = self.locate(ids)
        if (seg < 0).any():
            missing_ids(ids, ids[seg >= 0])
        out = np.empty(ids.shape[0], dtype=np.int64)
        view = self._view()
        for pos in np.unique(seg):
            out[seg == pos] = view[pos].lists_of(row[seg == pos])
        return out

    def info(self) -> dict[str, Any]:
        facts = super().info()
        facts.update(nlist=self.nlist, coarse=self.coarse.kind, nprobe=self.nprobe)
        if self.is_trained:
            sizes = self.list_sizes()
            facts.update(largest_list=int(sizes.max()), empty_lists=int((sizes == 0).sum()))
        return facts

    # --- persistence --------------------------------------------------------------------------------
    def _extra_attrs(self) -> dict[str, Any]:
        return {**self.coarse.params(), "nprobe": self.nprobe, "coarse_random_state": self.coarse.random_state}

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return self.coarse.arrays()

    def _set_extra_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.coarse.set_arrays(arrays, self.d)
        if not np.isfinite(self.coarse.centroids).all():
            raise FormatError("coarse centroids: not finite")

    @classmethod
    def _from_attrs(cls, codec: Quantizer, attrs: dict[str, Any]) -> IVFIndex:
        return cls(codec, nlist=int(attrs["nlist"]), metric=attrs["metric"], coarse=attrs["coarse"],
                   rerank=bool(attrs["rerank"]), nprobe=int(attrs["nprobe"]), k_factor=int(attrs["k_factor"]),
                   branching=int(attrs.get("branching", 32)), beam=int(attrs.get("beam", 4)),
                   coarse_niter=int(attrs["coarse_niter"]), random_state=attrs.get("coarse_random_state"),
                   fast_scan=attrs.get("fast_scan", False) is True)

    def __repr__(self) -> str:
        return (f"IVFIndex(codec={self.codec!r}, nlist={self.nlist}, coarse={self.coarse.kind!r}, "
                f"metric={self.metric!r}, rerank={self.rerank}, ntotal={self.ntotal})")
