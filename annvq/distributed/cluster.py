"""Getting a Dask client: to a running scheduler, or to a cluster of local worker processes."""
from __future__ import annotations

import importlib.util
import os
from typing import Any

from ..errors import ClusterError, InvalidInputError

SCHEDULER_ENV = "ANNVQ_SCHEDULER"
_THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"
# Dask housekeeping that a cluster of compute workers does not need at Dask's default rates: the
# statistical profiler samples every task thread 100 times a second, and each server's event-loop
# watchdog ticks 50 times a second. At the defaults an idle 2-worker cluster used 13% of a core.
QUIET_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "1s",
}


def loop_config() -> dict[str, str]:
    """Dask's event loops on uvloop where it is installed (the ``distributed`` extra installs it on Linux
    and macOS): a call to a shard actor costs the client about 0.85 ms of CPU on asyncio's loop, and
    a one-query search of 2 shards measured about 0.25 ms faster end to end on uvloop."""
    return {"distributed.admin.event-loop": "uvloop"} if importlib.util.find_spec("uvloop") else {}


def worker_env(threads: int) -> dict[str, str]:
    """Environment of a worker process running ``threads`` task threads: Numba and BLAS sized to match,
    so that N workers use N x threads cores and no more."""
    return {var: str(threads) for var in _THREAD_VARS}


def local_cluster(n_workers: int, threads_per_worker: int = 1, **kwargs: Any) -> Any:
    """A ``LocalCluster`` of ``n_workers`` processes with Numba and BLAS limited to ``threads_per_worker``
    threads each, and no dashboard unless asked for.

    The limits are set before each worker process is spawned: a spawned worker imports the caller's
    main module, and with it Numba and NumPy, before a nanny's ``env`` reaches it, and both read their
    thread counts once, at import. The caller's own environment is restored once the workers are up.

    Dask's nanny also sets glibc's ``MALLOC_TRIM_THRESHOLD_`` (64 KiB by default), which turns off
    glibc's adaptive allocation: every large temporary array of a search becomes a fresh ``mmap``,
    page-faulted again on every call (a shard's 1,000-query scan ran 15-20% slower). These workers
    keep glibc's default unless ``env`` sets it.

    Its workers, nannies and scheduler run with :data:`QUIET_CONFIG`: no statistical profiler (the
    dashboard's profile page stays empty) and housekeeping once a second, so that idle or busy they
    leave the cores to the tasks. Its event loops (and those of a ``Client`` of it) run on uvloop when
    installed (:func:`loop_config`).
    """
    import dask
    from distributed import LocalCluster

    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise InvalidInputError(f"workers must be a positive integer, got {n_workers!r}")
    kwargs.setdefault("dashboard_address", None)
    kwargs.setdefault("processes", True)
    env = {**worker_env(threads_per_worker), **kwargs.pop("env", {})}
    pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", default={}), _MALLOC_TRIM: None, **env}
    saved = {var: os.environ.get(var) for var in pre_spawn if pre_spawn[var] is not None}
    try:
        with dask.config.set({**QUIET_CONFIG, **loop_config(), "distributed.nanny.pre-spawn-environ": pre_spawn}):
            return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, env=env, **kwargs)
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def connect(scheduler: str | None = None, timeout: float = 10.0, **kwargs: Any) -> Any:
    """A ``distributed.Client`` of the scheduler at ``scheduler`` (default: ``$ANNVQ_SCHEDULER``).

    Raises :class:`~annvq.errors.ClusterError` naming the address when it cannot be reached within
    ``timeout`` seconds or is malformed.
    """
    import dask
    from distributed import Client

    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if not address:
        raise ClusterError(f"no scheduler address: pass one (e.g. tcp://host:8786) or set ${SCHEDULER_ENV}")
    try:
        with dask.config.set(loop_config()):
            return Client(address, timeout=timeout, **kwargs)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s: "
                           f"{type(exc).__name__}: {exc}") from None
