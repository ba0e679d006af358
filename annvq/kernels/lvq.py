"""Learning vector quantization: one pass ("epoch") of each update rule over the training samples.

Every kernel visits the samples ``X[order[t]]`` in turn with learning rate ``rates[t]`` and moves
the prototypes ``W`` (labels ``wl``) in place; squared Euclidean distances throughout.

- LVQ1 (Kohonen): the nearest prototype moves towards the sample if its label is right, away if not.
- LVQ2.1 (Kohonen): the two nearest prototypes, when exactly one has the right label and the sample
  lies in the window ``min(d1/d2, d2/d1) > s`` (Euclidean distances, ``s = (1 - w) / (1 + w)`` for a
  window of relative width ``w``): the right one moves towards the sample, the wrong one away.
- GLVQ (Sato & Yamada): stochastic gradient descent on ``sigmoid(beta * mu)``,
  ``mu = (d+ - d-) / (d+ + d-)`` with ``d+`` (``d-``) the distance to the nearest prototype of the
  right (a wrong) class. The gradient is scaled per sample by ``2 (d+ + d-) / beta`` so that the
  rate is dimensionless: a sample on the class border (mu = 0) moves both prototypes by
  ``rate * (x - w)``, as LVQ2.1 does, and samples far from the border barely move them.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _sq_dist(x, w):
    s = 0.0
    for j in range(x.shape[0]):
        t = x[j] - w[j]
        s += t * t
    return s


@njit(cache=True, inline="always")
def _move(w, x, step):
    """w += step * (x - w)."""
    for j in range(x.shape[0]):
        w[j] += step * (x[j] - w[j])


@njit(cache=True, nogil=True)
def lvq1_epoch(X, y, order, rates, W, wl):
    """One LVQ1 pass; returns how many visited samples the nearest prototype misclassified."""
    errors = 0
    for t in range(order.shape[0]):
        i = order[t]
        best = np.inf
        jb = 0
        for j in range(W.shape[0]):
            d = _sq_dist(X[i], W[j])
            if d < best:
                best = d
                jb = j
        if wl[jb] == y[i]:
            _move(W[jb], X[i], rates[t])
        else:
            errors += 1
            _move(W[jb], X[i], -rates[t])
    return errors


@njit(cache=True, nogil=True)
def lvq21_epoch(X, y, order, rates, W, wl, s):
    """One LVQ2.1 pass with window threshold ``s``; returns the misclassified visited samples."""
    errors = 0
    s2 = s * s  # compare squared distances: sqrt(d1 / d2) > s  <=>  d1 > s^2 d2
    for t in range(order.shape[0]):
        i = order[t]
        d1 = np.inf
        d2 = np.inf
        j1 = 0
        j2 = 0
        for j in range(W.shape[0]):
            d = _sq_dist(X[i], W[j])
            if d < d1:
                d2, j2 = d1, j1
                d1, j1 = d, j
            elif d < d2:
                d2, j2 = d, j
        right1 = wl[j1] == y[i]
        if not right1:
            errors += 1
        if right1 != (wl[j2] == y[i]) and d1 > s2 * d2:
            jr, jw = (j1, j2) if right1 else (j2, j1)
            _move(W[jr], X[i], rates[t])
            _move(W[jw], X[i], -rates[t])
    return errors


@njit(cache=True, nogil=True)
def glvq_epoch(X, y, order, rates, W, wl, beta):
    """One GLVQ pass; returns the summed cost ``sigmoid(beta * mu)`` of the visited samples (before
    their updates)."""
    cost = 0.0
    for t in range(order.shape[0]):
        i = order[t]
        dp = np.inf
        dm = np.inf
        jp = -1
        jm = -1
        for j in range(W.shape[0]):
            d = _sq_dist(X[i], W[j])
            if wl[j] == y[i]:
                if d < dp:
                    dp, jp = d, j
            elif d < dm:
                dm, jm = d, j
        total = dp + dm
        if total <= 0.0:  # both prototypes sit on the sample: no direction to move in
            cost += 0.5
            continue
        mu = (dp - dm) / total
        sig = 1.0 / (1.0 + np.exp(-beta * mu))
        cost += sig
        g = 4.0 * sig * (1.0 - sig) * rates[t]  # 1 at mu = 0
        _move(W[jp], X[i], g * 2.0 * dm / total)
        _move(W[jm], X[i], -g * 2.0 * dp / total)
    return cost
