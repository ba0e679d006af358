"""Additive codecs (RQ, AQ, CQ): the seed's worked examples, ADC identities, FlatIndex search, kernels'
fallback paths, persistence, errors, and quality ordering on SIFT10K."""
import h5py
import numpy as np
import pytest

from annvq import OPQ, DimensionError, FlatIndex, InvalidInputError, NotTrainedError, ProductQuantizer, Quantizer
from annvq.quantizers import AdditiveQuantizer, CompositeQuantizer, ResidualQuantizer
from annvq.quantizers import additive as additive_mod
from annvq.quantizers.additive import least_squares_codebooks

CODECS = {
    "rq": lambda d, M, nbits: ResidualQuantizer(d, M=M, nbits=nbits, beam_size=4, refine_iters=1),
    "aq": lambda d, M, nbits: AdditiveQuantizer(d, M=M, nbits=nbits, beam_size=4, train_beam_size=2, niter=2),
    "cq": lambda d, M, nbits: CompositeQuantizer(d, M=M, nbits=nbits, niter=3, niter_free=2, ramp=1, niter_encoder=1,
                                                  lbfgs_iters=10),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(6, 16))
    x = (rng.normal(size=(700, 6)) @ basis + 0.3 * rng.normal(size=(700, 16))).astype(np.float32)
    return x[:600], x[600:]


@pytest.fixture(scope="module")
def trained(data):
    x, _ = data
    return {kind: make(16, 3, 4).fit(x) for kind, make in CODECS.items()}


@pytest.fixture(scope="module")
def sift(shared_data):
    with h5py.File(shared_data / "sift10k" / "sift10k-128-euclidean.hdf5", "r") as f:
        return f["train"][:], f["test"][:]


# --- the seed's worked examples ----------------------------------------------------------------------
def test_rq_seed_example_two_stages():
    x = np.array([[2, 3], [3, 3.5], [4, 5], [5, 4.5]], dtype=np.float32)
    rq = ResidualQuantizer(2, M=2, nbits=1, beam_size=1, init="k-means++", random_state=0).fit(x)
    c1 = rq.codebooks[0][np.argsort(rq.codebooks[0][:, 0])]
    np.testing.assert_allclose(c1, [[2.5, 3.25], [4.5, 4.75]], atol=1e-6)
    codes = rq.encode(x)
    residuals = x - rq.codebooks[0][codes[:, 0]]
    np.testing.assert_allclose(residuals, [[-0.5, -0.25], [0.5, 0.25], [-0.5, 0.25], [0.5, -0.25]], atol=1e-6)
    # stage 2 splits the residuals along the first axis (error 4 * 0.0625 beats 4 * 0.25 along the second)
    c2 = rq.codebooks[1][np.argsort(rq.codebooks[1][:, 0])]
    np.testing.assert_allclose(c2, [[-0.5, 0.0], [0.5, 0.0]], atol=1e-6)
    np.testing.assert_allclose(rq.decode(codes), rq.codebooks[0][codes[:, 0]] + rq.codebooks[1][codes[:, 1]])
    np.testing.assert_allclose(rq.mse(x), 0.0625, rtol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_aq_seed_greedy_encoding(beam_size):
    cb = np.array([[[2, 3], [1, 2]], [[3, 4], [2, 3]]], dtype=np.float32)
    aq = Quantizer.from_state({"kind": "aq", "d": 2, "M": 2, "nbits": 1, "beam_size": beam_size}, {"codebooks": cb})
    codes = aq.encode(np.array([[5, 7]], dtype=np.float32))
    assert codes.tolist() == [[0, 0]]
    np.testing.assert_array_equal(aq.decode(codes), [[5, 7]])


def test_cq_seed_distance_identity():
    rng = np.random.default_rng(3)
    q, ci, cj = rng.normal(size=(3, 8))
    lhs = np.sum((q - (ci + cj)) ** 2)
    rhs = q @ q + ci @ ci + cj @ cj + 2 * ci @ cj - 2 * q @ ci - 2 * q @ cj
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


# --- ADC tables against decoded vectors ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rq", "aq", "cq"])
def test_tables_match_decoded_distances(trained, data, kind):
    q, (x, xq) = trained[kind], data
    codes = q.encode(x[:200])
    xh = q.decode(codes).astype(np.float64)
    rows = np.arange(q.M)[None, :]
    for metric in ("l2", "ip"):
        t = q.lookup_tables(xq[:5], metric)
        assert t.shape == (5, q.M, q.ksub) and t.dtype == np.float32
        adc = t[:, rows, codes.astype(np.int64)].sum(-1).astype(np.float64)  # (5, 200)
        if metric == "ip":
            np.testing.assert_allclose(adc, -(xq[:5] @ xh.T), rtol=1e-4, atol=1e-3)
            continue
        exact = ((xq[:5, None, :] - xh[None]) ** 2).sum(-1)
        if kind == "cq":  # the table sum is off by exactly eps - cross(x)
            assert not q.needs_norm("l2")
            exact = exact + q.eps - q.cross_terms(codes)[None, :]
        else:
            assert q.needs_norm("l2") and not q.needs_norm("ip")
            adc = adc + (xh * xh).sum(1)[None, :]
        np.testing.assert_allclose(adc, exact, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("kind", ["rq", "aq", "cq"])
def test_flat_index_ranks_like_brute_force(data, kind):
    x, xq = data
    codec = CODECS[kind](16, 4, 6) if kind != "rq" else ResidualQuantizer(16, M=4, nbits=6)
    index = FlatIndex(codec, metric="l2", norm_bits=32)
    index.train(x)
    index.add(x)
    D, I = index.search(xq, 10)
    xh = codec.decode(codec.encode(x)).astype(np.float64)
    exact = ((xq[:, None, :] - xh[None]) ** 2).sum(-1)
    if kind == "cq":
        exact += codec.eps - codec.cross_terms(codec.encode(x))[None, :]
    ref = np.sort(exact, axis=1)[:, :10]
    np.testing.assert_allclose(D, ref, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(exact[np.arange(len(xq))[:, None], I], D, rtol=1e-4, atol=1e-2)
    assert index.code_size == codec.code_size + (4 if kind != "cq" else 0)


def test_flat_index_inner_product_aq(data):
    x, xq = data
    codec = AdditiveQuantizer(16, M=2, nbits=5, niter=1, beam_size=2, train_beam_size=2)
    index = FlatIndex(codec, metric="ip")
    index.train(x)
    index.add(x)
    D, I = index.search(xq, 5)
    sims = xq @ codec.decode(codec.encode(x)).T
    np.testing.assert_allclose(D, -np.sort(-sims, axis=1)[:, :5], rtol=1e-4, atol=1e-3)


# --- encoders ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rq", "aq", "cq"])
def test_shapes_dtypes_and_uint16_codes(data, kind):
    x, _ = data
    q = CODECS[kind](16, 2, 9).fit(x)  # 512 codewords per codebook -> uint16 codes
    codes = q.encode(x[:7])
    assert codes.shape == (7, 2) and codes.dtype == np.uint16 and int(codes.max()) < 512
    assert q.code_size == 4 == codes.nbytes // 7  # two uint16 sub-codes per vector
    xh = q.decode(codes)
    assert xh.shape == (7, 16) and xh.dtype == np.float32
    assert q.mse(x) < 0.5 * float(np.mean(np.sum((x - x.mean(0)) ** 2, axis=1)))


def test_beam_refinement_and_aq_improve_on_plain_rq(data):
    x, _ = data
    rq = ResidualQuantizer(16, M=4, nbits=4, beam_size=1, refine_iters=0).fit(x)
    greedy = rq.mse(x)
    rq.beam_size = 16
    assert rq.mse(x) <= greedy
    plain = ResidualQuantizer(16, M=4, nbits=4, beam_size=4, refine_iters=0).fit(x).mse(x)
    assert ResidualQuantizer(16, M=4, nbits=4, beam_size=4, refine_iters=2).fit(x).mse(x) < plain
    # AQ starts from this RQ (train_beam_size=4) and must improve on it
    aq = AdditiveQuantizer(16, M=4, nbits=4, beam_size=16, train_beam_size=4, niter=4).fit(x)
    assert aq.mse(x) < plain


@pytest.mark.parametrize("kind", ["rq", "aq", "cq"])
def test_encoders_without_cross_table_agree(trained, data, kind, monkeypatch):
    """Above MAX_TABLE_CODEWORDS the kernels compute codeword products on the fly: the same codes
    (up to rare near-ties, as float32 BLAS products and the kernel's dot products round differently)."""
    q, (x, _) = trained[kind], data
    before = q.encode(x[:50])
    state = q.get_state()
    monkeypatch.setattr(additive_mod, "MAX_TABLE_CODEWORDS", 0)
    q2 = Quantizer.from_state(*state)
    assert q2._cross.size == 0
    assert np.mean(q2.encode(x[:50]) == before) >= 0.95


@pytest.mark.parametrize("kind", ["rq", "aq", "cq"])
def test_a_vectors_code_does_not_depend_on_its_batch(trained, data, kind):
    """Encoding in other blocks or another order gives every vector the same code (a distributed build
    encodes exactly as one process); CQ's random local-search moves are seeded per vector."""
    q, x = trained[kind], data[0][:300]
    whole = q.encode(x)
    blocks = np.concatenate([q.encode(x[s : s + 70]) for s in range(0, 300, 70)])
    reversed_ = q.encode(x[::-1])[::-1]
    assert np.array_equal(whole, blocks) and np.array_equal(whole, reversed_)


def test_least_squares_dense_and_cg_agree(data):
    x, _ = data
    rq = ResidualQuantizer(16, M=3, nbits=4).fit(x)
    codes = rq.encode(x).astype(np.int32)
    dense = least_squares_codebooks(x, codes, rq.codebooks)
    cg = least_squares_codebooks(x, codes, rq.codebooks, max_dense=0)

    def err(cb):
        return float(np.sum((x - cb[np.arange(3)[None, :], codes].sum(1)) ** 2))

    assert err(dense) <= err(rq.codebooks) + 1e-3
    np.testing.assert_allclose(err(cg), err(dense), rtol=1e-4)


def test_sdc_matches_decoded(trained, data):
    q, (x, _) = trained["aq"], data
    a, b = q.encode(x[:6]), q.encode(x[6:15])
    xa, xb = q.decode(a).astype(np.float64), q.decode(b).astype(np.float64)
    np.testing.assert_allclose(q.sdc(a, b), ((xa[:, None] - xb[None]) ** 2).sum(-1), rtol=1e-4, atol=1e-3)


# --- persistence and errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rq", "aq", "cq"])
def test_state_round_trip(trained, data, kind):
    q, (x, xq) = trained[kind], data
    params, arrays = q.get_state()
    assert params["kind"] == kind and params["d"] == 16
    r = Quantizer.from_state(params, arrays)
    assert type(r) is type(q) and r.get_params() == q.get_params()
    np.testing.assert_array_equal(r.encode(x[:20]), q.encode(x[:20]))
    np.testing.assert_array_equal(r.lookup_tables(xq[:3]), q.lookup_tables(xq[:3]))


@pytest.mark.parametrize("kind", ["rq", "aq", "cq"])
def test_errors(trained, data, kind):
    x, _ = data
    fresh = CODECS[kind](16, 3, 4)
    for call in (lambda: fresh.encode(x), lambda: fresh.decode(np.zeros((1, 3), np.uint8)),
                 lambda: fresh.lookup_tables(x[:1]), fresh.get_state):
        with pytest.raises(NotTrainedError):
            call()
    q = trained[kind]
    with pytest.raises(DimensionError):
        q.encode(x[:, :8])
    with pytest.raises(DimensionError):
        q.lookup_tables(x[:2, :15])
    with pytest.raises(DimensionError):
        CODECS[kind](16, 3, 4).fit(x[:, :12])
    with pytest.raises(InvalidInputError):
        q.decode(np.zeros((2, 5), np.uint8))
    with pytest.raises(InvalidInputError):
        CODECS[kind](16, 2, 8).fit(x[:100])  # fewer vectors than codewords


def test_cq_ridge_options_are_checked():
    for ridge, shrink in ((-1.0, 0.1), (1.0, -0.1), (0.0, 0.0), (float("nan"), 0.1), (1.0, float("inf"))):
        with pytest.raises(InvalidInputError, match="ridge and shrink"):
            CompositeQuantizer(16, M=2, nbits=4, ridge=ridge, shrink=shrink)


# --- CQ trained on about as many vectors as it has codewords ----------------------------------------------
def test_cq_on_as_many_vectors_as_codewords_beats_the_mean():
    """CQ4x8 (1,024 codewords) on 1,000 unit vectors: the least-squares system is nearly square, and
    without its ridge training ended at an MSE of 2.6, worse than encoding every vector as 0."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    train, new = x[:1000], x[1000:]
    cq = CompositeQuantizer(64, M=4, nbits=8).fit(train)
    for part, limit in ((train, 0.2), (new, 0.9)):
        energy = float(np.mean(np.sum(part.astype(np.float64) ** 2, axis=1)))  # 1: every vector has norm 1
        mean_mse = float(np.mean(np.sum((part - train.mean(axis=0)).astype(np.float64) ** 2, axis=1)))
        assert cq.mse(part) < limit * min(energy, mean_mse), (cq.mse(part), energy, mean_mse)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 1,797 64-D digits: fewer vectors than an 8x8-bit codec has codewords."""
    return pytest.importorskip("sklearn.datasets").load_digits().data.astype(np.float32)


def test_cq_on_fewer_vectors_than_codewords_keeps_its_codes_findable(digits):
    """CQ8x8 (2,048 codewords) on the digits. Unconstrained rounds first would interpolate them with
    codewords whose codes the penalised encoder cannot find again (MSE 80, above the OPQ start's 35);
    from the feasible product start, penalised in full, encoding reaches about 3.3."""
    cq = CompositeQuantizer(64, M=8, nbits=8).fit(digits)
    opq = OPQ(64, M=8, nbits=8).fit(digits)
    assert cq.mse(digits) < 0.25 * opq.mse(digits), (cq.mse(digits), opq.mse(digits))


def test_rq_refinement_never_raises_the_error(digits):
    """RQ7x8 (1,792 codewords) on the digits: the joint least-squares refinement fits codes that beam
    search then misses (MSE 48 after it against 24.9 before), so it must be undone, not kept."""
    refined = ResidualQuantizer(64, M=7, nbits=8).fit(digits)
    plain = ResidualQuantizer(64, M=7, nbits=8, refine_iters=0).fit(digits)
    assert refined.mse(digits) <= plain.mse(digits) * (1 + 1e-6), (refined.mse(digits), plain.mse(digits))


# --- CQ's constant cross term on real data ----------------------------------------------------------------
def test_cq_cross_term_constant_and_ranking(sift):
    x, xq = sift
    train, new = x[:3000], x[3000:4000]
    cq = CompositeQuantizer(128, M=4, nbits=6, niter=4).fit(train)
    scale = float(np.mean(np.sum(train**2, axis=1)))
    codes = cq.encode(new)  # vectors not seen in training keep the trained eps
    cross = cq.cross_terms(codes)
    assert abs(cross.mean() - cq.eps) < 0.01 * scale
    assert cross.std() < 0.02 * scale
    t = cq.lookup_tables(xq[:10])
    table_sum = t[:, np.arange(4)[None, :], codes.astype(np.int64)].sum(-1).astype(np.float64)
    xh = cq.decode(codes).astype(np.float64)
    exact = ((xq[:10, None, :].astype(np.float64) - xh[None]) ** 2).sum(-1)
    gap = np.abs(table_sum - exact)
    np.testing.assert_allclose(gap, np.abs(cq.eps - cross)[None, :].repeat(10, 0), rtol=1e-3, atol=1.0)
    # any two vectors whose exact distances differ by more than twice the largest deviation keep their order
    dev = float(np.max(np.abs(cross - cq.eps)))
    for row_t, row_e in zip(table_sum, exact):
        o = np.argsort(row_e)
        e, s = row_e[o], row_t[o]
        far = e[None, :] - e[:, None] > 2 * dev + 1.0
        assert np.all((s[None, :] > s[:, None])[far])


def test_quality_order_on_sift10k_64_bits(sift):
    x, _ = sift
    train = x[:5000]
    mse = {
        "pq": ProductQuantizer(128, M=8, nbits=8, niter=10, init="random").fit(train).mse(train),
        "rq": ResidualQuantizer(128, M=8, nbits=8, beam_size=8, niter=10, refine_iters=1).fit(train).mse(train),
        "aq": AdditiveQuantizer(128, M=8, nbits=8, beam_size=8, train_beam_size=4, niter=4,
                                niter_kmeans=10).fit(train).mse(train),
        "cq": CompositeQuantizer(128, M=8, nbits=8, niter=3, niter_free=3, ramp=1, niter_encoder=1, init="product",
                                niter_kmeans=10).fit(train).mse(train),
    }
    assert mse["pq"] > mse["rq"] > mse["aq"], mse
    assert mse["cq"] < mse["pq"], mse
