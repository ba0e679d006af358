"""``annvq build --workers N`` / ``--scheduler ADDR``: the command line's entry to the distributed build."""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .manifest import MANIFEST_NAME


@contextlib.contextmanager
def cluster_client(workers: int | None, scheduler: str | None, timeout: float = 10.0) -> Iterator[Any]:
    """A client of the scheduler at ``scheduler``, or of a local cluster of ``workers`` processes
    (started here and stopped on exit)."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise InvalidInputError(f"a distributed build needs Dask: pip install 'annvq[distributed]' ({exc})") from None
    from .cluster import connect, local_cluster

    if scheduler:
        client = connect(scheduler, timeout=timeout)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = local_cluster(workers or 1)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def build_command(data: Path, out: Path, spec: str | None, metric: str, learn: Path | None, train_size: int,
                  chunk_rows: int, resume: bool, force: bool, seed: int, progress: bool, workers: int | None,
                  scheduler: str | None, shards: int, virtual_shards: int) -> str:
    """Run a distributed build; returns the line the command prints."""
    from .builder import build

    if spec is None:
        raise InvalidInputError("--index is required (e.g. --index IVF1024,PQ16x8)")
    if out.exists() and not (resume or force) and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInputError(f"{out} exists: pass --resume to continue it or --force to rebuild")
    t0 = time.perf_counter()
    with cluster_client(workers, scheduler) as client:
        where = scheduler or f"a local cluster of {workers or 1} worker(s)"
        print(f"building {spec} from {data} on {where}", file=sys.stderr)
        m = build(client, data, spec, out, shards=shards, virtual_shards=virtual_shards, metric=metric,
                  learn=learn, train_size=train_size, chunk_rows=chunk_rows, seed=seed, progress=progress,
                  force=force)
    return (f"{out / MANIFEST_NAME}: {m.ntotal} vectors in {m.nshards} shard(s) "
            f"({', '.join(str(s.ntotal) for s in m.shards)}), {m.spec}, {time.perf_counter() - t0:.1f} s")
