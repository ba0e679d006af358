"""Start the service: :func:`run` for callers such as the ``annvq serve`` CLI, :func:`serve` for a ready config."""
from __future__ import annotations

import logging
from typing import Any

from .config import ServerConfig


def serve(config: ServerConfig) -> None:
    """Run uvicorn with the app for ``config`` until SIGINT/SIGTERM (indexes are checkpointed on the way out)."""
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=config.log_level,
                access_log=config.access_log, timeout_graceful_shutdown=30)


def run(host: str | None, port: int | None, data_dir: str | None, api_key: str | None, **limits: Any) -> None:
    """Serve indexes in ``data_dir`` on ``host:port``.

    Any argument left None comes from its ``ANNVQ_*`` variable, else the default (no API key). ``limits`` are further
    :class:`~server.config.ServerConfig` fields (max_batch, max_body_bytes, checkpoint_ops, ...); those not
    given come from ``ANNVQ_*`` environment variables or the defaults.
    """
    serve(ServerConfig.from_env(host=host, port=port, data_dir=data_dir, api_key=api_key, **limits))
