"""PQ and OPQ against faiss and nanopq in one run, plus the exhaustive 1M-code ADC scan.

Real data: MSE over the base set, 1-recall@1/10/100 of the test queries against the shipped exact
neighbours, train and encode seconds, and QPS of exhaustive ADC search (k=100), all at one thread.
Synthetic (clearly labelled): 1M random 8-byte codes scanned with k=10 by annvq, faiss ``IndexPQ``
and nanopq's ``dtable().adist()`` + argpartition.

    python benchmarks/bench_core.py                       # sift10k and bigann10k, 32 and 64 bits, + scan
    python benchmarks/bench_core.py --datasets sift10k --bits 64 --no-scan
"""
from __future__ import annotations

import argparse
import sys
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
from annvq.datasets import load_annb, mse, recall_at
from annvq.kernels import scan_topk_batch

faiss = optional("faiss")
nanopq = optional("nanopq")


def _row(lib, method, ds, bits, x, xq, gt, train, encode, decode, search):
    _, t_train = timed(train)
    codes, t_enc = timed(lambda: encode(x))
    err = mse(x, decode(codes))
    I, t_search = timed(lambda: search(xq), repeat=2)
    return {"dataset": ds, "bits": bits, "lib": lib, "method": method, "mse": err,
            "R@1": recall_at(I, gt, 1), "R@10": recall_at(I, gt, 10), "R@100": recall_at(I, gt, 100),
            "train_s": t_train, "encode_s": t_enc, "qps": len(xq) / t_search}


def annvq_rows(ds, bits, x, xq, gt):
    M = bits // 8
    rows = []
    for method, spec in (("PQ", f"PQ{M}x8"), ("OPQ", f"OPQ{M},PQ{M}x8")):
        idx = annvq.index_factory(x.shape[1], spec)

        def search(q, idx=idx):
            if idx.ntotal == 0:
                idx.add(x)
            return idx.search(q, 100)[1]

        rows.append(_row("annvq", method, ds, bits, x, xq, gt, lambda idx=idx: idx.train(x),
                         lambda v, idx=idx: idx.codec.encode(v), lambda c, idx=idx: idx.codec.decode(c), search))
    return rows


def faiss_rows(ds, bits, x, xq, gt):
    M, d = bits // 8, x.shape[1]
    rows = []
    for method, spec in (("PQ", f"PQ{M}x8"), ("OPQ", f"OPQ{M},PQ{M}x8")):
        idx = faiss.index_factory(d, spec)

        def search(q, idx=idx):
            if idx.ntotal == 0:
                idx.add(x)
            return idx.search(q, 100)[1]

        rows.append(_row("faiss", method, ds, bits, x, xq, gt, lambda idx=idx: idx.train(x),
                         lambda v, idx=idx: idx.sa_encode(v), lambda c, idx=idx: idx.sa_decode(c), search))
    return rows


def nanopq_rows(ds, bits, x, xq, gt):
    M = bits // 8
    rows = []
    for method, cls in (("PQ", nanopq.PQ), ("OPQ", nanopq.OPQ)):
        q = cls(M=M, Ks=256, verbose=False)
        store = {}

        def search(qs, q=q, store=store):
            codes = store.setdefault("codes", q.encode(x))
            out = np.empty((len(qs), 100), dtype=np.int64)
            for i, v in enumerate(qs):
                dist = q.dtable(v).adist(codes)
                top = np.argpartition(dist, 100)[:100]
                out[i] = top[np.argsort(dist[top])]
            return out

        rows.append(_row("nanopq", method, ds, bits, x, xq, gt, lambda q=q: q.fit(x, seed=0),
                         q.encode, q.decode, search))
    return rows


def scan_rows(n: int, nq: int, k: int = 10):
    """Exhaustive scan of n random 8-byte codes (synthetic), k=10, one thread."""
    rng = np.random.default_rng(0)
    d, M = 128, 8
    xt = rng.normal(size=(20_000, d)).astype(np.float32)
    xq = rng.normal(size=(nq, d)).astype(np.float32)
    codes = rng.integers(0, 256, size=(n, M), dtype=np.uint8)
    rows = []
    pq = annvq.ProductQuantizer(d, M, 8, niter=5).fit(xt)
    empty = np.empty(0, np.float32)
    scan_topk_batch(pq.lookup_tables(xq[:2]), codes[:1000], empty, k)  # compile
    _, t = timed(lambda: scan_topk_batch(pq.lookup_tables(xq), codes, empty, k), repeat=3)
    rows.append({"lib": "annvq", "what": f"ADC scan {n:,} synthetic codes, M=8", "qps": nq / t,
                 "ms_per_query": 1000 * t / nq})
    if faiss is not None:
        index = faiss.IndexPQ(d, M, 8)
        index.train(xt)
        index.codes.resize(n * M)
        faiss.copy_array_to_vector(codes.ravel(), index.codes)
        index.ntotal = n
        _, t = timed(lambda: index.search(xq, k), repeat=3)
        rows.append({"lib": "faiss IndexPQ", "what": f"ADC scan {n:,} synthetic codes, M=8", "qps": nq / t,
                     "ms_per_query": 1000 * t / nq})
    if nanopq is not None:
        npq = nanopq.PQ(M=M, Ks=256, verbose=False).fit(xt[:5000], iter=5, seed=0)
        sub = xq[: max(4, nq // 8)]

        def run():
            for v in sub:
                dist = npq.dtable(v).adist(codes)
                np.argpartition(dist, k)[:k]

        _, t = timed(run)
        rows.append({"lib": "nanopq", "what": f"ADC scan {n:,} synthetic codes, M=8", "qps": len(sub) / t,
                     "ms_per_query": 1000 * t / len(sub)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=["sift10k", "bigann10k"],
                    help="names in ../shared/data or HDF5 paths")
    ap.add_argument("--bits", nargs="*", type=int, default=[32, 64])
    ap.add_argument("--scan-n", type=int, default=1_000_000)
    ap.add_argument("--scan-queries", type=int, default=64)
    ap.add_argument("--no-scan", action="store_true")
    args = ap.parse_args()
    apply_thread_limits(1)
    rows = []
    for name in args.datasets:
        ds = load_annb(dataset_path(name))
        x, xq, gt = ds.train, ds.test, ds.neighbors
        for bits in args.bits:
            rows += annvq_rows(name, bits, x, xq, gt)
            if faiss is not None:
                rows += faiss_rows(name, bits, x, xq, gt)
            if nanopq is not None:
                rows += nanopq_rows(name, bits, x, xq, gt)
            print(markdown_table([r for r in rows if r["dataset"] == name and r["bits"] == bits],
                                 ["dataset", "bits", "lib", "method", "mse", "R@1", "R@10", "R@100", "train_s",
                                  "encode_s", "qps"]), flush=True)
    scan = [] if args.no_scan else scan_rows(args.scan_n, args.scan_queries)
    if scan:
        print(markdown_table(scan, ["lib", "what", "qps", "ms_per_query"]))
    path = write_results("core", {"threads": 1, "quality": rows, "scan": scan})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
