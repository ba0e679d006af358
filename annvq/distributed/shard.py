"""One physical shard of a sharded index, as a server object: what a Dask actor holds on a worker.

A shard is an index directory written by the build plus its write-ahead log. Opening it loads the
directory (every file verified, the model's fingerprint checked against the build's), then replays
the logged adds and deletes after the position the directory covers. Any replica can therefore be
re-created from shared storage at any time and reach the same state.

Writes go through one replica of the shard at a time, the one the router makes the shard's logger:
it checks the operation against its state, appends it to the log and syncs (the same
write-ahead-log guarantee as the service: ``annvq.storage.wal``), applies it, and returns its
sequence number; the router then hands the same record to the other replicas, which apply it
without logging. A replica that missed records (it was being re-created) reads them from the log.
An exclusive lock on the log directory keeps a second logger out; it is released when the holding
process dies.

Dask runs an actor's methods one at a time on the worker's actor thread, except coroutines, which
run on the worker's event loop: :meth:`ShardServer.search_small` answers a handful of queries there,
saving two thread hand-offs per call (most of a small search's latency on a busy machine). Writes
hold a mutex that such a search checks first, so it never reads a half-applied write.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from ..errors import FormatError, InvalidInputError
from ..index.base import BaseIndex, as_id_array
from ..index.ivf import IVFIndex
from ..kernels import exact_distances
from ..storage.wal import OP_ADD, OP_DELETE, LogReader, Record, WriteAheadLog
from .manifest import ShardEntry, directory_checksum

_WAL_RE = re.compile(r"^wal-(\d{20})\.log$")


def wal_name(first_lsn: int) -> str:
    return f"wal-{first_lsn:020d}.log"


def log_dir(root: Path, entry: ShardEntry) -> Path:
    """Where the write-ahead log of a shard lives: ``<build>/logs/<shard directory name>/``."""
    return root / "logs" / Path(entry.path).name


def _logs(path: Path) -> list[tuple[int, Path]]:
    if not path.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in path.iterdir() if (m := _WAL_RE.match(p.name)))


def open_shard(root: str | os.PathLike, entry: ShardEntry, fingerprint: str) -> tuple[BaseIndex, int]:
    """The shard's index with its logged writes replayed, and the last sequence number applied.

    The directory must carry the build's model (``fingerprint``) and, when it covers the log position
    the manifest entry names, be the very directory the entry's checksum describes; a directory that
    covers a later position was checkpointed since and is taken on its fingerprint.
    """
    root = Path(root)
    path = root / entry.path
    index = storage.load(path)
    if not index.is_trained or index.fingerprint() != fingerprint:
        raise FormatError(f"{path}: shard trained with another model than the build (fingerprint "
                          f"{index.fingerprint() if index.is_trained else 'untrained'}, expected {fingerprint})")
    lsn = index.storage.metadata.get("lsn", 0)
    if isinstance(lsn, bool) or not isinstance(lsn, int) or lsn < 0:
        raise FormatError(f"{path}: manifest metadata has no valid log position (lsn)")
    if lsn < entry.lsn or (lsn == entry.lsn and directory_checksum(path) != entry.checksum):
        raise FormatError(f"{path}: not the shard the sharded manifest names (checksum or log position differs)")
    index.auto_compact = False
    return index, replay(index, log_dir(root, entry), lsn)


def replay(index: BaseIndex, logs: Path, lsn: int) -> int:
    """Apply the records of the logs in ``logs`` after ``lsn`` to ``index``; returns the last one applied.

    A torn last record of the newest log (a crash mid-append, never acknowledged) is ignored; any other
    damage, or a gap in the sequence, raises FormatError.
    """
    files = _logs(logs)
    for i, (_, path) in enumerate(files):
        reader = LogReader(path)
        if reader.header_ok and reader.first_lsn > lsn + 1:
            raise FormatError(f"{path}: starts at record {reader.first_lsn} but the shard covers only up to {lsn}")
        for rec in reader:
            if rec.lsn <= lsn:
                continue
            apply_record(index, rec)
            lsn = rec.lsn
        if reader.damage is not None and (not reader.damage.torn or i < len(files) - 1):
            raise FormatError(str(reader.damage))
    return lsn


def apply_record(index: BaseIndex, rec: Record) -> None:
    if rec.op == OP_ADD:
        index.add(rec.vectors, rec.ids)
    else:
        index.remove(rec.ids)


class ShardServer:
    """One replica of one shard (see the module docstring). Methods take and return NumPy arrays."""

    def __init__(self, root: str, shard: int, fingerprint: str, entry: dict[str, Any]) -> None:
        self.root = Path(root)
        self.shard = int(shard)
        self.entry = ShardEntry.model_validate(entry)
        self.fingerprint = fingerprint
        self.index, self.lsn = open_shard(self.root, self.entry, fingerprint)
        self.logs = log_dir(self.root, self.entry)
        self._wal: WriteAheadLog | None = None
        self._lock_fd = -1
        self._mutex = threading.Lock()  # held by writes (actor thread); searches on the event loop check it

    # --- reads ---------------------------------------------------------------------------------
    def search(self, xq: np.ndarray, k: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(xq, k, params)

    def search_preassigned(self, xq: np.ndarray, k: int, lists: np.ndarray, scores: np.ndarray,
                           params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` of an IVF shard visiting the lists the router chose (see
        :meth:`annvq.IVFIndex.search_preassigned`)."""
        if not isinstance(self.index, IVFIndex):
            raise InvalidInputError(f"shard {self.shard}: a {self.index.index_type} index has no inverted lists")
        return self.index.search_preassigned(xq, k, lists, scores, params)

    async def search_small(self, xq: np.ndarray, k: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for a few queries, run on the worker's event loop (or, while a write is being
        applied, in a thread once it is done)."""
        if self._mutex.acquire(blocking=False):
            try:
                return self.index.search(xq, k, params)
            finally:
                self._mutex.release()
        return await asyncio.to_thread(self._search_locked, xq, k, params)

    def _search_locked(self, xq: np.ndarray, k: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        with self._mutex:
            return self.index.search(xq, k, params)

    def exact(self, xq: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Exact distances (nq, kk) from each query to its candidate ids held here; +inf elsewhere (ids
        held by other shards, -1). Squared L2, or the negated inner product for ip and cosine, as the
        single index's re-ranking computes them."""
        xq = self.index.prepare(xq, "xq")
        cand = np.asarray(candidates, dtype=np.int64)
        if cand.ndim != 2 or cand.shape[0] != xq.shape[0]:
            raise InvalidInputError(f"candidates: expected ({xq.shape[0]}, kk) ids, got shape {cand.shape}")
        flat = cand.reshape(-1)
        mine = flat >= 0
        mine[mine] = self.index.contains(flat[mine])
        uniq, inv = np.unique(flat[mine], return_inverse=True)
        vectors = self.index.fetch(uniq)[0] if uniq.size else np.empty((0, self.index.d), np.float32)
        where = np.full(flat.shape[0], -1, dtype=np.int64)
        where[mine] = inv
        return exact_distances(xq, np.ascontiguousarray(vectors), where.reshape(cand.shape), self.index.metric != "l2")

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, bool]:
        return self.index.fetch(ids)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.index.contains(ids)

    def state(self) -> dict[str, int]:
        """``ntotal``, the last applied log record ``lsn`` and the ``next_id`` an add without ids would take."""
        return {"ntotal": self.index.ntotal, "lsn": self.lsn, "next_id": self.index.next_id}

    def info(self) -> dict[str, Any]:
        return {**self.index.info(), "shard": self.shard, "lsn": self.lsn, "pid": os.getpid(),
                "logger": self._wal is not None}

    def ping(self) -> int:
        return os.getpid()

    # --- writes --------------------------------------------------------------------------------
    def check_add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Raise what :meth:`log_add` would raise for this batch; changes nothing."""
        self.index.check_add(x, ids)

    def check_remove(self, ids: np.ndarray) -> None:
        self.index.check_remove(ids)

    def log_add(self, x: np.ndarray, ids: np.ndarray, retry: bool = False) -> tuple[int, int]:
        """Check, log durably, apply; returns ``(sequence number, ntotal)``.

        The vectors are logged as given (float32) and applied by ``add``, exactly as the other replicas
        and a replay apply them. ``retry``: the router's earlier attempt may have been logged before its
        logger died; when every id is already here, that attempt counts and nothing is logged again.
        """
        wal = self._writer()
        if retry and self.index.contains(as_id_array(ids)).all():
            return self.lsn, self.index.ntotal
        _, ids = self.index.check_add(x, ids)
        return self._log(wal, Record(OP_ADD, wal.next_lsn, ids, np.ascontiguousarray(x, dtype=np.float32)))

    def log_remove(self, ids: np.ndarray, retry: bool = False) -> tuple[int, int]:
        """Like :meth:`log_add` for a delete (``retry``: done already when none of the ids is here)."""
        wal = self._writer()
        if retry and not self.index.contains(as_id_array(ids)).any():
            return self.lsn, self.index.ntotal
        ids = self.index.check_remove(ids)
        return self._log(wal, Record(OP_DELETE, wal.next_lsn, ids))

    def _log(self, wal: WriteAheadLog, rec: Record) -> tuple[int, int]:
        wal.append(rec)
        with self._mutex:
            apply_record(self.index, rec)
            self.lsn = rec.lsn
        return rec.lsn, self.index.ntotal

    def apply(self, op: int, lsn: int, ids: np.ndarray, vectors: np.ndarray | None) -> tuple[int, int]:
        """Apply a record the logger wrote (reading any records missed before it from the log)."""
        if lsn > self.lsn + 1:
            self.catch_up()
        if lsn == self.lsn + 1:
            with self._mutex:
                apply_record(self.index, Record(op, lsn, as_id_array(ids), vectors))
                self.lsn = lsn
        return self.lsn, self.index.ntotal

    def catch_up(self) -> int:
        """Apply the logged records this replica has not seen; returns the last sequence number."""
        with self._mutex:
            self.lsn = replay(self.index, self.logs, self.lsn)
        return self.lsn

    def _writer(self) -> WriteAheadLog:
        """The shard's log, opened for appending by this replica (taking the log directory's lock)."""
        if self._wal is not None:
            return self._wal
        self.logs.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.logs / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InvalidInputError(f"{self.logs}: another process holds this shard's log") from None
        try:
            self.catch_up()
            files = _logs(self.logs)
            if files:
                reader = LogReader(files[-1][1])
                for _ in reader:
                    pass
                self._wal = WriteAheadLog.reopen(reader)
            else:
                self._wal = WriteAheadLog.create(self.logs / wal_name(self.lsn + 1), self.lsn + 1)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        return self._wal

    def checkpoint(self) -> dict[str, Any]:
        """Store the shard's state in its directory (O(new data)), start a fresh log and delete the old
        ones; returns the new ``lsn``, ``ntotal`` and ``checksum`` for the sharded manifest. Only the
        logger checkpoints (a replica that is not, becomes it)."""
        wal = self._writer()
        path = self.root / self.entry.path
        metadata = {**self.index.storage.metadata, "lsn": self.lsn}
        with self._mutex:  # sealing the growing segment changes what a search visits
            storage.save(self.index, path, metadata)
        if wal.path.name != wal_name(self.lsn + 1):
            new = WriteAheadLog.create(self.logs / wal_name(self.lsn + 1), self.lsn + 1)
            wal.close()
            self._wal = wal = new
        for _, p in _logs(self.logs):
            if p != wal.path:
                p.unlink()
        storage.fsync_dir(self.logs)
        return {"lsn": self.lsn, "ntotal": self.index.ntotal, "checksum": directory_checksum(path)}

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
