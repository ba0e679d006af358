"""4-bit fast-scan: the packed layout round-trips, every kernel path returns the same top-k as the
portable one, deleted rows never come back, re-scoring recovers the exact float ADC ranking, and the
``fs`` spec grammar rejects what it cannot build."""
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

import annvq
from annvq.errors import InvalidInputError, SpecError
from annvq.index.fastscan import (
    FastScanLists,
    best_k,
    finish_reservoir,
    list_tables,
    new_reservoir,
    query_tables,
    search_unpacked,
)
from annvq.kernels import simd
from annvq.kernels.adc import scan_topk_batch
from annvq.kernels.fastscan import block_offsets, pack_codes, unpack_codes
from annvq.spec import IndexSpec, make_codec

PATHS = [0, 1, 2]  # portable, 32-byte vectors, 32-byte vectors with compress-store admission


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _lists(rng, sizes, M):
    codes = rng.integers(0, 16, size=(int(sum(sizes)), M)).astype(np.uint8)
    return codes, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _exact(qtab, codes, offsets, probes, consts, ptab=None):
    """Float ADC distance of every row to every query (inf for rows of lists a query does not probe)."""
    nq, M = qtab.shape[0], codes.shape[1]
    lists = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    out = np.full((nq, len(codes)), np.inf, dtype=np.float64)
    m = np.arange(M)
    for q in range(nq):
        for p, l in enumerate(probes[q]):
            rows = np.flatnonzero(lists == l)
            t = qtab[q][None, m, codes[rows]] if ptab is None else (qtab[q] + ptab[l])[None, m, codes[rows]]
            out[q, rows] = consts[q, p] + t[0].sum(axis=1, dtype=np.float64)
    return out


@pytest.mark.parametrize("M", [1, 2, 7, 16])
def test_pack_unpack_round_trip(rng, M):
    codes, offsets = _lists(rng, [0, 31, 32, 33, 0, 100], M)
    bo = block_offsets(offsets)
    packed = pack_codes(codes, offsets, bo)
    assert packed.shape == (bo[-1], (M + M % 2) * 16) and list(np.diff(bo)) == [0, 1, 1, 2, 0, 4]
    np.testing.assert_array_equal(unpack_codes(packed, offsets, bo, M), codes)
    fs = FastScanLists.from_codes(codes, offsets)
    rows = rng.choice(len(codes), 20, replace=False)
    np.testing.assert_array_equal(fs.codes(rows), codes[rows])
    assert fs.code_size == (M + 1) // 2 and fs.live_count() == len(codes)


def _search_all_paths(fs, qtab, k, probes, consts, ptab):
    out = []
    for path in PATHS:
        res = new_reservoir(qtab.shape[0], k)
        fs.search(qtab, res, probes, consts, ptab, path=path)
        out.append(finish_reservoir(res))
    return out


@pytest.mark.parametrize(("M", "sizes", "k"), [
    (7, [250, 0, 3, 64, 97], 10),  # M odd, an empty list, sizes off the block
    (2, [40, 41], 5),  # M = 2
    (8, [5, 0, 7], 30),  # k > n and k >= every list size
    (16, [1000], 100),
])
def test_simd_paths_equal_portable(rng, M, sizes, k):
    codes, offsets = _lists(rng, sizes, M)
    deleted = rng.random(len(codes)) < 0.2
    fs = FastScanLists.from_codes(codes, offsets, deleted)
    nq, nlist = 6, len(sizes)
    qtab = rng.normal(size=(nq, M, 16)).astype(np.float32)
    ptab = rng.normal(size=(nlist, M, 16)).astype(np.float32)
    probes = np.stack([rng.permutation(nlist) for _ in range(nq)])
    probes[0, -1] = -1  # a skipped probe
    consts = rng.normal(size=probes.shape).astype(np.float32)
    results = _search_all_paths(fs, qtab, k, probes, consts, ptab)
    for D, L in results[1:]:
        np.testing.assert_array_equal(L, results[0][1])
        np.testing.assert_array_equal(D, results[0][0])
    D, L = results[0]
    exact = _exact(qtab, codes, offsets, probes, consts, ptab)
    for q in range(nq):
        live = np.flatnonzero(np.isfinite(exact[q]) & ~deleted)
        got = L[q][L[q] >= 0]
        assert len(got) == min(k, len(live)) and len(set(got)) == len(got)  # k results when k live rows exist
        assert not deleted[got].any() and np.isin(got, live).all()
        assert (L[q][len(got):] == -1).all() and np.isinf(D[q][len(got):]).all()
        # quantised distances stay within the rounding of every table entry (half a step each)
        spans = np.ptp(qtab[q][None] + ptab, axis=2).max(axis=1)  # per list: the widest table
        lists = np.searchsorted(offsets, got, side="right") - 1
        bound = M * 0.5 * spans[lists] / 255 + 1e-4
        assert (np.abs(D[q][: len(got)] - exact[q, got]) <= bound).all()
        assert (np.diff(D[q][: len(got)]) >= 0).all()


def test_flat_matches_exact_adc_when_rescoring_covers_everything(rng):
    """Quantised scan, then every candidate re-scored: the exact float ADC top-k (scan_topk_batch)."""
    codes = rng.integers(0, 16, size=(300, 9)).astype(np.uint8)
    fs = FastScanLists.from_codes(codes)
    qtab = rng.random((5, 9, 16), dtype=np.float32)
    for path in PATHS:
        D, L = fs.search_topk(qtab, 10, k_factor=30, path=path)  # 300 candidates: the whole set
        D2, R2 = scan_topk_batch(qtab, codes, np.empty(0, np.float32), 10)
        np.testing.assert_array_equal(L, R2)
        np.testing.assert_array_equal(D, D2)


def test_ivf_rescoring_equals_exact_ivf_adc(rng):
    """IVF-PQ on real residuals: re-scored candidates rank like exact ADC of ||q - c - r^||^2."""
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    idx = annvq.index_factory(16, "IVF8,PQ8x4")
    idx.train(x)
    centroids = idx.coarse.centroids
    lists = idx.coarse.assign(x)
    order = np.argsort(lists, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=8))])
    codes = idx.codec.encode(x[order] - centroids[lists[order]])
    fs = FastScanLists.from_codes(codes, offsets)
    xq = rng.normal(size=(4, 16)).astype(np.float32)
    consts, probes = idx.coarse.search(xq, 3)
    qtab, ptab = query_tables(idx.codec, xq, ivf=True), list_tables(idx.codec, centroids)
    D, L = fs.search_topk(qtab, 5, probes, consts, ptab, k_factor=500)
    recon = idx.codec.decode(codes) + centroids[lists[order]]
    for q in range(4):
        probed = np.flatnonzero(np.isin(lists[order], probes[q]))
        d = ((recon[probed] - xq[q]) ** 2).sum(axis=1)
        np.testing.assert_array_equal(L[q], probed[np.argsort(d)[:5]])
        np.testing.assert_allclose(D[q], np.sort(d)[:5], rtol=1e-4, atol=1e-3)


def test_segments_share_one_reservoir(rng):
    """Two segments with label offsets scanned into one reservoir equal one segment holding both."""
    codes = rng.integers(0, 16, size=(500, 6)).astype(np.uint8)
    qtab = rng.random((3, 6, 16), dtype=np.float32)
    a, b = FastScanLists.from_codes(codes[:200]), FastScanLists.from_codes(codes[200:])
    res = new_reservoir(3, 7)
    a.search(qtab, res, label_base=1000)
    b.search(qtab, res, label_base=1200)
    D, L = finish_reservoir(res)
    D2, L2 = FastScanLists.from_codes(codes).search_topk(qtab, 7, label_base=1000)
    np.testing.assert_array_equal(L, L2)
    np.testing.assert_allclose(D, D2, rtol=1e-5)
    a.rescore(qtab, L, D, label_base=1000)
    b.rescore(qtab, L, D, label_base=1200)
    D3, L3 = best_k(D, L, 7)
    exact = qtab[:, np.arange(6), codes].sum(axis=2)  # (3, 500)
    np.testing.assert_allclose(D3, np.take_along_axis(exact, L3 - 1000, axis=1), rtol=1e-5)


def test_packed_and_unpacked_segments_share_one_reservoir(rng):
    """A sealed (packed) and a growing (unpacked, exact tables) IVF segment, with deletions in both, feed
    one reservoir; re-scoring the packed candidates gives the exact top-k over both segments."""
    M, nq, k = 5, 4, 6
    codes_a, off_a = _lists(rng, [40, 0, 70], M)
    codes_b, off_b = _lists(rng, [9, 30, 3], M)
    dead_a, dead_b = rng.random(len(codes_a)) < 0.3, rng.random(len(codes_b)) < 0.3
    qtab = rng.normal(size=(nq, M, 16)).astype(np.float32)
    ptab = rng.normal(size=(3, M, 16)).astype(np.float32)
    probes = np.tile([2, 0], (nq, 1))
    consts = rng.normal(size=probes.shape).astype(np.float32)
    a = FastScanLists.from_codes(codes_a, off_a, dead_a)
    res = new_reservoir(nq, k * 40)  # deep enough to hold every live candidate of both segments
    a.search(qtab, res, probes, consts, ptab, label_base=0)
    search_unpacked(codes_b, qtab, res, off_b, probes, consts, ptab, dead_b, label_base=len(codes_a))
    D, L = finish_reservoir(res, sort=False)
    a.rescore(qtab, L, D, probes, consts, ptab, label_base=0)
    D, L = best_k(D, L, k)
    exact = np.concatenate([_exact(qtab, codes_a, off_a, probes, consts, ptab),
                            _exact(qtab, codes_b, off_b, probes, consts, ptab)], axis=1)
    exact[:, np.concatenate([dead_a, dead_b])] = np.inf
    np.testing.assert_array_equal(L, np.argsort(exact, axis=1, kind="stable")[:, :k])
    np.testing.assert_allclose(D, np.sort(exact, axis=1)[:, :k], rtol=1e-5, atol=1e-5)


def test_deleting_everything_returns_nothing_and_large_M_does_not_overflow(rng):
    codes = rng.integers(0, 16, size=(70, 600)).astype(np.uint8)
    fs = FastScanLists.from_codes(codes)
    qtab = rng.random((2, 600, 16), dtype=np.float32) * 100
    D, L = fs.search_topk(qtab, 5)
    exact = qtab[:, np.arange(600), codes].sum(axis=2)
    np.testing.assert_array_equal(np.sort(L, axis=1), np.sort(np.argsort(exact, axis=1)[:, :5], axis=1))
    fs.delete(np.arange(70))
    assert fs.live_count() == 0
    D, L = fs.search_topk(qtab, 5)
    assert (L == -1).all() and np.isinf(D).all()


def test_bad_input_raises():
    with pytest.raises(InvalidInputError, match="4-bit"):
        FastScanLists.from_codes(np.full((3, 4), 16))
    with pytest.raises(InvalidInputError, match="list_offsets"):
        FastScanLists.from_codes(np.zeros((3, 4), np.uint8), np.array([0, 2]))
    fs = FastScanLists.from_codes(np.zeros((3, 4), np.uint8))
    with pytest.raises(InvalidInputError, match="qtab"):
        fs.search_topk(np.zeros((1, 5, 16), np.float32), 2)
    with pytest.raises(InvalidInputError, match="rows"):
        fs.delete([3])
    with pytest.raises(InvalidInputError, match="reservoir"):
        fs.search(np.zeros((2, 4, 16), np.float32), new_reservoir(3, 2))
    pq8 = annvq.ProductQuantizer(8, 2, 8).fit(np.random.default_rng(0).normal(size=(300, 8)))
    with pytest.raises(InvalidInputError, match="4-bit"):
        query_tables(pq8, np.zeros((1, 8), np.float32))


@pytest.mark.parametrize("text", ["PQ32x4fs", "IVF256,PQ32x4fs", "OPQ16,PQ16x4fs", "IVF1024,PQ32x4fs,Refine"])
def test_fs_spec_round_trip(text):
    spec = IndexSpec.parse(text)
    assert spec.fast_scan and spec.nbits == 4 and spec.to_string() == text
    assert IndexSpec.validated(**spec.model_dump()) == spec


@pytest.mark.parametrize(("text", "names"),
                         [("PQ8x8fs", "4-bit"), ("RQ8x4fs", "4-bit PQ or OPQ"), ("PQ8fs", "codec part")])
def test_bad_fs_specs(text, names):
    with pytest.raises(SpecError, match=names):
        IndexSpec.parse(text)


def test_fs_spec_checks_the_dimension():
    with pytest.raises(SpecError, match="d=128"):
        make_codec(IndexSpec.parse("PQ7x4fs"), 128)
    with pytest.raises(SpecError, match="d=128"):
        annvq.index_factory(128, "PQ7x4fs")
    with pytest.raises(SpecError, match="4-bit PQ or OPQ"):
        annvq.index_factory(128, "IVF16,PQ16x8fs")
    assert annvq.index_factory(128, "IVF16,PQ32x4fs").fast_scan


@pytest.mark.skipif(not simd._X86_AVX2, reason="the host has no AVX2")
def test_the_table_lookup_compiles_to_vpshufb():
    @njit
    def lookups(t, i, out):
        simd.vstore(simd.lut16(simd.load32(t, 0), simd.load32(i, 0)), out, 0)

    t = np.arange(32, dtype=np.uint8) * 3
    i = np.random.default_rng(1).integers(0, 16, 32).astype(np.uint8)
    out = np.zeros(16, np.uint16)
    lookups(t, i, out)
    np.testing.assert_array_equal(out.view(np.uint8), t[np.arange(32) // 16 * 16 + i])
    assert "vpshufb" in lookups.inspect_asm(lookups.signatures[0])


def test_the_neon_lookup_cross_compiles_to_tbl(monkeypatch):
    """The aarch64 path cannot run here, but its IR must compile to NEON ``tbl`` for an aarch64 target."""
    import llvmlite.binding as llb
    from llvmlite import ir

    llb.initialize_all_targets()
    llb.initialize_all_asmprinters()
    try:
        target = llb.Target.from_triple("aarch64-unknown-linux-gnu")
    except RuntimeError:
        pytest.skip("this llvmlite has no AArch64 target")
    monkeypatch.setattr(simd, "_NEON", True)
    monkeypatch.setattr(simd, "_X86_AVX2", False)
    mod = ir.Module(name="neon")
    mod.triple = "aarch64-unknown-linux-gnu"
    v32 = ir.VectorType(ir.IntType(8), 32)
    fn = ir.Function(mod, ir.FunctionType(v32, [v32, v32]), "lookups")
    builder = ir.IRBuilder(fn.append_basic_block())
    builder.ret(simd._lut16_ir(builder, fn.args[0], fn.args[1]))
    asm = target.create_target_machine(opt=3).emit_assembly(llb.parse_assembly(str(mod)))
    assert asm.count("tbl") == 2


def test_simd_off_forces_the_portable_path():
    env = {**os.environ, "ANNVQ_SIMD": "off"}
    out = subprocess.run([sys.executable, "-c", "from annvq.kernels import fastscan; print(fastscan.DEFAULT_PATH)"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
