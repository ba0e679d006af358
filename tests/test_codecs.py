"""SQ, PQ and OPQ: the seed's PQ example, ADC consistency, persistence, errors."""
import numpy as np
import pytest

from annvq import (
    OPQ,
    DimensionError,
    FormatError,
    InvalidInputError,
    LatticeQuantizer,
    NotTrainedError,
    ProductQuantizer,
    Quantizer,
    ScalarQuantizer,
)

SEED_PQ_X = np.array(
    [[2, 3, 6, 6], [2.2, 3.5, 5.8, 6.1], [1.9, 2.8, 6.2, 5.9],
     [4.1, 5, 8.1, 7.9], [4.3, 5.1, 7.9, 8.2], [3.8, 4.6, 8.2, 8.1]],
    dtype=np.float32,
)


@pytest.mark.parametrize("init", ["k-means++", "lbg"])
def test_pq_seed_example(init):
    pq = ProductQuantizer(4, M=2, nbits=1, init=init, random_state=0).fit(SEED_PQ_X)
    sub1 = sorted(map(tuple, np.round(pq.codebooks[0], 2)))
    sub2 = sorted(map(tuple, np.round(pq.codebooks[1], 2)))
    assert sub1 == [(2.03, 3.1), (4.07, 4.9)]
    assert sub2 == [(6.0, 6.0), (8.07, 8.07)]
    code = pq.encode(np.array([2.1, 3.4, 5.7, 6.2]))
    np.testing.assert_allclose(pq.decode(code)[0], [2.0333, 3.1, 6.0, 6.0], atol=1e-3)
    assert code.dtype == np.uint8 and code.shape == (1, 2)


@pytest.mark.parametrize("M,nbits", [(8, 6), (16, 4), (4, 9), (32, 8)])
def test_pq_codes_are_each_sub_space_nearest_codeword_across_blocks(M, nbits):
    """Encoding picks, per sub-space, the codeword at the smallest squared distance, in batches far
    larger than one block of the batched product and in single rows."""
    x = _data(n=2500, d=64, seed=3)
    pq = ProductQuantizer(64, M=M, nbits=nbits, niter=5).fit(x[:1500])
    sub = x.reshape(len(x), M, -1)
    codes = pq.encode(x)
    for m in range(M):
        dist = ((sub[:, m, None, :] - pq.codebooks[m][None]) ** 2).sum(-1)  # (n, ksub)
        picked = dist[np.arange(len(x)), codes[:, m]]
        np.testing.assert_allclose(picked, dist.min(axis=1), rtol=1e-5, atol=1e-4)  # nearest, up to exact ties
    np.testing.assert_array_equal(pq.encode(x[:1]), codes[:1])


def _data(n=3000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(d, d)).astype(np.float32)
    return (rng.normal(size=(n, d)).astype(np.float32) @ basis).astype(np.float32)


CODECS = [
    lambda d: ScalarQuantizer(d),
    lambda d: ScalarQuantizer(d, nbits=4, rs="stddev"),
    lambda d: ProductQuantizer(d, M=8, nbits=6),
    lambda d: ProductQuantizer(d, M=4, nbits=10, niter=5),
    lambda d: OPQ(d, M=8, nbits=6, niter=4),
    lambda d: LatticeQuantizer(d, M=4, nbits=12, lattice="e8"),
    lambda d: LatticeQuantizer(d, M=8, nbits=8, lattice="d", shape="sphere"),
]


@pytest.fixture(scope="module")
def trained():
    x = _data()
    return x, [make(x.shape[1]).fit(x) for make in CODECS]


@pytest.mark.parametrize("i", range(len(CODECS)))
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_adc_equals_decoded_distance(trained, i, metric):
    x, codecs = trained
    q = codecs[i]
    codes = q.encode(x[:200])
    assert codes.dtype == q.code_dtype and codes.shape == (200, q.M)
    xh = q.decode(codes)
    xq = _data(5, seed=9)
    T = q.lookup_tables(xq, metric)
    adc = T[:, np.arange(q.M)[None, :], codes.astype(np.int64)].sum(-1)
    if metric == "l2":
        ref = ((xq[:, None, :] - xh[None]) ** 2).sum(-1)
    else:
        ref = -(xq @ xh.T)
    np.testing.assert_allclose(adc, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


@pytest.mark.parametrize("i", range(len(CODECS)))
def test_linear_ip_matches_ip_tables(trained, i):
    """Where a codec offers the linear form of its "ip" tables (SQ), it gives the same sums."""
    x, codecs = trained
    q = codecs[i]
    codes = q.encode(x[:200])
    xq = _data(5, seed=9)
    lin = q.linear_ip(xq)
    if not isinstance(q, ScalarQuantizer):
        assert lin is None
        return
    w, b = lin
    T = q.lookup_tables(xq, "ip")
    ref = T[:, np.arange(q.M)[None, :], codes.astype(np.int64)].sum(-1)
    np.testing.assert_allclose(b[:, None] + w @ codes.T.astype(np.float32), ref, rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())


def test_quality_ordering(trained):
    x, (sq8, sq4, pq6, pq10, opq6, *_) = trained
    assert sq8.mse(x) < sq4.mse(x)
    assert pq10.mse(x) < pq6.mse(x)
    assert opq6.mse(x) < pq6.mse(x)  # correlated data: the rotation must help


def test_encode_decode_nearest_codeword(trained):
    x, codecs = trained
    pq = codecs[2]
    codes = pq.encode(x[:50])
    for m in range(pq.M):
        sub = x[:50, m * pq.dsub : (m + 1) * pq.dsub]
        d = ((sub[:, None] - pq.codebooks[m][None]) ** 2).sum(-1)
        assert np.array_equal(codes[:, m], d.argmin(1))


def test_code_size_is_what_is_stored(trained):
    x, codecs = trained
    for q in codecs:
        codes = q.encode(x[:7])
        assert codes.nbytes == 7 * q.code_size  # bytes per vector actually held
    sq8, sq4, pq6, pq10, opq6, *_ = codecs
    assert sq8.code_size == sq4.code_size == 32  # one byte per dimension, 4-bit levels included
    assert pq6.code_size == pq6.M and opq6.code_size == opq6.M  # 6-bit sub-codes take a byte each
    assert pq10.code_dtype == np.uint16 and pq10.code_size == 2 * pq10.M


@pytest.mark.parametrize("i", range(len(CODECS)))
def test_state_round_trip(trained, i):
    x, codecs = trained
    q = codecs[i]
    params, arrays = q.get_state()
    q2 = Quantizer.from_state(params, arrays)
    assert type(q2) is type(q)
    np.testing.assert_array_equal(q2.encode(x[:100]), q.encode(x[:100]))


def test_from_state_rejects_bad_arrays(trained):
    _, codecs = trained
    params, arrays = codecs[2].get_state()
    with pytest.raises(FormatError, match="codebooks"):
        Quantizer.from_state(params, {"codebooks": arrays["codebooks"][:, :3]})
    with pytest.raises(FormatError, match="unknown codec"):
        Quantizer.from_state({"kind": "zz"}, {})


def test_errors():
    pq = ProductQuantizer(8, M=2, nbits=2)
    with pytest.raises(NotTrainedError):
        pq.encode(np.zeros((1, 8)))
    with pytest.raises(InvalidInputError, match="multiple of M"):
        ProductQuantizer(10, M=4)
    with pytest.raises(InvalidInputError, match="nbits"):
        ProductQuantizer(8, M=2, nbits=17)
    with pytest.raises(InvalidInputError, match="at least 4 training"):
        pq.fit(np.zeros((3, 8)))
    pq.fit(np.random.default_rng(0).normal(size=(100, 8)))
    with pytest.raises(DimensionError, match="expected dimension 8, got 7"):
        pq.encode(np.zeros((2, 7)))
    with pytest.raises(InvalidInputError, match="NaN"):
        pq.encode(np.array([[np.nan] * 8]))
    with pytest.raises(InvalidInputError, match="dtype"):
        pq.encode(np.array([["a"] * 8]))
    with pytest.raises(InvalidInputError, match="empty"):
        pq.encode(np.zeros((0, 8)))
    with pytest.raises(InvalidInputError, match="values must lie"):
        pq.decode(np.array([[0, 4]]))


def test_sdc_equals_distance_between_reconstructions(trained):
    x, codecs = trained
    pq = codecs[2]
    a, b = pq.encode(x[:7]), pq.encode(x[7:12])
    xa, xb = pq.decode(a), pq.decode(b)
    np.testing.assert_allclose(pq.sdc(a, b), ((xa[:, None] - xb[None]) ** 2).sum(-1), rtol=1e-4, atol=1e-2)


# --- OPQ training: over-relaxed rotation steps, two starts ------------------------------------------
def test_cayley_step_is_orthogonal_and_passes_through_both_ends():
    from scipy.linalg import expm

    from annvq.quantizers.opq import cayley_step

    rng = np.random.default_rng(0)
    R = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    small = rng.normal(size=(6, 6)) * 0.2
    P = R @ expm(small - small.T)  # a rotation near R
    np.testing.assert_allclose(cayley_step(R, P, 1.0), P)
    for beta in (0.0, 2.5, 8.0):
        Q = cayley_step(R, P, beta)
        np.testing.assert_allclose(Q.T @ Q, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(cayley_step(R, P, 0.0), R, atol=1e-12)
    # a reflection between R and P cannot be interpolated: the plain step is returned
    F = R @ np.diag([-1.0, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(cayley_step(R, F, 3.0), F)


def test_eigenvalue_allocation_balances_variance_products():
    from annvq.quantizers.opq import eigenvalue_allocation

    rng = np.random.default_rng(0)
    var = 2.0 ** -np.arange(8)
    basis = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    x = (rng.normal(size=(20000, 8)) * np.sqrt(var)) @ basis.T
    R = eigenvalue_allocation(x.astype(np.float32), 4)
    np.testing.assert_allclose(R.T @ R, np.eye(8), atol=1e-8)
    block_var = np.var(x @ R, axis=0).reshape(4, 2)
    # greedy dealing by smallest product: blocks {0,7}, {1,6}, {2,5}, {3,4} of the sorted variances
    np.testing.assert_allclose(np.sort(np.log2(block_var).sum(1)), [-7, -7, -7, -7], atol=0.1)


def test_opq_over_relaxation_converges_faster_than_plain_alternation():
    from annvq.datasets import make_embeddings

    x = make_embeddings(2000, 32, nq=1, k=1, random_state=1).train  # 2 dimensions per sub-space
    plain = OPQ(32, M=16, nbits=5, niter=25, init="identity", tol=0, relax=1).fit(x)
    relaxed = OPQ(32, M=16, nbits=5, niter=25, init="identity", tol=0).fit(x)
    assert relaxed.mse(x) < 0.95 * plain.mse(x)
    np.testing.assert_allclose(relaxed.R.T @ relaxed.R, np.eye(32), atol=1e-4)


def test_opq_auto_start_picks_pca_for_correlated_factors_and_identity_for_axis_blocks():
    from annvq.datasets import make_correlated

    x = make_correlated(2000, 32, nq=1, k=1, rank=6, random_state=0).train
    identity = OPQ(32, M=4, nbits=5, init="identity").fit(x).mse(x)
    assert OPQ(32, M=4, nbits=5).fit(x).mse(x) < 0.9 * identity
    # independent clustered 4-D blocks on the coordinate axes: the identity is already the answer
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16, 4)) * 3
    z = centres[np.arange(4), rng.integers(16, size=(2000, 4))].reshape(2000, 16)
    z = (z + 0.3 * rng.normal(size=z.shape)).astype(np.float32)
    auto = OPQ(16, M=4, nbits=4).fit(z).mse(z)
    assert auto <= 1.02 * OPQ(16, M=4, nbits=4, init="identity").fit(z).mse(z)
    assert auto < 0.8 * OPQ(16, M=4, nbits=4, init="pca").fit(z).mse(z)
