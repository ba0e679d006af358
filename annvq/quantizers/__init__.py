"""Codecs, one module each, all implementing :class:`Quantizer`."""
from .additive import AdditiveCodec
from .aq import AdditiveQuantizer
from .base import Quantizer, code_dtype
from .cq import CompositeQuantizer
from .lattice import LatticeQuantizer
from .opq import OPQ
from .pq import ProductQuantizer
from .qinco import QINCoQuantizer
from .rq import ResidualQuantizer
from .sq import ScalarQuantizer

__all__ = ["Quantizer", "code_dtype", "ProductQuantizer", "OPQ", "ScalarQuantizer",
           "AdditiveCodec", "ResidualQuantizer", "AdditiveQuantizer", "CompositeQuantizer",
           "LatticeQuantizer", "QINCoQuantizer"]
