"""Request and response bodies of the REST API (they also make the OpenAPI schema at /docs)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from annvq.spec import WholeNumber, whole_number

# strict: no strings or booleans passed off as numbers; finite: no NaN or infinity
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
VectorId = Annotated[int, Field(ge=0, le=2**63 - 1), BeforeValidator(whole_number)]  # constraints first: schema
Positive = Annotated[int, Field(ge=1), BeforeValidator(whole_number)]
Vectors = Annotated[list[Annotated[list[FiniteFloat], Field(min_length=1)]],
                    Field(min_length=1, description="a batch of vectors, one list of numbers each, all of the "
                                                    "index's dimension")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateIndexRequest(_Body):
    dim: WholeNumber = Field(ge=1, description="vector dimension", examples=[128])
    spec: Annotated[str | dict[str, Any], WithJsonSchema({"anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 200}, {"type": "object"}]})] = Field(
        description="index spec string (e.g. PQ8x8, OPQ16,PQ16x8, SQ8, IVF64,PQ16x8) or the same as an object. "
                    "Rules between fields (PQ's M dividing dim, a tree coarse quantizer needing nlist...) are "
                    "checked by the service: 400 invalid_spec", examples=["PQ8x8"])
    metric: Literal["l2", "ip", "cosine"] = Field("l2", description="l2: squared distances; ip, cosine: similarities")


class ManifestRequest(_Body):
    manifest: str = Field(min_length=1, max_length=4096, description="a sharded build made by 'annvq build "
                          "--shards S' (annvq.distributed.build): its directory or index.json, on storage the "
                          "service and the Dask workers share", examples=["/shared/builds/demo"])
    replicas: Positive | None = Field(
        None, description="actors per shard, on distinct workers (default: the server's replicas setting)")


class AddRequest(_Body):
    vectors: Vectors
    ids: list[VectorId] | None = Field(None, description="external ids, one per vector, unused in the index; "
                                                         "default: counting up from one past the largest id added")


class TrainRequest(_Body):
    vectors: Vectors | None = Field(None, description="training vectors; omit to train on the exact vectors the "
                                                      "index holds (added before training, or kept by Refine)")


class SearchRequest(_Body):
    vectors: Vectors
    k: WholeNumber = Field(10, ge=1, description="neighbours per query")
    nprobe: Positive | None = Field(None, description="inverted lists to visit (IVF indexes only)")
    rerank: bool | None = Field(None, strict=True, description="re-rank with exact vectors (indexes built with Refine)")
    k_factor: Annotated[int, Field(ge=1, le=1024), BeforeValidator(whole_number)] | None = Field(
        None, description="re-rank (or re-score) the best k_factor * k candidates")
    rescore: bool | None = Field(None, strict=True, description="re-score the best candidates with float tables "
                                                                "(fast-scan indexes, PQ<M>x4fs)")


class IdsRequest(_Body):
    ids: list[VectorId] = Field(min_length=1, description="distinct ids")


class Job(BaseModel):
    id: str
    index: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    n_train: int | None = Field(description="number of training vectors")
    error: str | None
    reencoded_from: Literal["exact", "reconstructed"] | None = Field(
        description="how the stored vectors were re-encoded with the new model: from their exact values (raw "
                    "vectors, Refine) or from their reconstructions (indexes that keep only codes)")
    created_at: float = Field(description="Unix time")
    started_at: float | None
    finished_at: float | None


class ReplicaInfo(BaseModel):
    worker: str = Field(description="address of the Dask worker holding the replica")
    alive: bool
    outstanding: int = Field(description="calls in flight")
    logger: bool = Field(description="the replica that logs the shard's writes")


class ShardInfo(BaseModel):
    shard: int
    path: str = Field(description="the shard's directory, relative to the build")
    available: bool = Field(description="false: no live replica; requests needing the shard answer 503")
    live_replicas: int
    replicas: list[ReplicaInfo]
    ntotal: int
    memory_bytes: int = Field(description="bytes held by one replica")
    segments: int
    deleted: int
    lsn: int | None = Field(description="sequence number of the shard's last logged write")


class IndexInfo(BaseModel):
    name: str
    kind: Literal["local", "sharded"] = Field("local", description="local: held by this process; sharded: a build "
                                          "served from the Dask cluster (see manifest, shards)")
    state: Literal["ready", "damaged", "unavailable"] = Field(
        description="damaged: refuses reads and writes until repaired or dropped, see damage; unavailable: a "
                    "sharded index with a shard that has no live replica, or whose build could not be attached "
                    "(see damage); its requests answer 503")
    damage: str | None = Field(description="what failed verification (file and byte offset), or why a sharded "
                                           "index is unavailable")
    dim: int | None
    metric: str | None
    spec: str | None
    spec_options: dict[str, Any] | None = None
    trained: bool | None = None
    ntotal: int | None = Field(None, description="vectors stored, encoded or pending")
    encoded: int | None = Field(None, description="vectors held as codes")
    pending: int | None = Field(None, description="raw vectors waiting for training")
    code_size: int | None = Field(None, description="bytes stored per encoded vector")
    memory_bytes: int | None = None
    segments: int | None = Field(None, description="sealed segments")
    deleted: int | None = Field(None, description="deleted rows not yet merged away")
    lsn: int | None = Field(None, description="sequence number of the last logged operation")
    checkpoint_lsn: int | None = Field(None, description="sequence number covered by the last checkpoint")
    checkpoint_error: str | None = Field(None, description="the last checkpoint failure, while checkpoints fail")
    job: Job | None = Field(None, description="the latest training job")
    manifest: str | None = Field(None, description="sharded: the build's manifest file")
    fingerprint: str | None = Field(None, description="sharded: hash of the build's trained model")
    replicas: int | None = Field(None, description="sharded: replicas per shard")
    healthy: bool | None = Field(None, description="sharded: every shard has all its replicas alive")
    memory_bytes_all_replicas: int | None = Field(None, description="sharded: bytes held by every live replica")
    shards: list[ShardInfo] | None = Field(None, description="sharded: every shard with its replicas and their health")


class IndexList(BaseModel):
    indexes: list[IndexInfo]


class AddResponse(BaseModel):
    ids: list[int]
    pending: bool = Field(description="true when stored raw until the index is trained")


class DeleteResponse(BaseModel):
    deleted: int


class SearchResponse(BaseModel):
    ids: list[list[int]] = Field(description="per query, ids best first (fewer than k when the index holds fewer)")
    distances: list[list[float]] = Field(
        description="per query: squared L2 distances ascending, or similarities descending")


class VectorResponse(BaseModel):
    id: int
    vector: list[float]
    exact: bool = Field(description="true: the exact vector (raw before training, or kept by Refine); false: a "
                                    "reconstruction from its codes")


class VectorsResponse(BaseModel):
    ids: list[int]
    vectors: list[list[float]]
    exact: bool


class RepairReport(BaseModel):
    index: str
    replayed: int = Field(description="logged operations salvaged and applied")
    skipped: list[dict[str, Any]] = Field(description="salvaged operations that no longer applied, with why")
    damaged_ranges: list[dict[str, Any]] = Field(description="unreadable byte ranges of each log")
    lost_lsns: list[list[int]] = Field(description="ranges of operation sequence numbers with no readable record")
    backup: str | None = Field(description="where the original logs were kept")


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Status(BaseModel):
    status: str
    indexes: int | None = None
    problems: dict[str, str] | None = None
