"""The FastAPI application: routes, request parsing (JSON or raw float32), API key, size limits, error bodies.

Every error is answered as ``{"error": {"code": ..., "message": ...}}``. Searches and reads run in a
thread pool of ``search_workers`` threads, writes in a separate small pool, training in background
threads, so the event loop only parses requests and serialises responses.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from http import HTTPStatus
from typing import Annotated, Any, TypeVar

import numba
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIRouter
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import annvq
from annvq.errors import AnnvqError, DimensionError, InvalidInputError

from . import models
from .config import ServerConfig
from .errors import ApiError, annvq_status
from .store import NAME_PATTERN, Job, Store

try:
    import orjson
except ImportError:  # the server extra installs it; stdlib json is the slower fallback
    orjson = None

log = logging.getLogger("annvq.server")
T = TypeVar("T")
_IDS_PATTERN = r"^\d{1,19}(,\d{1,19})*$"
_WRITE_WORKERS = 4
_INLINE_BODY_BYTES = 1 << 16  # JSON bodies up to this size are decoded on the event loop


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def loads(body: bytes) -> Any:
    """Strict JSON: NaN and Infinity tokens are errors (Python's json module alone would accept them)."""
    if orjson is not None:
        return orjson.loads(body)
    return json.loads(body, parse_constant=_reject_constant)


def _tolist(o: Any) -> Any:
    if isinstance(o, (np.ndarray, np.generic)):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


class FastJSONResponse(JSONResponse):
    """JSON through orjson, NumPy arrays serialised natively without a detour through Python lists."""

    def render(self, content: Any) -> bytes:
        if orjson is not None:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        return json.dumps(content, default=_tolist, allow_nan=False, separators=(",", ":")).encode()


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> FastJSONResponse:
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    return FastJSONResponse({"error": err}, status_code=status, headers=headers)


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class _StrictJSONRoute(APIRoute):
    """Routes whose JSON bodies are parsed strictly (see :func:`loads`)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request):
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return route


# --- middleware ---------------------------------------------------------------------------------
class ApiKeyMiddleware:
    """Refuse requests without the API key (``X-API-Key`` or ``Authorization: Bearer``); /health stays open."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key")
            auth = headers.get(b"authorization", b"")
            if given is None and auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            if given is None or not hmac.compare_digest(given, self.key):
                response = error_response(401, "unauthorized", "missing or wrong API key: send the X-API-Key header "
                                          "or Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answer 413 to bodies over ``max_bytes``: at once from Content-Length, or as soon as the stream exceeds it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max = app, max_bytes

    def _too_large(self) -> ApiError:
        return ApiError(413, "body_too_large",
                        f"request body over this server's limit of {self.max} bytes (max_body_bytes)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max):
            err = self._too_large()
            await error_response(err.status, err.code, err.message)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)


# --- service context ----------------------------------------------------------------------------
class Service:
    """What the routes share: the config, the store and the worker pools."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store: Store | None = None  # one per lifespan, so the app can be started again after a stop
        self.ready = False
        self.search_pool: ThreadPoolExecutor | None = None
        self.write_pool: ThreadPoolExecutor | None = None

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.search_pool, partial(fn, *args, **kwargs))

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.write_pool, partial(fn, *args, **kwargs))


def _service(request: Request) -> Service:
    svc: Service = request.app.state.service
    if not svc.ready:
        raise ApiError(503, "not_ready", "the service is starting or stopping")
    return svc


# --- request bodies -----------------------------------------------------------------------------
def _dual_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """OpenAPI request body accepting ``model`` as JSON or raw little-endian float32 vectors."""
    return {"requestBody": {
        "required": required,
        "description": "JSON, or application/octet-stream: n*dim little-endian float32 values (n vectors of the "
                       "index's dimension, row-major) with the other parameters in the query string",
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }}


async def _parse(request: Request, model: type[BaseModel], dim: Callable[[], int], limit: int, what: str,
                 setting: str) -> tuple[Any, np.ndarray | None]:
    """``(request model, vectors)`` from a JSON body, or ``(None, vectors)`` from application/octet-stream.

    ``dim`` gives the index dimension (needed to split a binary body). Large JSON bodies are decoded in
    a worker thread so the event loop keeps serving other requests meanwhile.
    """
    body = await request.body()
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype == "application/octet-stream":
        return None, _binary(body, dim(), limit, what, setting)
    if ctype == "application/json" or ctype.endswith("+json"):
        if len(body) <= _INLINE_BODY_BYTES:
            return _decode(body, model, limit, what, setting)
        return await asyncio.get_running_loop().run_in_executor(None, _decode, body, model, limit, what, setting)
    raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype!r} is not accepted here: "
                   "send application/json or application/octet-stream")


def _decode(body: bytes, model: type[BaseModel], limit: int, what: str, setting: str) -> tuple[Any, np.ndarray | None]:
    """Strict JSON, validated against ``model``, with its ``vectors`` as a float64 array (None when absent)."""
    try:
        obj = loads(body)
    except ValueError as exc:
        error = {"type": "json_invalid", "loc": ("body",), "msg": f"invalid JSON: {exc}"}
        raise RequestValidationError([error]) from None
    try:
        req = model.model_validate(obj)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    if req.vectors is None:
        return req, None
    _check_count(len(req.vectors), limit, what, setting)
    try:
        return req, np.array(req.vectors, dtype=np.float64)
    except ValueError:
        raise InvalidInputError("vectors: rows have different lengths") from None


def _check_count(n: int, limit: int, what: str, setting: str) -> None:
    if n > limit:
        raise ApiError(413, "too_many_vectors",
                       f"{n} {what} in one request; this server takes at most {limit} ({setting})")


def _binary(body: bytes, d: int, limit: int, what: str, setting: str) -> np.ndarray:
    row = 4 * d
    if not body or len(body) % row:
        raise DimensionError(f"binary body of {len(body)} bytes is not a whole, non-zero number of vectors "
                             f"of dimension {d} ({row} bytes of float32 each)")
    _check_count(len(body) // row, limit, what, setting)
    return np.frombuffer(body, dtype="<f4").reshape(-1, d)


def _parse_ids(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    try:
        return np.array([int(t) for t in text.split(",")], dtype=np.int64)
    except OverflowError:
        raise InvalidInputError("ids: values must fit in int64") from None


def _search_body(D: np.ndarray, I: np.ndarray) -> dict[str, Any]:
    """Results per query, best first; the -1 padding of short results is cut off."""
    found = I >= 0
    if found.all():
        return {"ids": I, "distances": D}
    return {"ids": [i[f] for i, f in zip(I, found)], "distances": [d[f] for d, f in zip(D, found)]}


def _job_error(job: Job) -> Exception:
    """The error a failed training job is answered with when the client waited for it."""
    exc = job.exc
    if isinstance(exc, (AnnvqError, ApiError)):
        return exc
    status = 400 if isinstance(exc, (ValueError, TypeError)) else 500
    return ApiError(status, "training_failed", f"training job {job.id} failed: {job.error}")


# --- routes -------------------------------------------------------------------------------------
router = APIRouter(route_class=_StrictJSONRoute)
IndexName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="index name", examples=["demo"])]
VectorIdPath = Annotated[int, PathParam(ge=0, le=2**63 - 1, description="external vector id")]
_ERRORS = {s: {"model": models.ErrorResponse} for s in (400, 401, 404, 409, 413, 415, 422, 503)}


@router.get("/health", response_model=models.Status, tags=["service"])
async def health() -> FastJSONResponse:
    """Liveness: answers while the process runs (no API key needed)."""
    return FastJSONResponse({"status": "ok"})


@router.get("/ready", response_model=models.Status, responses=_ERRORS, tags=["service"])
async def ready(request: Request) -> FastJSONResponse:
    """Readiness: 200 once every index is recovered, 503 while starting or shutting down."""
    svc = _service(request)
    return FastJSONResponse({"status": "ready", "indexes": len(svc.store.indexes)})


@router.get("/indexes", response_model=models.IndexList, responses=_ERRORS, tags=["indexes"])
async def list_indexes(request: Request) -> FastJSONResponse:
    svc = _service(request)
    return FastJSONResponse({"indexes": await svc.read(_describe_all, svc.store)})


def _describe_all(store: Store) -> list[dict[str, Any]]:
    out = []
    for name in store.names():
        try:
            out.append(store.describe(name))
        except ApiError:  # dropped meanwhile
            pass
    return out


@router.put("/indexes/{name}", status_code=201, response_model=models.IndexInfo, responses=_ERRORS, tags=["indexes"])
async def create_index(name: IndexName, body: models.CreateIndexRequest, request: Request) -> FastJSONResponse:
    """Create an empty index from a spec; add vectors and train it in either order."""
    svc = _service(request)
    info = await svc.write(svc.store.create, name, body.dim, body.spec, body.metric)
    return FastJSONResponse(info, status_code=201)


@router.get("/indexes/{name}", response_model=models.IndexInfo, responses=_ERRORS, tags=["indexes"])
async def describe_index(name: IndexName, request: Request) -> FastJSONResponse:
    svc = _service(request)
    return FastJSONResponse(await svc.read(svc.store.describe, name))


@router.delete("/indexes/{name}", response_model=models.Status, responses=_ERRORS, tags=["indexes"])
async def drop_index(name: IndexName, request: Request) -> FastJSONResponse:
    """Delete the index and all its files."""
    svc = _service(request)
    await svc.write(svc.store.drop, name)
    return FastJSONResponse({"status": "dropped"})


@router.post("/indexes/{name}/train", status_code=202, response_model=models.Job, responses=_ERRORS,
             openapi_extra=_dual_body(models.TrainRequest, required=False), tags=["indexes"])
async def train_index(
    name: IndexName, request: Request,
    wait: Annotated[bool, Query(description="answer when the job has finished")] = False,
) -> FastJSONResponse:
    """Train in the background on the given vectors, or on the vectors added so far when none are sent.

    Searches keep using the current state until the trained index is swapped in; vectors added or deleted
    meanwhile are applied to it. Poll ``GET /indexes/{name}/jobs/{job_id}``, or pass ``wait=true``.
    """
    svc = _service(request)
    x = None
    if await request.body():
        _, x = await _parse(request, models.TrainRequest, lambda: svc.store.get(name).dim, svc.config.max_batch,
                            "training vectors", "max_batch")
    job = await svc.write(svc.store.start_training, name, x)
    if wait:
        await asyncio.wrap_future(job.future)
        if job.status == "failed":
            raise _job_error(job)
        return FastJSONResponse(job.to_dict())
    return FastJSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/indexes/{name}/jobs/{job.id}"})


@router.get("/indexes/{name}/jobs/{job_id}", response_model=models.Job, responses=_ERRORS, tags=["indexes"])
async def get_job(name: IndexName, job_id: str, request: Request) -> FastJSONResponse:
    svc = _service(request)
    return FastJSONResponse(svc.store.job(name, job_id).to_dict())


@router.post("/indexes/{name}/vectors", response_model=models.AddResponse, responses=_ERRORS,
             openapi_extra=_dual_body(models.AddRequest), tags=["vectors"])
async def add_vectors(
    name: IndexName, request: Request,
    ids: Annotated[str | None, Query(pattern=_IDS_PATTERN,
                                     description="comma-separated ids (application/octet-stream bodies only)")] = None,
) -> FastJSONResponse:
    """Add vectors, acknowledged once durable. Before training they are kept raw and encoded when training ends."""
    svc = _service(request)
    req, x = await _parse(request, models.AddRequest, lambda: svc.store.get(name).dim, svc.config.max_batch,
                          "vectors", "max_batch")
    new_ids = _parse_ids(ids) if req is None else req.ids
    added, pending = await svc.write(svc.store.add, name, x, new_ids)
    return FastJSONResponse({"ids": added, "pending": pending})


@router.delete("/indexes/{name}/vectors", response_model=models.DeleteResponse, responses=_ERRORS, tags=["vectors"])
async def delete_vectors(name: IndexName, body: models.IdsRequest, request: Request) -> FastJSONResponse:
    """Delete vectors by id; if any id is unknown nothing is deleted (404)."""
    svc = _service(request)
    _check_count(len(body.ids), svc.config.max_batch, "ids", "max_batch")
    return FastJSONResponse({"deleted": await svc.write(svc.store.delete, name, body.ids)})


@router.post("/indexes/{name}/vectors/delete", response_model=models.DeleteResponse, responses=_ERRORS,
             tags=["vectors"])
async def delete_vectors_post(name: IndexName, body: models.IdsRequest, request: Request) -> FastJSONResponse:
    """Same as ``DELETE /indexes/{name}/vectors``, for clients that cannot send a body with DELETE."""
    return await delete_vectors(name, body, request)


@router.post("/indexes/{name}/vectors/retrieve", response_model=models.VectorsResponse, responses=_ERRORS,
             tags=["vectors"])
async def retrieve_vectors(name: IndexName, body: models.IdsRequest, request: Request) -> FastJSONResponse:
    """Vectors by id: reconstructions from their codes, or the raw vectors while the index is untrained."""
    svc = _service(request)
    _check_count(len(body.ids), svc.config.max_batch, "ids", "max_batch")
    x, exact = await svc.read(svc.store.retrieve, name, body.ids)
    return FastJSONResponse({"ids": body.ids, "vectors": x, "exact": exact})


@router.get("/indexes/{name}/vectors/{id}", response_model=models.VectorResponse, responses=_ERRORS, tags=["vectors"])
async def get_vector(name: IndexName, id: VectorIdPath, request: Request) -> FastJSONResponse:
    svc = _service(request)
    x, exact = await svc.read(svc.store.retrieve, name, [id])
    return FastJSONResponse({"id": id, "vector": x[0], "exact": exact})


@router.post("/indexes/{name}/search", response_model=models.SearchResponse, responses=_ERRORS,
             openapi_extra=_dual_body(models.SearchRequest), tags=["vectors"])
async def search(
    name: IndexName, request: Request,
    k: Annotated[int, Query(ge=1, description="neighbours per query (application/octet-stream bodies only)")] = 10,
    nprobe: Annotated[int | None, Query(ge=1, description="IVF lists to visit (octet-stream bodies only)")] = None,
    rerank: Annotated[bool | None, Query(description="re-rank with exact vectors (octet-stream bodies only)")] = None,
) -> FastJSONResponse:
    """k nearest neighbours of each query: ids and distances.

    Distances are squared L2 (ascending) or, for ip and cosine indexes, similarities (descending).
    """
    svc = _service(request)
    req, xq = await _parse(request, models.SearchRequest, lambda: svc.store.get(name).dim, svc.config.max_queries,
                           "queries", "max_queries")
    if req is not None:
        k, nprobe, rerank = req.k, req.nprobe, req.rerank
    if k > svc.config.max_k:
        raise ApiError(422, "limit_exceeded", f"k={k} exceeds this server's max_k {svc.config.max_k}")
    D, I = await svc.read(svc.store.search, name, xq, k, nprobe=nprobe, rerank=rerank)
    return FastJSONResponse(_search_body(D, I))


# --- application --------------------------------------------------------------------------------
def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> FastJSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(AnnvqError)
    async def _annvq_error(request: Request, exc: AnnvqError) -> FastJSONResponse:
        status, code = annvq_status(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(status, code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> FastJSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                   for e in exc.errors()]
        message = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details) or "invalid request"
        return error_response(422, "validation_error", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> FastJSONResponse:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        return error_response(exc.status_code, code, f"{exc.detail}: {request.method} {request.url.path}",
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> FastJSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")


def _install_openapi(app: FastAPI) -> None:
    """OpenAPI with the request models that routes parse themselves (JSON or binary) added as components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (models.AddRequest, models.TrainRequest, models.SearchRequest):
                s = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(s.pop("$defs", {}))
                components[model.__name__] = s
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """The ASGI application for ``config`` (default: from ``ANNVQ_*`` environment variables)."""
    config = config or ServerConfig.from_env()
    svc = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        threads = min(config.search_threads, numba.config.NUMBA_NUM_THREADS)
        svc.search_pool = ThreadPoolExecutor(config.search_workers, thread_name_prefix="annvq-search",
                                             initializer=numba.set_num_threads, initargs=(threads,))
        svc.write_pool = ThreadPoolExecutor(_WRITE_WORKERS, thread_name_prefix="annvq-write")
        svc.store = Store(config)
        await loop.run_in_executor(svc.write_pool, svc.store.open)
        svc.ready = True
        try:
            yield
        finally:
            svc.ready = False
            await loop.run_in_executor(svc.write_pool, svc.store.close)
            svc.search_pool.shutdown()
            svc.write_pool.shutdown()

    app = FastAPI(
        title="annvq", version=annvq.__version__, lifespan=lifespan, default_response_class=FastJSONResponse,
        description="Approximate nearest-neighbour search over vector-quantized codes (PQ, OPQ, SQ, RQ, CQ; flat or "
                    "IVF). Create an index from a spec, add vectors (JSON or raw float32), train, search.",
    )
    app.state.service = svc
    app.include_router(router)
    _install_error_handlers(app)
    _install_openapi(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    return app
