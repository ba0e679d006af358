"""What can go wrong in the service, as domain exceptions, and the one table that maps them (and annvq's
own errors) to HTTP statuses and error codes. The domain layer raises; only the app turns them into
responses."""
from __future__ import annotations

from annvq.errors import (
    AnnvqError,
    ClusterError,
    DimensionError,
    DuplicateIdError,
    FormatError,
    InvalidInputError,
    NotTrainedError,
    ShardUnavailableError,
    SpecError,
    UnknownIdError,
)


class ServiceError(Exception):
    """Base of the service's own errors; ``code`` is the machine-readable error code."""

    code = "service_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class IndexNotFound(ServiceError):
    code = "index_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no index named {name!r}")


class IndexExists(ServiceError):
    code = "index_exists"


class IndexDamaged(ServiceError):
    """The index's stored data failed verification; it is kept as it is until an operator repairs or drops it."""

    code = "index_damaged"


class Conflict(ServiceError):
    """The request does not fit the index's state (training already running, nothing to train on...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class JobNotFound(ServiceError):
    code = "job_not_found"


class Unavailable(ServiceError):
    """The service (or its storage) cannot take the request now: starting, stopping, or the disk failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TooLarge(ServiceError):
    """A request over one of the service's size limits."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LimitExceeded(ServiceError):
    """A parameter over one of this server's limits (max_k, max_dim, max_codec_bytes); answered 400 like
    other values the server cannot take."""

    code = "limit_exceeded"


class BadRequest(ServiceError):
    """A request the HTTP layer cannot read (media type, malformed body)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status


# most specific first: the first matching class decides
HTTP_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (IndexNotFound, 404),
    (JobNotFound, 404),
    (UnknownIdError, 404),
    (IndexExists, 409),
    (IndexDamaged, 409),
    (Conflict, 409),
    (NotTrainedError, 409),
    (DuplicateIdError, 409),
    (TooLarge, 413),
    (LimitExceeded, 400),
    (Unavailable, 503),
    (ShardUnavailableError, 503),
    (ClusterError, 503),
    (DimensionError, 400),
    (SpecError, 400),
    (InvalidInputError, 400),
    (FormatError, 500),
)
ANNVQ_CODES: tuple[tuple[type[AnnvqError], str], ...] = (
    (UnknownIdError, "unknown_id"),
    (NotTrainedError, "not_trained"),
    (DuplicateIdError, "duplicate_id"),
    (ShardUnavailableError, "shard_unavailable"),
    (ClusterError, "cluster_unavailable"),
    (DimensionError, "dimension_mismatch"),
    (SpecError, "invalid_spec"),
    (InvalidInputError, "invalid_input"),
    (FormatError, "storage_error"),
)


def http_status(exc: Exception) -> tuple[int, str]:
    """HTTP status and error code for a domain or annvq exception."""
    if isinstance(exc, BadRequest):
        return exc.status, exc.code
    status = next((s for cls, s in HTTP_STATUS if isinstance(exc, cls)), 400)
    if isinstance(exc, ServiceError):
        return status, exc.code
    return status, next((c for cls, c in ANNVQ_CODES if isinstance(exc, cls)), "invalid_input")
