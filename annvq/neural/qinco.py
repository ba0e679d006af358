"""Training of :class:`annvq.QINCoQuantizer` with JAX and optax.

The loss is the error of the full reconstruction plus ``prefix_weight`` times the errors of the
partial reconstructions of the earlier steps, ``sum_m w_m mean_i ||x_i - x_hat_{i,m}||^2``;
``prefix_weight=1`` is the plain sum over steps, which keeps every code prefix a usable code. Codes
come from the codec's own NumPy encoder with the current weights (no gradient flows through the
search); the gradient flows into the base codebooks and the networks through the decode. Only this
module imports JAX.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ..kernels.qinco import QincoWeights, qinco_decode, qinco_tables
from ..quantizers.qinco import neural_codes

if TYPE_CHECKING:
    from ..quantizers.qinco import QINCoQuantizer

Params = dict[str, jax.Array]


def partial_reconstructions(params: Params, codes: jax.Array) -> jax.Array:
    """Normalised reconstructions after every step, (M, n, d), of codes (n, M); the JAX twin of
    :func:`annvq.kernels.qinco.qinco_decode`."""
    codebooks = params["codebooks"]
    nets = {k: v for k, v in params.items() if k != "codebooks"}

    def block(z, p):
        w_1, w_2 = p
        return z + jax.nn.relu(z @ w_1) @ w_2, None

    def step(x_hat, inputs):
        p, cb, k = inputs
        c = cb[k]
        z = c @ p["w_c"] + p["b_in"] + x_hat @ p["w_x"]
        z, _ = jax.lax.scan(block, z, (p["w_1"], p["w_2"]))
        x_hat = x_hat + c + z @ p["w_out"] + p["b_out"]
        return x_hat, x_hat

    first = codebooks[0][codes[:, 0]]
    _, rest = jax.lax.scan(step, first, (nets, codebooks[1:], codes[:, 1:].T))
    return jnp.concatenate([first[None], rest], axis=0)


def prefix_loss(params: Params, x: jax.Array, codes: jax.Array, prefix_weight: float) -> jax.Array:
    """``mean_i ||x_i - x_hat_{i,M}||^2 + prefix_weight * sum_{m<M} mean_i ||x_i - x_hat_{i,m}||^2``."""
    err = x[None, :, :] - partial_reconstructions(params, codes)
    per_step = jnp.mean(jnp.sum(err * err, axis=-1), axis=-1)
    return per_step[-1] + prefix_weight * jnp.sum(per_step[:-1])


def _weights(params: Params) -> QincoWeights:
    return QincoWeights(**{k: np.asarray(v) for k, v in params.items()})


def _encode(params: Params, x: np.ndarray, preselect: int, beam_size: int) -> np.ndarray:
    w = _weights(params)
    return neural_codes(w, qinco_tables(w), x, preselect, beam_size)


def _reset_unused(params: Params, counts: np.ndarray, x: np.ndarray, codes: np.ndarray,
                  rng: np.random.Generator) -> tuple[Params, int]:
    """Move the base codewords no training vector used this epoch onto residuals of random vectors of
    ``x`` (a batch with its ``codes``), where the step's search will find them. Returns the count."""
    dead = counts == 0
    if not dead.any():
        return params, 0
    w = _weights(params)
    proj = qinco_tables(w).proj
    codebooks = np.array(w.codebooks)
    for m in np.flatnonzero(dead.any(axis=1)):
        rows = np.flatnonzero(dead[m])
        pick = rng.choice(x.shape[0], rows.shape[0], replace=rows.shape[0] > x.shape[0])
        residual = x[pick] - qinco_decode(w, proj, codes[pick], steps=int(m))
        codebooks[m, rows] = residual
    return {**params, "codebooks": jnp.asarray(codebooks)}, int(dead.sum())


def train_qinco(q: QINCoQuantizer, x_tr: np.ndarray, x_val: np.ndarray, rng: np.random.Generator
                ) -> tuple[QincoWeights, list[dict[str, float]]]:
    """Train ``q``'s initial weights on normalised vectors; returns the best weights and the history.

    ``x_val`` may be empty (no early stopping: all ``q.epochs`` run and the last weights are kept).
    """
    params: Params = {k: jnp.asarray(v) for k, v in q.weights._asdict().items()}
    batch = min(q.batch_size, x_tr.shape[0])
    steps_per_epoch = x_tr.shape[0] // batch
    total = q.epochs * steps_per_epoch
    lr = q.peak_lr
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=lr * 0.01, peak_value=lr, warmup_steps=max(1, min(steps_per_epoch, total // 10)),
        decay_steps=max(total, 2), end_value=lr * 0.01)
    decay_mask = {k: k.startswith("w_") for k in params}
    opt = optax.adamw(schedule, weight_decay=q.weight_decay, mask=decay_mask)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(params: Params, opt_state: Any, x: jax.Array, codes: jax.Array):
        loss, grads = jax.value_and_grad(prefix_loss)(params, x, codes, q.prefix_weight)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    eval_loss = jax.jit(lambda params, x, codes: prefix_loss(params, x, codes, q.prefix_weight))
    scale2 = q.scale * q.scale
    history: list[dict[str, float]] = []
    best, best_loss, stale = params, np.inf, 0

    def validate(params: Params) -> dict[str, float]:
        codes = _encode(params, x_val, q.train_preselect, q.train_beam_size)
        w = _weights(params)
        last = x_val - qinco_decode(w, qinco_tables(w).proj, codes)
        return {"val_loss": float(eval_loss(params, jnp.asarray(x_val), jnp.asarray(codes))),
                "val_mse": float(np.mean(np.einsum("ij,ij->i", last, last))) * scale2}

    if x_val.shape[0]:
        history.append({"epoch": 0, **validate(params)})
        best_loss = history[0]["val_loss"]
    bar = tqdm(range(q.epochs), desc=f"QINCo{q.M}x{q.nbits}", unit="epoch",
               disable=None if q.progress is None else not q.progress)
    for epoch in bar:
        t0 = time.perf_counter()
        order = rng.permutation(x_tr.shape[0])
        counts = np.zeros((q.M, q.ksub), dtype=np.int64)
        losses = []
        for s in range(steps_per_epoch):
            xb = x_tr[order[s * batch : (s + 1) * batch]]
            codes = _encode(params, xb, q.train_preselect, q.train_beam_size)
            for m in range(q.M):
                counts[m] += np.bincount(codes[:, m], minlength=q.ksub)
            params, opt_state, loss = train_step(params, opt_state, jnp.asarray(xb), jnp.asarray(codes))
            losses.append(float(loss))
        params, n_reset = _reset_unused(params, counts, xb, codes, rng)
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "reset": n_reset}
        if x_val.shape[0]:
            row.update(validate(params))
            if row["val_loss"] < best_loss:
                best, best_loss, stale = params, row["val_loss"], 0
            else:
                stale += 1
        else:
            best = params
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in ("loss", "val_loss", "val_mse")})
        if stale >= q.patience:
            break
    bar.close()
    return _weights(best), history
