"""QINCo: equality with RQ before training, training, the NumPy decode against JAX, beam vs greedy,
persistence (also without JAX), re-ranking by decode, specs and bad input."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

import annvq
from annvq import (
    DependencyError,
    FlatIndex,
    InvalidInputError,
    IVFIndex,
    QINCoQuantizer,
    ResidualQuantizer,
)
from annvq.kernels.qinco import QincoWeights, qinco_decode, qinco_encode, qinco_tables

D, M, NBITS = 8, 3, 4
NET = {"embed_dim": 16, "hidden_dim": 32, "n_blocks": 1}
TRAIN = {**NET, "batch_size": 256, "lr": 3e-3, "val_fraction": 0.1, "train_beam_size": 4, "progress": False}


def clusters(n: int, seed: int = 0) -> np.ndarray:
    """Clusters in random 2-D planes of R^8: the residual left by the cluster centre lies in a plane
    that depends on the cluster, which one fixed codebook per step cannot follow."""
    rng = np.random.default_rng(0)
    centers, planes = 6.0 * rng.normal(size=(8, D)), rng.normal(size=(8, 2, D))
    rng = np.random.default_rng(seed)
    lab = rng.integers(8, size=n)
    x = centers[lab] + np.einsum("ni,nid->nd", rng.normal(size=(n, 2)), planes[lab]) + 0.05 * rng.normal(size=(n, D))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    return clusters(1200, seed=1), clusters(300, seed=2)


@pytest.fixture(scope="module")
def trained(data):
    pytest.importorskip("jax")
    return QINCoQuantizer(D, M, NBITS, epochs=8, **TRAIN).fit(data[0])


def sq_err(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    return np.sum((x.astype(np.float64) - x_hat) ** 2, axis=1)


def random_network(q: QINCoQuantizer, seed: int = 0) -> QINCoQuantizer:
    """``q`` with every weight random (non-zero output layers), so f_m is far from the identity."""
    rng = np.random.default_rng(seed)
    w = {k: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32) for k, v in q.weights._asdict().items()}
    w["codebooks"] = q.weights.codebooks
    q._set_weights(QincoWeights(**w))
    return q


# --- before training: the residual quantizer ----------------------------------------------------------
def test_untrained_model_equals_its_rq(data):
    x, xq = data
    rq = ResidualQuantizer(D, M, NBITS, beam_size=4, refine_iters=1).fit(x)
    q = QINCoQuantizer.from_rq(rq, mean=x.mean(axis=0), scale=2.5, beam_size=4, **NET)
    codes = np.random.default_rng(0).integers(0, 16, size=(200, M))
    np.testing.assert_allclose(q.decode(codes), rq.decode(codes), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(q.lookup_tables(xq), rq.lookup_tables(xq), rtol=1e-6)
    # greedy: the same codes; beam: RQ's beam codes, or the greedy ones where those are better
    rq.beam_size = q.beam_size = 1
    greedy = rq.encode(xq)
    np.testing.assert_array_equal(q.encode(xq), greedy)
    rq.beam_size = q.beam_size = 4
    beam = rq.encode(xq)
    better = np.where((sq_err(xq, rq.decode(greedy)) < sq_err(xq, rq.decode(beam)))[:, None], greedy, beam)
    np.testing.assert_array_equal(q.encode(xq), better)


def test_fit_without_epochs_is_rq(data):
    x, xq = data
    q = QINCoQuantizer(D, M, NBITS, epochs=0, **NET).fit(x)
    rq = ResidualQuantizer(D, M, NBITS).fit(x)
    codes = rq.encode(xq)
    np.testing.assert_allclose(q.decode(codes), rq.decode(codes), rtol=1e-5, atol=1e-4)
    assert q.history == []


# --- training -----------------------------------------------------------------------------------------
def test_training_lowers_the_validation_loss_and_the_error(trained, data):
    x, xq = data
    losses = [h["val_loss"] for h in trained.history]
    assert min(losses[1:]) < 0.8 * losses[0]
    assert {"epoch", "loss", "val_loss", "val_mse", "reset", "seconds"} <= set(trained.history[-1])
    untrained = QINCoQuantizer(D, M, NBITS, epochs=0, **NET).fit(x)
    assert trained.mse(xq) < untrained.mse(xq)  # also on new vectors, with the inference beam


def test_numpy_decode_equals_jax_decode():
    jax = pytest.importorskip("jax")
    from annvq.neural.qinco import partial_reconstructions

    rng = np.random.default_rng(3)
    q = QINCoQuantizer(D, M, NBITS, n_blocks=2, embed_dim=16, hidden_dim=32)
    q._set_weights(q._init_weights(rng.normal(size=(M, 16, D)).astype(np.float32), rng))
    q = random_network(q)
    codes = rng.integers(0, 16, size=(50, M)).astype(np.int32)
    prefixes = np.asarray(partial_reconstructions({k: jax.numpy.asarray(v) for k, v in q.weights._asdict().items()},
                                                  jax.numpy.asarray(codes)))
    proj = qinco_tables(q.weights).proj
    for m in range(1, M + 1):
        ref = prefixes[m - 1]
        np.testing.assert_allclose(qinco_decode(q.weights, proj, codes, steps=m), ref, rtol=1e-5,
                                   atol=1e-5 * np.abs(ref).max())
    assert np.abs(prefixes[-1] - prefixes[0]).max() > 0.1  # the steps do add something


def test_beam_is_never_worse_than_greedy(trained, data):
    _, xq = data
    for q in (trained, random_network(QINCoQuantizer.from_rq(ResidualQuantizer(D, M, NBITS).fit(data[0]), **NET))):
        greedy = QINCoQuantizer.from_state({**q.get_params(), "kind": "qinco", "beam_size": 1}, q._get_arrays())
        beam = QINCoQuantizer.from_state({**q.get_params(), "kind": "qinco", "beam_size": 8}, q._get_arrays())
        e_greedy = sq_err(xq, greedy.decode(greedy.encode(xq)))
        e_beam = sq_err(xq, beam.decode(beam.encode(xq)))
        assert np.all(e_beam <= e_greedy * (1 + 1e-5) + 1e-6)
        assert e_beam.mean() < e_greedy.mean()


def test_encoding_in_several_threads_gives_the_same_codes(data):
    q = random_network(QINCoQuantizer.from_rq(ResidualQuantizer(D, M, NBITS).fit(data[0]), **NET))
    x = q._normalise(data[0][:1199])  # blocks of unequal size
    serial = qinco_encode(q.weights, q._net, x, q.preselect, q.encode_beam, threads=1)
    for threads in (2, 3):
        codes, x_hat = qinco_encode(q.weights, q._net, x, q.preselect, q.encode_beam, threads=threads)
        np.testing.assert_array_equal(codes, serial[0])
        # BLAS may round a product of another block shape differently in the last bit
        np.testing.assert_allclose(x_hat, serial[1], rtol=1e-5, atol=1e-5)


# --- persistence, and no JAX at inference -------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(trained, data, tmp_path_factory):
    x, _ = data
    index = FlatIndex(QINCoQuantizer(D, M, NBITS, epochs=3, **TRAIN))
    index.train(x)
    index.add(x)
    path = tmp_path_factory.mktemp("qinco") / "flat"
    annvq.save(index, path)
    return path, index


def test_save_load_round_trip(saved, data):
    path, index = saved
    _, xq = data
    loaded = annvq.load(path)
    for name, arr in index.codec._get_arrays().items():
        np.testing.assert_array_equal(loaded.codec._get_arrays()[name], arr)
    assert loaded.codec.get_params() == index.codec.get_params()
    D0, I0 = index.search(xq, 5)
    D1, I1 = loaded.search(xq, 5)
    np.testing.assert_array_equal(I1, I0)
    np.testing.assert_allclose(D1, D0)
    # the network's weights are stored arrays of the model file, each under its own checksum
    (model,) = path.glob("model-*.h5")
    with h5py.File(model, "r") as f:
        header = json.loads(bytes(np.asarray(f.attrs["annvq"], dtype=np.uint8)))
    assert {"codec_net_w_1", "codec_codebooks"} <= {n for n, a in header["arrays"].items() if "crc32" in a}


def test_load_and_search_work_without_jax(saved, data, tmp_path):
    path, index = saved
    _, xq = data
    np.save(tmp_path / "q.npy", xq[:20])
    script = f"""
import sys
sys.modules["jax"] = None   # import jax now raises ImportError
sys.modules["optax"] = None
import json, numpy as np, annvq
index = annvq.load({str(path)!r})
D, I = index.search(np.load({str(tmp_path / "q.npy")!r}), 5)
try:
    annvq.QINCoQuantizer(8, 3, 4, epochs=1, val_fraction=0.2).fit(np.random.default_rng(0).normal(size=(500, 8)))
    err = None
except annvq.DependencyError as exc:
    err = str(exc)
print(json.dumps({{"I": I.tolist(), "error": err}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    np.testing.assert_array_equal(res["I"], index.search(xq[:20], 5)[1])
    assert "annvq[neural]" in res["error"]


# --- search: re-ranking by decode ---------------------------------------------------------------------
def assert_exhaustive(index, xq, k, D, I):
    """``(D, I)`` are the ``k`` nearest decoded vectors (ties, from vectors sharing a code, in any order)."""
    x_hat = index.reconstruct_batch(index.ids)
    d2 = np.sum((xq[:, None, :].astype(np.float64) - x_hat[None]) ** 2, axis=-1)
    np.testing.assert_allclose(D, np.sort(d2, axis=1)[:, :k], rtol=1e-4, atol=1e-3)
    pos = np.searchsorted(index.ids, I, sorter=np.argsort(index.ids))
    got = np.take_along_axis(d2, np.argsort(index.ids)[pos], axis=1)
    np.testing.assert_allclose(got, D, rtol=1e-4, atol=1e-3)


def test_flat_rerank_covering_everything_is_exhaustive(saved, data):
    _, index = saved
    _, xq = data
    k = 5
    D, I = index.search(xq, k, k_factor=index.ntotal // k + 1)
    assert_exhaustive(index, xq, k, D, I)
    # a short list is a subset of what the ADC tables rank first, re-ranked exactly
    D2, _ = index.search(xq, k, k_factor=2)
    assert np.all(D2 >= D - 1e-3)


def test_ivf_rerank_covering_everything_is_exhaustive(data):
    x, xq = data
    index = IVFIndex(QINCoQuantizer(D, M, NBITS, epochs=2, **TRAIN), nlist=4)
    index.train(x)
    index.add(x)
    k = 5
    dist, I = index.search(xq, k, nprobe=4, k_factor=index.ntotal // k + 1)
    assert_exhaustive(index, xq, k, dist, I)


def test_ip_rerank_covering_everything_is_exhaustive(data):
    x, xq = data
    index = FlatIndex(QINCoQuantizer(D, M, NBITS, epochs=2, **TRAIN), metric="ip")
    index.train(x)
    index.add(x)
    sims, I = index.search(xq, 5, k_factor=index.ntotal // 5 + 1)
    ip = xq.astype(np.float64) @ index.reconstruct_batch(index.ids).T
    np.testing.assert_allclose(sims, -np.sort(-ip, axis=1)[:, :5], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.take_along_axis(ip, I, axis=1), sims, rtol=1e-4, atol=1e-3)  # ids are rows here


def test_shortlist_is_the_tables_own_ranking(data):
    """The scan ranks rows by their distance to the tables' reconstruction ``table_decode`` (norms and
    IVF biases included), not by a mix of that and the neural decode: with float norms and a shortlist
    of exactly k, the k ids returned are the k nearest such reconstructions."""
    x, xq = data
    k = 5
    for index in (FlatIndex(QINCoQuantizer(D, M, NBITS, epochs=2, **TRAIN), norm_bits=32),
                  IVFIndex(QINCoQuantizer(D, M, NBITS, epochs=2, **TRAIN), nlist=4)):
        index.train(x)
        index.add(x)
        ivf = isinstance(index, IVFIndex)
        base = index.coarse.centroids[index.coarse.assign(x)] if ivf else np.zeros_like(x)
        codes = index.codec.encode(x - base)
        x_tab = base + index.codec.table_decode(codes)
        assert not np.allclose(x_tab, base + index.codec.decode(codes), atol=1e-2)
        d2 = np.sum((xq[:, None, :].astype(np.float64) - x_tab[None]) ** 2, axis=-1)
        _, I = index.search(xq, k, k_factor=1, **({"nprobe": 4} if ivf else {}))
        kth = np.sort(d2, axis=1)[:, k - 1 : k]
        got = np.take_along_axis(d2, I, axis=1)  # ids are rows here
        assert np.all(got <= kth + 1e-3 * (1 + kth)), type(index).__name__


def test_bad_k_factor(saved, data):
    _, index = saved
    with pytest.raises(InvalidInputError, match="k_factor"):
        index.search(data[1][:2], 3, k_factor=0)


# --- specs and errors ---------------------------------------------------------------------------------
def test_spec_strings():
    spec = annvq.IndexSpec.parse("QINCo8x8")
    assert (spec.codec, spec.M, spec.nbits, spec.to_string()) == ("qinco", 8, 8, "QINCo8x8_N8")
    assert annvq.IndexSpec.parse("IVF16,QINCo4x6").to_string() == "IVF16,QINCo4x6"
    assert annvq.IndexSpec.parse("QINCo8x8_N32").norm_bits == 32
    index = annvq.index_factory(16, "IVF4,QINCo4x4")
    assert isinstance(index.codec, QINCoQuantizer) and index.codec.M == 4
    with pytest.raises(annvq.SpecError):
        annvq.IndexSpec.parse("IVF4,QINCo4x4_N8")


def test_default_peak_rate_shrinks_with_the_chain():
    """8e-3 up to 8 steps, 8e-3 * 8 / M beyond; an explicit ``lr`` is used as given."""
    assert [QINCoQuantizer(D, m).peak_lr for m in (4, 8, 16, 32)] == [8e-3, 8e-3, 4e-3, 2e-3]
    assert QINCoQuantizer(D, 16, lr=1e-3).peak_lr == 1e-3
    assert QINCoQuantizer(D, 16).get_params()["lr"] is None


def test_default_beam_keeps_the_encoder_work_per_vector():
    """A beam of 256 / M between 8 and 32; an explicit ``beam_size`` is used as given; the parameters keep None."""
    assert [QINCoQuantizer(D, m).encode_beam for m in (2, 8, 16, 32, 64)] == [32, 32, 16, 8, 8]
    assert QINCoQuantizer(D, 16, beam_size=4).encode_beam == 4
    assert QINCoQuantizer(D, 16).get_params()["beam_size"] is None


def test_bad_input_to_fit(data):
    x, _ = data
    pytest.importorskip("jax")
    with pytest.raises(InvalidInputError, match="validation"):
        QINCoQuantizer(D, M, NBITS, epochs=2, val_fraction=0.05, progress=False).fit(x[:600])
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        QINCoQuantizer(D, M, NBITS, epochs=2, **TRAIN).fit(bad)
    with pytest.raises(InvalidInputError, match="training vectors"):
        QINCoQuantizer(D, M, 8, epochs=0).fit(x[:200])
    with pytest.raises(InvalidInputError, match="val_fraction"):
        QINCoQuantizer(D, M, NBITS, val_fraction=1.0)
    with pytest.raises(InvalidInputError, match="lr"):
        QINCoQuantizer(D, M, NBITS, lr=0.0)
    with pytest.raises(annvq.NotTrainedError):
        QINCoQuantizer(D, M, NBITS).encode(x[:2])
    assert issubclass(DependencyError, annvq.AnnvqError)
