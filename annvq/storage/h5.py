"""Checksummed HDF5 files: every byte annvq reads back is verified before it is used.

A file holds a header and named arrays. The header (JSON in a root attribute, followed by its CRC32
in a second attribute) carries the file's kind and format version, free-form parameters, the dtype
and shape of every array, and the CRC32 of every array read whole. Arrays read row by row on demand
(exact vectors for re-ranking) are instead chunked with HDF5's Fletcher-32 filter, verified by HDF5
per chunk read; files are written with the newest HDF5 format, whose metadata blocks (object
headers, chunk indexes) carry checksums too. So a flipped bit anywhere is either refused with a
:class:`~annvq.errors.FormatError` naming the file and the part, or lands in bytes nothing reads.

Writes are atomic: a temporary file beside the target, fsynced, renamed over it, directory fsynced.
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import FormatError

FORMAT_VERSION = 2
LAZY_CHUNK_ROWS = 64  # rows per checksummed chunk of an array read row by row
_COPY_ROWS = 65536


def fsync_dir(path: str | os.PathLike) -> None:
    """Make file creations, renames and deletions inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def dumps(obj: Any) -> bytes:
    """Canonical JSON (sorted keys, no NaN) as bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default, allow_nan=False).encode()


def crc(data: bytes | np.ndarray) -> int:
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data)
        return zlib.crc32(buf.data.cast("B") if buf.size else b"") & 0xFFFFFFFF
    return zlib.crc32(data) & 0xFFFFFFFF


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write; on success it is fsynced and renamed over ``path`` (and the directory
    fsynced), on error removed, leaving ``path`` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_file(path: str | os.PathLike, kind: str, params: dict[str, Any], arrays: dict[str, np.ndarray],
               lazy: dict[str, Any] | None = None) -> int:
    """Write a checksummed file atomically; returns the CRC32 of its header (which covers every whole array).

    ``arrays`` are read back whole; ``lazy`` maps names to (n, d) arrays or to sources with
    ``read(rows)`` (copied in blocks), stored in small Fletcher-32 chunks for row-wise reads.
    """
    lazy = lazy or {}
    header: dict[str, Any] = {"kind": kind, "format_version": FORMAT_VERSION, "params": params, "arrays": {},
                              "lazy": {}}
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver="latest") as f:
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            f.create_dataset(name, data=a)
            header["arrays"][name] = {"dtype": a.dtype.str, "shape": list(a.shape), "crc32": crc(a)}
        for name, src in lazy.items():
            n, d = _lazy_shape(src)
            ds = f.create_dataset(name, shape=(n, d), dtype=np.float32,
                                  chunks=(min(LAZY_CHUNK_ROWS, n), d) if n else None, fletcher32=bool(n))
            for s in range(0, n, _COPY_ROWS):
                rows = np.arange(s, min(n, s + _COPY_ROWS))
                if isinstance(src, np.ndarray):
                    ds[s : s + rows.shape[0]] = src[s : s + rows.shape[0]]
                else:
                    ds[s : s + rows.shape[0]] = src.read(rows)
            header["lazy"][name] = {"dtype": "<f4", "shape": [n, d]}
        body = dumps(header)
        f.attrs["annvq"] = np.frombuffer(body, dtype=np.uint8)
        f.attrs["annvq_crc32"] = np.uint32(crc(body))
    return crc(body)


def _lazy_shape(src: Any) -> tuple[int, int]:
    if isinstance(src, np.ndarray):
        return int(src.shape[0]), int(src.shape[1])
    return int(src.n), int(src.d)


class StoredFile:
    """An annvq file opened for reading: its verified header, whole arrays on demand, lazy arrays as sources."""

    def __init__(self, path: str | os.PathLike, kind: str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FormatError(f"{self.path}: missing (no such file)")
        try:
            self._f = h5py.File(self.path, "r")
        except Exception as exc:
            raise FormatError(f"{self.path}: not a readable HDF5 file (truncated or corrupt): {exc}") from None
        try:
            self.header, self.digest = self._header(kind)
        except BaseException:
            self._f.close()
            raise

    def _fail(self, part: str, why: str) -> FormatError:
        return FormatError(f"{self.path}: {part}: {why}")

    def _header(self, kind: str) -> tuple[dict[str, Any], int]:
        try:
            body = bytes(np.asarray(self._f.attrs["annvq"], dtype=np.uint8))
            stored = int(np.asarray(self._f.attrs["annvq_crc32"]))
        except Exception as exc:
            raise self._fail("header", f"missing or unreadable ({type(exc).__name__}: {exc}); "
                                       "not an annvq file of this format") from None
        if crc(body) != stored:
            raise self._fail("header", "checksum mismatch (the file is damaged)")
        try:
            header = json.loads(body)
        except ValueError as exc:
            raise self._fail("header", f"not valid JSON: {exc}") from None
        if not isinstance(header, dict) or header.get("kind") != kind:
            raise self._fail("header", f"holds {header.get('kind') if isinstance(header, dict) else '?'!r}, "
                                       f"expected {kind!r}")
        version = header.get("format_version")
        if not isinstance(version, int) or not 2 <= version <= FORMAT_VERSION:
            raise self._fail("header", f"format version {version!r}; this annvq reads 2..{FORMAT_VERSION}")
        for key in ("params", "arrays", "lazy"):
            if not isinstance(header.get(key), dict):
                raise self._fail("header", f"{key!r} is not a mapping")
        return header, crc(body)

    @property
    def params(self) -> dict[str, Any]:
        return self.header["params"]

    def names(self) -> list[str]:
        return list(self.header["arrays"])

    def array(self, name: str) -> np.ndarray:
        """A whole array, checked against the header's dtype, shape and CRC32."""
        spec = self.header["arrays"].get(name)
        if not isinstance(spec, dict):
            raise self._fail(name, "missing")
        try:
            ds = self._f[name]
            if not isinstance(ds, h5py.Dataset):
                raise TypeError("not a dataset")
            a = ds[()]
        except Exception as exc:
            raise self._fail(name, f"unreadable ({type(exc).__name__}: {exc})") from None
        a = np.asarray(a)
        if a.dtype.str != spec.get("dtype") or list(a.shape) != spec.get("shape"):
            raise self._fail(name, f"{a.dtype.str} {list(a.shape)} does not match the header's "
                                   f"{spec.get('dtype')} {spec.get('shape')}")
        if crc(a) != spec.get("crc32"):
            raise self._fail(name, "checksum mismatch (the file is damaged)")
        return a

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: self.array(name) for name in self.names()}

    def lazy(self, name: str) -> H5Vectors:
        spec = self.header["lazy"].get(name)
        if not isinstance(spec, dict):
            raise self._fail(name, "missing")
        try:
            ds = self._f[name]
            ok = isinstance(ds, h5py.Dataset) and ds.dtype == np.float32 and list(ds.shape) == spec.get("shape")
        except Exception as exc:
            raise self._fail(name, f"unreadable ({type(exc).__name__}: {exc})") from None
        if not ok:
            raise self._fail(name, f"does not match the header's float32 {spec.get('shape')}")
        if ds.shape[0] and (ds.chunks is None or not ds.fletcher32):
            raise self._fail(name, "stored without its checksum filter")
        return H5Vectors(self._f, self.path, name)

    def close(self) -> None:
        self._f.close()


class H5Vectors:
    """Exact vectors left in a stored file, read by rows on demand (one slice per chunk touched)."""

    in_memory = False

    def __init__(self, f: h5py.File, path: Path, name: str, rows: np.ndarray | None = None) -> None:
        self._f, self._path, self._name = f, path, name
        self._ds = f[name]
        self._rows = rows  # optional map from the segment's rows to the file's rows
        self.n = int(self._ds.shape[0] if rows is None else rows.shape[0])
        self.d = int(self._ds.shape[1])

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self._rows is not None:
            file_rows = self._rows[rows]
            order = np.argsort(file_rows, kind="stable")
            out = np.empty((rows.shape[0], self.d), dtype=np.float32)
            out[order] = self._read_sorted(file_rows[order])
            return out
        return self._read_sorted(rows)

    def _read_sorted(self, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted) of the dataset, one slice per chunk touched: HDF5 reads (and checksums) whole
        chunks, so a slice per chunk costs what the chunk costs, while h5py's fancy indexing adds a
        per-row selection overhead that dominates for thousands of rows."""
        ds = self._ds
        out = np.empty((len(rows), self.d), dtype=np.float32)
        step = ds.chunks[0] if ds.chunks else max(ds.shape[0], 1)
        chunk = rows // step
        starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]]) if len(rows) else np.empty(0, np.int64)
        try:
            for a, b in zip(starts, np.r_[starts[1:], len(rows)]):
                lo, hi = int(rows[a]), int(rows[b - 1]) + 1
                out[a:b] = ds[lo:hi][rows[a:b] - lo]
        except Exception as exc:
            raise FormatError(f"{self._path}: {self._name}: unreadable rows "
                              f"({type(exc).__name__}: {exc})") from None
        if not np.isfinite(out).all():
            raise FormatError(f"{self._path}: {self._name}: non-finite values stored")
        return out

    def close(self) -> None:
        self._f.close()
