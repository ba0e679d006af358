"""Quality check against faiss on real SIFT10K: PQ 8x8 MSE and recall (not a timing test).

R@1 on 100 queries moves by several points between k-means seeds in *either* library (its binomial
standard error alone is ~0.05), so recall is compared as a mean over three seeds per library with a
tolerance of 2 % or two standard errors, whichever is larger; MSE is compared within 2 %.
"""
import numpy as np
import pytest

import annvq
from annvq.datasets import load_annb, recall_at

faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed (pip install -e '.[bench]')")

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def sift(shared_data):
    ds = load_annb(shared_data / "sift10k" / "sift10k-128-euclidean.hdf5")
    return ds.train, ds.test, ds.neighbors


def _stats(I, gt):
    return [recall_at(I, gt, r) for r in (1, 10, 100)]


@pytest.fixture(scope="module")
def results(sift):
    x, xq, gt = sift
    ours, theirs = [], []
    for s in SEEDS:
        idx = annvq.index_factory(128, "PQ8x8")
        idx.codec.random_state = s
        idx.train(x)
        idx.add(x)
        ours.append(_stats(idx.search(xq, 100)[1], gt) + [idx.codec.mse(x)])
        f = faiss.IndexPQ(128, 8, 8)
        f.pq.cp.seed = s
        f.train(x)
        f.add(x)
        err = float(((f.reconstruct_n(0, len(x)) - x) ** 2).sum(1).mean())
        theirs.append(_stats(f.search(xq, 100)[1], gt) + [err])
    return np.array(ours), np.array(theirs), len(xq)


def test_pq_mse_within_2_percent_of_faiss(results):
    ours, theirs, _ = results
    assert ours[:, 3].mean() <= 1.02 * theirs[:, 3].mean()
    assert ours[:, 3].mean() >= 0.98 * theirs[:, 3].mean()


@pytest.mark.parametrize("col,name", [(0, "R@1"), (1, "R@10"), (2, "R@100")])
def test_pq_recall_matches_faiss(results, col, name):
    ours, theirs, nq = results
    a, b = ours[:, col].mean(), theirs[:, col].mean()
    p = (a + b) / 2
    stderr = np.sqrt(max(p * (1 - p), 1e-4) / (nq * len(SEEDS)))
    assert abs(a - b) <= max(0.02 * b, 2 * stderr), f"{name}: annvq {a:.3f} vs faiss {b:.3f}"
