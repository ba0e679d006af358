"""annvq: approximate nearest-neighbour search with vector quantization."""
from .errors import (
    AnnvqError,
    ClusterError,
    DependencyError,
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
from .kmeans import KMeans
from .quantizers import (
    OPQ,
    AdditiveQuantizer,
    CompositeQuantizer,
    LatticeQuantizer,
    ProductQuantizer,
    QINCoQuantizer,
    Quantizer,
    ResidualQuantizer,
    ScalarQuantizer,
)
from .spec import IndexSpec, index_factory
from .storage import append, compact, load, migrate, save

__version__ = "0.1.0"

__all__ = [
    "AnnvqError", "DependencyError", "DimensionError", "DuplicateIdError", "FormatError", "InvalidInputError",
    "NotTrainedError", "SpecError", "UnknownIdError", "ShardUnavailableError", "ClusterError",
    "BaseIndex", "FlatIndex", "IVFIndex", "KMeans", "Quantizer", "ProductQuantizer", "OPQ", "ScalarQuantizer",
    "ResidualQuantizer", "AdditiveQuantizer", "CompositeQuantizer", "LatticeQuantizer", "QINCoQuantizer",
    "load", "save", "append", "compact", "migrate", "IndexSpec", "index_factory",
]


def __getattr__(name: str):
    """``annvq.LVQClassifier`` is imported on first use: it needs scikit-learn (``annvq[lvq]``)."""
    if name == "LVQClassifier":
        from .lvq import LVQClassifier

        return LVQClassifier
    raise AttributeError(f"module 'annvq' has no attribute {name!r}")
