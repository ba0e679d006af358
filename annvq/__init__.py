"""annvq: approximate nearest-neighbour search with vector quantization."""
from .errors import (
    AnnvqError,
    DimensionError,
    DuplicateIdError,
    FormatError,
    InvalidInputError,
    NotTrainedError,
    SpecError,
    UnknownIdError,
)
from .index import BaseIndex, FlatIndex
from .io import append, load, save
from .kmeans import KMeans
from .quantizers import OPQ, ProductQuantizer, Quantizer, ScalarQuantizer
from .spec import IndexSpec, index_factory

__version__ = "0.1.0"

__all__ = [
    "AnnvqError", "DimensionError", "DuplicateIdError", "FormatError", "InvalidInputError",
    "NotTrainedError", "SpecError", "UnknownIdError",
    "BaseIndex", "FlatIndex", "KMeans", "Quantizer", "ProductQuantizer", "OPQ", "ScalarQuantizer",
    "load", "save", "append", "IndexSpec", "index_factory",
]
