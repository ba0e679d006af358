"""Scale-out on Dask: distributed build, sharded search with replicas, the same answers as one machine.

Needs the ``distributed`` extra (``pip install "annvq[distributed]"``, i.e. ``dask[distributed]``);
the core library never imports dask. What does not talk to a cluster — the manifest, the id hash,
:func:`load_local` — works without it.

* :func:`build` — train once on a sample, encode row ranges of the input files in parallel on the
  workers, merge them into S physical shards (V virtual shards by splitmix64 of the id), publish a
  manifest atomically; resumable.
* :class:`ShardedIndex` — shards held by Dask actors with R replicas on distinct workers; a router
  with the ``search`` / ``info`` / ``add`` / ``remove`` surface of a local index.
* :class:`ShardedIndexes` — named sharded indexes for a service: load, blue/green swap, drop.
* :func:`load_local` — every shard of a build as one local index.
* :func:`connect` / :func:`local_cluster` — a client of a scheduler address (or ``$ANNVQ_SCHEDULER``)
  with a clear error when it cannot be reached; a cluster of local worker processes.
"""
from __future__ import annotations

from typing import Any

from .hashing import splitmix64, virtual_shard
from .local import load_local
from .manifest import ShardedManifest, read_manifest

_NEEDS_DASK = {"build": ".builder", "ShardedIndex": ".router", "ShardedIndexes": ".serving", "merge_topk": ".router",
               "connect": ".cluster", "local_cluster": ".cluster"}

__all__ = [
    "ShardedIndex",
    "ShardedIndexes",
    "ShardedManifest",
    "build",
    "connect",
    "load_local",
    "local_cluster",
    "merge_topk",
    "read_manifest",
    "splitmix64",
    "virtual_shard",
]


def __getattr__(name: str) -> Any:
    module = _NEEDS_DASK.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"annvq.distributed.{name} needs Dask: pip install 'annvq[distributed]' ({exc})") from None
    from importlib import import_module

    return getattr(import_module(module, __name__), name)
