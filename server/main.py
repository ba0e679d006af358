"""Start the service: :func:`run` for callers such as the ``annvq serve`` CLI, :func:`serve` for a ready config."""
from __future__ import annotations

import json
import logging
from typing import Any

from .config import ServerConfig


def _json_error_protocol() -> type:
    """uvicorn's h11 protocol, answering requests it cannot parse (e.g. ``Content-Length: abc``) with the
    service's JSON error body instead of plain text."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JSONErrorH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": {"code": "bad_request", "message": msg}}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JSONErrorH11Protocol


def serve(config: ServerConfig) -> None:
    """Run uvicorn with the app for ``config`` until SIGINT/SIGTERM (indexes are checkpointed on the way out)."""
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=config.log_level,
                access_log=config.access_log, timeout_graceful_shutdown=30, http=_json_error_protocol())


def run(host: str | None, port: int | None, data_dir: str | None, api_key: str | None, **limits: Any) -> None:
    """Serve indexes in ``data_dir`` on ``host:port``.

    Any argument left None comes from its ``ANNVQ_*`` variable, else the default (no API key). ``limits`` are further
    :class:`~annvq_server.config.ServerConfig` fields (max_batch, max_body_bytes, checkpoint_ops, ...); those not
    given come from ``ANNVQ_*`` environment variables or the defaults.
    """
    serve(ServerConfig.from_env(host=host, port=port, data_dir=data_dir, api_key=api_key, **limits))
