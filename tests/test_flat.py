"""FlatIndex: results equal brute force over decoded vectors, stable ids, metrics and every error path."""
import numpy as np
import pytest

import annvq
from annvq import (
    DimensionError,
    DuplicateIdError,
    FlatIndex,
    InvalidInputError,
    NotTrainedError,
    ProductQuantizer,
    UnknownIdError,
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2000, 16)).astype(np.float32) * 3 + 1
    xq = rng.normal(size=(20, 16)).astype(np.float32) * 3 + 1
    return x, xq


def _bruteforce(xh, xq, metric, k):
    if metric == "l2":
        s = ((xq[:, None] - xh[None]) ** 2).sum(-1)
        order = np.argsort(s, axis=1, kind="stable")[:, :k]
    else:
        if metric == "cosine":
            xq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
        s = -(xq @ xh.T)
        order = np.argsort(s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("spec", ["PQ4x8", "SQ8", "OPQ4,PQ4x6"])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_search_equals_bruteforce_on_decoded(data, spec, metric):
    x, xq = data
    idx = annvq.index_factory(16, spec, metric=metric)
    idx.train(x)
    ids = idx.add(x)
    assert np.array_equal(ids, np.arange(len(x)))
    D, I = idx.search(xq, 10)
    xh = idx.reconstruct_batch(np.arange(len(x)))
    Dref, Iref = _bruteforce(xh, xq, metric, 10)
    sign = 1 if metric == "l2" else -1
    np.testing.assert_allclose(D, sign * Dref, rtol=1e-3, atol=1e-3)
    # ids may differ only where distances tie
    agree = (I == Iref).mean()
    assert agree > 0.97


def test_results_are_sorted_and_padded(data):
    x, xq = data
    idx = FlatIndex(ProductQuantizer(16, 4, 4)).train(x)
    idx.add(x[:5])
    D, I = idx.search(xq[:3], 8)
    assert (I[:, 5:] == -1).all() and np.isinf(D[:, 5:]).all()
    assert (np.diff(D[:, :5], axis=1) >= 0).all()
    ipidx = FlatIndex(ProductQuantizer(16, 4, 4), metric="ip").train(x)
    ipidx.add(x[:5])
    D, I = ipidx.search(xq[:3], 8)
    assert (np.diff(D[:, :5], axis=1) <= 0).all() and np.isneginf(D[:, 5:]).all()


def test_ids_stable_across_remove(data):
    x, xq = data
    idx = FlatIndex(ProductQuantizer(16, 4, 8)).train(x)
    ext = np.arange(len(x)) * 10 + 7
    idx.add(x, ids=ext)
    before = idx.reconstruct_batch(ext[[3, 500, 1999]])
    assert idx.remove(ext[:1000]) == 1000
    assert idx.ntotal == 1000
    np.testing.assert_array_equal(idx.reconstruct_batch(ext[[500 + 500, 1999]]),
                                  idx.reconstruct_batch(ext[[1000, 1999]]))
    np.testing.assert_array_equal(idx.reconstruct(int(ext[1999])), before[2])
    D, I = idx.search(xq, 20)
    assert np.isin(I, ext[1000:]).all()
    with pytest.raises(UnknownIdError, match="unknown id"):
        idx.reconstruct(int(ext[3]))
    # new ids continue after the largest existing one
    new = idx.add(x[:2])
    assert list(new) == [ext[-1] + 1, ext[-1] + 2]


def test_remove_unknown_changes_nothing(data):
    x, _ = data
    idx = FlatIndex(ProductQuantizer(16, 4, 4)).train(x)
    idx.add(x[:100])
    with pytest.raises(UnknownIdError, match="12345"):
        idx.remove([1, 2, 12345])
    assert idx.ntotal == 100
    with pytest.raises(InvalidInputError, match="repeated"):
        idx.remove([1, 1])
    assert idx.ntotal == 100


def test_bad_inputs(data):
    x, xq = data
    idx = FlatIndex(ProductQuantizer(16, 4, 4))
    raw = idx.add(x[:5])  # kept raw (exact) until the index is trained
    assert idx.ntotal == 5 and not idx.is_trained
    np.testing.assert_array_equal(idx.reconstruct_batch(raw), x[:5])
    with pytest.raises(NotTrainedError, match="5 raw vectors"):
        idx.search(xq, 1)
    idx.remove(raw)
    idx.train(x)
    assert list(idx.add(x[:10])[:2]) == [5, 6]  # automatic ids never reuse a deleted one
    with pytest.raises(DimensionError, match="expected dimension 16, got 8"):
        idx.add(x[:, :8])
    with pytest.raises(DimensionError):
        idx.search(xq[:, :3], 1)
    bad = x[:3].copy()
    bad[1, 2] = np.inf
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        idx.add(bad)
    with pytest.raises(InvalidInputError, match="dtype"):
        idx.add(np.array([[1 + 2j] * 16]))
    with pytest.raises(InvalidInputError, match="empty"):
        idx.add(np.zeros((0, 16)))
    for k in (0, -1, 2.5, True):
        with pytest.raises(InvalidInputError, match="k must be"):
            idx.search(xq, k)
    with pytest.raises(DuplicateIdError):
        idx.add(x[:2], ids=[0, 5])
    with pytest.raises(DuplicateIdError):
        idx.add(x[:2], ids=[50, 50])
    with pytest.raises(InvalidInputError, match="2 ids for 3"):
        idx.add(x[:3], ids=[100, 101])
    with pytest.raises(InvalidInputError, match="metric"):
        FlatIndex(ProductQuantizer(16, 4, 4), metric="hamming")
    assert idx.ntotal == 10  # nothing above changed the index
    cos = FlatIndex(ProductQuantizer(16, 4, 4), metric="cosine").train(x)
    with pytest.raises(InvalidInputError, match="zero vector"):
        cos.add(np.zeros((1, 16)))


def test_integer_input_accepted(data):
    x, _ = data
    idx = FlatIndex(ProductQuantizer(16, 4, 4)).train(x)
    idx.add(np.rint(x[:5]).astype(np.int32))
    assert idx.ntotal == 5


def test_batch_search_runs_blas_on_one_thread():
    """Batches limit BLAS to one thread while Numba's kernels run (their idle spinning slows both);
    single queries leave BLAS alone, and the limit is lifted afterwards."""
    from threadpoolctl import threadpool_info

    from annvq._threads import single_blas_thread

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with single_blas_thread(1):
        assert blas_threads() == before
    with single_blas_thread(100):
        inside = blas_threads()
    assert blas_threads() == before
    assert inside and all(n == 1 for n in inside)
    # overlapping searches (the service's worker threads): the limit holds until the last one ends
    outer, inner = single_blas_thread(100), single_blas_thread(200)
    with outer:
        with inner:
            pass
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before


def test_encoding_a_batch_runs_blas_on_one_thread(data, monkeypatch):
    """Adds encode with BLAS on one thread too: BLAS's spinning threads slowed a 100-vector add to an
    IVF index tenfold on 2 cores. The limit is lifted afterwards."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    x, _ = data
    idx = annvq.index_factory(x.shape[1], "IVF4,PQ4x4").train(x)
    seen = []
    encode = idx.codec.encode
    monkeypatch.setattr(idx.codec, "encode", lambda r: (seen.append(blas_threads()), encode(r))[1])
    before = blas_threads()
    idx.add(x[:100])
    assert seen and seen[0] and all(n == 1 for n in seen[0])
    assert blas_threads() == before
    assert idx.ntotal == 100
