"""Persistence: index directories (round trips, O(new data) commits, appends, compaction), failures that
leave the stored index as it was, damaged or foreign files refused, and the single-file format of 0.1."""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import annvq
from annvq import FormatError
from annvq.storage import h5 as h5_module

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def built():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1500, 16)).astype(np.float32)
    xq = rng.normal(size=(10, 16)).astype(np.float32)
    out = {}
    for spec in ["PQ4x8", "OPQ4,PQ4x8", "SQ8", "PQ2x10", "IVF8,PQ4x8,Refine", "RQ2x6_N8"]:
        idx = annvq.index_factory(16, spec, metric="l2")
        idx.train(x)
        idx.add(x, ids=np.arange(len(x)) + 100)
        out[spec] = idx
    return x, xq, out


def _same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("spec", ["PQ4x8", "OPQ4,PQ4x8", "SQ8", "PQ2x10", "IVF8,PQ4x8,Refine", "RQ2x6_N8"])
def test_round_trip_identical_results(built, tmp_path, spec):
    x, xq, idxs = built
    idx = idxs[spec]
    path = tmp_path / "i"
    idx.save(path)
    back = annvq.load(path)
    assert type(back) is type(idx) and back.ntotal == idx.ntotal and back.spec == spec
    assert back.metric == idx.metric and back.code_size == idx.code_size
    assert back.fingerprint() == idx.fingerprint()
    _same(idx.search(xq, 10), back.search(xq, 10))
    assert not [p for p in path.iterdir() if ".tmp-" in p.name]  # no temporary left behind


def test_round_trip_after_remove(built, tmp_path):
    x, xq, _ = built
    idx = annvq.index_factory(16, "PQ4x8")
    idx.train(x)
    idx.add(x, ids=np.arange(len(x)) * 3)
    idx.remove(np.arange(0, 300) * 3)
    idx.save(tmp_path / "r")
    back = annvq.load(tmp_path / "r")
    np.testing.assert_array_equal(np.sort(back.ids), np.sort(idx.ids))
    _same(back.search(xq, 5), idx.search(xq, 5))


def test_commit_writes_only_what_changed(built, tmp_path):
    """Saving to the index's own directory writes the new segment, the changed tombstones and the
    manifest: O(new data), not a rewrite of what is stored."""
    x, xq, _ = built
    rng = np.random.default_rng(0)
    big = rng.normal(size=(20_000, 16)).astype(np.float32)
    idx = annvq.index_factory(16, "IVF8,PQ4x8,Refine")
    idx.train(x)
    idx.add(big)
    first = idx.save(tmp_path / "c")
    idx.add(big[:100] + 1)
    idx.remove(np.arange(10))
    second = idx.save(tmp_path / "c")
    assert second.files == 3  # the sealed new rows, one tombstone file, the manifest
    assert second.bytes < 0.05 * first.bytes
    back = annvq.load(tmp_path / "c")
    assert back.ntotal == 20_090 and len(back.segments) == 2
    _same(back.search(xq, 10, nprobe=8), idx.search(xq, 10, nprobe=8))
    third = idx.save(tmp_path / "c")  # nothing changed: only the manifest
    assert third.files == 1


def test_append_is_batch_sized_and_checks_ids(built, tmp_path, monkeypatch):
    x, xq, _ = built
    idx = annvq.index_factory(16, "PQ4x8")
    idx.train(x)
    idx.add(x[:500])
    path = tmp_path / "a"
    idx.save(path)
    ref = annvq.load(path)
    new_ids = annvq.append(path, x[500:900])
    assert list(new_ids[:2]) == [500, 501]
    opened = []
    real = h5_module.StoredFile.__init__

    def counting(self, p, kind):
        opened.append((Path(p).name, kind))
        real(self, p, kind)

    monkeypatch.setattr(h5_module.StoredFile, "__init__", counting)
    annvq.append(path, x[900:], ids=np.arange(900, 1500) + 10_000)
    assert [k for _, k in opened] == ["annvq-model"]  # no stored segment was read: ids do not overlap
    monkeypatch.undo()
    ref.add(x[500:900])
    ref.add(x[900:], ids=np.arange(900, 1500) + 10_000)
    back = annvq.load(path)
    assert back.ntotal == 1500
    _same(back.search(xq, 10), ref.search(xq, 10))
    manifest = (path / "manifest.json").read_bytes()
    with pytest.raises(annvq.DuplicateIdError):
        annvq.append(path, x[:1], ids=[5])
    with pytest.raises(annvq.DimensionError):
        annvq.append(path, x[:1, :3])
    assert (path / "manifest.json").read_bytes() == manifest
    assert annvq.load(path).ntotal == 1500


def test_failed_commit_keeps_previous_state(built, tmp_path, monkeypatch):
    x, xq, idxs = built
    path = tmp_path / "keep"
    idx = annvq.load(_copy_of(idxs["PQ4x8"], tmp_path / "src"))
    idx.save(path)
    before = sorted(p.name for p in path.iterdir())
    idx.add(x[:50] * 2)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("annvq.storage.directory.write_file", boom)
    with pytest.raises(OSError):
        idx.save(path)
    monkeypatch.undo()
    assert sorted(p.name for p in path.iterdir()) == before
    assert annvq.load(path).ntotal == 1500
    idx.save(path)  # the next commit succeeds and writes what the failed one could not
    assert annvq.load(path).ntotal == 1550


def _copy_of(idx, path):
    idx.save(path)
    return path


def test_compact_on_disk(built, tmp_path):
    x, xq, _ = built
    idx = annvq.index_factory(16, "IVF8,PQ4x8,Refine")
    idx.train(x)
    idx.save(tmp_path / "m")
    for s in range(0, 1500, 300):
        annvq.append(tmp_path / "m", x[s : s + 300])
    annvq.append(tmp_path / "m", x[:10] * 1.5, ids=np.arange(5000, 5010))
    stored = annvq.load(tmp_path / "m")
    assert len(stored.segments) == 6
    stored.remove(np.arange(0, 1500, 7))
    stored.save(tmp_path / "m")
    before = stored.search(xq, 10, nprobe=8)
    annvq.compact(tmp_path / "m")
    back = annvq.load(tmp_path / "m")
    assert len(back.segments) == 1 and back.segments[0].ndeleted == 0 and back.ntotal == stored.ntotal
    _same(back.search(xq, 10, nprobe=8), before)
    assert len([p for p in (tmp_path / "m").iterdir() if p.name.startswith("seg-")]) == 1


def test_missing_foreign_and_damaged(built, tmp_path):
    _, _, idxs = built
    with pytest.raises(FormatError, match="no index here"):
        annvq.load(tmp_path / "missing")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(FormatError, match="not an annvq index"):
        annvq.load(tmp_path / "text.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["train"] = np.zeros((3, 3))
    with pytest.raises(FormatError, match="not an annvq index file"):
        annvq.load(tmp_path / "foreign.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no manifest.json"):
        annvq.load(tmp_path / "empty")
    good = tmp_path / "good"
    idxs["IVF8,PQ4x8,Refine"].save(good)
    seg = next(p for p in good.iterdir() if p.name.startswith("seg-"))
    shutil.copytree(good, tmp_path / "gone")
    (tmp_path / "gone" / seg.name).unlink()
    with pytest.raises(FormatError, match=f"{seg.name}: missing"):
        annvq.load(tmp_path / "gone")
    shutil.copytree(good, tmp_path / "flip")
    with h5py.File(tmp_path / "flip" / seg.name, "r") as f:
        offset = f["codes"].id.get_offset()
    raw = bytearray((tmp_path / "flip" / seg.name).read_bytes())
    raw[offset + 10] ^= 0x01
    (tmp_path / "flip" / seg.name).write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=f"{seg.name}: codes: checksum mismatch"):
        annvq.load(tmp_path / "flip")
    shutil.copytree(good, tmp_path / "newer")
    doc = json.loads((tmp_path / "newer" / "manifest.json").read_text())
    doc["body"]["format_version"] = 99
    doc["crc32"] = h5_module.crc(h5_module.dumps(doc["body"]))
    (tmp_path / "newer" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="format version 99"):
        annvq.load(tmp_path / "newer")
    with pytest.raises(annvq.InvalidInputError, match="non-empty directory"):
        idxs["PQ4x8"].save(tmp_path / "empty" / "..")


@pytest.mark.parametrize("name", ["v1_ivf_pq_refine", "v1_flat_rq", "v1_flat_sq_ip"])
def test_single_file_format_still_loads_and_migrates(tmp_path, name):
    """Files written by annvq 0.1 (checked in, small) load with the results they gave then."""
    expected = json.loads((DATA / "expected.json").read_text())[name]
    xq = np.load(DATA / "queries.npy")
    kw = {"nprobe": 4} if "IVF" in expected["spec"] else {}
    old = annvq.load(DATA / f"{name}.h5")
    D, I = old.search(xq, 5, **kw)
    np.testing.assert_array_equal(I, expected["I"])
    np.testing.assert_allclose(D, expected["D"], rtol=1e-6)
    np.testing.assert_allclose(old.reconstruct(1100), expected["recon_1100"], rtol=1e-6)
    with pytest.raises(annvq.InvalidInputError, match="migrate"):
        annvq.append(DATA / f"{name}.h5", xq)
    annvq.migrate(DATA / f"{name}.h5", tmp_path / "new")
    new = annvq.load(tmp_path / "new")
    _same(new.search(xq, 5, **kw), (D, I))
    with pytest.raises(annvq.InvalidInputError, match="exists"):
        annvq.migrate(DATA / f"{name}.h5", tmp_path / "new")
