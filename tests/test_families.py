"""Codec quality against faiss on data unlike SIFT: the seeded synthetic families of annvq.datasets.

Small versions of the families of ``benchmarks/bench_families.py`` (normalised power-law embeddings
at d = 50, 96 and 256 with 2 to 16 dimensions per sub-space, and strongly correlated dimensions);
each codec's training MSE is compared with its faiss peer at equal bits, with margins loose enough
for seed noise but tight enough that losing a fix (OPQ's rotation search, CQ on normalised data,
CQ's choice of start on low-rank data) fails. The full table stays in the benchmark.
"""
import numpy as np
import pytest

from annvq import OPQ, ProductQuantizer, ScalarQuantizer
from annvq.datasets import make_correlated, make_embeddings
from annvq.quantizers import AdditiveQuantizer, CompositeQuantizer, ResidualQuantizer

faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed (pip install -e '.[bench]')")

# family -> (data, M of the product codecs); the additive codecs spend 32 bits (4 x 8) everywhere
FAMILIES = {
    "emb50": (lambda: make_embeddings(2000, 50, nq=1, k=1), 25),  # 2 dimensions per sub-space
    "emb96": (lambda: make_embeddings(2000, 96, nq=1, k=1), 12),  # 8
    "emb256": (lambda: make_embeddings(2000, 256, nq=1, k=1), 16),  # 16
    "correlated": (lambda: make_correlated(2000, 64, nq=1, k=1), 8),  # 8
}
NBITS = 6  # product codecs: 64 centroids per sub-space keep 2000 training vectors meaningful
ADDITIVE_M = 4


def _mse(x, x_hat):
    return float(np.mean(np.sum((x.astype(np.float64) - x_hat) ** 2, axis=1)))


def _faiss_mse(index, x):
    index.train(x)
    return _mse(x, index.sa_decode(index.sa_encode(x)))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """MSE of every annvq codec and its faiss peer on one family."""
    faiss.omp_set_num_threads(1)
    make, M = FAMILIES[request.param]
    x = make().train
    d = x.shape[1]
    ma = ADDITIVE_M
    ours = {
        "PQ": ProductQuantizer(d, M, NBITS).fit(x).mse(x),
        "OPQ": OPQ(d, M, NBITS).fit(x).mse(x),
        "SQ8": ScalarQuantizer(d, 8).fit(x).mse(x),
        "RQ": ResidualQuantizer(d, ma - 1, 8).fit(x).mse(x),
        "AQ": AdditiveQuantizer(d, ma - 1, 8).fit(x).mse(x),
        "CQ": CompositeQuantizer(d, ma, 8, niter=6, niter_free=4, ramp=3, niter_encoder=3).fit(x).mse(x),
    }
    rq = faiss.IndexResidualQuantizer(d, ma - 1, 8, faiss.METRIC_L2, faiss.AdditiveQuantizer.ST_norm_qint8)
    rq.rq.max_beam_size = ResidualQuantizer(d).beam_size
    theirs = {
        "PQ": _faiss_mse(faiss.IndexPQ(d, M, NBITS), x),
        "OPQ": _faiss_mse(faiss.index_factory(d, f"OPQ{M},PQ{M}x{NBITS}"), x),
        "SQ8": _faiss_mse(faiss.index_factory(d, "SQ8"), x),
        "RQ": _faiss_mse(rq, x),
        "LSQ": _faiss_mse(faiss.IndexLocalSearchQuantizer(d, ma - 1, 8, faiss.METRIC_L2,
                                                          faiss.AdditiveQuantizer.ST_norm_qint8), x),
    }
    return request.param, ours, theirs


def test_product_codecs_match_or_beat_faiss(family):
    name, ours, theirs = family
    assert ours["PQ"] <= 1.05 * theirs["PQ"], (name, ours["PQ"], theirs["PQ"])
    assert ours["SQ8"] <= 1.01 * theirs["SQ8"], (name, ours["SQ8"], theirs["SQ8"])
    # OPQ must beat faiss's OPQ on every family (the target), here with a small margin
    assert ours["OPQ"] <= 0.98 * theirs["OPQ"], (name, ours["OPQ"], theirs["OPQ"])
    assert ours["OPQ"] <= ours["PQ"], (name, ours)


def test_additive_codecs_match_or_beat_faiss(family):
    name, ours, theirs = family
    assert ours["RQ"] <= 1.05 * theirs["RQ"], (name, ours["RQ"], theirs["RQ"])
    assert ours["AQ"] <= 1.05 * theirs["LSQ"], (name, ours["AQ"], theirs["LSQ"])
    assert ours["AQ"] <= ours["RQ"], (name, ours)


def test_cq_stays_within_1_2_of_aq_at_equal_bits(family):
    """CQ (4 codebooks, no stored norm) against AQ (3 codebooks and an 8-bit norm): the issue's target."""
    name, ours, theirs = family
    assert ours["CQ"] <= 1.2 * ours["AQ"], (name, ours["CQ"], ours["AQ"])
    assert ours["CQ"] <= 1.1 * theirs["LSQ"], (name, ours["CQ"], theirs["LSQ"])
