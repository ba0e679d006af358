"""Sharded search on Dask: shard replicas held by actors, a router that scatters queries and merges.

:class:`ShardedIndex` has the ``search`` / ``info`` / ``add`` / ``remove`` surface of a local index.

*Placement.* Every shard of the build is loaded by ``replicas`` Dask actors
(:class:`~annvq.distributed.shard.ShardServer`) on distinct workers.

*Search.* A query batch goes to every shard (one call per shard, to its replica with the fewest
calls outstanding), or with ``route="lists"`` on a split-by-list build only to the shards owning
the lists its queries probe. Shards answer with NumPy arrays; the router merges the S x k candidates
ordered by (distance, id), -1 padding short rows. Small requests made while the shards are busy are
batched into one call (a worker's actor serves one call at a time, and a kernel parallelises inside
a batch). With ``Refine``, each shard re-ranks its own candidates (recall at least the single
index's); ``exact=True`` instead merges the code-distance top ``k_factor * k`` globally and asks the
owning shards for exact distances, which gives the single index's results.

*Faults.* A call that fails because its replica's worker died or stopped answering is retried on
another replica; the lost replica is re-created from the shard's files in the background, on a
live worker not holding the shard yet. A shard with no live replica raises
:class:`~annvq.errors.ShardUnavailableError`: results are never silently partial.

*Writes.* An add or delete is routed to the shard owning each id (``shard_of``; by inverted list on
a split-by-list build). Each shard's logger replica checks it, appends it to the shard's
write-ahead log and syncs, applies it, and only then does the router hand it to the other replicas
and acknowledge. Atomicity is per shard: a batch spanning shards is checked on every shard before
any logs it, but a failure between shards' logs can leave it applied on some only (as with Qdrant
and Milvus, there are no cross-shard transactions). Writes are serialised per router; run one
writing router per sharded index.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np

from .. import storage
from .._threads import single_blas_thread
from .._validate import all_unique, as_ids, as_vectors, check_k
from ..errors import (
    AnnvqError,
    ClusterError,
    FormatError,
    InvalidInputError,
    ShardUnavailableError,
)
from ..index.base import as_id_array
from ..index.ivf import IVFIndex
from ..index.params import parse_params
from ..kernels import best_k_by_id
from ..storage.wal import OP_ADD, OP_DELETE
from .manifest import (
    ShardedManifest,
    ShardEntry,
    manifest_path,
    read_manifest,
    write_manifest,
)
from .shard import ShardServer

log = logging.getLogger("annvq.distributed")
_SMALL = 8  # query batches up to this size are searched on the shard worker's event loop
_RECREATE_TIMEOUT = 30.0  # seconds to wait for a re-created replica before trying again elsewhere


@dataclass(eq=False)
class _Replica:
    shard: int
    worker: str
    worker_id: str  # the worker process's unique id: a restarted worker may come back at the same address
    future: Any  # the actor's Dask future; holding it keeps the actor alive
    actor: Any
    outstanding: int = 0
    alive: bool = True


@dataclass(eq=False)
class _Shard:
    number: int
    entry: ShardEntry
    replicas: list[_Replica] = field(default_factory=list)
    logger: _Replica | None = None
    ntotal: int = 0
    write_lock: threading.Lock = field(default_factory=threading.Lock)


def _lost(exc: BaseException) -> bool:
    """Whether a failed call means the replica is gone (its worker died, the connection dropped, the
    call timed out), rather than the shard answering with an error."""
    if isinstance(exc, AnnvqError):
        return False
    if isinstance(exc, (OSError, TimeoutError, KeyError)):
        return True
    return isinstance(exc, RuntimeError) and "lost" in str(exc).lower() or type(exc).__name__ == "CancelledError"


def merge_topk(Ds: list[np.ndarray], Is: list[np.ndarray], k: int, descending: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` of each row of the per-shard results, ordered by (distance, id), -1 padding last;
    and the position in ``Ds`` each result came from."""
    D = np.concatenate(Ds, axis=1).astype(np.float32, copy=False)
    I = np.concatenate(Is, axis=1).astype(np.int64, copy=False)
    src = np.repeat(np.arange(len(Ds)), [d.shape[1] for d in Ds])
    D, I, col = best_k_by_id(D, I, k, descending)
    return D, I, np.where(col >= 0, src[np.maximum(col, 0)], -1)


async def _settle(futures: list[Any], timeout: float) -> list[Any]:
    """Await every actor call (on the client's event loop): results, or the exception each raised
    (TimeoutError past ``timeout`` seconds)."""
    import asyncio

    async def one(f: Any) -> Any:
        return await f

    return await asyncio.gather(*(asyncio.wait_for(one(f), timeout) for f in futures), return_exceptions=True)


class _Request:
    __slots__ = ("exact", "future", "k", "params", "xq")

    def __init__(self, xq: np.ndarray, k: int, params: dict[str, Any], exact: bool) -> None:
        self.xq, self.k, self.params, self.exact = xq, k, params, exact
        self.future: Future = Future()

    def key(self) -> tuple:
        return self.k, tuple(sorted(self.params.items())), self.exact


class _Batcher:
    """Batches small search requests: a request goes out at once, from the caller's thread, when a call
    slot is free and nothing waits; requests arriving while every slot is busy are merged into one
    call (after waiting up to ``wait`` seconds for more company)."""

    def __init__(self, run: Any, slots: int, max_queries: int, wait: float) -> None:
        self._run, self._max, self._wait = run, max_queries, wait
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(slots)
        self._pool = ThreadPoolExecutor(slots, thread_name_prefix="annvq-batch")
        self._thread = threading.Thread(target=self._loop, name="annvq-batcher", daemon=True)
        self._thread.start()

    def search(self, req: _Request) -> tuple[np.ndarray, np.ndarray]:
        if self._q.empty() and self._slots.acquire(blocking=False):
            try:
                return self._run(req.xq, req.k, req.params, req.exact)
            finally:
                self._slots.release()
        self._q.put(req)
        return req.future.result()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            self._slots.acquire()
            batch, rows, stop = [first], first.xq.shape[0], False
            deadline = time.monotonic() + self._wait
            while rows < self._max:
                left = deadline - time.monotonic()
                try:
                    nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
                rows += nxt.xq.shape[0]
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                groups.setdefault(r.key(), []).append(r)
            for i, group in enumerate(groups.values()):
                if i:
                    self._slots.acquire()
                self._pool.submit(self._serve, group)
            if stop:
                return

    def _serve(self, group: list[_Request]) -> None:
        try:
            r0 = group[0]
            xq = np.concatenate([r.xq for r in group]) if len(group) > 1 else r0.xq
            D, I = self._run(xq, r0.k, r0.params, r0.exact)
            at = 0
            for r in group:
                n = r.xq.shape[0]
                r.future.set_result((D[at : at + n], I[at : at + n]))
                at += n
        except BaseException as exc:  # handed to every caller of the batch
            for r in group:
                if not r.future.done():
                    r.future.set_exception(exc)
        finally:
            self._slots.release()


class ShardedIndex:
    """A sharded index served by Dask actors (see the module docstring).

    ``manifest``: a build directory or its index.json, on storage the client and the workers see.
    ``replicas``: actors per shard, on distinct workers. ``route``: "all" (scatter to every shard)
    or "lists" (split-by-list builds: only the shards owning the probed lists). ``direct``: talk to
    workers directly (lowest latency) rather than through the scheduler. Requests of at most
    ``batch_queries`` queries are batched (0 turns batching off), waiting up to ``batch_wait``
    seconds for company when a call slot is free. ``call_timeout`` bounds one shard call; a replica
    that does not answer in time counts as lost.
    """

    def __init__(self, client: Any, manifest: str | Path, replicas: int = 1, *, route: str = "all",
                 direct: bool = True, batch_queries: int = 16, batch_wait: float = 0.0,
                 call_timeout: float = 300.0, start_timeout: float = 120.0) -> None:
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise InvalidInputError(f"replicas must be a positive integer, got {replicas!r}")
        if route not in ("all", "lists"):
            raise InvalidInputError(f"route must be 'all' or 'lists', got {route!r}")
        self.client = client
        self.path = manifest_path(manifest)
        self.root = self.path.parent
        self.manifest: ShardedManifest = read_manifest(self.path)
        if route == "lists" and self.manifest.layout != "lists":
            raise InvalidInputError("route='lists' needs a split-by-list build (build(..., layout='lists'))")
        self.model = storage.load(self.root / self.manifest.model)
        if not self.model.is_trained or self.model.fingerprint() != self.manifest.fingerprint:
            raise FormatError(f"{self.root / self.manifest.model}: not the model the manifest names")
        if self.manifest.layout == "lists":
            self._list_model()
        self.replicas, self.route = replicas, route
        self.call_timeout, self.start_timeout = call_timeout, start_timeout
        self.params_type = self.model.params_type
        self.index_type = self.model.index_type
        self._vmap = self.manifest.shard_of_vshard()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._next_id: int | None = None
        self._closed = threading.Event()
        self._repairs: queue.SimpleQueue = queue.SimpleQueue()
        self.recreated = 0  # replicas re-created after a failure
        if direct:
            client.direct_to_workers = True
        self._shards = [_Shard(s, e, ntotal=e.ntotal) for s, e in enumerate(self.manifest.shards)]
        self._place()
        self._repairer = threading.Thread(target=self._repair_loop, name="annvq-repair", daemon=True)
        self._repairer.start()
        self._batcher = _Batcher(self._search_now, replicas, 1024, batch_wait) if batch_queries else None
        self._batch_queries = batch_queries

    # --- facts ---------------------------------------------------------------------------------
    @property
    def d(self) -> int:
        return self.model.d

    @property
    def metric(self) -> str:
        return self.model.metric

    @property
    def spec(self) -> str | None:
        return self.model.spec

    @property
    def rerank(self) -> bool:
        return self.model.rerank

    @property
    def is_trained(self) -> bool:
        return True

    @property
    def code_size(self) -> int:
        return self.model.code_size

    @property
    def nshards(self) -> int:
        return len(self._shards)

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self._shards)

    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    def prepare(self, x: Any, name: str = "x") -> np.ndarray:
        return self.model.prepare(x, name)

    def _list_model(self) -> IVFIndex:
        """The model as the IVF index whose inverted lists place vectors (and route queries) of a
        split-by-list build."""
        if not isinstance(self.model, IVFIndex):
            raise FormatError(f"{self.root / self.manifest.model}: a split-by-list build needs an IVF model, "
                              f"not {self.model.index_type!r}")
        return self.model

    def shard_of(self, ids: Any) -> np.ndarray:
        """Physical shard owning each id (builds with the "ids" layout)."""
        return self.manifest.shard_of(as_id_array(ids))

    def info(self) -> dict[str, Any]:
        """Facts for humans and services: the model's, the sum over shards (ntotal, memory of one copy
        and of all replicas), and every shard with its replicas and their health."""
        try:
            shard_facts: list[Any] = self._all("info")
        except ShardUnavailableError:
            shard_facts = []
            for sh in self._shards:
                try:
                    shard_facts.append(self._call(sh, "info"))
                except ShardUnavailableError:
                    shard_facts.append(None)
        shards = []
        for sh, facts in zip(self._shards, shard_facts):
            reps = [{"worker": r.worker, "alive": r.alive, "outstanding": r.outstanding, "logger": r is sh.logger}
                    for r in sh.replicas]
            entry: dict[str, Any] = {
                "shard": sh.number, "path": sh.entry.path, "available": facts is not None, "replicas": reps,
                "live_replicas": sum(r.alive for r in sh.replicas), "ntotal": sh.ntotal, "memory_bytes": 0,
                "segments": 0, "deleted": 0, "lsn": None,
            }
            if facts is not None:
                sh.ntotal = facts["ntotal"]
                entry.update({k: facts[k] for k in ("ntotal", "memory_bytes", "segments", "deleted", "lsn")})
            shards.append(entry)
        one_copy = sum(s["memory_bytes"] for s in shards)
        return {"type": f"sharded-{self.index_type}", "spec": self.spec, "metric": self.metric, "d": self.d,
                "trained": True, "ntotal": sum(s["ntotal"] for s in shards), "code_size": self.code_size,
                "codec": type(self.model.codec).__name__, "rerank": self.rerank,
                "segments": sum(s["segments"] for s in shards), "deleted": sum(s["deleted"] for s in shards),
                "memory_bytes": one_copy, "memory_bytes_all_replicas": sum(
                    s["memory_bytes"] * s["live_replicas"] for s in shards),
                "shards": shards, "replicas": self.replicas, "layout": self.manifest.layout, "route": self.route,
                "virtual_shards": self.manifest.virtual_shards, "fingerprint": self.manifest.fingerprint,
                "manifest": str(self.path), "recreated_replicas": self.recreated,
                "healthy": all(s["live_replicas"] == self.replicas for s in shards),
                "available": all(s["available"] for s in shards)}

    def memory_usage(self) -> dict[str, int]:
        """Bytes held by one copy of every shard (``total``), as a local index reports it."""
        return {"total": sum(f["memory_bytes"] for f in self._all("info"))}

    # --- placement and repair ------------------------------------------------------------------
    def _workers(self) -> dict[str, str]:
        """Live workers: address -> unique worker id."""
        info = self.client.scheduler_info()["workers"]
        return {addr: str(w.get("id", addr)) for addr, w in sorted(info.items())}

    def _new_actor(self, shard: _Shard, worker: str) -> Any:
        key = f"annvq-shard-{shard.number}-{uuid.uuid4().hex[:12]}"
        return self.client.submit(ShardServer, str(self.root), shard.number, self.manifest.fingerprint,
                                  shard.entry.model_dump(), actor=True, workers=[worker],
                                  allow_other_workers=False, pure=False, key=key)

    def _place(self) -> None:
        workers = self._workers()
        if len(workers) < self.replicas:
            raise ClusterError(f"replicas={self.replicas} needs as many workers; the cluster has {len(workers)}")
        addrs = list(workers)
        pending = []
        for sh in self._shards:
            for r in range(self.replicas):
                w = addrs[(sh.number + r) % len(addrs)]
                pending.append((sh, w, self._new_actor(sh, w)))
        try:
            for sh, w, fut in pending:
                sh.replicas.append(_Replica(sh.number, w, workers[w], fut, fut.result(timeout=self.start_timeout)))
        except BaseException:
            for _, _, fut in pending:
                fut.release()
            raise
        for sh, state in zip(self._shards, self._all("state")):
            sh.logger = sh.replicas[0]
            sh.ntotal = state["ntotal"]

    def _failed(self, rep: _Replica, exc: BaseException) -> None:
        with self._lock:
            if not rep.alive:
                return
            rep.alive = False
            sh = self._shards[rep.shard]
            if sh.logger is rep:
                sh.logger = None
        log.warning("replica of shard %d on %s lost (%s: %s); re-creating it", rep.shard, rep.worker,
                    type(exc).__name__, exc)
        self._repairs.put(rep)

    def _repair_loop(self) -> None:
        todo: list[_Replica] = []
        while not self._closed.is_set():
            try:
                todo.append(self._repairs.get(timeout=0.5))
            except queue.Empty:
                pass
            for rep in list(todo):
                if self._closed.is_set():
                    return
                try:
                    if self._recreate(rep):
                        todo.remove(rep)
                except Exception as exc:  # retried on the next round
                    log.warning("re-creating a replica of shard %d failed: %s", rep.shard, exc)

    def _recreate(self, rep: _Replica) -> bool:
        """Replace the lost replica ``rep`` by a new actor on a live worker not holding its shard yet."""
        sh = self._shards[rep.shard]
        workers = self._workers()
        with self._lock:
            taken = {r.worker for r in sh.replicas if r.alive}
        # not the lost worker itself (the scheduler may still list it), but a restart of it is welcome
        free = [w for w, wid in workers.items() if w not in taken and (w, wid) != (rep.worker, rep.worker_id)]
        if not free:
            return False
        worker = min(free, key=lambda w: sum(r.worker == w and r.alive for s in self._shards for r in s.replicas))
        fut = self._new_actor(sh, worker)
        try:
            actor = fut.result(timeout=min(self.start_timeout, _RECREATE_TIMEOUT))
            with sh.write_lock:  # no write slips between its catching up and its joining
                actor.catch_up().result(timeout=self.call_timeout)
                new = _Replica(sh.number, worker, workers[worker], fut, actor)
                with self._lock:
                    sh.replicas[sh.replicas.index(rep)] = new
        except BaseException:
            fut.release()
            raise
        rep.future.release()
        self.recreated += 1
        log.info("replica of shard %d re-created on %s", sh.number, worker)
        return True

    def live_replicas(self) -> list[int]:
        """Live replicas of every shard."""
        with self._lock:
            return [sum(r.alive for r in sh.replicas) for sh in self._shards]

    # --- calls ---------------------------------------------------------------------------------
    def _pick(self, sh: _Shard, exclude: list[_Replica]) -> _Replica:
        with self._lock:
            live = [r for r in sh.replicas if r.alive and r not in exclude]
            if not live:
                raise ShardUnavailableError(
                    f"shard {sh.number} has no live replica ({len(sh.replicas)} configured, "
                    f"{sum(r.alive for r in sh.replicas)} alive); the request is refused rather than answered "
                    "without it")
            rep = min(live, key=lambda r: r.outstanding)
            rep.outstanding += 1
            return rep

    def _start(self, sh: _Shard, method: str, args: tuple, exclude: list[_Replica]) -> tuple[_Replica, Any]:
        while True:
            rep = self._pick(sh, exclude)
            try:
                return rep, getattr(rep.actor, method)(*args)
            except Exception as exc:
                self._done(rep)
                if not _lost(exc):
                    raise
                self._failed(rep, exc)
                exclude.append(rep)

    def _done(self, rep: _Replica) -> None:
        with self._lock:
            rep.outstanding -= 1

    def _scatter(self, calls: list[tuple[_Shard, tuple]], method: str) -> list[Any]:
        """One call of ``method`` per (shard, arguments), all in flight at once; each retried on other
        replicas if its replica is lost."""
        for sh, _ in calls:  # refuse before any call when a shard is known to be down
            if not any(r.alive for r in sh.replicas):
                self._done(self._pick(sh, []))  # raises ShardUnavailableError naming the shard
        started = []
        try:
            for sh, args in calls:
                started.append(self._start(sh, method, args, []))
        except BaseException:
            for rep, _ in started:
                self._done(rep)
            raise
        settled = self.client.sync(_settle, [f for _, f in started], self.call_timeout)
        for rep, _ in started:
            self._done(rep)
        out, error = [], None
        for (sh, args), (rep, _), res in zip(calls, started, settled):
            if isinstance(res, BaseException):
                if _lost(res):
                    self._failed(rep, res)
                    if error is None:
                        try:
                            res = self._retry(sh, method, args, [rep])
                        except BaseException as exc:  # raised once every call is settled
                            error = exc
                elif error is None:
                    error = res
            out.append(res)
        if error is not None:
            raise error
        return out

    def _retry(self, sh: _Shard, method: str, args: tuple, tried: list[_Replica]) -> Any:
        """``method`` on the shard's live replicas not tried yet, one after another, until one answers."""
        while True:
            rep, fut = self._start(sh, method, args, tried)
            tried.append(rep)
            try:
                return fut.result(timeout=self.call_timeout)
            except BaseException as exc:
                if not _lost(exc):
                    raise
                self._failed(rep, exc)
            finally:
                self._done(rep)

    def _call(self, sh: _Shard, method: str, *args: Any) -> Any:
        return self._scatter([(sh, args)], method)[0]

    def _all(self, method: str, *args: Any) -> list[Any]:
        return self._scatter([(sh, args) for sh in self._shards], method)

    # --- search --------------------------------------------------------------------------------
    def search(self, xq: Any, k: int = 10, params: Any = None, *, exact: bool = False,
               **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)`` as a local index returns them (see :meth:`annvq.BaseIndex.search`).

        ``exact=True`` (Refine indexes): global two-phase re-ranking, identical to the single index.
        Raises ShardUnavailableError when a shard has no live replica.
        """
        p = parse_params(self.params_type, params, kwargs, f"a sharded {self.index_type} index")
        k = check_k(k)
        self.model.prepare(xq, "xq")  # every input check of the single index, before any call
        raw = as_vectors(xq, self.d, "xq")
        if p.rerank and not self.model.rerank:
            raise InvalidInputError("rerank: this index keeps no exact vectors (build it with Refine)")
        pd = p.model_dump(exclude_none=True)
        if self._batcher is not None and raw.shape[0] <= self._batch_queries and not self._closed.is_set():
            return self._batcher.search(_Request(raw, k, pd, bool(exact)))
        return self._search_now(raw, k, pd, bool(exact))

    def _search_now(self, xq: np.ndarray, k: int, pd: dict[str, Any], exact: bool) -> tuple[np.ndarray, np.ndarray]:
        rerank = pd.get("rerank", self.model.rerank)
        if exact and rerank:
            return self._search_exact(xq, k, pd)
        D, I, _ = self._gather_topk(xq, k, pd)
        return D, I

    def _assign(self, xq: np.ndarray, pd: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The coarse ``(scores, lists)`` of the queries, searched once here for every shard, on one
        thread: thread pools that spin after their work would take the cores the shards scan on."""
        model = self._list_model()
        nprobe = min(pd.get("nprobe") or model.nprobe, model.nlist)
        before = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            with single_blas_thread(xq.shape[0]):
                return model.coarse.search(model.prepare(xq, "xq"), nprobe, model.codec_metric)
        finally:
            numba.set_num_threads(before)

    def _targets(self, probes: np.ndarray | None) -> list[tuple[_Shard, np.ndarray | None]]:
        """The shards to ask and, when routing by lists (``probes``: the lists of each query), the queries
        (rows) each must answer."""
        if self.route == "all":
            return [(sh, None) for sh in self._shards]
        assert probes is not None  # routing by lists assigns the queries first
        owner = np.where(probes >= 0, self._vmap[np.maximum(probes, 0)], -1)
        out: list[tuple[_Shard, np.ndarray | None]] = []
        for sh in self._shards:
            rows = np.flatnonzero((owner == sh.number).any(axis=1))
            if rows.size:
                out.append((sh, rows))
        return out

    def _gather_topk(self, xq: np.ndarray, k: int, pd: dict[str, Any]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Merged top ``k`` of every shard asked, with the shard each result came from.

        Batches to an IVF build search its coarse quantizer here, once, and the shards only scan the
        lists chosen (``search_preassigned``), rather than every shard repeating the coarse search.
        """
        small = xq.shape[0] <= _SMALL
        assigned = self._assign(xq, pd) if isinstance(self.model, IVFIndex) and (
            not small or self.route != "all") else None
        targets = self._targets(None if assigned is None else assigned[1])
        calls: list[tuple[_Shard, tuple]]
        if small or assigned is None:
            method = "search_small" if small else "search"
            calls = [(sh, (xq if rows is None else xq[rows], k, pd)) for sh, rows in targets]
        else:
            method = "search_preassigned"
            pick = lambda a, rows: a if rows is None else a[rows]  # noqa: E731
            calls = [(sh, (pick(xq, rows), k, pick(assigned[1], rows), pick(assigned[0], rows), pd))
                     for sh, rows in targets]
        results = self._scatter(calls, method)
        desc = self.metric != "l2"
        nq = xq.shape[0]
        Ds, Is = [], []
        for (_, rows), (D, I) in zip(targets, results):
            if rows is not None:
                Df = np.full((nq, k), -np.inf if desc else np.inf, dtype=np.float32)
                If = np.full((nq, k), -1, dtype=np.int64)
                Df[rows], If[rows] = D, I
                D, I = Df, If
            Ds.append(D)
            Is.append(I)
        if not Ds:
            Ds, Is = [np.full((nq, k), -np.inf if desc else np.inf, np.float32)], [np.full((nq, k), -1, np.int64)]
        D, I, origin = merge_topk(Ds, Is, k, desc)
        shard_no = np.array([sh.number for sh, _ in targets] or [-1])
        return D, I, np.where(origin >= 0, shard_no[np.maximum(origin, 0)], -1)

    def _search_exact(self, xq: np.ndarray, k: int, pd: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Code-distance top ``k_factor * k`` over all shards, then exact distances from the owners."""
        kk = k * (pd.get("k_factor") or self.model.k_factor)
        _, cand, owner = self._gather_topk(xq, kk, {**pd, "rerank": False})
        asked = [sh for sh in self._shards if (owner == sh.number).any()]
        dists = self._scatter([(sh, (xq, np.where(owner == sh.number, cand, -1))) for sh in asked], "exact")
        dist = np.full(cand.shape, np.inf, dtype=np.float32)
        for sh, d in zip(asked, dists):
            mine = owner == sh.number
            dist[mine] = d[mine]
        D, I, _ = best_k_by_id(dist, cand, k, False)
        I = np.where(np.isfinite(D), I, -1)
        if self.metric != "l2":
            D = -D
        D[I < 0] = np.inf if self.metric == "l2" else -np.inf
        return D, I

    # --- reads by id ---------------------------------------------------------------------------
    def _owners(self, ids: np.ndarray) -> np.ndarray:
        """Shard of each id: by hash, or (split-by-list builds) by asking every shard; -1 where none has it."""
        if self.manifest.layout == "ids":
            return self.shard_of(ids)
        found = self._all("contains", ids)
        owner = np.full(ids.shape[0], -1, dtype=np.int64)
        for sh, f in zip(self._shards, found):
            owner[f] = sh.number
        return owner

    def contains(self, ids: Any) -> np.ndarray:
        ids = as_id_array(ids)
        owner = self._owners(ids)
        out = np.zeros(ids.shape[0], dtype=bool)
        groups = [(self._shards[s], np.flatnonzero(owner == s)) for s in np.unique(owner[owner >= 0])]
        for (_, at), found in zip(groups, self._scatter([(sh, (ids[at],)) for sh, at in groups], "contains")):
            out[at] = found
        return out

    def fetch(self, ids: Any) -> tuple[np.ndarray, bool]:
        """``(vectors, exact)`` for ``ids``, from their shards (UnknownIdError names missing ids)."""
        ids = as_id_array(ids)
        owner = self._owners(ids)
        if (owner < 0).any():
            from .._validate import missing_ids

            missing_ids(ids, ids[owner >= 0])
        out = np.empty((ids.shape[0], self.d), dtype=np.float32)
        exact = True
        groups = [(self._shards[s], np.flatnonzero(owner == s)) for s in np.unique(owner)]
        for (_, at), (vec, ex) in zip(groups, self._scatter([(sh, (ids[at],)) for sh, at in groups], "fetch")):
            out[at] = vec
            exact = exact and ex
        return out, exact

    # --- writes --------------------------------------------------------------------------------
    def _logger(self, sh: _Shard) -> _Replica:
        with self._lock:
            if sh.logger is None or not sh.logger.alive:
                live = [r for r in sh.replicas if r.alive]
                if not live:
                    raise ShardUnavailableError(f"shard {sh.number} has no live replica; writes to it are refused")
                sh.logger = live[0]
            return sh.logger

    def _write(self, sh: _Shard, method: str, args: tuple, op: int, apply_args: tuple) -> None:
        """Log and apply on the shard's logger (another replica takes over if it is lost), then apply on
        the other live replicas. Call with the shard's write lock held."""
        retry = False
        while True:
            rep = self._logger(sh)
            with self._lock:
                rep.outstanding += 1
            try:
                lsn, ntotal = getattr(rep.actor, method)(*args, retry).result(timeout=self.call_timeout)
                break
            except BaseException as exc:
                if not _lost(exc):
                    raise
                self._failed(rep, exc)
                retry = True
            finally:
                self._done(rep)
        sh.ntotal = ntotal
        with self._lock:
            others = [r for r in sh.replicas if r.alive and r is not rep]
        futs = []
        for r in others:
            try:
                futs.append((r, r.actor.apply(op, lsn, *apply_args)))
            except Exception as exc:
                if not _lost(exc):
                    raise
                self._failed(r, exc)
        for r, f in futs:
            try:
                f.result(timeout=self.call_timeout)
            except BaseException as exc:
                if not _lost(exc):
                    raise
                self._failed(r, exc)  # re-created from the log, which holds this record

    def _by_shard(self, owner: np.ndarray) -> list[tuple[_Shard, np.ndarray]]:
        return [(self._shards[s], np.flatnonzero(owner == s)) for s in np.unique(owner)]

    def add(self, x: Any, ids: Any = None) -> np.ndarray:
        """Add vectors, each to the shard owning its id; returns the ids (counting up from one past the
        largest id stored when ``ids`` is None). Acknowledged once every shard concerned has logged
        its part durably and every live replica has applied it."""
        xp = self.model.prepare(x, "x")
        raw = as_vectors(x, self.d, "x")
        with self._write_lock:
            if ids is None:
                if self._next_id is None:
                    self._next_id = max(st["next_id"] for st in self._all("state"))
                new_ids = np.arange(self._next_id, self._next_id + raw.shape[0], dtype=np.int64)
            else:
                new_ids = as_ids(ids, raw.shape[0])
                if new_ids.size and new_ids.min() < 0:
                    raise InvalidInputError("ids: must be non-negative (-1 marks an empty result slot)")
            if self.manifest.layout == "ids":
                owner = self.shard_of(new_ids)
            else:
                owner = self._vmap[self._list_model().coarse.assign(xp)]
            groups = self._by_shard(owner)
            self._scatter([(sh, (raw[at], new_ids[at])) for sh, at in groups], "check_add")
            self._locked_writes(groups, lambda sh, at: ("log_add", (raw[at], new_ids[at]), OP_ADD,
                                                        (new_ids[at], raw[at])))
            top = int(new_ids.max()) + 1
            self._next_id = top if self._next_id is None else max(self._next_id, top)
        return new_ids

    def remove(self, ids: Any) -> int:
        """Delete vectors by id from their shards; unknown or repeated ids raise before any shard logs."""
        ids = as_id_array(ids)
        if not ids.size:
            raise InvalidInputError("ids: empty list")
        if not all_unique(ids):
            raise InvalidInputError("ids: repeated ids in one remove call")
        with self._write_lock:
            owner = self._owners(ids)
            if (owner < 0).any():
                from .._validate import missing_ids

                missing_ids(ids, ids[owner >= 0])
            groups = self._by_shard(owner)
            self._scatter([(sh, (ids[at],)) for sh, at in groups], "check_remove")
            self._locked_writes(groups, lambda sh, at: ("log_remove", (ids[at],), OP_DELETE, (ids[at], None)))
        return int(ids.shape[0])

    def _locked_writes(self, groups: list[tuple[_Shard, np.ndarray]], plan: Any) -> None:
        """Run each shard's write (in parallel across shards), each under its shard's write lock."""
        def one(sh: _Shard, at: np.ndarray) -> None:
            method, args, op, apply_args = plan(sh, at)
            with sh.write_lock:
                self._write(sh, method, args, op, apply_args)

        if len(groups) == 1:
            one(*groups[0])
            return
        with ThreadPoolExecutor(len(groups)) as pool:
            for f in [pool.submit(one, sh, at) for sh, at in groups]:
                f.result()

    def checkpoint(self) -> ShardedManifest:
        """Store every shard's logged writes in its directory, rotate its log, and publish a manifest
        with the shards' new ntotal, checksum and log position (atomically)."""
        with self._write_lock:
            entries = []
            for sh in self._shards:
                with sh.write_lock:
                    rep = self._logger(sh)
                    done = rep.actor.checkpoint().result(timeout=self.call_timeout)
                    sh.entry = sh.entry.model_copy(update=done)
                    sh.ntotal = done["ntotal"]
                entries.append(sh.entry)
            self.manifest = self.manifest.model_copy(update={"shards": entries})
            write_manifest(self.path, self.manifest)
        return self.manifest

    # --- life cycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop batching and repairing, and release every shard actor."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._batcher is not None:
            self._batcher.close()
        self._repairer.join()
        for sh in self._shards:
            for r in sh.replicas:
                try:
                    if r.alive:
                        r.actor.close().result(timeout=10)
                except Exception as exc:  # the worker may be gone already
                    log.debug("closing a replica of shard %d: %s", sh.number, exc)
                r.future.release()

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ShardedIndex(spec={self.spec!r}, metric={self.metric!r}, shards={self.nshards}, "
                f"replicas={self.replicas}, ntotal={self.ntotal})")
