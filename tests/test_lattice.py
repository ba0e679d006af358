"""Lattice VQ: nearest points against brute force, rank/unrank, exact round trips, indexes, specs.

ADC tables and state round trips of lattice codecs are checked with the other codecs in test_codecs.py."""
import numpy as np
import pytest

import annvq
from annvq import FormatError, InvalidInputError, LatticeQuantizer, Quantizer, SpecError
from annvq.kernels.lattice import (
    E8,
    D,
    Z,
    ball_nmax,
    geometry,
    nearest_in_ball,
    nearest_on_shell,
    nearest_point,
    rank_point,
    unrank_all,
)

LATTICES = [(Z, 3), (Z, 5), (D, 4), (D, 5), (E8, 8)]


def _points(g):
    """Every point of a geometry's ball, in code order."""
    return unrank_all(0, int(g.offset[-1]), g.n, g.cnt, g.cls_par, g.cls_mod, g.offset, g.cls_off)


def _scratch(n):
    return (np.empty(n, np.int64), np.empty(n), np.empty(n, np.int64), np.empty(n, np.int64),
            np.empty(n), np.empty(n, np.int64))


def test_enumeration_is_the_lattice():
    """Shell sizes are the lattices' theta series; points belong to the lattice."""
    e8 = geometry(E8, 8, 24)  # doubled coordinates: norm 8k is E8 norm 2k
    assert [int(s) for s in e8.shell_sizes if s] == [1, 240, 2160, 6720]
    p = _points(e8)
    assert ((p % 2) == (p[:, :1] % 2)).all() and (p.sum(1) % 4 == 0).all()
    d4 = geometry(D, 4, 8)
    assert [int(s) for s in d4.shell_sizes] == [1, 0, 24, 0, 24, 0, 96, 0, 24]
    assert (_points(d4).sum(1) % 2 == 0).all()
    assert [int(s) for s in geometry(Z, 3, 3).shell_sizes] == [1, 6, 12, 8]


@pytest.mark.parametrize(("kind", "n"), LATTICES)
def test_rank_unrank_bijection(kind, n):
    g = geometry(kind, n, ball_nmax(kind, n, 2000))
    p = _points(g)
    assert len({tuple(r) for r in p}) == len(p) <= 2000
    norms = (p * p).sum(1)
    assert (np.diff(norms) >= 0).all()  # shells in order
    ranks = [rank_point(r, int(N), g.cnt, g.cls_par, g.cls_mod, g.offset, g.cls_off) for r, N in zip(p, norms)]
    assert ranks == list(range(len(p)))


def _min_dist2(p, xs):
    """Squared distance from every row of ``xs`` to its nearest row of ``p`` (brute force)."""
    return ((p * p).sum(1)[:, None] - 2.0 * p @ xs.T).min(0) + (xs * xs).sum(1)


@pytest.mark.parametrize(("kind", "n"), LATTICES)
def test_nearest_point_matches_brute_force(kind, n):
    """Conway & Sloane's algorithms against every lattice point of a ball much larger than the queries."""
    g = geometry(kind, n, 40 if kind != E8 else 48)
    p = _points(g).astype(np.float64)
    rng = np.random.default_rng(kind * 10 + n)
    xs = rng.normal(size=(300, n)) * rng.uniform(0.2, 1.5, size=(300, 1))
    xs = xs[(np.linalg.norm(xs, axis=1) + np.sqrt(n)) ** 2 <= g.nmax]  # sqrt(n) bounds the covering radius,
    assert len(xs) >= 100  # so the nearest point of these lies in the enumerated ball
    y, t, ya, yb, _, _ = _scratch(n)
    got = []
    for x in xs:
        nearest_point(kind, x, y, t, ya, yb)
        got.append(((x - y) ** 2).sum())
    np.testing.assert_allclose(got, _min_dist2(p, xs), atol=1e-9)


@pytest.mark.parametrize(("kind", "n"), LATTICES)
def test_nearest_in_ball_and_on_shell_match_brute_force(kind, n):
    """Truncated searches (inside, near and far outside the ball) are exact nearest-codeword searches."""
    g = geometry(kind, n, ball_nmax(kind, n, 3000))
    p = _points(g).astype(np.float64)
    y, t, ya, yb, a, perm = _scratch(n)
    rng = np.random.default_rng(7 + n)
    r = np.sqrt(g.nmax)
    xs = rng.normal(size=(300, n)) * r * rng.uniform(0.2, 2.0, size=(300, 1)) / np.sqrt(n)
    got = []
    for x in xs:
        N = nearest_in_ball(kind, x, g.nmax, g.lead_val, g.lead_par, g.shell_lead, y, t, ya, yb, a, perm)
        assert N == (y * y).sum() <= g.nmax
        got.append(((x - y) ** 2).sum())
    np.testing.assert_allclose(got, _min_dist2(p, xs), atol=1e-9)
    norms = (p * p).sum(1)
    for N in np.flatnonzero(g.shell_sizes)[1:]:
        shell = p[norms == N]
        for x in rng.normal(size=(20, n)):
            dot = nearest_on_shell(x, g.shell_lead[N], g.shell_lead[N + 1], g.lead_val, g.lead_par, y, a, perm)
            assert (y * y).sum() == N
            assert dot == pytest.approx(x @ y, abs=1e-9)
            assert dot == pytest.approx((shell @ x).max(), abs=1e-9)


def _data(n=2000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + 1.0).astype(np.float32)


CODECS = [
    {"M": 4, "nbits": 8, "lattice": "e8"},
    {"M": 8, "nbits": 6, "lattice": "d"},
    {"M": 8, "nbits": 9, "lattice": "z"},
    {"M": 4, "nbits": 12, "lattice": "e8", "shape": "sphere"},
    {"M": 8, "nbits": 8, "lattice": "d", "shape": "sphere"},
]


@pytest.fixture(scope="module")
def trained():
    x = _data()
    return x, [LatticeQuantizer(x.shape[1], **kw).fit(x) for kw in CODECS]


@pytest.mark.parametrize("i", range(len(CODECS)))
def test_round_trip_on_codewords_is_exact(trained, i):
    """Every codeword encodes to its own code (decode is an injection, encode inverts it)."""
    _, codecs = trained
    q = codecs[i]
    assert 1 < q.ncodes <= q.ksub
    codes = np.tile(np.arange(q.ncodes)[:, None], (1, q.M)).astype(q.code_dtype)
    words = q.decode(codes)
    np.testing.assert_array_equal(q.encode(words), codes)
    np.testing.assert_array_equal(q.decode(q.encode(words)), words)


@pytest.mark.parametrize("i", range(len(CODECS)))
def test_encode_is_the_nearest_codeword(trained, i):
    x, codecs = trained
    q = codecs[i]
    codes = q.encode(x[:100])
    for m in range(q.M):
        sub = x[:100, m * q.dsub : (m + 1) * q.dsub].astype(np.float64)
        d = ((sub[:, None] - q.codebooks[m, : q.ncodes][None]) ** 2).sum(-1)
        got = d[np.arange(100), codes[:, m].astype(np.int64)]
        np.testing.assert_allclose(got, d.min(1), rtol=1e-4, atol=1e-5)


def test_fitted_scale_is_a_local_optimum(trained):
    """The 1-D search leaves no better scale nearby, and finer lattices/bigger budgets reconstruct better."""
    x, codecs = trained
    q = codecs[0]
    base = q._ball_sse(x[:1000], q.scale)
    for f in (0.9, 1.1):
        assert (q._ball_sse(x[:1000], q.scale * f) >= base * 0.999).all()
    coarse = LatticeQuantizer(32, M=4, nbits=9, lattice="e8").fit(x)
    fine = LatticeQuantizer(32, M=4, nbits=14, lattice="e8").fit(x)
    assert fine.mse(x) < 0.6 * coarse.mse(x)


def test_bad_state_and_codes(trained):
    _, codecs = trained
    params, arrays = codecs[0].get_state()
    with pytest.raises(FormatError, match="scale"):
        Quantizer.from_state(params, {**arrays, "scale": -arrays["scale"]})
    params, arrays = codecs[3].get_state()
    with pytest.raises(FormatError, match="shell"):
        Quantizer.from_state(params, {**arrays, "shell": np.array([3])})
    params, arrays = codecs[4].get_state()
    assert arrays["gains"].shape[1] > 1
    with pytest.raises(FormatError, match="ascending"):
        Quantizer.from_state(params, {**arrays, "gains": arrays["gains"][:, ::-1]})
    q = codecs[0]  # E8 ball at 8 bits: 241 of 256 codes in use
    with pytest.raises(InvalidInputError, match=r"\[0, 241\)"):
        q.decode(np.full((1, q.M), 250))


def test_constructor_errors():
    with pytest.raises(InvalidInputError, match="E8 needs 8"):
        LatticeQuantizer(32, M=8, lattice="e8")
    with pytest.raises(InvalidInputError, match="first shell alone has 240 points"):
        LatticeQuantizer(32, M=4, nbits=7, lattice="e8")
    with pytest.raises(InvalidInputError, match="first shell alone has 32 points"):
        LatticeQuantizer(32, M=2, nbits=5, lattice="z")
    with pytest.raises(InvalidInputError, match="max_train_points"):
        LatticeQuantizer(32, M=4, max_train_points=0)
    with pytest.raises(InvalidInputError, match="at least 2 dims"):
        LatticeQuantizer(8, M=8)
    with pytest.raises(InvalidInputError, match="lattice must be"):
        LatticeQuantizer(16, M=4, lattice="a2")
    assert LatticeQuantizer(32, M=4).lattice == "e8"
    assert LatticeQuantizer(32, M=8, nbits=10).lattice == "d"  # D4: 937 points, Z4: 873
    assert LatticeQuantizer(32, M=8, nbits=8).lattice == "z"  # Z4: 233 points, D4: 169


@pytest.mark.parametrize("spec", ["LAT8x16", "IVF16,LAT8x16_E8", "LAT16x8_D_SPH", "IVF16,LAT16x8_Z,Refine"])
def test_indexes_search_and_persist(tmp_path, spec):
    x = _data(3000, 64, seed=1)
    xq = _data(20, 64, seed=2)
    idx = annvq.index_factory(64, spec)
    idx.train(x)
    idx.add(x)
    assert idx.codec.kind == "lat" and idx.spec == spec
    params = {"nprobe": 16} if spec.startswith("IVF") else {}
    D, I = idx.search(xq, 10, **params)
    true = np.argsort(((xq[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, :1]
    assert np.mean([true[i, 0] in I[i] for i in range(len(xq))]) >= 0.8
    idx.save(tmp_path / "lat")
    back = annvq.load(tmp_path / "lat")
    D2, I2 = back.search(xq, 10, **params)
    np.testing.assert_array_equal(I2, I)
    np.testing.assert_allclose(D2, D, rtol=1e-5)
    assert back.spec == spec


@pytest.mark.parametrize("text", ["LAT16x8", "LAT16x12_E8", "LAT8x8_D_SPH", "IVF64,LAT16x8_Z", "LAT4x16_Z_SPH"])
def test_spec_round_trip(text):
    spec = annvq.IndexSpec.parse(text)
    assert spec.codec == "lat" and spec.to_string() == text
    assert annvq.IndexSpec.validated(**spec.model_dump()) == spec


@pytest.mark.parametrize(("d", "text", "names"), [
    (64, "LAT16x8_E8", "E8 needs 8"),
    (64, "LAT8x4_E8", "too few"),
    (64, "LAT8x8_Q", "codec part"),
    (64, "LAT8x17", "nbits"),
    (64, "OPQ8,LAT8x8", "followed by a PQ"),
    (64, "LAT7x8", "multiple of M"),
    (64, "LAT64x8", "at least 2 dims"),
    (64, "LAT8x8_N8", "codec part"),
])
def test_bad_specs_raise_spec_error(d, text, names):
    with pytest.raises(SpecError, match=names):
        annvq.index_factory(d, text)
