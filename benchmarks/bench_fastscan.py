"""4-bit fast-scan (``PQ{M}x4fs``) against faiss fast-scan, 8-bit PQ and hnswlib, all at one thread.

Flat (``--flat``): ``PQ32x4fs`` over 1M SYNTHETIC 128-D vectors (the generator of ``bench_ivf.py``),
annvq against faiss ``IndexPQFastScan`` with the same M: QPS for a batch of 1,000 queries and for one
query at a time (k=10), and R@10.

IVF (``--ivf``): ``IVF256,PQ32x4fs`` on annvq's built-in 110k SIFT set and ``IVF1024,PQ32x4fs`` on 1M
SYNTHETIC vectors, each over an nprobe sweep (batch of 1,000 queries, k=10): annvq fast-scan, plain
(quantised distances, as faiss's), re-scored with float tables (``rescore=True``) and re-ranked by the
exact vectors (``,Refine``, k_factor 4), annvq ``IVF{n},PQ16x8`` (the same 16 bytes per
vector, 8-bit), faiss ``IVF{n},PQ32x4fs``, ``IVF{n},PQ32x4fs,RFlat`` and ``IVF{n},PQ16x8``, and hnswlib
(M=16) over its ``ef`` when installed. R@10 is 1-recall@10 (the true nearest neighbour in the top 10).
Each run prints the issue's target table: QPS at R@10 = 0.90 (interpolated between nprobe settings),
QPS at 0.95 with re-ranking, QPS at 0.99 against hnswlib with resident memory per vector, the R@10 gap
at equal nprobe, and writes recall-QPS curves (PNG) and ``results/fastscan.json``.

Codecs (``--codecs``): which 4-bit codec should feed the layout: R@10 of exhaustive float ADC search
with PQ32x4, OPQ32x4 and RQ/AQ with 4-bit codebooks at the same 16 bytes per vector (plus a stored norm
for the additive codecs, as they need one), on the built-in set, faiss's fast-scan PQ, RQ and LSQ
alongside; then IVF256 with RQ codes (norm as two more 4-bit codes) through the fast-scan layout against
``IVF256,PQ32x4fs``.

    python benchmarks/bench_fastscan.py                     # everything
    python benchmarks/bench_fastscan.py --flat --n 1000000
    python benchmarks/bench_fastscan.py --ivf --datasets builtin
    python benchmarks/bench_fastscan.py --codecs --codecs-ivf

annvq's indexes come from ``annvq.index_factory``; with ``--shared-coarse``, the fast-scan ones are
assembled from ``annvq.index.fastscan.FastScanLists`` around faiss's coarse centroids instead
(:class:`FastScanIndex`), to compare the codes alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS,
    apply_thread_limits,
    markdown_table,
    optional,
    pin_threads,
    timed,
    write_results,
)

pin_threads(1)

import numpy as np
from bench_ivf import SYNTHETIC_LABEL, qps_at, synthetic, synthetic_source

import annvq
from annvq.datasets import knn_groundtruth, load_default, recall_at
from annvq.index.coarse import FlatCoarse
from annvq.index.fastscan import (
    FastScanLists,
    best_k,
    finish_reservoir,
    list_tables,
    new_reservoir,
    query_tables,
)
from annvq.kernels.ivf import exact_distances
from annvq.kernels.simd import SIMD_PATH
from annvq.spec import IndexSpec, make_codec

faiss = optional("faiss")
hnswlib = optional("hnswlib")

K = 10
COLS = ["dataset", "lib", "spec", "nprobe", "R@10", "qps", "bytes_per_vec"]


class FastScanIndex:
    """annvq ``[IVF<n>,][OPQ<M>,]PQ<M>x4fs[,Refine]`` from its parts: a codec, a k-means coarse quantizer
    given from outside (``--shared-coarse``), the packed codes in a :class:`FastScanLists`, and for
    ``Refine`` the exact vectors. It offers what the benchmark uses of an annvq index.
    """

    def __init__(self, d: int, spec: str, random_state: int = 0, centroids: np.ndarray | None = None) -> None:
        self.spec = IndexSpec.parse(spec)
        self.codec = make_codec(self.spec, d)
        self.coarse = FlatCoarse(self.spec.nlist, random_state=random_state) if self.spec.nlist else None
        if centroids is not None:  # a coarse quantizer trained elsewhere (--shared-coarse)
            self.coarse.set_arrays({"centroids": centroids}, d)
        self.rerank = self.spec.rerank
        self.nprobe, self.k_factor = 1, 4

    def train(self, x: np.ndarray) -> FastScanIndex:
        if self.coarse is not None:
            if not self.coarse.is_trained:
                self.coarse.fit(x)
            x = x - self.coarse.centroids[self.coarse.assign(x)]
        self.codec.fit(x)
        return self

    def add(self, x: np.ndarray) -> None:
        if self.coarse is None:
            self.ids = np.arange(len(x))
            self.lists = FastScanLists.from_codes(self.codec.encode(x))
            self.ptab = None
        else:
            lists = self.coarse.assign(x)
            self.ids = np.argsort(lists, kind="stable")
            residuals = x[self.ids] - self.coarse.centroids[lists[self.ids]]
            offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=self.coarse.nlist))])
            self.lists = FastScanLists.from_codes(self.codec.encode(residuals), offsets)
            self.ptab = list_tables(self.codec, self.coarse.centroids)
        self.vectors = np.ascontiguousarray(x[self.ids]) if self.rerank else None

    def search(self, xq: np.ndarray, k: int, nprobe: int | None = None, rerank: bool | None = None,
               k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        rerank = self.rerank if rerank is None else rerank
        res = new_reservoir(len(xq), k * (k_factor or self.k_factor) if rerank else k)
        if self.coarse is None:
            self.lists.search(query_tables(self.codec, xq), res)
        else:
            consts, probes = self.coarse.search(xq, nprobe or self.nprobe)
            self.lists.search(query_tables(self.codec, xq, ivf=True), res, probes, consts, self.ptab)
        D, L = finish_reservoir(res, sort=not rerank)
        if rerank:  # exact distances of the k_factor * k candidates, best k of them
            D, L = best_k(exact_distances(xq, self.vectors, self.vectors[:0], L, False), L, k)
        return D, np.where(L >= 0, self.ids[np.maximum(L, 0)], -1)

    @property
    def code_bytes_per_vector(self) -> float:
        """Bytes in memory per vector for the codes (packed, with padding and live bits)."""
        return self.lists.nbytes / self.lists.ntotal


def make_index(d: int, spec: str):
    """An untrained annvq index for ``spec``."""
    return annvq.index_factory(d, spec)


def bytes_per_vector(index) -> float:
    """Memory per vector of an annvq index's sealed segments: codes (packed for fast-scan), ids, scan bias."""
    if isinstance(index, FastScanIndex):
        return index.code_bytes_per_vector
    index.seal()
    return index.memory_usage()["sealed"] / max(index.ntotal, 1)


def faiss_spec(spec: str) -> str:
    return spec.replace(",Refine", ",RFlat")


# --- timing helpers ---------------------------------------------------------------------------------
CLOCK = {"fn": time.perf_counter}  # --clock cpu: process CPU time, steadier than wall time on a shared machine


def _timed(fn, repeat: int, min_seconds: float):
    """Run ``fn`` at least ``repeat`` times and for ``min_seconds``; the last result and the best time."""
    clock = CLOCK["fn"]
    best, out, total, runs = float("inf"), None, 0.0, 0
    while runs < repeat or total < min_seconds:
        t = clock()
        out = fn()
        dt = clock() - t
        best, total, runs = min(best, dt), total + dt, runs + 1
    return out, best


def _batch_qps(search, xq: np.ndarray, min_seconds: float) -> tuple[np.ndarray, float]:
    search(xq[:8])  # warm-up (compilation, caches)
    I, t = _timed(lambda: search(xq), 3, min_seconds)
    return I, len(xq) / t


def _single_qps(search, xq: np.ndarray, n: int) -> float:
    """Queries per second searching one query at a time (best of three passes over ``n`` queries)."""
    qs = [xq[i : i + 1] for i in range(min(n, len(xq)))]
    for q in qs[:5]:
        search(q)
    _, t = _timed(lambda: [search(q) for q in qs], 3, 0.0)
    return len(qs) / t


# --- flat -------------------------------------------------------------------------------------------
def flat_run(args) -> dict:
    rng, centers, basis = synthetic_source()
    xq = synthetic(args.queries, rng, centers, basis)
    x = synthetic(args.n, rng, centers, basis)
    xt = x[: args.train_size]
    _, gt = knn_groundtruth(x, xq, K)
    name = f"SYNTHETIC-{args.n // 1000}k"
    spec = f"PQ{args.M}x4fs"
    rows = []
    ours = make_index(x.shape[1], spec)
    _, t_build = timed(lambda: (ours.train(xt), ours.add(x)))
    peers = [("annvq", spec, lambda q: ours.search(q, K)[1], bytes_per_vector(ours), t_build)]
    if faiss is not None:
        fidx = faiss.IndexPQFastScan(x.shape[1], args.M, 4)
        _, t_f = timed(lambda: (fidx.train(xt), fidx.add(x)))
        peers.append(("faiss", f"IndexPQFastScan(M={args.M})", lambda q: fidx.search(q, K)[1],
                      len(faiss.serialize_index(fidx)) / len(x), t_f))
    for lib, sp, search, nbytes, build_s in peers:
        I, qps = _batch_qps(search, xq, args.min_seconds)
        single = _single_qps(search, xq, args.single_queries)
        rows.append({"dataset": name, "lib": lib, "spec": sp, "R@10": recall_at(I, gt, 10), "qps_batch": qps,
                     "qps_single": single, "build_s": build_s, "bytes_per_vec": nbytes})
    print(markdown_table(rows, ["dataset", "lib", "spec", "R@10", "qps_batch", "qps_single", "build_s",
                                "bytes_per_vec"]))
    table = {}
    if len(rows) == 2:
        table = {"flat batch QPS / faiss": rows[0]["qps_batch"] / rows[1]["qps_batch"],
                 "flat single-query QPS / faiss": rows[0]["qps_single"] / rows[1]["qps_single"]}
        for key, v in table.items():
            print(f"{key}: {v:.2f} (target >= 1.0)")
    return {"data": SYNTHETIC_LABEL, "rows": rows, "targets": table}


# --- IVF --------------------------------------------------------------------------------------------
def _sweep(lib, spec, name, xq, gt, points, set_point, search, nbytes, min_seconds, key="nprobe"):
    rows = []
    for p in points:
        set_point(p)
        I, qps = _batch_qps(search, xq, min_seconds)
        rows.append({"dataset": name, "lib": lib, "spec": spec, key: p, "R@10": recall_at(I, gt, 10), "qps": qps,
                     "bytes_per_vec": nbytes})
    print(markdown_table(rows, COLS if key == "nprobe" else [c if c != "nprobe" else key for c in COLS]), flush=True)
    return rows


def _coarse_hits(lists_of_query, nn_lists) -> float:
    """Fraction of queries whose true nearest neighbour lies in one of the probed lists."""
    return float(np.mean([nn in row for nn, row in zip(nn_lists, lists_of_query)]))


def _curves(lib, spec, label, name, xq, gt, nprobes, args, k_factors, set_nprobe, set_k_factor, search, nbytes,
            probed_lists, nn_lists):
    """One nprobe sweep per k_factor (None: the index's own), rows tagged with the spec family and the
    share of queries whose true neighbour's list is probed (``probed_lists(xq, nprobe)``)."""
    rows = []
    for kf in k_factors:
        if kf is not None:
            set_k_factor(kf)
        rows += _sweep(lib, label if kf is None else f"{label} (k_factor={kf})", name, xq, gt, nprobes, set_nprobe,
                       search, nbytes, args.min_seconds)
    for r in rows:
        r["family"] = spec
        r["coarse_hit"] = _coarse_hits(probed_lists(xq, r["nprobe"]), nn_lists)
    return rows


def annvq_curve(name, spec, x, xt, xq, gt, nprobes, args, k_factors=(None,), centroids=None, rescore=False):
    """annvq's sweep; ``rescore``: a second sweep of the same index re-scoring with float tables."""
    if centroids is not None:
        idx = FastScanIndex(x.shape[1], spec, centroids=centroids)
    else:
        idx = make_index(x.shape[1], spec)
    idx.train(xt)
    idx.add(x)
    nbytes = bytes_per_vector(idx)
    rows = []
    for label, kw in [(spec, {})] + ([(f"{spec} (rescore)", {"rescore": True})] if rescore else []):
        rows += _curves("annvq", spec, label, name, xq, gt, nprobes, args, k_factors,
                        lambda p: setattr(idx, "nprobe", p), lambda kf: setattr(idx, "k_factor", kf),
                        lambda q, kw=kw: idx.search(q, K, **kw)[1], nbytes,
                        lambda q, p: idx.coarse.search(q, p)[1], idx.coarse.assign(x[gt[:, 0]]))
    return rows


def faiss_curve(name, spec, x, xt, xq, gt, nprobes, args, k_factors=(None,)):
    fspec = faiss_spec(spec)
    index = faiss.index_factory(x.shape[1], fspec)
    index.train(xt)
    index.add(x)
    ivf = faiss.extract_index_ivf(index)
    nbytes = ivf.code_size + 8.0  # codes and the int64 id of every vector in its inverted list
    return _curves("faiss", spec, fspec, name, xq, gt, nprobes, args, k_factors, lambda p: setattr(ivf, "nprobe", p),
                   lambda kf: setattr(faiss.downcast_index(index), "k_factor", kf), lambda q: index.search(q, K)[1],
                   nbytes, lambda q, p: ivf.quantizer.search(q, p)[1], ivf.quantizer.search(x[gt[:, 0]], 1)[1][:, 0])


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hnsw_curve(name, x, xq, gt, args):
    before = _rss()
    index = hnswlib.Index(space="l2", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=16, ef_construction=200, random_seed=0)
    index.set_num_threads(1)
    index.add_items(x, np.arange(len(x)))
    nbytes = (_rss() - before) / len(x)
    rows = _sweep("hnswlib", "HNSW M=16", name, xq, gt, args.ef, index.set_ef,
                  lambda q: index.knn_query(q, k=K)[0], nbytes, args.min_seconds, key="ef")
    for r in rows:
        r["family"] = "HNSW M=16"
    return rows


def _best_at(curves, lib, family, target):
    """Best QPS at ``target`` R@10 over the curves of one library and spec family (e.g. every k_factor)."""
    qps = [qps_at(pts, "R@10", target) for (lb, _), pts in curves.items() if lb == lib and pts[0]["family"] == family]
    qps = [q for q in qps if q]
    return max(qps) if qps else None


def ivf_targets(rows, specs: dict[str, str]) -> dict[str, float | None]:
    """The issue's target table from the curves: QPS at a recall, ratios, and the recall gap."""
    curves: dict[tuple[str, str], list] = {}
    for r in rows:
        curves.setdefault((r["lib"], r["spec"]), []).append(r)

    def ratio(a, b):
        return a / b if a and b else None

    fs, fs_r, pq8 = specs["fs"], specs["fs_refine"], specs["pq8"]
    out: dict[str, float | None] = {
        "annvq fs QPS @ R@10=0.90": _best_at(curves, "annvq", fs, 0.90),
        "faiss fs QPS @ R@10=0.90": _best_at(curves, "faiss", fs, 0.90),
        "annvq fs,Refine QPS @ R@10=0.95": _best_at(curves, "annvq", fs_r, 0.95),
        "faiss fs,RFlat QPS @ R@10=0.95": _best_at(curves, "faiss", fs_r, 0.95),
        "annvq PQ16x8 QPS @ R@10=0.95": _best_at(curves, "annvq", pq8, 0.95),
        "annvq fs,Refine QPS @ R@10=0.99": _best_at(curves, "annvq", fs_r, 0.99),
        "hnswlib QPS @ R@10=0.99": _best_at(curves, "hnswlib", "HNSW M=16", 0.99),
    }
    out["fs / faiss fs @ 0.90 (target >= 1.0)"] = ratio(out["annvq fs QPS @ R@10=0.90"],
                                                        out["faiss fs QPS @ R@10=0.90"])
    out["fs,Refine / faiss RFlat @ 0.95 (target >= 1.0)"] = ratio(out["annvq fs,Refine QPS @ R@10=0.95"],
                                                                 out["faiss fs,RFlat QPS @ R@10=0.95"])
    out["fs,Refine / annvq PQ16x8 @ 0.95 (target >= 3.0)"] = ratio(out["annvq fs,Refine QPS @ R@10=0.95"],
                                                                  out["annvq PQ16x8 QPS @ R@10=0.95"])
    out["fs,Refine / hnswlib @ 0.99 (stretch >= 1.0)"] = ratio(out["annvq fs,Refine QPS @ R@10=0.99"],
                                                              out["hnswlib QPS @ R@10=0.99"])
    a, b = curves.get(("annvq", fs)), curves.get(("faiss", faiss_spec(fs)))
    if a and b and out["fs / faiss fs @ 0.90 (target >= 1.0)"] is None:
        # 0.90 out of reach: compare at the best recall both curves reach
        level = np.floor(1000 * min(max(r["R@10"] for r in a), max(r["R@10"] for r in b))) / 1000
        out[f"fs / faiss fs @ R@10={level:.3f}, the best both reach"] = ratio(qps_at(a, "R@10", level),
                                                                              qps_at(b, "R@10", level))
    if a and b:
        fr = {r["nprobe"]: r for r in b}
        gaps = [(fr[r["nprobe"]]["R@10"] - r["R@10"], r["nprobe"]) for r in a if r["nprobe"] in fr]
        gap, at = max(gaps)
        out["largest R@10 shortfall to faiss at equal nprobe (target <= 0.01; < 0: annvq above everywhere)"] = gap
        out["nprobe of that shortfall"] = at
        out["share of queries whose true neighbour's list is probed there, annvq"] = next(
            r["coarse_hit"] for r in a if r["nprobe"] == at)
        out["share of queries whose true neighbour's list is probed there, faiss"] = fr[at]["coarse_hit"]
    hn = curves.get(("hnswlib", "HNSW M=16"))
    if hn:
        out["hnswlib resident bytes per vector"] = hn[0]["bytes_per_vec"]
        out["annvq fs code bytes per vector (+ 4 d for the exact vectors Refine reads, held in RAM here)"] = next(
            pts[0]["bytes_per_vec"] for (lb, _), pts in curves.items() if lb == "annvq" and pts[0]["family"] == fs_r)
    for key, v in out.items():
        print(f"{key}: {'not reached' if v is None else f'{v:.3f}' if abs(v) < 10 else f'{v:.0f}'}")
    return out


def plot(rows, name: str, path: Path, clock: str) -> None:
    """Recall-QPS curves: one colour per index (family and k_factor), solid annvq, dashed faiss, dotted hnswlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple[str, str], list] = {}
    for r in rows:
        curves.setdefault((r["lib"], r["spec"]), []).append(r)
    kinds = list(dict.fromkeys(f"{r['family']}{r['spec'].partition(' (')[2]}" for r in rows))
    fig, ax = plt.subplots(figsize=(9, 6))
    for (lib, spec), pts in curves.items():
        kind = f"{pts[0]['family']}{spec.partition(' (')[2]}"
        ax.plot([p["R@10"] for p in pts], [p["qps"] for p in pts], {"annvq": "-", "faiss": "--", "hnswlib": ":"}[lib],
                marker="o", ms=3.5, color=plt.get_cmap("tab10")(kinds.index(kind) % 10), label=f"{lib} {spec}")
    ax.set_yscale("log")
    ax.set_xlabel("R@10 (true nearest neighbour in the top 10)")
    ax.set_ylabel(f"queries per {'CPU ' if clock == 'cpu' else ''}second (1 thread, batch of 1,000, k=10)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: fast-scan and 8-bit PQ at 16 bytes per vector; up and right is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ivf_run(name, x, xt, xq, gt, nlist, args) -> dict:
    specs = {"fs": f"IVF{nlist},PQ{args.M}x4fs", "fs_refine": f"IVF{nlist},PQ{args.M}x4fs,Refine",
             "pq8": f"IVF{nlist},PQ{args.M // 2}x8"}
    centroids = None
    if args.shared_coarse and faiss is not None:  # faiss's k-means centroids for annvq too (deterministic seed)
        ivf = faiss.index_factory(x.shape[1], f"IVF{nlist},Flat")
        ivf.train(xt)
        centroids = ivf.quantizer.reconstruct_n(0, nlist)
    rows = []
    for key, spec in specs.items():
        kfs = args.k_factors if key == "fs_refine" else (None,)
        rows += annvq_curve(name, spec, x, xt, xq, gt, args.nprobe, args, kfs, centroids if key != "pq8" else None,
                            rescore=key == "fs" and centroids is None)
        if faiss is not None:
            rows += faiss_curve(name, spec, x, xt, xq, gt, args.nprobe, args, kfs)
    if hnswlib is not None and not args.no_hnsw and (name.startswith("builtin") or args.hnsw_synthetic):
        rows += hnsw_curve(name, x, xq, gt, args)
    png = RESULTS / f"fastscan_{name}.png"
    plot(rows, name, png, args.clock)
    return {"rows": rows, "targets": ivf_targets(rows, specs), "plot": str(png.relative_to(RESULTS.parent.parent))}


def ivf_runs(args) -> dict:
    out = {}
    for name in args.datasets:
        suffix = "_shared-coarse" if args.shared_coarse else ""
        if name == "builtin":
            ds = load_default()
            label = "builtin-110k" + suffix
            out[label] = ivf_run(label, ds.train, ds.learn, ds.test, ds.neighbors, 256, args)
        else:
            rng, centers, basis = synthetic_source()
            xq = synthetic(args.queries, rng, centers, basis)
            x = synthetic(args.n, rng, centers, basis)
            _, gt = knn_groundtruth(x, xq, K)
            label = f"SYNTHETIC-{args.n // 1000}k" + suffix
            out[label] = {"data": SYNTHETIC_LABEL, **ivf_run(label, x, x[: args.train_size], xq, gt, 1024, args)}
    return out


# --- which 4-bit codec -------------------------------------------------------------------------------
def codec_runs(args) -> dict:
    """R@10 of exhaustive float ADC search at 16 bytes per vector with 4-bit codebooks, on the built-in set:
    PQ and OPQ with M codebooks, RQ and AQ with M - 2 codebooks and an 8-bit norm (additive codecs need
    ||x||^2 per vector; faiss spends two more 4-bit codes on it), and faiss's fast-scan PQ, RQ and LSQ."""
    ds = load_default()
    x, xt, xq, gt = ds.train, ds.learn, ds.test, ds.neighbors
    M = args.M
    rows = []
    cols = ["lib", "spec", "R@10", "build_s", "bytes_per_vec"]
    for spec in [f"PQ{M}x4", f"OPQ{M},PQ{M}x4", f"RQ{M - 2}x4_N8", f"AQ{M - 2}x4_N8"]:
        idx = annvq.index_factory(x.shape[1], spec)
        _, t = timed(lambda idx=idx: (idx.train(xt), idx.add(x)))
        I = idx.search(xq, K)[1]
        rows.append({"lib": "annvq", "spec": spec, "R@10": recall_at(I, gt, 10), "build_s": t,
                     "bytes_per_vec": idx.code_size})
        print(markdown_table(rows[-1:], cols), flush=True)
    if faiss is not None:
        for fspec in [f"PQ{M}x4fs", f"RQ{M - 2}x4fs_Nrq2x4", f"LSQ{M - 2}x4fs_Nlsq2x4"]:
            index = faiss.index_factory(x.shape[1], fspec)
            _, t = timed(lambda index=index: (index.train(xt), index.add(x)))
            I = index.search(xq, K)[1]
            rows.append({"lib": "faiss", "spec": fspec, "R@10": recall_at(I, gt, 10), "build_s": t,
                         "bytes_per_vec": M / 2})
            print(markdown_table(rows[-1:], cols), flush=True)
    return {"rows": rows}


def ivf_rq_rows(args) -> list[dict]:
    """IVF256 with 4-bit RQ codes through the fast-scan layout, against PQ at the same 16 bytes.

    RQ codes residuals with M - 2 codebooks; its 8-bit norm ``||r^||^2`` code is two more 4-bit codes
    (high and low nibble, tables ``16 j step`` and ``j step``), so the distance ``||q - c||^2 - 2 q.r^ +
    2 c.r^ + ||r^||^2`` is one table sum: ``qtab = -2 q.C``, ``ptab = 2 c.C`` plus the norm tables.
    """
    from annvq.index.norms import NormCodec
    from annvq.quantizers import ResidualQuantizer

    ds = load_default()
    x, xt, xq, gt = ds.train, ds.learn, ds.test, ds.neighbors
    M, nlist = args.M, 256
    coarse = FlatCoarse(nlist).fit(xt)
    rq = ResidualQuantizer(x.shape[1], M - 2, 4).fit(xt - coarse.centroids[coarse.assign(xt)])
    lists = coarse.assign(x)
    order = np.argsort(lists, kind="stable")
    codes = rq.encode(x[order] - coarse.centroids[lists[order]])
    rhat = rq.decode(codes)
    norms = NormCodec(8).fit(np.einsum("ij,ij->i", rhat, rhat))
    ncode = norms.encode(np.einsum("ij,ij->i", rhat, rhat))
    packed = FastScanLists.from_codes(np.column_stack([codes, ncode & 15, ncode >> 4]).astype(np.uint8),
                                      np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=nlist))]))
    step = (norms.vmax - norms.vmin) / 255.0
    ptab = np.zeros((nlist, M, 16), dtype=np.float32)
    ptab[:, : M - 2] = 2.0 * np.einsum("ld,mjd->lmj", coarse.centroids, rq.codebooks)
    ptab[:, M - 2] = np.arange(16) * step
    ptab[:, M - 1] = np.arange(16) * 16 * step
    flat_cb = rq.codebooks.reshape(-1, x.shape[1])

    def rq_search(q, nprobe):
        consts, probes = coarse.search(q, nprobe)
        qtab = np.zeros((len(q), M, 16), dtype=np.float32)
        qtab[:, : M - 2] = (-2.0 * (q @ flat_cb.T)).reshape(len(q), M - 2, 16)
        res = new_reservoir(len(q), K)
        packed.search(qtab, res, probes, consts + np.float32(norms.vmin), ptab)
        L = finish_reservoir(res)[1]
        return np.where(L >= 0, order[np.maximum(L, 0)], -1)

    pq = make_index(x.shape[1], f"IVF{nlist},PQ{M}x4fs")
    pq.train(xt)
    pq.add(x)
    nprobes = [2, 4, 8, 16, 32]
    state = {"nprobe": 1}
    rows = _sweep("annvq", f"IVF{nlist},RQ{M - 2}x4 + 8-bit norm, fast-scan", "builtin-110k", xq, gt, nprobes,
                  lambda p: state.update(nprobe=p), lambda q: rq_search(q, state["nprobe"]), M / 2, args.min_seconds)
    rows += _sweep("annvq", f"IVF{nlist},PQ{M}x4fs", "builtin-110k", xq, gt, nprobes,
                   lambda p: setattr(pq, "nprobe", p), lambda q: pq.search(q, K)[1], M / 2, args.min_seconds)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flat", action="store_true", help="flat PQ32x4fs over 1M synthetic vectors vs faiss")
    ap.add_argument("--ivf", action="store_true", help="IVF sweeps vs faiss, 8-bit PQ and hnswlib")
    ap.add_argument("--codecs", action="store_true", help="R@10 of 4-bit PQ/OPQ/RQ/AQ at equal bytes (exhaustive)")
    ap.add_argument("--codecs-ivf", action="store_true", help="IVF256 with 4-bit RQ codes through fast-scan vs PQ")
    ap.add_argument("--datasets", nargs="*", default=["builtin", "synthetic"], help="builtin and/or synthetic")
    ap.add_argument("--M", type=int, default=32, help="4-bit sub-quantizers (PQ16x8 peers use M/2)")
    ap.add_argument("--n", type=int, default=1_000_000, help="SYNTHETIC base size")
    ap.add_argument("--train-size", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single-queries", type=int, default=200, help="queries searched one at a time (flat)")
    ap.add_argument("--nprobe", type=lambda s: [int(v) for v in s.split(",")],
                    default=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64])
    ap.add_argument("--ef", type=lambda s: [int(v) for v in s.split(",")],
                    default=[10, 16, 24, 32, 48, 64, 96, 128, 192])
    ap.add_argument("--k-factors", type=lambda s: [int(v) for v in s.split(",")], default=[2, 4],
                    help="re-ranking depths (k_factor * k candidates) swept for annvq Refine and faiss RFlat")
    ap.add_argument("--no-hnsw", action="store_true")
    ap.add_argument("--hnsw-synthetic", action="store_true", help="also run hnswlib on the SYNTHETIC set (slow build)")
    ap.add_argument("--shared-coarse", action="store_true",
                    help="annvq fast-scan indexes use faiss's coarse centroids, so recall differences are the codes'")
    ap.add_argument("--min-seconds", type=float, default=0.5, help="repeat each timed batch for at least this long")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="time searches by wall clock, or by this process's CPU time (steadier on a busy machine; "
                         "valid because every library runs on one thread)")
    args = ap.parse_args()
    CLOCK["fn"] = time.process_time if args.clock == "cpu" else time.perf_counter
    apply_thread_limits(1)
    run_all = not (args.flat or args.ivf or args.codecs or args.codecs_ivf)
    print(f"fast-scan SIMD path: {SIMD_PATH}")
    path = RESULTS / "fastscan.json"
    out = json.loads(path.read_text()) if path.exists() else {}  # sections not run now are kept
    out.pop("machine", None)
    out.pop("clock", None)  # each section records its own clock
    out.update({"threads": 1, "k": K, "simd_path": SIMD_PATH})
    if args.flat or run_all:
        out["flat"] = {"clock": args.clock, **flat_run(args)}
    if args.ivf or run_all:
        out.setdefault("ivf", {}).update({name: {"clock": args.clock, **run} for name, run in ivf_runs(args).items()})
    if args.codecs or run_all:
        out["codecs"] = codec_runs(args)
    if args.codecs_ivf or run_all:
        out["codecs_ivf"] = {"clock": args.clock, "rows": ivf_rq_rows(args)}
    print(f"results written to {write_results('fastscan', out)}")


if __name__ == "__main__":
    main()
