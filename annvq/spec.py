"""Index specifications: one pydantic model and a compact faiss-style string for it.

Grammar (comma-separated parts, case-sensitive like faiss)::

    [IVF<nlist>[_HKM],] [OPQ<M>,] <codec> [,Refine]

    codec := PQ<M>[x<nbits>] | PQ<M>x4fs | SQ<nbits> | RQ<M>x<nbits>[_N<8|32>] | AQ<M>x<nbits>[_N<8|32>]
           | CQ<M>x<nbits> | LAT<M>[x<nbits>][_Z|_D|_E8][_SPH] | QINCo<M>x<nbits>[_N<8|32>]

Examples: ``PQ8x8``, ``OPQ16,PQ16x8``, ``IVF1024,PQ16x8``, ``IVF256_HKM,RQ7x8,Refine``, ``CQ8x8``, ``IVF256,PQ32x4fs``,
``LAT16x12_E8``, ``QINCo8x8``. The ``fs`` suffix (4-bit PQ or OPQ only) selects the fast-scan layout: the same codes
packed two per byte in blocks of 32 vectors, scanned with SIMD byte shuffles over uint8-quantised
tables (:mod:`annvq.index.fastscan`). ``LAT`` is the lattice quantizer: ``_Z``/``_D``/``_E8`` choose the
lattice (default: E8 for 8 dims per sub-space, else D_n), ``_SPH`` the gain-shape (sphere) variant;
both are kept in ``options``.
``_N<bits>`` (the stored norm of a flat RQ/AQ/QINCo index) is not taken by IVF indexes, which keep exact norms.
``_HKM`` selects the tree-structured (hierarchical k-means) coarse quantizer; ``Refine`` keeps the
exact vectors on disk and re-ranks the top ``k_factor * k`` candidates with them.
"""
from __future__ import annotations

import inspect
import math
import re
import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from .errors import InvalidInputError, SpecError

if TYPE_CHECKING:
    from .index.base import BaseIndex
    from .quantizers import Quantizer

CodecKind = Literal["sq", "pq", "opq", "rq", "aq", "cq", "lat", "qinco"]
ADDITIVE = ("rq", "aq", "cq", "qinco")
_CODEC_NAMES = {"qinco": "QINCo"}  # spelling in spec strings where it is not the upper-case kind
_STORED_NORM = ("rq", "aq", "qinco")  # codecs whose flat indexes store ||x_hat||^2 under L2

_CODEC_RE = re.compile(r"^(PQ|RQ|AQ|CQ|QINCo)([0-9]+)(?:x([0-9]+)(fs)?)?(?:_N([0-9]+))?$")
_SQ_RE = re.compile(r"^SQ([0-9]+)$")
_LAT_RE = re.compile(r"^LAT([0-9]+)(?:x([0-9]+))?(?:_(Z|D|E8))?(_SPH)?$")
_IVF_RE = re.compile(r"^IVF([0-9]+)(_HKM)?$")
_OPQ_RE = re.compile(r"^OPQ([0-9]+)$")
MAX_MODEL_BYTES = 2 << 30  # refuse specs whose codebooks and centroids would not fit in memory anyway
_AT_LEAST_ONE = ("beam_size", "train_beam_size", "max_points_per_centroid", "max_train_points")


def whole_number(value: Any) -> Any:
    """JSON integers, also written as 8.0 (JSON Schema's ``integer``); never strings or booleans."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value}")
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(whole_number)]
"""An int field that takes what JSON Schema calls an integer (5 or 5.0) and nothing else."""


class IndexSpec(BaseModel):
    """What index to build: the codec, its size, and the optional IVF layer and re-ranking."""

    model_config = ConfigDict(extra="forbid")

    codec: CodecKind = Field(description="codec: sq, pq, opq, rq, aq, cq, lat or qinco")
    M: WholeNumber = Field(8, ge=1, le=1024, description="number of sub-codes per vector (d for sq)")
    nbits: WholeNumber = Field(8, ge=1, le=16, description="bits per sub-code")
    norm_bits: Literal[8, 32] = Field(8, description="bits of the stored ||x||^2 for flat rq/aq/qinco indexes under L2 "
                                      "(IVF indexes keep it exactly, in memory)")
    nlist: WholeNumber | None = Field(None, ge=1, le=1 << 20,
                                      description="inverted lists; None for a flat (exhaustive) index")
    coarse: Literal["flat", "tree"] = Field("flat", description="coarse quantizer of an IVF index")
    rerank: bool = Field(False, strict=True, description="keep exact vectors and re-rank candidates with them")
    fast_scan: bool = Field(False, strict=True, description="fast-scan layout ('fs'): 4-bit PQ/OPQ codes packed in "
                            "blocks of 32 vectors, scanned with SIMD byte shuffles")
    options: dict[str, Any] = Field(default_factory=dict, description="extra codec parameters, e.g. beam_size")

    @model_validator(mode="after")
    def _consistent(self) -> IndexSpec:
        if self.codec == "sq" and self.nbits > 8:
            raise ValueError("nbits: sq supports at most 8 bits")
        if self.nlist is None and self.coarse != "flat":
            raise ValueError("coarse: a tree coarse quantizer needs nlist (an IVF index)")
        if self.nlist is not None and self.norm_bits != 8:
            raise ValueError("norm_bits: applies to flat indexes; an IVF index computes exact norms in memory")
        if self.fast_scan and (self.codec not in ("pq", "opq") or self.nbits != 4):
            raise ValueError(f"fast_scan: the fs layout takes 4-bit PQ or OPQ codes, "
                             f"got {self.codec} with nbits={self.nbits}")
        return self

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        """Parse a spec string; raises :class:`SpecError` naming the part that is wrong."""
        if not isinstance(text, str) or not text.strip():
            raise SpecError("index spec: empty string")
        parts = [p.strip() for p in text.split(",")]
        fields: dict[str, Any] = {}
        opq_m = None
        if parts and parts[-1] in ("Refine", "RFlat"):
            fields["rerank"] = True
            parts = parts[:-1]
        if parts and (m := _IVF_RE.match(parts[0])):
            fields["nlist"] = int(m.group(1))
            fields["coarse"] = "tree" if m.group(2) else "flat"
            parts = parts[1:]
        if parts and (m := _OPQ_RE.match(parts[0])):
            opq_m = int(m.group(1))
            parts = parts[1:]
        if len(parts) != 1:
            raise SpecError(f"index spec {text!r}: expected exactly one codec part "
                            f"(PQ, SQ, RQ, AQ, CQ, LAT or QINCo), got {parts}")
        part = parts[0]
        if m := _SQ_RE.match(part):
            fields.update(codec="sq", nbits=int(m.group(1)), M=1)
        elif m := _LAT_RE.match(part):
            fields.update(codec="lat", M=int(m.group(1)), nbits=int(m.group(2) or 8))
            options = {"lattice": m.group(3).lower()} if m.group(3) else {}
            if m.group(4):
                options["shape"] = "sphere"
            fields["options"] = options
        elif m := _CODEC_RE.match(part):
            kind = m.group(1).lower()
            fields.update(codec=kind, M=int(m.group(2)), nbits=int(m.group(3) or 8))
            if m.group(4):
                fields["fast_scan"] = True
            if m.group(5):
                if kind not in _STORED_NORM or "nlist" in fields:
                    raise SpecError(f"index spec {text!r}: _N<bits> (stored norm) applies to flat RQ, AQ and QINCo "
                                    "indexes only")
                fields["norm_bits"] = int(m.group(5))
        else:
            raise SpecError(f"index spec {text!r}: cannot parse codec part {part!r}")
        if opq_m is not None:
            if fields["codec"] != "pq":
                raise SpecError(f"index spec {text!r}: OPQ{opq_m} must be followed by a PQ codec")
            if opq_m != fields["M"]:
                raise SpecError(f"index spec {text!r}: OPQ{opq_m} and PQ{fields['M']} must use the same M")
            fields["codec"] = "opq"
        return cls.validated(**fields)

    @classmethod
    def validated(cls, **fields: Any) -> IndexSpec:
        """Build from fields, turning pydantic errors into a SpecError naming the field."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
            raise SpecError(f"invalid index spec: {msgs}") from None

    def model_bytes(self, d: int) -> int:
        """About how many bytes training learns for dimension ``d``: codebooks, OPQ rotation, IVF centroids."""
        per_codebook = (1 << self.nbits) * (d if self.codec in ADDITIVE else (d // self.M if self.codec != "sq" else 1))
        codebooks = per_codebook * (self.M if self.codec != "sq" else d)
        rotation = d * d if self.codec == "opq" else 0
        return 4 * (codebooks + rotation + (self.nlist or 0) * d)

    def to_string(self) -> str:
        """The compact string form; ``IndexSpec.parse(s.to_string()) == s`` (options aside)."""
        parts = []
        if self.nlist is not None:
            parts.append(f"IVF{self.nlist}" + ("_HKM" if self.coarse == "tree" else ""))
        if self.codec == "sq":
            parts.append(f"SQ{self.nbits}")
        elif self.codec == "lat":
            lattice = str(self.options.get("lattice", "auto")).upper()
            parts.append(f"LAT{self.M}x{self.nbits}" + ("" if lattice == "AUTO" else f"_{lattice}")
                         + ("_SPH" if self.options.get("shape") == "sphere" else ""))
        elif self.codec in ("pq", "opq"):
            if self.codec == "opq":
                parts.append(f"OPQ{self.M}")
            parts.append(f"PQ{self.M}x{self.nbits}" + ("fs" if self.fast_scan else ""))
        else:
            norm = f"_N{self.norm_bits}" if self.codec in _STORED_NORM and self.nlist is None else ""
            parts.append(f"{_CODEC_NAMES.get(self.codec, self.codec.upper())}{self.M}x{self.nbits}{norm}")
        if self.rerank:
            parts.append("Refine")
        return ",".join(parts)


def as_spec(spec: IndexSpec | str | dict[str, Any]) -> IndexSpec:
    if isinstance(spec, IndexSpec):
        return spec
    if isinstance(spec, str):
        return IndexSpec.parse(spec)
    if isinstance(spec, dict):
        return IndexSpec.validated(**spec)
    raise SpecError(f"index spec must be a string, a dict or an IndexSpec, got {type(spec).__name__}")


def make_codec(spec: IndexSpec, d: int) -> Quantizer:
    """The codec a spec describes, untrained, for dimension ``d``."""
    from .quantizers.base import _REGISTRY

    cls: Any = _REGISTRY.get(spec.codec)
    if cls is None:
        raise SpecError(f"codec: {spec.codec!r} is not available in this build of annvq")
    size = spec.model_bytes(d)
    if size > MAX_MODEL_BYTES:
        raise SpecError(f"index spec {spec.to_string()!r} for d={d}: its codebooks and centroids would take about "
                        f"{size / 2**30:.1f} GiB (the limit is {MAX_MODEL_BYTES // 2**30} GiB)")
    _check_options(cls, spec.options)
    kwargs: dict[str, Any] = dict(spec.options)
    if spec.codec != "sq":
        kwargs["M"] = spec.M
    try:
        return cls(d=d, nbits=spec.nbits, **kwargs)
    except TypeError as exc:
        raise SpecError(f"options: {exc}") from None
    except InvalidInputError as exc:
        raise SpecError(f"index spec {spec.to_string()!r} for d={d}: {exc}") from None


def _check_options(cls: Any, options: dict[str, Any]) -> None:
    """Codec options must be constructor parameters of the right type (strictly: no "5" for 5) and sane
    values: integers non-negative (beam sizes and caps at least 1), floats finite and non-negative."""
    sig = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__)
    allowed = [p for p in sig.parameters if p not in ("self", "d", "M", "nbits")]
    for name, value in options.items():
        if name not in allowed:
            raise SpecError(f"options: {cls.__name__} has no option {name!r}; it takes: {', '.join(allowed)}")
        try:
            TypeAdapter(hints.get(name, Any)).validate_python(value, strict=True)
        except ValidationError as exc:
            raise SpecError(f"options.{name}: {exc.errors()[0]['msg']} (got {value!r})") from None
        low = 1 if name in _AT_LEAST_ONE else 0
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not (
                value >= low and (not isinstance(value, float) or math.isfinite(value))):
            raise SpecError(f"options.{name}: must be a finite number >= {low}, got {value!r}")


def index_factory(d: int, spec: IndexSpec | str | dict[str, Any], metric: str = "l2") -> BaseIndex:
    """Build an untrained index for ``d``-dimensional vectors from a spec (string, dict or model)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise SpecError(f"d must be a positive integer, got {d!r}")
    spec = as_spec(spec)
    codec = make_codec(spec, d)
    index: BaseIndex
    if spec.nlist is None:
        from .index.flat import FlatIndex

        index = FlatIndex(codec, metric=metric, norm_bits=spec.norm_bits, rerank=spec.rerank,
                          fast_scan=spec.fast_scan)
    else:
        from .index.ivf import IVFIndex

        index = IVFIndex(codec, nlist=spec.nlist, metric=metric, coarse=spec.coarse, rerank=spec.rerank,
                         fast_scan=spec.fast_scan)
    index.spec = spec.to_string()
    return index
