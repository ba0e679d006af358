"""Index types; each composes a codec."""
from .base import BaseIndex
from .flat import FlatIndex
from .ivf import IVFIndex
from .norms import NormCodec

__all__ = ["BaseIndex", "FlatIndex", "IVFIndex", "NormCodec"]
