"""Write-ahead log of one index: append-only, one length-prefixed and crc32-checked record per operation.

File layout: the 8-byte magic ``ANNVQWL1``, then records, all integers little-endian::

    u32 payload length | payload | u32 crc32(length bytes + payload)
    payload := u8 op | u64 lsn | u32 n | u32 d | n int64 ids | n*d float32 vectors (adds only)

An append is acknowledged only after ``fdatasync``. A crash mid-append leaves a short or
checksum-failing tail: :class:`LogReader` stops at the last whole record and reports where it ends,
and :meth:`WriteAheadLog.open` cuts the file there before appending again.
"""
from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annvq.errors import FormatError

MAGIC = b"ANNVQWL1"
OP_ADD = 1
OP_DELETE = 2
_LEN = struct.Struct("<I")
_HEAD = struct.Struct("<BQII")


@dataclass(frozen=True)
class Record:
    """One logged operation: ``op`` (OP_ADD or OP_DELETE), its sequence number, ids and, for adds, vectors."""

    op: int
    lsn: int
    ids: np.ndarray
    vectors: np.ndarray | None = None

    def encode(self) -> bytes:
        ids = np.ascontiguousarray(self.ids, dtype="<i8")
        n = ids.shape[0]
        if self.op == OP_ADD:
            vec = np.ascontiguousarray(self.vectors, dtype="<f4")
            d = vec.shape[1]
            payload = b"".join((_HEAD.pack(self.op, self.lsn, n, d), ids.tobytes(), vec.tobytes()))
        else:
            payload = _HEAD.pack(self.op, self.lsn, n, 0) + ids.tobytes()
        length = _LEN.pack(len(payload))
        return b"".join((length, payload, _LEN.pack(zlib.crc32(payload, zlib.crc32(length)))))


def _decode(payload: bytes) -> Record | None:
    """The record in ``payload``, or None when its sizes are inconsistent (corrupt)."""
    op, lsn, n, d = _HEAD.unpack_from(payload)
    body = memoryview(payload)[_HEAD.size:]
    if op == OP_ADD and d > 0 and len(body) == 8 * n + 4 * n * d:
        ids = np.frombuffer(body[: 8 * n], dtype="<i8").astype(np.int64)
        vec = np.frombuffer(body[8 * n:], dtype="<f4").reshape(n, d).astype(np.float32)
        return Record(op, lsn, ids, vec)
    if op == OP_DELETE and d == 0 and len(body) == 8 * n:
        return Record(op, lsn, np.frombuffer(body, dtype="<i8").astype(np.int64))
    return None


class LogReader:
    """Iterate the whole, checksum-valid records of a log file.

    After iteration ``valid_end`` is the byte offset where they end (0 when even the magic header is
    incomplete) and ``torn`` tells whether bytes follow that are not a whole valid record.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.valid_end = 0
        self.size = self.path.stat().st_size

    @property
    def torn(self) -> bool:
        return self.valid_end < self.size

    def __iter__(self) -> Iterator[Record]:
        with open(self.path, "rb") as f:
            head = f.read(len(MAGIC))
            if len(head) < len(MAGIC):
                return
            if head != MAGIC:
                raise FormatError(f"{self.path} is not an annvq write-ahead log (bad magic)")
            self.valid_end = len(MAGIC)
            while True:
                length = f.read(_LEN.size)
                if len(length) < _LEN.size:
                    return
                (size,) = _LEN.unpack(length)
                if size < _HEAD.size or self.valid_end + 2 * _LEN.size + size > self.size:
                    return
                payload = f.read(size)
                crc = f.read(_LEN.size)
                if len(crc) < _LEN.size or _LEN.unpack(crc)[0] != zlib.crc32(payload, zlib.crc32(length)):
                    return
                record = _decode(payload)
                if record is None:
                    return
                self.valid_end += 2 * _LEN.size + size
                yield record


def fsync_dir(path: str | os.PathLike) -> None:
    """Make file creations, renames and deletions inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """An open log file that durable records are appended to."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path, self._fd, self.size = path, fd, size
        self.broken = False  # a failed write could not be cut back: appending further could hide records

    @classmethod
    def create(cls, path: str | os.PathLike) -> WriteAheadLog:
        """A new, empty log (header written and synced, directory entry synced)."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, MAGIC)
        os.fsync(fd)
        fsync_dir(path.parent)
        return cls(path, fd, len(MAGIC))

    @classmethod
    def open(cls, path: str | os.PathLike, valid_end: int) -> WriteAheadLog:
        """Reopen an existing log for appending, cutting anything after ``valid_end`` (a torn tail)."""
        path = Path(path)
        if valid_end < len(MAGIC):
            return cls.create(path)
        fd = os.open(path, os.O_WRONLY)
        if os.fstat(fd).st_size != valid_end:
            os.ftruncate(fd, valid_end)
            os.fsync(fd)
        os.lseek(fd, valid_end, os.SEEK_SET)
        return cls(path, fd, valid_end)

    def append(self, record: Record) -> None:
        """Write one record and wait until it is on disk; on failure the file is cut back and the error raised."""
        if self.broken:
            raise OSError(f"{self.path}: log unusable after a failed write; restart the server to recover")
        data = memoryview(record.encode())
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fdatasync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, self.size)
                os.lseek(self._fd, self.size, os.SEEK_SET)
            except OSError:
                self.broken = True
            raise
        self.size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
