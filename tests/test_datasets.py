"""annvq.datasets: file formats, ground truth, recall measures, ann-benchmarks files, default dataset."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from annvq.datasets import (
    Dataset,
    compute_descriptors,
    count_vecs,
    iter_vecs,
    knn_groundtruth,
    knn_recall,
    load_annb,
    load_dataset,
    load_default,
    mse,
    read_bvecs,
    read_fvecs,
    read_ivecs,
    read_vectors,
    recall_at,
    save_annb,
    write_bvecs,
    write_fvecs,
    write_ivecs,
)
from annvq.datasets import default as default_mod
from annvq.errors import FormatError, InvalidInputError

RNG = np.random.default_rng(7)


def naive_knn(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full distance matrix, stable sort (ties -> smaller index)."""
    b, q = base.astype(np.float64), queries.astype(np.float64)
    if metric == "l2":
        score = ((q[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
        I = np.argsort(score, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(score, I, axis=1), I
    if metric == "cosine":
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    sim = q @ b.T
    I = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, I, axis=1), I


# --- texmex formats -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ext", "write", "read", "data"),
    [
        (".fvecs", write_fvecs, read_fvecs, RNG.standard_normal((50, 17)).astype(np.float32)),
        (".ivecs", write_ivecs, read_ivecs, RNG.integers(-(2**31), 2**31 - 1, (50, 17), dtype=np.int64)),
        (".bvecs", write_bvecs, read_bvecs, RNG.integers(0, 256, (50, 17))),
    ],
)
def test_vecs_round_trip(tmp_path: Path, ext, write, read, data) -> None:
    path = tmp_path / f"x{ext}"
    write(path, data)
    assert path.stat().st_size == 50 * (4 + 17 * np.dtype(read(path).dtype).itemsize)
    out = read(path)
    assert out.dtype == {".fvecs": np.float32, ".ivecs": np.int32, ".bvecs": np.uint8}[ext]
    np.testing.assert_array_equal(out, data)
    assert count_vecs(path) == (50, 17)
    np.testing.assert_array_equal(read(path, start=10, count=5), data[10:15])
    np.testing.assert_array_equal(read(path, start=45, count=100), data[45:])
    assert read(path, start=50).shape == (0, 17)
    batches = list(iter_vecs(path, 7))
    assert [len(b) for b in batches] == [7] * 7 + [1]
    np.testing.assert_array_equal(np.concatenate(batches), data)
    np.testing.assert_array_equal(read_vectors(path), data)


def test_read_vectors_npy_and_hdf5(tmp_path: Path) -> None:
    x = RNG.standard_normal((20, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mm = read_vectors(tmp_path / "x.npy")
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(mm, x)
    save_annb(tmp_path / "x.hdf5", x, x[:3], np.zeros((3, 1), int), np.zeros((3, 1)))
    np.testing.assert_array_equal(read_vectors(tmp_path / "x.hdf5"), x)
    with pytest.raises(InvalidInputError, match="expected a file ending"):
        read_vectors(tmp_path / "x.txt")


def test_truncated_file_is_format_error(tmp_path: Path) -> None:
    path = tmp_path / "t.fvecs"
    write_fvecs(path, RNG.standard_normal((10, 8)))
    path.write_bytes(path.read_bytes()[:-3])
    for call in (read_fvecs, count_vecs, lambda p: next(iter_vecs(p, 4)), read_vectors):
        with pytest.raises(FormatError, match="not a multiple of the record size") as err:
            call(path)
        assert str(path) in str(err.value)


def test_inconsistent_header_is_format_error(tmp_path: Path) -> None:
    path = tmp_path / "h.bvecs"
    write_bvecs(path, RNG.integers(0, 256, (6, 12)))
    raw = bytearray(path.read_bytes())
    raw[3 * 16 : 3 * 16 + 4] = np.int32(11).tobytes()  # record 3's header (records are 4 + 12 bytes)
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="record 3 has dimension header 11"):
        read_bvecs(path)
    with pytest.raises(FormatError, match="record 3"):
        list(iter_vecs(path, 2))
    np.testing.assert_array_equal(read_bvecs(path, count=3).shape, (3, 12))  # earlier records still read


def test_foreign_files_are_format_errors(tmp_path: Path) -> None:
    (tmp_path / "text.fvecs").write_text("this is not a vector file at all\n")
    (tmp_path / "tiny.ivecs").write_bytes(b"\x01")
    (tmp_path / "neg.fvecs").write_bytes(np.int32(-4).tobytes() * 5)
    (tmp_path / "fake.hdf5").write_bytes(b"\x00" * 64)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name in ("text.fvecs", "tiny.ivecs", "neg.fvecs", "fake.hdf5", "obj.npy"):
        with pytest.raises(FormatError):
            read_vectors(tmp_path / name)
    with pytest.raises(FormatError):
        load_annb(tmp_path / "fake.hdf5")


def test_write_rejects_values_the_format_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"\[0, 255\]"):
        write_bvecs(tmp_path / "x.bvecs", [[0, 256]])
    with pytest.raises(InvalidInputError, match="whole numbers"):
        write_ivecs(tmp_path / "x.ivecs", [[0.5, 1.0]])
    with pytest.raises(InvalidInputError):
        write_fvecs(tmp_path / "x.fvecs", [[np.nan, 1.0]])
    with pytest.raises(InvalidInputError, match="ending in .fvecs"):
        write_fvecs(tmp_path / "x.bvecs", [[1.0]])
    write_bvecs(tmp_path / "ok.bvecs", np.array([[0.0, 255.0]]))  # integral floats, e.g. SIFT as float32
    np.testing.assert_array_equal(read_bvecs(tmp_path / "ok.bvecs"), [[0, 255]])


def test_iter_vecs_rejects_bad_batch_size(tmp_path: Path) -> None:
    write_fvecs(tmp_path / "x.fvecs", np.ones((3, 2)))
    with pytest.raises(InvalidInputError):
        next(iter_vecs(tmp_path / "x.fvecs", 0))


# --- ground truth -------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("block", [5, 37, None])
def test_groundtruth_matches_naive(metric: str, block: int | None) -> None:
    base = RNG.standard_normal((300, 12)).astype(np.float32)
    queries = RNG.standard_normal((20, 12)).astype(np.float32)
    D, I = knn_groundtruth(base, queries, 10, metric=metric, block=block)
    D_ref, I_ref = naive_knn(base, queries, 10, metric)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (20, 10)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [1, 3, 64, None])
def test_groundtruth_ties_go_to_smaller_index(block: int | None) -> None:
    base = RNG.integers(0, 3, (200, 4)).astype(np.float32)  # many exactly equal distances
    queries = RNG.integers(0, 3, (15, 4)).astype(np.float32)
    for metric in ("l2", "ip"):
        D, I = knn_groundtruth(base, queries, 25, metric=metric, block=block)
        D_ref, I_ref = naive_knn(base, queries, 25, metric)
        np.testing.assert_array_equal(I, I_ref)
        np.testing.assert_array_equal(D, D_ref)


def test_groundtruth_accepts_uint8_memmap(tmp_path: Path) -> None:
    base = RNG.integers(0, 256, (500, 16), dtype=np.uint8)
    np.save(tmp_path / "b.npy", base)
    queries = RNG.integers(0, 256, (7, 16)).astype(np.float32)
    D, I = knn_groundtruth(read_vectors(tmp_path / "b.npy"), queries, 5, block=64)
    D_ref, I_ref = naive_knn(base, queries, 5, "l2")
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_array_equal(D, D_ref)


def test_groundtruth_rejects_bad_input() -> None:
    base = RNG.standard_normal((10, 4))
    with pytest.raises(InvalidInputError, match="exceeds"):
        knn_groundtruth(base, base[:2], 11)
    with pytest.raises(InvalidInputError):
        knn_groundtruth(base, np.ones((2, 5)), 3)
    with pytest.raises(InvalidInputError, match="zero vector"):
        knn_groundtruth(base, np.zeros((1, 4)), 3, metric="cosine")
    with pytest.raises(InvalidInputError):
        knn_groundtruth(base, base, 3, metric="hamming")


# --- accuracy measures ---------------------------------------------------------------------------
def test_recall_at_hand_made() -> None:
    I = np.array([[3, 1, 2], [0, 5, 6], [9, 8, 7]])
    gt = np.array([[1, 0], [6, 0], [4, 0]])  # true nearest: 1, 6, 4
    assert recall_at(I, gt, 1) == 0.0
    assert recall_at(I, gt, 2) == pytest.approx(1 / 3)
    assert recall_at(I, gt, 3) == pytest.approx(2 / 3)
    with pytest.raises(InvalidInputError):
        recall_at(I, gt, 4)


def test_knn_recall_hand_made() -> None:
    I = np.array([[1, 2, 3], [4, 5, 6]])
    gt = np.array([[3, 2, 9], [7, 8, 9]])
    assert knn_recall(I, gt, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert knn_recall(I, gt, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert knn_recall(gt, gt, 3) == 1.0
    # a repeated id counts once and -1 padding never matches
    assert knn_recall(np.array([[2, 2, -1]]), np.array([[2, 5, 7]]), 3) == pytest.approx(1 / 3)
    assert knn_recall(np.array([[-1, -1]]), np.array([[-1, 3]]), 2) == 0.0


def test_mse_hand_made() -> None:
    assert mse([[0, 0], [1, 1]], [[3, 4], [1, 1]]) == pytest.approx(12.5)
    with pytest.raises(InvalidInputError):
        mse(np.ones((2, 3)), np.ones((3, 3)))


# --- ann-benchmarks HDF5 -------------------------------------------------------------------------
@pytest.mark.parametrize(("distance", "metric"),
                         [("euclidean", "l2"), ("dot", "ip"), ("angular", "cosine"), ("l2", "l2")])
def test_annb_round_trip(tmp_path: Path, distance: str, metric: str) -> None:
    train = RNG.standard_normal((40, 5)).astype(np.float32)
    test = RNG.standard_normal((6, 5)).astype(np.float32)
    neighbors = RNG.integers(0, 40, (6, 4)).astype(np.int32)
    distances = RNG.random((6, 4)).astype(np.float32)
    path = tmp_path / "toy-5-x.hdf5"
    save_annb(path, train, test, neighbors, distances, distance=distance)
    ds = load_annb(path)
    assert isinstance(ds, Dataset)
    assert (ds.name, ds.metric, ds.learn) == ("toy-5-x", metric, None)
    assert ds.neighbors.dtype == np.int64 and ds.distances.dtype == np.float32
    for got, want in ((ds.train, train), (ds.test, test), (ds.neighbors, neighbors), (ds.distances, distances)):
        np.testing.assert_array_equal(got, want)


def test_annb_missing_parts_are_named(tmp_path: Path) -> None:
    path = tmp_path / "partial.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=np.ones((3, 2), np.float32))
    with pytest.raises(FormatError, match="test.*distance"):
        load_annb(path)
    with h5py.File(path, "a") as f:
        f.create_dataset("test", data=np.ones((1, 2), np.float32))
        f.attrs["distance"] = "jaccard"
    with pytest.raises(FormatError, match="unsupported distance"):
        load_annb(path)


def test_load_dataset_computes_missing_groundtruth(tmp_path: Path) -> None:
    train = RNG.standard_normal((120, 6)).astype(np.float32)
    test = RNG.standard_normal((9, 6)).astype(np.float32)
    with h5py.File(tmp_path / "nogt.hdf5", "w") as f:
        f.create_dataset("train", data=train)
        f.create_dataset("test", data=test)
        f.attrs["distance"] = "euclidean"
    ds = load_dataset(tmp_path / "nogt.hdf5")
    D_ref, I_ref = naive_knn(train, test, 100, "l2")
    np.testing.assert_array_equal(ds.neighbors, I_ref)
    np.testing.assert_allclose(ds.distances, np.sqrt(D_ref), rtol=1e-5)

    folder = tmp_path / "toy"
    folder.mkdir()
    write_fvecs(folder / "toy_base.fvecs", train)
    write_fvecs(folder / "toy_query.fvecs", test)
    write_fvecs(folder / "toy_learn.fvecs", train[:30])
    ds = load_dataset(folder)
    assert ds.name == "toy" and ds.learn.shape == (30, 6)
    np.testing.assert_array_equal(ds.neighbors, I_ref)
    write_ivecs(folder / "toy_groundtruth.ivecs", I_ref[:, ::-1])  # a shipped file wins, as is
    np.testing.assert_array_equal(load_dataset(folder).neighbors, I_ref[:, ::-1])
    (folder / "toy_query.fvecs").unlink()
    with pytest.raises(FormatError, match="_query"):
        load_dataset(folder)
    with pytest.raises(InvalidInputError, match="unknown dataset"):
        load_dataset(tmp_path / "nothing-here")


# --- real data from ../shared/data ---------------------------------------------------------------
@pytest.mark.shared_data
def test_read_sift10k_base(shared_data: Path) -> None:
    path = shared_data / "sift10k" / "siftsmall_base.fvecs"
    x = read_fvecs(path)
    assert x.shape == (10000, 128) and x.dtype == np.float32
    assert count_vecs(path) == (10000, 128)
    assert x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x))
    np.testing.assert_array_equal(np.concatenate(list(iter_vecs(path, 4096))), x)
    np.testing.assert_array_equal(read_fvecs(path, start=9990), x[9990:])


@pytest.mark.shared_data
def test_groundtruth_reproduces_sift10k(shared_data: Path) -> None:
    ds = load_annb(shared_data / "sift10k" / "sift10k-128-euclidean.hdf5")
    assert ds.train.shape == (10000, 128) and ds.neighbors.shape == (100, 100) and ds.metric == "l2"
    D, I = knn_groundtruth(ds.train, ds.test, 100)
    for ours, shipped in zip(I, ds.neighbors):
        assert set(ours) == set(shipped)
    np.testing.assert_allclose(np.sqrt(D), ds.distances, rtol=1e-6)
    texmex = load_dataset(shared_data / "sift10k")  # siftsmall_*: shipped ivecs ground truth
    assert all(set(a) == set(b) for a, b in zip(I, texmex.neighbors))
    np.testing.assert_array_equal(texmex.train, ds.train)


@pytest.mark.shared_data
def test_read_bigann10k(shared_data: Path) -> None:
    b = read_bvecs(shared_data / "bigann10k" / "bigann10k_base.bvecs")
    assert b.shape == (10000, 128) and b.dtype == np.uint8
    with h5py.File(shared_data / "bigann10k" / "bigann10k-128-euclidean.hdf5", "r") as f:
        np.testing.assert_array_equal(f["train"][:], b[f["train_ids"][:]])


# --- the embedded default dataset ----------------------------------------------------------------
SMALL_IMAGES = ("page", "text")


@pytest.fixture(scope="session")
def default_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("annvq_cache")


@pytest.fixture(scope="session")
def small_default(default_cache: Path) -> Dataset:
    return load_default(n_query=50, n_learn=200, cache_dir=default_cache, images=SMALL_IMAGES, workers=1)


def test_default_dataset_looks_like_texmex_sift(small_default: Dataset) -> None:
    ds = small_default
    assert ds.metric == "l2" and ds.train.shape[1] == 128 and ds.test.shape == (50, 128)
    assert ds.learn.shape == (200, 128) and ds.train.shape[0] > 4000
    for x in (ds.train, ds.test, ds.learn):
        assert x.dtype == np.float32 and np.isfinite(x).all()
        assert x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x))
        norms = np.linalg.norm(x, axis=1)  # SIFT1M descriptors have norms ~512
        assert 490 < norms.min() and norms.max() < 520


def test_default_dataset_splits_and_groundtruth(small_default: Dataset) -> None:
    ds = small_default
    rows = {r.tobytes() for r in ds.train.astype(np.uint8)}
    assert not any(q.tobytes() in rows for q in ds.test.astype(np.uint8))  # held out, not in base
    assert ds.neighbors.shape == ds.distances.shape == (50, 100)
    D_ref, I_ref = naive_knn(ds.train, ds.test[:10], 100, "l2")
    np.testing.assert_array_equal(ds.neighbors[:10], I_ref)
    np.testing.assert_allclose(ds.distances[:10], np.sqrt(D_ref), rtol=1e-6)
    assert (np.diff(ds.distances, axis=1) >= 0).all()


def test_default_dataset_is_cached(small_default: Dataset, default_cache: Path, monkeypatch) -> None:
    assert [p.suffix for p in default_cache.iterdir()] == [".npy"]  # no temp files left behind

    def no_recompute(*args, **kwargs):
        raise AssertionError("descriptors were recomputed instead of read from the cache")

    monkeypatch.setattr(default_mod, "compute_descriptors", no_recompute)
    again = load_default(n_query=50, n_learn=200, cache_dir=default_cache, images=SMALL_IMAGES)
    for field in ("train", "test", "learn", "neighbors", "distances"):
        np.testing.assert_array_equal(getattr(again, field), getattr(small_default, field))
    smaller = load_default(n_base=1000, n_query=50, n_learn=0, cache_dir=default_cache, images=SMALL_IMAGES)
    assert smaller.train.shape == (1000, 128) and smaller.learn is None
    np.testing.assert_array_equal(smaller.test, small_default.test)  # same seed, same held-out queries
    with pytest.raises(InvalidInputError, match="fit in"):
        load_default(n_base=10**6, cache_dir=default_cache, images=SMALL_IMAGES)


def test_parallel_extraction_matches_serial() -> None:
    assert np.array_equal(compute_descriptors(("text",), workers=2), compute_descriptors(("text",), workers=1))
