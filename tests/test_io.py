"""HDF5 persistence: identical results after a round trip, in-place append, clear errors on bad files."""
import h5py
import numpy as np
import pytest

import annvq
from annvq import FormatError
from annvq.io import FORMAT_VERSION


@pytest.fixture(scope="module")
def built():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1500, 16)).astype(np.float32)
    xq = rng.normal(size=(10, 16)).astype(np.float32)
    out = {}
    for spec in ["PQ4x8", "OPQ4,PQ4x8", "SQ8", "PQ2x10"]:
        idx = annvq.index_factory(16, spec, metric="l2")
        idx.train(x)
        idx.add(x, ids=np.arange(len(x)) + 100)
        out[spec] = idx
    return x, xq, out


@pytest.mark.parametrize("spec", ["PQ4x8", "OPQ4,PQ4x8", "SQ8", "PQ2x10"])
def test_round_trip_identical_results(built, tmp_path, spec):
    x, xq, idxs = built
    idx = idxs[spec]
    path = tmp_path / "i.h5"
    idx.save(path)
    back = annvq.load(path)
    assert type(back) is type(idx) and back.ntotal == idx.ntotal and back.spec == spec
    assert back.metric == idx.metric and back.code_size == idx.code_size
    D1, I1 = idx.search(xq, 10)
    D2, I2 = back.search(xq, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_round_trip_after_remove(built, tmp_path):
    x, xq, idxs = built
    idx = annvq.index_factory(16, "PQ4x8")
    idx.train(x)
    idx.add(x, ids=np.arange(len(x)) * 3)
    idx.remove(np.arange(0, 300) * 3)
    idx.save(tmp_path / "r.h5")
    back = annvq.load(tmp_path / "r.h5")
    np.testing.assert_array_equal(back.ids, idx.ids)
    np.testing.assert_array_equal(back.search(xq, 5)[1], idx.search(xq, 5)[1])


def test_append_in_place(built, tmp_path):
    x, xq, _ = built
    idx = annvq.index_factory(16, "PQ4x8")
    idx.train(x)
    idx.add(x[:500])
    path = tmp_path / "a.h5"
    idx.save(path)
    ref = annvq.load(path)
    new_ids = annvq.append(path, x[500:900])
    assert list(new_ids[:2]) == [500, 501]
    annvq.append(path, x[900:], ids=np.arange(900, 1500) + 10_000)
    ref.add(x[500:900])
    ref.add(x[900:], ids=np.arange(900, 1500) + 10_000)
    back = annvq.load(path)
    assert back.ntotal == 1500
    np.testing.assert_array_equal(back.search(xq, 10)[1], ref.search(xq, 10)[1])
    with pytest.raises(annvq.DuplicateIdError):
        annvq.append(path, x[:1], ids=[5])
    with pytest.raises(annvq.DimensionError):
        annvq.append(path, x[:1, :3])
    assert annvq.load(path).ntotal == 1500


def test_interrupted_append_is_ignored(built, tmp_path):
    """Rows written past ntotal (a crash before the header update) are not read."""
    x, xq, idxs = built
    path = tmp_path / "c.h5"
    idxs["PQ4x8"].save(path)
    with h5py.File(path, "r+") as f:
        for name in f["columns"]:
            ds = f["columns"][name]
            ds.resize(ds.shape[0] + 7, axis=0)
    back = annvq.load(path)
    assert back.ntotal == 1500
    np.testing.assert_array_equal(back.search(xq, 5)[1], idxs["PQ4x8"].search(xq, 5)[1])


def test_foreign_truncated_and_newer_files(built, tmp_path):
    _, _, idxs = built
    with pytest.raises(FileNotFoundError):
        annvq.load(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(FormatError, match="not a readable HDF5"):
        annvq.load(tmp_path / "text.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["train"] = np.zeros((3, 3))
    with pytest.raises(FormatError, match="not an annvq index"):
        annvq.load(tmp_path / "foreign.h5")
    good = tmp_path / "good.h5"
    idxs["PQ4x8"].save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        annvq.load(tmp_path / "trunc.h5")
    newer = tmp_path / "newer.h5"
    idxs["PQ4x8"].save(newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(FormatError, match="format version"):
        annvq.load(newer)
    short = tmp_path / "short.h5"
    idxs["PQ4x8"].save(short)
    with h5py.File(short, "r+") as f:
        f.attrs["ntotal"] = 10**6
    with pytest.raises(FormatError, match="truncated"):
        annvq.load(short)


def test_corrupted_codes_detected(built, tmp_path):
    """A flipped byte inside stored codes fails the HDF5 checksum instead of returning wrong results."""
    _, _, idxs = built
    path = tmp_path / "flip.h5"
    idxs["PQ4x8"].save(path)
    with h5py.File(path, "r") as f:
        offset = f["columns"]["codes"].id.get_chunk_info(0).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError):
        annvq.load(path)


def test_failed_save_keeps_previous_file(built, tmp_path, monkeypatch):
    _, xq, idxs = built
    path = tmp_path / "keep.h5"
    idxs["PQ4x8"].save(path)
    before = path.read_bytes()

    def boom(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(idxs["SQ8"]), "_columns", boom)
    with pytest.raises(RuntimeError):
        idxs["SQ8"].save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.h5"]
