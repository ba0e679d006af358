"""The service's domain layer: every index of one data directory, and what clients can do with them.

Methods are blocking and thread-safe; the web layer calls them from thread pools and maps the
exceptions they raise (server.errors, annvq.errors) to HTTP. Each index is isolated: one that fails
verification at start is marked damaged and refuses reads and writes (409, naming the file and
offset) while the others serve; it can be repaired or dropped through the API.

Two background threads keep indexes in shape: one checkpoints indexes with logged operations (after
``checkpoint_ops`` operations or ``checkpoint_seconds``; a failing checkpoint is retried with
exponential backoff and reported by ``/ready`` and the index's description), the other merges sealed
segments as the index's merge policy asks, reading them outside any lock and swapping the result in
under the write lock.

Sharded indexes (builds served from a Dask cluster, see server.sharded) share the same names and
methods: each method hands a sharded index's requests to :class:`~server.sharded.ShardedService`.
"""
from __future__ import annotations

import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import annvq
from annvq import BaseIndex, IndexSpec
from annvq.errors import FormatError, InvalidInputError
from annvq.index import Encoded
from annvq.spec import as_spec
from annvq.storage.wal import OP_ADD, OP_DELETE, Record

from .config import ServerConfig
from .durability import RepairReport, apply, checkpoint, initialise, recover, repair
from .errors import Conflict, IndexExists, IndexNotFound, JobNotFound, LimitExceeded, Unavailable
from .jobs import KEPT_JOBS, Job
from .sharded import ShardedService
from .state import IndexState, Meta

log = logging.getLogger("annvq.server")

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_NAME_RE = re.compile(NAME_PATTERN)


class IndexService:
    """All indexes of one data directory (see the module docstring)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.indexes: dict[str, IndexState] = {}
        self._lock = threading.Lock()  # guards create/drop; taken before any index's write mutex
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._train_slots = threading.Semaphore(config.train_workers)
        self.sharded = ShardedService(config)
        self.closing = False

    # --- life cycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Recover every index in the data directory (damaged ones are kept, marked), attach the sharded ones
        (connecting to the scheduler first, if any: ClusterError when it cannot be reached), start the
        background threads."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.sharded.open()
        for entry in sorted(self.data_dir.iterdir()):
            if entry.name.startswith((".creating-", ".trash-")):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_dir() and _NAME_RE.match(entry.name):
                self.indexes[entry.name] = recover(entry)
        for target, name in ((self._checkpoint_loop, "annvq-checkpoint"), (self._compaction_loop, "annvq-compact")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        damaged = [n for n, st in self.indexes.items() if st.damage]
        log.info("service open at %s: %d index(es), %d sharded%s", self.data_dir, len(self.indexes),
                 len(self.sharded.names()), f", damaged: {', '.join(damaged)}" if damaged else "")

    def close(self) -> None:
        """Checkpoint every index with logged operations and close its log; running training is abandoned."""
        self.closing = True
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join()
        with self._lock:
            states = list(self.indexes.values())
        for st in states:
            with st.write_mutex:
                if st.dirty and not st.damage:
                    try:
                        checkpoint(st)
                    except Exception:  # the log still holds every operation
                        log.exception("final checkpoint of %r failed; its log will be replayed at start", st.name)
                if st.wal is not None:
                    st.wal.close()
        self.sharded.close()

    def problems(self) -> dict[str, str]:
        """Indexes that are damaged or cannot checkpoint, with the reason (for /ready)."""
        out = {}
        for name, st in list(self.indexes.items()):
            if st.damage:
                out[name] = f"damaged: {st.damage}"
            elif st.checkpoint.error:
                out[name] = f"checkpoint failing ({st.checkpoint.failures}x): {st.checkpoint.error}"
        return {**out, **self.sharded.problems()}

    # --- lookups ------------------------------------------------------------------------------
    def get(self, name: str) -> IndexState:
        st = self.indexes.get(name)
        if st is None:
            raise IndexNotFound(name)
        return st

    def _check_writable(self, st: IndexState) -> BaseIndex:
        """The index, if it may be written now. Call with the write mutex held."""
        if st.dropped:
            raise IndexNotFound(st.name)
        if self.closing:
            raise Unavailable("shutting_down", "the service is shutting down")
        return st.usable()

    def dim(self, name: str) -> int:
        if name in self.sharded:
            return self.sharded.dim(name)
        st = self.get(name)
        st.usable()
        assert st.meta is not None  # a usable index has its meta
        return st.meta.dim

    def names(self) -> list[str]:
        return sorted([*self.indexes, *self.sharded.names()])

    def describe(self, name: str) -> dict[str, Any]:
        if name in self.sharded:
            return self.sharded.describe(name)
        st = self.get(name)
        with st.rw.read():
            return st.describe()

    def describe_all(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            try:
                out.append(self.describe(name))
            except IndexNotFound:  # dropped meanwhile
                pass
        return out

    # --- create / drop ------------------------------------------------------------------------
    def create(self, name: str, dim: int, spec: str | dict[str, Any] | IndexSpec, metric: str) -> dict[str, Any]:
        if not _NAME_RE.match(name):
            raise InvalidInputError(f"index name {name!r}: use 1-64 letters, digits, '_' or '-'")
        if dim > self.config.max_dim:
            raise LimitExceeded(f"dim {dim} exceeds this server's max_dim {self.config.max_dim}")
        spec = as_spec(spec)
        size = spec.model_bytes(dim)
        if size > self.config.max_codec_bytes:
            raise LimitExceeded(f"spec {spec.to_string()} at dim {dim} needs about {size} bytes of codebooks and "
                                f"centroids, over this server's max_codec_bytes {self.config.max_codec_bytes}")
        annvq.index_factory(dim, spec, metric)  # every field and option checked before anything is written
        with self._lock:
            if self.closing:
                raise Unavailable("shutting_down", "the service is shutting down")
            if name in self.indexes or name in self.sharded:
                raise IndexExists(f"index {name!r} already exists")
            tmp = self.data_dir / f".creating-{name}-{uuid.uuid4().hex}"
            try:
                initialise(tmp, Meta(dim, spec, metric))
                (self.data_dir / name).parent.mkdir(parents=True, exist_ok=True)
                tmp.rename(self.data_dir / name)
                annvq.storage.fsync_dir(self.data_dir)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise Unavailable("storage_error", f"could not create index {name!r}: {exc}") from None
            self.indexes[name] = recover(self.data_dir / name)
        return self.describe(name)

    def create_sharded(self, name: str, manifest: str, replicas: int | None = None) -> dict[str, Any]:
        """Serve the sharded build at ``manifest`` (a path the service and the workers share) as ``name``."""
        if not _NAME_RE.match(name):
            raise InvalidInputError(f"index name {name!r}: use 1-64 letters, digits, '_' or '-'")
        with self._lock:
            if self.closing:
                raise Unavailable("shutting_down", "the service is shutting down")
            if name in self.indexes or name in self.sharded:
                raise IndexExists(f"index {name!r} already exists")
            return self.sharded.create(name, manifest, replicas)

    def swap_manifest(self, name: str, manifest: str, replicas: int | None = None) -> dict[str, Any]:
        """Blue/green: serve the sharded index ``name`` from the build at ``manifest``, with no downtime."""
        if name in self.indexes:
            raise Conflict("not_sharded", f"index {name!r} is a local index, not a sharded build: it has no "
                                          "manifest to swap")
        return self.sharded.swap(name, manifest, replicas)

    def _not_sharded(self, name: str, what: str) -> None:
        if name in self.sharded:
            raise Conflict("sharded_index", f"index {name!r} is sharded: {what}")

    def drop(self, name: str) -> None:
        """Delete the index and its files (also a damaged one); a sharded index is no longer served, its build
        stays. Searches already running finish normally."""
        if name in self.sharded:
            with self._lock:
                self.sharded.drop(name)
            return
        with self._lock:
            st = self.get(name)
            with st.write_mutex:
                st.dropped = True
                del self.indexes[name]
                if st.wal is not None:
                    st.wal.close()
                trash = self.data_dir / f".trash-{name}-{uuid.uuid4().hex}"
                st.path.rename(trash)
                annvq.storage.fsync_dir(self.data_dir)
        shutil.rmtree(trash, ignore_errors=True)

    def repair(self, name: str) -> RepairReport:
        """Salvage a damaged index (see server.durability.repair) and bring it back online."""
        self._not_sharded(name, "its shards are checked when they are loaded; swap it to a build "
                                f"(PUT /indexes/{name}/manifest) instead")
        with self._lock:
            st = self.get(name)
            with st.write_mutex:
                if not st.damage:
                    raise Conflict("not_damaged", f"index {name!r} is not damaged; nothing to repair")
                report = repair(st.path)
                self.indexes[name] = recover(st.path)
                st.dropped = True  # the old state object is retired
        return report

    # --- writes -------------------------------------------------------------------------------
    def add(self, name: str, x: Any, ids: Any = None) -> tuple[np.ndarray, bool]:
        """Durably add vectors; returns their ids and whether they wait raw for training.

        The vectors are encoded before the write mutex is taken, so concurrent adds encode in parallel;
        only the checks of ids, the log append and the in-memory append are serialised.
        """
        if name in self.sharded:
            return self.sharded.add(name, x, ids)
        st = self.get(name)
        batch = st.usable().encode(x)
        with st.write_mutex:
            index = self._check_writable(st)
            x, new_ids = index.check_add(batch, ids)
            self._log_and_apply(st, Record(OP_ADD, st.lsn + 1, new_ids, x), batch)
            return new_ids, not index.is_trained

    def delete(self, name: str, ids: Any) -> int:
        """Durably delete vectors by id; unknown or repeated ids are refused before anything changes."""
        if name in self.sharded:
            return self.sharded.delete(name, ids)
        st = self.get(name)
        with st.write_mutex:
            ids = self._check_writable(st).check_remove(ids)
            self._log_and_apply(st, Record(OP_DELETE, st.lsn + 1, ids))
        return int(ids.shape[0])

    def _log_and_apply(self, st: IndexState, rec: Record, encoded: Encoded | None = None) -> None:
        """Append ``rec`` durably, then apply it. Call with the write mutex held, after all checks."""
        assert st.wal is not None  # a usable index has its log open
        try:
            st.wal.append(rec)
        except OSError as exc:
            log.error("write-ahead log of %r failed: %s", st.name, exc)
            raise Unavailable("storage_error", f"could not write the log durably: {exc}") from None
        apply(st, rec, encoded)
        if st.ops_since_ckpt >= self.config.checkpoint_ops:
            self._wake.set()

    # --- reads --------------------------------------------------------------------------------
    def search(self, name: str, xq: Any, k: int, **params: Any) -> tuple[np.ndarray, np.ndarray]:
        if name in self.sharded:
            return self.sharded.search(name, xq, k, **params)
        st = self.get(name)
        with st.rw.read(), self._verified(st):
            return st.usable().search(xq, k, **params)

    def retrieve(self, name: str, ids: Any) -> tuple[np.ndarray, bool]:
        """Vectors for ``ids``: exact where the index keeps them (raw before training, Refine), else
        reconstructions; and which it is."""
        if name in self.sharded:
            return self.sharded.retrieve(name, ids)
        st = self.get(name)
        with st.rw.read(), self._verified(st):
            return st.usable().fetch(ids)

    @contextmanager
    def _verified(self, st: IndexState) -> Iterator[None]:
        """Data read from disk on demand (exact vectors) that fails its checksum marks the index damaged."""
        try:
            yield
        except FormatError as exc:
            st.damage = f"stored data failed verification while reading: {exc}"
            log.error("index %r is damaged: %s", st.name, exc)
            st.usable()

    # --- training -----------------------------------------------------------------------------
    def start_training(self, name: str, x: Any = None) -> Job:
        """Queue a training job on ``x`` or, when None, on the exact vectors the index holds."""
        self._not_sharded(name, "its model was trained by its build; build again (annvq build) and swap the "
                                f"new build in (PUT /indexes/{name}/manifest)")
        st = self.get(name)
        with st.write_mutex:
            index = self._check_writable(st)
            if x is not None:
                x = index.prepare(x, "vectors")
            if st.job is not None and not st.job.done:
                raise Conflict("training_in_progress", f"index {name!r} is already training (job {st.job.id})")
            if x is None and index.is_trained and not index.rerank:
                raise Conflict("already_trained", f"index {name!r} is trained and keeps no exact vectors; send "
                                                  "training vectors to retrain it")
            if x is None and not index.ntotal:
                raise InvalidInputError(f"index {name!r} holds no vectors to train on: add vectors first or "
                                        "send training vectors")
            job = Job(uuid.uuid4().hex[:16], name)
            st.jobs[job.id] = job
            for old in list(st.jobs)[:-KEPT_JOBS]:
                del st.jobs[old]
            st.job = job
            threading.Thread(target=self._run_job, args=(st, job, x), name=f"annvq-train-{name}", daemon=True).start()
        return job

    def job(self, name: str, job_id: str) -> Job:
        self._not_sharded(name, "it runs no training jobs")
        job = self.get(name).jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"index {name!r} has no job {job_id!r}")
        return job

    def _run_job(self, st: IndexState, job: Job, x: np.ndarray | None) -> None:
        with self._train_slots:
            try:
                self._train(st, job, x)
            except BaseException as exc:  # the job records whatever stopped it
                with st.write_mutex:
                    st.delta = None
                job.finish("failed", exc)
                log.warning("training job %s of %r failed: %s", job.id, st.name, exc)

    def _train(self, st: IndexState, job: Job, x: np.ndarray | None) -> None:
        """Train a new model on a frozen view while writes go on (logged into ``st.delta``), then replay
        those writes on the new index and swap it in."""
        with st.write_mutex:
            if st.dropped or self.closing:
                job.finish("cancelled")
                return
            job.status, job.started_at = "running", time.time()
            with st.rw.write():
                frozen = st.usable().frozen()
            st.delta = []
        new = frozen.retrained(x)
        job.n_train = int(x.shape[0]) if x is not None else frozen.ntotal
        new.auto_compact = False
        with st.write_mutex:
            if st.dropped or self.closing:
                st.delta = None
                job.finish("cancelled")
                return
            for op, ids, vectors in st.delta:
                if op == OP_ADD:
                    new.add(vectors, ids)
                elif (present := ids[new.contains(ids)]).size:
                    new.remove(present)
            with st.rw.write():
                st.index = new
            st.delta = None
            job.reencoded_from = new.reencoded_from
            try:
                checkpoint(st)
            except Exception as exc:  # the background loop retries with backoff
                st.checkpoint.failed(exc, self.config.checkpoint_backoff_seconds)
                log.error("storing the retrained index %r failed (retried in the background): %s", st.name, exc)
        job.finish("succeeded")
        log.info("index %r trained on %s vectors (job %s; stored vectors re-encoded from %s)", st.name, job.n_train,
                 job.id, new.reencoded_from or "nothing")

    # --- background work ----------------------------------------------------------------------
    def _checkpoint_loop(self) -> None:
        tick = min(1.0, self.config.checkpoint_seconds / 4)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            for st in list(self.indexes.values()):
                due = st.ops_since_ckpt >= self.config.checkpoint_ops or \
                    now - st.last_ckpt >= self.config.checkpoint_seconds
                if not (st.dirty and due) or st.damage or now < st.checkpoint.retry_at:
                    continue
                with st.write_mutex:
                    if st.dropped or not st.dirty or st.damage:
                        continue
                    try:
                        checkpoint(st)
                    except Exception as exc:  # the log holds every operation; retry later
                        st.checkpoint.failed(exc, self.config.checkpoint_backoff_seconds)
                        log.error("checkpoint of %r failed (%d in a row; next try in %.0f s): %s", st.name,
                                  st.checkpoint.failures, st.checkpoint.retry_at - time.monotonic(), exc)
            self.sharded.checkpoint(self.config.checkpoint_ops)

    def _compaction_loop(self) -> None:
        while not self._stop.wait(self.config.compaction_seconds):
            for st in list(self.indexes.values()):
                if self._stop.is_set():
                    return
                try:
                    self.compact(st.name)
                except (IndexNotFound, Conflict):
                    pass
                except Exception:  # keep the thread alive; the index is unchanged
                    log.exception("background merge of %r failed", st.name)

    def compact(self, name: str, full: bool = False) -> int:
        """Merge the index's sealed segments as its merge policy says (all into one when ``full``).

        Segments are read and the merged one written to disk outside any lock; only the swap takes
        the write lock. Returns the number of merges.
        """
        st = self.get(name)
        with st.write_mutex:
            index = self._check_writable(st)
            if st.compacting or (st.job is not None and not st.job.done):
                raise Conflict("busy", f"index {name!r} is training or merging")
            if full:
                with st.rw.write():
                    index.seal()
            groups = index.plan_compaction(full=full)
            st.compacting = bool(groups)
        done = 0
        try:
            for group in groups:
                merged, seen = index.merge_segments(group)
                index.storage.store_segment(index, merged)
                with st.write_mutex:
                    if st.dropped or st.index is not index:
                        index.storage.discard_segment(merged)
                        break
                    with st.rw.write():
                        index.commit_merge(group, merged, seen)
                    checkpoint(st)
                done += 1
        finally:
            st.compacting = False
        return done
