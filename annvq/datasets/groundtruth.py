"""Exact k-NN ground truth by blocked brute force, and the accuracy measures used with it.

Scores come from one BLAS product per (query chunk, base block) in float64, so integer-valued data
such as SIFT gets exact distances and exact ties; ties are always broken by the smaller base index,
which makes the result reproducible across block sizes and machines.
"""
from __future__ import annotations

import numpy as np

from .._validate import as_vectors, check_k, check_metric
from ..errors import InvalidInputError

_SCORE_BYTES = 32 << 20  # cap on one float64 (query chunk, base block) score matrix
_DEFAULT_BLOCK = 8192


def _directions(x: np.ndarray, name: str) -> np.ndarray:
    """Rows scaled to unit length (float64); a zero row has no direction under cosine."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise InvalidInputError(f"{name}: zero vector has no direction under the cosine metric (row {int(zero[0])})")
    return x / norms


def _smallest_mask(S: np.ndarray, k: int) -> np.ndarray:
    """Mask of the ``k`` smallest entries of each row; ties at the k-th value keep the smaller columns."""
    kth = np.partition(S, k - 1, axis=1)[:, k - 1 : k]
    take = S <= kth
    tied = np.flatnonzero(take.sum(axis=1) > k)  # rows where equal values straddle the k-th place
    if tied.size:
        sub, t = S[tied], kth[tied]
        eq = sub == t
        need = k - (sub < t).sum(axis=1, keepdims=True)
        take[tied] = (sub < t) | (eq & (np.cumsum(eq, axis=1) <= need))
    return take


def _candidates(S: np.ndarray, thr: np.ndarray, k: int, offset: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries of each row of ``S`` that can still enter a top-``k`` whose worst score is ``thr``.

    Returns ``(scores, cols + offset)``, (rows, m) with m <= k, padded with ``inf``/``pad``. Filtering by the
    running threshold first means only the first blocks pay for a partition.
    """
    take = S < thr  # an equal score loses: the kept entry has a smaller index
    counts = take.sum(axis=1)
    over = np.flatnonzero(counts > k)
    if over.size:
        take[over] = _smallest_mask(S[over], k)
        counts[over] = k
    rows, cols = np.nonzero(take)
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    m = int(counts.max(initial=0))
    scores = np.full((S.shape[0], m), np.inf)
    idx = np.full((S.shape[0], m), pad, dtype=np.int64)
    scores[rows, slot] = S[rows, cols]
    idx[rows, slot] = cols + offset
    return scores, idx


def knn_groundtruth(
    base, queries, k: int, metric: str = "l2", block: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of every query among ``base`` rows: ``(D float32, I int64)``, (nq, k).

    ``metric``: ``"l2"`` gives squared distances (ascending), ``"ip"`` inner products and
    ``"cosine"`` cosine similarities (descending). ``base`` may be a memmap: it is read ``block``
    rows at a time, so memory stays bounded by the block, not by the base size.
    """
    metric = check_metric(metric)
    k = check_k(k)
    base = np.asarray(base)
    if base.ndim != 2 or base.shape[0] == 0:
        raise InvalidInputError(f"base: expected a non-empty 2-D array (n, d), got shape {base.shape}")
    n, d = base.shape
    if k > n:
        raise InvalidInputError(f"k={k} exceeds the {n} base vectors")
    block = _DEFAULT_BLOCK if block is None else check_k(block)
    q = as_vectors(queries, d, "queries").astype(np.float64)
    if metric == "cosine":
        q = _directions(q, "queries")
    nq = q.shape[0]
    chunk = max(1, _SCORE_BYTES // (8 * block))
    # running best per query: score to minimise and base index; sentinels sort after every real entry
    best_s = np.full((nq, k), np.inf)
    best_i = np.full((nq, k), n, dtype=np.int64)
    for s in range(0, n, block):
        xb = as_vectors(base[s : s + block], d, "base").astype(np.float64)
        if metric == "cosine":
            xb = _directions(xb, "base")
        xb_t = xb.T.copy()
        xn = np.einsum("ij,ij->i", xb, xb) if metric == "l2" else None
        for q0 in range(0, nq, chunk):
            rows = slice(q0, q0 + chunk)
            S = q[rows] @ xb_t
            if xn is None:
                np.negative(S, out=S)  # larger similarity = smaller score
            else:
                S *= -2.0
                S += xn  # ||x||^2 - 2 x.q; ||q||^2 is the same for every x, added at the end
            new_s, new_i = _candidates(S, best_s[rows, k - 1 :], k, s, n)
            if new_s.shape[1] == 0:
                continue
            cand_s = np.concatenate([best_s[rows], new_s], axis=1)
            cand_i = np.concatenate([best_i[rows], new_i], axis=1)
            order = np.lexsort((cand_i, cand_s), axis=1)[:, :k]
            best_s[rows] = np.take_along_axis(cand_s, order, axis=1)
            best_i[rows] = np.take_along_axis(cand_i, order, axis=1)
    if metric == "l2":
        D = np.maximum(best_s + np.einsum("ij,ij->i", q, q)[:, None], 0.0)
    else:
        D = -best_s
    return D.astype(np.float32), best_i


def _check_results(I, gt, r: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    I, gt = np.asarray(I), np.asarray(gt)
    if I.ndim != 2 or gt.ndim != 2 or I.shape[0] != gt.shape[0] or I.shape[0] == 0:
        raise InvalidInputError(f"I {I.shape} and gt {gt.shape} must be 2-D with the same, non-zero number of queries")
    r = check_k(r)
    if r > I.shape[1]:
        raise InvalidInputError(f"{name}={r} exceeds the {I.shape[1]} results per query in I")
    return I, gt


def recall_at(I, gt, r: int) -> float:
    """1-recall@r: fraction of queries whose true nearest neighbour ``gt[:, 0]`` is in ``I[:, :r]``."""
    I, gt = _check_results(I, gt, r, "r")
    return float((I[:, :r] == gt[:, :1]).any(axis=1).mean())


def knn_recall(I, gt, k: int) -> float:
    """k-recall@k: ``|I[:, :k] & gt[:, :k]| / k`` averaged over queries.

    Each true id counts once however often ``I`` repeats it; padding ids (< 0) never count.
    """
    I, gt = _check_results(I, gt, k, "k")
    if k > gt.shape[1]:
        raise InvalidInputError(f"k={k} exceeds the {gt.shape[1]} ground-truth neighbours per query")
    found, true = I[:, :k].astype(np.int64), gt[:, :k].astype(np.int64)
    # tag every id with its query row so one sorted membership test covers all rows
    found = np.maximum(found, -1)
    span = int(max(found.max(), true.max())) + 2
    row = np.arange(I.shape[0], dtype=np.int64)[:, None] * span
    hits = np.isin(true + 1 + row, found + 1 + row) & (true >= 0)
    return float(hits.sum(axis=1).mean() / k)


def mse(x, x_hat) -> float:
    """Mean over vectors of the squared L2 reconstruction error ``sum_j (x_ij - x_hat_ij)^2``."""
    x = as_vectors(x, name="x")
    x_hat = as_vectors(x_hat, x.shape[1], name="x_hat")
    if x_hat.shape[0] != x.shape[0]:
        raise InvalidInputError(f"x has {x.shape[0]} vectors but x_hat has {x_hat.shape[0]}")
    err = x.astype(np.float64) - x_hat
    return float(np.einsum("ij,ij->i", err, err).mean())
