"""QINCo: residual quantization with implicit neural codebooks (Huijben et al., ICML 2024; QINCo2,
Vallaeys et al., ICLR 2025).

Step m of residual quantization adds ``f_m(c, x_hat)``: a base codeword ``c`` corrected by a small
network that sees the partial reconstruction ``x_hat``, so every code prefix gets its own codebook
(the network is described in :mod:`annvq.kernels.qinco`). Vectors are normalised by their mean and
one global scale first. The network's output layers start at zero, so the untrained model *is* the
residual quantizer it starts from; training (JAX + optax, ``annvq[neural]``) then lowers
``sum_m ||x - x_hat_m||^2``. Encoding, decoding and search need NumPy and Numba only.

Search: ADC tables come from additive codebooks (``codebooks``, as in :class:`AdditiveCodec`)
fitted by least squares to the training vectors given their neural codes; an index takes the
``k_factor * k`` best by those tables and re-ranks them by the exact neural decode
(``rerank_decoded``). The norms and biases the index stores for that scan are those of the additive
reconstruction (``table_decode``): with the neural decode's norms instead, the true neighbour of a
SIFT query was among the 100 first for 0.938 of queries, against 0.984.
"""
from __future__ import annotations

from typing import Any

import numba
import numpy as np

from .._threads import single_blas_thread
from ..errors import DependencyError, InvalidInputError
from ..kernels.qinco import QincoTables, QincoWeights, qinco_decode, qinco_encode, qinco_tables
from .additive import AdditiveCodec, least_squares_codebooks
from .rq import ResidualQuantizer

MIN_VALIDATION = 64  # fewest held-out vectors early stopping may rely on
_PEAK_LR = 8e-3  # default peak learning rate for chains of up to 8 steps
_LSQ_POINTS_PER_CODEWORD = 8  # vectors encoded to fit the additive (ADC) codebooks, per codeword


class QINCoQuantizer(AdditiveCodec):
    """QINCo with ``M`` steps of ``nbits`` bits.

    Network: ``n_blocks`` residual blocks of width ``embed_dim`` and hidden width ``hidden_dim`` per
    step. Encoding: at each step every one of the ``beam_size`` partial codes pre-selects its
    ``preselect`` nearest base codewords, the network computes only those, and the best
    ``beam_size`` extensions are kept (plus the greedy path, so a beam is never worse than greedy).
    On SIFT, ``preselect=8, beam_size=16`` reached a 2% lower error than 16 and 8 for the same
    number of network evaluations. ``beam_size=None`` keeps the encoder's work per vector about
    constant: a beam of 256 / M, between 8 and 32 (32 up to 8 steps, 16 at 16). On 100k SIFT
    vectors at ``M=8``, a beam of 32 instead of 16 lowered the error by 2.5% and made the recall
    of the neural reconstructions steadier from one trained model to the next, at half the speed.

    Training (``fit``): a :class:`ResidualQuantizer` on the training split gives the base codebooks;
    then AdamW (peak ``lr``, ``weight_decay``, cosine schedule with warm-up) on mini-batches of
    ``batch_size``, codes from the encoder with ``train_preselect`` / ``train_beam_size``, for at
    most ``epochs`` epochs, stopping when the loss on a held-out ``val_fraction`` of ``x`` has not
    improved for ``patience`` epochs (the best weights are kept). The peak rate matters most: after 8
    epochs on 100k SIFT vectors, ``M=8`` with 1e-3, 2e-3, 4e-3, 8e-3 and 1.6e-2 ended at held-out
    errors of 19,541, 18,455, 17,328, 16,269 and 16,444, while on normalised embeddings and correlated
    data 1e-3 and 8e-3 were within 0.3%; hence 8e-3. A longer chain of steps takes a smaller rate: at
    ``M=16`` 8e-3 diverged after 4 epochs (the training loss rose from then on), while 4e-3 trained
    all 30. ``lr=None`` is therefore 8e-3 up to 8 steps and ``8e-3 * 8 / M`` beyond. The loss is
    the error of the full reconstruction plus ``prefix_weight`` times those of the shorter prefixes
    (1: every prefix counts the same). Beam-search codes are chosen for the full reconstruction, not
    for their prefixes: on clustered synthetic data trained with beam codes, weight 0 ended with a 22%
    lower error than weight 1, so 0 is the default. Codewords unused in an epoch are reset to
    residuals of random training vectors. ``epochs=0`` keeps the residual quantizer. ``progress``:
    show a progress bar (None: only on a terminal). ``history`` holds the losses of every epoch of
    the last ``fit`` (validation ones measured with the training beam).

    Search re-ranks ``k_factor * k`` ADC candidates by their neural reconstructions.
    """

    kind = "qinco"
    rerank_decoded = True

    def __init__(
        self,
        d: int,
        M: int = 8,
        nbits: int = 8,
        embed_dim: int = 64,
        hidden_dim: int = 128,
        n_blocks: int = 2,
        preselect: int = 8,
        beam_size: int | None = None,
        k_factor: int = 10,
        epochs: int = 30,
        batch_size: int = 1024,
        lr: float | None = None,
        weight_decay: float = 1e-4,
        prefix_weight: float = 0.0,
        train_preselect: int = 4,
        train_beam_size: int = 4,
        val_fraction: float = 0.05,
        patience: int = 4,
        max_train_points: int = 100_000,
        progress: bool | None = None,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(d, M, nbits, random_state)
        for name, v in (("embed_dim", embed_dim), ("hidden_dim", hidden_dim), ("preselect", preselect),
                        ("k_factor", k_factor), ("batch_size", batch_size),
                        ("train_preselect", train_preselect), ("train_beam_size", train_beam_size),
                        ("patience", patience), ("max_train_points", max_train_points)):
            if int(v) < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {v}")
        if int(n_blocks) < 0 or int(epochs) < 0:
            raise InvalidInputError(f"n_blocks and epochs must be >= 0, got {n_blocks} and {epochs}")
        if float(prefix_weight) < 0:
            raise InvalidInputError(f"prefix_weight must be >= 0, got {prefix_weight}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise InvalidInputError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        if beam_size is not None and int(beam_size) < 1:
            raise InvalidInputError(f"beam_size must be a positive integer or None, got {beam_size}")
        self.embed_dim, self.hidden_dim, self.n_blocks = int(embed_dim), int(hidden_dim), int(n_blocks)
        self.preselect, self.k_factor = int(preselect), int(k_factor)
        self.beam_size = None if beam_size is None else int(beam_size)
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        if lr is not None and not float(lr) > 0:
            raise InvalidInputError(f"lr must be > 0, got {lr}")
        self.lr = None if lr is None else float(lr)
        self.weight_decay = float(weight_decay)
        self.prefix_weight = float(prefix_weight)
        self.train_preselect, self.train_beam_size = int(train_preselect), int(train_beam_size)
        self.val_fraction, self.patience = float(val_fraction), int(patience)
        self.max_train_points, self.progress = int(max_train_points), progress
        self.mean = np.zeros(self.d, dtype=np.float32)
        self.scale = 1.0
        self.history: list[dict[str, float]] = []  # per epoch: train and validation loss
        self._set_weights(self._zero_weights())

    @property
    def peak_lr(self) -> float:
        """The training's peak learning rate: ``lr``, or by default 8e-3 scaled down for chains longer than 8."""
        return self.lr if self.lr is not None else _PEAK_LR * min(1.0, 8 / self.M)

    @property
    def encode_beam(self) -> int:
        """The encoder's beam: ``beam_size``, or by default 256 / M between 8 and 32."""
        return self.beam_size if self.beam_size is not None else max(8, min(32, 256 // self.M))

    # --- weights ---------------------------------------------------------------------------------
    def _weight_shapes(self) -> dict[str, tuple[int, ...]]:
        K, d, de, dh, L = self.ksub, self.d, self.embed_dim, self.hidden_dim, self.n_blocks
        N = self.M - 1  # step 0 has no network
        return {"codebooks": (self.M, K, d), "w_c": (N, d, de), "w_x": (N, d, de), "b_in": (N, de),
                "w_1": (N, L, de, dh), "w_2": (N, L, dh, de),
                "w_out": (N, de, d), "b_out": (N, d)}

    def _zero_weights(self) -> QincoWeights:
        return QincoWeights(**{k: np.zeros(s, dtype=np.float32) for k, s in self._weight_shapes().items()})

    def _set_weights(self, w: QincoWeights) -> None:
        self.weights = QincoWeights(*(np.ascontiguousarray(a, dtype=np.float32) for a in w))
        self._net = qinco_tables(self.weights)

    def _init_weights(self, base_codebooks: np.ndarray, rng: np.random.Generator) -> QincoWeights:
        """Random network on top of ``base_codebooks``, output layers zero: f_m(c, x_hat) = c."""
        shapes = self._weight_shapes()

        def normal(name: str, fan_in: int, gain: float = 1.0) -> np.ndarray:
            return (gain / np.sqrt(fan_in) * rng.standard_normal(shapes[name])).astype(np.float32)

        w = self._zero_weights()._asdict()
        w.update(codebooks=base_codebooks, w_c=normal("w_c", 2 * self.d), w_x=normal("w_x", 2 * self.d),
                 w_1=normal("w_1", self.embed_dim, np.sqrt(2.0)), w_2=normal("w_2", self.hidden_dim))
        return QincoWeights(**w)

    @classmethod
    def from_rq(cls, rq: ResidualQuantizer, mean: np.ndarray | None = None, scale: float = 1.0,
                **params: Any) -> QINCoQuantizer:
        """An untrained QINCo equal to the trained residual quantizer ``rq`` (same codes and reconstructions
        for the same beam), normalising by ``mean`` (default 0) and ``scale``; ``params`` as the constructor's."""
        rq._require_trained()
        q = cls(rq.d, rq.M, rq.nbits, random_state=params.pop("random_state", rq.random_state), **params)
        q.mean = np.zeros(rq.d, dtype=np.float32) if mean is None else np.asarray(mean, dtype=np.float32).reshape(rq.d)
        q.scale = float(scale)
        q._set_weights(q._init_weights(q._to_normalised_codebooks(rq.codebooks), np.random.default_rng(q.random_state)))
        q._set_codebooks(rq.codebooks)
        q._trained = True
        return q

    def _to_normalised_codebooks(self, codebooks: np.ndarray) -> np.ndarray:
        """RQ codebooks in the normalised space: the mean comes off the first step's codewords."""
        out = codebooks / self.scale
        out[0] -= self.mean / self.scale
        return out.astype(np.float32)

    # --- persistence ---------------------------------------------------------------------------------
    def _get_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"net_{k}": v for k, v in self.weights._asdict().items()}
        arrays.update(codebooks=self.codebooks, mean=self.mean, scale=np.array([self.scale], dtype=np.float64))
        return arrays

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._set_arrays(arrays)
        self.mean = self._expect_shape(arrays, "mean", (self.d,)).astype(np.float32)
        self.scale = float(self._expect_shape(arrays, "scale", (1,))[0])
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale}")
        self._set_weights(QincoWeights(**{k: self._expect_shape(arrays, f"net_{k}", s)
                                          for k, s in self._weight_shapes().items()}))

    # --- training --------------------------------------------------------------------------------------
    def fit(self, x: np.ndarray) -> QINCoQuantizer:
        x = self._check_train(x, self.max_train_points)
        rng = np.random.default_rng(self.random_state)
        n_val = round(self.val_fraction * x.shape[0]) if self.epochs else 0
        if self.epochs and self.val_fraction > 0 and n_val < MIN_VALIDATION:
            raise InvalidInputError(
                f"x: {x.shape[0]} vectors leave {n_val} for validation (val_fraction={self.val_fraction}); "
                f"early stopping needs at least {MIN_VALIDATION}: give more vectors or a larger val_fraction")
        if x.shape[0] - n_val < self.ksub:
            raise InvalidInputError(
                f"x: {x.shape[0] - n_val} training vectors after the validation split; "
                f"nbits={self.nbits} needs {self.ksub}")
        perm = rng.permutation(x.shape[0])
        x_val, x_tr = x[np.sort(perm[:n_val])], x[np.sort(perm[n_val:])]
        if self.epochs:
            train = _import_trainer()
        rq = ResidualQuantizer(self.d, self.M, self.nbits, random_state=self.random_state).fit(x_tr)
        self.mean = x_tr.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.scale = float(np.sqrt(np.mean((x_tr - self.mean) ** 2, dtype=np.float64))) or 1.0
        self._set_weights(self._init_weights(self._to_normalised_codebooks(rq.codebooks), rng))
        self.history = []
        if self.epochs:
            weights, self.history = train(self, self._normalise(x_tr), self._normalise(x_val), rng)
            self._set_weights(weights)
        self._fit_additive(x_tr, rq.codebooks, rng)
        self._trained = True
        return self

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self.mean) / np.float32(self.scale), dtype=np.float32)

    def _fit_additive(self, x: np.ndarray, init: np.ndarray, rng: np.random.Generator) -> None:
        """Additive codebooks for the ADC tables: least squares from a sample's neural codes to the vectors.

        Fitted to the vectors rather than to their neural reconstructions: on SIFT the shortlists
        then hold the true neighbours more often (the reconstructions are re-ranked exactly anyway).
        """
        n = min(x.shape[0], _LSQ_POINTS_PER_CODEWORD * self.M * self.ksub)
        xs = x[np.sort(rng.choice(x.shape[0], n, replace=False))] if n < x.shape[0] else x
        codes = self._neural_codes(self._normalise(xs))
        self._set_codebooks(least_squares_codebooks(xs, codes, init))

    # --- the interface --------------------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> np.ndarray:
        self._require_trained()
        return self._neural_codes(self._normalise(self._check_x(x))).astype(self.code_dtype)

    def _neural_codes(self, x: np.ndarray) -> np.ndarray:
        return neural_codes(self.weights, self._net, x, self.preselect, self.encode_beam)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Neural reconstructions (n, d): the exact decode that search re-ranks with."""
        self._require_trained()
        x_hat = qinco_decode(self.weights, self._net.proj, self._check_codes(codes))
        x_hat *= np.float32(self.scale)
        x_hat += self.mean
        return x_hat


def neural_codes(w: QincoWeights, net: QincoTables, x: np.ndarray, preselect: int, beam_size: int) -> np.ndarray:
    """Beam-search codes of normalised vectors, on Numba's thread count (BLAS single-threaded meanwhile)."""
    with single_blas_thread(x.shape[0]):
        return qinco_encode(w, net, x, preselect, beam_size, numba.get_num_threads())[0]


def _import_trainer():
    try:
        from ..neural.qinco import train_qinco
    except ImportError as exc:
        raise DependencyError(
            f"training QINCo needs JAX and optax ({exc}); install them with: pip install 'annvq[neural]'") from None
    return train_qinco
