"""Optimized product quantization: learn an orthogonal rotation R so that PQ of x·R loses least.

Non-parametric OPQ (Ge et al. 2013): alternate (1) PQ training on the rotated data, warm-started
from the previous codebooks, and (2) the orthogonal Procrustes update P = U V^T where
U S V^T = svd(X^T X_hat), X_hat being the PQ reconstruction in the rotated space.

Plain alternation creeps: with few dimensions per sub-space the objective still falls after 50
rounds, each moving R a little in a consistent direction. So the rotation step is over-relaxed
(adaptive over-relaxed bound optimisation, Salakhutdinov & Roweis 2003): R moves ``beta`` times
the Procrustes step along the Cayley curve from R through P, ``beta`` grows while the error falls
and drops back to 1 (from the last good state) when it rises. The start is either the identity
(right for SIFT-like data, whose coordinates already carry structure) or PCA with balanced
eigenvalue allocation (parametric OPQ: right for a few strong correlated factors); ``init="auto"``
runs a few rounds from each and continues from the better one.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from .base import Quantizer
from .pq import ProductQuantizer

_INITS = ("auto", "identity", "pca")


def eigenvalue_allocation(x: np.ndarray, M: int) -> np.ndarray:
    """Rotation (d, d) whose columns are the principal directions of ``x``, grouped into ``M`` blocks.

    Directions are dealt, largest variance first, to the non-full block with the smallest product of
    variances so far, which balances the blocks' variance products (Ge et al.'s parametric OPQ).
    Variances are scaled so that every one exceeds 1 first: each deal then raises a block's product,
    so the first ``M`` directions open one block each.
    """
    d = x.shape[1]
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    var, vecs = np.linalg.eigh(xc.T @ xc / max(x.shape[0] - 1, 1))
    order = np.argsort(-var, kind="stable")
    var = np.maximum(var[order], 1e-12 * max(float(var.max()), 1e-30))
    log_var = np.log(var / var.min()) + 1.0
    dsub = d // M
    score = np.zeros(M)
    fill = np.zeros(M, dtype=np.int64)
    blocks = np.empty((M, dsub), dtype=np.int64)
    for j, lv in zip(order, log_var):
        m = int(np.argmin(np.where(fill < dsub, score, np.inf)))
        blocks[m, fill[m]] = j
        fill[m] += 1
        score[m] += lv
    return vecs[:, blocks.ravel()]


def cayley_step(R: np.ndarray, P: np.ndarray, beta: float) -> np.ndarray:
    """Orthogonal matrix ``beta`` steps from R towards P along the Cayley curve (P itself at beta=1).

    With A = R^T P and the skew S = (A - I)(A + I)^-1, the curve is R (I - bS)^-1 (I + bS). Falls back
    to P when A is a reflection or a half-turn (A + I singular), where no such curve joins R and P.
    """
    if beta == 1.0:
        return P
    eye = np.eye(R.shape[0])
    A = R.T @ P
    if np.linalg.det(A) < 0:
        return P
    try:
        S = np.linalg.solve((A + eye).T, (A - eye).T).T
        S = 0.5 * (S - S.T)
        out = R @ np.linalg.solve(eye - beta * S, eye + beta * S)
    except np.linalg.LinAlgError:
        return P
    ok = np.isfinite(out).all() and np.abs(out.T @ out - eye).max() < 1e-6
    return out if ok else P


class OPQ(Quantizer):
    """Rotation + PQ.

    Training alternates PQ fits (``niter_pq`` k-means steps, warm-started) with over-relaxed Procrustes
    rotation updates, at most ``niter`` rounds, stopping early when the error fell by less than
    ``tol`` (relative) per round over the last five; then a final PQ fit of ``niter_final`` steps.
    ``init``: "identity", "pca" (eigenvalue allocation) or "auto" (``probe_iters`` rounds from
    each, continue from the better). ``relax`` caps the over-relaxation factor (1: plain alternation).
    """

    kind = "opq"

    def __init__(
        self,
        d: int,
        M: int = 8,
        nbits: int = 8,
        niter: int = 60,
        niter_pq: int = 4,
        niter_final: int = 25,
        init: str = "auto",
        probe_iters: int = 5,
        tol: float = 1e-4,
        relax: float = 8.0,
        max_train_points: int = 65536,
        random_state: int | None = 0,
    ) -> None:
        if init not in _INITS:
            raise InvalidInputError(f"init must be one of {', '.join(_INITS)}, got {init!r}")
        self.d, self.M, self.nbits = int(d), int(M), int(nbits)
        self.niter, self.niter_pq, self.niter_final = int(niter), int(niter_pq), int(niter_final)
        if not relax >= 1.0:
            raise InvalidInputError(f"relax must be >= 1 (1 = plain alternation), got {relax!r}")
        self.init, self.probe_iters, self.tol, self.relax = init, int(probe_iters), float(tol), float(relax)
        self.max_train_points = int(max_train_points)
        self.random_state = random_state
        self.pq = ProductQuantizer(d, M, nbits, niter=niter_final, random_state=random_state)
        self.R = np.eye(self.d, dtype=np.float32)
        self.n_iter_ = 0
        self._trained = False

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"R": self.R, "codebooks": self.pq.codebooks}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.R = self._expect_shape(arrays, "R", (self.d, self.d)).astype(np.float32)
        self.pq._set_arrays(arrays)
        self.pq._trained = True

    def fit(self, x: np.ndarray) -> OPQ:
        x = self._check_x(x)
        if x.shape[0] < self.ksub:
            raise InvalidInputError(f"OPQ with nbits={self.nbits} needs at least {self.ksub} training vectors, "
                                    f"got {x.shape[0]}")
        rng = np.random.default_rng(self.random_state)
        if x.shape[0] > self.max_train_points:
            x = x[np.sort(rng.choice(x.shape[0], self.max_train_points, replace=False))]
        starts = {"identity": lambda: np.eye(self.d), "pca": lambda: eigenvalue_allocation(x, self.M)}
        if self.init == "auto":
            probes = [self._alternate(x, starts[s](), None, self.probe_iters, 0.0) for s in starts]
            _, R, codebooks, _ = min(probes, key=lambda p: p[0])
            _, R, codebooks, more = self._alternate(x, R, codebooks, self.niter - self.probe_iters, self.tol)
            self.n_iter_ = len(starts) * self.probe_iters + more
        else:
            _, R, codebooks, self.n_iter_ = self._alternate(x, starts[self.init](), None, self.niter, self.tol)
        self.R = R.astype(np.float32)
        self.pq.fit(x @ self.R, init_codebooks=codebooks)
        self._trained = True
        return self

    def _alternate(self, x: np.ndarray, R: np.ndarray, codebooks: np.ndarray | None, rounds: int,
                   tol: float) -> tuple[float, np.ndarray, np.ndarray | None, int]:
        """Up to ``rounds`` PQ/rotation rounds from R; returns (error, rotation, codebooks, rounds run).

        The rotation returned is the Procrustes update from the best state, to pair with its codebooks.
        """
        inner = ProductQuantizer(self.d, self.M, self.nbits, niter=self.niter_pq, random_state=self.random_state)
        x64 = x.astype(np.float64)
        best_err, best_P, best_cb = np.inf, R, codebooks
        history: list[float] = []
        beta, done = 1.0, 0
        while done < rounds:
            done += 1
            xr = (x64 @ R).astype(np.float32)
            inner.fit(xr, init_codebooks=codebooks)
            xhat = inner.decode(inner.encode(xr)).astype(np.float64)
            err = float(np.mean(np.einsum("ij,ij->i", xr - xhat, xr - xhat)))
            if err > best_err:  # over-relaxed too far: plain step from the best state, beta back to 1
                R, codebooks, beta = best_P, best_cb, 1.0
                continue
            u, _, vt = np.linalg.svd(x64.T @ xhat)
            P = u @ vt
            best_err, best_P, best_cb = err, P, inner.codebooks.copy()
            codebooks = best_cb
            R = cayley_step(R, P, beta)
            beta = min(beta * 1.5, self.relax)
            history.append(err)
            if len(history) > 5 and history[-6] - err <= 5 * tol * err:
                break
        return best_err, best_P, best_cb, done

    def rotate(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x @ self.R)

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._require_trained()
        return self.pq.encode(self.rotate(self._check_x(x)))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._require_trained()
        return np.ascontiguousarray(self.pq.decode(codes) @ self.R.T)

    def lookup_tables(self, xq: np.ndarray, metric: str = "l2") -> np.ndarray:
        self._require_trained()
        return self.pq.lookup_tables(self.rotate(self._check_x(xq, "xq")), metric)
