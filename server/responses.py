"""JSON responses through orjson (NumPy arrays serialised natively) and the error body format."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse

try:
    import orjson
except ImportError:  # the server extra installs it; stdlib json is the slower fallback
    orjson = None


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
    """``{"error": {"code", "message", "details"?}}`` with ``status``."""
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    return FastJSONResponse({"error": err}, status_code=status, headers=headers)
