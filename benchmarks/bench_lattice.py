"""Lattice VQ against annvq PQ and faiss's lattice codecs at equal bits, one thread, in one run.

Every codec is trained on the set's base vectors, encodes them, and answers the test queries with an
exhaustive search (annvq: ADC tables; faiss ``IndexLattice``: its decoding scan; ``ZnSphereCodec``:
decoded vectors, exact scan). Reported: MSE over the base set, 1-recall@1/10 against exact
neighbours, train seconds, encode seconds for the base set, and queries per second of the exhaustive
search (k=10; with 16-bit sub-codes an ADC table has 65,536 entries per sub-space, which dominates).
IVF rows: ``IVF64`` indexes whose residuals are coded by PQ or the lattice (scales fitted on the
residuals), nprobe 8.

faiss ``IndexLattice(d, nsq, scale_nbit, r2)`` spends ``scale_nbit + ceil(log2 |shell|)`` bits per
sub-vector; its row is the configuration with the least MSE among those within the bit budget
(using at least 7/8 of it), which favours faiss. ``ZnSphereCodec(d, r2)`` codes a whole unit vector
in at most 64 bits: it appears on the normalised set of 32 dims.

Sets: sift10k and bigann10k (real), and SYNTHETIC L2-normalised embeddings (Gaussian with a power-law
spectrum ``lambda_i ~ i^-1``, randomly rotated; 20k base, 200 queries) in 96 and 32 dims.
Drift (streaming: fit on what arrived first, keep encoding while the data moves): codecs trained on
one distribution encode another (bigann10k -> sift10k; synthetic normalised embeddings around 64
topic centres, encoded after training on 64 other topics), against the same codec trained on the
encoded base itself and on a fresh sample of the encoded distribution (``mse_ratio`` = shifted /
fresh sample; sift10k has no separate sample, so there it is the base).

    python benchmarks/bench_lattice.py                       # everything (~20 min at one thread)
    python benchmarks/bench_lattice.py --sets emb32 --ivf-sets --no-drift
"""
from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    apply_thread_limits,
    dataset_path,
    markdown_table,
    optional,
    pin_threads,
    timed,
    write_results,
)

pin_threads(1)

import numpy as np

import annvq
from annvq.datasets import knn_groundtruth, load_annb, mse, recall_at

faiss = optional("faiss")
COLS = ["set", "bits", "method", "mse", "R@1", "R@10", "train_s", "encode_s", "qps"]

# codecs per (dims, bits): annvq PQ and the lattice variants that fit the budget
BUDGETS = {
    128: {128: ["PQ16x8", "LAT16x8_E8", "LAT16x8_D", "LAT16x8_Z", "LAT16x8_E8_SPH"],
          192: ["PQ16x12", "LAT16x12_E8", "LAT16x12_E8_SPH", "LAT32x6_D"],
          256: ["PQ32x8", "LAT16x16_E8", "LAT16x16_E8_SPH", "LAT32x8_D", "LAT32x8_Z", "LAT32x8_D_SPH"]},
    96: {96: ["PQ12x8", "LAT12x8_E8", "LAT12x8_E8_SPH"],
         192: ["PQ24x8", "LAT12x16_E8", "LAT12x16_E8_SPH", "LAT24x8_D", "LAT24x8_D_SPH"]},
    32: {64: ["PQ8x8", "LAT4x16_E8", "LAT4x16_E8_SPH", "LAT8x8_D", "LAT8x8_D_SPH"],
         128: ["PQ16x8", "LAT8x16_D", "LAT8x16_D_SPH", "LAT16x8_Z"]},
}


def embeddings(n: int, d: int, seed: int, centers: int = 0, center_seed: int = 0) -> np.ndarray:
    """SYNTHETIC L2-normalised vectors: Gaussian with spectrum i^-1 in a random basis (fixed by d).

    With ``centers`` > 0, each vector is one of that many topic centres (drawn with ``center_seed``)
    plus noise of half the centres' spread, so ``center_seed`` changes the topics but not the basis.
    """
    basis = np.linalg.qr(np.random.default_rng(1000 + d).normal(size=(d, d)))[0]
    sd = 1.0 / np.sqrt(np.arange(1, d + 1))
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)) * sd
    if centers:
        c = np.random.default_rng(center_seed).normal(size=(centers, d)) * sd
        z = c[rng.integers(centers, size=n)] + 0.5 * z
    x = z @ basis.T
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def load_set(name: str):
    """(base, queries, exact nearest neighbours) of a named set."""
    if name.startswith("emb"):
        d = int(name[3:])
        x, xq = embeddings(20_000, d, seed=1), embeddings(200, d, seed=2)
        return x, xq, knn_groundtruth(x, xq, 10)[1]
    ds = load_annb(dataset_path(name))
    return ds.train, ds.test, ds.neighbors


def annvq_row(name, bits, spec, x, xq, gt, train=None):
    """One annvq codec: trained on ``train`` (default: the base set), base encoded, queries searched."""
    idx = annvq.index_factory(x.shape[1], spec)
    _, t_train = timed(lambda: idx.train(x if train is None else train))
    codes, t_enc = timed(lambda: idx.codec.encode(x))
    idx.add(x)
    (_, I), t_search = timed(lambda: idx.search(xq, 10), repeat=2)
    return {"set": name, "bits": bits, "method": f"annvq {spec}", "mse": mse(x, idx.codec.decode(codes)),
            "R@1": recall_at(I, gt, 1), "R@10": recall_at(I, gt, 10), "train_s": t_train, "encode_s": t_enc,
            "qps": len(xq) / t_search}


def ivf_rows(name: str, nprobe: int = 8) -> list[dict]:
    """IVF64 with residuals coded by PQ or the lattice (the lattice's scales fitted on residuals)."""
    x, xq, gt = load_set(name)
    d = x.shape[1]
    rows = []
    for spec in (f"PQ{d // 8}x8", f"LAT{d // 8}x8_E8", f"PQ{d // 4}x8", f"LAT{d // 8}x16_E8"):
        idx = annvq.index_factory(d, f"IVF64,{spec}")
        _, t_train = timed(lambda idx=idx: idx.train(x))
        _, t_add = timed(lambda idx=idx: idx.add(x))
        I = idx.search(xq, 10, nprobe=nprobe)[1]
        rows.append({"set": name, "bits": idx.codec.M * idx.codec.nbits,
                     "method": f"annvq IVF64,{spec} nprobe={nprobe}", "R@1": recall_at(I, gt, 1),
                     "R@10": recall_at(I, gt, 10), "train_s": t_train, "add_s": t_add})
    print(markdown_table(rows, ["set", "bits", "method", "R@1", "R@10", "train_s", "add_s"]), flush=True)
    return rows


def _shell_bits(dsub: int, r2: int) -> int | None:
    """ceil(log2) of the size of faiss's Z^dsub shell of squared radius r2, or None when unusable."""
    try:
        nv = faiss.ZnSphereCodecAlt(dsub, r2).nv
    except RuntimeError:  # faiss refuses shells whose decoding cache would be too large
        return None
    return math.ceil(math.log2(nv)) if 1 < nv < 1 << 40 else None


def faiss_lattice_row(name, bits, x, xq, gt, train=None):
    """faiss IndexLattice: the configuration with the least MSE within [7/8 bits, bits]."""
    d = x.shape[1]
    train = x if train is None else train
    best = None
    for dsub in (4, 8, 16, 32):
        if d % dsub:
            continue
        nsq = d // dsub
        for r2 in range(1, 41):
            shell = _shell_bits(dsub, r2)
            for scale_nbit in range(1, 9):
                if shell is None or not 7 * bits // 8 <= nsq * (scale_nbit + shell) <= bits:
                    continue
                idx = faiss.IndexLattice(d, nsq, scale_nbit, r2)
                idx.train(train)
                err = mse(x, idx.sa_decode(idx.sa_encode(x)))
                if best is None or err < best[0]:
                    best = (err, nsq, scale_nbit, r2)
    if best is None:
        return None
    _, nsq, scale_nbit, r2 = best
    idx = faiss.IndexLattice(d, nsq, scale_nbit, r2)
    _, t_train = timed(lambda: idx.train(train))
    codes, t_enc = timed(lambda: idx.sa_encode(x))
    idx.add(x)
    (_, I), t_search = timed(lambda: idx.search(xq, 10), repeat=2)
    return {"set": name, "bits": bits, "method": f"faiss IndexLattice(nsq={nsq}, scale_nbit={scale_nbit}, r2={r2})",
            "mse": mse(x, idx.sa_decode(codes)), "R@1": recall_at(I, gt, 1), "R@10": recall_at(I, gt, 10),
            "train_s": t_train, "encode_s": t_enc, "qps": len(xq) / t_search}


def _zn_shell_sizes(d: int, nmax: int) -> list[int]:
    """Exact number of points of Z^d with squared norm N, for N = 0..nmax (Python integers)."""
    counts = [1] + [0] * nmax
    for _ in range(d):
        counts = [sum(counts[N - v * v] * (1 if v == 0 else 2) for v in range(math.isqrt(N) + 1))
                  for N in range(nmax + 1)]
    return counts


def zn_sphere_row(name, bits, x, xq, gt):
    """faiss ZnSphereCodec on whole unit vectors: the largest r2 whose code fits ``bits`` (<= 64)."""
    d = x.shape[1]
    sizes = _zn_shell_sizes(d, 80)  # exact counts: faiss's 64-bit count overflows silently on large shells
    r2 = max((r for r in range(1, 81) if 1 < sizes[r] < 1 << min(bits, 63)), default=None)
    if r2 is None:
        return None
    codec = faiss.ZnSphereCodec(d, r2)
    codes = np.empty(len(x), dtype=np.uint64)
    _, t_enc = timed(lambda: codec.encode_multi(len(x), faiss.swig_ptr(x), faiss.swig_ptr(codes)))
    xh = np.empty_like(x)
    codec.decode_multi(len(x), faiss.swig_ptr(codes), faiss.swig_ptr(xh))
    xh /= np.linalg.norm(xh, axis=1, keepdims=True)  # decoded points lie on the sphere of radius sqrt(r2)
    I = knn_groundtruth(xh, xq, 10)[1]
    used = math.ceil(math.log2(sizes[r2]))
    return {"set": name, "bits": bits, "method": f"faiss ZnSphereCodec(r2={r2}, {used} bits)", "mse": mse(x, xh),
            "R@1": recall_at(I, gt, 1), "R@10": recall_at(I, gt, 10), "train_s": 0.0, "encode_s": t_enc}


def quality_rows(name: str) -> list[dict]:
    x, xq, gt = load_set(name)
    rows = []
    for bits, specs in BUDGETS[x.shape[1]].items():
        for spec in specs:
            rows.append(annvq_row(name, bits, spec, x, xq, gt))
        if faiss is not None:
            rows.append(faiss_lattice_row(name, bits, x, xq, gt))
            if x.shape[1] == 32 and bits <= 64:
                rows.append(zn_sphere_row(name, bits, x, xq, gt))
        print(markdown_table([r for r in rows if r and r["bits"] == bits], COLS), flush=True)
    return [r for r in rows if r]


def drift_rows() -> list[dict]:
    """Each codec trained three ways -- on the encoded base itself, on a fresh sample of the same
    distribution, on a shifted distribution -- then encoding the same base and answering the same queries."""
    rows = []
    sift, bigann = load_set("sift10k"), load_set("bigann10k")
    x = embeddings(20_000, 96, seed=11, centers=64, center_seed=5)
    xq = embeddings(200, 96, seed=12, centers=64, center_seed=5)
    cases = [
        ("sift10k, shift = bigann10k", sift, None, bigann[0],
         {128: ["PQ16x8", "LAT16x8_E8"], 256: ["PQ32x8", "LAT16x16_E8"]}),
        ("emb96 topics, shift = 64 new topics", (x, xq, knn_groundtruth(x, xq, 10)[1]),
         embeddings(20_000, 96, seed=13, centers=64, center_seed=5),
         embeddings(20_000, 96, seed=13, centers=64, center_seed=6),
         {96: ["PQ12x8", "LAT12x8_E8", "LAT12x8_E8_SPH"], 192: ["PQ24x8", "LAT12x16_E8", "LAT24x8_D_SPH"]}),
    ]
    cols = ["set", "bits", "method", "mse_train_base", "mse_train_same", "mse", "mse_ratio", "R@10_train_same", "R@10"]
    for name, (x, xq, gt), same, shifted, budgets in cases:
        for bits, specs in budgets.items():
            runs = [partial(annvq_row, name, bits, spec, x, xq, gt) for spec in specs]
            if faiss is not None:
                runs.append(partial(faiss_lattice_row, name, bits, x, xq, gt))
            for run in runs:
                base = run(train=None)
                same_row = base if same is None else run(train=same)
                drift = run(train=shifted)
                rows.append({**drift, "mse_train_base": base["mse"], "mse_train_same": same_row["mse"],
                             "mse_ratio": drift["mse"] / same_row["mse"], "R@10_train_same": same_row["R@10"]})
        print(markdown_table([r for r in rows if r["set"] == name], cols), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="*", default=["sift10k", "bigann10k", "emb96", "emb32"])
    ap.add_argument("--ivf-sets", nargs="*", default=["sift10k", "emb96"])
    ap.add_argument("--no-drift", action="store_true")
    args = ap.parse_args()
    apply_thread_limits(1)
    warm = embeddings(500, 32, seed=0)
    for spec in ("LAT4x8", "LAT4x12", "LAT8x8_D_SPH", "LAT4x12_E8_SPH"):  # compile the kernels outside the timings
        idx = annvq.index_factory(32, spec)
        idx.train(warm)
        idx.add(warm)
    rows, ivf = [], []
    for name in args.sets:
        rows += quality_rows(name)
    for name in args.ivf_sets:
        ivf += ivf_rows(name)
    drift = [] if args.no_drift else drift_rows()
    path = write_results("lattice", {"threads": 1, "quality": rows, "ivf": ivf, "drift": drift})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
