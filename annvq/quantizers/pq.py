"""Product quantization: split d into M sub-spaces, one k-means codebook of 2**nbits per sub-space."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..kernels import ip_tables, l2_tables, nearest_subcodes
from ..kmeans import KMeans
from .base import Quantizer

_ENCODE_BYTES = 2 << 20  # one block's (M, rows, ksub) products: small enough to stay in cache


class ProductQuantizer(Quantizer):
    """PQ with ``M`` sub-quantizers of ``nbits`` bits (Jégou et al. 2011).

    ``init`` selects the k-means initialisation of each sub-codebook (``"k-means++"`` or ``"lbg"``).
    """

    kind = "pq"

    def __init__(
        self,
        d: int,
        M: int = 8,
        nbits: int = 8,
        niter: int = 25,
        init: str = "k-means++",
        max_points_per_centroid: int | None = 256,
        random_state: int | None = 0,
    ) -> None:
        if d % M:
            raise InvalidInputError(f"d={d} must be a multiple of M={M} for PQ")
        self.d, self.M, self.nbits = int(d), int(M), int(nbits)
        _ = self.code_dtype  # validates nbits
        self.dsub = self.d // self.M
        self.niter, self.init = int(niter), init
        self.max_points_per_centroid = max_points_per_centroid
        self.random_state = random_state
        self._set_arrays({"codebooks": np.zeros((self.M, self.ksub, self.dsub), dtype=np.float32)})
        self._trained = False

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.codebooks = self._expect_shape(arrays, "codebooks", (self.M, self.ksub, self.dsub)).astype(np.float32)
        self._cb_norms = np.einsum("mkd,mkd->mk", self.codebooks, self.codebooks)
        self._cb_t = np.ascontiguousarray(self.codebooks.transpose(0, 2, 1))  # (M, dsub, ksub)

    def _sub(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], self.M, self.dsub)

    def fit(self, x: np.ndarray, init_codebooks: np.ndarray | None = None) -> ProductQuantizer:
        """Train every sub-codebook; ``init_codebooks`` warm-starts k-means (used by OPQ)."""
        x = self._check_x(x)
        if x.shape[0] < self.ksub:
            raise InvalidInputError(f"PQ with nbits={self.nbits} needs at least {self.ksub} training vectors, "
                                    f"got {x.shape[0]}")
        seed = np.random.SeedSequence(self.random_state).spawn(self.M)
        for m in range(self.M):
            km = KMeans(self.ksub, niter=self.niter, init=self.init,
                        max_points_per_centroid=self.max_points_per_centroid,
                        random_state=np.random.default_rng(seed[m]).integers(2**31))
            xs = np.ascontiguousarray(x[:, m * self.dsub : (m + 1) * self.dsub])
            km.fit(xs, None if init_codebooks is None else init_codebooks[m])
            self.codebooks[m] = km.centroids
        self._set_arrays({"codebooks": self.codebooks})
        self._trained = True
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._require_trained()
        x = self._check_x(x)
        codes = np.empty((x.shape[0], self.M), dtype=self.code_dtype)
        block = max(1, _ENCODE_BYTES // (4 * self.M * self.ksub))
        for s in range(0, x.shape[0], block):
            # every sub-space in one batched product: one call, not M, which small batches feel most
            dots = np.matmul(np.ascontiguousarray(self._sub(x[s : s + block]).transpose(1, 0, 2)), self._cb_t)
            nearest_subcodes(dots, self._cb_norms, codes[s : s + block])
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._require_trained()
        codes = self._check_codes(codes)
        out = self.codebooks[np.arange(self.M)[None, :], codes]  # (n, M, dsub)
        return out.reshape(codes.shape[0], self.d)

    def lookup_tables(self, xq: np.ndarray, metric: str = "l2") -> np.ndarray:
        self._require_trained()
        xq = self._check_x(xq, "xq")
        if metric == "l2":
            return l2_tables(self._sub(xq), self.codebooks, self._cb_norms)
        return ip_tables(self._sub(xq), self.codebooks)
