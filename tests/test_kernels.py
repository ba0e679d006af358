"""Kernels against plain NumPy references."""
import numpy as np
import pytest

from annvq.kernels import (
    assign_l2, centroid_sums, heap_init, heap_scan, heap_sorted, ip_tables, l2_tables, scan_topk, scan_topk_batch,
)


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def test_assign_l2_matches_bruteforce(rng):
    x = rng.normal(size=(700, 12)).astype(np.float32)
    c = rng.normal(size=(33, 12)).astype(np.float32)
    labels, dist = assign_l2(x, c)
    ref = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    assert np.array_equal(labels, ref.argmin(1))
    np.testing.assert_allclose(dist, ref.min(1), rtol=1e-4, atol=1e-4)


def test_centroid_sums(rng):
    x = rng.normal(size=(100, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 100)
    sums, counts = centroid_sums(x, labels, 6)
    for j in range(6):
        np.testing.assert_allclose(sums[j], x[labels == j].sum(0), rtol=1e-5, atol=1e-5)
        assert counts[j] == (labels == j).sum()
    assert counts[5] == 0


def test_tables(rng):
    q = rng.normal(size=(3, 4, 2)).astype(np.float32)
    cb = rng.normal(size=(4, 16, 2)).astype(np.float32)
    t = l2_tables(q, cb)
    ref = ((q[:, :, None, :] - cb[None]) ** 2).sum(-1)
    np.testing.assert_allclose(t, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ip_tables(q, cb), -(q[:, :, None, :] * cb[None]).sum(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,K", [(np.uint8, 256), (np.uint16, 1024)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_scan_topk_equals_full_sort(rng, dtype, K, with_bias):
    n, M, k = 5000, 6, 25
    codes = rng.integers(0, K, size=(n, M)).astype(dtype)
    tables = rng.random((7, M, K), dtype=np.float32)
    bias = rng.random(n, dtype=np.float32) if with_bias else np.empty(0, np.float32)
    labels = rng.permutation(n).astype(np.int64) + 1000
    D, I = scan_topk_batch(tables, codes, bias, labels, k)
    for q in range(7):
        full = tables[q][np.arange(M)[None, :], codes].sum(1) + (bias if with_bias else 0)
        order = np.argsort(full, kind="stable")[:k]
        np.testing.assert_allclose(D[q], full[order], rtol=1e-5)
        assert set(I[q]) == set(labels[order])  # ties aside, the same set
    d1, i1 = scan_topk(tables[0], codes, bias, labels, k)
    np.testing.assert_array_equal(d1, D[0])


def test_heap_pads_when_fewer_than_k(rng):
    codes = rng.integers(0, 4, size=(3, 2)).astype(np.uint8)
    table = rng.random((2, 4), dtype=np.float32)
    D, I = scan_topk(table, codes, np.empty(0, np.float32), np.arange(3, dtype=np.int64), 5)
    assert list(I[3:]) == [-1, -1] and np.isinf(D[3:]).all()
    assert sorted(I[:3]) == [0, 1, 2]


def test_heap_scan_accumulates_across_lists(rng):
    """Scanning two halves into one heap equals scanning the whole (IVF relies on this)."""
    codes = rng.integers(0, 256, size=(2000, 4)).astype(np.uint8)
    table = rng.random((4, 256), dtype=np.float32)
    labels = np.arange(2000, dtype=np.int64)
    e = np.empty(0, np.float32)
    hd, hi = heap_init(1, 10)
    heap_scan(table, codes[:1000], e, labels[:1000], hd[0], hi[0])
    heap_scan(table, codes[1000:], e, labels[1000:], hd[0], hi[0])
    D, I = heap_sorted(hd, hi)
    D2, I2 = scan_topk(table, codes, e, labels, 10)
    np.testing.assert_array_equal(D[0], D2)
