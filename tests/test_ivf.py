"""IVFIndex: full probing equals brute force over its reconstructions, recall vs nprobe, re-ranking,
remove/add, persistence (incl. vectors read lazily from disk and on-disk append), tree coarse quantizer."""
import numpy as np
import pytest

import annvq
from annvq import (
    DimensionError,
    InvalidInputError,
    NotTrainedError,
    ProductQuantizer,
    UnknownIdError,
)
from annvq.datasets import knn_groundtruth, knn_recall, load_annb, recall_at
from annvq.index import IVFIndex
from annvq.index.coarse import TreeCoarse, _split_budget
from annvq.quantizers.base import _REGISTRY

D = 16


def clustered(n, rng, centers=24, d=D, spread=0.6):
    c = rng.normal(size=(centers, d)).astype(np.float32) * 4
    return (c[rng.integers(centers, size=n)] + rng.normal(size=(n, d)) * spread).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    x = clustered(3000, rng)
    xq = clustered(40, rng)
    return x, xq


@pytest.fixture(scope="module")
def pq_index(data):
    x, _ = data
    idx = annvq.index_factory(D, "IVF16,PQ4x8")
    idx.train(x)
    idx.add(x, ids=np.arange(len(x)) * 2 + 5)
    return idx


def _bruteforce(xh, xq, metric):
    if metric == "l2":
        return ((xq[:, None] - xh[None]) ** 2).sum(-1)
    if metric == "cosine":
        xq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    return -(xq @ xh.T)


CASES = [(spec, metric) for spec in ["IVF16,PQ4x6", "IVF16,SQ8", "IVF16,OPQ4,PQ4x5", "IVF16_HKM,PQ4x6"]
         for metric in ["l2", "ip", "cosine"]]
if "rq" in _REGISTRY:  # an additive codec: its exact ||r^||^2 enters the L2 bias
    CASES += [("IVF16,RQ4x6", "l2"), ("IVF16,RQ4x6", "ip")]


@pytest.mark.parametrize(("spec", "metric"), CASES)
def test_full_probe_equals_bruteforce_on_reconstructions(data, spec, metric):
    """nprobe = nlist scans every code: results must be brute force over reconstruct(id) = c + r^."""
    x, xq = data
    idx = annvq.index_factory(D, spec, metric=metric)
    idx.train(x)
    ids = idx.add(x)
    xh = idx.reconstruct_batch(ids)
    S = _bruteforce(xh, xq, metric)
    Dv, I = idx.search(xq, 10, nprobe=idx.nlist)
    sign = 1 if metric == "l2" else -1
    ref = np.sort(S, axis=1)[:, :10]
    scale = np.abs(ref).max()
    np.testing.assert_allclose(sign * Dv, ref, atol=1e-5 * scale)
    # every returned id really has the returned distance to its reconstruction
    np.testing.assert_allclose(sign * Dv, np.take_along_axis(S, I, axis=1), atol=1e-5 * scale)
    # and nothing clearly closer was missed (ids may differ only among near-ties at the 10th place)
    must = S < ref[:, -1:] - 1e-4 * scale
    assert all(set(np.flatnonzero(m)) <= set(row) for m, row in zip(must, I))


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("spec", ["IVF16,PQ4x8", "IVF16,SQ8"])  # table scan, and SQ's linear scan
def test_partial_probe_equals_bruteforce_over_probed_lists(data, spec, metric):
    """With nprobe < nlist, results are brute force over the reconstructions in the probed lists:
    the per-list constant and the per-row bias are right for every list, not only in sum."""
    x, xq = data
    idx = annvq.index_factory(D, spec, metric=metric)
    idx.train(x)
    ids = idx.add(x)
    xh = idx.reconstruct_batch(ids)
    list_of = idx.list_of(ids)
    Dv, I = idx.search(xq, 10, nprobe=4)
    _, probes = idx.coarse.search(xq, 4, "l2" if metric == "l2" else "ip")
    S = _bruteforce(xh, xq, metric)
    sign = 1 if metric == "l2" else -1
    for q in range(len(xq)):
        s_q = S[q][np.isin(list_of, probes[q])]
        ref = np.sort(s_q)[:10]
        np.testing.assert_allclose(sign * Dv[q], ref, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize(("spec", "metric"), [("IVF16,PQ4x8", "l2"), ("IVF16,SQ8", "ip"), ("IVF16,PQ8x4fs", "l2"),
                                            ("IVF16,PQ4x8,Refine", "cosine")])
def test_search_preassigned_equals_search(data, spec, metric):
    """Lists chosen by the caller (a router searching the coarse quantizer once for several shards) give
    exactly what search finds with the same nprobe, over sealed and growing segments alike."""
    x, xq = data
    idx = annvq.index_factory(D, spec, metric=metric)
    idx.train(x)
    idx.add(x[:2000])
    idx.add(x[2000:2300])  # a growing segment too
    scores, lists = idx.coarse.search(idx.prepare(xq), 5, idx.codec_metric)
    D1, I1 = idx.search(xq, 7, nprobe=5)
    D2, I2 = idx.search_preassigned(xq, 7, lists, scores)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)
    # a list left out (-1) is not visited
    cut = lists.copy()
    cut[:, 1:] = -1
    np.testing.assert_array_equal(idx.search_preassigned(xq, 7, cut, scores)[1], idx.search(xq, 7, nprobe=1)[1])
    with pytest.raises(InvalidInputError, match="nprobe=3 differs"):
        idx.search_preassigned(xq, 7, lists, scores, nprobe=3)
    with pytest.raises(InvalidInputError, match="lists and scores"):
        idx.search_preassigned(xq, 7, lists[:3], scores[:3])
    with pytest.raises(InvalidInputError, match="list numbers"):
        idx.search_preassigned(xq, 7, lists + 100, scores)
    with pytest.raises(InvalidInputError, match="not finite"):
        idx.search_preassigned(xq, 7, lists, np.full(scores.shape, np.nan))


def test_results_sorted_padded_and_ids_external(data, pq_index):
    x, xq = data
    D1, I1 = pq_index.search(xq, 5000, nprobe=16)  # k > ntotal: pads
    assert (I1[:, 3000:] == -1).all() and np.isinf(D1[:, 3000:]).all()
    assert (np.diff(D1[:, :3000], axis=1) >= 0).all()
    assert np.isin(I1[:, :3000], np.arange(len(x)) * 2 + 5).all()
    assert pq_index.list_sizes().sum() == pq_index.ntotal == 3000
    assert pq_index.code_size == 4


def test_recall_grows_with_nprobe_synthetic(data, pq_index):
    x, xq = data
    _, gt = knn_groundtruth(x, xq, 10)
    gt_ext = gt * 2 + 5
    recalls = [knn_recall(pq_index.search(xq, 10, nprobe=p)[1], gt_ext, 10) for p in (1, 2, 4, 16)]
    assert all(b >= a - 1e-9 for a, b in zip(recalls, recalls[1:])), recalls
    assert recalls[-1] > recalls[0]


@pytest.mark.shared_data
def test_sift10k_recall_grows_with_nprobe_and_rerank_lifts_recall(shared_data):
    ds = load_annb(shared_data / "sift10k" / "sift10k-128-euclidean.hdf5")
    idx = annvq.index_factory(128, "IVF32,PQ16x6,Refine")
    idx.train(ds.train)
    idx.add(ds.train)
    r10 = [knn_recall(idx.search(ds.test, 10, nprobe=p, rerank=False)[1], ds.neighbors, 10) for p in (1, 4, 16)]
    assert r10[0] < r10[1] < r10[2], r10
    r1_adc = recall_at(idx.search(ds.test, 10, nprobe=16, rerank=False)[1], ds.neighbors, 1)
    D, I = idx.search(ds.test, 10, nprobe=16)  # re-ranks the best k_factor * k = 40 candidates
    r1_rerank = recall_at(I, ds.neighbors, 1)
    assert r1_rerank > 0.95 and r1_rerank > r1_adc + 0.2, (r1_rerank, r1_adc)
    # re-ranked distances are exact squared distances
    exact = ((ds.test - ds.train[I[:, 0]]) ** 2).sum(1)
    np.testing.assert_allclose(D[:, 0], exact, rtol=1e-5)


def test_remove_then_add_round_trip(data):
    x, xq = data
    idx = annvq.index_factory(D, "IVF16,PQ4x6,Refine")
    idx.train(x)
    ids = idx.add(x)
    D0, I0 = idx.search(xq, 10, nprobe=4, rerank=False)
    R0 = idx.search(xq, 10, nprobe=4)
    C0 = idx.search(xq, 40, nprobe=4, rerank=False)
    gone = ids[::3]
    assert idx.remove(gone) == len(gone)
    assert idx.ntotal == len(x) - len(gone)
    assert idx.list_sizes().sum() == idx.ntotal
    D1, I1 = idx.search(xq, 10, nprobe=4)
    assert not np.isin(I1, gone).any()
    with pytest.raises(UnknownIdError):
        idx.remove([gone[0]])
    with pytest.raises(UnknownIdError):
        idx.reconstruct(int(gone[0]))
    idx.add(x[::3], ids=gone)
    _same_up_to_ties(idx.search(xq, 10, nprobe=4, rerank=False), (D0, I0))  # same codes back
    # re-ranking sees the same 40 candidates, except where ADC distances tie at the 40th place
    R2 = idx.search(xq, 10, nprobe=4)
    C2 = idx.search(xq, 40, nprobe=4, rerank=False)
    _same_up_to_ties(C2, C0)
    same = np.array([set(a) == set(b) for a, b in zip(C0[1], C2[1])])
    np.testing.assert_array_equal(R2[0][same], R0[0][same])
    cents = idx.coarse.centroids[idx.list_of(gone[:5])]
    np.testing.assert_allclose(idx.reconstruct_batch(gone[:5]),
                               cents + idx.codec.decode(idx.codec.encode(x[::3][:5] - cents)), atol=1e-5)


def _same_up_to_ties(a, b):
    """Equal distances, and equal ids except in the order or choice among ties at the k-th distance."""
    np.testing.assert_array_equal(a[0], b[0])
    for d1, i1, i2 in zip(a[0], a[1], b[1]):
        assert set(i1[d1 < d1[-1]]) == set(i2[d1 < d1[-1]])


def _same_results(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("spec", ["IVF16,PQ4x6,Refine", "IVF16_HKM,SQ8"])
def test_save_load_identical_and_lazy_vectors(data, tmp_path, spec):
    x, xq = data
    idx = annvq.index_factory(D, spec)
    idx.train(x)
    idx.add(x[:2000], ids=np.arange(2000) + 10)
    idx.remove(np.arange(10, 200))
    path = tmp_path / "ivf"
    idx.save(path)
    back = annvq.load(path)
    assert isinstance(back, IVFIndex) and back.spec == spec and back.nlist == 16 and back.coarse.kind == idx.coarse.kind
    assert back.ntotal == idx.ntotal and back.code_size == idx.code_size
    for params in ({"nprobe": 1}, {"nprobe": 5}, {"nprobe": 16}):
        _same_results(idx.search(xq, 10, **params), back.search(xq, 10, **params))
    if idx.rerank:
        assert back.memory_usage()["sealed"] < 1800 * D * 4  # the exact vectors stayed on disk
        _same_results(idx.search(xq, 10, nprobe=5, k_factor=3), back.search(xq, 10, nprobe=5, k_factor=3))
        # mixed: vectors on disk plus new ones in memory, then saved over the file it came from
        back.add(x[2000:2100], ids=np.arange(5000, 5100))
        idx.add(x[2000:2100], ids=np.arange(5000, 5100))
        _same_results(idx.search(xq, 10, nprobe=5), back.search(xq, 10, nprobe=5))
        back.remove(np.arange(300, 400))
        idx.remove(np.arange(300, 400))
        back.save(path)
        again = annvq.load(path)
        _same_results(idx.search(xq, 10, nprobe=5), again.search(xq, 10, nprobe=5))
        D_self, I_self = again.search(x[[2000, 1490]], 1, nprobe=16)  # exact vectors came back from disk
        np.testing.assert_array_equal(I_self[:, 0], [5000, 1500])
        np.testing.assert_array_equal(D_self[:, 0], [0.0, 0.0])


def test_append_on_disk_matches_in_memory_add(data, tmp_path):
    x, xq = data
    idx = annvq.index_factory(D, "IVF16,PQ4x6,Refine")
    idx.train(x)
    idx.add(x[:1000])
    path = tmp_path / "a"
    idx.save(path)
    new_ids = annvq.append(path, x[1000:2500])
    assert list(new_ids[:2]) == [1000, 1001]
    idx.add(x[1000:2500])
    back = annvq.load(path)
    assert back.ntotal == 2500
    _same_up_to_ties(idx.search(xq, 10, nprobe=4, rerank=False), back.search(xq, 10, nprobe=4, rerank=False))
    # re-ranking scores the best 40 by code distance: the same set, unless codes tie at the 40th place
    adc = idx.search(xq, 41, nprobe=4, rerank=False)[0]
    clear = adc[:, 39] < adc[:, 40]
    a, b = idx.search(xq, 10, nprobe=4), back.search(xq, 10, nprobe=4)
    _same_up_to_ties((a[0][clear], a[1][clear]), (b[0][clear], b[1][clear]))
    assert clear.mean() > 0.5


def test_tree_coarse_quantizer(data):
    x, xq = data
    tree = TreeCoarse(50, branching=4, beam=2).fit(x)
    assert tree.centroids.shape == (50, D) and tree.depth >= 3
    assert np.array_equal(np.sort(tree.leaf[tree.leaf >= 0]), np.arange(50))
    # an unbounded beam visits every leaf: exactly the nearest centroids
    tree.beam = 10_000
    Dt, L = tree.search(xq, 5)
    S = ((xq[:, None] - tree.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(L, np.argsort(S, axis=1)[:, :5])
    np.testing.assert_allclose(Dt, np.sort(S, axis=1)[:, :5], rtol=1e-4)
    # narrower beams (beam=1: greedy descent) find the nearest leaf less often
    hits = []
    for beam in (1, 2, 4):
        tree.beam = beam
        hits.append((tree.assign(xq) == S.argmin(1)).mean())
    assert hits[0] <= hits[1] <= hits[2] and hits[2] > 0.9, hits
    # as an IVF quantizer
    idx = IVFIndex(ProductQuantizer(D, 4, 6), nlist=50, coarse="tree", branching=4, beam=4)
    idx.train(x)
    idx.add(x)
    _, gt = knn_groundtruth(x, xq, 10)
    assert knn_recall(idx.search(xq, 10, nprobe=50)[1], gt, 10) >= knn_recall(idx.search(xq, 10, nprobe=2)[1], gt, 10)


def test_split_budget():
    out = _split_budget(np.array([100, 1, 0, 50]), 20)
    assert out.sum() == 20 and (out >= 1).all() and out[1] == 1 and out[2] == 1 and out[0] > out[3]


def test_errors(data):
    x, xq = data
    idx = IVFIndex(ProductQuantizer(D, 4, 6), nlist=16)
    with pytest.raises(NotTrainedError):
        idx.search(xq, 3)
    with pytest.raises(InvalidInputError, match="at least"):
        IVFIndex(ProductQuantizer(D, 4, 2), nlist=64).train(x[:40])
    for kw in ({"nlist": 0}, {"nlist": 4, "coarse": "ball"}, {"nlist": 4, "nprobe": 0}, {"nlist": 4, "k_factor": -1},
               {"nlist": 4, "coarse": "tree", "branching": 1}):
        with pytest.raises(InvalidInputError):
            IVFIndex(ProductQuantizer(D, 4, 8), **kw)
    idx.train(x)
    idx.add(x[:100])
    with pytest.raises(InvalidInputError, match="nprobe"):
        idx.search(xq, 3, nprobe=0)
    with pytest.raises(InvalidInputError, match="nprobe"):
        idx.search(xq, 3, nprobe=1.5)
    with pytest.raises(InvalidInputError, match="rerank"):
        idx.search(xq, 3, rerank=True)
    with pytest.raises(InvalidInputError, match="k must"):
        idx.search(xq, 0)
    with pytest.raises(DimensionError):
        idx.search(xq[:, :8], 3)
    with pytest.raises(DimensionError):
        idx.add(x[:, :8])
    with pytest.raises(UnknownIdError):
        idx.remove([12345])
