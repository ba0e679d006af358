"""Named sharded indexes for a service: load from a manifest, swap to a rebuild with no downtime, drop.

A service holds one :class:`ShardedIndexes` per Dask client. Each name points at a live
:class:`~annvq.distributed.ShardedIndex`; requests borrow it with :meth:`ShardedIndexes.use`, which
counts them in flight. A blue/green :meth:`~ShardedIndexes.swap` places the new manifest's actors
while the old index keeps serving, flips the name to the new index under the name's write lock
(so no write lands on the old one after the flip), waits for the requests still running on the old
index, then releases its actors. Writes acknowledged by the old index before the flip are not copied
into the new build: a rebuild should read its input after them, or they must be replayed.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .router import ShardedIndex


class _Slot:
    def __init__(self, index: ShardedIndex) -> None:
        self.index = index
        self.inflight = 0
        self.idle = threading.Condition()
        self.write_lock = threading.Lock()


class ShardedIndexes:
    """Sharded indexes by name on the cluster of ``client``; ``options`` go to every
    :class:`~annvq.distributed.ShardedIndex` (``replicas``, ``route``, ``batch_queries``...)."""

    def __init__(self, client: Any, **options: Any) -> None:
        self.client = client
        self.options = options
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._slots)

    def _slot(self, name: str) -> _Slot:
        with self._lock:
            slot = self._slots.get(name)
        if slot is None:
            raise KeyError(name)
        return slot

    def load(self, name: str, manifest: str | Path, **options: Any) -> dict[str, Any]:
        """Serve the build at ``manifest`` as ``name`` (InvalidInputError when the name is taken)."""
        with self._lock:
            if name in self._slots:
                raise InvalidInputError(f"a sharded index named {name!r} is already served; swap it instead")
        index = ShardedIndex(self.client, manifest, **{**self.options, **options})
        with self._lock:
            if name in self._slots:
                index.close()
                raise InvalidInputError(f"a sharded index named {name!r} is already served; swap it instead")
            self._slots[name] = _Slot(index)
        return index.info()

    @contextmanager
    def use(self, name: str) -> Iterator[ShardedIndex]:
        """The index serving ``name``, kept open until the block ends (KeyError when there is none)."""
        while True:
            slot = self._slot(name)
            with slot.idle:
                if self._slots.get(name) is slot:
                    slot.inflight += 1
                    break
        try:
            yield slot.index
        finally:
            with slot.idle:
                slot.inflight -= 1
                slot.idle.notify_all()

    @contextmanager
    def writing(self, name: str) -> Iterator[ShardedIndex]:
        """Like :meth:`use`, for adds and deletes: a swap waits for them and none starts during a swap."""
        while True:
            slot = self._slot(name)
            with slot.write_lock:
                if self._slots.get(name) is not slot:
                    continue  # swapped while this writer waited: write to the new index
                with self.use(name) as index:
                    yield index
                return

    def swap(self, name: str, manifest: str | Path, **options: Any) -> dict[str, Any]:
        """Blue/green: serve ``name`` from the build at ``manifest`` without a moment of downtime."""
        old = self._slot(name)
        new = ShardedIndex(self.client, manifest, **{**self.options, **options})
        try:
            with old.write_lock, self._lock:
                if self._slots.get(name) is not old:
                    raise InvalidInputError(f"sharded index {name!r} was swapped or dropped meanwhile")
                self._slots[name] = _Slot(new)
        except BaseException:
            new.close()
            raise
        self._retire(old)
        return new.info()

    def drop(self, name: str) -> None:
        """Stop serving ``name`` once its running requests end (the build's files stay)."""
        with self._lock:
            slot = self._slots.pop(name, None)
        if slot is None:
            raise KeyError(name)
        self._retire(slot)

    def _retire(self, slot: _Slot) -> None:
        with slot.idle:
            slot.idle.wait_for(lambda: slot.inflight == 0)
        slot.index.close()

    def close(self) -> None:
        for name in self.names():
            self.drop(name)
