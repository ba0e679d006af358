"""annvq: approximate nearest-neighbour search with vector quantization."""
from .errors import (
    AnnvqError,
    DependencyError,
    DimensionError,
    DuplicateIdError,
    FormatError,
    InvalidInputError,
    NotTrainedError,
    SpecError,
    UnknownIdError,
)
from .index import BaseIndex, FlatIndex, IVFIndex
from .io import append, load, save
from .kmeans import KMeans
from .quantizers import (
    OPQ,
    AdditiveQuantizer,
    CompositeQuantizer,
    ProductQuantizer,
    QINCoQuantizer,
    Quantizer,
    ResidualQuantizer,
    ScalarQuantizer,
)
from .spec import IndexSpec, index_factory

__version__ = "0.1.0"

__all__ = [
    "AnnvqError", "DependencyError", "DimensionError", "DuplicateIdError", "FormatError", "InvalidInputError",
    "NotTrainedError", "SpecError", "UnknownIdError",
    "BaseIndex", "FlatIndex", "IVFIndex", "KMeans", "Quantizer", "ProductQuantizer", "OPQ", "ScalarQuantizer",
    "ResidualQuantizer", "AdditiveQuantizer", "CompositeQuantizer", "QINCoQuantizer",
    "load", "save", "append", "IndexSpec", "index_factory",
]
