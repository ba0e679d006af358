"""IVF indexes against faiss (same specs via ``faiss.index_factory``) and nanopq, all at one thread.

Real data (ann-benchmarks HDF5 files): for every spec and nprobe, 1-recall@1/10/100 (true nearest
neighbour in the top R, faiss's "R@R") and 10-recall@10 (overlap with the true top 10), QPS of the
whole query batch (k=100), p50/p99 single-query latency, build seconds and bytes per vector; a
recall-QPS plot per dataset. nanopq has no IVF, so it appears as one exhaustive-PQ point.
Synthetic (``--synthetic``, clearly labelled: clustered Gaussian data in a 32-D subspace of 128-D,
generated on the fly): build time, recall and QPS of IVF-PQ at 100k, 300k and 1M vectors, annvq,
faiss with the same spec, and faiss fast-scan (4-bit PQ).
Every run ends with the QPS of each curve at the target recall and, for each fast-scan curve, its QPS
over annvq's at equal 1-recall@10.

    python benchmarks/bench_ivf.py                              # sift10k and bigann10k
    python benchmarks/bench_ivf.py --datasets sift10k --nprobe 1,4,16
    python benchmarks/bench_ivf.py --synthetic --sizes 100000,300000,1000000
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS,
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
from annvq.datasets import knn_groundtruth, knn_recall, load_annb, recall_at
from annvq.index import IVFIndex

faiss = optional("faiss")
nanopq = optional("nanopq")

K = 100  # neighbours per query in every timed search
COLS = ["dataset", "lib", "spec", "nprobe", "R@1", "R@10", "R@100", "10-recall@10", "qps", "p50_ms", "p99_ms",
        "build_s", "bytes_per_vec"]


def _recalls(I: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    return {"R@1": recall_at(I, gt, 1), "R@10": recall_at(I, gt, 10), "R@100": recall_at(I, gt, 100),
            "10-recall@10": knn_recall(I, gt, 10)}


def _latency(search_one, xq: np.ndarray, n: int) -> tuple[float, float]:
    """p50 and p99 milliseconds of single-query searches over the first ``n`` queries."""
    lat = []
    for q in xq[:n]:
        t = time.perf_counter()
        search_one(q[None, :])
        lat.append(time.perf_counter() - t)
    return 1e3 * float(np.percentile(lat, 50)), 1e3 * float(np.percentile(lat, 99))


def _sweep(lib, spec, name, xq, gt, nprobes, set_nprobe, search, build_s, nbytes, nlat):
    rows = []
    for p in nprobes:
        set_nprobe(p)
        search(xq[:8])  # warm-up
        I, t = timed(lambda: search(xq), repeat=5, min_seconds=1.0)
        p50, p99 = _latency(search, xq, nlat)
        rows.append({"dataset": name, "lib": lib, "spec": spec, "nprobe": p, **_recalls(I, gt), "qps": len(xq) / t,
                     "p50_ms": p50, "p99_ms": p99, "build_s": build_s, "bytes_per_vec": nbytes})
    return rows


def annvq_rows(name, spec, x, xt, xq, gt, nprobes, nlat, tmpdir: Path):
    idx = annvq.index_factory(x.shape[1], spec)
    _, t_train = timed(lambda: idx.train(xt))
    _, t_add = timed(lambda: idx.add(x))
    path = tmpdir / "bench_ivf.h5"
    idx.save(path)
    nbytes = path.stat().st_size / len(x)
    ivf = isinstance(idx, IVFIndex)
    rows = _sweep("annvq", spec, name, xq, gt, nprobes if ivf else ["-"], lambda p: ivf and setattr(idx, "nprobe", p),
                  lambda q: idx.search(q, K)[1], t_train + t_add, nbytes, nlat)
    # a Refine index loaded from disk: its exact vectors are read lazily from the file
    if ivf and idx.rerank:
        back = annvq.load(path)
        rows += _sweep("annvq", spec + " (vectors on disk)", name, xq, gt, nprobes,
                       lambda p: setattr(back, "nprobe", p), lambda q: back.search(q, K)[1], t_train + t_add,
                       nbytes, nlat)
    path.unlink()
    for r in rows:
        r["family"] = spec
    return rows


def faiss_spec(spec: str) -> str:
    """The faiss factory string for an annvq spec (``Refine`` -> ``RFlat``, OPQ before IVF)."""
    parts = spec.replace(",Refine", ",RFlat").replace("_HKM", "").split(",")
    opq = [p for p in parts if p.startswith("OPQ")]
    return ",".join(opq + [p for p in parts if not p.startswith("OPQ")])


def faiss_rows(name, spec, x, xt, xq, gt, nprobes, nlat, fspec=None):
    """faiss with the same spec as annvq (``spec``), or a faiss-only factory string (``fspec``)."""
    fspec = fspec or faiss_spec(spec)
    index = faiss.index_factory(x.shape[1], fspec)
    _, t_train = timed(lambda: index.train(xt))
    _, t_add = timed(lambda: index.add(x))
    nbytes = len(faiss.serialize_index(index)) / len(x)
    ivf = faiss.extract_index_ivf(index) if "IVF" in fspec else None
    if "RFlat" in fspec:
        faiss.downcast_index(index).k_factor = 4

    def set_nprobe(p):
        if ivf is not None:
            ivf.nprobe = p

    rows = _sweep("faiss", fspec, name, xq, gt, nprobes if ivf is not None else ["-"], set_nprobe,
                  lambda q: index.search(q, K)[1], t_train + t_add, nbytes, nlat)
    for r in rows:
        r["family"] = spec
    return rows


def nanopq_rows(name, M, x, xt, xq, gt, nlat):
    """nanopq PQ (exhaustive: nanopq has no inverted file), one point."""
    pq = nanopq.PQ(M=M, Ks=256, verbose=False)
    t0 = time.perf_counter()
    pq.fit(xt, seed=0)
    codes = pq.encode(x)
    build_s = time.perf_counter() - t0

    def search(qs):
        out = np.empty((len(qs), K), dtype=np.int64)
        for i, v in enumerate(qs):
            dist = pq.dtable(v).adist(codes)
            top = np.argpartition(dist, K)[:K]
            out[i] = top[np.argsort(dist[top])]
        return out

    rows = _sweep("nanopq", f"PQ{M}x8 (exhaustive)", name, xq, gt, ["-"], lambda p: None, search, build_s, float(M),
                  nlat)
    rows[0]["family"] = "nanopq"
    return rows


def qps_at(rows, recall_key: str, target: float) -> float | None:
    """QPS where a curve (rows in nprobe order) first reaches ``target`` recall, interpolating
    log(QPS) linearly between the two nprobe settings around it; None if it never does."""
    pts = [(r[recall_key], r["qps"]) for r in rows]
    if pts and pts[0][0] >= target:
        return pts[0][1]
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 < target <= r1:
            f = (target - r0) / (r1 - r0)
            return float(np.exp(np.log(q0) + f * (np.log(q1) - np.log(q0))))
    return None


def summarize(rows, target: float) -> dict[str, float | None]:
    """QPS of every curve at ``target`` recall, and each faiss fast-scan curve against each annvq
    8-bit PQ curve at equal 1-recall@10: the target, or the best the fast-scan curve reaches if lower."""
    curves: dict[tuple[str, str], list] = {}
    for r in rows:
        curves.setdefault((r["lib"], r["spec"]), []).append(r)
    summary: dict[str, float | None] = {}
    for key in ("R@10", "10-recall@10"):
        for (lib, spec), pts in curves.items():
            summary[f"{lib} {spec} @ {key}={target}"] = qps_at(pts, key, target)
    for (_, spec), pts in curves.items():
        if not spec.endswith("fs"):
            continue
        level = min(target, np.floor(1000 * max(p["R@10"] for p in pts)) / 1000)
        fast = qps_at(pts, "R@10", level)
        for (lib2, spec2), pts2 in curves.items():
            if lib2 == "annvq" and "PQ" in spec2 and "Refine" not in spec2:
                ours = qps_at(pts2, "R@10", level)
                ratio = fast / ours if fast and ours else None
                summary[f"faiss {spec} QPS / annvq {spec2} QPS @ R@10={level:.3f}"] = ratio
    for k_, v in summary.items():
        print(f"{k_}: {'not reached' if v is None else f'{v:.2f}' if 'QPS /' in k_ else f'{v:.0f} QPS'}")
    return summary


def plot(rows, name: str, path: Path) -> None:
    """Recall-QPS curves in nprobe order: one colour per spec, line style per library."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    curves: dict[tuple[str, str], list] = {}
    for r in rows:
        curves.setdefault((r["lib"], r["spec"]), []).append(r)
    families = list(dict.fromkeys(r["family"] for r in rows))
    colours = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    for ax, key in zip(axes, ["R@10", "10-recall@10"]):
        for (lib, spec), pts in curves.items():
            style = "-." if "on disk" in spec else {"annvq": "-", "faiss": "--", "nanopq": ""}[lib]
            ax.plot([p[key] for p in pts], [p["qps"] for p in pts], style, marker="s" if lib == "nanopq" else "o",
                    ms=6 if lib == "nanopq" else 3.5, color=colours[pts[0]["family"]], label=f"{lib} {spec}")
        ax.set_yscale("log")
        ax.set_xlabel({"R@10": "1-recall@10 (true nearest neighbour in the top 10)",
                       "10-recall@10": "10-recall@10"}[key])
        ax.set_ylabel("queries per second (1 thread, k=100)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{name}: recall vs QPS over nprobe (up and right is better); "
                 "solid annvq, dashed faiss, dash-dot annvq with vectors read from disk")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def real_runs(args) -> dict:
    out = {}
    for name in args.datasets:
        ds = load_annb(dataset_path(name))
        x, xq, gt = ds.train, ds.test, ds.neighbors
        xt = x  # no learn split in these files: train on the base, as the data README advises
        runs = []
        for spec in args.specs:
            runs.append(partial(annvq_rows, name, spec, x, xt, xq, gt, args.nprobe, args.latency_queries, RESULTS))
            if faiss is not None and not args.no_faiss:
                runs.append(partial(faiss_rows, name, spec, x, xt, xq, gt, args.nprobe, args.latency_queries))
        if faiss is not None and not args.no_faiss:
            for fs in args.faiss_extra:
                runs.append(partial(faiss_rows, name, fs, x, xt, xq, gt, args.nprobe, args.latency_queries, fspec=fs))
        if nanopq is not None and not args.no_nanopq:
            runs.append(partial(nanopq_rows, name, args.nanopq_M, x, xt, xq, gt, args.latency_queries))
        rows = []
        for run in runs:
            new = run()
            print(markdown_table(new, COLS), flush=True)
            rows += new
        png = RESULTS / f"ivf_{name}.png"
        plot(rows, name, png)
        summary = summarize(rows, args.target)
        out[name] = {"rows": rows, "qps_at_target": summary, "plot": str(png.relative_to(RESULTS.parent.parent))}
    return out


def synthetic(n: int, rng: np.random.Generator, centers: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """SYNTHETIC: 10,000 unit Gaussian clusters in a 32-D latent space mapped linearly to 128-D, plus small
    noise. Nearest neighbours are meaningful (as in real descriptors, whose intrinsic dimension is low),
    and there are far more clusters than lists, so, as on real data, recall keeps growing with nprobe."""
    lab = rng.integers(len(centers), size=n)
    z = centers[lab] + rng.normal(size=(n, centers.shape[1])).astype(np.float32)
    return (z @ basis + 0.1 * rng.normal(size=(n, basis.shape[1]))).astype(np.float32)


SYNTHETIC_LABEL = ("SYNTHETIC: 10,000 Gaussian clusters in a 32-D latent space, linear map to d=128, noise 0.1, "
                   "generated on the fly (seed 0)")


def synthetic_source(seed: int = 0) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """The generator, cluster centres and basis behind SYNTHETIC (draw queries first, then bases)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10_000, 32)).astype(np.float32) * 3
    basis = rng.normal(size=(32, 128)).astype(np.float32) / np.sqrt(32)
    return rng, centers, basis


def synthetic_runs(args) -> dict:
    """Build time, recall and QPS of IVF-PQ at several sizes on SYNTHETIC data (see ``synthetic``)."""
    rng, centers, basis = synthetic_source()
    xq = synthetic(args.synthetic_queries, rng, centers, basis)
    out = {}
    for n in args.sizes:
        x = synthetic(n, rng, centers, basis)
        _, gt = knn_groundtruth(x, xq, K)
        xt = x[: args.train_size]
        name = f"SYNTHETIC-{n // 1000}k"
        rows = []
        for spec in args.synthetic_specs:
            rows += annvq_rows(name, spec, x, xt, xq, gt, args.nprobe, args.latency_queries, RESULTS)
            if faiss is not None and not args.no_faiss:
                rows += faiss_rows(name, spec, x, xt, xq, gt, args.nprobe, args.latency_queries)
        if faiss is not None and not args.no_faiss:
            for fs in args.synthetic_faiss_extra:
                rows += faiss_rows(name, fs, x, xt, xq, gt, args.nprobe, args.latency_queries, fspec=fs)
        for row in rows:
            row["n"] = n
        print(markdown_table(rows, COLS), flush=True)
        png = RESULTS / f"ivf_{name}.png"
        plot(rows, name, png)
        out[name] = {"rows": rows, "qps_at_target": summarize(rows, args.target),
                     "plot": str(png.relative_to(RESULTS.parent.parent))}
        del x
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=["sift10k", "bigann10k"],
                    help="names in ../shared/data or HDF5 paths")
    ap.add_argument("--specs", nargs="*",
                    default=["IVF64,PQ16x8", "IVF64,PQ16x8,Refine", "IVF64,OPQ16,PQ16x8", "IVF64,SQ8"])
    ap.add_argument("--faiss-extra", nargs="*", default=["IVF64,PQ16x4fs"], help="faiss-only specs (fast-scan)")
    ap.add_argument("--nprobe", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--nanopq-M", type=int, default=16)
    ap.add_argument("--target", type=float, default=0.9, help="recall at which QPS is compared")
    ap.add_argument("--latency-queries", type=int, default=100)
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--no-nanopq", action="store_true")
    ap.add_argument("--synthetic", action="store_true", help="run the SYNTHETIC scaling benchmark instead")
    ap.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--synthetic-specs", nargs="*", default=["IVF1024,PQ16x8", "IVF1024,PQ32x8"])
    ap.add_argument("--synthetic-faiss-extra", nargs="*",
                    default=["IVF1024,PQ16x4fs", "IVF1024,PQ32x4fs", "IVF1024,PQ64x4fs"],
                    help="faiss-only specs in the synthetic run (fast-scan; PQ2Mx4fs has the code size of PQMx8)")
    ap.add_argument("--synthetic-queries", type=int, default=1000)
    ap.add_argument("--train-size", type=int, default=100_000)
    args = ap.parse_args()
    apply_thread_limits(1)
    if args.synthetic:
        path = write_results("ivf_synthetic", {"threads": 1, "k": K, "data": SYNTHETIC_LABEL,
                                               "datasets": synthetic_runs(args)})
    else:
        path = write_results("ivf", {"threads": 1, "k": K, "datasets": real_runs(args)})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
