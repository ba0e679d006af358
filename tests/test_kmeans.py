"""k-means: the seed's LBG example, init methods, empty-cluster repair, errors."""
import numpy as np
import pytest

from annvq import InvalidInputError, KMeans, NotTrainedError
from annvq.kmeans import lbg, repair_empty

SEED_X = np.array([2, 3, 3, 4, 5, 6, 8, 9, 12, 13, 14], dtype=np.float32)[:, None]


def test_lbg_seed_example_first_split():
    mean = SEED_X.mean()
    assert round(float(0.99 * mean), 2) == 7.11
    assert round(float(1.01 * mean), 2) == 7.25


def test_lbg_seed_example_clusters():
    km = KMeans(2, init="lbg", eps=0.01, tol=0.0, random_state=0).fit(SEED_X)
    c = np.sort(km.centroids.ravel())
    np.testing.assert_allclose(c, [23 / 6, 11.2], rtol=1e-6)
    assert round(float(c[0]), 2) == 3.83
    labels = km.predict(SEED_X)
    low = labels[0]
    assert list(SEED_X[labels == low, 0]) == [2, 3, 3, 4, 5, 6]
    assert list(SEED_X[labels != low, 0]) == [8, 9, 12, 13, 14]


def test_lbg_non_power_of_two_gives_exact_k():
    x = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    c, inertia, _ = lbg(x, 5, 0.01, 20, 1e-4)
    assert c.shape == (5, 4) and np.isfinite(inertia)


def test_kmeans_pp_recovers_separated_clusters():
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=20, size=(8, 6)).astype(np.float32)
    x = (centers[rng.integers(0, 8, 4000)] + rng.normal(size=(4000, 6))).astype(np.float32)
    km = KMeans(8, init="k-means++", random_state=0).fit(x)
    d = ((centers[:, None] - km.centroids[None]) ** 2).sum(-1).min(1)
    assert d.max() < 0.1


@pytest.mark.parametrize("init", ["k-means++", "lbg", "random"])
def test_lloyd_improves_on_its_start(init):
    x = np.random.default_rng(3).normal(size=(3000, 8)).astype(np.float32)
    one_iter = KMeans(32, niter=1, init=init, random_state=0).fit(x).inertia_
    full = KMeans(32, niter=30, init=init, random_state=0).fit(x).inertia_
    assert full < one_iter


def test_kmeans_is_deterministic_given_random_state():
    x = np.random.default_rng(2).normal(size=(1000, 8)).astype(np.float32)
    a = KMeans(16, random_state=5).fit(x).centroids
    b = KMeans(16, random_state=5).fit(x).centroids
    np.testing.assert_array_equal(a, b)


def test_repair_empty_reseeds_at_farthest_points():
    c = np.zeros((3, 2), dtype=np.float32)
    x = np.array([[0, 0], [1, 0], [7, 7], [3, 3]], dtype=np.float32)
    dist = (x**2).sum(1)
    repair_empty(c, np.array([4, 0, 0]), x, dist)
    np.testing.assert_array_equal(c, [[0, 0], [7, 7], [3, 3]])


def test_duplicate_points_do_not_crash():
    x = np.repeat(np.arange(4, dtype=np.float32)[:, None], 50, axis=0)
    km = KMeans(8, random_state=0).fit(x)
    assert np.isfinite(km.centroids).all()


def test_kmeans_errors():
    with pytest.raises(InvalidInputError, match="at least k"):
        KMeans(10).fit(np.zeros((5, 2), np.float32))
    with pytest.raises(InvalidInputError, match="init"):
        KMeans(2, init="bogus")
    with pytest.raises(NotTrainedError):
        KMeans(2).predict(np.zeros((1, 2)))


def test_lbg_splits_a_centroid_at_the_origin():
    """Zero-mean data (residuals) still split into k distinct centroids."""
    x = np.random.default_rng(4).normal(size=(2000, 4)).astype(np.float32)
    x -= x.mean(0)
    km = KMeans(8, init="lbg", random_state=0).fit(x)
    assert len({tuple(np.round(c, 4)) for c in km.centroids}) == 8
    assert km.inertia_ < 0.75 * float((x**2).sum())
