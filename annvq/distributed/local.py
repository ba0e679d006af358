"""A sharded build as one local index: for moving back to one machine, and for checking equality."""
from __future__ import annotations

import os

from .. import storage
from ..errors import FormatError
from ..index.base import BaseIndex
from .manifest import manifest_path, read_manifest
from .shard import open_shard


def load_local(manifest: str | os.PathLike) -> BaseIndex:
    """Every shard of the build at ``manifest`` (its directory or index.json), logged writes included,
    as one in-memory index over the build's model. Every file is verified as :func:`annvq.load` does.

    The result has no storage of its own: ``annvq.save(index, dir)`` writes it as an ordinary index
    directory.
    """
    m = read_manifest(manifest)
    root = manifest_path(manifest).parent
    model = storage.load(root / m.model)
    if not model.is_trained or model.fingerprint() != m.fingerprint:
        raise FormatError(f"{root / m.model}: not the model the sharded manifest names (fingerprint differs)")
    index = BaseIndex.from_state(*model.model_state())
    segments = []
    next_id = 0
    for entry in m.shards:
        shard, _ = open_shard(root, entry, m.fingerprint)
        shard.seal()
        segments.extend(shard.segments)
        next_id = max(next_id, shard.next_id)
    for i, seg in enumerate(segments):
        seg.seg_id = i + 1
    index.set_segments(segments, len(segments) + 1, next_id)
    return index
