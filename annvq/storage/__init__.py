"""Persistence: an index is a directory of checksummed HDF5 files under an atomically replaced manifest.

``save`` writes an index (to its own directory: only what changed, O(new data)); ``load`` reads and
verifies one, the directory format or the single-file format of annvq 0.1; ``append`` adds vectors
to a stored index in O(batch); ``compact`` merges a stored index's segments; ``concat`` combines
indexes that share a trained model into one without re-encoding. No pickle anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, InvalidInputError
from ..index.base import BaseIndex
from .concat import concat
from .directory import CommitStats, IndexDirectory, append_to
from .h5 import StoredFile, atomic_path, crc, dumps, fsync_dir, write_file
from .legacy import is_legacy_file, load_legacy

__all__ = ["save", "load", "append", "compact", "migrate", "concat", "IndexDirectory", "CommitStats", "StoredFile",
           "write_file", "atomic_path", "fsync_dir", "crc", "dumps"]


def _directory_for(index: BaseIndex, path: Path) -> IndexDirectory:
    """The index's own directory object when ``path`` is it, else a new one (refusing foreign content)."""
    path = Path(path)
    own = index.storage
    if isinstance(own, IndexDirectory) and own.path == path.resolve():
        return own
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{path}: exists and is not a directory; annvq indexes are directories "
                                "(annvq migrate converts a single-file index)")
    if path.is_dir() and any(path.iterdir()) and not IndexDirectory.holds_index(path):
        raise InvalidInputError(f"{path}: a non-empty directory that holds no annvq index; choose another path")
    return IndexDirectory(path)


def save(index: BaseIndex, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> CommitStats:
    """Write ``index`` to the directory ``path`` (created if needed) and make it the index's storage.

    To the directory the index was loaded from or last saved to, only the new segments, changed
    tombstones and (after retraining) the model are written. ``metadata`` (JSON) is kept in the
    manifest and comes back as ``index.storage.metadata`` after :func:`load`. Returns what was written.
    """
    if not isinstance(index, BaseIndex):
        raise InvalidInputError(f"save: expected an annvq index, got {type(index).__name__}")
    return _directory_for(index, Path(path)).commit(index, metadata)


def load(path: str | os.PathLike) -> BaseIndex:
    """Read and verify the index at ``path``: a directory written by :func:`save`, or a single file of
    annvq 0.1. Anything missing, damaged or inconsistent raises :class:`FormatError` naming the file."""
    path = Path(path)
    if IndexDirectory.holds_index(path):
        return IndexDirectory(path).load()
    if is_legacy_file(path):
        return load_legacy(path)
    if not path.exists():
        raise FormatError(f"{path}: no index here (no such file or directory)")
    raise FormatError(f"{path}: not an annvq index (no manifest.json, not an annvq HDF5 file)")


def append(path: str | os.PathLike, x: Any, ids: Any = None) -> np.ndarray:
    """Encode ``x`` with the index stored at directory ``path`` and add it as a new segment, in O(len(x)).

    Returns the new ids. The stored index is replaced atomically: an interrupted append leaves it as it was.
    """
    if not IndexDirectory.holds_index(path):
        load(path)  # raises the FormatError that names what is there
        raise InvalidInputError(f"{path}: a single-file index; convert it with annvq migrate first")
    return append_to(path, x, ids)


def compact(path: str | os.PathLike, full: bool = True) -> CommitStats:
    """Merge the segments of the index stored at ``path`` (all into one, or as its merge policy says)."""
    index = load(path)
    if not isinstance(index.storage, IndexDirectory):
        raise InvalidInputError(f"{path}: a single-file index; convert it with annvq migrate first")
    index.compact(full=full)
    return index.storage.commit(index)


def migrate(src: str | os.PathLike, dst: str | os.PathLike) -> CommitStats:
    """Convert a single-file index of annvq 0.1 into the directory format at ``dst``."""
    if Path(dst).exists():
        raise InvalidInputError(f"{dst}: exists; migrate writes a new directory")
    return save(load(src), dst)
