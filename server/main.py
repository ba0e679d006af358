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


def run(host: str, port: int, data_dir: str, api_key: str | None, **limits: Any) -> None:
    """Serve indexes in ``data_dir`` on ``host:port``.

    ``api_key`` None means: use ``ANNVQ_API_KEY`` if set, else no key. ``limits`` are further
    :class:`~server.config.ServerConfig` fields (max_batch, max_body_bytes, checkpoint_ops, ...); those not
    given come from ``ANNVQ_*`` environment variables or the defaults.
    """
    serve(ServerConfig.from_env(host=host, port=port, data_dir=data_dir, api_key=api_key, **limits))
