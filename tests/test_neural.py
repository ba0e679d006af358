"""The VQ-VAE / RQ-VAE losses of annvq.neural on the lecture notes' toy example, checked by hand."""
import numpy as np
import pytest

pytest.importorskip("jax")
import jax
import jax.numpy as jnp

from annvq.neural import (
    codebook_loss,
    commitment_loss,
    nearest_codeword,
    rq,
    straight_through,
    vq,
)

Z = jnp.array([[2.3, 3.7]])
C1 = jnp.array([[2.0, 3.0], [3.0, 4.0]])
BETA = 0.25


def test_first_stage_tie_goes_to_the_first_codeword():
    """The notes' first stage: both codewords lie at squared distance 0.58, e1 = [2, 3], r1 = [0.3, 0.7]."""
    d2 = jnp.sum((Z[:, None, :] - C1[None]) ** 2, axis=-1)
    np.testing.assert_allclose(d2, [[0.58, 0.58]], rtol=1e-6)
    k = nearest_codeword(Z, C1)
    assert k.tolist() == [0]
    np.testing.assert_allclose(Z - C1[k], [[0.3, 0.7]], atol=1e-6)


def test_vq_vae_losses_and_straight_through_by_hand():
    """A VQ-VAE with identity encoder and decoder on the notes' input (the notes' VQ-VAE numbers are
    garbled, so these are worked out here). x = z = [2.3, 3.7] quantizes to e = [2, 3]:

    reconstruction ||x - e||^2 = 0.09 + 0.49 = 0.58, codebook loss ||sg[z] - e||^2 = 0.58,
    commitment 0.25 * 0.58 = 0.145, total 1.305. Gradient with respect to z: the reconstruction term
    reaches z through the straight-through estimator, 2 (e - x) = [-0.6, -1.4], plus the commitment
    term 2 beta (z - e) = [0.15, 0.35]: [-0.45, -1.05]. The codebook loss alone moves e by
    2 (e - z) = [-0.6, -1.4] and leaves z alone.
    """
    x = Z

    def loss(z, cb):
        out = vq(z, cb, BETA)
        return jnp.mean(jnp.sum((x - out.z_q) ** 2, axis=-1)) + out.codebook_loss + out.commitment_loss

    out = vq(Z, C1, BETA)
    np.testing.assert_allclose(out.z_q, [[2.0, 3.0]])
    assert out.codes.tolist() == [0]
    np.testing.assert_allclose(out.codebook_loss, 0.58, rtol=1e-6)
    np.testing.assert_allclose(out.commitment_loss, 0.145, rtol=1e-6)
    np.testing.assert_allclose(loss(Z, C1), 1.305, rtol=1e-6)
    g_z, g_cb = jax.grad(loss, argnums=(0, 1))(Z, C1)
    np.testing.assert_allclose(g_z, [[-0.45, -1.05]], atol=1e-6)
    # the codeword gets the codebook-loss gradient only (plus nothing from the straight-through path)
    np.testing.assert_allclose(g_cb, [[-0.6, -1.4], [0.0, 0.0]], atol=1e-6)
    g_cb_only = jax.grad(lambda cb: codebook_loss(Z, cb[jnp.array([0])]))(C1)
    np.testing.assert_allclose(g_cb_only, [[-0.6, -1.4], [0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda z: codebook_loss(z, C1[:1]))(Z), [[0.0, 0.0]])
    np.testing.assert_allclose(jax.grad(lambda e: commitment_loss(Z, e, BETA))(C1[:1]), [[0.0, 0.0]])


def test_straight_through_value_and_gradient():
    e = jnp.array([[2.0, 3.0]])
    np.testing.assert_allclose(straight_through(Z, e), e)
    w = jnp.array([[1.5, -2.0]])
    np.testing.assert_allclose(jax.grad(lambda z: jnp.sum(w * straight_through(z, e)))(Z), w)


def test_rq_vae_two_stages_by_hand():
    """The notes' RQ-VAE example with a second codebook chosen here (the notes' one is garbled):
    C2 = {[0, 1], [0.5, 0.5]}. Stage 1: e1 = [2, 3] (tie at 0.58, first codeword), r1 = [0.3, 0.7].
    Stage 2: ||r1 - [0, 1]||^2 = 0.18, ||r1 - [0.5, 0.5]||^2 = 0.08, so e2 = [0.5, 0.5] and
    r2 = [-0.2, 0.2]; z_q = [2.5, 3.5].

    Codebook loss 0.58 + 0.08 = 0.66, commitment 0.25 * (0.58 + 0.08) = 0.165. Gradients: codebook
    loss into e1: 2 (e1 - z) = [-0.6, -1.4], into e2: 2 (e2 - r1) = [0.4, -0.4]; commitment into z:
    2 beta ((z - e1) + (z - e1 - e2)) = 0.5 ([0.3, 0.7] + [-0.2, 0.2]) = [0.05, 0.45].
    """
    c2 = jnp.array([[0.0, 1.0], [0.5, 0.5]])
    cbs = jnp.stack([C1, c2])
    out = rq(Z, cbs, BETA)
    assert out.codes.tolist() == [[0, 1]]
    np.testing.assert_allclose(out.z_q, [[2.5, 3.5]], atol=1e-6)
    np.testing.assert_allclose(out.codebook_loss, 0.66, rtol=1e-6)
    np.testing.assert_allclose(out.commitment_loss, 0.165, rtol=1e-6)
    g_cb = jax.grad(lambda c: rq(Z, c, BETA).codebook_loss)(cbs)
    np.testing.assert_allclose(g_cb, [[[-0.6, -1.4], [0, 0]], [[0, 0], [0.4, -0.4]]], atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda z: rq(z, cbs, BETA).codebook_loss)(Z), [[0.0, 0.0]])
    np.testing.assert_allclose(jax.grad(lambda z: rq(z, cbs, BETA).commitment_loss)(Z), [[0.05, 0.45]], atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda c: rq(Z, c, BETA).commitment_loss)(cbs), np.zeros((2, 2, 2)))
    # one stage of rq is vq
    one = rq(Z, cbs[:1], BETA)
    ref = vq(Z, C1, BETA)
    np.testing.assert_allclose(one.z_q, ref.z_q)
    np.testing.assert_allclose(one.codebook_loss, ref.codebook_loss)
