"""Background training jobs: what a client can poll about one."""
from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

KEPT_JOBS = 16  # finished jobs remembered per index


@dataclass
class Job:
    """A training job: status, timing, and how the stored vectors were re-encoded."""

    id: str
    index: str
    n_train: int | None = None
    status: str = "queued"  # queued | running | succeeded | failed | cancelled
    error: str | None = None
    reencoded_from: str | None = None  # "exact" | "reconstructed" | None (nothing to re-encode)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    exc: BaseException | None = field(default=None, repr=False)
    future: Future = field(default_factory=Future, repr=False)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    def finish(self, status: str, exc: BaseException | None = None) -> None:
        self.status, self.exc, self.finished_at = status, exc, time.time()
        if exc is not None:
            self.error = str(exc) or type(exc).__name__
        self.future.set_result(self)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "index": self.index, "status": self.status, "n_train": self.n_train,
                "error": self.error, "reencoded_from": self.reencoded_from, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at}
