"""Service settings: one pydantic model filled from ``ANNVQ_*`` environment variables and CLI flags.

Every field ``x`` is read from the environment variable ``ANNVQ_X`` and the flag ``--x`` (underscores
become dashes); a flag beats the environment, which beats the default.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_PREFIX = "ANNVQ_"


class ServerConfig(BaseModel):
    """Where the service keeps its data, where it listens, who may call it and how large requests may be."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(Path("annvq-data"), description="directory holding one sub-directory per index")
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    api_key: str | None = Field(None, description="when set, every request except /health needs X-API-Key or "
                                                  "Authorization: Bearer")
    max_batch: int = Field(65536, ge=1, description="most vectors in one add or train request")
    max_queries: int = Field(4096, ge=1, description="most query vectors in one search request")
    max_k: int = Field(1024, ge=1, description="largest k a search may ask for")
    max_dim: int = Field(4096, ge=1, description="largest vector dimension an index may have")
    max_body_bytes: int = Field(128 << 20, ge=1024, description="largest request body in bytes")
    max_codec_bytes: int = Field(256 << 20, ge=1 << 16, description="largest model (codebooks, rotation, IVF "
                                                                   "centroids) an index spec may ask for, in bytes")
    checkpoint_ops: int = Field(1000, ge=1, description="checkpoint an index after this many logged operations")
    checkpoint_seconds: float = Field(60.0, gt=0, description="checkpoint an index with logged operations at least "
                                                             "this often")
    checkpoint_backoff_seconds: float = Field(300.0, gt=0, description="longest wait before retrying a failed "
                                                                       "checkpoint (waits double from 2 s)")
    compaction_seconds: float = Field(10.0, gt=0, description="how often the background merge checks each index's "
                                                              "segments against its merge policy")
    search_workers: int = Field(os.cpu_count() or 2, ge=1, description="threads running searches and reads")
    search_threads: int = Field(1, ge=1, description="Numba threads inside one search (1: requests run side by side "
                                                    "instead, without thread-team start-up waits on a busy machine)")
    train_workers: int = Field(1, ge=1, description="training jobs that may run at the same time")
    scheduler: str | None = Field(None, description="Dask scheduler address (e.g. tcp://host:8786): serve sharded "
                                                    "indexes built by 'annvq build' from that cluster; unset: local "
                                                    "indexes only, and Dask is never imported")
    scheduler_timeout: float = Field(10.0, gt=0, description="seconds to wait for the scheduler at start before "
                                                             "giving up")
    replicas: int = Field(1, ge=1, description="replicas of every shard of a sharded index, on distinct workers, "
                                               "unless its request says otherwise")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log verbosity")
    access_log: bool = Field(False, description="log every request")

    @field_validator("api_key", "scheduler")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Settings from ``ANNVQ_*`` variables, with ``overrides`` (those not None) taking precedence."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            if (v := environ.get(ENV_PREFIX + name.upper())) is not None:
                values[name] = v
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def build_parser() -> argparse.ArgumentParser:
    """``python -m server`` flags, one per :class:`ServerConfig` field (unset flags fall back to the environment)."""
    parser = argparse.ArgumentParser(
        prog="python -m annvq_server",
        description="annvq REST service: vector indexes with quantized codes over HTTP (docs at /docs).",
    )
    for name, field in ServerConfig.model_fields.items():
        env = ENV_PREFIX + name.upper()
        default = field.default if not callable(field.default) else None
        text = f"{field.description} (env {env}; default {default})"
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, default=None, metavar=name.upper(), help=text)
    return parser
