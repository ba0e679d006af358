"""The manifest of a sharded index: what a distributed build published, in one atomically replaced file.

A build directory holds::

    index.json          this manifest ({"body": {...}, "crc32": ...})
    model/              the trained, empty index every part and shard was encoded with
    shard-<s>/          physical shard s: an index directory (annvq.storage) with the model's fingerprint
    logs/shard-<s>/     the shard's write-ahead log of adds and deletes made after the build

The body names the spec, dimension, metric and model fingerprint, how ids map to shards (``layout``
"ids": virtual shard = splitmix64(id) mod V; "lists": virtual shard = the vector's inverted list),
the virtual -> physical shard map, and for each shard its directory, ntotal, the SHA-256 of its
manifest file and the log position it covers. Paths are relative to the manifest's directory, so a
build can be moved or mounted elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import FormatError, InvalidInputError
from ..storage import atomic_path, crc, dumps
from ..storage.directory import MANIFEST
from .hashing import virtual_shard

FORMAT: Final = "annvq-sharded"
FORMAT_VERSION = 1
MANIFEST_NAME = "index.json"


class ShardEntry(BaseModel):
    """One physical shard: its index directory, live vectors, checksum and covered log position."""

    model_config = ConfigDict(extra="forbid")

    path: str
    ntotal: int = Field(ge=0)
    checksum: str = Field(description="sha256 of the shard's manifest.json when this entry was written")
    lsn: int = Field(0, ge=0, description="write-ahead log position the shard directory covers")


class ShardedManifest(BaseModel):
    """What a distributed build publishes (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["annvq-sharded"] = FORMAT
    format_version: int = FORMAT_VERSION
    spec: str
    d: int = Field(ge=1)
    metric: Literal["l2", "ip", "cosine"]
    fingerprint: str
    layout: Literal["ids", "lists"] = "ids"
    virtual_shards: int = Field(ge=1)
    vshard_to_shard: list[int]
    model: str = "model"
    shards: list[ShardEntry]
    build: dict[str, Any] = Field(default_factory=dict, description="how the build was run (sources, sizes)")

    @model_validator(mode="after")
    def _consistent(self) -> ShardedManifest:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format version {self.format_version}; this annvq reads {FORMAT_VERSION}")
        if len(self.vshard_to_shard) != self.virtual_shards:
            raise ValueError(f"vshard_to_shard has {len(self.vshard_to_shard)} entries for {self.virtual_shards} "
                             "virtual shards")
        if not self.shards:
            raise ValueError("no shards")
        if any(not 0 <= s < len(self.shards) for s in self.vshard_to_shard):
            raise ValueError(f"vshard_to_shard names a shard outside 0..{len(self.shards) - 1}")
        return self

    @property
    def nshards(self) -> int:
        return len(self.shards)

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    def shard_of_vshard(self) -> np.ndarray:
        return np.asarray(self.vshard_to_shard, dtype=np.int64)

    def shard_of(self, ids: Any) -> np.ndarray:
        """Physical shard of each id (layout "ids"; a "lists" layout places vectors by their list)."""
        if self.layout != "ids":
            raise InvalidInputError("shard_of: a split-by-list build places vectors by their inverted list, not "
                                    "by id")
        return self.shard_of_vshard()[virtual_shard(np.asarray(ids, dtype=np.int64), self.virtual_shards)]


def manifest_path(where: str | os.PathLike) -> Path:
    """The manifest file of a build: ``where`` itself, or ``where/index.json`` for a build directory."""
    p = Path(where)
    return p / MANIFEST_NAME if p.is_dir() else p


def read_manifest(where: str | os.PathLike) -> ShardedManifest:
    """The verified manifest of a build (directory or index.json); FormatError names what is wrong."""
    path = manifest_path(where)
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FormatError(f"{path}: no sharded index here ({MANIFEST_NAME} missing)") from None
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: unreadable: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict):
        raise FormatError(f"{path}: not an annvq sharded-index manifest")
    body = doc["body"]
    if body.get("format") != FORMAT:
        raise FormatError(f"{path}: format {body.get('format')!r} is not {FORMAT!r}")
    if crc(dumps(body)) != doc.get("crc32"):
        raise FormatError(f"{path}: checksum mismatch (the file is damaged)")
    try:
        return ShardedManifest.model_validate(body)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors())
        raise FormatError(f"{path}: {msgs}") from None


def write_manifest(where: str | os.PathLike, manifest: ShardedManifest) -> Path:
    """Replace the manifest of the build at ``where`` atomically (temporary file, fsync, rename)."""
    path = manifest_path(where)
    body = manifest.model_dump()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"body": body, "crc32": crc(dumps(body))}, indent=1, sort_keys=True))
    return path


def directory_checksum(index_dir: str | os.PathLike) -> str:
    """SHA-256 of an index directory's manifest file: it names every file by its checksummed header, so
    it stands for the whole directory."""
    return "sha256:" + hashlib.sha256((Path(index_dir) / MANIFEST).read_bytes()).hexdigest()
