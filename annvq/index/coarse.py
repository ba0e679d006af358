"""Coarse quantizers of an IVF index: map a vector to its list and a query to the lists worth probing.

``FlatCoarse`` is plain k-means with ``nlist`` centroids, searched exhaustively with one BLAS product.
``TreeCoarse`` is a tree-structured VQ (hierarchical k-means with branching factor ``branching``):
probing costs about ``beam * branching * depth`` distance computations instead of ``nlist``, which
matters for large ``nlist``. Both score lists by squared L2 distance, or by negated inner product
for the "ip" metric; scores are returned as they are (smaller is better).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..errors import FormatError, InvalidInputError, NotTrainedError
from ..kernels import assign_l2, sq_norms
from ..kernels.ivf import coarse_topk, tree_search
from ..kmeans import KMeans

_SCORE_BYTES = 64 << 20  # cap on one (query block, nlist) score matrix


class CoarseQuantizer(ABC):
    """Shared shape of the coarse quantizers: ``fit``, ``assign``, ``search`` and persistence."""

    kind: ClassVar[str]

    def __init__(self, nlist: int, niter: int = 20, random_state: int | None = 0) -> None:
        if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or nlist < 1:
            raise InvalidInputError(f"nlist must be a positive integer, got {nlist!r}")
        self.nlist = int(nlist)
        self.niter = int(niter)
        self.random_state = random_state
        self._centroids: np.ndarray | None = None

    @property
    def centroids(self) -> np.ndarray:
        """(nlist, d) float32: the list centroids residuals refer to."""
        if self._centroids is None:
            raise NotTrainedError("coarse quantizer is not trained")
        return self._centroids

    @centroids.setter
    def centroids(self, value: np.ndarray) -> None:
        self._centroids = value

    @property
    def is_trained(self) -> bool:
        return self._centroids is not None

    def _require_trained(self) -> None:
        self.centroids  # noqa: B018 - raises NotTrainedError when untrained

    @abstractmethod
    def fit(self, x: np.ndarray) -> CoarseQuantizer:
        """Learn the ``nlist`` list centroids from training vectors (n, d)."""

    @abstractmethod
    def search(self, xq: np.ndarray, nprobe: int, metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """``(scores, lists)`` (nq, nprobe), best first: squared L2 distance or, for "ip", -q.c."""

    def assign(self, x: np.ndarray) -> np.ndarray:
        """List number (int64) of every row of ``x``: its nearest centroid in L2."""
        return self.search(x, 1, "l2")[1][:, 0]

    def params(self) -> dict[str, Any]:
        return {"coarse": self.kind, "nlist": self.nlist, "coarse_niter": self.niter}

    def arrays(self) -> dict[str, np.ndarray]:
        self._require_trained()
        return {"centroids": self.centroids}

    def set_arrays(self, arrays: dict[str, np.ndarray], d: int) -> None:
        c = np.asarray(arrays.get("centroids"))
        if c.ndim != 2 or c.shape != (self.nlist, d):
            raise FormatError(f"coarse centroids have shape {c.shape}, expected ({self.nlist}, {d})")
        self.centroids = np.ascontiguousarray(c, dtype=np.float32)


class FlatCoarse(CoarseQuantizer):
    """k-means centroids scanned exhaustively (faiss ``IndexFlatL2`` as the IVF quantizer).

    k-means starts from random training points rather than k-means++ seeds: D^2 seeding spends
    centroids on outlying points, which leaves lists less even (on SIFT the coefficient of variation
    of list sizes is about 0.42 instead of 0.5) for no gain in how often a query's nearest neighbour
    shares its list.
    """

    kind = "flat"

    def fit(self, x: np.ndarray) -> FlatCoarse:
        km = KMeans(self.nlist, niter=self.niter, init="random", random_state=self.random_state)
        centroids = km.fit(x).centroids
        assert centroids is not None
        self.centroids = centroids
        self._cache()
        return self

    def set_arrays(self, arrays: dict[str, np.ndarray], d: int) -> None:
        super().set_arrays(arrays, d)
        self._cache()

    def _cache(self) -> None:
        self._ct = np.ascontiguousarray(self.centroids.T)
        self._c_norms = sq_norms(self.centroids)

    def search(self, xq: np.ndarray, nprobe: int, metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        self._require_trained()
        nq, nlist = xq.shape[0], self.nlist
        nprobe = min(nprobe, nlist)
        D = np.empty((nq, nprobe), dtype=np.float32)
        L = np.empty((nq, nprobe), dtype=np.int64)
        block = max(1, _SCORE_BYTES // (4 * nlist))
        for s in range(0, nq, block):
            q = xq[s : s + block]
            D[s : s + block], L[s : s + block] = coarse_topk(q, q @ self._ct, self._c_norms, nprobe, metric != "l2")
        return D, L


def _split_budget(counts: np.ndarray, total: int) -> np.ndarray:
    """Share ``total`` leaves among children in proportion to their point counts.

    Every child gets at least one leaf and at most max(count, 1), so k-means below it is feasible;
    rounding follows the largest remainders.
    """
    raw = total * counts / counts.sum()
    cap = np.maximum(counts, 1)
    out = np.clip(np.floor(raw).astype(np.int64), 1, cap)
    while out.sum() < total:
        gap = np.where(out < cap, raw - out, -np.inf)
        out[int(np.argmax(gap))] += 1
    while out.sum() > total:
        gap = np.where(out > 1, raw - out, np.inf)
        out[int(np.argmin(gap))] -= 1
    return out


class TreeCoarse(CoarseQuantizer):
    """Tree-structured VQ: hierarchical k-means whose ``nlist`` leaves are the lists.

    Training splits the data with k-means into ``branching`` parts and shares the leaf budget among
    them in proportion to their sizes, recursively, until a node's budget fits in one k-means; so
    the tree has exactly ``nlist`` leaves and its depth is about log_branching(nlist). Probing
    descends with a beam of ``max(beam, nprobe)`` nodes per level; ``beam=1`` is the greedy descent.
    """

    kind = "tree"

    def __init__(self, nlist: int, branching: int = 32, beam: int = 4, niter: int = 20,
                 random_state: int | None = 0) -> None:
        super().__init__(nlist, niter, random_state)
        for name, v in (("branching", branching), ("beam", beam)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (2 if name == "branching" else 1):
                raise InvalidInputError(f"{name} must be an integer >= {2 if name == 'branching' else 1}, got {v!r}")
        self.branching, self.beam = int(branching), int(beam)
        self.nodes: np.ndarray | None = None  # (nnodes, d) node centroids; node 0 is the root
        self.first: np.ndarray | None = None
        self.nchild: np.ndarray | None = None
        self.leaf: np.ndarray | None = None
        self.depth = 0

    def fit(self, x: np.ndarray) -> TreeCoarse:
        if x.shape[0] < self.nlist:
            raise InvalidInputError(f"a tree of {self.nlist} leaves needs at least {self.nlist} training points, "
                                    f"got {x.shape[0]}")
        rng = np.random.default_rng(self.random_state)
        nodes = [x.mean(axis=0, dtype=np.float64).astype(np.float32)]
        first, nchild, leaf = [0], [0], [-1]  # per node, grown as the tree is built
        depth = 0
        stack = [(0, x, self.nlist, 1)]  # (node, its points, leaf budget, level of its children)
        while stack:
            v, xs, budget, level = stack.pop()
            depth = max(depth, level)
            b = min(self.branching, budget)
            km = KMeans(b, niter=self.niter, random_state=int(rng.integers(2**31))).fit(xs)
            centers = km.centroids
            assert centers is not None
            labels = assign_l2(xs, centers)[0]
            counts = np.bincount(labels, minlength=b)
            budgets = np.ones(b, dtype=np.int64) if budget <= self.branching else _split_budget(counts, budget)
            first[v], nchild[v] = len(nodes), b
            for i in range(b):
                child = len(nodes)
                nodes.append(centers[i])
                first.append(0)
                nchild.append(0)
                leaf.append(-1)
                if budgets[i] == 1:
                    leaf[child] = 0  # numbered below, in node order
                else:
                    stack.append((child, xs[labels == i], int(budgets[i]), level + 1))
        leaves = np.asarray(leaf, dtype=np.int64)
        is_leaf = leaves >= 0
        leaves[is_leaf] = np.arange(int(is_leaf.sum()))
        self.nodes = np.ascontiguousarray(np.stack(nodes), dtype=np.float32)
        self.first = np.asarray(first, dtype=np.int64)
        self.nchild = np.asarray(nchild, dtype=np.int64)
        self.leaf = leaves
        self.depth = depth
        self.centroids = np.ascontiguousarray(self.nodes[is_leaf])
        return self

    def search(self, xq: np.ndarray, nprobe: int, metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        self._require_trained()
        assert self.nchild is not None  # trained
        nprobe = min(nprobe, self.nlist)
        beam = max(self.beam, nprobe)
        pool = int(self.nchild.max()) * (1 + beam * self.depth)
        return tree_search(xq, self.nodes, self.first, self.nchild, self.leaf, beam, nprobe, pool, metric != "l2")

    def params(self) -> dict[str, Any]:
        return {**super().params(), "branching": self.branching, "beam": self.beam}

    def arrays(self) -> dict[str, np.ndarray]:
        self._require_trained()
        assert self.nodes is not None and self.first is not None and self.nchild is not None and self.leaf is not None
        return {"tree_nodes": self.nodes, "tree_first": self.first, "tree_nchild": self.nchild, "tree_leaf": self.leaf}

    def set_arrays(self, arrays: dict[str, np.ndarray], d: int) -> None:
        try:
            nodes = np.ascontiguousarray(arrays["tree_nodes"], dtype=np.float32)
            first, nchild, leaf = (np.asarray(arrays[k], dtype=np.int64)
                                   for k in ("tree_first", "tree_nchild", "tree_leaf"))
        except KeyError as exc:
            raise FormatError(f"tree coarse quantizer: missing array {exc}") from None
        n = nodes.shape[0] if nodes.ndim == 2 else -1
        ok = (
            nodes.ndim == 2 and nodes.shape[1] == d and first.shape == nchild.shape == leaf.shape == (n,)
            and np.array_equal(np.sort(leaf[leaf >= 0]), np.arange(self.nlist))
            and (first + nchild <= n).all() and (nchild[leaf < 0] > 0).all()
        )
        if not ok:
            raise FormatError("tree coarse quantizer: inconsistent tree arrays (corrupt file?)")
        self.nodes, self.first, self.nchild, self.leaf = nodes, first, nchild, leaf
        self.centroids = np.ascontiguousarray(nodes[leaf >= 0][np.argsort(leaf[leaf >= 0])])
        self.depth = _depth(first, nchild)


def _depth(first: np.ndarray, nchild: np.ndarray) -> int:
    """Number of levels below the root."""
    depth, level = 0, np.array([0])
    while level.size:
        if depth > first.shape[0]:
            raise FormatError("tree coarse quantizer: the tree has a cycle (corrupt file?)")
        kids = np.concatenate([np.arange(first[v], first[v] + nchild[v]) for v in level])
        depth += 1
        level = kids[nchild[kids] > 0]
    return depth


def make_coarse(kind: str, nlist: int, **kw: Any) -> CoarseQuantizer:
    """A coarse quantizer by name: "flat" (k-means) or "tree" (hierarchical k-means)."""
    if kind == "flat":
        kw.pop("branching", None)
        kw.pop("beam", None)
        return FlatCoarse(nlist, **kw)
    if kind == "tree":
        return TreeCoarse(nlist, **kw)
    raise InvalidInputError(f"coarse must be 'flat' or 'tree', got {kind!r}")
