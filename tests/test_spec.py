"""Index specifications: the string form parses to the pydantic model and back; bad specs name the bad part."""
import pytest

import annvq
from annvq import IndexSpec
from annvq.errors import SpecError
from annvq.index import FlatIndex, IVFIndex

ROUND_TRIP = [
    "PQ8x8",
    "PQ16x4",
    "OPQ16,PQ16x8",
    "SQ8",
    "SQ4",
    "IVF1024,PQ16x8",
    "IVF1024,OPQ16,PQ16x8",
    "IVF256_HKM,PQ8x8,Refine",
    "PQ8x8,Refine",
    "IVF64,SQ8",
    "RQ7x8_N8",
    "AQ7x8_N32",
    "CQ8x8",
    "IVF64,RQ7x8",
    "IVF64,CQ8x8,Refine",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text):
    spec = IndexSpec.parse(text)
    assert spec.to_string() == text
    assert IndexSpec.parse(spec.to_string()) == spec
    assert IndexSpec.validated(**spec.model_dump()) == spec  # the dict form (service, files) agrees


def test_fields():
    s = IndexSpec.parse("IVF1024_HKM,OPQ16,PQ16x6,Refine")
    assert (s.codec, s.M, s.nbits, s.nlist, s.coarse, s.rerank) == ("opq", 16, 6, 1024, "tree", True)
    assert IndexSpec.parse("PQ16").nbits == 8  # faiss's default
    assert IndexSpec.parse("RQ4x8").norm_bits == 8
    assert IndexSpec.parse("IVF8,PQ4x8,RFlat").rerank  # faiss's name for re-ranking


@pytest.mark.parametrize(("text", "names"), [
    ("", "empty"),
    ("PQ", "codec part"),
    ("IVF64", "codec part"),
    ("PQ8x8,SQ8", "exactly one codec"),
    ("OPQ8,PQ16x8", "same M"),
    ("OPQ8,RQ8x8", "followed by a PQ"),
    ("PQ8x8_N8", "RQ, AQ and QINCo"),
    ("IVF64,RQ8x8_N8", "flat RQ, AQ and QINCo"),
    ("PQ8x17", "nbits"),
    ("SQ12", "nbits"),
    ("IVF0,PQ8x8", "nlist"),
    ("LSH64", "codec part"),
    ("PQ８", "codec part"),  # a full-width digit is not a digit here
    ("IVF١٠,PQ8", "codec part"),  # nor an Arabic-Indic one
])
def test_bad_specs_name_the_problem(text, names):
    with pytest.raises(SpecError, match=names):
        IndexSpec.parse(text)


def test_bad_fields_name_the_field():
    with pytest.raises(SpecError, match="M"):
        IndexSpec.validated(codec="pq", M=0)
    with pytest.raises(SpecError, match="codec"):
        IndexSpec.validated(codec="lsh")
    with pytest.raises(SpecError, match="coarse"):
        IndexSpec.validated(codec="pq", coarse="tree")
    with pytest.raises(SpecError, match="norm_bits"):
        IndexSpec.validated(codec="rq", nlist=16, norm_bits=32)


def test_index_factory_builds_what_the_spec_says():
    idx = annvq.index_factory(32, "IVF16,OPQ8,PQ8x6,Refine", metric="ip")
    assert isinstance(idx, IVFIndex) and idx.nlist == 16 and idx.rerank and idx.metric == "ip"
    assert idx.codec.kind == "opq" and idx.codec.M == 8 and idx.codec.nbits == 6
    assert idx.spec == "IVF16,OPQ8,PQ8x6,Refine"
    flat = annvq.index_factory(32, "RQ4x8_N32")
    assert isinstance(flat, FlatIndex) and flat.norms.nbits == 32 and flat.code_size == 4 + 4
    with pytest.raises(SpecError, match="d=30"):
        annvq.index_factory(30, "PQ8x8")  # 8 does not divide 30


def test_specs_are_checked_before_anything_is_built():
    with pytest.raises(SpecError, match="GiB"):
        annvq.index_factory(16, "AQ1024x16")  # 4.3 GB of codebooks: refused, not a MemoryError
    for options, words in [({"random_state": "abc"}, "random_state"), ({"niter": -5}, "niter"),
                           ({"niter": "5"}, "niter"), ({"beam_size": 0}, "beam_size"),
                           ({"nope": 1}, "no option 'nope'"), ({"niter": 2.5}, "niter")]:
        with pytest.raises(SpecError, match=words):
            annvq.index_factory(16, IndexSpec.validated(codec="rq", M=2, nbits=4, options=options))
    idx = annvq.index_factory(16, IndexSpec.validated(codec="rq", M=2, nbits=4,
                                                      options={"niter": 3, "random_state": 7}))
    assert idx.codec.niter == 3 and idx.codec.random_state == 7
