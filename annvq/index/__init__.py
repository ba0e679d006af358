"""Index types; each composes a codec."""
from .base import BaseIndex
from .flat import FlatIndex
from .ivf import IVFIndex
from .compaction import TieredMergePolicy
from .norms import NormCodec
from .params import FlatSearchParams, IVFSearchParams, SearchParams

__all__ = ["BaseIndex", "FlatIndex", "IVFIndex", "NormCodec", "TieredMergePolicy", "SearchParams",
           "FlatSearchParams", "IVFSearchParams"]
