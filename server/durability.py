"""Durability of one index: its files, the write-ahead log, checkpoints, recovery and repair.

Layout of ``data_dir/<name>/``::

    meta.json        dim, spec and metric, written once at creation, with a CRC32
    index/           the annvq index directory (annvq.storage); its manifest records the log position
                     (``lsn``) that its segments cover
    wal-<lsn>.log    write-ahead log (see server.wal) holding the operations from lsn on

An add or delete is checked against the current state, appended to the log and synced, applied in
memory, and only then acknowledged. A checkpoint seals the in-memory rows into a segment file and
writes changed tombstones (O(new data), see annvq.storage), then starts a fresh log and deletes the
older ones. Recovery loads the index directory and replays the log after its position. A torn last
record (a crash mid-append) is cut; any other damage marks the index damaged, with the file and the
byte offset, and nothing is cut or rewritten until an operator runs :func:`repair`.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import annvq
from annvq import IndexSpec
from annvq.errors import AnnvqError, FormatError
from annvq.index import Encoded
from annvq.storage import atomic_path, crc, dumps
from annvq.storage.wal import OP_ADD, LogReader, Record, WriteAheadLog

from .state import IndexState, Meta

log = logging.getLogger("annvq.server")

META = "meta.json"
INDEX_DIR = "index"
WAL_RE = re.compile(r"^wal-(\d{20})\.log$")


def wal_name(first_lsn: int) -> str:
    return f"wal-{first_lsn:020d}.log"


# --- meta.json ----------------------------------------------------------------------------------
def write_meta(path: Path, meta: Meta) -> None:
    body = meta.to_dict()
    with atomic_path(path / META) as tmp:
        tmp.write_text(json.dumps({"body": body, "crc32": crc(dumps(body))}))


def read_meta(path: Path) -> Meta:
    try:
        doc = json.loads((path / META).read_bytes())
        body = doc["body"]
        if crc(dumps(body)) != doc["crc32"]:
            raise ValueError("checksum mismatch (the file is damaged)")
        dim, metric = body["dim"], body["metric"]
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1 or metric not in ("l2", "ip", "cosine"):
            raise ValueError(f"bad dim {dim!r} or metric {metric!r}")
        return Meta(dim, IndexSpec.validated(**body["spec"]), metric)
    except (OSError, ValueError, KeyError, TypeError, AnnvqError) as exc:
        raise FormatError(f"{path / META}: unreadable: {exc}") from None


# --- applying logged operations -----------------------------------------------------------------
def apply(st: IndexState, rec: Record, encoded: Encoded | None = None) -> None:
    """Apply a logged record to the index (under the write lock) and to a running training's delta.

    ``encoded`` is the record's vectors already encoded (outside the lock) by :meth:`BaseIndex.encode`.
    """
    index = st.usable()
    with st.rw.write():
        if rec.op == OP_ADD:
            index.add(rec.vectors if encoded is None else encoded, rec.ids)
        else:
            index.remove(rec.ids)
    if st.delta is not None:
        st.delta.append((rec.op, rec.ids, rec.vectors))
    st.lsn = rec.lsn
    st.ops_since_ckpt += 1


# --- checkpoints ----------------------------------------------------------------------------------
def checkpoint(st: IndexState) -> annvq.storage.CommitStats:
    """Store the index's state at ``st.lsn``, start a fresh log and delete the older ones.

    Call with the write mutex held. Searches go on meanwhile: only sealing the growing segment takes
    the write lock; the files written are immutable segments, tombstones and a manifest.
    """
    index = st.usable()
    lsn = st.lsn
    with st.rw.write():
        index.seal()
    stats = annvq.save(index, st.path / INDEX_DIR, metadata={"lsn": lsn})
    new_wal = st.path / wal_name(lsn + 1)
    if st.wal is None or st.wal.path != new_wal:
        wal = WriteAheadLog.create(new_wal, lsn + 1)
        if st.wal is not None:
            st.wal.close()
        st.wal = wal
    for p in st.path.iterdir():
        if WAL_RE.match(p.name) and p != new_wal:
            p.unlink()
    st.ckpt_lsn, st.ops_since_ckpt, st.last_ckpt = lsn, 0, time.monotonic()
    st.checkpoint.succeeded()
    return stats


# --- creation, recovery, repair -----------------------------------------------------------------
def initialise(path: Path, meta: Meta) -> None:
    """Files of a new, empty index in directory ``path`` (which the caller renames into place)."""
    path.mkdir(parents=True)
    write_meta(path, meta)
    index = annvq.index_factory(meta.dim, meta.spec, meta.metric)
    annvq.save(index, path / INDEX_DIR, metadata={"lsn": 0})
    WriteAheadLog.create(path / wal_name(1), 1).close()


def _logs(path: Path) -> list[tuple[int, Path]]:
    return sorted((int(m.group(1)), p) for p in path.iterdir() if (m := WAL_RE.match(p.name)))


def recover(path: Path) -> IndexState:
    """The index stored at ``path``, its log replayed; a damaged index comes back marked damaged, untouched."""
    st = IndexState(path.name, path, None, None)
    try:
        st.meta = read_meta(path)
        st.index = annvq.load(path / INDEX_DIR)
        st.index.auto_compact = False  # the service merges in the background
        st.lsn = st.ckpt_lsn = _checkpoint_lsn(st.index)
        if st.index.d != st.meta.dim or st.index.metric != st.meta.metric:
            raise FormatError(f"{path / INDEX_DIR}: holds a d={st.index.d} {st.index.metric} index, {META} says "
                              f"d={st.meta.dim} {st.meta.metric}")
        replayed = _replay(st)
    except (FormatError, AnnvqError, OSError) as exc:
        st.index, st.damage = None, str(exc)
        if st.wal is not None:
            st.wal.close()
            st.wal = None
        log.error("index %r is damaged and stays offline until repaired or dropped: %s", st.name, exc)
        return st
    log.info("recovered %r: checkpoint lsn %d, %d logged operation(s) replayed, %d vectors", st.name,
             st.ckpt_lsn, replayed, st.index.ntotal)
    return st


def _checkpoint_lsn(index: annvq.BaseIndex) -> int:
    lsn = index.storage.metadata.get("lsn")
    if isinstance(lsn, bool) or not isinstance(lsn, int) or lsn < 0:
        raise FormatError(f"{index.storage.path}: manifest has no log position (lsn)")
    return lsn


def _replay(st: IndexState) -> int:
    logs = _logs(st.path)
    if not logs:
        raise FormatError(f"{st.path}: no write-ahead log")
    replayed = 0
    reader = LogReader(logs[0][1])
    for i, (first, wal_path) in enumerate(logs):
        reader = LogReader(wal_path)
        if reader.header_ok and first != reader.first_lsn:
            raise FormatError(f"{wal_path}: starts at record {reader.first_lsn}, its name says {first}")
        if reader.header_ok and reader.first_lsn > st.lsn + 1:
            raise FormatError(f"{wal_path}: starts at record {reader.first_lsn} but the index covers only up to "
                              f"{st.lsn}: operations {st.lsn + 1}..{reader.first_lsn - 1} are missing")
        for rec in reader:
            if rec.lsn <= st.lsn:
                continue
            try:
                apply(st, rec)
            except AnnvqError as exc:
                raise FormatError(f"{wal_path}: record {rec.lsn} does not apply to the stored index: {exc}") from None
            replayed += 1
        last = i == len(logs) - 1
        if reader.damage is not None and (not reader.damage.torn or not last):
            raise FormatError(str(reader.damage))
        if reader.damage is not None:
            log.warning("%s; cut %d bytes (an unacknowledged write)", reader.damage, reader.size - reader.valid_end)
    st.wal = WriteAheadLog.reopen(reader)
    return replayed


@dataclass
class RepairReport:
    """What :func:`repair` did: records kept and lost, and where the original files went."""

    index: str
    replayed: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # records salvaged but not applicable
    damaged_ranges: list[dict[str, Any]] = field(default_factory=list)  # unreadable bytes, per log
    lost_lsns: list[list[int]] = field(default_factory=list)  # sequence number ranges with no record
    backup: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "replayed": self.replayed, "skipped": self.skipped,
                "damaged_ranges": self.damaged_ranges, "lost_lsns": self.lost_lsns, "backup": self.backup}


def repair(path: Path) -> RepairReport:
    """Salvage a damaged index whose checkpoint is intact: apply every readable logged operation after
    it (before and after the damage), checkpoint, and keep the original logs in ``<path>/damaged-<time>/``.

    Operations that no longer apply (a delete of an id added by a lost record) are reported, not
    applied. A damaged checkpoint or meta.json cannot be salvaged from the log: FormatError says so.
    """
    index = annvq.load(path / INDEX_DIR)
    index.auto_compact = False
    st = IndexState(path.name, path, read_meta(path), index)
    st.lsn = st.ckpt_lsn = _checkpoint_lsn(index)
    report = RepairReport(st.name)
    logs = _logs(path)
    records = []
    for _, wal_path in logs:
        reader = LogReader(wal_path)
        got, bad = reader.salvage()
        records.extend(got)
        report.damaged_ranges += [{"file": wal_path.name, "start": a, "end": b} for a, b in bad]
    records.sort(key=lambda r: r.lsn)
    expect = st.lsn + 1
    for rec in records:
        if rec.lsn < expect:
            continue  # covered by the checkpoint, or a duplicate
        if rec.lsn > expect:
            report.lost_lsns.append([expect, rec.lsn - 1])
        try:
            apply(st, rec)
            report.replayed += 1
        except AnnvqError as exc:
            report.skipped.append({"lsn": rec.lsn, "op": "add" if rec.op == OP_ADD else "delete", "error": str(exc)})
            st.lsn = rec.lsn
        expect = rec.lsn + 1
    backup = path / f"damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    backup.mkdir()
    for _, wal_path in logs:
        shutil.copy2(wal_path, backup / wal_path.name)
    report.backup = str(backup)
    checkpoint(st)
    if st.wal is not None:
        st.wal.close()
    log.warning("repaired %r: %d operation(s) replayed, %d skipped, lost %s; original logs in %s", st.name,
                report.replayed, len(report.skipped), report.lost_lsns or "none", backup)
    return report
