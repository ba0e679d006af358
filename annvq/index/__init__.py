"""Index types; each composes a codec."""
from .base import BaseIndex, Encoded
from .compaction import TieredMergePolicy
from .flat import FlatIndex
from .ivf import IVFIndex
from .norms import NormCodec
from .params import FlatSearchParams, IVFSearchParams, SearchParams

__all__ = ["BaseIndex", "Encoded", "FlatIndex", "IVFIndex", "NormCodec", "TieredMergePolicy", "SearchParams",
           "FlatSearchParams", "IVFSearchParams"]
