"""The FastAPI application: middleware (API key, body size), the one place where errors become HTTP
answers, the OpenAPI document with this server's limits, and the lifespan that opens the service.

Every error is answered as ``{"error": {"code": ..., "message": ...}}``. Searches and reads run in a
thread pool of ``search_workers`` threads, writes in a separate small pool, training in background
threads, so the event loop only parses requests and serialises responses.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import numba
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import annvq
from annvq import IndexSpec
from annvq.errors import AnnvqError

from . import models
from .api import Context, router
from .bodies import RequestValidationError
from .config import ServerConfig
from .errors import ServiceError, TooLarge, http_status
from .responses import FastJSONResponse, error_response
from .service import IndexService

log = logging.getLogger("annvq.server")
_WRITE_WORKERS = 4
_WRITE_NICE = 10  # writer threads' niceness on Linux, above the searchers' 0


def _writer_thread(threads: int) -> None:
    """Set up a thread of the write pool: its kernels use ``threads`` threads, as a search does, and on
    Linux it runs at a lower CPU priority than the searches, so a stream of adds that fills the cores
    (encoding is the costly part of an add) delays searches less."""
    numba.set_num_threads(threads)
    if sys.platform == "linux":  # a thread's own niceness; elsewhere this call would renice the process
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _WRITE_NICE)


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
    """Answer 413 to bodies over ``max_bytes``: at once from Content-Length, or as soon as the stream passes
    the limit (with or without Content-Length); a Content-Length that is not a number is a 400."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max = app, max_bytes

    def _too_large(self) -> TooLarge:
        return TooLarge("body_too_large", f"request body over this server's limit of {self.max} bytes "
                                          "(max_body_bytes)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.strip().isdigit():
            await error_response(400, "bad_request", "Content-Length is not a number")(scope, receive, send)
            return
        if length is not None and int(length) > self.max:
            err = self._too_large()
            await error_response(413, err.code, err.message)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)


def _allowed_methods(scope: Scope) -> list[str]:
    """Every method some route accepts at this path (Starlette's 405 names only the first route's)."""
    probe = {**scope, "method": "__none__", "path_params": {}}
    return sorted({m for route in router.routes if route.matches(probe)[0] != Match.NONE
                   for m in getattr(route, "methods", None) or ()})


def install_error_handlers(app: FastAPI) -> None:
    """Domain errors, annvq errors, validation errors and HTTP errors, all as the JSON error body."""

    @app.exception_handler(ServiceError)
    @app.exception_handler(AnnvqError)
    async def _domain_error(request: Request, exc: Exception) -> FastJSONResponse:
        status, code = http_status(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(status, code, str(exc))

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(FastAPIValidationError)
    async def _validation_error(request: Request, exc: Exception) -> FastJSONResponse:
        errors = exc.errors if isinstance(exc, RequestValidationError) else exc.errors()  # type: ignore[attr-defined]
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
        message = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details) or "invalid request"
        return error_response(422, "validation_error", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> FastJSONResponse:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request.scope))
        return error_response(exc.status_code, code, f"{exc.detail}: {request.method} {request.url.path}",
                              headers=headers or None)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> FastJSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")


def _openapi(app: FastAPI, config: ServerConfig) -> dict[str, Any]:
    """OpenAPI with the request models the routes parse themselves, and this server's limits stated."""
    schema = dict(get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    limits = {"AddRequest": config.max_batch, "TrainRequest": config.max_batch, "SearchRequest": config.max_queries}
    components["IndexSpec"] = IndexSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    for model in (models.CreateIndexRequest, models.ManifestRequest, models.AddRequest, models.TrainRequest,
                  models.SearchRequest, models.IdsRequest):
        s = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(s.pop("$defs", {}))
        props = s.get("properties", {})
        for variant in _variants(props.get("vectors")):
            variant.update(maxItems=limits[model.__name__])
            variant["items"]["maxItems"] = config.max_dim
        if "ids" in props:
            for variant in _variants(props["ids"]):
                variant["maxItems"] = config.max_batch
        if "k" in props:
            props["k"]["maximum"] = config.max_k
        if "dim" in props:
            props["dim"]["maximum"] = config.max_dim
        if "spec" in props:  # the object form is an IndexSpec (its pydantic schema cannot name it directly)
            props["spec"]["anyOf"][1] = {"$ref": "#/components/schemas/IndexSpec"}
        components[model.__name__] = s
    for path in schema.get("paths", {}).values():
        for op in path.values():
            for param in op.get("parameters", []):
                if param["name"] == "k" and param["in"] == "query":
                    param["schema"]["maximum"] = config.max_k
    return schema


def _variants(prop: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The array schemas of a property (itself, or the array branch of an anyOf with null)."""
    if not prop:
        return []
    options = prop.get("anyOf", [prop])
    return [o for o in options if o.get("type") == "array"]


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """The ASGI application for ``config`` (default: from ``ANNVQ_*`` environment variables)."""
    config = config or ServerConfig.from_env()
    ctx = Context(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        threads = min(config.search_threads, numba.config.NUMBA_NUM_THREADS)
        ctx.read_pool = ThreadPoolExecutor(config.search_workers, thread_name_prefix="annvq-search",
                                           initializer=numba.set_num_threads, initargs=(threads,))
        ctx.write_pool = ThreadPoolExecutor(_WRITE_WORKERS, thread_name_prefix="annvq-write",
                                            initializer=_writer_thread, initargs=(threads,))
        ctx.service = IndexService(config)
        try:
            await loop.run_in_executor(ctx.write_pool, ctx.service.open)
        except AnnvqError as exc:  # e.g. ClusterError: the scheduler cannot be reached
            log.error("the service cannot start: %s", exc)
            ctx.read_pool.shutdown()
            ctx.write_pool.shutdown()
            raise
        ctx.ready = True
        try:
            yield
        finally:
            ctx.ready = False
            await loop.run_in_executor(ctx.write_pool, ctx.service.close)
            ctx.read_pool.shutdown()
            ctx.write_pool.shutdown()

    app = FastAPI(
        title="annvq", version=annvq.__version__, lifespan=lifespan, default_response_class=FastJSONResponse,
        redirect_slashes=False,
        description="Approximate nearest-neighbour search over vector-quantized codes (PQ, OPQ, SQ, RQ, AQ, CQ; "
                    "flat or IVF). Create an index from a spec, add vectors (JSON or raw float32), train, search.",
    )
    app.state.context = ctx
    app.include_router(router)
    install_error_handlers(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app, config)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    return app


