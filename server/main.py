"""Start the service: :func:`run` for callers such as the ``annvq serve`` CLI, :func:`serve` for a ready config."""
from __future__ import annotations

import json
import logging
from typing import Any

from .config import ServerConfig


def _json_error_protocol() -> type:
    """uvicorn's httptools protocol, answering requests it cannot parse (e.g. ``Content-Length: abc``) with the
    service's JSON error body instead of plain text.

    httptools' C parser rather than h11's pure-Python one: with two clients streaming batches of 100
    vectors the service sustained 7-11% more adds."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class JSONErrorHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": {"code": "bad_request", "message": msg}}).encode()
            self.transport.write(b"".join((
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n",
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body)))
            self.transport.close()

    return JSONErrorHttpToolsProtocol


def serve(config: ServerConfig) -> None:
    """Run uvicorn with the app for ``config`` until SIGINT/SIGTERM (indexes are checkpointed on the way out)."""
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # asyncio's loop even where uvloop is installed (the distributed extra brings it): HTTP adds measured no
    # faster on uvloop, and the service's durability tests run on asyncio
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=config.log_level,
                access_log=config.access_log, timeout_graceful_shutdown=30, http=_json_error_protocol(), loop="asyncio")


def run(host: str | None, port: int | None, data_dir: str | None, api_key: str | None, **limits: Any) -> None:
    """Serve indexes in ``data_dir`` on ``host:port``.

    Any argument left None comes from its ``ANNVQ_*`` variable, else the default (no API key). ``limits`` are further
    :class:`~annvq_server.config.ServerConfig` fields (max_batch, max_body_bytes, checkpoint_ops, ...); those not
    given come from ``ANNVQ_*`` environment variables or the defaults.
    """
    serve(ServerConfig.from_env(host=host, port=port, data_dir=data_dir, api_key=api_key, **limits))
