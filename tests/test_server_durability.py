"""Durability in process: the write-ahead log (torn tail vs damage in the middle), recovery, per-index
isolation of damage, repair, checkpoint backoff, and retraining that keeps exact vectors."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
from annvq_server.app import create_app
from annvq_server.config import ServerConfig
from annvq_server.service import IndexService
from fastapi.testclient import TestClient

from annvq.errors import FormatError
from annvq.storage.wal import HEADER_SIZE, OP_ADD, OP_DELETE, LogReader, Record, WriteAheadLog

D = 8
QUIET = dict(checkpoint_ops=10**6, checkpoint_seconds=3600, compaction_seconds=3600)


def _add(lsn: int, n: int = 3, start: int = 0) -> Record:
    x = np.random.default_rng(lsn).standard_normal((n, D)).astype(np.float32)
    return Record(OP_ADD, lsn, np.arange(start, start + n, dtype=np.int64), x)


def _same(a: Record, b: Record) -> bool:
    same_vec = (a.vectors is None and b.vectors is None) or np.array_equal(a.vectors, b.vectors)
    return a.op == b.op and a.lsn == b.lsn and np.array_equal(a.ids, b.ids) and same_vec


def _log(path, records, first=1):
    wal = WriteAheadLog.create(path, first)
    offsets = []
    for r in records:
        offsets.append(wal.size)
        wal.append(r)
    wal.close()
    return offsets


# --- the log format ----------------------------------------------------------------------------------
def test_records_round_trip(tmp_path):
    recs = [_add(1), Record(OP_DELETE, 2, np.array([1, 2], np.int64)), _add(3, n=1, start=2**62)]
    _log(tmp_path / "w.log", recs)
    reader = LogReader(tmp_path / "w.log")
    got = list(reader)
    assert len(got) == 3 and all(_same(a, b) for a, b in zip(got, recs))
    assert reader.damage is None and reader.valid_end == (tmp_path / "w.log").stat().st_size


def test_every_torn_tail_is_cut_and_appending_continues(tmp_path):
    path = tmp_path / "w.log"
    offsets = _log(path, [_add(1), _add(2), _add(3)])
    full = path.read_bytes()
    good = offsets[2]
    for cut in range(good, len(full)):  # every length a crash can leave of the last record
        path.write_bytes(full[:cut])
        reader = LogReader(path)
        assert [r.lsn for r in reader] == [1, 2]
        assert reader.valid_end == good and (reader.damage is None) == (cut == good)
        assert reader.damage is None or reader.damage.torn
        wal = WriteAheadLog.reopen(reader)
        wal.append(_add(3))
        wal.close()
        assert [r.lsn for r in LogReader(path)] == [1, 2, 3]


@pytest.mark.parametrize("where", ["length", "crc", "payload", "lsn"])
def test_damage_before_valid_records_is_corruption_not_a_torn_tail(tmp_path, where):
    """One bad byte in record 3 of 6: the reader stops there, reports corruption (valid records follow),
    and refuses to reopen the log for appending (which would cut it)."""
    path = tmp_path / "w.log"
    offsets = _log(path, [_add(i, start=10 * i) for i in range(1, 7)])
    data = bytearray(path.read_bytes())
    at = offsets[2] + {"length": 5, "crc": 9, "payload": 40, "lsn": 14}[where]
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    reader = LogReader(path)
    assert [r.lsn for r in reader] == [1, 2]
    assert reader.damage is not None and not reader.damage.torn
    assert reader.damage.offset == offsets[2] and reader.damage.next_valid == offsets[3]
    assert f"byte {offsets[2]}" in str(reader.damage)
    with pytest.raises(FormatError, match="damaged record"):
        WriteAheadLog.reopen(reader)
    assert path.read_bytes() == bytes(data)  # nothing cut
    records, bad = reader.salvage()
    assert [r.lsn for r in records] == [1, 2, 4, 5, 6] and bad == [(offsets[2], offsets[3])]


def test_reordered_or_foreign_records_break_the_chain(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    offs_a = _log(a, [_add(i) for i in range(1, 5)])
    offs_b = _log(b, [_add(i) for i in range(1, 5)])
    da, db = a.read_bytes(), b.read_bytes()
    # record 2 of another log (same lsn, same content, other salt) swapped in
    swapped = da[: offs_a[1]] + db[offs_b[1] : offs_b[2]] + da[offs_a[2]:]
    a.write_bytes(swapped)
    reader = LogReader(a)
    assert [r.lsn for r in reader] == [1] and "chain" in reader.damage.reason and not reader.damage.torn
    # records 2 and 3 swapped
    a.write_bytes(da[: offs_a[1]] + da[offs_a[2] : offs_a[3]] + da[offs_a[1] : offs_a[2]] + da[offs_a[3]:])
    reader = LogReader(a)
    assert [r.lsn for r in reader] == [1] and "sequence number 3 where 2" in reader.damage.reason


def test_header_checks(tmp_path):
    path = tmp_path / "w.log"
    _log(path, [_add(1)])
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="header"):
        LogReader(path)
    path.write_bytes(b"PK\x03\x04 not a log at all" + bytes(40))
    with pytest.raises(FormatError, match="magic"):
        LogReader(path)
    path.write_bytes(data[: HEADER_SIZE - 3])  # a crash while creating it
    reader = LogReader(path)
    assert not reader.header_ok and list(reader) == []


# --- the service ---------------------------------------------------------------------------------------
def _vectors(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


def _app(tmp_path, **kw):
    return TestClient(create_app(ServerConfig(data_dir=tmp_path, **{**QUIET, **kw})))


def _fill(c, name, spec="SQ8", n=50, train=True):
    assert c.put(f"/indexes/{name}", json={"dim": D, "spec": spec}).status_code == 201
    x = _vectors(n, seed=len(name))
    if train:
        assert c.post(f"/indexes/{name}/train?wait=true",
                      json={"vectors": (_vectors(300, 9) * 3).tolist()}).status_code == 200
    for s in range(0, n, 10):  # one logged operation per batch
        assert c.post(f"/indexes/{name}/vectors", json={"vectors": x[s : s + 10].tolist(),
                                                        "ids": list(range(s, s + 10))}).status_code == 200
    return x


def _crashed_service(tmp_path, fill):
    """Run ``fill(service)`` on an in-process service, then drop it without a shutdown checkpoint, as a
    killed process would leave its files."""
    svc = IndexService(ServerConfig(data_dir=tmp_path, **QUIET))
    svc.open()
    fill(svc)


def test_damage_in_the_middle_of_a_log_isolates_that_index(tmp_path):
    x = _vectors(50)

    def fill(svc):
        for name in ("bad", "good"):
            svc.create(name, D, "SQ8", "l2")
            svc.start_training(name, _vectors(300, 9) * 3).future.result(60)
            for i in range(5):  # five logged operations after the training checkpoint
                svc.add(name, x[10 * i : 10 * i + 10], np.arange(10 * i, 10 * i + 10))

    _crashed_service(tmp_path, fill)
    wal = next((tmp_path / "bad").glob("wal-*.log"))
    reader = LogReader(wal)
    records = list(reader)
    assert len(records) == 5 and reader.damage is None
    offsets = [HEADER_SIZE]
    for r in records[:-1]:
        offsets.append(offsets[-1] + 12 + len(r.payload(0)))
    data = bytearray(wal.read_bytes())
    data[offsets[1] + 30] ^= 0x04  # one byte in record 2 of 5
    wal.write_bytes(bytes(data))
    with _app(tmp_path) as c:
        listed = {i["name"]: i for i in c.get("/indexes").json()["indexes"]}
        assert listed["bad"]["state"] == "damaged" and f"byte {offsets[1]}" in listed["bad"]["damage"]
        assert wal.name in listed["bad"]["damage"] and listed["good"]["state"] == "ready"
        assert listed["good"]["ntotal"] == 50
        for r in (c.post("/indexes/bad/search", json={"vectors": x[:1].tolist()}),
                  c.post("/indexes/bad/vectors", json={"vectors": x[:1].tolist()}),
                  c.get("/indexes/bad/vectors/3")):
            assert r.status_code == 409 and r.json()["error"]["code"] == "index_damaged"
            assert f"byte {offsets[1]}" in r.json()["error"]["message"]
        assert c.post("/indexes/good/search", json={"vectors": x[:3].tolist(), "k": 1}).json()["ids"] == [[0], [1], [2]]
        ready = c.get("/ready").json()
        assert ready["status"] == "degraded" and "bad" in ready["problems"]
        assert wal.read_bytes() == bytes(data)  # the damaged log was neither cut nor rewritten
        report = c.post("/indexes/bad/repair").json()
        assert report["replayed"] == 4 and report["lost_lsns"] == [[records[1].lsn, records[1].lsn]]
        assert (tmp_path / "bad" / report["backup"].split("/")[-1] / wal.name).read_bytes() == bytes(data)
        info = c.get("/indexes/bad").json()
        assert info["state"] == "ready" and info["ntotal"] == 40
        assert c.get("/indexes/bad/vectors/15").status_code == 404  # the lost record's ids
        assert c.get("/indexes/bad/vectors/25").status_code == 200  # a record after the damage, salvaged
        assert c.post("/indexes/good/repair").status_code == 409  # nothing to repair
    with _app(tmp_path) as c:
        assert c.get("/indexes/bad").json()["state"] == "ready" and c.get("/indexes/bad").json()["ntotal"] == 40


def test_damage_in_an_older_log_and_gaps_are_corruption(tmp_path):
    def fill(svc):
        svc.create("a", D, "SQ8", "l2")
        svc.add("a", _vectors(5), np.arange(5))

    _crashed_service(tmp_path, fill)
    wal = next((tmp_path / "a").glob("wal-*.log"))
    reader = LogReader(wal)
    list(reader)
    w = WriteAheadLog.reopen(reader)
    w.append(_add(reader.last_lsn + 1, start=100))
    w.close()
    nxt = tmp_path / "a" / f"wal-{reader.last_lsn + 3:020d}.log"  # a later log that skips an operation
    _log(nxt, [_add(reader.last_lsn + 3, start=200)], first=reader.last_lsn + 3)
    with _app(tmp_path) as c:
        info = c.get("/indexes/a").json()
        assert info["state"] == "damaged" and "missing" in info["damage"]


def test_torn_tail_is_cut_and_the_index_serves(tmp_path):
    with _app(tmp_path) as c:
        _fill(c, "a", n=20)
    wal = next((tmp_path / "a").glob("wal-*.log"))
    assert LogReader(wal).size == HEADER_SIZE  # the shutdown checkpoint left an empty log
    with open(wal, "ab") as f:  # the start of a record that never finished
        f.write(b"ANQR\x40\x00\x00\x00\x01\x09")
    with _app(tmp_path) as c:
        info = c.get("/indexes/a").json()
        assert info["state"] == "ready" and info["ntotal"] == 20
        assert c.post("/indexes/a/vectors", json={"vectors": _vectors(1).tolist()}).status_code == 200


def test_damaged_files_at_rest_isolate_the_index(tmp_path):
    """A flipped byte in a segment file, meta.json or the manifest: that index is damaged, the others serve."""
    with _app(tmp_path) as c:
        for name in ("seg", "meta", "manifest", "raw", "ok"):
            _fill(c, name, train=name != "raw")
    seg = next((tmp_path / "seg" / "index").glob("seg-*.h5"))
    raw = next((tmp_path / "raw" / "index").glob("seg-*.h5"))
    flips = {seg: _offset(seg, "codes") + 3, tmp_path / "meta" / "meta.json": 20,
             tmp_path / "manifest" / "index" / "manifest.json": 60, raw: _offset(raw, "vectors") + 4 * (3 * D + 1)}
    for path, at in flips.items():
        data = bytearray(path.read_bytes())
        data[at] ^= 0x01
        path.write_bytes(bytes(data))
    with _app(tmp_path) as c:
        states = {i["name"]: i["state"] for i in c.get("/indexes").json()["indexes"]}
        # the raw vectors are read on demand: the index loads, and the damage shows on the first read
        assert states == {"seg": "damaged", "meta": "damaged", "manifest": "damaged", "raw": "ready", "ok": "ready"}
        r = c.get("/indexes/raw/vectors/3")  # never a wrong value marked exact
        assert r.status_code == 409 and "vectors" in r.json()["error"]["message"]
        assert c.get("/indexes/raw").json()["state"] == "damaged"
        assert c.get("/indexes/raw/vectors/30").status_code == 409
        assert c.request("DELETE", "/indexes/seg").status_code == 200  # a damaged index can be dropped
        assert "seg" not in {i["name"] for i in c.get("/indexes").json()["indexes"]}


def _offset(path, dataset):
    import h5py

    with h5py.File(path, "r") as f:
        ds = f[dataset]
        return ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()


def test_failing_checkpoints_back_off_and_are_reported(tmp_path, monkeypatch):
    calls = []

    def failing_save(index, path, metadata=None):
        calls.append(1)
        raise OSError(28, "No space left on device")

    with _app(tmp_path, checkpoint_ops=1, checkpoint_seconds=0.05) as c:
        _fill(c, "a", n=10)
        monkeypatch.setattr("annvq_server.durability.annvq.save", failing_save)
        assert c.post("/indexes/a/vectors", json={"vectors": _vectors(2).tolist()}).status_code == 200  # logged
        import time

        time.sleep(3.5)
        info = c.get("/indexes/a").json()
        assert "No space left" in info["checkpoint_error"]
        assert 1 <= len(calls) <= 3  # 2 s then 4 s between tries, not one per 0.05 s tick
        ready = c.get("/ready").json()
        assert ready["status"] == "degraded" and "checkpoint failing" in ready["problems"]["a"]
        monkeypatch.undo()
        assert c.get("/indexes/a").json()["ntotal"] == 12


def test_retraining_a_refine_index_keeps_its_exact_vectors(tmp_path):
    """Retraining re-encodes from the exact vectors, which stay exact: a stored vector is still at distance 0
    from itself after re-ranking, and the job says how it re-encoded."""
    x = _vectors(400, 3)
    with _app(tmp_path) as c:
        c.put("/indexes/r", json={"dim": D, "spec": "IVF4,PQ2x4,Refine"})
        c.post("/indexes/r/vectors", json={"vectors": x.tolist()})
        assert c.post("/indexes/r/train?wait=true").json()["reencoded_from"] == "exact"
        q = {"vectors": x[:20].tolist(), "k": 1, "nprobe": 4}
        before = c.post("/indexes/r/search", json=q).json()
        job = c.post("/indexes/r/train?wait=true", json={"vectors": (x * 1.1).tolist()}).json()
        assert job["status"] == "succeeded" and job["reencoded_from"] == "exact"
        after = c.post("/indexes/r/search", json=q).json()
        assert after["ids"] == before["ids"] == [[i] for i in range(20)]
        assert max(d[0] for d in after["distances"]) == 0.0
        got = c.post("/indexes/r/vectors/retrieve", json={"ids": [5, 6]}).json()
        assert got["exact"] is True and np.array_equal(np.float32(got["vectors"]), x[[5, 6]])
        c.put("/indexes/p", json={"dim": D, "spec": "IVF4,PQ2x4"})
        c.post("/indexes/p/train?wait=true", json={"vectors": x.tolist()})
        c.post("/indexes/p/vectors", json={"vectors": x[:50].tolist()})
        job = c.post("/indexes/p/train?wait=true", json={"vectors": (x * 1.1).tolist()}).json()
        assert job["reencoded_from"] == "reconstructed"  # codes only: said in the job result


def test_repair_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from annvq.cli import app

    def fill(svc):
        svc.create("a", D, "SQ8", "l2")
        for i in range(3):
            svc.add("a", _vectors(4, i), np.arange(4 * i, 4 * i + 4))

    _crashed_service(tmp_path, fill)
    wal = next((tmp_path / "a").glob("wal-*.log"))
    data = bytearray(wal.read_bytes())
    data[HEADER_SIZE + 20] ^= 0x01  # the first record
    wal.write_bytes(bytes(data))
    r = CliRunner().invoke(app, ["repair", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    report = __import__("json").loads(r.stdout)
    assert report["replayed"] == 2 and report["lost_lsns"] == [[1, 1]]
    with _app(tmp_path) as c:
        assert c.get("/indexes/a").json()["ntotal"] == 8
    r = CliRunner().invoke(app, ["repair", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "no index here" in r.stderr
