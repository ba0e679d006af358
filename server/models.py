"""Request and response bodies of the REST API (they also make the OpenAPI schema at /docs)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from annvq.spec import IndexSpec

# strict: no strings or booleans passed off as numbers; finite: no NaN or infinity
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
VectorId = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]
Vectors = Annotated[list[list[FiniteFloat]],
                    Field(min_length=1, description="a batch of vectors, one list of numbers each")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateIndexRequest(_Body):
    dim: int = Field(strict=True, ge=1, description="vector dimension", examples=[128])
    spec: str | IndexSpec = Field(description="index spec string (e.g. PQ8x8, OPQ16,PQ16x8, SQ8, IVF64,PQ16x8) "
                                              "or the same as an object", examples=["PQ8x8"])
    metric: Literal["l2", "ip", "cosine"] = Field("l2", description="l2: squared distances; ip, cosine: similarities")


class AddRequest(_Body):
    vectors: Vectors
    ids: list[VectorId] | None = Field(None, description="external ids, one per vector; default: the next free ids")


class TrainRequest(_Body):
    vectors: Vectors | None = Field(None, description="training vectors; omit to train on the vectors added so far")


class SearchRequest(_Body):
    vectors: Vectors
    k: int = Field(10, strict=True, ge=1, description="neighbours per query")
    nprobe: int | None = Field(None, strict=True, ge=1, description="inverted lists to visit (IVF indexes)")
    rerank: bool | None = Field(None, description="re-rank candidates with exact vectors (indexes built with Refine)")


class IdsRequest(_Body):
    ids: list[VectorId] = Field(min_length=1)


class Job(BaseModel):
    id: str
    index: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    n_train: int | None = Field(description="number of training vectors")
    error: str | None
    created_at: float = Field(description="Unix time")
    started_at: float | None
    finished_at: float | None


class IndexInfo(BaseModel):
    name: str
    dim: int
    metric: str
    spec: str
    spec_options: dict[str, Any]
    trained: bool
    ntotal: int = Field(description="vectors stored, encoded or pending")
    encoded: int = Field(description="vectors held as codes")
    pending: int = Field(description="raw vectors waiting for training")
    code_size: int = Field(description="bytes per encoded vector")
    memory_bytes: int
    lsn: int = Field(description="sequence number of the last logged operation")
    checkpoint_lsn: int = Field(description="sequence number covered by the last checkpoint")
    job: Job | None = Field(description="the latest training job")


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
    exact: bool = Field(description="false: reconstruction from codes; true: the raw vector (untrained index)")


class VectorsResponse(BaseModel):
    ids: list[int]
    vectors: list[list[float]]
    exact: bool


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Status(BaseModel):
    status: str
    indexes: int | None = None
