"""LVQ: update rules against hand-computed steps, separable data, scikit-learn's checks, bad input,
prototypes as a labelled index."""
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.datasets import load_digits
from sklearn.utils.estimator_checks import check_estimator

import annvq
from annvq import FormatError, InvalidInputError, NotTrainedError
from annvq.kernels.lvq import glvq_epoch, lvq1_epoch, lvq21_epoch
from annvq.lvq import LVQClassifier, classify

# the 2-D toy set of the hand-computed steps: prototype 0 (class 0) at the origin, prototype 1 (class 1)
W0 = np.array([[0.0, 0.0], [2.0, 0.0]])
WL = np.array([0, 1])


def _step(kernel, x, label, *extra, rate=0.1):
    W = W0.copy()
    out = kernel(np.array([x], dtype=np.float64), np.array([label]), np.array([0]), np.array([rate]), W, WL, *extra)
    return W, out


def test_lvq1_step_by_hand():
    # x = (0.5, 0.5), class 0: nearest is prototype 0 (d^2 = 0.5 vs 2.5), right class, so it moves
    # towards x by 0.1 * (x - w) = (0.05, 0.05)
    W, errors = _step(lvq1_epoch, (0.5, 0.5), 0)
    np.testing.assert_allclose(W, [[0.05, 0.05], [2.0, 0.0]])
    assert errors == 0
    # the same x labelled 1: prototype 0 is wrong and moves away, to (-0.05, -0.05)
    W, errors = _step(lvq1_epoch, (0.5, 0.5), 1)
    np.testing.assert_allclose(W, [[-0.05, -0.05], [2.0, 0.0]])
    assert errors == 1


def test_lvq21_step_by_hand():
    s = (1 - 0.3) / (1 + 0.3)  # window w = 0.3: s = 0.538
    # x = (1.2, 0), class 1: distances 1.2 (prototype 0, wrong) and 0.8 (prototype 1, right);
    # min ratio 0.8 / 1.2 = 0.667 > 0.538, in the window: prototype 1 moves to 2 + 0.1 * (1.2 - 2) = 1.92,
    # prototype 0 moves away to 0 - 0.1 * (1.2 - 0) = -0.12
    W, errors = _step(lvq21_epoch, (1.2, 0.0), 1, s)
    np.testing.assert_allclose(W, [[-0.12, 0.0], [1.92, 0.0]])
    assert errors == 0
    # x = (1.9, 0), class 1: ratio 0.1 / 1.9 = 0.053 < 0.538, outside the window: nothing moves
    W, _ = _step(lvq21_epoch, (1.9, 0.0), 1, s)
    np.testing.assert_array_equal(W, W0)
    # x = (0.9, 0), class 1: misclassified (prototype 0 is nearer), ratio 0.9 / 1.1 = 0.818: both move,
    # prototype 1 to 2 + 0.1 * (0.9 - 2) = 1.89, prototype 0 to 0 - 0.1 * 0.9 = -0.09
    W, errors = _step(lvq21_epoch, (0.9, 0.0), 1, s)
    np.testing.assert_allclose(W, [[-0.09, 0.0], [1.89, 0.0]])
    assert errors == 1


def test_glvq_step_by_hand():
    # x = (0.5, 0), class 0: d+ = 0.25 (prototype 0), d- = 2.25 (prototype 1), mu = -2 / 2.5 = -0.8;
    # beta = 2: sigmoid(-1.6) = 0.167982; g = 4 * 0.167982 * 0.832018 * 0.1 = 0.055906
    # prototype 0: += g * 2 * 2.25 / 2.5 * (x - w) = 0.100631 * (0.5, 0) -> (0.050315, 0)
    # prototype 1: -= g * 2 * 0.25 / 2.5 * (x - w) = 0.011181 * (-1.5, 0) -> 2 + 0.016772 = 2.016772
    W, cost = _step(glvq_epoch, (0.5, 0.0), 0, 2.0)
    np.testing.assert_allclose(W, [[0.050315, 0.0], [2.016772, 0.0]], atol=2e-6)
    assert cost == pytest.approx(0.167982, abs=1e-6)


def _blobs(centers, labels, n=60, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([c + spread * rng.normal(size=(n, 2)) for c in centers])
    return X, np.repeat(labels, n)


@pytest.mark.parametrize("algorithm", ["glvq", "lvq1", "lvq2.1"])
def test_separable_data_classified_perfectly(algorithm):
    # XOR: each class is two blobs at opposite corners, so a class needs two prototypes
    X, y = _blobs(np.array([[0, 0], [5, 5], [0, 5], [5, 0]]), np.array([0, 0, 1, 1]))
    clf = LVQClassifier(algorithm=algorithm, prototypes_per_class=2, random_state=0).fit(X, y)
    assert clf.score(X, y) == 1.0
    assert clf.prototypes_.shape == (4, 2) and list(clf.prototype_labels_) == [0, 0, 1, 1]
    Xt, yt = _blobs(np.array([[0, 0], [5, 5], [0, 5], [5, 0]]), np.array([0, 0, 1, 1]), seed=1)
    assert clf.score(Xt, yt) == 1.0


def test_prototype_counts_and_labels():
    X, y = _blobs(np.array([[0, 0], [6, 0], [0, 6]]), np.array(["a", "b", "c"]), n=50)
    clf = LVQClassifier(prototypes_per_class={"a": 1, "b": 2, "c": 3}, random_state=0).fit(X, y)
    assert list(clf.prototype_labels_) == ["a", "b", "b", "c", "c", "c"]
    assert list(LVQClassifier(prototypes_per_class=0.1).fit(X, y).prototype_labels_).count("a") == 5
    assert len(LVQClassifier(prototypes_per_class=80).fit(X, y).prototypes_) == 150  # capped at the class sizes
    assert clf.score(X, y) == 1.0


def test_predict_proba_glvq_only():
    X, y = _blobs(np.array([[0, 0], [3, 0], [0, 3]]), np.array([0, 1, 2]), spread=1.0)
    clf = LVQClassifier(random_state=0).fit(X, y)
    p = clf.predict_proba(X)
    assert p.shape == (len(X), 3)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_array_equal(clf.classes_[p.argmax(1)], clf.predict(X))
    assert p.max(1).min() < 0.9 < p.max(1).max()  # unsure near the borders, sure far from them
    assert not hasattr(LVQClassifier(algorithm="lvq1"), "predict_proba")


@pytest.mark.parametrize("algorithm", ["glvq", "lvq2.1"])
def test_check_estimator(algorithm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(LVQClassifier(algorithm=algorithm, random_state=0))


def test_bad_input_raises_annvq_errors():
    X, y = _blobs(np.array([[0, 0], [3, 0]]), np.array([0, 1]))
    with pytest.raises(InvalidInputError, match="at least 2 classes"):
        LVQClassifier().fit(X, np.zeros(len(X)))
    with pytest.raises(InvalidInputError, match="inconsistent numbers of samples"):
        LVQClassifier().fit(X, y[:-1])
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        LVQClassifier().fit(Xn, y)
    with pytest.raises(NotTrainedError, match="not fitted"):
        LVQClassifier().predict(X)
    clf = LVQClassifier().fit(X, y)
    with pytest.raises(InvalidInputError, match="NaN"):
        clf.predict(Xn)
    with pytest.raises(InvalidInputError, match="3 features"):
        clf.predict(np.zeros((2, 3)))
    with pytest.raises(InvalidInputError, match="Unknown label type"):
        LVQClassifier().fit(X, np.linspace(0, 1, len(X)))
    for bad in ({"algorithm": "lvq3"}, {"prototypes_per_class": 0}, {"learning_rate": 2.0}, {"window": 1.5},
                {"max_iter": 0}, {"lr_schedule": "cosine"}, {"prototypes_per_class": {0: 1}}):
        with pytest.raises(InvalidInputError, match=next(iter(bad))):
            LVQClassifier(**bad).fit(X, y)


def test_prototypes_as_a_saved_index(tmp_path):
    X, y = load_digits(return_X_y=True)
    clf = LVQClassifier(random_state=0).fit(X[:1200], y[:1200])
    index = clf.to_index("SQ8")
    assert index.ntotal == len(clf.prototypes_)
    index.save(tmp_path / "protos")
    back = annvq.load(tmp_path / "protos")
    np.testing.assert_array_equal(back.labels, clf.prototype_labels_)
    via_index = classify(back, X[1200:])
    assert np.mean(via_index == clf.predict(X[1200:])) >= 0.99
    ivf = clf.to_index("IVF4,SQ8")
    assert np.mean(classify(ivf, X[1200:], nprobe=4) == clf.predict(X[1200:])) >= 0.99
    with pytest.raises(InvalidInputError, match="no labels"):
        classify(annvq.index_factory(64, "SQ8"), X[:2])
    with pytest.raises(InvalidInputError, match="integers"):
        LVQClassifier(random_state=0).fit(X[:300], y[:300].astype(str)).to_index()


def test_classify_votes_and_bad_stored_labels(tmp_path):
    x = np.array([[0.0], [1.0], [2.0], [10.0]], dtype=np.float32)
    index = annvq.index_factory(1, "SQ8")
    index.train(x)
    index.add(x)
    index.labels = np.array([7, 3, 3, 7])
    q = np.array([[0.2]])
    assert classify(index, q)[0] == 7  # nearest: id 0
    assert classify(index, q, k=3)[0] == 3  # ids 0, 1, 2 vote 7, 3, 3
    assert classify(index, q, k=2)[0] == 7  # a tie goes to the nearer
    ivf = annvq.index_factory(1, "IVF2,SQ8")
    ivf.train(x)
    ivf.add(x)
    ivf.labels = index.labels
    ivf.remove([3])  # list of id 3 (the centroid at 10) is now empty
    with pytest.raises(InvalidInputError, match="raise nprobe"):
        classify(ivf, np.array([[10.0]]), nprobe=1)
    index.save(tmp_path / "i")
    assert np.array_equal(annvq.load(tmp_path / "i").labels, [7, 3, 3, 7])
    from test_reliability import _rewrite  # a well-checksummed file with labels of the wrong shape

    _rewrite(next((tmp_path / "i").glob("model-*.h5")), "annvq-model",
             lambda params, arrays: arrays.update(labels=np.zeros((2, 2))))
    with pytest.raises(FormatError, match="labels"):
        annvq.load(tmp_path / "i")
