"""Request bodies: JSON or raw little-endian float32, read with memory bounded by the body's size.

A JSON body's ``vectors`` array is located and measured (rows, numbers per row) by a byte scanner
before any number is parsed, so a wrong dimension or an oversized batch is refused at once; the rows
are then parsed a block at a time straight into a float32 array. Python floats for the whole batch
(about 32 bytes per number) never exist. The rest of the body is parsed and validated by pydantic.
"""
from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from numba import njit
from pydantic import BaseModel, ValidationError

from annvq.errors import DimensionError, InvalidInputError

from .errors import BadRequest, TooLarge

try:
    import orjson
except ImportError:  # the server extra installs it; stdlib json is the slower fallback
    orjson = None

M = TypeVar("M", bound=BaseModel)
_ROWS_PER_BLOCK = 512
_WS = np.zeros(256, dtype=np.bool_)
_WS[[0x20, 0x09, 0x0A, 0x0D]] = True
_NUM = np.zeros(256, dtype=np.bool_)
_NUM[np.frombuffer(b"0123456789+-.eE", dtype=np.uint8)] = True


class RequestValidationError(Exception):
    """Pydantic-style errors of a request body (answered 422)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


def loads(body: bytes | bytearray | memoryview) -> Any:
    """Strict JSON: NaN and Infinity tokens are errors (Python's json module alone would accept them)."""
    if orjson is not None:
        return orjson.loads(body)
    import json

    def reject(token: str) -> Any:
        raise ValueError(f"{token} is not valid JSON")

    return json.loads(bytes(body), parse_constant=reject)


@njit(cache=True)
def _skip_ws(buf, i, ws):
    while i < buf.shape[0] and ws[buf[i]]:
        i += 1
    return i


@njit(cache=True)
def _string_end(buf, i):
    """End (exclusive) of the JSON string starting at ``buf[i] == '"'``; -1 if unterminated."""
    n = buf.shape[0]
    i += 1
    while i < n:
        if buf[i] == 92:  # backslash: skip the escaped character
            i += 2
        elif buf[i] == 34:
            return i + 1
        else:
            i += 1
    return -1


@njit(cache=True)
def _value_end(buf, i):
    """End (exclusive) of the JSON value starting at ``i``, strings and nesting tracked; -1 if unterminated."""
    n = buf.shape[0]
    c = buf[i]
    if c == 34:
        return _string_end(buf, i)
    if c == 91 or c == 123:  # [ {
        depth = 0
        while i < n:
            c = buf[i]
            if c == 34:
                i = _string_end(buf, i)
                if i < 0:
                    return -1
                continue
            if c == 91 or c == 123:
                depth += 1
            elif c == 93 or c == 125:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    while i < n:  # a scalar ends at , ] } or white space
        c = buf[i]
        if c == 44 or c == 93 or c == 125 or c == 32 or c == 9 or c == 10 or c == 13:
            break
        i += 1
    return i


@njit(cache=True)
def find_key(buf, key, ws):
    """``(start, end)`` of the value of top-level ``key`` in a JSON object; (-1, -1) when absent,
    (-2, -2) when the body is not a well-formed object at the top level."""
    n = buf.shape[0]
    i = _skip_ws(buf, 0, ws)
    if i >= n or buf[i] != 123:
        return -2, -2
    i = _skip_ws(buf, i + 1, ws)
    if i < n and buf[i] == 125:
        return -1, -1
    found_s, found_e = -1, -1
    while i < n:
        if buf[i] != 34:
            return -2, -2
        ke = _value_end(buf, i)
        if ke < 0:
            return -2, -2
        match = ke - i - 2 == key.shape[0]
        if match:
            for j in range(key.shape[0]):
                if buf[i + 1 + j] != key[j]:
                    match = False
                    break
        i = _skip_ws(buf, ke, ws)
        if i >= n or buf[i] != 58:  # :
            return -2, -2
        vs = _skip_ws(buf, i + 1, ws)
        if vs >= n:
            return -2, -2
        ve = _value_end(buf, vs)
        if ve < 0:
            return -2, -2
        if match:
            found_s, found_e = vs, ve
        i = _skip_ws(buf, ve, ws)
        if i < n and buf[i] == 44:  # ,
            i = _skip_ws(buf, i + 1, ws)
            continue
        if i < n and buf[i] == 125:
            return found_s, found_e
        return -2, -2
    return -2, -2


@njit(cache=True)
def measure_rows(buf, s, e, ws, num):
    """Rows of the array of number arrays ``buf[s:e]``: ``(starts, ends, counts, error)``.

    ``starts[r]:ends[r]`` spans row r with its brackets; ``counts[r]`` numbers in it. ``error`` is 0,
    or 1 (not an array of arrays), 2 (a non-number inside a row), 3 (an empty row).
    """
    cap = 16
    starts = np.empty(cap, np.int64)
    ends = np.empty(cap, np.int64)
    counts = np.empty(cap, np.int64)
    nrow = 0
    i = _skip_ws(buf, s, ws)
    if i >= e or buf[i] != 91:
        return starts[:0], ends[:0], counts[:0], 1
    i = _skip_ws(buf, i + 1, ws)
    if i < e and buf[i] == 93:
        return starts[:0], ends[:0], counts[:0], 0
    while i < e:
        if buf[i] != 91:
            return starts[:0], ends[:0], counts[:0], 1
        rs = i
        i = _skip_ws(buf, i + 1, ws)
        count = 0
        expect_num = True
        while i < e and buf[i] != 93:
            c = buf[i]
            if expect_num:
                if not num[c]:
                    return starts[:0], ends[:0], counts[:0], 2
                while i < e and num[buf[i]]:
                    i += 1
                count += 1
                expect_num = False
            elif c == 44:
                expect_num = True
                i += 1
            elif ws[c]:
                i += 1
            else:
                return starts[:0], ends[:0], counts[:0], 2
            i = _skip_ws(buf, i, ws)
        if i >= e:
            return starts[:0], ends[:0], counts[:0], 1
        if count == 0:
            return starts[:0], ends[:0], counts[:0], 3
        if expect_num:
            return starts[:0], ends[:0], counts[:0], 2
        if nrow == cap:
            cap *= 2
            starts = np.concatenate((starts, np.empty(cap - starts.shape[0], np.int64)))
            ends = np.concatenate((ends, np.empty(cap - ends.shape[0], np.int64)))
            counts = np.concatenate((counts, np.empty(cap - counts.shape[0], np.int64)))
        starts[nrow] = rs
        ends[nrow] = i + 1
        counts[nrow] = count
        nrow += 1
        i = _skip_ws(buf, i + 1, ws)
        if i < e and buf[i] == 44:
            i = _skip_ws(buf, i + 1, ws)
        elif i < e and buf[i] == 93:
            return starts[:nrow], ends[:nrow], counts[:nrow], 0
        else:
            return starts[:0], ends[:0], counts[:0], 1
    return starts[:0], ends[:0], counts[:0], 1


_VECTORS_KEY = np.frombuffer(b"vectors", dtype=np.uint8)


def has_key(body: bytes | bytearray, key: str) -> bool:
    """Whether ``body`` is a JSON object with the top-level key ``key`` (the rest is not parsed)."""
    return find_key(np.frombuffer(body, dtype=np.uint8), np.frombuffer(key.encode(), dtype=np.uint8), _WS)[0] >= 0


def _invalid(loc: tuple[Any, ...], msg: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": loc, "msg": msg}])


def parse_json(body: bytes | bytearray, model: type[M], dim: int | None, limit: int, what: str,
               setting: str) -> tuple[M, np.ndarray | None]:
    """A JSON body validated against ``model``, with its ``vectors`` (when present) as float32 (n, dim).

    ``dim`` None skips the dimension check (the caller has no index to compare with). Raises
    RequestValidationError (422), DimensionError / InvalidInputError (400) or TooLarge (413).
    """
    buf = np.frombuffer(body, dtype=np.uint8)
    s, e = find_key(buf, _VECTORS_KEY, _WS)
    vectors = None
    if s == -2:
        try:
            loads(body)
        except ValueError as exc:
            raise _invalid(("body",), f"invalid JSON: {exc}", "json_invalid") from None
        raise _invalid(("body",), "expected a JSON object", "model_attributes_type")
    view = memoryview(body)
    rest_bytes = body if s < 0 else b"".join((view[:s], b"null", view[e:]))
    if s >= 0 and bytes(view[s:e]).strip() != b"null":
        vectors = _parse_vectors(body, buf, s, e, dim, limit, what, setting)
    try:
        rest = loads(rest_bytes)
    except ValueError as exc:
        raise _invalid(("body",), f"invalid JSON: {exc}", "json_invalid") from None
    if not isinstance(rest, dict):
        raise _invalid(("body",), "expected a JSON object", "model_attributes_type")
    if vectors is not None:
        rest["vectors"] = [[0.0]]  # validated separately above; the model checks every other field
    try:
        req = model.model_validate(rest)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors]) from None
    return req, vectors


def _parse_vectors(body: bytes | bytearray, buf: np.ndarray, s: int, e: int, dim: int | None, limit: int, what: str,
                   setting: str) -> np.ndarray:
    starts, ends, counts, err = measure_rows(buf, s, e, _WS, _NUM)
    if err == 1:
        raise _invalid(("body", "vectors"), "expected an array of arrays of numbers", "list_type")
    if err == 2:
        raise _invalid(("body", "vectors"), "rows must hold numbers only", "float_type")
    if err == 3:
        raise DimensionError("vectors: a row is empty (dimension 0)")
    n = starts.shape[0]
    if n == 0:
        raise _invalid(("body", "vectors"), "List should have at least 1 item after validation, not 0", "too_short")
    check_count(n, limit, what, setting)
    if (counts != counts[0]).any():
        raise InvalidInputError(f"vectors: rows have different lengths (row 0 has {counts[0]}, row "
                                f"{int(np.flatnonzero(counts != counts[0])[0])} has {counts[counts != counts[0]][0]})")
    if dim is not None and counts[0] != dim:
        raise DimensionError(f"vectors: expected dimension {dim}, got {counts[0]}")
    out = np.empty((n, int(counts[0])), dtype=np.float32)
    view = memoryview(body)
    for r in range(0, n, _ROWS_PER_BLOCK):
        r1 = min(n, r + _ROWS_PER_BLOCK)
        try:
            rows = loads(b"".join((b"[", view[starts[r] : ends[r1 - 1]], b"]")))
            out[r:r1] = np.asarray(rows, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise _invalid(("body", "vectors"), f"invalid number in rows {r}..{r1 - 1}: {exc}", "float_parsing") \
                from None
    return out


def check_count(n: int, limit: int, what: str, setting: str) -> None:
    if n > limit:
        raise TooLarge("too_many_vectors", f"{n} {what} in one request; this server takes at most {limit} ({setting})")


def parse_binary(body: bytes | bytearray, dim: int, limit: int, what: str, setting: str) -> np.ndarray:
    """Raw little-endian float32 rows of dimension ``dim`` (no copy)."""
    row = 4 * dim
    if not body or len(body) % row:
        raise DimensionError(f"binary body of {len(body)} bytes is not a whole, non-zero number of vectors "
                             f"of dimension {dim} ({row} bytes of float32 each)")
    check_count(len(body) // row, limit, what, setting)
    return np.frombuffer(body, dtype="<f4").reshape(-1, dim)


def media_type(content_type: str | None) -> str:
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    if ctype == "application/octet-stream" or ctype == "application/json" or ctype.endswith("+json"):
        return "binary" if ctype == "application/octet-stream" else "json"
    raise BadRequest("unsupported_media_type", f"Content-Type {ctype!r} is not accepted here: send "
                     "application/json or application/octet-stream", status=415)
