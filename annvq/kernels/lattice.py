"""Lattice kernels: nearest points of Z^n, D_n and E8, and the compact enumeration of a lattice
truncated to a ball or to one sphere shell.

Lattice points are integer vectors ``y``. Z^n and D_n use their own coordinates; E8 uses doubled
coordinates (``y = 2v``), where it is the set of integer vectors whose entries share one parity and
whose sum is divisible by 4. Every lattice here is thus a union of *classes*: vectors whose entries
have one parity (or any parity) and whose sum is 0 modulo ``m`` (Z^n: any parity, m = 1; D_n: any
parity, m = 2; E8: two classes, even and odd entries, m = 4).

Nearest points follow Conway & Sloane ("Fast quantizing and decoding algorithms for lattice
quantizers and codes", 1982): round (Z^n); round and re-round the worst coordinate the other way when
the sum is odd (D_n); the nearer of the D8 and D8 + 1/2 answers (E8). No codebook is searched.

A truncated lattice is searched with *leaders*: every point of a shell is a signed permutation of a
non-increasing vector of absolute values, so the best point of a shell for ``x`` pairs the sorted
``|x|`` with each leader (rearrangement inequality), takes the signs of ``x`` and, where the class
fixes the parity of the number of minus signs (E8's odd class), flips the sign of the smallest
product. This gives the nearest point of a sphere shell, and of a ball when Conway & Sloane's point
falls outside it (shells are then visited from the outside in, pruned with
``(||x|| - sqrt(N))^2``): exact nearest codewords without a codebook search.

Codes enumerate points by (norm, class, lexicographic order). The number of ways to complete
coordinates ``i..n-1`` with norm ``s`` and sum ``r`` (mod m) is a small table ``cnt[c, i, s, r]``, so
:func:`rank_point` and :func:`unrank_point` take O(n sqrt(N)) steps and no table of points.
"""
from __future__ import annotations

from functools import lru_cache
from math import isqrt
from typing import NamedTuple

import numpy as np
from numba import njit, prange

Z, D, E8 = 0, 1, 2
LATTICES = {"z": Z, "d": D, "e8": E8}
_ROWS = 256  # rows per parallel work item in the encoders


class Geometry(NamedTuple):
    """Everything the kernels need to search and enumerate one lattice up to norm ``nmax``."""

    kind: int
    n: int
    nmax: int
    cls_par: np.ndarray  # (C,) int64: -1 any parity, 0 even entries, 1 odd entries
    cls_mod: np.ndarray  # (C,) int64: the sum is 0 modulo this
    cnt: np.ndarray  # (C, n + 1, nmax + 1, 4) int64 completion counts
    offset: np.ndarray  # (nmax + 2,) int64: points of norm < N
    cls_off: np.ndarray  # (nmax + 1, C + 1) int64: within shell N, points of classes < c
    lead_val: np.ndarray  # (L, n) int64 leaders, non-increasing absolute values
    lead_par: np.ndarray  # (L,) int64: -1 free signs, else required parity of the minus signs
    shell_lead: np.ndarray  # (nmax + 2,) int64: leaders of shell N are shell_lead[N]:shell_lead[N + 1]

    @property
    def shell_sizes(self) -> np.ndarray:
        """Points on every shell N = 0..nmax."""
        return np.diff(self.offset)


def _classes(kind: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == Z:
        return np.array([-1], np.int64), np.array([1], np.int64)
    if kind == D:
        return np.array([-1], np.int64), np.array([2], np.int64)
    return np.array([0, 1], np.int64), np.array([4, 4], np.int64)


@njit(cache=True, nogil=True)
def _count_table(n, nmax, cls_par, cls_mod):
    C = cls_par.shape[0]
    cnt = np.zeros((C, n + 1, nmax + 1, 4), dtype=np.int64)
    for c in range(C):
        par, m = cls_par[c], cls_mod[c]
        cnt[c, n, 0, 0] = 1
        for i in range(n - 1, -1, -1):
            for s in range(nmax + 1):
                vm = _isqrt(s)
                for v in range(-vm, vm + 1):
                    if par >= 0 and (v - par) % 2 != 0:
                        continue
                    rest = s - v * v
                    for r in range(m):
                        cnt[c, i, s, r] += cnt[c, i + 1, rest, (r - v) % m]
    return cnt


@njit(cache=True, nogil=True)
def _isqrt(s):
    """floor(sqrt(s)) for a non-negative integer, exact."""
    v = int(np.sqrt(s))
    while v * v > s:
        v -= 1
    while (v + 1) * (v + 1) <= s:
        v += 1
    return v


def _leaders(n: int, nmax: int, par: int, mod: int) -> list[tuple[tuple[int, ...], int]]:
    """(leader, required minus-sign parity or -1) of one class, for every norm up to ``nmax``."""
    out: list[tuple[tuple[int, ...], int]] = []
    first = 1 if par == 1 else 0
    step = 1 if par < 0 else 2

    def grow(prefix: list[int], left: int, cap: int) -> None:
        if len(prefix) == n:
            s = sum(prefix)
            if par == 1 and mod == 4:  # odd entries: each sign flip moves the sum by 2 (mod 4)
                out.append((tuple(prefix), (s // 2) % 2))
            elif s % mod == 0:  # sign flips move the sum by multiples of mod: all signs valid
                out.append((tuple(prefix), -1))
            return
        for v in range(min(cap, isqrt(left)), first - 1, -1):
            if (v - first) % step == 0:
                prefix.append(v)
                grow(prefix, left - v * v, v)
                prefix.pop()

    grow([], nmax, isqrt(nmax))
    return out


@lru_cache(maxsize=64)
def geometry(kind: int, n: int, nmax: int) -> Geometry:
    """Counting tables and leaders of a lattice (Z, D or E8) in ``n`` dims, for norms up to ``nmax``."""
    cls_par, cls_mod = _classes(kind)
    cnt = _count_table(n, nmax, cls_par, cls_mod)
    per_class = cnt[:, 0, :, 0].T  # (nmax + 1, C)
    cls_off = np.zeros((nmax + 1, len(cls_par) + 1), dtype=np.int64)
    cls_off[:, 1:] = np.cumsum(per_class, axis=1)
    offset = np.zeros(nmax + 2, dtype=np.int64)
    offset[1:] = np.cumsum(cls_off[:, -1])
    leads = [ld for c in range(len(cls_par)) for ld in _leaders(n, nmax, int(cls_par[c]), int(cls_mod[c]))]
    leads.sort(key=lambda t: sum(v * v for v in t[0]))
    lead_val = np.array([ld[0] for ld in leads], dtype=np.int64).reshape(len(leads), n)
    lead_par = np.array([ld[1] for ld in leads], dtype=np.int64)
    norms = (lead_val**2).sum(axis=1)
    shell_lead = np.searchsorted(norms, np.arange(nmax + 2)).astype(np.int64)
    return Geometry(kind, n, nmax, cls_par, cls_mod, cnt, offset, cls_off, lead_val, lead_par, shell_lead)


def ball_nmax(kind: int, n: int, npoints: int) -> int:
    """The largest norm N whose ball (every point of norm <= N) holds at most ``npoints`` points."""
    hi = 8
    while True:
        g = geometry(kind, n, hi)
        if g.offset[-1] > npoints:
            return int(np.searchsorted(g.offset, npoints, side="right")) - 2
        hi *= 2


# --- nearest lattice points (Conway & Sloane) -------------------------------------------------------
@njit(cache=True, inline="always")
def _nearest_z(x, y):
    for i in range(x.shape[0]):
        y[i] = int(np.floor(x[i] + 0.5))


@njit(cache=True, nogil=True)
def _nearest_d(x, y):
    """D_n: round; if the sum is odd, round the coordinate with the largest error the other way."""
    s = 0
    worst = -1.0
    wi = 0
    for i in range(x.shape[0]):
        r = np.floor(x[i] + 0.5)
        y[i] = int(r)
        s += y[i]
        e = abs(x[i] - r)
        if e > worst:
            worst = e
            wi = i
    if s % 2 != 0:
        y[wi] += 1 if x[wi] > y[wi] else -1


@njit(cache=True, nogil=True)
def _nearest_e8(x, y, t, ya, yb):
    """E8 in doubled coordinates: the nearer of 2 D8(x/2) and 2 D8((x - 1)/2) + 1."""
    n = x.shape[0]
    for i in range(n):
        t[i] = 0.5 * x[i]
    _nearest_d(t, ya)
    for i in range(n):
        t[i] = 0.5 * (x[i] - 1.0)
    _nearest_d(t, yb)
    da = 0.0
    db = 0.0
    for i in range(n):
        ya[i] *= 2
        yb[i] = 2 * yb[i] + 1
        da += (x[i] - ya[i]) ** 2
        db += (x[i] - yb[i]) ** 2
    src = ya if da <= db else yb
    for i in range(n):
        y[i] = src[i]


@njit(cache=True, nogil=True)
def nearest_point(kind, x, y, t, ya, yb):
    """Nearest point ``y`` of the (untruncated) lattice to ``x``; ``t``, ``ya``, ``yb`` are scratch."""
    if kind == Z:
        _nearest_z(x, y)
    elif kind == D:
        _nearest_d(x, y)
    else:
        _nearest_e8(x, y, t, ya, yb)


# --- leader search ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _sort_abs(x, a, perm):
    """``a`` = |x| sorted descending, ``perm`` the coordinates in that order; returns the minus signs."""
    n = x.shape[0]
    neg = 0
    for i in range(n):
        v = abs(x[i])
        if x[i] < 0:
            neg += 1
        j = i
        while j > 0 and a[j - 1] < v:
            a[j] = a[j - 1]
            perm[j] = perm[j - 1]
            j -= 1
        a[j] = v
        perm[j] = i
    return neg


@njit(cache=True, inline="always")
def _leader_dot(a, lv, lpar, neg):
    """Best <x, point> over the signed permutations of leader ``lv``; and whether a sign flips."""
    n = a.shape[0]
    dot = 0.0
    for i in range(n):
        dot += a[i] * lv[i]
    if lpar >= 0 and neg % 2 != lpar:
        return dot - 2.0 * a[n - 1] * lv[n - 1], True
    return dot, False


@njit(cache=True, nogil=True)
def _place(x, perm, lv, flip, y):
    n = x.shape[0]
    for i in range(n):
        j = perm[i]
        y[j] = -lv[i] if x[j] < 0 else lv[i]
    if flip:
        y[perm[n - 1]] = -y[perm[n - 1]]


@njit(cache=True, nogil=True)
def nearest_in_ball(kind, x, nmax, lead_val, lead_par, shell_lead, y, t, ya, yb, a, perm):
    """Nearest point of norm <= ``nmax`` to ``x``, written to ``y``; returns its norm.

    Conway & Sloane's point when it lies in the ball; else the best leader over the shells, visited
    from the outermost inwards and skipped when ``(||x|| - sqrt(N))^2`` cannot beat the best so far.
    """
    nearest_point(kind, x, y, t, ya, yb)
    N = 0
    for i in range(x.shape[0]):
        N += y[i] * y[i]
    if N <= nmax:
        return N
    neg = _sort_abs(x, a, perm)
    x2 = 0.0
    for i in range(x.shape[0]):
        x2 += x[i] * x[i]
    xn = np.sqrt(x2)
    best = np.inf
    bl = -1
    bflip = False
    for s in range(nmax, -1, -1):
        l0, l1 = shell_lead[s], shell_lead[s + 1]
        if l0 == l1:
            continue
        rs = np.sqrt(s)
        if (xn - rs) ** 2 >= best:
            if rs <= xn:
                break
            continue
        for ll in range(l0, l1):
            dot, flip = _leader_dot(a, lead_val[ll], lead_par[ll], neg)
            dist = x2 + s - 2.0 * dot
            if dist < best:
                best = dist
                bl = ll
                bflip = flip
    _place(x, perm, lead_val[bl], bflip, y)
    N = 0
    for i in range(x.shape[0]):
        N += y[i] * y[i]
    return N


@njit(cache=True, nogil=True)
def nearest_on_shell(x, l0, l1, lead_val, lead_par, y, a, perm):
    """Point of the shell whose leaders are ``l0:l1`` with the largest inner product with ``x``
    (the nearest in angle), written to ``y``; returns that inner product."""
    neg = _sort_abs(x, a, perm)
    best = -np.inf
    bl = l0
    bflip = False
    for ll in range(l0, l1):
        dot, flip = _leader_dot(a, lead_val[ll], lead_par[ll], neg)
        if dot > best:
            best = dot
            bl = ll
            bflip = flip
    _place(x, perm, lead_val[bl], bflip, y)
    return best


# --- rank / unrank -----------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _first_value(rem, par):
    """The smallest entry allowed for a coordinate: >= -sqrt(rem), of the class's parity."""
    v = -_isqrt(rem)
    if par >= 0 and (v - par) % 2 != 0:
        v += 1
    return v


@njit(cache=True, nogil=True)
def rank_point(y, N, cnt, cls_par, cls_mod, offset, cls_off):
    """Position of lattice point ``y`` (norm ``N``) in the order (norm, class, lexicographic)."""
    n = y.shape[0]
    c = 0 if cls_par.shape[0] == 1 else abs(y[0]) % 2
    par, mask = cls_par[c], cls_mod[c] - 1  # the moduli are powers of two
    step = 1 if par < 0 else 2
    rem = N
    r = 0
    lex = 0
    for i in range(n):
        v = _first_value(rem, par)
        while v < y[i]:
            lex += cnt[c, i + 1, rem - v * v, (r - v) & mask]
            v += step
        rem -= y[i] * y[i]
        r = (r - y[i]) & mask
    return offset[N] + cls_off[N, c] + lex


@njit(cache=True, nogil=True)
def unrank_point(idx, cnt, cls_par, cls_mod, offset, cls_off, y):
    """Lattice point at position ``idx`` (inverse of :func:`rank_point`), written to ``y``; returns its norm."""
    n = y.shape[0]
    N = np.searchsorted(offset, idx, side="right") - 1
    rest = idx - offset[N]
    c = 0
    while rest >= cls_off[N, c + 1]:
        c += 1
    lex = rest - cls_off[N, c]
    par, mask = cls_par[c], cls_mod[c] - 1
    step = 1 if par < 0 else 2
    rem = N
    r = 0
    for i in range(n):
        v = _first_value(rem, par)
        while True:
            k = cnt[c, i + 1, rem - v * v, (r - v) & mask] if v * v <= rem else 0
            if lex < k:
                break
            lex -= k
            v += step
        y[i] = v
        rem -= v * v
        r = (r - v) & mask
    return N


@njit(cache=True, nogil=True)
def unrank_all(start, count, n, cnt, cls_par, cls_mod, offset, cls_off):
    """Points at positions ``start .. start + count - 1``, as a (count, n) int64 array."""
    out = np.empty((count, n), dtype=np.int64)
    for j in range(count):
        unrank_point(start + j, cnt, cls_par, cls_mod, offset, cls_off, out[j])
    return out


# --- batch encoders -------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _sub_vector(x, i, m, mean, inv, xs):
    """``xs = (x[i, sub-space m] - mean) * inv``; returns its squared norm."""
    dsub = xs.shape[0]
    s = 0.0
    for j in range(dsub):
        xs[j] = (x[i, m * dsub + j] - mean[m * dsub + j]) * inv
        s += xs[j] * xs[j]
    return s


@njit(cache=True, nogil=True, parallel=True)
def encode_ball(x, mean, scale, kind, nmax, lead_val, lead_par, shell_lead, cnt, cls_par, cls_mod,
                offset, cls_off, codes):
    """Ball quantization: sub-vector m of row i is ``(x - mean) / scale[m]`` rounded to the nearest
    lattice point of norm <= ``nmax``. Writes its rank to ``codes`` (n, M) unless ``codes`` has no
    rows (as when fitting the scales); returns the squared error per sub-space (M,)."""
    n, d = x.shape
    M = scale.shape[0]
    dsub = d // M
    ranked = codes.shape[0] > 0
    nb = (n + _ROWS - 1) // _ROWS
    part = np.zeros((nb, M))
    for b in prange(nb):
        xs = np.empty(dsub)
        t = np.empty(dsub)
        a = np.empty(dsub)
        y = np.empty(dsub, dtype=np.int64)
        ya = np.empty(dsub, dtype=np.int64)
        yb = np.empty(dsub, dtype=np.int64)
        perm = np.empty(dsub, dtype=np.int64)
        for i in range(b * _ROWS, min(n, (b + 1) * _ROWS)):
            for m in range(M):
                _sub_vector(x, i, m, mean, 1.0 / scale[m], xs)
                N = nearest_in_ball(kind, xs, nmax, lead_val, lead_par, shell_lead, y, t, ya, yb, a, perm)
                e = 0.0
                for j in range(dsub):
                    e += (xs[j] - y[j]) ** 2
                part[b, m] += e * scale[m] * scale[m]
                if ranked:
                    codes[i, m] = rank_point(y, N, cnt, cls_par, cls_mod, offset, cls_off)
    return part.sum(axis=0)


@njit(cache=True, nogil=True, parallel=True)
def encode_sphere(x, mean, gains, N, lead_val, lead_par, shell_lead, cnt, cls_par, cls_mod, offset, cls_off,
                  codes, proj, norms):
    """Gain-shape quantization of every sub-vector ``x - mean``: its direction is the nearest point of
    shell ``N``, its gain the nearest of ``gains[m]`` (ascending) to its projection on that point.

    Writes, where the array has rows: ``codes`` (n, M) = gain index * shell size + rank within the
    shell; ``proj`` (n, M), the projections, and ``norms`` (n, M), the squared norms (to fit gains).
    """
    n, d = x.shape
    M = gains.shape[0]
    dsub = d // M
    G = gains.shape[1]
    coded, fitting = codes.shape[0] > 0, proj.shape[0] > 0
    l0, l1 = shell_lead[N], shell_lead[N + 1]
    size = offset[N + 1] - offset[N]
    inv_radius = 1.0 / np.sqrt(N)
    for b in prange((n + _ROWS - 1) // _ROWS):
        xs = np.empty(dsub)
        a = np.empty(dsub)
        y = np.empty(dsub, dtype=np.int64)
        perm = np.empty(dsub, dtype=np.int64)
        for i in range(b * _ROWS, min(n, (b + 1) * _ROWS)):
            for m in range(M):
                sq = _sub_vector(x, i, m, mean, 1.0, xs)
                pr = nearest_on_shell(xs, l0, l1, lead_val, lead_par, y, a, perm) * inv_radius
                if fitting:
                    proj[i, m] = pr
                    norms[i, m] = sq
                if coded:
                    g = 0
                    hi = G - 1
                    while g < hi:  # binary search: the first level whose upper midpoint is >= pr
                        mid = (g + hi) // 2
                        if pr > 0.5 * (gains[m, mid] + gains[m, mid + 1]):
                            g = mid + 1
                        else:
                            hi = mid
                    codes[i, m] = g * size + rank_point(y, N, cnt, cls_par, cls_mod, offset, cls_off) - offset[N]
