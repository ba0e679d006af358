"""Index types; each composes a codec."""
from .base import BaseIndex
from .flat import FlatIndex
from .norms import NormCodec

__all__ = ["BaseIndex", "FlatIndex", "NormCodec"]
