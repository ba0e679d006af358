"""What the service holds for one index: the library index, its log, its locks, its jobs and its health.

Threads: searches and reads hold the read lock; writers serialise on ``write_mutex`` and take the
write lock only to apply a change, so a search never sees half of a batch. A damaged index holds no
library index at all: only the reason, until an operator repairs or drops it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annvq import BaseIndex, IndexSpec
from annvq.storage.wal import WriteAheadLog

from .errors import IndexDamaged
from .jobs import Job
from .locks import RWLock


@dataclass(frozen=True)
class Meta:
    """An index's creation parameters, as kept in its meta.json."""

    dim: int
    spec: IndexSpec
    metric: str

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "spec": self.spec.model_dump(), "metric": self.metric}


@dataclass
class CheckpointHealth:
    """The last checkpoint failure of an index and when to try again (exponential backoff)."""

    failures: int = 0
    error: str | None = None
    retry_at: float = 0.0

    def failed(self, exc: BaseException, cap_seconds: float) -> None:
        self.failures += 1
        self.error = f"{type(exc).__name__}: {exc}"
        self.retry_at = time.monotonic() + min(cap_seconds, 2.0 ** min(self.failures, 16))

    def succeeded(self) -> None:
        self.failures, self.error, self.retry_at = 0, None, 0.0


@dataclass
class IndexState:
    """One index of the service (see the module docstring for the locking rules)."""

    name: str
    path: Path
    meta: Meta | None
    index: BaseIndex | None
    damage: str | None = None
    lsn: int = 0
    ckpt_lsn: int = 0
    wal: WriteAheadLog | None = None
    write_mutex: threading.Lock = field(default_factory=threading.Lock)
    rw: RWLock = field(default_factory=RWLock)
    ops_since_ckpt: int = 0
    last_ckpt: float = field(default_factory=time.monotonic)
    checkpoint: CheckpointHealth = field(default_factory=CheckpointHealth)
    jobs: dict[str, Job] = field(default_factory=dict)
    job: Job | None = None
    delta: list[tuple[int, np.ndarray, np.ndarray | None]] | None = None  # writes logged while training
    dropped: bool = False
    compacting: bool = False

    @property
    def dirty(self) -> bool:
        return self.lsn > self.ckpt_lsn

    def usable(self) -> BaseIndex:
        """The library index, or IndexDamaged naming what is wrong."""
        if self.damage is not None or self.index is None:
            raise IndexDamaged(f"index {self.name!r} is damaged and refuses reads and writes: {self.damage}. "
                               f"Repair it (POST /indexes/{self.name}/repair or annvq repair) or drop it")
        return self.index

    def describe(self) -> dict[str, Any]:
        """Facts about the index; call with the read lock held."""
        if self.damage is not None or self.index is None or self.meta is None:
            return {"name": self.name, "kind": "local", "state": "damaged", "damage": self.damage,
                    "dim": self.meta.dim if self.meta else None, "metric": self.meta.metric if self.meta else None,
                    "spec": self.meta.spec.to_string() if self.meta else None}
        index = self.index
        info = index.info()
        return {
            "name": self.name, "kind": "local", "state": "ready", "damage": None, "dim": self.meta.dim,
            "metric": self.meta.metric,
            "spec": self.meta.spec.to_string(), "spec_options": self.meta.spec.options, "trained": index.is_trained,
            "ntotal": index.ntotal, "encoded": index.ntotal if index.is_trained else 0,
            "pending": 0 if index.is_trained else index.ntotal, "code_size": index.code_size,
            "memory_bytes": info["memory_bytes"], "segments": info["segments"], "deleted": info["deleted"],
            "lsn": self.lsn, "checkpoint_lsn": self.ckpt_lsn,
            "checkpoint_error": self.checkpoint.error, "job": self.job.to_dict() if self.job else None,
        }
