"""Write-ahead log: append-only records, each checksummed and chained to the one before.

File layout, integers little-endian::

    header := "ANNVQWL2" | u64 first lsn | u32 salt | u32 crc32(the 20 bytes before)
    record := u32 "ANQR" | u32 payload length | u32 crc32(payload) | payload
    payload := u8 op | u64 lsn | u32 crc32 of the previous record's payload (the salt for the first)
               | u32 n | u32 d | n int64 ids | n*d float32 vectors (adds only)

An append is acknowledged only after ``fdatasync``, so only the *last* record of the newest log can be
incomplete (a crash mid-append): the reader reports it as a torn tail, which recovery cuts. Any other
bad record — a checksum, length, sequence number or chain link that does not match, with valid
records after it — is corruption: the reader reports where, and nothing is cut. Sequence numbers must
follow one another and every record names its predecessor's checksum, so records reordered, dropped
or copied in from another log (which has another salt) are caught too.
"""
from __future__ import annotations

import os
import secrets
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError
from .h5 import fsync_dir

MAGIC = b"ANNVQWL2"
REC_MAGIC = b"ANQR"
OP_ADD = 1
OP_DELETE = 2
_FILE = struct.Struct("<8sQI")
_CRC = struct.Struct("<I")
_REC = struct.Struct("<4sII")
_HEAD = struct.Struct("<BQIII")
HEADER_SIZE = _FILE.size + _CRC.size
_MAX_PAYLOAD = 1 << 31


def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Record:
    """One logged operation: ``op`` (OP_ADD or OP_DELETE), its sequence number, ids and, for adds, vectors."""

    op: int
    lsn: int
    ids: np.ndarray
    vectors: np.ndarray | None = None

    def payload(self, prev_crc: int) -> bytes:
        ids = np.ascontiguousarray(self.ids, dtype="<i8")
        n = ids.shape[0]
        if self.op == OP_ADD:
            vec = np.ascontiguousarray(self.vectors, dtype="<f4")
            return b"".join((_HEAD.pack(self.op, self.lsn, prev_crc, n, vec.shape[1]), ids.tobytes(), vec.tobytes()))
        return _HEAD.pack(self.op, self.lsn, prev_crc, n, 0) + ids.tobytes()


def _decode(payload: memoryview) -> tuple[Record, int] | None:
    """``(record, prev_crc)`` from a payload, or None when its fields are inconsistent."""
    if len(payload) < _HEAD.size:
        return None
    op, lsn, prev, n, d = _HEAD.unpack_from(payload)
    body = payload[_HEAD.size:]
    if op == OP_ADD and d > 0 and len(body) == 8 * n + 4 * n * d:
        ids = np.frombuffer(body[: 8 * n], dtype="<i8").astype(np.int64)
        vec = np.frombuffer(body[8 * n:], dtype="<f4").reshape(n, d).astype(np.float32)
        return Record(op, lsn, ids, vec), prev
    if op == OP_DELETE and d == 0 and len(body) == 8 * n:
        return Record(op, lsn, np.frombuffer(body, dtype="<i8").astype(np.int64)), prev
    return None


@dataclass(frozen=True)
class Damage:
    """Where a log stops being valid: the byte ``offset``, why, and the next valid record (None: torn tail)."""

    path: Path
    offset: int
    reason: str
    next_valid: int | None

    @property
    def torn(self) -> bool:
        return self.next_valid is None

    def __str__(self) -> str:
        if self.torn:
            return f"{self.path}: incomplete last record at byte {self.offset} ({self.reason})"
        return (f"{self.path}: damaged record at byte {self.offset} ({self.reason}); valid records follow at "
                f"byte {self.next_valid}")


class LogReader:
    """The records of a log file, each verified, in order.

    After iteration, ``valid_end`` is where the valid records end, ``last_crc`` the chain value to
    append after them, and ``damage`` describes what follows them (None when the file ends cleanly).
    A file too short to hold its header has ``header_ok`` False (a crash while creating it).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.data = memoryview(self.path.read_bytes())
        self.size = len(self.data)
        self.header_ok = False
        self.first_lsn = self.salt = 0
        self.valid_end = 0
        self.last_crc = 0
        self.last_lsn: int | None = None
        self.damage: Damage | None = None
        if self.size >= HEADER_SIZE:
            magic, self.first_lsn, self.salt = _FILE.unpack_from(self.data)
            if magic != MAGIC:
                raise FormatError(f"{self.path}: not an annvq write-ahead log of this version (bad magic)")
            if _CRC.unpack_from(self.data, _FILE.size)[0] != _crc(self.data[: _FILE.size]):
                raise FormatError(f"{self.path}: damaged log header (checksum mismatch)")
            self.header_ok = True
            self.valid_end, self.last_crc = HEADER_SIZE, self.salt

    def _record_at(self, off: int) -> tuple[Record, int, int, int] | str:
        """``(record, prev_crc, own crc, end)`` of a self-consistent record at ``off``, or why there is none."""
        if off + _REC.size > self.size:
            return "record header cut short"
        magic, length, crc = _REC.unpack_from(self.data, off)
        if magic != REC_MAGIC:
            return "bad record marker"
        end = off + _REC.size + length
        if length > _MAX_PAYLOAD or end > self.size:
            return "record runs past the end of the file"
        payload = self.data[off + _REC.size : end]
        if _crc(payload) != crc:
            return "checksum mismatch"
        decoded = _decode(payload)
        if decoded is None:
            return "inconsistent record fields"
        return decoded[0], decoded[1], crc, end

    def _next_valid(self, start: int) -> int | None:
        """Offset of the first self-consistent record at or after ``start``."""
        data = bytes(self.data)
        pos = data.find(REC_MAGIC, start)
        while pos >= 0:
            if not isinstance(self._record_at(pos), str):
                return pos
            pos = data.find(REC_MAGIC, pos + 1)
        return None

    def __iter__(self) -> Iterator[Record]:
        if not self.header_ok:
            return
        off, expect = HEADER_SIZE, self.first_lsn
        while off < self.size:
            got = self._record_at(off)
            if not isinstance(got, str):
                record, prev, crc, end = got
                if record.lsn != expect:
                    got = f"sequence number {record.lsn} where {expect} was due"
                elif prev != self.last_crc:
                    got = "chain checksum does not match the previous record (reordered or foreign record)"
            if isinstance(got, str):
                self.damage = Damage(self.path, off, got, self._next_valid(off + 1))
                return
            self.valid_end, self.last_crc, self.last_lsn = end, crc, record.lsn
            expect += 1
            off = end
            yield record

    def salvage(self) -> tuple[list[Record], list[tuple[int, int]]]:
        """Every self-consistent record of the file in file order, and the byte ranges that are not."""
        records, bad = [], []
        off = HEADER_SIZE if self.header_ok else 0
        while off < self.size:
            got = self._record_at(off)
            if isinstance(got, str):
                nxt = self._next_valid(off + 1)
                bad.append((off, self.size if nxt is None else nxt))
                if nxt is None:
                    break
                off = nxt
                continue
            records.append(got[0])
            off = got[3]
        return records, bad


class WriteAheadLog:
    """An open log file that durable records are appended to."""

    def __init__(self, path: Path, fd: int, size: int, last_crc: int, next_lsn: int) -> None:
        self.path, self._fd, self.size, self.last_crc, self.next_lsn = path, fd, size, last_crc, next_lsn
        self.broken = False  # a failed write could not be cut back: appending further could hide records

    @classmethod
    def create(cls, path: str | os.PathLike, first_lsn: int) -> WriteAheadLog:
        """A new, empty log whose first record will have sequence number ``first_lsn`` (file and
        directory entry synced)."""
        path = Path(path)
        salt = secrets.randbits(32)
        head = _FILE.pack(MAGIC, first_lsn, salt)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, head + _CRC.pack(_crc(head)))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        fsync_dir(path.parent)
        return cls(path, fd, HEADER_SIZE, salt, first_lsn)

    @classmethod
    def reopen(cls, reader: LogReader) -> WriteAheadLog:
        """Continue the log ``reader`` has read, cutting a torn tail (never anything else)."""
        if reader.damage is not None and not reader.damage.torn:
            raise FormatError(str(reader.damage))
        if not reader.header_ok:
            return cls.create(reader.path, reader.first_lsn or 1)
        fd = os.open(reader.path, os.O_WRONLY)
        if os.fstat(fd).st_size != reader.valid_end:
            os.ftruncate(fd, reader.valid_end)
            os.fsync(fd)
        os.lseek(fd, reader.valid_end, os.SEEK_SET)
        next_lsn = reader.first_lsn if reader.last_lsn is None else reader.last_lsn + 1
        return cls(reader.path, fd, reader.valid_end, reader.last_crc, next_lsn)

    def append(self, record: Record) -> None:
        """Write one record and wait until it is on disk; on failure the file is cut back and the error raised."""
        if self.broken:
            raise OSError(f"{self.path}: log unusable after a failed write; restart the server to recover")
        if record.lsn != self.next_lsn:
            raise ValueError(f"record {record.lsn} appended where {self.next_lsn} is due")
        payload = record.payload(self.last_crc)
        crc = _crc(payload)
        data = memoryview(b"".join((_REC.pack(REC_MAGIC, len(payload), crc), payload)))
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
        self.last_crc = crc
        self.next_lsn += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
