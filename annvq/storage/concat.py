"""One index directory from the segments of several, without re-encoding.

Stored indexes that share one trained model (equal fingerprints) hold interchangeable codes, so their
rows can be combined as they are: the live rows of the chosen segments are merged into one sealed
segment in list order (the layout a search scans fastest) and written with the model under a new
manifest. Codes, ids, norms and exact vectors are copied, never decoded and re-encoded; exact
vectors are streamed from the source files in blocks, so they need not fit in memory. This is the
merge step of a distributed build (parts encoded in parallel become shards) and of resharding.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import all_unique
from ..errors import DuplicateIdError, InvalidInputError
from ..index.base import BaseIndex
from ..index.segments import Segment
from .directory import CommitStats, IndexDirectory

Select = Callable[[Path, dict[str, Any]], bool]


class _ConcatVectors:
    """Exact vectors of a merged segment, read on demand from the segments they came from.

    Row ``r`` of the merged segment is row ``rows[p][i]`` of source segment ``p``, where
    ``order[r] = bounds[p] + i``.
    """

    in_memory = False

    def __init__(self, sources: list[Any], rows: list[np.ndarray], order: np.ndarray, d: int) -> None:
        self.sources, self.rows, self.order = sources, rows, order
        self.bounds = np.concatenate([[0], np.cumsum([r.shape[0] for r in rows])]).astype(np.int64)
        self.n, self.d = int(order.shape[0]), d

    def read(self, rows: np.ndarray) -> np.ndarray:
        g = self.order[np.asarray(rows, dtype=np.int64)]
        part = np.searchsorted(self.bounds, g, side="right") - 1
        out = np.empty((g.shape[0], self.d), dtype=np.float32)
        for p in np.unique(part):
            at = np.flatnonzero(part == p)
            src_rows = self.rows[p][g[at] - self.bounds[p]]
            o = np.argsort(src_rows, kind="stable")
            got = self.sources[p].read(src_rows[o])
            out[at[o]] = got
        return out

    def close(self) -> None:
        pass


def concat(sources: Sequence[str | os.PathLike], out: str | os.PathLike, select: Select | None = None,
           metadata: dict[str, Any] | None = None) -> CommitStats:
    """Write to the new directory ``out`` one index holding the live rows of ``sources`` (index
    directories with the same trained model), merged into one segment in list order.

    ``select(source, manifest entry) -> bool`` picks the segments to take (default: all). Sources
    trained differently (their fingerprints differ), untrained, or holding the same id twice raise
    before anything is written; every file read is verified. ``metadata`` (JSON) goes into the new
    manifest. Returns what was written.
    """
    paths = [Path(p) for p in sources]
    if not paths:
        raise InvalidInputError("concat: no source directories given")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInputError(f"concat: {out} exists and is not an empty directory")
    fingerprints = []
    for p in paths:
        body = IndexDirectory(p).read_manifest()
        if body.get("fingerprint") is None:
            raise InvalidInputError(f"concat: {p} holds an untrained index; only trained indexes share codes")
        fingerprints.append(body["fingerprint"])
    if len(set(fingerprints)) != 1:
        odd = next(i for i, f in enumerate(fingerprints) if f != fingerprints[0])
        raise InvalidInputError(f"concat: {paths[odd]} was trained with another model than {paths[0]} (fingerprint "
                                f"{fingerprints[odd]} vs {fingerprints[0]}); "
                                "codes of different models cannot be merged")
    parts: list[BaseIndex] = []
    try:
        for p in paths:
            keep = None if select is None else (lambda entry, p=p: bool(select(p, entry)))
            parts.append(IndexDirectory(p).load(keep=keep))
        index = BaseIndex.from_state(*parts[0].model_state())
        next_id = max(part.next_id for part in parts)
        segs = [s for part in parts for s in part.segments]
        if segs:
            index.set_segments([_merged(index, segs)], 2, next_id)
        else:
            index.set_segments([], 1, next_id)
        index.auto_compact = False
        from . import save

        return save(index, out, metadata)
    finally:
        for part in parts:
            for s in part.segments:
                s.close()


def _merged(index: BaseIndex, segs: list[Segment]) -> Segment:
    """The live rows of ``segs`` as one sealed segment of ``index``, ordered by list (stable)."""
    live = [s.live_rows() for s in segs]
    ids = np.concatenate([s.ids[r] for s, r in zip(segs, live)])
    if not all_unique(ids):
        uniq, counts = np.unique(ids, return_counts=True)
        raise DuplicateIdError(f"concat: ids stored in more than one source: "
                               f"{', '.join(map(str, uniq[counts > 1][:10]))}")
    lists = np.concatenate([s.lists()[r] for s, r in zip(segs, live)])
    order = np.argsort(lists, kind="stable")

    def cat(column: Callable[[Segment, np.ndarray], np.ndarray]) -> np.ndarray:
        return np.concatenate([column(s, r) for s, r in zip(segs, live)])[order]

    offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=index.nlist))]).astype(np.int64)
    # the sources were verified on loading and their scan biases computed: carried over, not recomputed
    bias = cat(lambda s, r: s.bias[r]) if index.needs_bias() else np.empty(0, np.float32)
    norms = cat(lambda s, r: s.norms[r]) if index.norms is not None else None  # type: ignore[index]
    vectors = _ConcatVectors([s.vectors for s in segs], live, order, index.d) if segs[0].vectors is not None else None
    return Segment(1, ids[order], cat(lambda s, r: s.codes_at(r)), offsets, bias, norms, vectors)
