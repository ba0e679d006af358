"""Per-index state of the service and its durability: write-ahead logs, checkpoints, recovery, training jobs.

Layout of ``data_dir/<name>/``::

    meta.json           dim, spec (all fields) and metric, written once when the index is created
    index-<lsn>.h5      checkpoint of a trained index (annvq.io.save), covering log records up to lsn
    raw-<lsn>.h5        checkpoint of an untrained index: the raw vectors waiting for training
    wal-<lsn>.log       write-ahead log (see server.wal) holding records from lsn on

An add or delete is checked against the current state, appended to the log and synced, then applied in
memory, and only then acknowledged. A checkpoint (every ``checkpoint_ops`` operations, every
``checkpoint_seconds``, after training and on shutdown) writes a new checkpoint file atomically, starts a
fresh log and deletes the older files. Recovery loads the newest checkpoint and replays the log records
after it; a torn last record is cut away. Creating and dropping an index rename whole directories, so
neither is ever half done.

Threads: searches and reads hold an index's read lock; writers serialise on the index's write mutex and
take the write lock only to apply a change, so a search never sees half of a batch. Training runs on a
copy: the job snapshots the data, trains a new index outside any lock, then, under the write mutex,
replays the operations logged meanwhile and swaps the new index in.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import annvq
from annvq._validate import as_ids, missing_ids
from annvq.errors import AnnvqError, DuplicateIdError, FormatError, InvalidInputError, NotTrainedError
from annvq.index.base import BaseIndex
from annvq.io import atomic_h5
from annvq.spec import ADDITIVE, IndexSpec, as_spec

from .config import ServerConfig
from .errors import ApiError, index_not_found
from .wal import OP_ADD, OP_DELETE, LogReader, Record, WriteAheadLog, fsync_dir

log = logging.getLogger("annvq.server")

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_NAME_RE = re.compile(NAME_PATTERN)
_CKPT_RE = re.compile(r"^(index|raw)-(\d{20})\.h5$")
_WAL_RE = re.compile(r"^wal-(\d{20})\.log$")
_MAX_ID = np.iinfo(np.int64).max
_REENCODE_CHUNK = 65536
_KEPT_JOBS = 16


class RWLock:
    """Many readers or one writer; a waiting writer holds back new readers so writes are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class IdSet:
    """The sorted external ids of one index: membership in O(m log n), the next free id in O(1)."""

    def __init__(self, ids: np.ndarray | None = None) -> None:
        self.sorted = np.sort(np.asarray(ids, dtype=np.int64)) if ids is not None else np.empty(0, np.int64)

    def __len__(self) -> int:
        return int(self.sorted.shape[0])

    def next_id(self) -> int:
        return int(self.sorted[-1]) + 1 if len(self) else 0

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are present."""
        if not len(self):
            return np.zeros(ids.shape[0], dtype=bool)
        pos = np.minimum(np.searchsorted(self.sorted, ids), len(self) - 1)
        return self.sorted[pos] == ids

    def add(self, ids: np.ndarray) -> None:
        ids = np.sort(ids)
        if len(self) and ids[0] <= self.sorted[-1]:
            self.sorted = np.sort(np.concatenate([self.sorted, ids]), kind="stable")
        else:
            self.sorted = np.concatenate([self.sorted, ids])

    def remove(self, ids: np.ndarray) -> None:
        self.sorted = np.delete(self.sorted, np.searchsorted(self.sorted, ids))


class RawBuffer:
    """Raw vectors added before the index is trained: (ids, float32 rows) chunks in arrival order.

    Chunks are never modified in place, so arrays handed out by :meth:`arrays` stay valid after later changes.
    """

    def __init__(self, d: int) -> None:
        self.d = d
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.n = 0

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        return self.n * (8 + 4 * self.d)

    def append(self, ids: np.ndarray, x: np.ndarray) -> None:
        self._chunks.append((ids, x))
        self.n += ids.shape[0]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, vectors), consolidated into one chunk."""
        if len(self._chunks) != 1:
            ids = np.concatenate([c[0] for c in self._chunks]) if self._chunks else np.empty(0, np.int64)
            x = np.concatenate([c[1] for c in self._chunks]) if self._chunks else np.empty((0, self.d), np.float32)
            self._chunks = [(ids, x)]
        return self._chunks[0]

    def remove(self, ids: np.ndarray) -> None:
        all_ids, x = self.arrays()
        keep = ~np.isin(all_ids, ids)
        self._chunks = [(all_ids[keep], x[keep])]
        self.n = int(keep.sum())

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Rows for ``ids``; raises UnknownIdError naming the missing ones."""
        all_ids, x = self.arrays()
        order = np.argsort(all_ids)
        pos = np.minimum(np.searchsorted(all_ids, ids, sorter=order), max(self.n - 1, 0))
        if not self.n or not np.array_equal(all_ids[order[pos]], ids):
            missing_ids(ids, all_ids)
        return x[order[pos]]

    def clear(self) -> None:
        self._chunks, self.n = [], 0


@dataclass
class Job:
    """A background training job and what a client may poll about it."""

    id: str
    index: str
    n_train: int | None = None
    status: str = "queued"  # queued | running | succeeded | failed | cancelled
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    exc: BaseException | None = field(default=None, repr=False)
    future: Future | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    def finish(self, status: str, exc: BaseException | None = None) -> None:
        self.status, self.exc, self.finished_at = status, exc, time.time()
        if exc is not None:
            self.error = str(exc) or type(exc).__name__

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "index": self.index, "status": self.status, "n_train": self.n_train,
                "error": self.error, "created_at": self.created_at, "started_at": self.started_at,
                "finished_at": self.finished_at}


class IndexState:
    """Everything the service holds for one index; see the module docstring for the locking rules."""

    def __init__(self, name: str, path: Path, meta: dict[str, Any], index: BaseIndex, pending: RawBuffer,
                 lsn: int) -> None:
        self.name, self.path, self.meta = name, path, meta
        self.dim, self.metric = int(meta["dim"]), str(meta["metric"])
        self.index = index
        self.pending = pending
        self.ids = IdSet(index.ids if index.is_trained else pending.arrays()[0])
        self.lsn = self.ckpt_lsn = lsn
        self.wal: WriteAheadLog | None = None
        self.write_mutex = threading.Lock()
        self.rw = RWLock()
        self.ops_since_ckpt = 0
        self.dirty = False
        self.last_ckpt = time.monotonic()
        self.jobs: dict[str, Job] = {}
        self.job: Job | None = None
        self.delta: list[tuple[int, np.ndarray, np.ndarray | None]] | None = None
        self.dropped = False

    def spec_model(self) -> IndexSpec:
        return IndexSpec.validated(**self.meta["spec"])

    def describe(self) -> dict[str, Any]:
        """Facts about the index; call with the read lock held."""
        index = self.index
        spec = self.spec_model()
        return {
            "name": self.name, "dim": self.dim, "metric": self.metric, "spec": spec.to_string(),
            "spec_options": spec.options, "trained": index.is_trained, "ntotal": len(self.ids),
            "encoded": index.ntotal if index.is_trained else 0, "pending": len(self.pending),
            "code_size": index.code_size, "memory_bytes": self.pending.nbytes + _array_bytes(index), "lsn": self.lsn,
            "checkpoint_lsn": self.ckpt_lsn, "job": self.job.to_dict() if self.job else None,
        }


@cache
def _accepted_search_params(cls: type[BaseIndex]) -> frozenset[str]:
    """Keyword parameters an index type's search names explicitly (``**params`` catch-alls don't count)."""
    names: set[str] = set()
    for fn in (cls.search, cls._search):
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                names.add(p.name)
    return frozenset(names - {"self", "xq", "k"})


def _model_bytes(spec: IndexSpec, dim: int) -> int:
    """Rough float32 bytes of what training learns: codebooks, OPQ rotation, IVF centroids."""
    codebooks = (1 << spec.nbits) * dim * (spec.M if spec.codec in ADDITIVE else 1)
    rotation = dim * dim if spec.codec == "opq" else 0
    return 4 * (codebooks + rotation + (spec.nlist or 0) * dim)


def _array_bytes(obj: Any, depth: int = 2) -> int:
    """Bytes of the NumPy arrays an object holds, looking ``depth`` levels into its attributes (codec, coarse...)."""
    total = 0
    for v in vars(obj).values():
        if isinstance(v, np.ndarray):
            total += int(v.nbytes)
        elif depth > 1 and hasattr(v, "__dict__") and not isinstance(v, (type, Path)):
            total += _array_bytes(v, depth - 1)
    return total


def _save_raw(path: Path, ids: np.ndarray, x: np.ndarray) -> None:
    """Write raw (ids, vectors) atomically: temporary file, fsync, rename."""
    with atomic_h5(path) as f:
        f.attrs["format"] = "annvq-raw"
        f.create_dataset("ids", data=ids)
        f.create_dataset("vectors", data=x)


def _load_raw(path: Path, d: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with h5py.File(path, "r") as f:
            ids = np.asarray(f["ids"][()], dtype=np.int64)
            x = np.asarray(f["vectors"][()], dtype=np.float32).reshape(-1, d)
    except (OSError, KeyError, ValueError) as exc:
        raise FormatError(f"{path}: unreadable raw-vector checkpoint: {exc}") from None
    if ids.shape[0] != x.shape[0]:
        raise FormatError(f"{path}: {ids.shape[0]} ids for {x.shape[0]} vectors")
    return ids, x


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


class Store:
    """All indexes of one data directory. Methods are blocking and thread-safe; the web app calls them from pools."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.indexes: dict[str, IndexState] = {}
        self._lock = threading.Lock()  # guards create/drop; taken before any index's write mutex
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._train_slots = threading.Semaphore(config.train_workers)
        self.closing = False

    # --- life cycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Recover every index in the data directory, then start the periodic checkpointer."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.data_dir.iterdir()):
            if entry.name.startswith((".creating-", ".trash-")):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_dir() and _NAME_RE.match(entry.name):
                st = self._recover(entry)
                self.indexes[st.name] = st
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="annvq-checkpoint", daemon=True)
        self._checkpointer.start()
        log.info("store open at %s: %d index(es)", self.data_dir, len(self.indexes))

    def close(self) -> None:
        """Checkpoint every index with unsaved operations and close its log; running training is abandoned."""
        self.closing = True
        self._stop.set()
        self._wake.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        with self._lock:
            states = list(self.indexes.values())
        for st in states:
            with st.write_mutex:
                if st.dirty:
                    try:
                        self._checkpoint(st)
                    except Exception:  # noqa: BLE001 - the log still holds every operation
                        log.exception("final checkpoint of %r failed; its log will be replayed at start", st.name)
                if st.wal is not None:
                    st.wal.close()

    # --- lookups ------------------------------------------------------------------------------
    def get(self, name: str) -> IndexState:
        st = self.indexes.get(name)
        if st is None:
            raise index_not_found(name)
        return st

    def _check_writable(self, st: IndexState) -> None:
        """Call with the write mutex held."""
        if st.dropped:
            raise index_not_found(st.name)
        if self.closing:
            raise ApiError(503, "shutting_down", "the service is shutting down")

    def names(self) -> list[str]:
        return sorted(self.indexes)

    def describe(self, name: str) -> dict[str, Any]:
        st = self.get(name)
        with st.rw.read():
            return st.describe()

    # --- create / drop ------------------------------------------------------------------------
    def create(self, name: str, dim: int, spec: str | dict[str, Any] | IndexSpec, metric: str) -> dict[str, Any]:
        """Create an empty, untrained index; the spec is checked by building the index."""
        if not _NAME_RE.match(name):
            raise ApiError(422, "invalid_name", f"index name {name!r} must match {NAME_PATTERN}")
        if dim > self.config.max_dim:
            raise ApiError(422, "limit_exceeded", f"dim {dim} exceeds this server's max_dim {self.config.max_dim}")
        spec = as_spec(spec)
        if (need := _model_bytes(spec, dim)) > self.config.max_codec_bytes:
            raise ApiError(422, "limit_exceeded", f"spec {spec.to_string()} for dim {dim} needs ~{need} bytes of "
                           f"codebooks and centroids, over this server's max_codec_bytes {self.config.max_codec_bytes}")
        try:
            index = annvq.index_factory(dim, spec, metric)
        except AnnvqError:
            raise
        except (TypeError, ValueError) as exc:  # a codec rejecting spec options
            raise annvq.SpecError(f"invalid index spec: {exc}") from None
        meta = {"dim": dim, "spec": spec.model_dump(), "metric": index.metric}
        with self._lock:
            if self.closing:
                raise ApiError(503, "shutting_down", "the service is shutting down")
            if name in self.indexes:
                raise ApiError(409, "index_exists", f"an index named {name!r} already exists")
            tmp = self.data_dir / f".creating-{name}-{uuid.uuid4().hex}"
            tmp.mkdir()
            _write_json(tmp / "meta.json", meta)
            fsync_dir(tmp)
            path = self.data_dir / name
            os.rename(tmp, path)
            fsync_dir(self.data_dir)
            st = IndexState(name, path, meta, index, RawBuffer(dim), 0)
            st.wal = WriteAheadLog.create(path / f"wal-{1:020d}.log")  # recovery creates it if we crash first
            self.indexes[name] = st
        return self.describe(name)

    def drop(self, name: str) -> None:
        with self._lock:
            st = self.get(name)
            with st.write_mutex:
                st.dropped = True
                del self.indexes[name]
                if st.wal is not None:
                    st.wal.close()
                trash = self.data_dir / f".trash-{name}-{uuid.uuid4().hex}"
                os.rename(st.path, trash)
                fsync_dir(self.data_dir)
        shutil.rmtree(trash, ignore_errors=True)

    # --- writes -------------------------------------------------------------------------------
    def add(self, name: str, x, ids=None) -> tuple[np.ndarray, bool]:
        """Durably add vectors; returns their ids (next free ids when ``ids`` is None) and whether they
        are kept raw, waiting for training."""
        st = self.get(name)
        x = st.index._prepare(x, "vectors")
        n = x.shape[0]
        if ids is not None:
            ids = as_ids(ids, n)
            if ids.size and (ids.min() < 0):
                raise InvalidInputError("ids: must be non-negative (-1 marks an empty result slot)")
        with st.write_mutex:
            self._check_writable(st)
            if ids is None:
                start = st.ids.next_id()
                if start > _MAX_ID - n + 1:
                    raise InvalidInputError("ids: no free ids above the largest stored id; pass ids explicitly")
                new_ids = np.arange(start, start + n, dtype=np.int64)
            else:
                clash = ids[st.ids.contains(ids)]
                if clash.size:
                    raise DuplicateIdError(f"ids already in the index: {', '.join(map(str, clash[:10]))}")
                new_ids = ids
            self._log_and_apply(st, Record(OP_ADD, st.lsn + 1, new_ids, x))
            return new_ids, not st.index.is_trained

    def delete(self, name: str, ids) -> int:
        """Durably delete vectors by id; unknown or repeated ids are refused before anything changes."""
        st = self.get(name)
        ids = np.atleast_1d(np.asarray(ids))
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or not ids.size:
            raise InvalidInputError("ids: expected a non-empty list of integer ids")
        ids = ids.astype(np.int64)
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise InvalidInputError("ids: repeated ids in one delete")
        with st.write_mutex:
            self._check_writable(st)
            missing_ids(ids[~st.ids.contains(ids)], np.empty(0, np.int64))
            self._log_and_apply(st, Record(OP_DELETE, st.lsn + 1, ids))
        return int(ids.shape[0])

    def _log_and_apply(self, st: IndexState, rec: Record) -> None:
        """Append ``rec`` durably, then apply it. Call with the write mutex held, after all checks."""
        try:
            st.wal.append(rec)
        except OSError as exc:
            log.error("write-ahead log of %r failed: %s", st.name, exc)
            raise ApiError(503, "storage_error", f"could not write the log durably: {exc}") from None
        st.lsn = rec.lsn
        self._apply(st, rec)
        if st.ops_since_ckpt >= self.config.checkpoint_ops:
            self._wake.set()

    @staticmethod
    def _apply(st: IndexState, rec: Record) -> None:
        with st.rw.write():
            if rec.op == OP_ADD:
                if st.index.is_trained:
                    st.index.add(rec.vectors, rec.ids)
                else:
                    st.pending.append(rec.ids, rec.vectors)
                st.ids.add(rec.ids)
            else:
                if st.index.is_trained:
                    st.index.remove(rec.ids)
                else:
                    st.pending.remove(rec.ids)
                st.ids.remove(rec.ids)
        if st.delta is not None:
            st.delta.append((rec.op, rec.ids, rec.vectors))
        st.ops_since_ckpt += 1
        st.dirty = True

    # --- reads --------------------------------------------------------------------------------
    def search(self, name: str, xq, k: int, **params: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)`` from the index; params the index type does not name (e.g. nprobe on a flat index) are dropped."""
        st = self.get(name)
        with st.rw.read():
            index = st.index
            if not index.is_trained:
                raise NotTrainedError(f"index {name!r} is not trained ({len(st.pending)} raw vectors waiting): "
                                      f"POST /indexes/{name}/train first")
            accepted = _accepted_search_params(type(index))
            return index.search(xq, k, **{p: v for p, v in params.items() if v is not None and p in accepted})

    def retrieve(self, name: str, ids) -> tuple[np.ndarray, bool]:
        """Vectors for ``ids``: reconstructions when trained, the exact raw vectors before; and which it is."""
        st = self.get(name)
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        with st.rw.read():
            if st.index.is_trained:
                return st.index.reconstruct_batch(ids), False
            return st.pending.get(ids), True

    # --- training -----------------------------------------------------------------------------
    def start_training(self, name: str, x=None) -> Job:
        """Queue a training job on ``x`` or, when None, on the raw vectors added so far."""
        st = self.get(name)
        if x is not None:
            x = st.index._prepare(x, "vectors")
        with st.write_mutex:
            self._check_writable(st)
            if st.job is not None and not st.job.done:
                raise ApiError(409, "training_in_progress", f"index {name!r} is already training (job {st.job.id})")
            if x is None and st.index.is_trained:
                raise ApiError(409, "already_trained",
                               f"index {name!r} is trained; send training vectors to retrain it")
            if x is None and not len(st.pending):
                raise InvalidInputError(f"index {name!r} holds no vectors to train on: "
                                        "add vectors first or send training vectors")
            job = Job(uuid.uuid4().hex[:16], name)
            st.jobs[job.id] = job
            for old in list(st.jobs)[:-_KEPT_JOBS]:
                del st.jobs[old]
            st.job = job
            job.future = Future()
            threading.Thread(target=self._run_job, args=(st, job, x), name=f"annvq-train-{name}", daemon=True).start()
        return job

    def _run_job(self, st: IndexState, job: Job, x: np.ndarray | None) -> None:
        """Daemon thread of one job: waits for a training slot, trains, resolves ``job.future``."""
        with self._train_slots:
            self._train(st, job, x)
        job.future.set_result(job)

    def job(self, name: str, job_id: str) -> Job:
        job = self.get(name).jobs.get(job_id)
        if job is None:
            raise ApiError(404, "job_not_found", f"index {name!r} has no job {job_id!r}")
        return job

    def _train(self, st: IndexState, job: Job, x: np.ndarray | None) -> None:
        try:
            with st.write_mutex:
                if st.dropped or self.closing:
                    job.finish("cancelled")
                    return
                job.status, job.started_at = "running", time.time()
                old = st.index
                snap_ids, snap_x = (old.ids.copy(), None) if old.is_trained else st.pending.arrays()
                st.delta = []
            train_x = x if x is not None else snap_x
            job.n_train = int(train_x.shape[0])
            new = annvq.index_factory(st.dim, st.spec_model(), st.metric)
            new.train(train_x)
            if old.is_trained:
                self._reencode(st, old, new, snap_ids)
            elif snap_ids.size:
                new.add(snap_x, snap_ids)
            with st.write_mutex:
                if st.dropped or self.closing:
                    st.delta = None
                    job.finish("cancelled")
                    return
                for op, ids, vectors in st.delta:
                    if op == OP_ADD:
                        new.add(vectors, ids)
                    elif (present := ids[np.isin(ids, new.ids)]).size:
                        new.remove(present)
                with st.rw.write():
                    st.index = new
                    st.pending.clear()
                st.delta = None
                st.dirty = True
                try:
                    self._checkpoint(st)
                except Exception:  # noqa: BLE001 - st.dirty stays set, the checkpointer retries
                    log.exception("checkpoint after training %r failed; will retry", st.name)
            job.finish("succeeded")
            log.info("index %r trained on %d vectors (job %s)", st.name, job.n_train, job.id)
        except BaseException as exc:  # noqa: BLE001 - the job records whatever stopped it
            with st.write_mutex:
                st.delta = None
            job.finish("failed", exc)
            log.warning("training job %s of %r failed: %s", job.id, st.name, exc)

    @staticmethod
    def _reencode(st: IndexState, old: BaseIndex, new: BaseIndex, ids: np.ndarray) -> None:
        """Move the vectors of a trained index into a retrained one, from their reconstructions.

        Chunks are read under the read lock; ids deleted meanwhile are skipped (their delete, logged in
        ``st.delta``, finds nothing to remove later).
        """
        for s in range(0, ids.shape[0], _REENCODE_CHUNK):
            chunk = ids[s:s + _REENCODE_CHUNK]
            with st.rw.read():
                chunk = chunk[st.ids.contains(chunk)]
                x = old.reconstruct_batch(chunk) if chunk.size else None
            if x is not None:
                new.add(x, chunk)

    # --- checkpoints and recovery -------------------------------------------------------------
    def _checkpoint(self, st: IndexState) -> None:
        """Save the state at ``st.lsn`` atomically, start a fresh log, delete older files. Hold the write mutex."""
        lsn = st.lsn
        if st.index.is_trained:
            target = st.path / f"index-{lsn:020d}.h5"
            # saving an index with lazy columns (IVF with Refine) pulls them into memory: no search meanwhile
            with st.rw.write() if type(st.index).lazy_columns else nullcontext():
                annvq.save(st.index, target)
        else:
            target = st.path / f"raw-{lsn:020d}.h5"
            _save_raw(target, *st.pending.arrays())
        fsync_dir(st.path)
        wal_path = st.path / f"wal-{lsn + 1:020d}.log"
        if st.wal is None or st.wal.path != wal_path:
            new_wal = WriteAheadLog.create(wal_path)
            if st.wal is not None:
                st.wal.close()
            st.wal = new_wal
        for p in st.path.iterdir():
            if (_CKPT_RE.match(p.name) or _WAL_RE.match(p.name)) and p not in (target, wal_path):
                p.unlink()
        st.ckpt_lsn, st.ops_since_ckpt, st.dirty, st.last_ckpt = lsn, 0, False, time.monotonic()

    def _checkpoint_loop(self) -> None:
        tick = min(1.0, self.config.checkpoint_seconds / 4)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                states = list(self.indexes.values())
            for st in states:
                due = st.ops_since_ckpt >= self.config.checkpoint_ops or \
                    time.monotonic() - st.last_ckpt >= self.config.checkpoint_seconds
                if not (st.dirty and due):
                    continue
                with st.write_mutex:
                    if st.dropped or not st.dirty:
                        continue
                    try:
                        self._checkpoint(st)
                    except Exception:  # noqa: BLE001 - keep the thread alive; the log holds every operation
                        st.last_ckpt = time.monotonic()  # retry after another interval
                        log.exception("checkpoint of %r failed; its log keeps every operation", st.name)

    def _recover(self, path: Path) -> IndexState:
        """Load the newest checkpoint of the index at ``path`` and replay its log after it."""
        name = path.name
        try:
            meta = json.loads((path / "meta.json").read_text())
            dim, metric = int(meta["dim"]), str(meta["metric"])
            spec = IndexSpec.validated(**meta["spec"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"{path}: unreadable meta.json: {exc}") from None
        for junk in path.glob(".*"):  # temporary files of interrupted checkpoints
            junk.unlink()
        ckpts = sorted((int(m.group(2)), m.group(1) == "index", p) for p in path.iterdir()
                        if (m := _CKPT_RE.match(p.name)))
        index = annvq.index_factory(dim, spec, metric)
        pending = RawBuffer(dim)
        lsn = 0
        if ckpts:
            lsn, trained, ckpt = ckpts[-1]
            if trained:
                index = annvq.load(ckpt)
                if index.d != dim or index.metric != metric:
                    raise FormatError(f"{ckpt}: holds a d={index.d} {index.metric} index, "
                                      f"meta.json says d={dim} {metric}")
            else:
                pending.append(*_load_raw(ckpt, dim))
        st = IndexState(name, path, meta, index, pending, lsn)
        wals = sorted((int(m.group(1)), p) for p in path.iterdir() if (m := _WAL_RE.match(p.name)))
        replayed, reader = 0, None
        for i, (_, wal_path) in enumerate(wals):
            reader = LogReader(wal_path)
            for rec in reader:
                if rec.lsn <= st.ckpt_lsn:
                    continue
                if rec.lsn != st.lsn + 1:
                    raise FormatError(f"{wal_path}: record {rec.lsn} follows {st.lsn}: the log has a gap")
                self._apply(st, rec)
                st.lsn = rec.lsn
                replayed += 1
            if reader.torn:
                if i != len(wals) - 1:
                    raise FormatError(f"{wal_path}: damaged record at byte {reader.valid_end} before the last log")
                log.warning("%s: cut %d bytes of a torn last record", wal_path, reader.size - reader.valid_end)
        if wals:
            st.wal = WriteAheadLog.open(wals[-1][1], reader.valid_end)
        else:
            st.wal = WriteAheadLog.create(path / f"wal-{st.lsn + 1:020d}.log")
        st.ops_since_ckpt = replayed
        st.dirty = replayed > 0
        log.info("recovered %r: checkpoint lsn %d, %d logged operation(s) replayed, %d vectors",
                 name, st.ckpt_lsn, replayed, len(st.ids))
        return st
