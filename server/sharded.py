"""Sharded indexes in the service: builds made by ``annvq build --shards S``, served from a Dask cluster
through the same routes as local indexes.

With ``scheduler`` set (``--scheduler ADDR``, ``ANNVQ_SCHEDULER``) the service connects a Dask client
when it starts (an unreachable scheduler stops the start with annvq.ClusterError within
``scheduler_timeout``) and serves each sharded index with an annvq.distributed.ShardedIndex: its
shards held by actors on the workers, ``replicas`` per shard. Without it Dask is never imported.

Which builds are served, under which names and with how many replicas, is kept in
``data_dir/sharded.json`` (checksummed, replaced atomically), so a restarted service attaches them
again from their manifests. A build that cannot be attached (manifest gone, no scheduler, too few
workers) stays registered and answers 503 naming why, until it is swapped to a build or dropped.

Writes are logged by the shards (each shard's write-ahead log beside the build), not in the service's
log: an add or delete is acknowledged once every shard it touches has logged its part durably and
applied it. Atomicity is per shard, with no cross-shard transactions. The service folds each index's
shard logs into its shard directories (``ShardedIndex.checkpoint``) after ``checkpoint_ops`` writes
and when it stops. Searches of builds with ``Refine`` re-rank globally (``exact=True``), so every
answer equals that of one index holding every vector.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from annvq.distributed import read_manifest
from annvq.distributed.manifest import manifest_path
from annvq.errors import FormatError, InvalidInputError
from annvq.storage import atomic_path, crc, dumps

from .config import ServerConfig
from .errors import Conflict, IndexNotFound, Unavailable

if TYPE_CHECKING:
    from annvq.distributed import ShardedIndex, ShardedIndexes

log = logging.getLogger("annvq.server")

REGISTRY = "sharded.json"
_FORMAT = "annvq-sharded-registry"


@dataclass(frozen=True)
class Entry:
    """A registered sharded index: its build's manifest file and its replicas per shard."""

    manifest: str
    replicas: int


def write_registry(path: Path, entries: dict[str, Entry]) -> None:
    """Replace the registry atomically (temporary file, fsync, rename), with a CRC32 of its body."""
    body = {"format": _FORMAT, "indexes": {n: {"manifest": e.manifest, "replicas": e.replicas}
                                           for n, e in sorted(entries.items())}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"body": body, "crc32": crc(dumps(body))}, indent=1))


def read_registry(path: Path) -> dict[str, Entry]:
    """The registered sharded indexes (none when the file does not exist); FormatError when damaged."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: unreadable: {exc}") from None
    try:
        body = doc["body"]
        if crc(dumps(body)) != doc["crc32"]:
            raise ValueError("checksum mismatch (the file is damaged)")
        if body["format"] != _FORMAT:
            raise ValueError(f"format {body['format']!r} is not {_FORMAT!r}")
        out = {}
        for name, e in body["indexes"].items():
            replicas = e["replicas"]
            if not isinstance(e["manifest"], str) or isinstance(replicas, bool) or not isinstance(replicas, int):
                raise ValueError(f"bad entry for {name!r}")
            out[name] = Entry(e["manifest"], replicas)
        return out
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"{path}: unreadable: {exc}") from None


class ShardedService:
    """The sharded indexes of one service (see the module docstring). Methods are blocking and thread-safe."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.path = Path(config.data_dir) / REGISTRY
        self.entries: dict[str, Entry] = {}
        self.failed: dict[str, str] = {}  # registered but not served, with why
        self.damage: str | None = None  # the registry itself failed verification
        self.client: Any = None
        self.served: ShardedIndexes | None = None
        self._writes: dict[str, int] = {}  # writes since the last checkpoint, per served name
        self._lock = threading.Lock()  # serialises registry changes (create, swap, drop)

    # --- life cycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Connect to the scheduler (when configured) and attach every registered build."""
        if self.config.scheduler:
            from annvq.distributed import ShardedIndexes, connect

            self.client = connect(self.config.scheduler, timeout=self.config.scheduler_timeout)
            self.served = ShardedIndexes(self.client, replicas=self.config.replicas)
            log.info("connected to the Dask scheduler at %s", self.config.scheduler)
        try:
            self.entries = read_registry(self.path)
        except FormatError as exc:
            self.damage = str(exc)
            log.error("sharded indexes not served: %s", exc)
        for name, entry in self.entries.items():
            if self.served is None:
                self.failed[name] = ("this service runs without a Dask scheduler: start it with --scheduler ADDR "
                                     "(or ANNVQ_SCHEDULER)")
                continue
            try:
                self.served.load(name, entry.manifest, replicas=entry.replicas)
            except Exception as exc:  # one build that cannot be attached must not stop the others
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                log.error("sharded index %r (%s) not attached: %s", name, entry.manifest, exc)

    def close(self) -> None:
        """Fold logged writes into the shard directories, release every shard actor, disconnect."""
        if self.served is None:
            return
        self.checkpoint(1)
        self.served.close()
        self.client.close()

    def checkpoint(self, min_writes: int) -> None:
        """Checkpoint each served index with at least ``min_writes`` writes since its last checkpoint; a
        failure is logged (the shard logs still hold every write)."""
        for name, n in list(self._writes.items()):
            if n < min_writes:
                continue
            try:
                with self._index(name, write=True) as index:
                    index.checkpoint()
                    self._writes[name] = 0
            except Exception as exc:  # retried at the next round
                log.error("checkpoint of sharded index %r failed: %s", name, exc)

    def problems(self) -> dict[str, str]:
        """Sharded indexes not served or with a shard without a live replica (for /ready)."""
        out = {n: f"unavailable: {why}" for n, why in self.failed.items()}
        if self.damage:
            out[REGISTRY] = f"damaged: {self.damage}"
        for name in self.names():
            if name in self.failed:
                continue
            try:
                with self._index(name) as index:
                    down = [s for s, live in enumerate(index.live_replicas()) if not live]
            except (IndexNotFound, Unavailable, Conflict):
                continue
            if down:
                out[name] = f"unavailable: shard(s) {', '.join(map(str, down))} have no live replica"
        return out

    # --- lookups ------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)

    def _cluster(self) -> ShardedIndexes:
        if self.served is None:
            raise Conflict("no_scheduler", "sharded indexes need a Dask cluster: start the service with "
                                           "--scheduler ADDR (or ANNVQ_SCHEDULER)")
        if self.damage:
            raise Conflict("registry_damaged", f"the registry of sharded indexes is damaged ({self.damage}); "
                                               f"fix or remove {self.path} and restart")
        return self.served

    @contextmanager
    def _index(self, name: str, write: bool = False) -> Iterator[ShardedIndex]:
        """The index serving ``name`` for the block (a swap waits for writes, and they for it)."""
        if name not in self.entries:
            raise IndexNotFound(name)
        if name in self.failed:
            raise Unavailable("index_unavailable", f"sharded index {name!r} is not served: {self.failed[name]}. "
                                                   f"Swap it to a build (PUT /indexes/{name}/manifest) or drop it")
        served = self._cluster()
        with ExitStack() as stack:
            try:
                index = stack.enter_context(served.writing(name) if write else served.use(name))
            except KeyError:
                raise IndexNotFound(name) from None
            yield index

    def dim(self, name: str) -> int:
        with self._index(name) as index:
            return index.d

    def describe(self, name: str) -> dict[str, Any]:
        entry = self.entries.get(name)
        if entry is None:
            raise IndexNotFound(name)
        if name in self.failed:
            return {"name": name, "kind": "sharded", "state": "unavailable", "damage": self.failed[name],
                    "dim": None, "metric": None, "spec": None, "manifest": entry.manifest,
                    "replicas": entry.replicas}
        with self._index(name) as index:
            info = index.info()
        down = [s["shard"] for s in info["shards"] if not s["available"]]
        return {
            "name": name, "kind": "sharded", "state": "unavailable" if down else "ready",
            "damage": f"shard(s) {', '.join(map(str, down))} have no live replica" if down else None,
            "dim": info["d"], "metric": info["metric"], "spec": info["spec"], "trained": True,
            "ntotal": info["ntotal"], "encoded": info["ntotal"], "pending": 0, "code_size": info["code_size"],
            "memory_bytes": info["memory_bytes"], "segments": info["segments"], "deleted": info["deleted"],
            "manifest": info["manifest"], "fingerprint": info["fingerprint"], "replicas": info["replicas"],
            "healthy": info["healthy"], "memory_bytes_all_replicas": info["memory_bytes_all_replicas"],
            "shards": info["shards"],
        }

    # --- create / swap / drop -----------------------------------------------------------------
    def _manifest(self, manifest: str) -> str:
        """The absolute path of the manifest file, read and verified (400 naming the problem)."""
        path = manifest_path(manifest).resolve()
        try:
            read_manifest(path)
        except FormatError as exc:
            raise InvalidInputError(f"manifest: {exc}") from None
        return str(path)

    def _store(self, entries: dict[str, Entry]) -> None:
        try:
            write_registry(self.path, entries)
        except OSError as exc:
            raise Unavailable("storage_error", f"could not write the registry of sharded indexes: {exc}") from None
        self.entries = entries

    def create(self, name: str, manifest: str, replicas: int | None) -> dict[str, Any]:
        """Serve the build at ``manifest`` as ``name``; the caller has checked that the name is free."""
        served = self._cluster()
        with self._lock:
            entry = Entry(self._manifest(manifest), replicas or self.config.replicas)
            self._store({**self.entries, name: entry})
            try:
                served.load(name, entry.manifest, replicas=entry.replicas)
            except BaseException as exc:
                self._store({n: e for n, e in self.entries.items() if n != name})
                if isinstance(exc, FormatError):
                    raise InvalidInputError(f"manifest: {exc}") from None
                raise
        return self.describe(name)

    def swap(self, name: str, manifest: str, replicas: int | None) -> dict[str, Any]:
        """Blue/green: serve ``name`` from the build at ``manifest`` (the old one serves until the flip)."""
        served = self._cluster()
        with self._lock:
            old = self.entries.get(name)
            if old is None:
                raise IndexNotFound(name)
            entry = Entry(self._manifest(manifest), replicas or old.replicas)
            self._store({**self.entries, name: entry})
            try:
                if name in self.failed:
                    served.load(name, entry.manifest, replicas=entry.replicas)
                    del self.failed[name]
                else:
                    served.swap(name, entry.manifest, replicas=entry.replicas)
            except BaseException as exc:
                self._store({**self.entries, name: old})
                if isinstance(exc, FormatError):
                    raise InvalidInputError(f"manifest: {exc}") from None
                raise
            self._writes.pop(name, None)
        log.info("sharded index %r now served from %s", name, entry.manifest)
        return self.describe(name)

    def drop(self, name: str) -> None:
        """Stop serving ``name`` once its running requests end; the build and its files stay."""
        with self._lock:
            if name not in self.entries:
                raise IndexNotFound(name)
            self._store({n: e for n, e in self.entries.items() if n != name})
            if self.failed.pop(name, None) is None and self.served is not None:
                self.served.drop(name)
            self._writes.pop(name, None)

    # --- reads and writes ---------------------------------------------------------------------
    def search(self, name: str, xq: np.ndarray, k: int, **params: Any) -> tuple[np.ndarray, np.ndarray]:
        with self._index(name) as index:
            return index.search(xq, k, exact=True, **params)

    def retrieve(self, name: str, ids: Any) -> tuple[np.ndarray, bool]:
        with self._index(name) as index:
            return index.fetch(ids)

    def add(self, name: str, x: np.ndarray, ids: Any = None) -> tuple[np.ndarray, bool]:
        """Add vectors, each to the shard owning its id; acknowledged once those shards logged them."""
        with self._index(name, write=True) as index:
            new_ids = index.add(x, ids)
            self._wrote(name)
        return new_ids, False

    def delete(self, name: str, ids: Any) -> int:
        with self._index(name, write=True) as index:
            n = index.remove(ids)
            self._wrote(name)
        return n

    def _wrote(self, name: str) -> None:
        self._writes[name] = self._writes.get(name, 0) + 1
