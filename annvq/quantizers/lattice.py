"""Lattice VQ: each sub-vector is rounded to a point of a truncated lattice (Z^n, D_n or E8).

The codebooks are structured, not learned: the only training is a per-dimension mean and, per
sub-space, one scale (ball) or a few gain levels (sphere), fitted by one-dimensional searches.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..kernels import ip_tables, l2_tables
from ..kernels.lattice import (
    LATTICES,
    ball_nmax,
    encode_ball,
    encode_sphere,
    geometry,
    unrank_all,
)
from .base import Quantizer

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
_GRID = 2.0 ** (np.arange(-4, 5) / 2.0)  # coarse scale grid around the rms-matched scale, 1/4 .. 4
_REFINE_STEPS = 10
_MAX_SHELLS = 12  # spherical shells tried by fit


def _lloyd_1d(v: np.ndarray, G: int, niter: int = 25) -> np.ndarray:
    """``G`` ascending reconstruction levels minimising the squared error of the scalar sample ``v``."""
    levels = np.quantile(v, (np.arange(G) + 0.5) / G)
    for _ in range(niter):
        cell = np.searchsorted(0.5 * (levels[1:] + levels[:-1]), v)
        sums = np.bincount(cell, weights=v, minlength=G)
        counts = np.bincount(cell, minlength=G)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), levels)
        new.sort()
        if np.allclose(new, levels, rtol=0, atol=1e-12 * (1 + np.abs(levels).max())):
            break
        levels = new
    return levels


def _quantized_sse(v: np.ndarray, levels: np.ndarray) -> float:
    cell = np.searchsorted(0.5 * (levels[1:] + levels[:-1]), v)
    return float(((v - levels[cell]) ** 2).sum())


class LatticeQuantizer(Quantizer):
    """Lattice quantizer with ``M`` sub-codes of ``nbits`` bits (no codebook training).

    ``lattice``: ``"z"`` (Z^n), ``"d"`` (D_n, n >= 2), ``"e8"`` (dsub = 8) or ``"auto"``: E8 for 8 dims
    per sub-space, else D_n unless Z^n's ball fits 1.2x more points into the budget (D_n quantizes
    better at equal point counts, but its shells are coarser). ``shape``:

    - ``"ball"``: the lattice points of norm <= R, R the largest radius whose ball holds at most
      2**nbits points; a sub-vector is ``mean + scale * y``. Fit: the per-dimension mean, then per
      sub-space the scale minimising the squared error (a log-spaced grid, then golden-section).
    - ``"sphere"`` (gain-shape, for normalised data; the role of faiss ``IndexLattice``): a direction
      from one lattice shell times one of G gain levels, G * shell size <= 2**nbits. Fit: the shell
      (among the largest that fit) and per-sub-space gain levels (1-D Lloyd) with the least error.

    Encoding is exact nearest-codeword search without a codebook scan (Conway & Sloane's nearest
    point, leaders outside the ball; see :mod:`annvq.kernels.lattice`) plus a rank. Sub-codes are at
    most 16 bits, so every sub-codebook can be listed: search uses the ordinary ADC tables.
    ``max_train_points`` caps the sample the 1-D fits see.
    """

    kind = "lat"

    def __init__(
        self,
        d: int,
        M: int = 8,
        nbits: int = 8,
        lattice: str = "auto",
        shape: str = "ball",
        max_train_points: int = 4096,
        random_state: int | None = 0,
    ) -> None:
        if d % M:
            raise InvalidInputError(f"d={d} must be a multiple of M={M} for a lattice quantizer")
        self.d, self.M, self.nbits = int(d), int(M), int(nbits)
        _ = self.code_dtype  # validates nbits
        self.dsub = self.d // self.M
        if self.dsub < 2:
            raise InvalidInputError(f"lattice quantizer needs at least 2 dims per sub-space, "
                                    f"got d/M = {self.dsub} (use SQ)")
        lattice = str(lattice).lower()
        if lattice == "auto":
            lattice = "e8" if self.dsub == 8 else self._auto_lattice()
        if lattice not in LATTICES:
            raise InvalidInputError(f"lattice must be 'z', 'd', 'e8' or 'auto', got {lattice!r}")
        if lattice == "e8" and self.dsub != 8:
            raise InvalidInputError(f"lattice E8 needs 8 dims per sub-space, got d/M = {self.dsub}")
        if shape not in ("ball", "sphere"):
            raise InvalidInputError(f"shape must be 'ball' or 'sphere', got {shape!r}")
        if (isinstance(max_train_points, bool) or not isinstance(max_train_points, (int, np.integer))
                or max_train_points < 1):
            raise InvalidInputError(f"max_train_points must be a positive integer, got {max_train_points!r}")
        self.lattice, self.shape = lattice, shape
        self.max_train_points = int(max_train_points)
        self.random_state = random_state
        kind = LATTICES[lattice]
        nmax = ball_nmax(kind, self.dsub, self.ksub)
        if shape == "ball":
            self._geo = geometry(kind, self.dsub, nmax)
            if self._geo.offset[-1] < 2:
                sizes = geometry(kind, self.dsub, 8).shell_sizes
                first = int(sizes[1:][sizes[1:] > 0][0])
                raise InvalidInputError(f"nbits={nbits} is too few for a {lattice.upper()} ball in {self.dsub} dims: "
                                        f"the first shell alone has {first} points")
        else:
            # shells beyond the ball's radius can still fit the budget on their own (gain levels = 1)
            self._geo = geometry(kind, self.dsub, 2 * max(nmax, 1) + 8)
            if not len(self._shell_candidates()):
                raise InvalidInputError(f"nbits={nbits} is too few for any {lattice.upper()} shell in {self.dsub} dims")
        self.mean = np.zeros(self.d, dtype=np.float32)
        self.scale = np.ones(self.M, dtype=np.float32)
        self.gains = np.ones((self.M, 1), dtype=np.float32)
        self.shell = 0
        self._trained = False

    def _auto_lattice(self) -> str:
        """D_n, unless the budget's Z^n ball holds 1.2x more points (measured on SIFT and normalised data)."""
        points = {name: geometry(LATTICES[name], self.dsub, ball_nmax(LATTICES[name], self.dsub, self.ksub)).offset[-1]
                  for name in ("d", "z")}
        return "d" if 1.2 * points["d"] >= points["z"] else "z"

    # --- facts -------------------------------------------------------------------------------------
    @property
    def ncodes(self) -> int:
        """Sub-codes in use (<= 2**nbits): the ball's points, or gain levels * shell size."""
        if self.shape == "ball":
            return int(self._geo.offset[-1])
        return int(self.gains.shape[1] * self._geo.shell_sizes[self.shell])

    def _shell_candidates(self) -> np.ndarray:
        """Shell norms worth trying: each holds more points than every smaller shell, and fits the budget."""
        sizes = self._geo.shell_sizes
        out, best = [], 0
        for N in range(1, len(sizes)):
            if best < sizes[N] <= self.ksub:
                out.append(N)
                best = sizes[N]
        return np.array(out[-_MAX_SHELLS:], dtype=np.int64)

    # --- persistence -------------------------------------------------------------------------------
    def _get_arrays(self) -> dict[str, np.ndarray]:
        if self.shape == "ball":
            return {"mean": self.mean, "scale": self.scale}
        return {"mean": self.mean, "gains": self.gains, "shell": np.array([self.shell], dtype=np.int64)}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.mean = self._expect_shape(arrays, "mean", (self.d,)).astype(np.float32)
        if self.shape == "ball":
            self.scale = self._expect_shape(arrays, "scale", (self.M,)).astype(np.float32)
            if not (np.isfinite(self.scale).all() and (self.scale > 0).all()):
                raise ValueError("array 'scale' must be positive and finite")
        else:
            shell = int(self._expect_shape(arrays, "shell", (1,))[0])
            gains = np.asarray(arrays["gains"], dtype=np.float32)
            if shell not in self._shell_candidates():
                raise ValueError(f"shell norm {shell} is not a valid shell for this codec")
            if gains.ndim != 2 or gains.shape[0] != self.M or gains.shape[1] * self._geo.shell_sizes[shell] > self.ksub:
                raise ValueError(f"array 'gains' has shape {gains.shape}, which does not fit shell {shell}")
            if not (np.isfinite(gains).all() and (np.diff(gains, axis=1) >= 0).all()):
                raise ValueError("array 'gains' must be finite and ascending in every sub-space")
            self.shell, self.gains = shell, gains
        self._build_codebooks()

    # --- training ----------------------------------------------------------------------------------
    def fit(self, x: np.ndarray) -> LatticeQuantizer:
        x = self._check_x(x)
        if x.shape[0] > self.max_train_points:
            rng = np.random.default_rng(self.random_state)
            x = x[np.sort(rng.choice(x.shape[0], self.max_train_points, replace=False))]
        self.mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        if self.shape == "ball":
            self.scale = self._fit_scale(x)
        else:
            self.shell, self.gains = self._fit_sphere(x)
        self._build_codebooks()
        self._trained = True
        return self

    def _ball_sse(self, x: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Squared error per sub-space (M,) of the ball quantizer with the given scales."""
        g = self._geo
        return encode_ball(x, self.mean.astype(np.float64), np.asarray(scale, dtype=np.float64), g.kind, g.nmax,
                           g.lead_val, g.lead_par, g.shell_lead, g.cnt, g.cls_par, g.cls_mod, g.offset, g.cls_off,
                           np.empty((0, self.M), dtype=self.code_dtype))

    def _fit_scale(self, x: np.ndarray) -> np.ndarray:
        """Per sub-space, the scale with the least squared error: a log grid, then golden-section search."""
        xc = (x - self.mean).reshape(x.shape[0], self.M, self.dsub)
        rms = np.sqrt(np.mean(np.einsum("nmd,nmd->nm", xc, xc, dtype=np.float64), axis=0))
        s0 = np.where(rms > 0, rms / np.sqrt(self._geo.nmax), 1.0)  # ball radius = rms sub-vector norm
        grid_sse = np.stack([self._ball_sse(x, s0 * f) for f in _GRID])  # (len(grid), M)
        k = np.argmin(grid_sse, axis=0)
        best_s, best_e = s0 * _GRID[k], grid_sse[k, np.arange(self.M)]
        a = np.log(s0 * _GRID[np.maximum(k - 1, 0)])
        b = np.log(s0 * _GRID[np.minimum(k + 1, len(_GRID) - 1)])
        c, e = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
        fc, fe = self._ball_sse(x, np.exp(c)), self._ball_sse(x, np.exp(e))
        for _ in range(_REFINE_STEPS):  # all sub-spaces in lockstep: one kernel call per step
            left = fc < fe
            b = np.where(left, e, b)
            a = np.where(left, a, c)
            c_new = np.where(left, b - _GOLDEN * (b - a), e)
            e_new = np.where(left, c, a + _GOLDEN * (b - a))
            f_old = np.where(left, fc, fe)
            probe = np.where(left, c_new, e_new)
            f_new = self._ball_sse(x, np.exp(probe))
            c, e = c_new, e_new
            fc, fe = np.where(left, f_new, f_old), np.where(left, f_old, f_new)
            better = f_new < best_e
            best_s, best_e = np.where(better, np.exp(probe), best_s), np.where(better, f_new, best_e)
        return best_s.astype(np.float32)

    def _fit_sphere(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        """The shell and per-sub-space gain levels with the least squared error on ``x``."""
        g = self._geo
        best = (np.inf, 0, self.gains)
        for N in self._shell_candidates():
            G = self.ksub // int(g.shell_sizes[N])
            p, e = np.empty((2, x.shape[0], self.M))
            encode_sphere(x, self.mean.astype(np.float64), np.ones((self.M, 1)), N,
                          g.lead_val, g.lead_par, g.shell_lead, g.cnt, g.cls_par, g.cls_mod, g.offset, g.cls_off,
                          np.empty((0, self.M), dtype=self.code_dtype), p, e)
            levels = np.stack([_lloyd_1d(p[:, m], G) for m in range(self.M)])
            sse = float((e - p * p).sum()) + sum(_quantized_sse(p[:, m], levels[m]) for m in range(self.M))
            if sse < best[0]:
                best = (sse, int(N), levels.astype(np.float32))
        return best[1], best[2]

    def _build_codebooks(self) -> None:
        """Materialise the (M, 2**nbits, dsub) codebooks that decoding and ADC tables read."""
        g = self._geo
        if self.shape == "ball":
            pts = unrank_all(0, self.ncodes, self.dsub, g.cnt, g.cls_par, g.cls_mod, g.offset,
                             g.cls_off).astype(np.float32)
            words = self.scale[:, None, None] * pts[None]
        else:
            size = int(g.shell_sizes[self.shell])
            pts = unrank_all(int(g.offset[self.shell]), size, self.dsub, g.cnt, g.cls_par, g.cls_mod, g.offset,
                             g.cls_off)
            unit = (pts / np.sqrt(self.shell)).astype(np.float32)
            words = (self.gains[:, :, None, None] * unit[None, None]).reshape(self.M, -1, self.dsub)
        cb = np.zeros((self.M, self.ksub, self.dsub), dtype=np.float32)
        cb[:, : words.shape[1]] = words
        cb += self.mean.reshape(self.M, 1, self.dsub)
        self.codebooks = cb
        self._cb_norms = np.einsum("mkd,mkd->mk", cb, cb)

    # --- coding ------------------------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> np.ndarray:
        self._require_trained()
        x = self._check_x(x)
        g = self._geo
        codes: np.ndarray = np.empty((x.shape[0], self.M), dtype=self.code_dtype)
        mean = self.mean.astype(np.float64)
        if self.shape == "ball":
            encode_ball(x, mean, self.scale.astype(np.float64), g.kind, g.nmax, g.lead_val, g.lead_par, g.shell_lead,
                        g.cnt, g.cls_par, g.cls_mod, g.offset, g.cls_off, codes)
        else:
            unused = np.empty((0, self.M))
            encode_sphere(x, mean, self.gains.astype(np.float64), self.shell, g.lead_val, g.lead_par, g.shell_lead,
                          g.cnt, g.cls_par, g.cls_mod, g.offset, g.cls_off, codes, unused, unused)
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._require_trained()
        codes = self._check_codes(codes)
        if codes.size and int(codes.max()) >= self.ncodes:
            raise InvalidInputError(f"codes: values must lie in [0, {self.ncodes}) (the lattice points in use)")
        out = self.codebooks[np.arange(self.M)[None, :], codes]
        return out.reshape(codes.shape[0], self.d)

    def lookup_tables(self, xq: np.ndarray, metric: str = "l2") -> np.ndarray:
        self._require_trained()
        xq = self._check_x(xq, "xq")
        sub = xq.reshape(xq.shape[0], self.M, self.dsub)
        if metric == "l2":
            return l2_tables(sub, self.codebooks, self._cb_norms)
        return ip_tables(sub, self.codebooks)
