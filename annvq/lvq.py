"""Learning vector quantization: a nearest-prototype classifier with scikit-learn's interface.

``LVQClassifier`` learns a few labelled prototypes per class (LVQ1, LVQ2.1 or GLVQ updates, see
:mod:`annvq.kernels.lvq`) and classifies a vector by its nearest prototype. The prototypes can be
turned into an annvq index (:meth:`LVQClassifier.to_index`) that keeps their labels, is saved like
any index, and classifies through :func:`classify` with the index's own search (e.g. IVF for many
prototypes). Needs scikit-learn (``pip install annvq[lvq]``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as _SkNotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._available_if import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from ._validate import as_vectors, check_k
from .errors import InvalidInputError, NotTrainedError
from .index.base import BaseIndex
from .kernels.lvq import glvq_epoch, lvq1_epoch, lvq21_epoch
from .kmeans import KMeans

ALGORITHMS = ("lvq1", "lvq2.1", "glvq")
SCHEDULES = ("constant", "linear", "inverse")


class NotFittedError(NotTrainedError, _SkNotFittedError):
    """The classifier must be fitted first (both annvq's ``NotTrainedError`` and scikit-learn's)."""


class InputTypeError(InvalidInputError, TypeError):
    """Input of a type that cannot be read as numbers (an ``InvalidInputError`` and a ``TypeError``)."""


class LVQClassifier(ClassifierMixin, BaseEstimator):
    """Learning vector quantization classifier.

    Parameters
    ----------
    algorithm : ``"glvq"`` (default), ``"lvq1"`` or ``"lvq2.1"``.
    prototypes_per_class : int (the same for every class), float in (0, 1] (that fraction of each
        class's training samples, rounded down, at least one) or dict ``{label: count}``. Never more
        than a class's samples.
    learning_rate : rate of the first update; ``"auto"``: 0.1, or 0.01 for LVQ2.1, whose repulsion of
        the wrong prototype diverges at larger rates (as Kohonen warned).
    lr_schedule : ``"linear"`` (down to 0 at the last update), ``"inverse"`` (``rate / (1 + t / n)``
        after ``t`` updates on ``n`` samples) or ``"constant"``.
    max_iter : passes over the training data.
    window : LVQ2.1's relative window width ``w``; a sample updates when ``min(d1/d2, d2/d1) > (1-w)/(1+w)``.
    beta : slope of GLVQ's sigmoid cost; larger concentrates the updates on the class borders.
    init : ``"kmeans"`` (k-means on each class's samples) or ``"random"`` (random samples of the class).
    random_state : seed (int, None or a ``RandomState``) for the initialisation and the visiting order.

    Attributes
    ----------
    prototypes_ : (n_prototypes, n_features) float64, grouped by class.
    prototype_labels_ : (n_prototypes,) the class label of every prototype.
    classes_, n_features_in_, n_iter_ : as in scikit-learn.
    loss_curve_ : per pass, GLVQ's mean cost, or for LVQ1/LVQ2.1 the training error rate seen during it.

    ``predict_proba`` exists for GLVQ only: class c gets ``sigmoid(-beta * mu_c)`` normalised over
    classes, with ``mu_c = (d_c - d_other) / (d_c + d_other)`` from the nearest prototype of class c
    and of any other class -- the quantity GLVQ's cost is trained on (for two classes the two values
    already sum to one). LVQ1 and LVQ2.1 minimise no such cost, so they offer no probabilities.
    """

    def __init__(
        self,
        algorithm: str = "glvq",
        prototypes_per_class: float | dict = 0.05,
        learning_rate: float | str = "auto",
        lr_schedule: str = "linear",
        max_iter: int = 30,
        window: float = 0.3,
        beta: float = 8.0,
        init: str = "kmeans",
        random_state: Any = None,
    ) -> None:
        self.algorithm = algorithm
        self.prototypes_per_class = prototypes_per_class
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.max_iter = max_iter
        self.window = window
        self.beta = beta
        self.init = init
        self.random_state = random_state

    # --- checks ------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise InvalidInputError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.lr_schedule not in SCHEDULES:
            raise InvalidInputError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.init not in ("kmeans", "random"):
            raise InvalidInputError(f"init must be 'kmeans' or 'random', got {self.init!r}")
        lr = self.learning_rate
        if lr != "auto" and not (isinstance(lr, (int, float)) and 0 < lr <= 1):
            raise InvalidInputError(f"learning_rate must be 'auto' or in (0, 1], got {lr!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise InvalidInputError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.window, (int, float)) and 0 < self.window < 1):
            raise InvalidInputError(f"window must be in (0, 1), got {self.window!r}")
        if not (isinstance(self.beta, (int, float)) and self.beta > 0):
            raise InvalidInputError(f"beta must be positive, got {self.beta!r}")

    def _validate(self, X, y=None, reset: bool = False):
        """scikit-learn's input validation, its errors raised as annvq's ``InvalidInputError``."""
        try:
            if y is None and not reset:
                return validate_data(self, X, reset=False, dtype=np.float64)
            X, y = validate_data(self, X, y, dtype=np.float64)
            check_classification_targets(y)
        except TypeError as exc:
            raise InputTypeError(str(exc)) from None
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        if X.shape[0] != y.shape[0]:
            raise InvalidInputError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
        return X, y

    def _require_fitted(self) -> None:
        if not hasattr(self, "prototypes_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet: call fit() first")

    def _prototype_counts(self, sizes: np.ndarray) -> np.ndarray:
        p = self.prototypes_per_class
        if isinstance(p, dict):
            missing = [c for c in self.classes_ if c not in p]
            if missing:
                raise InvalidInputError(f"prototypes_per_class: no count for class(es) {missing[:5]}")
            counts = np.array([p[c] for c in self.classes_])
            if counts.dtype.kind not in "iu" or (counts < 1).any():
                raise InvalidInputError("prototypes_per_class: counts must be positive integers")
        elif isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p >= 1:
            counts = np.full(len(sizes), int(p))
        elif isinstance(p, (float, np.floating)) and 0 < p <= 1:
            counts = np.maximum(1, np.floor(p * sizes)).astype(np.int64)
        else:
            raise InvalidInputError("prototypes_per_class must be a positive int, a fraction in (0, 1] or a dict, "
                                    f"got {p!r}")
        return np.minimum(counts, sizes).astype(np.int64)

    # --- training ----------------------------------------------------------------------------------
    def fit(self, X, y) -> LVQClassifier:
        """Learn the prototypes from samples ``X`` (n, d) with class labels ``y`` (n,)."""
        self._check_params()
        X, y = self._validate(X, y, reset=True)
        self.classes_, yi = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise InvalidInputError(f"y: LVQ needs samples of at least 2 classes, got 1 class ({self.classes_[0]!r})")
        yi = yi.astype(np.int64)
        counts = self._prototype_counts(np.bincount(yi))
        rs = check_random_state(self.random_state)
        W = np.empty((int(counts.sum()), X.shape[1]))
        wl = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        start = 0
        for c, k in enumerate(counts):
            W[start : start + k] = self._init_class(X[yi == c], int(k), int(rs.randint(2**31 - 1)))
            start += k
        rng = np.random.default_rng(rs.randint(2**31 - 1))
        n = X.shape[0]
        total = self.max_iter * n
        lr = self.learning_rate if self.learning_rate != "auto" else (0.01 if self.algorithm == "lvq2.1" else 0.1)
        self.loss_curve_ = []
        for epoch in range(self.max_iter):
            t = epoch * n + np.arange(n, dtype=np.float64)
            if self.lr_schedule == "linear":
                rates = lr * (1.0 - t / total)
            elif self.lr_schedule == "inverse":
                rates = lr * n / (n + t)
            else:
                rates = np.full(n, float(lr))
            order = rng.permutation(n)
            if self.algorithm == "lvq1":
                loss = lvq1_epoch(X, yi, order, rates, W, wl)
            elif self.algorithm == "lvq2.1":
                loss = lvq21_epoch(X, yi, order, rates, W, wl, (1.0 - self.window) / (1.0 + self.window))
            else:
                loss = glvq_epoch(X, yi, order, rates, W, wl, float(self.beta))
            self.loss_curve_.append(float(loss) / n)
        self.prototypes_ = W
        self._proto_class = wl
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._w_norms = np.einsum("ij,ij->i", W, W)
        self.prototype_labels_ = self.classes_[wl]
        self.n_iter_ = self.max_iter
        return self

    def _init_class(self, Xc: np.ndarray, k: int, seed: int) -> np.ndarray:
        if k == 1:
            return Xc.mean(axis=0, keepdims=True)
        if self.init == "random":
            return Xc[np.random.default_rng(seed).choice(len(Xc), k, replace=False)]
        return np.asarray(KMeans(k, niter=20, random_state=seed).fit(Xc.astype(np.float32)).centroids, dtype=np.float64)

    # --- prediction --------------------------------------------------------------------------------
    def _distances(self, X, exact: bool = True) -> np.ndarray:
        """Squared distances (n, n_prototypes) of the samples to every prototype; with ``exact=False``
        without the samples' own squared norms, which do not change the nearest prototype."""
        self._require_fitted()
        X = self._validate(X)
        d = X @ self.prototypes_.T
        d *= -2.0
        d += self._w_norms
        if exact:
            d += np.einsum("ij,ij->i", X, X)[:, None]
            np.maximum(d, 0.0, out=d)
        return d

    def predict(self, X) -> np.ndarray:
        """Class label of every sample: the label of its nearest prototype."""
        nearest = np.argmin(self._distances(X, exact=False), axis=1)
        return self.prototype_labels_[nearest]

    @available_if(lambda self: self.algorithm == "glvq")
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, n_classes) from GLVQ's relative distances; see the class docstring."""
        dc = np.minimum.reduceat(self._distances(X), self._starts, axis=1)  # nearest prototype per class
        two = np.partition(dc, 1, axis=1)[:, :2] if dc.shape[1] > 1 else np.repeat(dc, 2, axis=1)
        other = np.where(dc == two[:, :1], two[:, 1:2], two[:, :1])  # nearest prototype of another class
        total = dc + other
        mu = np.divide(dc - other, total, out=np.zeros_like(total), where=total > 0)
        s = 1.0 / (1.0 + np.exp(self.beta * mu))
        return s / s.sum(axis=1, keepdims=True)

    # --- prototypes as an index --------------------------------------------------------------------
    def to_index(self, spec: Any = "SQ8") -> BaseIndex:
        """An annvq index of the prototypes (ids 0..n_prototypes-1) carrying their labels in
        ``index.labels``; it saves and loads like any index, and :func:`classify` predicts with it.

        The class labels must be integers to be stored. The index's codec is trained on the
        prototypes themselves, so ``spec`` must suit that many vectors (``SQ8``, or ``IVF...``/``PQ...``
        for thousands of prototypes).
        """
        from .spec import index_factory

        self._require_fitted()
        if self.classes_.dtype.kind not in "iub":
            raise InvalidInputError(f"to_index: class labels must be integers to be stored with an index, "
                                    f"got dtype {self.classes_.dtype}; map them to integers before fit")
        W = self.prototypes_.astype(np.float32)
        index = index_factory(W.shape[1], spec)
        index.train(W)
        index.add(W, ids=np.arange(len(W)))
        index.labels = self.prototype_labels_.astype(np.int64)
        return index


def classify(index: BaseIndex, X, k: int = 1, **search_params: Any) -> np.ndarray:
    """Labels of samples ``X`` from an index with ``labels`` (one per id 0..len-1): the label of the
    nearest stored vector (``k=1``), or the most frequent among the ``k`` nearest (ties: the nearer).

    ``search_params`` go to ``index.search`` (e.g. ``nprobe``).
    """
    labels = getattr(index, "labels", None)
    if labels is None:
        raise InvalidInputError("classify: this index has no labels (build it with LVQClassifier.to_index)")
    X = as_vectors(X, index.d, "X")
    _, ids = index.search(X, check_k(k), **search_params)
    if (ids >= len(labels)).any():
        raise InvalidInputError(f"classify: the index holds ids beyond its {len(labels)} labels")
    if (ids[:, 0] < 0).any():
        raise InvalidInputError(f"classify: no stored vector found for {int((ids[:, 0] < 0).sum())} queries "
                                "in the lists probed (raise nprobe)")
    if k == 1:
        return labels[ids[:, 0]]
    out = np.empty(len(ids), dtype=np.int64)
    for i, row in enumerate(ids):
        lab = labels[row[row >= 0]]
        values, first, votes = np.unique(lab, return_index=True, return_counts=True)
        best = votes == votes.max()
        out[i] = values[best][np.argmin(first[best])]
    return out
