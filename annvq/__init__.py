"""annvq: approximate nearest-neighbour search with vector quantization."""
from .errors import (
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
from .index import BaseIndex, FlatIndex, IVFIndex
from .storage import append, compact, load, migrate, save
from .kmeans import KMeans
from .quantizers import (
    OPQ,
    AdditiveQuantizer,
    CompositeQuantizer,
    ProductQuantizer,
    Quantizer,
    ResidualQuantizer,
    ScalarQuantizer,
)
from .spec import IndexSpec, index_factory

__version__ = "0.1.0"

__all__ = [
    "AnnvqError", "DimensionError", "DuplicateIdError", "FormatError", "InvalidInputError",
    "NotTrainedError", "SpecError", "UnknownIdError", "ShardUnavailableError", "ClusterError",
    "BaseIndex", "FlatIndex", "IVFIndex", "KMeans", "Quantizer", "ProductQuantizer", "OPQ", "ScalarQuantizer",
    "ResidualQuantizer", "AdditiveQuantizer", "CompositeQuantizer",
    "load", "save", "append", "compact", "migrate", "IndexSpec", "index_factory",
]
