"""Service errors and the HTTP status and error code each annvq exception maps to."""
from __future__ import annotations

from annvq.errors import (
    AnnvqError,
    DimensionError,
    DuplicateIdError,
    FormatError,
    InvalidInputError,
    NotTrainedError,
    SpecError,
    UnknownIdError,
)


class ApiError(Exception):
    """An error answered as ``{"error": {"code": code, "message": message}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# most specific first: the first matching class decides
_ANNVQ_STATUS: tuple[tuple[type[AnnvqError], int, str], ...] = (
    (UnknownIdError, 404, "unknown_id"),
    (NotTrainedError, 409, "not_trained"),
    (DuplicateIdError, 409, "duplicate_id"),
    (DimensionError, 400, "dimension_mismatch"),
    (SpecError, 400, "invalid_spec"),
    (InvalidInputError, 400, "invalid_input"),
    (FormatError, 500, "storage_error"),
)


def annvq_status(exc: AnnvqError) -> tuple[int, str]:
    """HTTP status and error code for an annvq exception."""
    for cls, status, code in _ANNVQ_STATUS:
        if isinstance(exc, cls):
            return status, code
    return 400, "invalid_input"


def index_not_found(name: str) -> ApiError:
    return ApiError(404, "index_not_found", f"no index named {name!r}")
