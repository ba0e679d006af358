"""Where an id lives: splitmix64 of the id, modulo the number of virtual shards.

splitmix64 (Steele, Lea and Flood's finaliser, as used by Java's SplittableRandom) mixes every bit
of a 64-bit id into every bit of the hash, so consecutive ids spread evenly. Unlike Python's
``hash`` it is the same in every process, version and platform, which is what lets a build, a
router and a shard agree on an id's owner without talking to each other.
"""
from __future__ import annotations

import numpy as np

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(ids: np.ndarray) -> np.ndarray:
    """The splitmix64 hash (uint64) of every id (int64, non-negative)."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def virtual_shard(ids: np.ndarray, virtual_shards: int) -> np.ndarray:
    """The virtual shard (int64 in ``[0, virtual_shards)``) of every id."""
    return (splitmix64(ids) % np.uint64(virtual_shards)).astype(np.int64)
