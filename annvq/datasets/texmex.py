"""Readers and writers for the TEXMEX vector formats (``.fvecs``, ``.ivecs``, ``.bvecs``).

Each record is a little-endian int32 dimension ``d`` followed by ``d`` components (float32, int32
or uint8). Readers seek to the records they need, so a slice or a batch of a file larger than memory
costs only that slice; every record read has its dimension header checked.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .._validate import as_vectors
from ..errors import FormatError, InvalidInputError
from .annb import _open_hdf5

PathLike = str | os.PathLike

_COMPONENT = {".fvecs": np.dtype("<f4"), ".ivecs": np.dtype("<i4"), ".bvecs": np.dtype("u1")}
_NATIVE = {".fvecs": np.float32, ".ivecs": np.int32, ".bvecs": np.uint8}


def _suffix(path: PathLike, allowed: tuple[str, ...]) -> str:
    ext = Path(path).suffix.lower()
    if ext not in allowed:
        raise InvalidInputError(f"{path}: expected a file ending in {' or '.join(allowed)}, "
                                f"got {ext or 'no extension'!r}")
    return ext


def _layout(path: PathLike, ext: str) -> tuple[int, int, np.dtype]:
    """``(n, d, record dtype)`` of a vecs file, from its size and first header; FormatError if inconsistent."""
    size = os.path.getsize(path)
    if size < 4:
        raise FormatError(f"{path}: {size} bytes is too short for a {ext} file (no record header)")
    with open(path, "rb") as f:
        d = int(np.frombuffer(f.read(4), dtype="<i4")[0])
    comp = _COMPONENT[ext]
    if d <= 0 or 4 + d * comp.itemsize > size:
        raise FormatError(f"{path}: first record header gives dimension {d}, impossible for a {size}-byte {ext} file")
    record = np.dtype([("d", "<i4"), ("v", comp, (d,))])
    if size % record.itemsize:
        raise FormatError(
            f"{path}: size {size} bytes is not a multiple of the record size {record.itemsize} "
            f"(4 + {d} x {comp.itemsize} bytes for d={d}): truncated or not a {ext} file"
        )
    return size // record.itemsize, d, record


def _unpack(path: PathLike, ext: str, records: np.ndarray, first: int) -> np.ndarray:
    """Check every record's header and return the components as a native (n, d) array."""
    d = records.dtype["v"].shape[0]
    bad = np.flatnonzero(records["d"] != d)
    if bad.size:
        row = first + int(bad[0])
        got = int(records["d"][bad[0]])
        raise FormatError(f"{path}: record {row} has dimension header {got}, expected {d} like record 0")
    return np.ascontiguousarray(records["v"], dtype=_NATIVE[ext])


def count_vecs(path: PathLike) -> tuple[int, int]:
    """``(n, d)`` of a vecs file without reading its records."""
    n, d, _ = _layout(path, _suffix(path, tuple(_COMPONENT)))
    return n, d


def _read(path: PathLike, ext: str, start: int, count: int | None) -> np.ndarray:
    n, _, record = _layout(path, ext)
    if not 0 <= start <= n:
        raise InvalidInputError(f"start must be in [0, {n}] for {path}, got {start}")
    if count is not None and count < 0:
        raise InvalidInputError(f"count must be >= 0 or None, got {count}")
    take = n - start if count is None else min(count, n - start)
    with open(path, "rb") as f:
        f.seek(start * record.itemsize)
        records = np.fromfile(f, dtype=record, count=take)
    return _unpack(path, ext, records, start)


def read_fvecs(path: PathLike, start: int = 0, count: int | None = None) -> np.ndarray:
    """Records ``start .. start+count`` of an ``.fvecs`` file as float32 (n, d)."""
    return _read(path, ".fvecs", start, count)


def read_ivecs(path: PathLike, start: int = 0, count: int | None = None) -> np.ndarray:
    """Records ``start .. start+count`` of an ``.ivecs`` file as int32 (n, d)."""
    return _read(path, ".ivecs", start, count)


def read_bvecs(path: PathLike, start: int = 0, count: int | None = None) -> np.ndarray:
    """Records ``start .. start+count`` of a ``.bvecs`` file as uint8 (n, d)."""
    return _read(path, ".bvecs", start, count)


def iter_vecs(path: PathLike, batch_size: int) -> Iterator[np.ndarray]:
    """Yield consecutive batches of at most ``batch_size`` records, so huge files stream in bounded memory."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    ext = _suffix(path, tuple(_COMPONENT))
    n, _, record = _layout(path, ext)
    with open(path, "rb") as f:
        for start in range(0, n, batch_size):
            yield _unpack(path, ext, np.fromfile(f, dtype=record, count=min(batch_size, n - start)), start)


def _as_integer_rows(x, dtype: type, name: str) -> np.ndarray:
    """``x`` as a 2-D array of ``dtype``; values must be whole numbers inside the dtype's range."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(f"{name}: expected a non-empty 2-D array (n, d), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise InvalidInputError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
        raise InvalidInputError(f"{name}: float values must be finite whole numbers to store as {np.dtype(dtype)}")
    info = np.iinfo(dtype)
    if arr.min() < info.min or arr.max() > info.max:
        raise InvalidInputError(f"{name}: values must lie in [{info.min}, {info.max}] to store as {np.dtype(dtype)}")
    return arr.astype(dtype)


def _write(path: PathLike, ext: str, arr: np.ndarray) -> None:
    _suffix(path, (ext,))
    n, d = arr.shape
    records = np.empty(n, dtype=np.dtype([("d", "<i4"), ("v", _COMPONENT[ext], (d,))]))
    records["d"] = d
    records["v"] = arr
    records.tofile(path)


def write_fvecs(path: PathLike, x) -> None:
    """Write float vectors (n, d) as ``.fvecs``."""
    _write(path, ".fvecs", as_vectors(x, name="x"))


def write_ivecs(path: PathLike, x) -> None:
    """Write integer vectors (n, d), e.g. ground-truth ids, as ``.ivecs``."""
    _write(path, ".ivecs", _as_integer_rows(x, np.int32, "x"))


def write_bvecs(path: PathLike, x) -> None:
    """Write byte vectors (n, d) with values 0..255 as ``.bvecs``."""
    _write(path, ".bvecs", _as_integer_rows(x, np.uint8, "x"))


def read_vectors(path: PathLike) -> np.ndarray:
    """Base vectors from any supported file, chosen by extension.

    ``.fvecs/.ivecs/.bvecs`` are read whole; ``.npy`` is memory-mapped (read-only, no pickles);
    ``.hdf5/.h5`` gives the ann-benchmarks ``train`` dataset.
    """
    ext = _suffix(path, (*_COMPONENT, ".npy", ".hdf5", ".h5"))
    if ext in _COMPONENT:
        return _read(path, ext, 0, None)
    if ext == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise FormatError(f"{path}: not a readable .npy array ({exc})") from None
    else:
        with _open_hdf5(path) as f:
            if "train" not in f:
                raise FormatError(f"{path}: HDF5 file has no 'train' dataset "
                                  f"(has: {', '.join(sorted(f)) or 'nothing'})")
            arr = f["train"][()]
    if arr.ndim != 2:
        raise FormatError(f"{path}: expected a 2-D (n, d) array, got shape {arr.shape}")
    return arr
