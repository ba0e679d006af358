"""Seeded synthetic data families unlike SIFT, for checking that codec defaults hold beyond one kind of data.

``make_embeddings``: L2-normalised vectors with a power-law covariance spectrum, clustered and with a
shared mean direction, the way word and sentence embeddings are. ``make_correlated``: vectors driven
by a few latent factors, so every dimension is strongly correlated with many others. Both return an
:class:`~annvq.datasets.Dataset` with held-out queries and exact neighbours (``split_queries``).
"""
from __future__ import annotations

import numpy as np

from .._validate import as_vectors
from ..errors import InvalidInputError
from .annb import Dataset, annb_distances
from .groundtruth import knn_groundtruth


def _check_sizes(n: int, nq: int, d: int, k: int) -> None:
    for name, v in (("n", n), ("nq", nq), ("d", d), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
    if k > n:
        raise InvalidInputError(f"k={k} exceeds the n={n} base vectors")


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    """A uniformly random orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def split_queries(name: str, x: np.ndarray, nq: int, k: int = 100, random_state: int | None = None) -> Dataset:
    """A :class:`Dataset` from one pool of vectors: ``nq`` rows held out as queries (the last ones, or a
    random choice when ``random_state`` is given), the rest as base, with exact L2 neighbours."""
    x = as_vectors(x, name="x")
    _check_sizes(x.shape[0] - nq, nq, x.shape[1], k)
    if random_state is not None:
        x = x[np.random.default_rng(random_state).permutation(x.shape[0])]
    base, queries = np.ascontiguousarray(x[:-nq]), np.ascontiguousarray(x[-nq:])
    D, I = knn_groundtruth(base, queries, k)
    return Dataset(name, base, queries, I, annb_distances(D, "l2"), "l2")


def make_embeddings(n: int = 10_000, d: int = 96, nq: int = 200, alpha: float = 1.0, n_clusters: int = 64,
                    spread: float = 0.7, mean_weight: float = 0.5, k: int = 100,
                    random_state: int | None = 0) -> Dataset:
    """``n`` base and ``nq`` query unit vectors in ``d`` dimensions with a power-law spectrum.

    Variance along the i-th principal direction (a random orthonormal basis) falls as
    ``(i + 1) ** -alpha``. Points are drawn around ``n_clusters`` Gaussian cluster centres with that
    spectrum; ``spread`` is the within-cluster share of the variance. A common mean direction of
    weight ``mean_weight`` makes the set anisotropic, as real embeddings are. Rows are then L2
    normalised.
    """
    _check_sizes(n, nq, d, k)
    rng = np.random.default_rng(random_state)
    scale = np.sqrt((np.arange(d) + 1.0) ** -float(alpha))
    scale /= np.linalg.norm(scale)  # total variance 1 before the mean is added
    basis = _random_rotation(rng, d)
    centres = np.sqrt(1.0 - spread) * rng.standard_normal((n_clusters, d)) * scale
    labels = rng.integers(n_clusters, size=n + nq)
    z = centres[labels] + np.sqrt(spread) * rng.standard_normal((n + nq, d)) * scale
    x = z @ basis.T + mean_weight * (basis[:, -1] + basis[:, 0]) / np.sqrt(2.0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return split_queries(f"embeddings-{d}", x, nq, k)


def make_correlated(n: int = 10_000, d: int = 64, nq: int = 200, rank: int = 8, noise: float = 0.1,
                    k: int = 100, random_state: int | None = 0) -> Dataset:
    """``n`` base and ``nq`` query vectors ``x = z A + noise``, with ``rank`` latent factors ``z``.

    The factors are heavy-tailed (Student t, 4 degrees of freedom) and ``A`` is Gaussian, so every
    dimension mixes all factors: dimensions are strongly correlated across any split into
    sub-spaces, which is where a learned rotation (OPQ) or full-dimensional codebooks pay off.
    ``noise`` is the standard deviation of the independent per-dimension noise, relative to the
    factors' mean per-dimension standard deviation.
    """
    _check_sizes(n, nq, d, k)
    if not 1 <= rank <= d:
        raise InvalidInputError(f"rank must lie in [1, d={d}], got {rank!r}")
    rng = np.random.default_rng(random_state)
    mix = rng.standard_normal((rank, d)) * (1.0 + np.arange(rank))[:, None] ** -0.5
    z = rng.standard_t(4, size=(n + nq, rank))
    x = z @ mix
    x += noise * float(np.sqrt(np.mean(x**2))) * rng.standard_normal(x.shape)
    return split_queries(f"correlated-{d}", x, nq, k)
