"""Fast-scan indexes (``PQ<M>x4fs``, flat and IVF): sealed segments packed, the growing one not, one
top-k, optionally re-scored with exact table sums; deletions, persistence, merges and retraining."""
import numpy as np
import pytest

import annvq
from annvq import BaseIndex

D = 32


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(20, D)).astype(np.float32) * 3
    x = (centers[rng.integers(20, size=6000)] + rng.normal(size=(6000, D))).astype(np.float32)
    return x, x[::97] + 0.05


def _plain_twin(index: BaseIndex) -> BaseIndex:
    """The same model with codes kept unpacked (exact ADC everywhere)."""
    attrs, arrays = index.model_state()
    return BaseIndex.from_state({**attrs, "fast_scan": False}, arrays)


def _assert_same_up_to_ties(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
    for d, a, b in zip(got[0], got[1], want[1]):
        sure = d < d[-1] - 1e-3 * max(1.0, abs(d[-1]))
        assert set(a[sure]) == set(b[sure])


@pytest.mark.parametrize("spec,metric", [("PQ16x4fs", "l2"), ("PQ15x4fs", "ip"), ("IVF16,PQ16x4fs", "l2"),
                                         ("IVF16,OPQ16,PQ16x4fs", "ip"), ("IVF16,PQ8x4fs", "cosine")])
def test_matches_exact_adc_when_the_depth_covers_the_candidates(data, spec, metric):
    """k as large as what the probed lists hold: the quantised scan then keeps every candidate, and
    re-scoring with the float tables (``rescore``) gives the distances and ranking of plain ADC over the
    same codes; without it the quantised ranking finds about as many of the exact top 10."""
    x, xq = data
    d = 30 if spec.startswith("PQ15") else D
    x, xq = x[:, :d], xq[:, :d]
    idx = annvq.index_factory(d, spec, metric=metric)
    idx.seal_rows = 2000
    idx.train(x[:3000])
    for s in range(0, 6000, 1500):  # sealed, packed segments and a growing one
        idx.add(x[s : s + 1500])
    idx.add(x[:700] * 1.5)
    idx.remove(np.arange(0, 6000, 11))
    assert idx.code_size == (idx.codec.M + 1) // 2 and len(idx.segments) >= 2 and idx.info()["growing"] > 0
    twin = _plain_twin(idx)
    vectors = np.concatenate([x, x[:700] * 1.5])
    live = np.setdiff1d(np.arange(6700), np.arange(0, 6000, 11))
    twin.add(vectors[live], live)
    kw = {"nprobe": 16} if "IVF" in spec else {}
    got = idx.search(xq, 3500, rescore=True, **kw)  # a re-scoring depth of 7000 >= ntotal
    want = twin.search(xq, 3500, **kw)
    _assert_same_up_to_ties(got, want)
    assert not np.isin(got[1], np.arange(0, 6000, 11)).any()
    for top in (idx.search(xq, 10, rescore=True, **kw), idx.search(xq, 10, **kw)):
        assert (top[1] >= 0).all()
        if metric == "l2":  # the top 10 is close to the exact one
            assert np.mean([len(set(a) & set(b)) for a, b in zip(top[1], want[1][:, :10])]) >= 8


def test_rescore_is_a_fast_scan_parameter(data):
    """Plain fast-scan distances are the quantised estimates (as faiss's); ``rescore`` replaces them by
    float table sums; other indexes refuse the parameter by name."""
    x, xq = data
    idx = annvq.index_factory(D, "PQ16x4fs")
    idx.train(x[:3000])
    idx.add(x)
    idx.seal()
    plain, exact = idx.search(xq, 10), idx.search(xq, 10, rescore=True, k_factor=50)
    twin = _plain_twin(idx)
    twin.add(x)
    np.testing.assert_allclose(exact[0], twin.search(xq, 10)[0], rtol=1e-5)
    assert not np.allclose(plain[0], exact[0], rtol=1e-5)
    np.testing.assert_allclose(plain[0], exact[0], rtol=0.1)
    with pytest.raises(annvq.InvalidInputError, match="rescore"):
        twin.search(xq, 10, rescore=True)


def test_round_trip_merge_and_retrain(data, tmp_path):
    x, xq = data
    idx = annvq.index_factory(D, "IVF16,PQ16x4fs,Refine")
    idx.seal_rows = 1000
    idx.auto_compact = False
    idx.train(x[:3000])
    for s in range(0, 4000, 1000):
        idx.add(x[s : s + 1000])
    idx.remove(np.arange(0, 4000, 5))
    idx.seal()
    before = idx.search(xq, 10, nprobe=4)
    codes_before = idx.search(xq, 10, nprobe=4, rerank=False)
    deep_before = idx.search(xq, 10, nprobe=4, k_factor=100)  # every probed row re-ranked
    idx.save(tmp_path / "fs")
    back = annvq.load(tmp_path / "fs")
    np.testing.assert_array_equal(back.search(xq, 10, nprobe=4)[1], before[1])
    assert back.memory_usage()["sealed"] < 4000 * (8 + 8 + 4)  # packed codes (8 B) and ids; vectors on disk
    back.compact(full=True)
    assert len(back.segments) == 1 and back.ntotal == 3200
    # merging keeps every code distance; the exact pass re-ranks the quantised best k_factor * k, whose
    # ties at the last place may fall to other rows once rows move, so only a deep re-rank is identical
    np.testing.assert_array_equal(back.search(xq, 10, nprobe=4, rerank=False)[0], codes_before[0])
    np.testing.assert_array_equal(back.search(xq, 10, nprobe=4, k_factor=100)[0], deep_before[0])
    after = back.search(xq, 10, nprobe=4)[1]
    assert np.mean([len(set(a) & set(b)) for a, b in zip(after, before[1])]) >= 9.5
    back.train(x[2000:5000])  # retraining re-encodes from the exact vectors, packed again
    assert back.reencoded_from == "exact" and back.segments[0].packed is not None
    D_self, I_self = back.search(x[[1, 2, 3]], 1, nprobe=16)
    np.testing.assert_array_equal(I_self[:, 0], [1, 2, 3])
    assert back.save(tmp_path / "fs").files >= 2


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_refine_covering_every_row_is_exact_search_over_every_kind_of_segment(data, tmp_path, metric):
    """Exact re-ranking reads the vectors in place (sealed and growing segments in memory) or from the
    file (a loaded index): with every row a candidate, both give brute-force search over the live rows."""
    x, xq = data
    x = x[:2500]
    idx = annvq.index_factory(D, "IVF16,PQ16x4fs,Refine", metric=metric)
    idx.seal_rows, idx.auto_compact = 1000, False
    idx.train(x)
    for s in range(0, 2500, 1000):
        idx.add(x[s : s + 1000])  # two sealed (packed) segments and a growing one
    gone = np.arange(0, 2500, 7)
    idx.remove(gone)
    live = np.setdiff1d(np.arange(2500), gone)
    score = -(xq @ x[live].T) if metric == "ip" else ((xq[:, None, :] - x[live][None]) ** 2).sum(-1)
    want = live[np.argsort(score, axis=1, kind="stable")[:, :10]]
    idx.save(tmp_path / "r")
    for index in (idx, annvq.load(tmp_path / "r")):
        Dg, Ig = index.search(xq, 10, nprobe=16, k_factor=250)
        assert np.mean([len(set(a) & set(b)) for a, b in zip(Ig, want)]) >= 9.9
        exact = (-(xq[:, None, :] * x[Ig]).sum(-1) if metric == "ip" else ((xq[:, None, :] - x[Ig]) ** 2).sum(-1))
        np.testing.assert_allclose(-Dg if metric == "ip" else Dg, exact, rtol=1e-4, atol=1e-3)


def test_fast_scan_needs_4_bit_pq(data):
    with pytest.raises(annvq.SpecError, match="fast_scan"):
        annvq.index_factory(D, "PQ8x8fs")
    with pytest.raises(annvq.SpecError, match="multiple of M"):
        annvq.index_factory(D, "PQ7x4fs")
    with pytest.raises(annvq.InvalidInputError, match="4-bit PQ or OPQ"):
        annvq.FlatIndex(annvq.ProductQuantizer(D, 8, 8), fast_scan=True)
