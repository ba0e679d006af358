"""Routes: read the request, call one domain-service method in a worker thread, shape the answer.

Bodies are read here (not by FastAPI's body parameters) so that size limits and parse errors are
answered by the app's error handlers with the right status; the request models still document them
in the OpenAPI schema. Every constraint the schema cannot state (rows of one length, the index's
dimension, ids unused in the index...) is answered 400/409/413 as the route's responses list.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam

from annvq.errors import InvalidInputError

from . import models
from .bodies import check_count, has_key, media_type, parse_binary, parse_json
from .config import ServerConfig
from .errors import LimitExceeded, Unavailable
from .jobs import Job
from .responses import FastJSONResponse
from .service import NAME_PATTERN, IndexService

T = TypeVar("T")
MAX_ID = 2**63 - 1
_IDS_PATTERN = r"^\d{1,19}(,\d{1,19})*$"
_INLINE_BODY_BYTES = 1 << 16  # JSON bodies up to this size are parsed on the event loop


class Context:
    """What the routes share: the config, the domain service and the worker pools."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._service: IndexService | None = None  # one per lifespan, so the app can be started again
        self.ready = False
        self.read_pool: ThreadPoolExecutor | None = None
        self.write_pool: ThreadPoolExecutor | None = None

    @property
    def service(self) -> IndexService:
        if self._service is None:
            raise Unavailable("not_ready", "the service is starting or stopping")
        return self._service

    @service.setter
    def service(self, value: IndexService | None) -> None:
        self._service = value

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.read_pool, partial(fn, *args, **kwargs))

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.write_pool, partial(fn, *args, **kwargs))


async def get_context(request: Request) -> Context:
    """The service context of every route. A coroutine, because FastAPI runs a plain-function dependency in a
    worker thread: that hop cost about 0.7 ms per request."""
    ctx: Context = request.app.state.context
    if not ctx.ready:
        raise Unavailable("not_ready", "the service is starting or stopping")
    return ctx


Ctx = Annotated[Context, Depends(get_context)]
IndexName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="index name", examples=["demo"])]
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": models.ErrorResponse} for s in (400, 401, 404, 405, 409, 413, 415, 422, 500, 503)}


def _body_doc(model: type | tuple[type, ...], binary: bool, required: bool = True) -> dict[str, Any]:
    """OpenAPI request body: ``model`` (or one of several) as JSON and, when ``binary``, raw little-endian
    float32 vectors."""
    refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in (model if isinstance(model, tuple) else (model,))]
    content: dict[str, Any] = {"application/json": {"schema": refs[0] if len(refs) == 1 else {"oneOf": refs}}}
    text = "JSON"
    if binary:
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        text = ("JSON, or application/octet-stream: n*dim little-endian float32 values (n whole vectors of the "
                "index's dimension, row-major; other parameters in the query string)")
    return {"requestBody": {"required": required, "description": text, "content": content}}


async def read_body(request: Request) -> bytearray:
    """The whole body in one buffer, sized from Content-Length when given: no list of chunks joined into a
    second copy (the middleware has already bounded the size)."""
    length = request.headers.get("content-length")
    buf = bytearray()
    if length and length.isdigit():
        buf = bytearray(int(length))
        pos = 0
        async for chunk in request.stream():
            end = pos + len(chunk)
            if end > len(buf):
                buf.extend(bytes(end - len(buf)))
            buf[pos:end] = chunk
            pos = end
        del buf[pos:]
        return buf
    async for chunk in request.stream():
        buf += chunk
    return buf


async def _json(request: Request, model: type, ctx: Context, dim: Callable[[], int] | None = None,
                limit: int = 0, what: str = "vectors", setting: str = "max_batch",
                body: bytearray | None = None) -> tuple[Any, np.ndarray | None]:
    """The body as ``model`` (and its vectors as float32 when ``dim`` is given); large bodies are parsed in a
    worker thread so the event loop keeps serving."""
    if body is None:
        body = await read_body(request)
    if len(body) <= _INLINE_BODY_BYTES:
        return parse_json(body, model, dim() if dim else None, limit, what, setting)
    return await ctx.read(parse_json, body, model, dim() if dim else None, limit, what, setting)


async def _vectors_body(request: Request, model: type, ctx: Context, name: str, limit: int, what: str,
                        setting: str, body: bytearray | None = None) -> tuple[Any, np.ndarray | None]:
    """``(model or None, vectors)`` from a JSON or an application/octet-stream body."""
    kind = media_type(request.headers.get("content-type"))
    svc = ctx.service
    if body is None:
        body = await read_body(request)
    if kind == "binary":
        return None, parse_binary(body, svc.dim(name), limit, what, setting)
    return await _json(request, model, ctx, partial(svc.dim, name), limit, what, setting, body)


def _parse_ids(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    values = [int(t) for t in text.split(",")]
    if max(values) > MAX_ID:
        raise InvalidInputError(f"ids: values must be at most {MAX_ID}")
    return np.array(values, dtype=np.int64)


def _search_body(D: np.ndarray, I: np.ndarray) -> dict[str, Any]:
    """Results per query, best first; the -1 padding of short results is cut off."""
    found = I >= 0
    if found.all():
        return {"ids": I, "distances": D}
    return {"ids": [i[f] for i, f in zip(I, found)], "distances": [d[f] for d, f in zip(D, found)]}


def _job_error(job: Job) -> Exception:
    """The error a failed training job is answered with when the client waited for it."""
    if isinstance(job.exc, Exception):
        return job.exc
    return Unavailable("training_failed", f"training job {job.id} failed: {job.error}")


def _links(**targets: dict[str, str]) -> dict[str, Any]:
    """OpenAPI links from an operation's answer to the operations that can follow it (for clients and
    for stateful API testing)."""
    return {"links": {op: {"operationId": op, "parameters": params} for op, params in targets.items()}}


_NAME = {"name": "$request.path.name"}
_CREATED = _links(describeIndex=_NAME, addVectors=_NAME, trainIndex=_NAME, searchIndex=_NAME,
                  retrieveVectors=_NAME, deleteVectors=_NAME, dropIndex=_NAME)
_ADDED = _links(getVector={**_NAME, "id": "$response.body#/ids/0"}, searchIndex=_NAME,
                deleteVectors=_NAME, trainIndex=_NAME)
_JOB = _links(getJob={**_NAME, "job_id": "$response.body#/id"}, searchIndex=_NAME)

router = APIRouter()


@router.get("/health", operation_id="health", response_model=models.Status, tags=["service"])
async def health() -> FastJSONResponse:
    """Liveness: answers while the process runs (no API key needed)."""
    return FastJSONResponse({"status": "ok"})


@router.get("/ready", operation_id="ready", response_model=models.Status, responses=_ERRORS, tags=["service"])
async def ready(ctx: Ctx) -> FastJSONResponse:
    """Readiness: 200 once every index is recovered (``degraded`` lists damaged indexes and failing
    checkpoints), 503 while starting or shutting down."""
    problems = ctx.service.problems()
    return FastJSONResponse({"status": "degraded" if problems else "ready", "indexes": len(ctx.service.names()),
                             "problems": problems or None})


@router.get("/indexes", operation_id="listIndexes", response_model=models.IndexList,
            responses=_ERRORS, tags=["indexes"])
async def list_indexes(ctx: Ctx) -> FastJSONResponse:
    """Every index with its state: ready, or damaged (with what failed)."""
    return FastJSONResponse({"indexes": await ctx.read(ctx.service.describe_all)})


@router.put("/indexes/{name}", operation_id="createIndex", status_code=201, response_model=models.IndexInfo,
            responses={**_ERRORS, 201: _CREATED},
            openapi_extra=_body_doc((models.CreateIndexRequest, models.ManifestRequest), binary=False),
            tags=["indexes"])
async def create_index(name: IndexName, request: Request, ctx: Ctx) -> FastJSONResponse:
    """Create an empty index from a spec (add vectors and train it in either order), or serve a sharded
    build made by ``annvq build --shards S`` from the service's Dask cluster (``manifest``; needs
    ``--scheduler``, else 409 no_scheduler). A sharded index answers the same routes: search, add,
    delete, vectors by id, describe (with its shards and replicas), drop; a shard with no live
    replica makes its requests answer 503, never a partial result."""
    raw = await read_body(request)
    if has_key(raw, "manifest"):
        req, _ = await _json(request, models.ManifestRequest, ctx, body=raw)
        info = await ctx.write(ctx.service.create_sharded, name, req.manifest, req.replicas)
    else:
        body, _ = await _json(request, models.CreateIndexRequest, ctx, body=raw)
        info = await ctx.write(ctx.service.create, name, body.dim, body.spec, body.metric)
    return FastJSONResponse(info, status_code=201)


@router.put("/indexes/{name}/manifest", operation_id="swapManifest", response_model=models.IndexInfo,
            responses=_ERRORS, openapi_extra=_body_doc(models.ManifestRequest, binary=False), tags=["indexes"])
async def swap_manifest(name: IndexName, request: Request, ctx: Ctx) -> FastJSONResponse:
    """Blue/green swap of a sharded index to another build (a rebuild with more data, another spec or
    shard count): the new build's shards are placed while the old one serves, then the name flips to
    it between two requests, and the old actors are released once their requests end. Writes made to
    the old build are not copied. 409 for a local index."""
    req, _ = await _json(request, models.ManifestRequest, ctx)
    return FastJSONResponse(await ctx.write(ctx.service.swap_manifest, name, req.manifest, req.replicas))


@router.get("/indexes/{name}", operation_id="describeIndex", response_model=models.IndexInfo,
            responses=_ERRORS, tags=["indexes"])
async def describe_index(name: IndexName, ctx: Ctx) -> FastJSONResponse:
    return FastJSONResponse(await ctx.read(ctx.service.describe, name))


@router.delete("/indexes/{name}", operation_id="dropIndex", response_model=models.Status,
               responses=_ERRORS, tags=["indexes"])
async def drop_index(name: IndexName, ctx: Ctx) -> FastJSONResponse:
    """Delete the index and all its files (a damaged one too). A sharded index is no longer served; its
    build's files stay."""
    await ctx.write(ctx.service.drop, name)
    return FastJSONResponse({"status": "dropped"})


@router.post("/indexes/{name}/repair", operation_id="repairIndex", response_model=models.RepairReport,
             responses=_ERRORS, tags=["indexes"])
async def repair_index(name: IndexName, ctx: Ctx) -> FastJSONResponse:
    """Bring a damaged index back: apply every readable logged operation after its checkpoint (skipping
    damaged records), keep a copy of the original logs, and report what was lost. 409 if not damaged."""
    report = await ctx.write(ctx.service.repair, name)
    return FastJSONResponse(report.to_dict())


@router.post("/indexes/{name}/train", operation_id="trainIndex", status_code=202, response_model=models.Job,
             responses={**_ERRORS, 200: {"model": models.Job, "description": "the finished job (wait=true)"},
                        202: {**_JOB, "headers": {"Location": {"schema": {"type": "string"},
                                                               "description": "where to poll the job"}}}},
             openapi_extra=_body_doc(models.TrainRequest, binary=True, required=False), tags=["indexes"])
async def train_index(
    name: IndexName, request: Request, ctx: Ctx,
    wait: Annotated[bool, Query(description="answer when the job has finished")] = False,
) -> FastJSONResponse:
    """Train in the background on the given vectors, or on the exact vectors the index holds when none are
    sent. Searches keep using the current state until the new one is swapped in; vectors added or deleted
    meanwhile are applied to it. Stored vectors are re-encoded from their exact values where the index
    has them (before training, Refine), else from their reconstructions (the job says which). Poll
    ``GET /indexes/{name}/jobs/{job_id}``, or pass ``wait=true``."""
    x = None
    body = await read_body(request)
    if body:
        _, x = await _vectors_body(request, models.TrainRequest, ctx, name, ctx.config.max_batch,
                                   "training vectors", "max_batch", body)
    job = await ctx.write(ctx.service.start_training, name, x)
    if wait:
        await asyncio.wrap_future(job.future)
        if job.status == "failed":
            raise _job_error(job)
        return FastJSONResponse(job.to_dict())
    return FastJSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/indexes/{name}/jobs/{job.id}"})


@router.get("/indexes/{name}/jobs/{job_id}", operation_id="getJob", response_model=models.Job,
            responses=_ERRORS, tags=["indexes"])
async def get_job(name: IndexName, job_id: Annotated[str, PathParam(max_length=64)], ctx: Ctx) -> FastJSONResponse:
    return FastJSONResponse(ctx.service.job(name, job_id).to_dict())


@router.post("/indexes/{name}/vectors", operation_id="addVectors", response_model=models.AddResponse,
             responses={**_ERRORS, 200: _ADDED},
             openapi_extra=_body_doc(models.AddRequest, binary=True), tags=["vectors"])
async def add_vectors(
    name: IndexName, request: Request, ctx: Ctx,
    ids: Annotated[str | None, Query(pattern=_IDS_PATTERN, description="comma-separated ids, each at most "
                                     "2**63-1 (application/octet-stream bodies only)")] = None,
) -> FastJSONResponse:
    """Add vectors, acknowledged once durable. Before training they are kept raw and encoded when training ends."""
    req, x = await _vectors_body(request, models.AddRequest, ctx, name, ctx.config.max_batch, "vectors", "max_batch")
    new_ids = _parse_ids(ids) if req is None else req.ids
    added, pending = await ctx.write(ctx.service.add, name, x, new_ids)
    return FastJSONResponse({"ids": added, "pending": pending})


async def _ids_body(request: Request, ctx: Ctx) -> list[int]:
    req, _ = await _json(request, models.IdsRequest, ctx)
    check_count(len(req.ids), ctx.config.max_batch, "ids", "max_batch")
    return req.ids


@router.delete("/indexes/{name}/vectors", operation_id="deleteVectors", response_model=models.DeleteResponse,
               responses=_ERRORS, openapi_extra=_body_doc(models.IdsRequest, binary=False), tags=["vectors"])
async def delete_vectors(name: IndexName, request: Request, ctx: Ctx) -> FastJSONResponse:
    """Delete vectors by id; if any id is unknown nothing is deleted (404)."""
    ids = await _ids_body(request, ctx)
    return FastJSONResponse({"deleted": await ctx.write(ctx.service.delete, name, ids)})


@router.post("/indexes/{name}/vectors/delete", operation_id="deleteVectorsPost", response_model=models.DeleteResponse,
             responses=_ERRORS, openapi_extra=_body_doc(models.IdsRequest, binary=False), tags=["vectors"])
async def delete_vectors_post(name: IndexName, request: Request, ctx: Ctx) -> FastJSONResponse:
    """Same as ``DELETE /indexes/{name}/vectors``, for clients that cannot send a body with DELETE."""
    return await delete_vectors(name, request, ctx)


@router.post("/indexes/{name}/vectors/retrieve", operation_id="retrieveVectors", response_model=models.VectorsResponse,
             responses=_ERRORS, openapi_extra=_body_doc(models.IdsRequest, binary=False), tags=["vectors"])
async def retrieve_vectors(name: IndexName, request: Request, ctx: Ctx) -> FastJSONResponse:
    """Vectors by id: exact where the index keeps them (before training, Refine), else reconstructions."""
    ids = await _ids_body(request, ctx)
    x, exact = await ctx.read(ctx.service.retrieve, name, ids)
    return FastJSONResponse({"ids": ids, "vectors": x, "exact": exact})


@router.get("/indexes/{name}/vectors/{id:int}", operation_id="getVector", response_model=models.VectorResponse,
            responses=_ERRORS, tags=["vectors"])
async def get_vector(name: IndexName, id: Annotated[int, PathParam(ge=0, le=MAX_ID, description="vector id")],
                     ctx: Ctx) -> FastJSONResponse:
    x, exact = await ctx.read(ctx.service.retrieve, name, [id])
    return FastJSONResponse({"id": id, "vector": x[0], "exact": exact})


@router.post("/indexes/{name}/search", operation_id="searchIndex", response_model=models.SearchResponse,
             responses=_ERRORS, openapi_extra=_body_doc(models.SearchRequest, binary=True), tags=["vectors"])
async def search(
    name: IndexName, request: Request, ctx: Ctx,
    k: Annotated[int, Query(ge=1, description="neighbours per query (octet-stream bodies only)")] = 10,
    nprobe: Annotated[int | None, Query(ge=1, description="IVF lists to visit (octet-stream bodies only)")] = None,
    rerank: Annotated[bool | None, Query(description="re-rank with exact vectors (octet-stream bodies only)")] = None,
    k_factor: Annotated[int | None, Query(
        ge=1, le=1024, description="re-rank depth factor (octet-stream only)")] = None,
    rescore: Annotated[bool | None, Query(
        description="re-score with float tables, fast-scan indexes (octet-stream bodies only)")] = None,
) -> FastJSONResponse:
    """k nearest neighbours of each query: ids and distances. Distances are squared L2 (ascending) or, for
    ip and cosine indexes, similarities (descending). A parameter the index type does not take (nprobe on
    a flat index) is a 400 naming it."""
    req, xq = await _vectors_body(request, models.SearchRequest, ctx, name, ctx.config.max_queries, "queries",
                                  "max_queries")
    if req is not None:
        k, nprobe, rerank, k_factor, rescore = req.k, req.nprobe, req.rerank, req.k_factor, req.rescore
    if k > ctx.config.max_k:
        raise LimitExceeded(f"k={k} exceeds this server's max_k {ctx.config.max_k}")
    D, I = await ctx.read(ctx.service.search, name, xq, k, nprobe=nprobe, rerank=rerank, k_factor=k_factor,
                          rescore=rescore)
    return FastJSONResponse(_search_body(D, I))
