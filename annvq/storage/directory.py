"""An index on disk is a directory: a manifest naming the model file, the segment files and their
tombstone files. Files never change once written; the manifest is replaced atomically.

Layout::

    manifest.json          {"body": {...}, "crc32": ...}: format, model, segments, counters
    model-<fingerprint>.h5 the trained model (codec, coarse quantizer, index parameters)
    seg-<id>-<tag>.h5      a sealed segment: ids, codes, list offsets, norms; exact vectors (row-wise)
    tomb-<id>-<tag>.h5     the deleted rows of a segment, when it has any

A commit (``save`` to the index's own directory, a service checkpoint) seals the growing segment,
writes the files it lacks (new segments, changed tombstones, a retrained model), replaces the
manifest, then deletes the files the manifest no longer names. Its cost is O(new data), never a
rewrite of the sealed segments. A crash at any point leaves the previous manifest and its files, or
the new ones: the directory always loads.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnnvqError, FormatError
from ..index.base import BaseIndex, positive_int
from ..index.compaction import TieredMergePolicy
from ..index.segments import Segment
from .h5 import FORMAT_VERSION, StoredFile, atomic_path, crc, dumps, fsync_dir, write_file

MANIFEST = "manifest.json"
DIR_FORMAT = "annvq-index"
_OWNED_PREFIXES = ("model-", "seg-", "tomb-")


@dataclass
class StoredSegment:
    """Where a segment is stored and which of its tombstones are written."""

    directory: Path
    file: str
    digest: int
    tomb_file: str | None = None
    tomb_digest: int = 0
    tomb_version: int = 0


@dataclass
class CommitStats:
    """What a commit wrote."""

    files: int = 0
    bytes: int = 0


class IndexDirectory:
    """One index directory: load it, commit an index to it, append to it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).resolve()
        self.metadata: dict[str, Any] = {}  # the caller's JSON metadata kept in the manifest (e.g. a log position)
        self._skipped: list[dict[str, Any]] = []  # manifest entries of segments a partial load left out
        self._pending: set[str] = set()  # segment files written ahead of the commit that names them
        self._pending_lock = threading.Lock()

    @staticmethod
    def holds_index(path: str | os.PathLike) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the directory for the duration of a commit (one writer per directory)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- manifest ----------------------------------------------------------------------------------
    def _fail(self, part: str, why: str) -> FormatError:
        return FormatError(f"{self.path / part}: {why}")

    def read_manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise FormatError(f"{self.path}: no index here ({MANIFEST} missing)") from None
        except (OSError, ValueError) as exc:
            raise self._fail(MANIFEST, f"unreadable: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict):
            raise self._fail(MANIFEST, "not an annvq manifest")
        body = doc["body"]
        if crc(dumps(body)) != doc.get("crc32"):
            raise self._fail(MANIFEST, "checksum mismatch (the file is damaged)")
        if body.get("format") != DIR_FORMAT:
            raise self._fail(MANIFEST, f"format {body.get('format')!r} is not {DIR_FORMAT!r}")
        if body.get("format_version") != FORMAT_VERSION:
            raise self._fail(MANIFEST, f"format version {body.get('format_version')!r}; this annvq reads "
                                       f"{FORMAT_VERSION}")
        segs = body.get("segments")
        if not isinstance(segs, list) or not all(isinstance(e, dict) for e in segs):
            raise self._fail(MANIFEST, "segments: not a list of entries")
        for key in ("next_segment_id", "next_id", "ntotal"):
            if not isinstance(body.get(key), int) or body[key] < 0:
                raise self._fail(MANIFEST, f"{key}: not a non-negative integer")
        return body

    def _write_manifest(self, body: dict[str, Any]) -> int:
        data = json.dumps({"body": body, "crc32": crc(dumps(body))}, sort_keys=True).encode()
        with atomic_path(self.path / MANIFEST) as tmp:
            tmp.write_bytes(data)
        return len(data)

    # --- load ----------------------------------------------------------------------------------------
    def load(self, keep: Callable[[dict[str, Any]], bool] | None = None) -> BaseIndex:
        """The stored index, every file verified. ``keep`` (manifest entry -> bool) loads only some
        segments; the others stay named in the manifest of the next commit."""
        body = self.read_manifest()
        index = self._load_model(body)
        segments, self._skipped = [], []
        try:
            for entry in body["segments"]:
                if keep is not None and not keep(entry):
                    self._skipped.append(entry)
                    continue
                segments.append(self._load_segment(index, entry))
            index.set_segments(segments, body["next_segment_id"], body["next_id"])
        except FormatError as exc:
            for s in segments:
                s.close()
            if str(exc).startswith(str(self.path)):
                raise
            raise self._fail(MANIFEST, str(exc)) from None
        if keep is None and index.ntotal != body["ntotal"]:
            raise self._fail(MANIFEST, f"ntotal {body['ntotal']} but the segments hold {index.ntotal} live vectors")
        metadata = body.get("metadata")
        self.metadata = metadata if isinstance(metadata, dict) else {}
        options = body.get("options") or {}
        try:
            index.seal_rows = positive_int(options.get("seal_rows", index.seal_rows), "seal_rows")
            index.merge_policy = TieredMergePolicy.model_validate(options.get("merge_policy") or {})
        except (AnnvqError, ValueError) as exc:
            raise self._fail(MANIFEST, f"options: {exc}") from None
        index.storage = self
        index.auto_compact = keep is None and index.auto_compact
        return index

    def _load_model(self, body: dict[str, Any]) -> BaseIndex:
        model = body.get("model")
        if model is None:
            if not isinstance(body.get("untrained"), dict):
                raise self._fail(MANIFEST, "neither a model file nor untrained parameters")
            try:
                return BaseIndex.from_state(body["untrained"], None)
            except FormatError as exc:
                raise self._fail(MANIFEST, f"untrained parameters: {exc}") from None
        if not isinstance(model, dict) or not isinstance(model.get("file"), str):
            raise self._fail(MANIFEST, "model: not a file entry")
        stored = self._open(model["file"], "annvq-model", model.get("digest"))
        try:
            index = BaseIndex.from_state(stored.params, stored.arrays())
        except FormatError as exc:
            raise self._fail(model["file"], str(exc)) from None
        finally:
            stored.close()
        if model.get("fingerprint") != index.fingerprint():
            raise self._fail(model["file"], "model fingerprint does not match the manifest")
        return index

    def _open(self, name: Any, kind: str, digest: Any) -> StoredFile:
        if not isinstance(name, str) or "/" in name or not name.startswith(_OWNED_PREFIXES):
            raise self._fail(MANIFEST, f"bad file name {name!r}")
        stored = StoredFile(self.path / name, kind)
        if stored.digest != digest:
            stored.close()
            raise self._fail(name, "not the file the manifest names (header checksum differs)")
        return stored

    def _load_segment(self, index: BaseIndex, entry: dict[str, Any]) -> Segment:
        stored = self._open(entry.get("file"), "annvq-segment", entry.get("digest"))
        try:
            p = stored.params
            fp = index.fingerprint() if index.is_trained else None
            if p.get("seg_id") != entry.get("id") or p.get("model") != fp:
                raise self._fail(entry["file"], "segment belongs to another index or model")
            cols: dict[str, Any] = stored.arrays()
            if "vectors" in stored.header["lazy"]:
                cols["vectors"] = stored.lazy("vectors")
            dead = np.empty(0, np.int64)
            tomb = entry.get("tombstones")
            if tomb is not None:
                tf = self._open(tomb.get("file") if isinstance(tomb, dict) else None, "annvq-tombstones",
                                tomb.get("digest") if isinstance(tomb, dict) else None)
                try:
                    if tf.params.get("seg_id") != entry.get("id"):
                        raise self._fail(tomb["file"], "tombstones of another segment")
                    dead = tf.array("rows")
                finally:
                    tf.close()
            try:
                seg = index.segment_from_columns(int(entry["id"]), cols, dead)
            except FormatError as exc:
                raise self._fail(entry["file"], str(exc)) from None
            if seg.n != entry.get("rows"):
                raise self._fail(entry["file"], f"holds {seg.n} rows, the manifest says {entry.get('rows')}")
        except BaseException:
            stored.close()
            raise
        if seg.vectors is None:
            stored.close()
        seg.stored = StoredSegment(self.path, entry["file"], entry["digest"],
                                   tomb.get("file") if tomb else None, tomb.get("digest", 0) if tomb else 0,
                                   seg.tomb_version)
        return seg

    # --- commit --------------------------------------------------------------------------------------
    def commit(self, index: BaseIndex, metadata: dict[str, Any] | None = None) -> CommitStats:
        """Store ``index`` here: seal its growing segment, write what the directory lacks, replace the
        manifest, delete unreferenced files. ``metadata`` (JSON) replaces the caller's metadata."""
        stats = CommitStats()
        with self._locked():
            index.seal()
            if metadata is not None:
                self.metadata = dict(metadata)
            body: dict[str, Any] = {"format": DIR_FORMAT, "format_version": FORMAT_VERSION, "model": None,
                                    "untrained": None, "segments": [], "next_segment_id": index.next_segment_id,
                                    "next_id": index.next_id, "ntotal": index.ntotal, "metadata": self.metadata,
                                    "options": {"seal_rows": index.seal_rows,
                                                "merge_policy": index.merge_policy.model_dump()}}
            if index.is_trained:
                body["model"] = self._write_model(index, stats)
                body["fingerprint"] = index.fingerprint()
            else:
                body["untrained"] = index.untrained_state()
            written: list[Segment] = []
            for seg in index.segments:
                if not self._has(seg):
                    self._write_segment(index, seg, stats)
                    written.append(seg)
                if seg.tomb_version != seg.stored.tomb_version or (seg.ndeleted and seg.stored.tomb_file is None):
                    self._write_tombstones(seg, stats)
                body["segments"].append(self._entry(seg))
            body["segments"].extend(self._skipped)
            body["ntotal"] += sum(e["rows"] - (e["tombstones"] or {}).get("count", 0) for e in self._skipped)
            stats.bytes += self._write_manifest(body)
            stats.files += 1
            with self._pending_lock:
                self._pending -= {e["file"] for e in body["segments"]}
                self._collect(body, self._pending)
        self._lazy_vectors(written)
        index.storage = self
        return stats

    def store_segment(self, index: BaseIndex, seg: Segment) -> CommitStats:
        """Write a sealed segment's file ahead of the commit that will name it (e.g. a merge built in the
        background), so that commit only has to write the manifest. Its vectors are then read from disk."""
        stats = CommitStats()
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_segment(index, seg, stats)
        with self._pending_lock:
            self._pending.add(seg.stored.file)
        self._lazy_vectors([seg])
        return stats

    def discard_segment(self, seg: Segment) -> None:
        """Drop a segment written by :meth:`store_segment` that no commit will name."""
        if isinstance(seg.stored, StoredSegment) and seg.stored.directory == self.path:
            with self._pending_lock:
                self._pending.discard(seg.stored.file)
            seg.close()
            (self.path / seg.stored.file).unlink(missing_ok=True)

    def _lazy_vectors(self, segments: list[Segment]) -> None:
        """Read the exact vectors of segments just written from their files and free the memory they held."""
        for seg in segments:
            if seg.vectors is not None and seg.vectors.in_memory:
                seg.vectors = StoredFile(self.path / seg.stored.file, "annvq-segment").lazy("vectors")

    def _has(self, seg: Segment) -> bool:
        st = seg.stored
        return isinstance(st, StoredSegment) and st.directory == self.path and (self.path / st.file).is_file()

    def _write_model(self, index: BaseIndex, stats: CommitStats) -> dict[str, Any]:
        fp = index.fingerprint()
        name = f"model-{fp[:20]}.h5"
        try:
            old = self.read_manifest().get("model") if self.holds_index(self.path) else None
        except FormatError:
            old = None
        if isinstance(old, dict) and old.get("file") == name and (self.path / name).is_file():
            return {"file": name, "digest": old.get("digest"), "fingerprint": fp}
        attrs, arrays = index.model_state()
        digest = write_file(self.path / name, "annvq-model", attrs, arrays)
        stats.files += 1
        stats.bytes += (self.path / name).stat().st_size
        return {"file": name, "digest": digest, "fingerprint": fp}

    def _write_segment(self, index: BaseIndex, seg: Segment, stats: CommitStats) -> None:
        cols = index.segment_columns(seg)
        vectors = cols.pop("vectors", None)
        params = {"seg_id": seg.seg_id, "rows": seg.n,
                  "model": index.fingerprint() if index.is_trained else None}
        name = f"seg-{seg.seg_id:08d}-{secrets.token_hex(3)}.h5"
        digest = write_file(self.path / name, "annvq-segment", params, cols,
                            {"vectors": vectors} if vectors is not None else None)
        stats.files += 1
        stats.bytes += (self.path / name).stat().st_size
        seg.stored = StoredSegment(self.path, name, digest, tomb_version=0 if not seg.ndeleted else -1)

    def _write_tombstones(self, seg: Segment, stats: CommitStats) -> None:
        st = seg.stored
        if seg.ndeleted:
            name = f"tomb-{seg.seg_id:08d}-{secrets.token_hex(3)}.h5"
            st.tomb_digest = write_file(self.path / name, "annvq-tombstones",
                                        {"seg_id": seg.seg_id, "count": seg.ndeleted},
                                        {"rows": seg.dead_rows().astype(np.int64)})
            st.tomb_file = name
            stats.files += 1
            stats.bytes += (self.path / name).stat().st_size
        else:
            st.tomb_file, st.tomb_digest = None, 0
        st.tomb_version = seg.tomb_version

    @staticmethod
    def _entry(seg: Segment) -> dict[str, Any]:
        st = seg.stored
        live = seg.ids[seg.live_rows()]
        return {"id": seg.seg_id, "file": st.file, "digest": st.digest, "rows": seg.n,
                "min_id": int(live.min()) if live.size else None, "max_id": int(live.max()) if live.size else None,
                "tombstones": {"file": st.tomb_file, "digest": st.tomb_digest, "count": seg.ndeleted}
                if st.tomb_file else None}

    def _collect(self, body: dict[str, Any], keep: set[str]) -> None:
        """Delete the files (and leftover temporary files) the manifest ``body`` does not name, but ``keep``."""
        named = {e["file"] for e in body["segments"]} | keep
        named |= {e["tombstones"]["file"] for e in body["segments"] if e.get("tombstones")}
        if body.get("model"):
            named.add(body["model"]["file"])
        for p in self.path.iterdir():
            if (p.name.startswith(_OWNED_PREFIXES) and p.name not in named) or _abandoned_temporary(p.name):
                p.unlink(missing_ok=True)
        fsync_dir(self.path)


def _abandoned_temporary(name: str) -> bool:
    """A temporary file (``.<name>.tmp-<pid>``) whose writing process no longer exists."""
    head, sep, pid = name.rpartition(".tmp-")
    if not sep or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def append_to(path: str | os.PathLike, x: Any, ids: Any = None) -> np.ndarray:
    """Encode ``x`` with the index stored at ``path`` and store it as a new segment, in O(len(x)).

    Only the model and the segments whose id range meets the new ids are read (to refuse duplicates).
    """
    directory = IndexDirectory(path)
    body = directory.read_manifest()
    if ids is None:
        lo = hi = None
    else:
        given = np.atleast_1d(np.asarray(ids))
        if given.dtype.kind not in "iu" or not given.size:
            lo = hi = None  # let add() name the problem
        else:
            lo, hi = int(given.min()), int(given.max())

    def overlaps(entry: dict[str, Any]) -> bool:
        if lo is None:
            return ids is not None or body["next_id"] + len(np.atleast_2d(x)) - 1 > np.iinfo(np.int64).max
        a, b = entry.get("min_id"), entry.get("max_id")
        return a is not None and b is not None and not (b < lo or a > hi)

    index = directory.load(keep=overlaps)
    index.auto_compact = False
    index.seal_rows = max(1, len(np.atleast_2d(x)))
    new_ids = index.add(x, ids)
    directory.commit(index)
    return new_ids
