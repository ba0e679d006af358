"""k-means with k-means++ or LBG-splitting initialisation, empty-cluster repair and subsampling."""
from __future__ import annotations

from typing import Literal

import numpy as np

from ._validate import as_vectors
from .errors import InvalidInputError, NotTrainedError
from .kernels import assign_l2, centroid_sums, sq_norms

Init = Literal["k-means++", "lbg", "random"]


class KMeans:
    """Lloyd's k-means on float32 data.

    ``init``: ``"k-means++"`` (D^2 seeding), ``"lbg"`` (start from the mean and split every centroid
    c into (1-eps)c and (1+eps)c, refining with k-means after each split, until ``k`` centroids) or
    ``"random"`` (k distinct training points). Training uses at most ``max_points_per_centroid * k``
    points (a random subsample), as faiss does. An empty cluster is re-seeded at the training
    point farthest from its centroid. ``init_centroids`` warm-starts from given centroids.
    """

    def __init__(
        self,
        k: int,
        niter: int = 25,
        init: Init = "k-means++",
        tol: float = 1e-4,
        eps: float = 0.01,
        max_points_per_centroid: int | None = 256,
        random_state: int | None = None,
    ) -> None:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        if init not in ("k-means++", "lbg", "random"):
            raise InvalidInputError(f"init must be 'k-means++', 'lbg' or 'random', got {init!r}")
        self.k = int(k)
        self.niter = int(niter)
        self.init = init
        self.tol = float(tol)
        self.eps = float(eps)
        self.max_points_per_centroid = max_points_per_centroid
        self.random_state = random_state
        self.centroids: np.ndarray | None = None
        self.inertia_: float = np.inf
        self.n_iter_: int = 0

    def fit(self, x: np.ndarray, init_centroids: np.ndarray | None = None) -> KMeans:
        x = as_vectors(x, name="x")
        rng = np.random.default_rng(self.random_state)
        if x.shape[0] < self.k:
            raise InvalidInputError(f"k-means needs at least k={self.k} training points, got {x.shape[0]}")
        if self.max_points_per_centroid and x.shape[0] > self.k * self.max_points_per_centroid:
            idx = rng.choice(x.shape[0], self.k * self.max_points_per_centroid, replace=False)
            x = x[np.sort(idx)]
        if init_centroids is not None:
            c = as_vectors(init_centroids, x.shape[1], "init_centroids").copy()
            if c.shape[0] != self.k:
                raise InvalidInputError(f"init_centroids: expected {self.k} rows, got {c.shape[0]}")
            c, self.inertia_, self.n_iter_ = lloyd(x, c, self.niter, self.tol)
        elif self.init == "lbg":
            c, self.inertia_, self.n_iter_ = lbg(x, self.k, self.eps, self.niter, self.tol, self.random_state)
        else:
            if self.init == "k-means++":
                c = kmeans_pp(x, self.k, rng)
            else:
                c = x[rng.choice(x.shape[0], self.k, replace=False)].copy()
            c, self.inertia_, self.n_iter_ = lloyd(x, c, self.niter, self.tol)
        self.centroids = c
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.centroids is None:
            raise NotTrainedError("KMeans is not fitted")
        return assign_l2(as_vectors(x, self.centroids.shape[1]), self.centroids)[0]


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    c = np.empty((k, x.shape[1]), dtype=np.float32)
    x_norms = sq_norms(x).astype(np.float64)
    c[0] = x[rng.integers(n)]
    d2 = np.full(n, np.inf)
    for j in range(k):
        if j:
            total = d2.sum()
            # fewer distinct points than k leaves total == 0: take any point (Lloyd repairs duplicates)
            pick = rng.integers(n) if total <= 0 else np.searchsorted(np.cumsum(d2), rng.random() * total)
            c[j] = x[min(int(pick), n - 1)]
        cj = c[j].astype(np.float64)
        # one BLAS matrix-vector product per centre: ||x||^2 - 2 x.c + ||c||^2
        np.minimum(d2, np.maximum(x_norms - 2.0 * (x @ c[j]) + cj @ cj, 0.0), out=d2)
    return c


def lbg(
    x: np.ndarray, k: int, eps: float, niter: int, tol: float, seed: int | None = None
) -> tuple[np.ndarray, float, int]:
    """Linde-Buzo-Gray: grow from the data mean by splitting centroids, refining with Lloyd each round.

    When ``k`` is not a power of two, the last round splits only the clusters with the largest
    distortion, so exactly ``k`` centroids come out.
    """
    c = x.mean(axis=0, dtype=np.float64).astype(np.float32)[None, :]
    rms = float(np.sqrt(np.mean(np.sum((x - c) ** 2, axis=1))))
    rng = np.random.default_rng(seed)
    inertia, it_total = float("inf"), 0
    while c.shape[0] < k:
        nsplit = min(c.shape[0], k - c.shape[0])
        if nsplit < c.shape[0]:
            labels, dist = assign_l2(x, c)
            sse = np.bincount(labels, weights=dist, minlength=c.shape[0])
            chosen = np.argsort(-sse, kind="stable")[:nsplit]
        else:
            chosen = np.arange(c.shape[0])
        keep = np.setdiff1d(np.arange(c.shape[0]), chosen)
        delta = eps * c[chosen]
        # a centroid at the origin (e.g. zero-mean residuals) cannot split along itself: use a random
        # direction of the same relative size, scaled by the data's spread
        flat = np.linalg.norm(delta, axis=1) <= 1e-6 * rms
        if flat.any():
            u = rng.standard_normal((int(flat.sum()), x.shape[1])).astype(np.float32)
            delta[flat] = eps * rms * u / np.linalg.norm(u, axis=1, keepdims=True)
        c = np.concatenate([c[keep], c[chosen] - delta, c[chosen] + delta]).astype(np.float32)
        c, inertia, it = lloyd(x, c, niter, tol)
        it_total += it
    if k == 1:
        inertia = float(assign_l2(x, c)[1].sum())
    return c, inertia, it_total


def lloyd(x: np.ndarray, c: np.ndarray, niter: int, tol: float) -> tuple[np.ndarray, float, int]:
    """Lloyd iterations from centroids ``c`` until the relative inertia change drops below ``tol``."""
    k = c.shape[0]
    prev = np.inf
    inertia = np.inf
    it = 0
    for _ in range(niter):
        it += 1
        labels, dist = assign_l2(x, c, sq_norms(c))
        inertia = float(dist.sum(dtype=np.float64))
        sums, counts = centroid_sums(x, labels, k)
        nz = counts > 0
        c = c.copy()
        c[nz] = (sums[nz] / counts[nz, None]).astype(np.float32)
        if not nz.all():
            repair_empty(c, counts, x, dist)
        if np.isfinite(prev) and prev - inertia <= tol * prev and nz.all():
            break
        prev = inertia
    return c, inertia, it


def repair_empty(c: np.ndarray, counts: np.ndarray, x: np.ndarray, dist: np.ndarray) -> None:
    """Re-seed each empty cluster (in place) at the training point worst served by its centroid."""
    empty = np.flatnonzero(counts == 0)
    far = np.argsort(-dist, kind="stable")[: empty.shape[0]]
    c[empty[: far.shape[0]]] = x[far]
