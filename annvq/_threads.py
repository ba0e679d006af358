"""Keep BLAS single-threaded while Numba's parallel search kernels run.

OpenBLAS's worker threads spin for a while after every call, so a batch search that alternates BLAS
products (coarse scores, lookup tables) with Numba ``prange`` kernels has both thread pools fighting
for the same cores: measured on 2 cores, a 1,000-query IVF search ran 5x slower with both pools at 2
threads than with BLAS at 1. The same spinning takes cores from concurrent searches (the service
runs several). A search's BLAS products are small, so one thread costs them little; training keeps
multi-threaded BLAS (its products are large).
"""
from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

_MIN_BATCH = 16  # below this, setting the BLAS thread count (about 20 us) costs more than it saves


class _SingleThreadedBlas:
    """Reference-counted BLAS limit, safe when searches overlap in several threads: the first search
    in sets one thread, the last one out restores what was there before."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._controller: Any = None
        self._limiter: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                if self._controller is None:
                    from threadpoolctl import ThreadpoolController

                    self._controller = ThreadpoolController()
                self._limiter = self._controller.limit(limits=1, user_api="blas")
            self._depth += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._limiter.restore_original_limits()
                self._limiter = None


_single_threaded_blas = _SingleThreadedBlas()


def search_threads(n_queries: int) -> AbstractContextManager:
    """Context for a search over ``n_queries`` queries: BLAS limited to one thread when the batch is
    large enough to matter; otherwise nothing."""
    return _single_threaded_blas if n_queries >= _MIN_BATCH else nullcontext()
