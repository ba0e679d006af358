"""Write-ahead log format, torn-tail handling and in-process store recovery (no HTTP)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi")

from annvq.errors import FormatError  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from server.store import IdSet, Store  # noqa: E402
from server.wal import MAGIC, OP_ADD, OP_DELETE, LogReader, Record, WriteAheadLog  # noqa: E402

D = 8


def _add(lsn: int, n: int = 3, start: int = 0) -> Record:
    x = np.random.default_rng(lsn).standard_normal((n, D)).astype(np.float32)
    return Record(OP_ADD, lsn, np.arange(start, start + n, dtype=np.int64), x)


def _same(a: Record, b: Record) -> bool:
    same_vec = (a.vectors is None and b.vectors is None) or np.array_equal(a.vectors, b.vectors)
    return a.op == b.op and a.lsn == b.lsn and np.array_equal(a.ids, b.ids) and same_vec


def test_records_round_trip(tmp_path):
    recs = [_add(1), Record(OP_DELETE, 2, np.array([1, 2], np.int64)), _add(3, n=1, start=2**62)]
    wal = WriteAheadLog.create(tmp_path / "w.log")
    for r in recs:
        wal.append(r)
    wal.close()
    reader = LogReader(tmp_path / "w.log")
    got = list(reader)
    assert len(got) == 3 and all(_same(a, b) for a, b in zip(got, recs))
    assert not reader.torn and reader.valid_end == (tmp_path / "w.log").stat().st_size


def test_every_torn_tail_is_cut_and_appending_continues(tmp_path):
    path = tmp_path / "w.log"
    wal = WriteAheadLog.create(path)
    wal.append(_add(1))
    wal.append(_add(2))
    good = wal.size
    wal.append(_add(3))
    wal.close()
    full = path.read_bytes()
    for cut in range(good, len(full)):  # every length a crash can leave of the last record
        path.write_bytes(full[:cut])
        reader = LogReader(path)
        assert [r.lsn for r in reader] == [1, 2]
        assert reader.valid_end == good and reader.torn == (cut > good)
        wal = WriteAheadLog.open(path, reader.valid_end)
        wal.append(_add(3))
        wal.close()
        assert path.read_bytes() == full


def test_checksum_mismatch_ends_the_log(tmp_path):
    path = tmp_path / "w.log"
    wal = WriteAheadLog.create(path)
    for lsn in (1, 2, 3):
        wal.append(_add(lsn))
    wal.close()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # one bit of the last record's vectors
    path.write_bytes(bytes(data))
    reader = LogReader(path)
    assert [r.lsn for r in reader] == [1, 2] and reader.torn


def test_short_header_and_foreign_files(tmp_path):
    path = tmp_path / "w.log"
    path.write_bytes(MAGIC[:3])
    reader = LogReader(path)
    assert list(reader) == [] and reader.valid_end == 0
    wal = WriteAheadLog.open(path, 0)  # rewritten as an empty log
    wal.append(_add(1))
    wal.close()
    assert [r.lsn for r in LogReader(path)] == [1]
    path.write_bytes(b"PK\x03\x04 not a log at all")
    with pytest.raises(FormatError):
        list(LogReader(path))


def test_id_set_matches_a_python_set():
    rng = np.random.default_rng(0)
    ids, ref = IdSet(), set()
    for _ in range(200):
        if ref and rng.random() < 0.3:
            drop = rng.choice(sorted(ref), size=min(len(ref), 5), replace=False)
            ids.remove(drop)
            ref -= set(drop.tolist())
        else:
            new = np.setdiff1d(rng.integers(0, 500, 7), list(ref))
            ids.add(new)
            ref |= set(new.tolist())
        probe = rng.integers(0, 520, 30)
        assert ids.contains(probe).tolist() == [int(p) in ref for p in probe]
        assert ids.next_id() == (max(ref) + 1 if ref else 0)


def _state(store: Store, name: str):
    st = store.get(name)
    ids = np.sort(st.ids.sorted)
    x, exact = store.retrieve(name, ids)
    return st.index.is_trained, ids.tolist(), x, exact


def _crash(store: Store) -> None:
    """Stop the background thread only: no checkpoint, logs left as a killed process leaves them."""
    store._stop.set()
    store._wake.set()
    store._checkpointer.join()


@pytest.mark.parametrize("train", [False, True])
def test_store_recovers_log_after_crash(tmp_path, train):
    cfg = ServerConfig(data_dir=tmp_path, checkpoint_ops=10**6, checkpoint_seconds=3600)
    x = np.random.default_rng(1).standard_normal((60, D)).astype(np.float32)
    s = Store(cfg)
    s.open()
    s.create("a", D, "SQ8", "l2")
    s.add("a", x[:20])
    if train:
        s.start_training("a").future.result(30)
    st = s.get("a")
    for i in range(20, 60, 5):
        s.add("a", x[i:i + 5], np.arange(100 + i, 105 + i))
        if i == 35:
            with st.write_mutex:
                s._checkpoint(st)
    s.delete("a", [3, 125])
    before = _state(s, "a")
    assert 0 < st.ckpt_lsn < st.lsn  # some records exist only in the log
    _crash(s)
    wal = st.wal.path
    with open(wal, "ab") as f:  # the start of a record that never finished
        f.write(b"\x40\x00\x00\x00\x01\x09")
    s2 = Store(cfg)
    s2.open()
    after = _state(s2, "a")
    assert after[0] == before[0] == train and after[1] == before[1] and after[3] == before[3]
    assert np.array_equal(after[2], before[2])
    assert s2.get("a").lsn == st.lsn
    s2.close()


def test_stale_log_after_checkpoint_is_skipped(tmp_path):
    """A crash after a checkpoint but before the old log's deletion reached disk replays nothing twice."""
    cfg = ServerConfig(data_dir=tmp_path, checkpoint_ops=10**6, checkpoint_seconds=3600)
    x = np.random.default_rng(2).standard_normal((30, D)).astype(np.float32)
    s = Store(cfg)
    s.open()
    s.create("a", D, "SQ8", "l2")
    s.add("a", x[:10])
    st = s.get("a")
    old_log = tmp_path / "saved.log"
    shutil.copy(st.wal.path, old_log)
    old_name = st.wal.path.name
    with st.write_mutex:
        s._checkpoint(st)
    s.add("a", x[10:])
    before = _state(s, "a")
    _crash(s)
    shutil.copy(old_log, tmp_path / "a" / old_name)
    s2 = Store(cfg)
    s2.open()
    assert _state(s2, "a")[1] == before[1] == list(range(30))
    s2.close()


def test_gap_in_log_refuses_to_start(tmp_path):
    cfg = ServerConfig(data_dir=tmp_path)
    s = Store(cfg)
    s.open()
    s.create("a", D, "SQ8", "l2")
    path = s.get("a").wal.path
    _crash(s)
    wal = WriteAheadLog.open(path, path.stat().st_size)
    wal.append(_add(1))
    wal.append(_add(3, start=10))  # lsn 2 is missing
    wal.close()
    with pytest.raises(FormatError, match="gap"):
        Store(cfg).open()
