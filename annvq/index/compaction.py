"""Which sealed segments to merge: a tiered policy, as in Lucene's and Milvus's segment stores.

Each segment falls in a size tier: tier t holds segments of ``floor_rows * tier_factor**t`` to
``floor_rows * tier_factor**(t + 1)`` live rows (smaller ones count as ``floor_rows``). When a tier
holds ``segments_per_tier`` segments or more, they are merged into one, which lands in a higher tier;
so a vector is rewritten about ``log_tier_factor(ntotal / floor_rows)`` times over the life of an
index, and a search visits at most ``segments_per_tier - 1`` segments per tier. A segment whose
deleted rows exceed ``max_deleted_ratio`` of its rows is rewritten (alone or in its tier's merge) to
reclaim their space.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field


class _Sized(Protocol):
    @property
    def n(self) -> int: ...

    @property
    def nlive(self) -> int: ...


class TieredMergePolicy(BaseModel):
    """Merge policy of an index's sealed segments (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    segments_per_tier: int = Field(8, ge=2, description="merge a tier once it holds this many segments")
    tier_factor: float = Field(8.0, gt=1, description="size ratio between consecutive tiers")
    floor_rows: int = Field(8192, ge=1, description="segments below this size count as this size")
    max_deleted_ratio: float = Field(0.3, gt=0, le=1, description="rewrite segments with more deleted rows than this")

    def tier(self, nlive: int) -> int:
        return int(math.floor(math.log(max(nlive, self.floor_rows) / self.floor_rows, self.tier_factor) + 1e-9))

    def plan(self, segments: Sequence[_Sized], full: bool = False) -> list[list[int]]:
        """Groups of segment positions to merge, each group into one segment; ``full`` merges all."""
        if full:
            return [list(range(len(segments)))] if len(segments) > 1 or any(s.nlive < s.n for s in segments) else []
        tiers: dict[int, list[int]] = {}
        for i, s in enumerate(segments):
            tiers.setdefault(self.tier(s.nlive), []).append(i)
        groups = []
        for members in tiers.values():
            if len(members) >= self.segments_per_tier:
                groups.append(members)
            else:
                groups.extend([i] for i in members
                              if segments[i].n
                              and (segments[i].n - segments[i].nlive) > self.max_deleted_ratio * segments[i].n)
        return groups
