"""HDF5 persistence: one file per index, no pickle, versioned and validated on load.

Layout::

    /                attrs: format="annvq-index", format_version, index_type, ntotal, index (JSON)
    /codec           attrs: params (JSON); one dataset per learned array
    /arrays          fixed index arrays (e.g. coarse centroids)
    /columns         per-vector arrays (ids, codes, norms, ...), chunked, resizable, fletcher32

``save`` writes a temporary file in the target's directory and renames it over the target, so a
crash never leaves a half-written index. ``append`` grows the columns in place and bumps ``ntotal``
last, so an interrupted append leaves the stored vectors as they were.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import FormatError
from .index.base import BaseIndex, index_class
from .quantizers import Quantizer

FORMAT = "annvq-index"
FORMAT_VERSION = 1
_CHUNK_ROWS = 65536
_LAZY_CHUNK_ROWS = 64  # columns read row-wise at search time: small checksummed chunks


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _write_column(group: h5py.Group, name: str, arr: np.ndarray, chunk_rows: int = _CHUNK_ROWS) -> None:
    arr = np.asarray(arr)
    chunk = (max(1, min(chunk_rows, arr.shape[0] or 1)),) + arr.shape[1:]
    group.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=chunk, fletcher32=True)


@contextmanager
def atomic_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """An HDF5 file open for writing that replaces ``path`` only once the block completes.

    Writes go to a temporary file beside ``path``, which is fsynced and renamed over it; on any
    error the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save(index: BaseIndex, path: str | os.PathLike) -> None:
    """Write ``index`` to ``path`` atomically (temporary file, fsync, rename)."""
    attrs, arrays = index._state()
    params, codec_arrays = index.codec.get_state()
    with atomic_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["index_type"] = index.index_type
        f.attrs["ntotal"] = index.ntotal
        f.attrs["index"] = json.dumps(attrs, default=_json_default)
        g = f.create_group("codec")
        g.attrs["params"] = json.dumps(params, default=_json_default)
        for name, a in codec_arrays.items():
            g.create_dataset(name, data=a, fletcher32=bool(np.asarray(a).size), chunks=True if np.asarray(a).size else None)
        g = f.create_group("arrays")
        for name, a in arrays.items():
            g.create_dataset(name, data=a)
        g = f.create_group("columns")
        for name, a in index._columns().items():
            _write_column(g, name, a, _LAZY_CHUNK_ROWS if name in index.lazy_columns else _CHUNK_ROWS)


def _open(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no index file at {path}")
    try:
        f = h5py.File(path, mode)
    except OSError as exc:
        raise FormatError(f"{path} is not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise FormatError(f"{path} is not an annvq index file (format attribute missing or foreign)")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION or version < 1:
        f.close()
        raise FormatError(f"{path} has format version {version}; this annvq reads versions 1..{FORMAT_VERSION}")
    return f


def _read_header(f: h5py.File) -> tuple[type[BaseIndex], Quantizer, dict[str, Any], dict[str, np.ndarray], int]:
    try:
        cls = index_class(str(f.attrs["index_type"]))
        attrs = json.loads(f.attrs["index"])
        params = json.loads(f["codec"].attrs["params"])
        codec = Quantizer.from_state(params, {k: f["codec"][k][()] for k in f["codec"]})
        arrays = {k: f["arrays"][k][()] for k in f["arrays"]}
        ntotal = int(f.attrs["ntotal"])
    except (KeyError, ValueError, OSError) as exc:
        raise FormatError(f"{f.filename}: damaged index header: {exc}") from None
    return cls, codec, attrs, arrays, ntotal


def load(path: str | os.PathLike) -> BaseIndex:
    """Read an index saved by :func:`save`; raises :class:`FormatError` on a foreign or damaged file."""
    with _open(path) as f:
        cls, codec, attrs, arrays, ntotal = _read_header(f)
        columns = {}
        try:
            for name in f["columns"]:
                ds = f["columns"][name]
                if ds.shape[0] < ntotal:
                    raise FormatError(f"{path}: column {name!r} holds {ds.shape[0]} rows, header says {ntotal} (truncated)")
                if name not in cls.lazy_columns:
                    columns[name] = ds[:ntotal]
        except (KeyError, OSError) as exc:
            raise FormatError(f"{path}: damaged vector data: {exc}") from None
        if "ids" not in columns:
            raise FormatError(f"{path}: no ids column")
    index = cls._restore(codec, attrs, arrays, columns)
    index.source_path = Path(path)
    return index


def append(path: str | os.PathLike, x, ids=None) -> np.ndarray:
    """Encode ``x`` with the index stored at ``path`` and append it to the file in place.

    Returns the new external ids. Rows go past the stored ``ntotal`` first and ``ntotal`` is raised
    last, so a crash mid-append leaves the previously stored vectors readable and unchanged.
    """
    index = load(path)
    index._require_trained()
    x = index._prepare(x, "x")
    new_ids = index._new_ids(ids, x.shape[0])
    cols = index._encode_columns(x, new_ids)
    with _open(path, "r+") as f:
        n0 = int(f.attrs["ntotal"])
        g = f["columns"]
        for name, a in cols.items():
            ds = g[name]
            ds.resize(n0 + a.shape[0], axis=0)
            ds[n0:] = a
        f.flush()
        f.attrs["ntotal"] = n0 + x.shape[0]
        f.flush()
    return new_ids
