"""Scale-out on Dask: build throughput with 1 and 2 workers, router overhead, split-by-list routing,
and the per-core figures docs/scaling.md plans 1B vectors with.

Data: SYNTHETIC vectors from bench_ivf (clustered Gaussians in a 32-D latent space mapped to 128-D,
seed 0), written once to an .npy file the workers memory-map.

* Build: the model is trained once (a full build on 2 workers; its training time is reported), then
  the encode + merge + publish phase of ``annvq.distributed.build(..., model=...)`` is timed on a
  LocalCluster of 1 and of 2 workers (1 thread each): vectors/s and the 2-vs-1 ratio, per spec.
* Router: the 2-shard build served by ``ShardedIndex`` (S=2, R=1, 2 workers x 1 thread) against the
  same vectors in one in-process index (Numba on 2 threads, the same cores): QPS of 1,000-query
  batches, and the p50 latency of single queries (in-process on one thread; the best median of a few
  rounds, each side's own) and its difference.
* Split-by-list (``--split-by-list``): a ``layout="lists"`` build; shards touched per query and the
  hottest shard's load at nprobe 8 and 32, and QPS routed by lists against scatter-to-all.
* Per core (``--per-core``): encode vectors/s on one thread for several codecs, memory per vector,
  rows scanned per second per core.

    python benchmarks/bench_distributed.py                                # 1M vectors, the targets
    python benchmarks/bench_distributed.py --n 100000 --split-by-list --per-core
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", str(os.cpu_count() or 1))
import numba  # its thread pool is sized now, before bench_ivf pins the environment to one thread

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from bench_ivf import synthetic
from common import markdown_table, timed, write_results

import annvq
from annvq.datasets import knn_groundtruth, knn_recall
from annvq.distributed import ShardedIndex, build, load_local, local_cluster

K = 10
TARGETS = {"build IVF1024,PQ16x8": 1.7, "build RQ7x8": 1.8, "router qps": 0.8, "p50 overhead ms": 2.0}


def make_data(n: int, nq: int, workdir: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The SYNTHETIC base (written to base.npy, returned too) and queries, seeded as in bench_ivf."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10_000, 32)).astype(np.float32) * 3
    basis = rng.normal(size=(32, 128)).astype(np.float32) / np.sqrt(32)
    xq = synthetic(nq, rng, centers, basis)
    x = np.concatenate([synthetic(min(100_000, n - s), rng, centers, basis) for s in range(0, n, 100_000)])
    path = workdir / "base.npy"
    np.save(path, x)
    np.save(workdir / "warm.npy", x[:4096])
    return path, x, xq


class Clusters:
    """LocalClusters of 1 and 2 workers (1 thread each), started once, their workers warmed up."""

    def __init__(self, counts: list[int]) -> None:
        from distributed import Client

        self.clients = {}
        self._clusters = []
        for w in counts:
            cluster = local_cluster(w, threads_per_worker=1)
            self._clusters.append(cluster)
            self.clients[w] = Client(cluster)

    def warm(self, workdir: Path, model: Path) -> None:
        """A small build on every cluster, so that each worker has loaded the compiled kernels."""
        for w, client in self.clients.items():
            out = workdir / f"warm-{w}"
            shutil.rmtree(out, ignore_errors=True)
            build(client, workdir / "warm.npy", None, out, model=model, shards=w, chunk_rows=512, progress=False)
            shutil.rmtree(out)

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        for cl in self._clusters:
            cl.close()


def build_scaling(args, clusters: Clusters, base: Path, workdir: Path) -> list[dict]:
    rows = []
    for spec in args.specs:
        tag = spec.replace(",", "_")
        full = workdir / f"full-{tag}"
        shutil.rmtree(full, ignore_errors=True)
        t = time.perf_counter()
        build(clusters.clients[max(clusters.clients)], base, spec, full, shards=2, train_size=args.train_size,
              chunk_rows=args.chunk_rows, progress=False)
        t_full = time.perf_counter() - t
        clusters.warm(workdir, full / "model")
        rates = {}
        for w in sorted(clusters.clients) * args.repeat:
            out = workdir / f"enc-{tag}-{w}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            m = build(clusters.clients[w], base, None, out, model=full / "model", shards=2, chunk_rows=args.chunk_rows,
                      progress=False)
            rates[w] = max(rates.get(w, 0.0), m.ntotal / (time.perf_counter() - t))
            if w != 2 or spec != args.specs[0]:
                shutil.rmtree(out)
        t_encode_2 = args.n / rates[max(rates)]
        row = {"spec": spec, "n": args.n, "build_2w_s": t_full, "train_s_est": max(0.0, t_full - t_encode_2)}
        for w, r in sorted(rates.items()):
            row[f"vec_per_s_{w}w"] = r
        row["speedup_2w_vs_1w"] = rates.get(2, float("nan")) / rates.get(1, float("nan"))
        rows.append(row)
        print(markdown_table([row], list(row)), flush=True)
        shutil.rmtree(full)
    return rows


def router_overhead(args, clusters: Clusters, workdir: Path, x: np.ndarray, xq: np.ndarray) -> dict:
    """QPS at batch 1000 and single-query latency: ShardedIndex (S=2, R=1) vs one in-process index."""
    out = workdir / f"enc-{args.specs[0].replace(',', '_')}-2"
    client = clusters.clients[2]
    local = load_local(out)
    local.compact(full=True)
    _, gt = knn_groundtruth(x, xq, K)
    p = args.nprobe
    with ShardedIndex(client, out, replicas=1) as index:
        index.search(xq[:8], K, nprobe=p)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        local.search(xq[:8], K, nprobe=p)
        (D1, I1), t_local = timed(lambda: local.search(xq, K, nprobe=p), repeat=5, min_seconds=2.0)
        (D2, I2), t_sharded = timed(lambda: index.search(xq, K, nprobe=p), repeat=5, min_seconds=2.0)
        numba.set_num_threads(1)
        p50_local, p50_sharded = np.inf, np.inf  # best of the rounds' medians, as builds keep their best
        for _ in range(args.latency_rounds):
            lat_local, lat_sharded = [], []
            for q in xq[: args.latency_queries]:
                t = time.perf_counter()
                local.search(q, K, nprobe=p)
                lat_local.append(time.perf_counter() - t)
                t = time.perf_counter()
                index.search(q, K, nprobe=p)
                lat_sharded.append(time.perf_counter() - t)
            p50_local = min(p50_local, 1e3 * float(np.median(lat_local)))
            p50_sharded = min(p50_sharded, 1e3 * float(np.median(lat_sharded)))
    nq, d = xq.shape
    return {"n": len(x), "spec": args.specs[0], "nprobe": p, "batch": nq,
            "qps_in_process_2threads": nq / t_local, "qps_sharded_S2_R1": nq / t_sharded,
            "qps_ratio": t_local / t_sharded, "p50_ms_in_process": p50_local, "p50_ms_sharded": p50_sharded,
            "p50_overhead_ms": p50_sharded - p50_local, "recall10_in_process": knn_recall(I1, gt, K),
            "recall10_sharded": knn_recall(I2, gt, K), "same_distances": bool(np.array_equal(np.sort(D1, axis=1),
                                                                                              np.sort(D2, axis=1))),
            "router_bytes_out_per_query": 2 * 4 * d, "router_bytes_in_per_query": 2 * K * 12}


def split_by_list(args, clusters: Clusters, workdir: Path, x: np.ndarray, xq: np.ndarray) -> list[dict]:
    """Shards touched per query and load balance of a split-by-list build; QPS routed vs scattered."""
    n = min(args.split_n, len(x))
    np.save(workdir / "split.npy", x[:n])
    client = clusters.clients[2]
    rows = []
    for shards in (2, 4):
        out = workdir / f"lists-{shards}"
        shutil.rmtree(out, ignore_errors=True)
        m = build(client, workdir / "split.npy", "IVF1024,PQ16x8", out, shards=shards, layout="lists",
                  train_size=min(args.train_size, n), chunk_rows=args.chunk_rows, progress=False)
        model = annvq.load(out / "model")
        owner = m.shard_of_vshard()
        for nprobe in (8, 32):
            _, probes = model.coarse.search(model.prepare(xq), nprobe, "l2")
            touched = [np.unique(owner[pr]) for pr in probes]
            load = np.bincount(np.concatenate(touched), minlength=shards)
            row = {"n": n, "shards": shards, "nprobe": nprobe,
                   "shards_per_query": float(np.mean([len(t) for t in touched])),
                   "hottest_load_vs_mean": float(load.max() / load.mean())}
            for route in ("all", "lists"):
                with ShardedIndex(client, out, route=route) as index:
                    index.search(xq[:8], K, nprobe=nprobe)
                    _, t = timed(lambda index=index, nprobe=nprobe: index.search(xq, K, nprobe=nprobe), repeat=3,
                                 min_seconds=1.0)
                row[f"qps_route_{route}"] = len(xq) / t
            rows.append(row)
            print(markdown_table([row], list(row)), flush=True)
        shutil.rmtree(out)
    return rows


def per_core(args, x: np.ndarray, xq: np.ndarray) -> list[dict]:
    """One thread: encode rate per codec, bytes per vector in memory, rows scanned per second."""
    numba.set_num_threads(1)
    m = min(args.per_core_n, len(x))
    rows = []
    for spec in args.per_core_specs:
        idx = annvq.index_factory(x.shape[1], spec)
        idx.train(x[: min(args.per_core_train, len(x))])
        _, t_add = timed(lambda idx=idx: idx.add(x[:m]))
        mem = idx.memory_usage()
        idx.compact(full=True)
        p = args.nprobe
        idx.search(xq[:8], K, nprobe=p)
        _, t = timed(lambda idx=idx, p=p: idx.search(xq, K, nprobe=p), repeat=3, min_seconds=1.0)
        scanned = p * m / idx.nlist  # rows in nprobe average lists
        rows.append({"spec": spec, "encode_vec_per_s_core": m / t_add,
                     "bytes_per_vector": (mem["sealed"] + mem["growing"]) / m, "code_size": idx.code_size,
                     "nprobe": p, "rows_scanned_per_query": scanned,
                     "rows_scanned_per_s_core": scanned * len(xq) / t, "core_ms_per_query": 1e3 * t / len(xq)})
        print(markdown_table(rows[-1:], list(rows[-1])), flush=True)
    return rows


def target_table(build_rows: list[dict], router: dict | None) -> list[dict]:
    out = []
    for r in build_rows:
        key = f"build {r['spec']}"
        goal = TARGETS.get(key, TARGETS.get(f"build {r['spec'].split(',')[-1]}"))
        out.append({"target": f"{key}: 2 workers / 1 worker vectors/s", "measured": f"{r['speedup_2w_vs_1w']:.2f}x",
                    "goal": f">= {goal}x" if goal else "-", "met": bool(goal and r["speedup_2w_vs_1w"] >= goal)})
    if router:
        out.append({"target": "router: sharded S=2,R=1 QPS / in-process (batch 1000)",
                    "measured": f"{router['qps_ratio']:.2f}x", "goal": ">= 0.8x",
                    "met": router["qps_ratio"] >= TARGETS["router qps"]})
        out.append({"target": "router: single-query p50 overhead", "measured": f"{router['p50_overhead_ms']:.2f} ms",
                    "goal": "<= 2 ms", "met": router["p50_overhead_ms"] <= TARGETS["p50 overhead ms"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="base vectors")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--specs", nargs="*", default=["IVF1024,PQ16x8", "RQ7x8"])
    ap.add_argument("--train-size", type=int, default=100_000)
    ap.add_argument("--chunk-rows", type=int, default=65_536, help="rows per encode task")
    ap.add_argument("--repeat", type=int, default=5, help="timed builds per worker count (best kept)")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--latency-queries", type=int, default=1000)
    ap.add_argument("--latency-rounds", type=int, default=3, help="rounds of single queries (best median kept)")
    ap.add_argument("--split-by-list", action="store_true", help="also measure split-by-list routing")
    ap.add_argument("--split-n", type=int, default=200_000)
    ap.add_argument("--per-core", action="store_true", help="also measure per-core figures for docs/scaling.md")
    ap.add_argument("--per-core-n", type=int, default=20_000)
    ap.add_argument("--per-core-train", type=int, default=20_000)
    ap.add_argument("--per-core-specs", nargs="*",
                    default=["IVF1024,SQ8", "IVF1024,PQ16x8", "IVF1024,PQ32x8", "IVF1024,OPQ16,PQ16x8",
                             "IVF1024,RQ7x8", "IVF1024,AQ7x8", "IVF1024,CQ8x8"])
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="annvq-bench-dist-")) if args.workdir is None else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.n} SYNTHETIC vectors, d=128; work directory {workdir}; {os.cpu_count()} cores", flush=True)
    base, x, xq = make_data(args.n, args.queries, workdir)
    clusters = Clusters([1, 2])
    try:
        build_rows = build_scaling(args, clusters, base, workdir)
        router = router_overhead(args, clusters, workdir, x, xq)
        print(markdown_table([router], list(router)), flush=True)
        split = split_by_list(args, clusters, workdir, x, xq) if args.split_by_list else []
    finally:
        clusters.close()
    cores = per_core(args, x, xq) if args.per_core else []
    targets = target_table(build_rows, router)
    print("\n## Targets\n" + markdown_table(targets, ["target", "measured", "goal", "met"]))
    stem = "distributed" if args.n == 1_000_000 else f"distributed_{args.n}"
    path = write_results(stem, {"n": args.n, "data": "SYNTHETIC (bench_ivf.synthetic, seed 0)", "build": build_rows,
                                "router": router, "split_by_list": split, "per_core": cores, "targets": targets,
                                "conditions": "LocalCluster workers x 1 thread; Numba/BLAS pinned per worker"})
    print(f"results written to {path}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
