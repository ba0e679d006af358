"""Keep BLAS single-threaded while Numba's parallel kernels run, in searches and in encoding.

OpenBLAS's worker threads spin for a while after every call, so work that alternates BLAS products
(coarse scores, lookup tables, codeword scores) with Numba ``prange`` kernels has both thread pools
fighting for the same cores. Measured on 2 cores with both pools at 2 threads: a 1,000-query IVF
search ran 5x slower than with BLAS at 1, and adding 100 vectors to an ``IVF1024,PQ16x8`` index took
10.6 ms instead of 1.0 ms. The same spinning takes cores from concurrent requests (the service runs
several). These products are small, so one thread costs them little; training keeps multi-threaded
BLAS (its products are large).
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


def single_blas_thread(n_rows: int) -> AbstractContextManager:
    """Context for a search or an encoding of ``n_rows`` vectors: BLAS limited to one thread when the
    batch is large enough to matter; otherwise nothing."""
    return _single_threaded_blas if n_rows >= _MIN_BATCH else nullcontext()
