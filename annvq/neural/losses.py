"""The training losses of VQ-VAE (van den Oord et al., 2017) and RQ-VAE (Lee et al., 2022), in JAX.

A VQ bottleneck replaces the encoder output ``z`` by its nearest codeword ``e``. The choice has no
gradient, so training uses three pieces, ``sg`` being the stop-gradient:

- the codebook loss ``||sg[z] - e||^2`` moves the codeword towards the encoder output;
- the commitment loss ``beta ||z - sg[e]||^2`` keeps the encoder output near its codeword;
- the straight-through estimator ``z + sg[e - z]`` equals ``e`` in the forward pass and passes the
  decoder's gradient to ``z`` unchanged in the backward pass.

RQ-VAE quantizes the residual left by the previous stages with one codebook per stage and sums both
losses over the stages; with ``r_l = z - sg[e_1 + ... + e_{l-1}]`` its commitment term
``||r_l - sg[e_l]||^2`` equals ``||z - sg[e_1 + ... + e_l]||^2``. Losses are per-vector squared
norms averaged over the batch. Ties in the nearest-codeword search go to the first codeword.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


class VQOutput(NamedTuple):
    """What a quantization bottleneck returns."""

    z_q: jax.Array  # (n, d) the quantized vectors, with the straight-through gradient
    codes: jax.Array  # (n,) for VQ, (n, L) for RQ: chosen codeword indices
    codebook_loss: jax.Array  # scalar
    commitment_loss: jax.Array  # scalar, already multiplied by beta


def nearest_codeword(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index (n,) of the codeword of ``codebook`` (K, d) nearest to each row of ``z`` (n, d); ties go to
    the lowest index."""
    d2 = jnp.sum((z[:, None, :] - codebook[None, :, :]) ** 2, axis=-1)
    return jnp.argmin(d2, axis=1)


def codebook_loss(z: jax.Array, e: jax.Array) -> jax.Array:
    """``mean_i ||sg[z_i] - e_i||^2``: gradient only into the codewords."""
    return jnp.mean(jnp.sum((sg(z) - e) ** 2, axis=-1))


def commitment_loss(z: jax.Array, e: jax.Array, beta: float) -> jax.Array:
    """``beta mean_i ||z_i - sg[e_i]||^2``: gradient only into the encoder output."""
    return beta * jnp.mean(jnp.sum((z - sg(e)) ** 2, axis=-1))


def straight_through(z: jax.Array, e: jax.Array) -> jax.Array:
    """``z + sg[e - z]``: the value of ``e``, the gradient of ``z``."""
    return z + sg(e - z)


def vq(z: jax.Array, codebook: jax.Array, beta: float = 0.25) -> VQOutput:
    """VQ-VAE bottleneck: nearest codeword, straight-through output, codebook and commitment losses."""
    codes = nearest_codeword(sg(z), codebook)
    e = codebook[codes]
    return VQOutput(straight_through(z, e), codes, codebook_loss(z, e), commitment_loss(z, e, beta))


def rq(z: jax.Array, codebooks: jax.Array, beta: float = 0.25) -> VQOutput:
    """RQ-VAE bottleneck over ``codebooks`` (L, K, d): stage l quantizes ``r_l = z - sg[e_1 + ... + e_{l-1}]``;
    both losses are summed over the stages; ``z_q`` is the straight-through sum of the codewords."""
    total = jnp.zeros_like(z)
    codes, cb_loss, commit = [], 0.0, 0.0
    for cb in codebooks:
        r = z - sg(total)
        k = nearest_codeword(sg(r), cb)
        e = cb[k]
        cb_loss = cb_loss + codebook_loss(r, e)
        commit = commit + commitment_loss(r, e, beta)
        total = total + e
        codes.append(k)
    return VQOutput(straight_through(z, total), jnp.stack(codes, axis=1), cb_loss, commit)
