"""Typed search parameters: one pydantic model per index type, shared by Python, the CLI and REST.

``index.search(xq, k, nprobe=16)`` and ``index.search(xq, k, params=IVFSearchParams(nprobe=16))`` are
the same call. A parameter the index type does not take (``nprobe`` on a flat index), or a misspelt
one, is an :class:`~annvq.errors.InvalidInputError` naming it and listing what the index takes.
Fields left None fall back to the index's stored defaults.
"""
from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidInputError


class SearchParams(BaseModel):
    """Parameters every index takes: re-ranking with exact vectors (indexes built with ``Refine``), and
    re-scoring with float tables (fast-scan indexes)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    rerank: bool | None = Field(None, description="re-rank candidates with the exact vectors (indexes built with "
                                                  "Refine); default: on for such indexes")
    k_factor: int | None = Field(None, ge=1, le=1024, description="re-rank the best k_factor * k candidates")
    rescore: bool | None = Field(None, description="fast-scan indexes (PQ<M>x4fs): re-score the best k_factor * k "
                                                   "candidates (k_factor default 2) with the float tables their "
                                                   "uint8 tables approximate; default off")


class FlatSearchParams(SearchParams):
    """Search parameters of a flat (exhaustive) index."""


class IVFSearchParams(SearchParams):
    """Search parameters of an IVF index."""

    nprobe: int | None = Field(None, ge=1, le=1 << 20, description="inverted lists visited per query")


def parse_params(model: type[SearchParams], params: SearchParams | dict[str, Any] | None,
                 kwargs: dict[str, Any], what: str) -> SearchParams:
    """``params`` (a model or a dict) merged with keyword arguments, validated against ``model``.

    None values are dropped (they mean "the index's default"). Errors name the parameter.
    """
    if params is None and all(v is None for v in kwargs.values()):
        return _defaults(model)  # the common call: nothing to validate
    values: dict[str, Any] = {}
    if isinstance(params, SearchParams):
        if not isinstance(params, model):
            raise InvalidInputError(f"params: {what} takes {model.__name__}, got {type(params).__name__}")
        values.update(params.model_dump(exclude_none=True))
    elif isinstance(params, dict):
        values.update({k: v for k, v in params.items() if v is not None})
    elif params is not None:
        raise InvalidInputError(f"params: expected {model.__name__} or a dict, got {type(params).__name__}")
    values.update({k: v for k, v in kwargs.items() if v is not None})
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        raise InvalidInputError(f"unknown search parameter(s) {', '.join(map(repr, unknown))} for {what}; "
                                f"it takes: {', '.join(model.model_fields)}")
    try:
        return model.model_validate({k: int(v) if _is_int(v) else v for k, v in values.items()})
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInputError(f"search parameters: {msgs}") from None


@cache
def _defaults(model: type[SearchParams]) -> SearchParams:
    return model()


def _is_int(v: Any) -> bool:
    """NumPy integers count as integers (strict pydantic would refuse them); bools stay bools."""
    import numpy as np

    return isinstance(v, np.integer)
