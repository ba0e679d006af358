"""Kernels against plain NumPy references."""
import numpy as np
import pytest

from annvq.kernels import (
    assign_l2,
    best_k_by_id,
    best_k_stable,
    centroid_sums,
    ip_tables,
    l2_tables,
    scan_codes,
    scan_topk_batch,
    select_k,
    topk_finish,
    topk_init,
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
@pytest.mark.parametrize("k", [1, 25, 300])
def test_scan_topk_equals_full_sort(rng, dtype, K, with_bias, k):
    n, M = 5003, 6  # not a multiple of the 4 codes summed at a time, and k both below and above the buffer
    codes = rng.integers(0, K, size=(n, M)).astype(dtype)
    tables = rng.random((7, M, K), dtype=np.float32)
    bias = rng.random(n, dtype=np.float32) if with_bias else np.empty(0, np.float32)
    D, R = scan_topk_batch(tables, codes, bias, k)
    for q in range(7):
        full = tables[q][np.arange(M)[None, :], codes].sum(1) + (bias if with_bias else 0)
        order = np.argsort(full, kind="stable")[:k]
        np.testing.assert_allclose(D[q], full[order], rtol=1e-5)
        np.testing.assert_allclose(full[R[q]], D[q], rtol=1e-5)  # each row carries its own distance
        assert len(set(R[q])) == k


def test_select_k_with_ties(rng):
    for _ in range(500):
        n = int(rng.integers(1, 200))
        k = int(rng.integers(1, n + 1))
        d = rng.integers(0, 5, size=n).astype(np.float32)  # many ties
        lab = np.arange(n, dtype=np.int64)
        d2, lab2 = d.copy(), lab.copy()
        worst = select_k(d2, lab2, n, k)
        np.testing.assert_array_equal(np.sort(d2[:k]), np.sort(d)[:k])
        assert worst == np.sort(d)[k - 1]
        np.testing.assert_array_equal(d[lab2], d2)  # labels moved with their distances


def test_scan_pads_when_fewer_than_k(rng):
    codes = rng.integers(0, 4, size=(3, 2)).astype(np.uint8)
    tables = rng.random((1, 2, 4), dtype=np.float32)
    D, R = scan_topk_batch(tables, codes, np.empty(0, np.float32), 5)
    assert list(R[0, 3:]) == [-1, -1] and np.isinf(D[0, 3:]).all()
    assert sorted(R[0, :3]) == [0, 1, 2]


def test_scan_accumulates_across_lists(rng):
    """Scanning two halves into one reservoir equals scanning the whole (IVF relies on this)."""
    codes = rng.integers(0, 256, size=(2000, 4)).astype(np.uint8)
    table = rng.random((4, 256), dtype=np.float32)
    e = np.empty(0, np.float32)
    rd, ri, cnt, thresh = topk_init(1, 10)
    c, t = scan_codes(table, codes[:1000], e, 0.0, 0, rd[0], ri[0], cnt[0], thresh[0], 10)
    c, t = scan_codes(table, codes[1000:], e, 0.0, 1000, rd[0], ri[0], c, t, 10)
    D, R = np.empty(10, np.float32), np.empty(10, np.int64)
    topk_finish(rd[0], ri[0], c, 10, D, R)
    D2, R2 = scan_topk_batch(table[None], codes, e, 10)
    np.testing.assert_array_equal(D, D2[0])
    np.testing.assert_array_equal(R, R2[0])


def test_best_k_by_id_orders_by_distance_then_id(rng):
    """The head of a sort by (distance, id) with id -1 left out, in either direction, padded past the
    valid entries; the columns point back at the inputs."""
    for descending in (False, True):
        for _ in range(200):
            nq, n = int(rng.integers(1, 6)), int(rng.integers(1, 30))
            k = int(rng.integers(1, n + 3))
            dist = rng.integers(0, 5, (nq, n)).astype(np.float32)  # many ties
            ids = rng.permutation(1000)[: nq * n].reshape(nq, n)
            ids[rng.random((nq, n)) < 0.2] = -1
            D, I, C = best_k_by_id(dist, ids, k, descending)
            pad = -np.inf if descending else np.inf
            for q in range(nq):
                valid = sorted((-d if descending else d, i) for d, i in zip(dist[q], ids[q]) if i >= 0)[:k]
                got = len(valid)
                assert I[q, :got].tolist() == [i for _, i in valid]
                assert D[q, :got].tolist() == [-d if descending else d for d, _ in valid]
                assert (I[q, got:] == -1).all() and (C[q, got:] == -1).all() and (D[q, got:] == pad).all()
                np.testing.assert_array_equal(ids[q, C[q, :got]], I[q, :got])


def test_best_k_stable_is_the_head_of_a_stable_argsort(rng):
    """Ties keep row order, +inf entries and rows shorter than k give -1 labels."""
    for _ in range(200):
        nq, kk = int(rng.integers(1, 6)), int(rng.integers(1, 30))
        k = int(rng.integers(1, kk + 3))
        dist = rng.integers(0, 5, (nq, kk)).astype(np.float32)  # many ties
        dist[rng.random((nq, kk)) < 0.2] = np.inf
        labels = rng.integers(0, 1000, (nq, kk))
        D, L = best_k_stable(dist, labels, k)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        want_d = np.full((nq, k), np.inf, np.float32)
        want_l = np.full((nq, k), -1)
        want_d[:, : order.shape[1]] = np.take_along_axis(dist, order, axis=1)
        want_l[:, : order.shape[1]] = np.take_along_axis(labels, order, axis=1)
        want_l[~np.isfinite(want_d)] = -1
        np.testing.assert_array_equal(D, want_d)
        np.testing.assert_array_equal(L, want_l)


@pytest.mark.parametrize("nprobe", [1, 3, 4, 5, 16, 40])
@pytest.mark.parametrize("use_ip", [False, True])
def test_coarse_topk_is_the_head_of_a_stable_sort(rng, nprobe, use_ip):
    """Both paths (sorted insertion up to 4 lists, the reservoir beyond) give the nprobe best lists,
    ties to the lower list number: small integer data makes many ties."""
    from annvq.kernels.ivf import coarse_topk

    xq = rng.integers(-2, 3, size=(50, 4)).astype(np.float32)
    cents = rng.integers(-2, 3, size=(40, 4)).astype(np.float32)
    dots = xq @ cents.T
    scores = -dots if use_ip else np.maximum((xq**2).sum(1)[:, None] + (cents**2).sum(1)[None] - 2 * dots, 0)
    D, L = coarse_topk(xq, dots, (cents**2).sum(1).astype(np.float32), nprobe, use_ip)
    want = np.argsort(scores, axis=1, kind="stable")[:, :nprobe]
    np.testing.assert_array_equal(D, np.take_along_axis(scores, want, 1))
    if nprobe <= 4:  # the reservoir's quickselect breaks ties arbitrarily
        np.testing.assert_array_equal(L, want)
