"""Codecs, one module each, all implementing :class:`Quantizer`."""
from .base import Quantizer, code_dtype
from .opq import OPQ
from .pq import ProductQuantizer
from .sq import ScalarQuantizer

__all__ = ["Quantizer", "code_dtype", "ProductQuantizer", "OPQ", "ScalarQuantizer"]
