"""Neural vector quantization on the built-in SIFT set: QINCo against annvq's PQ, OPQ, RQ, AQ and CQ,
and an RQ-VAE (learned encoder/decoder around an RQ bottleneck) against PCA followed by RQ.

Data: ``annvq.datasets.load_default()`` (real SIFT descriptors, 109,833 base vectors, 1,000 queries
with exact ground truth). Every codec is trained on the same ``--n-train`` (100,000) base vectors;
QINCo holds out its own validation split from those for early stopping. MSE is measured on the base
vectors not used in training; recall (1-recall@R: the true nearest neighbour among the first R) on
the queries against all base vectors in a flat index, k=10. Codes: M bytes (M codebooks of 8 bits);
flat RQ, AQ and QINCo indexes add their 1-byte stored norm, CQ and PQ/OPQ need none.

Threads: training and adding vectors use ``--threads`` (2); encoding throughput and search QPS are
measured at one thread (BLAS, Numba) so they read per core. QINCo searches re-rank the ``k_factor *
k`` best ADC candidates by the exact neural decode; the recall-QPS curve sweeps ``k_factor``.

    python benchmarks/bench_neural.py                       # 8 and 16 bytes, every codec, RQ-VAE
    python benchmarks/bench_neural.py --bytes 8 --methods rq aq qinco --no-rqvae
    python benchmarks/bench_neural.py --quick               # small smoke run (20k training vectors, few epochs)
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, markdown_table, pin_threads, timed, write_results


def _threads_arg() -> int:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 2


THREADS = _threads_arg()
pin_threads(THREADS)
os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={'true' if THREADS > 1 else 'false'} "
                                   f"intra_op_parallelism_threads={THREADS}")

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from annvq import FlatIndex
from annvq.datasets import load_default, mse, recall_at
from annvq.quantizers import (
    OPQ,
    AdditiveQuantizer,
    CompositeQuantizer,
    ProductQuantizer,
    QINCoQuantizer,
    ResidualQuantizer,
)

METHODS = ("pq", "opq", "rq", "aq", "cq", "qinco")
K = 10
TARGET_RECALL = 0.95
K_FACTORS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
COLS = ["bytes", "method", "mse", "R@1", "R@10", "train_s", "encode_vps_core", "qps_core"]


class one_thread:
    """BLAS and Numba at one thread inside the block (per-core measurements)."""

    def __enter__(self):
        self._blas = threadpool_limits(1)
        self._numba = numba.get_num_threads()
        numba.set_num_threads(1)

    def __exit__(self, *exc):
        numba.set_num_threads(self._numba)
        self._blas.unregister()


def make(method: str, d: int, M: int, args):
    if method == "pq":
        return ProductQuantizer(d, M=M, nbits=8)
    if method == "opq":
        return OPQ(d, M=M, nbits=8)
    if method == "rq":
        return ResidualQuantizer(d, M=M, nbits=8)
    if method == "aq":
        return AdditiveQuantizer(d, M=M, nbits=8)
    if method == "cq":
        return CompositeQuantizer(d, M=M, nbits=8)
    return QINCoQuantizer(d, M=M, nbits=8, epochs=args.epochs, progress=True)


def search_row(index: FlatIndex, xq: np.ndarray, gt: np.ndarray, **params) -> dict:
    """Recall and one-thread QPS of a flat search (k=10) over the whole query batch."""
    with one_thread():
        (_, I), secs = timed(lambda: index.search(xq, K, **params), repeat=2, min_seconds=1.0)
    return {"R@1": recall_at(I, gt, 1), "R@10": recall_at(I, gt, 10), "qps_core": xq.shape[0] / secs}


def qps_at(curve: list[dict], target: float) -> float | None:
    """QPS where R@10 first reaches ``target``, interpolated linearly between sweep points."""
    for a, b in itertools.pairwise(curve):
        if a["R@10"] < target <= b["R@10"]:
            t = (target - a["R@10"]) / (b["R@10"] - a["R@10"])
            return a["qps_core"] + t * (b["qps_core"] - a["qps_core"])
    if curve and curve[0]["R@10"] >= target:
        return curve[0]["qps_core"]
    return None


def run_codec(method: str, M: int, x_tr, x_out, xb, xq, gt, args) -> tuple[dict, list[dict]]:
    codec = make(method, x_tr.shape[1], M, args)
    t = time.perf_counter()
    codec.fit(x_tr)
    train_s = time.perf_counter() - t
    with one_thread():
        sample = x_out[: args.n_encode]
        codec.encode(sample[:10])  # compiles the kernels on a cold Numba cache, outside the timing
        _, enc_s = timed(lambda: codec.encode(sample), repeat=2)
    row = {"bytes": M, "method": method, "train_s": train_s, "encode_vps_core": sample.shape[0] / enc_s,
           "mse": mse(x_out, codec.decode(codec.encode(x_out)))}
    index = FlatIndex(codec)
    if index.norms is not None:
        xs = x_tr[:: max(1, x_tr.shape[0] // 5000)]
        x_hat = codec.table_decode(codec.encode(xs))
        index.norms.fit(np.einsum("ij,ij->i", x_hat, x_hat))
    index.add(xb)
    if args.save_dir:
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        index.save(Path(args.save_dir) / f"{method}{M}.h5")
    curve = []
    if codec.rerank_decoded:
        for kf in K_FACTORS:
            curve.append({"bytes": M, "method": method, "k_factor": kf, **search_row(index, xq, gt, k_factor=kf)})
            print(f"  k_factor {kf}: R@1 {curve[-1]['R@1']:.3f} R@10 {curve[-1]['R@10']:.3f} "
                  f"QPS {curve[-1]['qps_core']:.0f}", flush=True)
        row.update(search_row(index, xq, gt))
        row["qps_at_target"] = qps_at(curve, TARGET_RECALL)
        row["history"] = codec.history
    else:
        row.update(search_row(index, xq, gt))
    return row, curve


# --- RQ-VAE: learned encoder/decoder around an RQ bottleneck, against PCA + RQ ---------------------------
def rqvae_experiment(x_tr, x_val, x_out, latent: int, M: int, epochs: int, seed: int = 0) -> dict:
    """PCA to ``latent`` dims + annvq RQ (M bytes), then an RQ-VAE that starts exactly there: linear
    encoder/decoder = the PCA projection plus a one-hidden-layer MLP each whose output layer starts at
    zero, codebooks = the RQ's. Trained with reconstruction + codebook + commitment losses and the
    straight-through estimator (annvq.neural.rq), AdamW, early stopping on ``x_val``. Both are encoded
    with annvq's RQ beam search on the latent vectors and compared on ``x_out``."""
    import jax
    import jax.numpy as jnp
    import optax

    from annvq.neural import rq as rq_bottleneck

    mean = x_tr.mean(axis=0)
    _, _, vt = np.linalg.svd(x_tr[:50000] - mean, full_matrices=False)
    P = vt[:latent].T.astype(np.float32)  # (d, latent)
    z_tr = (x_tr - mean) @ P
    t0 = time.perf_counter()
    rq = ResidualQuantizer(latent, M=M, nbits=8).fit(z_tr)
    pca_s = time.perf_counter() - t0

    def pca_rq_decode(x):
        return rq.decode(rq.encode((x - mean) @ P)) @ P.T + mean

    out = {"latent": latent, "bytes": M, "pca_rq_mse": mse(x_out, pca_rq_decode(x_out)), "pca_rq_train_s": pca_s}
    rng = np.random.default_rng(seed)
    d, h = x_tr.shape[1], 256

    def init(shape, fan_in):
        return jnp.asarray(rng.standard_normal(shape).astype(np.float32) / np.sqrt(fan_in))

    params = {"P_enc": jnp.asarray(P), "P_dec": jnp.asarray(P.T.copy()), "mean": jnp.asarray(mean),
              "e1": init((d, h), d), "e2": jnp.zeros((h, latent)), "d1": init((latent, h), latent),
              "d2": jnp.zeros((h, d)), "codebooks": jnp.asarray(rq.codebooks)}
    scale = float(np.mean((x_tr - mean) ** 2))  # per-dimension variance: keeps losses O(1)

    def encode(p, x):
        xc = x - p["mean"]
        return xc @ p["P_enc"] + jax.nn.relu(xc @ p["e1"]) @ p["e2"]

    def decode(p, z):
        return z @ p["P_dec"] + jax.nn.relu(z @ p["d1"]) @ p["d2"] + p["mean"]

    def loss_fn(p, x):
        out = rq_bottleneck(encode(p, x), p["codebooks"], 0.25)
        rec = jnp.mean(jnp.sum((x - decode(p, out.z_q)) ** 2, axis=-1))
        return (rec + out.codebook_loss + out.commitment_loss) / scale, rec

    batch, steps = 1024, epochs * (x_tr.shape[0] // 1024)
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(1e-5, 1e-3, max(1, steps // 20), steps, 1e-5),
                      weight_decay=1e-4, mask={k: k in ("e1", "e2", "d1", "d2") for k in params})
    state = opt.init(params)

    @jax.jit
    def step(p, s, x):
        (_, rec), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, rec

    def beam_mse(p, x):
        """Held-out MSE with the latent codes found by annvq's RQ beam search on the learned codebooks."""
        code = ResidualQuantizer.from_state({"kind": "rq", "d": latent, "M": M, "nbits": 8},
                                            {"codebooks": np.asarray(p["codebooks"])})
        z = np.asarray(encode(p, jnp.asarray(x)))
        return mse(x, np.asarray(decode(p, jnp.asarray(code.decode(code.encode(z))))))

    t0 = time.perf_counter()
    best, best_val, history = params, beam_mse(params, x_val), []
    for _ in range(epochs):
        order = rng.permutation(x_tr.shape[0])
        for s in range(x_tr.shape[0] // batch):
            params, state, _ = step(params, state, jnp.asarray(x_tr[order[s * batch : (s + 1) * batch]]))
        val = beam_mse(params, x_val)
        history.append(val)
        if val < best_val:
            best, best_val = params, val
    out.update(rqvae_mse=beam_mse(best, x_out), rqvae_train_s=time.perf_counter() - t0 + pca_s,
               rqvae_val_history=history, rqvae_epochs=epochs)
    out["rqvae_wins"] = out["rqvae_mse"] < out["pca_rq_mse"]
    return out


# --- plots ------------------------------------------------------------------------------------------------
def plot(rows: list[dict], curves: list[dict], path_stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colours = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(METHODS)}
    sizes = sorted({r["bytes"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 5.5), squeeze=False)
    for ax, nbytes in zip(axes[0], sizes):
        for r in (r for r in rows if r["bytes"] == nbytes):
            cur = [c for c in curves if c["bytes"] == nbytes and c["method"] == r["method"]]
            if cur:
                ax.plot([c["R@10"] for c in cur], [c["qps_core"] for c in cur], "o-", color=colours[r["method"]],
                        label=f"{r['method']} (k_factor {cur[0]['k_factor']}..{cur[-1]['k_factor']})")
            else:
                ax.plot([r["R@10"]], [r["qps_core"]], "s", ms=9, color=colours[r["method"]], label=r["method"])
        ax.axvline(TARGET_RECALL, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="1-recall@10", ylabel="queries per second (one core)", yscale="log",
               title=f"flat search, {nbytes}-byte codes, k=10, built-in SIFT (110k)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    paths.append(RESULTS / f"{path_stem}_recall_qps.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for m in METHODS:
        pts = sorted((r["bytes"], r["mse"]) for r in rows if r["method"] == m)
        if pts:
            ax.plot(*zip(*pts), "o-", color=colours[m], label=m)
    ax.set(xlabel="bytes per vector (codes)", ylabel="MSE on held-out base vectors", yscale="log",
           xticks=sizes, title="reconstruction error vs code size, built-in SIFT")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(RESULTS / f"{path_stem}_mse_bytes.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def target_table(rows: list[dict]) -> list[dict]:
    """The issue's targets at 8 bytes (and the 16-byte figures beside them)."""
    out = []
    for nbytes in sorted({r["bytes"] for r in rows}):
        by = {r["method"]: r for r in rows if r["bytes"] == nbytes}
        q = by.get("qinco")
        base = [by[m] for m in ("rq", "aq", "cq") if m in by]
        if q is None or not base:
            continue
        best_mse = min(base, key=lambda r: r["mse"])
        best_r1 = max(r["R@1"] for r in base)
        best_r10 = max(r["R@10"] for r in base)
        gain = 1 - q["mse"] / best_mse["mse"]
        out += [
            {"bytes": nbytes, "target": "MSE >= 10% below best of RQ/AQ/CQ",
             "value": f"{q['mse']:.0f} vs {best_mse['mse']:.0f} ({best_mse['method']}): {100 * gain:.1f}% lower",
             "met": gain >= 0.10},
            {"bytes": nbytes, "target": "R@1 higher than RQ/AQ/CQ", "value": f"{q['R@1']:.3f} vs {best_r1:.3f}",
             "met": q["R@1"] > best_r1},
            {"bytes": nbytes, "target": "R@10 higher than RQ/AQ/CQ", "value": f"{q['R@10']:.3f} vs {best_r10:.3f}",
             "met": q["R@10"] > best_r10},
            {"bytes": nbytes, "target": f"training <= 30 min ({THREADS} threads)",
             "value": f"{q['train_s'] / 60:.1f} min", "met": q["train_s"] <= 1800},
            {"bytes": nbytes, "target": "encoding >= 300 vectors/s per core", "value": f"{q['encode_vps_core']:.0f}",
             "met": q["encode_vps_core"] >= 300},
        ]
        if "aq" in by:
            qps = q.get("qps_at_target")
            ratio = None if qps is None else qps / by["aq"]["qps_core"]
            out.append({"bytes": nbytes, "target": f"QPS at R@10={TARGET_RECALL} >= 0.5x AQ flat",
                        "value": "not reached" if ratio is None else
                        f"{qps:.0f} vs {by['aq']['qps_core']:.0f} (AQ, R@10 {by['aq']['R@10']:.3f}): {ratio:.2f}x",
                        "met": ratio is not None and ratio >= 0.5})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", nargs="*", type=int, default=[8, 16], help="code sizes (M codebooks of 8 bits)")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--n-train", type=int, default=100_000, help="base vectors to train on (the rest measure MSE)")
    ap.add_argument("--epochs", type=int, default=QINCoQuantizer(8).epochs, help="QINCo epochs (at most)")
    ap.add_argument("--n-encode", type=int, default=2000, help="vectors timed for the encoding throughput")
    ap.add_argument("--threads", type=int, default=2, help="threads for training and adding (measurements use 1)")
    ap.add_argument("--no-rqvae", action="store_true", help="skip the RQ-VAE vs PCA+RQ experiment")
    ap.add_argument("--rqvae-latent", type=int, default=64)
    ap.add_argument("--rqvae-epochs", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="20k training vectors, 3 epochs, 8 bytes: a smoke run")
    ap.add_argument("--save-dir", help="save every flat index there (<method><bytes>.h5) to re-run searches later")
    ap.add_argument("--reuse", nargs="*", default=[], help="results JSON files whose rows (other bytes/methods "
                    "than this run's) join the tables and plots")
    ap.add_argument("--out", default="neural", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    if args.quick:
        args.n_train, args.epochs, args.bytes, args.rqvae_epochs = 20_000, 3, [8], 2
    ds = load_default()
    xb, xq, gt = ds.train, ds.test, ds.neighbors
    perm = np.random.default_rng(0).permutation(xb.shape[0])
    x_tr, x_out = xb[np.sort(perm[: args.n_train])], xb[np.sort(perm[args.n_train :])]
    print(f"built-in SIFT: {xb.shape[0]} base, {xq.shape[0]} queries; training on {x_tr.shape[0]}, "
          f"MSE on {x_out.shape[0]} held-out; {THREADS} training threads, measurements at 1", flush=True)
    rows, curves = [], []
    for nbytes in args.bytes:
        for method in args.methods:
            print(f"{method} {nbytes} bytes ...", flush=True)
            row, curve = run_codec(method, nbytes, x_tr, x_out, xb, xq, gt, args)
            rows.append(row)
            curves += curve
            print(markdown_table([row], COLS).splitlines()[-1], flush=True)
    done = {(r["bytes"], r["method"]) for r in rows}
    rqvae = []
    for path in args.reuse:
        prev = json.loads(Path(path).read_text())
        rows += [r for r in prev["rows"] if (r["bytes"], r["method"]) not in done]
        curves += [c for c in prev["curves"] if (c["bytes"], c["method"]) not in done]
        rqvae += [r for r in prev.get("rqvae", []) if args.no_rqvae or r["bytes"] not in args.bytes]
    rows.sort(key=lambda r: (r["bytes"], METHODS.index(r["method"])))
    if not args.no_rqvae:
        n_val = 5000
        for nbytes in args.bytes:
            print(f"RQ-VAE vs PCA+RQ, {nbytes} bytes, latent {args.rqvae_latent} ...", flush=True)
            rqvae.append(rqvae_experiment(x_tr[n_val:], x_tr[:n_val], x_out, args.rqvae_latent, nbytes,
                                          args.rqvae_epochs))
            print(rqvae[-1], flush=True)
    targets = target_table(rows)
    plots = plot(rows, curves, args.out) if rows else []
    path = write_results(args.out, {"threads_training": THREADS, "args": vars(args), "rows": rows,
                                    "curves": curves, "rqvae": rqvae, "targets": targets})
    print("\n" + markdown_table(rows, COLS + ["qps_at_target"]))
    if curves:
        print("\nQINCo re-ranking sweep\n" + markdown_table(curves, ["bytes", "k_factor", "R@1", "R@10", "qps_core"]))
    if rqvae:
        print("\nRQ-VAE vs PCA+RQ (held-out MSE)\n" + markdown_table(
            rqvae, ["bytes", "latent", "pca_rq_mse", "rqvae_mse", "rqvae_wins", "rqvae_train_s"]))
    if targets:
        print("\ntargets\n" + markdown_table(targets, ["bytes", "target", "value", "met"]))
    print(f"\nresults written to {path}; plots: {', '.join(str(p) for p in plots)}")


if __name__ == "__main__":
    main()
