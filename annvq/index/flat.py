"""Exhaustive index: every query scans every code with ADC tables (faiss ``IndexPQ`` and friends)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FormatError
from ..kernels import scan_topk_batch
from ..quantizers import Quantizer
from .base import BaseIndex


class FlatIndex(BaseIndex):
    """All codes in one contiguous array, scanned in full per query (parallel over queries)."""

    index_type = "flat"

    def __init__(self, codec: Quantizer, metric: str = "l2", norm_bits: int = 8) -> None:
        super().__init__(codec, metric, norm_bits)
        self.codes = np.empty((0, codec.M), dtype=codec.code_dtype)
        self.norm_codes = np.empty(0, dtype=self.norms.dtype if self.norms else np.float32)
        self._bias = np.empty(0, dtype=np.float32)

    def _train(self, x: np.ndarray) -> None:
        self.codec.fit(x)

    def _encode_columns(self, x: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        codes = self.codec.encode(x)
        cols = {"ids": ids, "codes": codes}
        if self.norms is not None:
            cols["norms"] = self.norms.encode(self._norm_values(codes))
        return cols

    def _add(self, x: np.ndarray, ids: np.ndarray) -> None:
        cols = self._encode_columns(x, ids)
        self.codes = np.concatenate([self.codes, cols["codes"]])
        if self.norms is not None:
            self.norm_codes = np.concatenate([self.norm_codes, cols["norms"]])
            self._bias = np.concatenate([self._bias, self.norms.decode(cols["norms"])])
        self.ids = np.concatenate([self.ids, ids])

    def _search(self, xq: np.ndarray, k: int, **params: Any) -> tuple[np.ndarray, np.ndarray]:
        tables = self.codec.lookup_tables(xq, self._codec_metric)
        if not self.codec.rerank_decoded:
            D, R = scan_topk_batch(tables, self.codes, self._bias, k)
            return D, self._ids_of_rows(R)
        D, R = scan_topk_batch(tables, self.codes, self._bias, self._decoded_shortlist(k, params.get("k_factor")))
        D, R = self._rerank_decoded(xq, R, k)
        return D, self._ids_of_rows(R)

    def _keep_rows(self, keep: np.ndarray) -> None:
        self.codes = np.ascontiguousarray(self.codes[keep])
        self.ids = self.ids[keep]
        if self.norms is not None:
            self.norm_codes = self.norm_codes[keep]
            self._bias = self._bias[keep]

    def _reconstruct_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.codec.decode(self.codes[rows])

    def _columns(self) -> dict[str, np.ndarray]:
        cols = {"ids": self.ids, "codes": self.codes}
        if self.norms is not None:
            cols["norms"] = self.norm_codes
        return cols

    @classmethod
    def _construct(cls, codec: Quantizer, attrs: dict[str, Any], arrays: dict[str, np.ndarray]) -> "FlatIndex":
        return cls(codec, attrs["metric"], int(attrs.get("norm_bits", 8)))

    def _load_columns(self, columns: dict[str, np.ndarray]) -> None:
        codes = np.ascontiguousarray(columns["codes"], dtype=self.codec.code_dtype)
        if codes.ndim != 2 or codes.shape[1] != self.codec.M:
            raise FormatError(f"codes have shape {codes.shape}, expected (n, {self.codec.M})")
        if codes.size and int(codes.max()) >= self.codec.ksub:
            raise FormatError(f"codes hold values >= {self.codec.ksub}: the file is corrupt")
        self.codes = codes
        self.ids = np.asarray(columns["ids"], dtype=np.int64)
        if self.norms is not None:
            self.norm_codes = np.asarray(columns["norms"], dtype=self.norms.dtype)
            self._bias = self.norms.decode(self.norm_codes)
