"""Exhaustive index: every query scans every code with ADC tables (faiss ``IndexPQ`` and friends)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels.adc import flat_scan
from ..quantizers import Quantizer
from .base import BaseIndex
from .fastscan import Reservoir, rescore_exact
from .params import SearchParams
from .segments import ROW_BITS, Rows

_TABLE_BYTES = 64 << 20  # lookup tables built at a time: all queries of most batches, fewer for 16-bit codes


class FlatIndex(BaseIndex):
    """Codes scanned in full per query (parallel over queries), segment after segment.

    Additive codecs (RQ, AQ) under L2 store ||x_hat||^2 per vector with ``norm_bits`` bits (8: a
    uniform byte between the trained extremes; 32: a float), which the scan adds to the table sum.
    """

    index_type = "flat"

    def __init__(self, codec: Quantizer, metric: str = "l2", norm_bits: int = 8, **kw: Any) -> None:
        super().__init__(codec, metric, norm_bits=norm_bits, **kw)

    def _stores_norms(self) -> bool:
        return self.codec.needs_norm(self.codec_metric)

    def _construct_like(self) -> FlatIndex:
        return FlatIndex(type(self.codec)(**self.codec.get_params()), self.metric,
                         self.norms.nbits if self.norms is not None else 8, rerank=self.rerank, k_factor=self.k_factor,
                         fast_scan=self.fast_scan)

    def _train_model(self, x: np.ndarray) -> None:
        self.codec.fit(x)

    def _encode_trained(self, x: np.ndarray, ids: np.ndarray) -> Rows:
        codes = self.codec.encode(x)
        norms = bias = None
        if self.norms is not None:
            norms = self.norms.encode(self._norm_values(codes))
            bias = self.norms.decode(norms)
        return Rows(ids, np.zeros(x.shape[0], np.int64), codes,
                    np.empty(0, np.float32) if bias is None else bias, norms, x if self.rerank else None)

    def _bias_of(self, codes: np.ndarray, offsets: np.ndarray, norms: np.ndarray | None) -> np.ndarray:
        return self.norms.decode(norms) if self.norms is not None and norms is not None else np.empty(0, np.float32)

    def _decode_rows(self, codes: np.ndarray, lists: np.ndarray) -> np.ndarray:
        return self.codec.decode(codes)

    def _scan(self, xq: np.ndarray, view: list, state: tuple, k: int, params: SearchParams,
              assigned: tuple[np.ndarray, np.ndarray] | None) -> None:
        M, K = self.codec.M, self.codec.ksub
        block = max(1, _TABLE_BYTES // (M * K * 4))  # bounds the tables' memory (16-bit codes: 256 KiB a table)
        rd, ri, cnt, thresh = state
        for s in range(0, xq.shape[0], block):
            b = slice(s, s + block)
            tables = self.codec.lookup_tables(xq[b], self.codec_metric)
            block_state = (rd[b], ri[b], cnt[b], thresh[b])
            for pos, seg in enumerate(view):
                if getattr(seg, "packed", None) is not None:
                    seg.packed.search(tables, Reservoir(*block_state, k), label_base=pos << ROW_BITS)
                    continue
                n = seg.n
                bias = seg.bias[:n] if seg.bias.size else seg.bias
                flat_scan(tables, seg.codes[:n], bias, pos << ROW_BITS, *block_state, k)
            if self._rescores(params):
                rescore_exact(view, block_state, k, tables)

    @classmethod
    def _from_attrs(cls, codec: Quantizer, attrs: dict[str, Any]) -> FlatIndex:
        return cls(codec, attrs["metric"], int(attrs.get("norm_bits") or 8), rerank=bool(attrs["rerank"]),
                   k_factor=int(attrs["k_factor"]), fast_scan=attrs.get("fast_scan", False) is True)
