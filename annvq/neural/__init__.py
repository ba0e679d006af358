"""Neural vector quantization in JAX (``pip install 'annvq[neural]'``): the VQ-VAE / RQ-VAE training
losses and the trainer of :class:`annvq.QINCoQuantizer`. Nothing else in annvq imports this package,
so encoding, decoding and search never need JAX."""
from .losses import (
    VQOutput,
    codebook_loss,
    commitment_loss,
    nearest_codeword,
    rq,
    straight_through,
    vq,
)

__all__ = ["VQOutput", "codebook_loss", "commitment_loss", "nearest_codeword", "rq", "straight_through", "vq"]
