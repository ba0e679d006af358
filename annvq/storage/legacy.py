"""Reader of the single-file format of annvq 0.1 (format version 1), kept so old indexes still load.

Such a file becomes an index with one sealed segment held in memory; its exact vectors (``Refine``)
stay in the old file and are read from there. :func:`annvq.storage.save` (or ``annvq migrate``)
writes it in the directory format.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import FormatError
from ..index.base import BaseIndex
from .h5 import H5Vectors


def is_legacy_file(path: Path) -> bool:
    return path.is_file() and h5py.is_hdf5(path)


def load_legacy(path: Path) -> BaseIndex:
    """The index in a version-1 file; FormatError on anything inconsistent."""
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise FormatError(f"{path}: not a readable HDF5 file (truncated or corrupt): {exc}") from None
    try:
        index, vectors = _read(f, path)
    except FormatError as exc:
        f.close()
        raise FormatError(f"{path}: {exc}") from None
    except Exception as exc:
        f.close()
        raise FormatError(f"{path}: damaged index file ({type(exc).__name__}: {exc})") from None
    if vectors is None:
        f.close()
    return index


def _read(f: h5py.File, path: Path) -> tuple[BaseIndex, Any]:
    if f.attrs.get("format") != "annvq-index":
        raise FormatError("not an annvq index file (format attribute missing or foreign)")
    if int(f.attrs.get("format_version", -1)) != 1:
        raise FormatError(f"format version {f.attrs.get('format_version')!r} is not a single-file version (1)")
    old = json.loads(f.attrs["index"])
    params = json.loads(f["codec"].attrs["params"])
    index_type = str(f.attrs["index_type"])
    attrs: dict[str, Any] = {"index_type": index_type, "metric": old["metric"], "d": old["d"],
                             "spec": old.get("spec", ""), "rerank": bool(old.get("rerank", False)),
                             "k_factor": int(old.get("k_factor", 4)), "codec": params}
    for key in ("norm_bits", "norm_min", "norm_max", "nlist", "coarse", "coarse_niter", "branching", "beam",
                "nprobe", "coarse_random_state"):
        if key in old:
            attrs[key] = old[key]
    arrays = {f"codec_{k}": f["codec"][k][()] for k in f["codec"]}
    arrays.update({k: f["arrays"][k][()] for k in f["arrays"]})
    index = BaseIndex.from_state(attrs, arrays)
    n = int(f.attrs["ntotal"])
    if n < 0:
        raise FormatError(f"ntotal {n} is negative")
    cols = f["columns"]
    for name in cols:
        if cols[name].shape[0] < n:
            raise FormatError(f"column {name!r} holds {cols[name].shape[0]} rows, header says {n} (truncated)")
    lists = np.asarray(cols["lists"][:n], dtype=np.int64) if "lists" in cols else np.zeros(n, np.int64)
    if n and (lists.min() < 0 or lists.max() >= index.nlist):
        raise FormatError("list numbers out of range")
    order = np.argsort(lists, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=index.nlist))]).astype(np.int64)
    seg_cols: dict[str, Any] = {"ids": np.asarray(cols["ids"][:n])[order], "offsets": offsets}
    seg_cols["codes"] = np.ascontiguousarray(np.asarray(cols["codes"][:n])[order])
    if "norms" in cols:
        seg_cols["norms"] = np.asarray(cols["norms"][:n])[order]
    vectors = None
    if "vectors" in cols:
        vectors = H5Vectors(f, path, "columns/vectors", rows=order.astype(np.int64))
        seg_cols["vectors"] = vectors
    if seg_cols["ids"].dtype.kind not in "iu":
        raise FormatError(f"ids: integer ids expected, got {seg_cols['ids'].dtype}")
    seg_cols["ids"] = seg_cols["ids"].astype(np.int64)
    seg = index.segment_from_columns(1, seg_cols, np.empty(0, np.int64))
    index.set_segments([seg], 2, int(seg.ids.max()) + 1 if seg.n else 0)
    return index, vectors
