"""Every annvq codec against its faiss peer at equal bits, on data families unlike each other.

Families: SIFT10K and BIGANN10K (real SIFT), scikit-learn's bundled digits (64-D pixels), synthetic
L2-normalised embeddings with a power-law spectrum at d = 50, 96 and 256, and a synthetic set of
strongly correlated dimensions (a few heavy-tailed latent factors). Every family is trained on its
base set, which is also what gets encoded and searched (k=100, exhaustive ADC); the queries are
held out. Product codecs run at several budgets per family, so a sub-space holds 2 to 32
dimensions; the additive ones at the budgets up to ``--additive-max-bits``.

Equal bits: PQ/OPQ and CQ use M = B/8 codebooks of 8 bits (CQ needs no stored norm); RQ, AQ and
their faiss peers (RQ, LSQ) use M = B/8 - 1 codebooks plus an 8-bit norm; SQ8 spends 8 bits per
dimension. faiss has no CQ: CQ is compared with faiss LSQ and with annvq AQ and RQ.

Printed: one row per (family, budget, codec, library) with MSE, 1-recall@1/10/100, train seconds
and encoding throughput; then the MSE ratio annvq / faiss per family x codec, and CQ's MSE over
annvq AQ's and RQ's. One thread (``--threads``), every peer in the same process.

    python benchmarks/bench_families.py                                        # everything (~1 h)
    python benchmarks/bench_families.py --families emb50 emb96 --codecs OPQ CQ AQ
    python benchmarks/bench_families.py --coarse --coarse-seeds 10    # IVF coarse quantizer vs faiss

``--coarse``: IVF256,PQ16x8 on the built-in 110k SIFT set against faiss IVF256,PQ16 at nprobe 1
over several seeds (R@10: the true neighbour in the top 10; coarse recall: the true neighbour in the
query's list; list_cv: coefficient of variation of list sizes), plus annvq's coarse k-means with
k-means++ seeding, its start before it became random. ``--coarse-families``: the coarse k-means alone
(as IVF trains it) against faiss's IVF training on every family at nlist 64 and 256, with the mean
over all of them.

    python benchmarks/bench_families.py --coarse-families --coarse-seeds 3 --out families_coarse_all

``--cq-reference``: CQ at 64 bits on SIFT10K and BIGANN10K over several seeds, annvq's defaults against
annvq's CQ run on the schedule of CQ's authors' code (a fixed penalty weight, 30 rounds of: eps, L-BFGS
on the codebooks, one ICM sweep from the previous codes), with the mean and spread over seeds and the
single run of the authors' code beside them.

    python benchmarks/bench_families.py --cq-reference --seeds 4 --out families_cq_reference
    python benchmarks/bench_families.py --cq-reference --families bigann10k --seeds 8 --out families_cq_reference_bigann
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    annvq_row,
    apply_thread_limits,
    dataset_path,
    faiss_row,
    markdown_table,
    optional,
    pin_threads,
    timed,
    write_results,
)

pin_threads(1)

import numpy as np

import annvq
from annvq.datasets import (
    Dataset,
    knn_groundtruth,
    load_annb,
    make_correlated,
    make_embeddings,
    recall_at,
    split_queries,
)

faiss = optional("faiss")


# --- codecs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Codec:
    """One codec and its faiss peer at a budget of B bits per vector.

    ``annvq`` and ``faiss`` are spec templates (``{M}`` = B/8, ``{M1}`` = B/8 - 1, ``{d}``) for
    ``annvq.index_factory`` / ``faiss.index_factory``, or callables ``(d, bits) -> untrained index``.
    ``layout``: "product" (runs where B/8 divides d), "additive" (full-dimensional codebooks, runs at
    budgets up to ``--additive-max-bits``) or "scalar" (8 bits per dimension, one budget per family).
    """

    name: str
    layout: str
    annvq: str | Callable[[int, int], Any]
    faiss: str | Callable[[int, int], Any] | None
    peer: str

    def budgets(self, d: int, family_bits: list[int], additive_max_bits: int) -> list[int]:
        if self.layout == "scalar":
            return [8 * d]
        if self.layout == "product":
            return [b for b in family_bits if b % 8 == 0 and d % (b // 8) == 0]
        return [b for b in family_bits if 16 <= b <= additive_max_bits]

    @staticmethod
    def _build(template, factory, d: int, bits: int):
        if callable(template):
            return template(d, bits)
        return factory(d, template.format(M=bits // 8, M1=bits // 8 - 1, d=d))

    def make_annvq(self, d: int, bits: int):
        return self._build(self.annvq, annvq.index_factory, d, bits)

    def make_faiss(self, d: int, bits: int):
        index = self._build(self.faiss, faiss.index_factory, d, bits)
        if isinstance(index, faiss.IndexResidualQuantizer):
            index.rq.max_beam_size = annvq.ResidualQuantizer(d).beam_size  # the same beam as annvq RQ
        return index


CODECS = [
    Codec("PQ", "product", "PQ{M}x8", "PQ{M}", "PQ"),
    Codec("OPQ", "product", "OPQ{M},PQ{M}x8", "OPQ{M},PQ{M}", "OPQ"),
    Codec("SQ8", "scalar", "SQ8", "SQ8", "SQ8"),
    Codec("RQ", "additive", "RQ{M1}x8_N8", "RQ{M1}x8_Nqint8", "RQ"),
    Codec("AQ", "additive", "AQ{M1}x8_N8", "LSQ{M1}x8_Nqint8", "LSQ"),
    Codec("CQ", "additive", "CQ{M}x8", "LSQ{M1}x8_Nqint8", "LSQ"),
]


# --- families ------------------------------------------------------------------------------------
def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    return split_queries("digits", load_digits().data.astype(np.float32), nq=200, random_state=0)


@dataclass(frozen=True)
class Family:
    """A named data set and the bit budgets its codecs are run at."""

    name: str
    load: Callable[[int], Dataset]  # n (synthetic base size) -> dataset
    bits: list[int]


FAMILIES = [
    Family("sift10k", lambda n: load_annb(dataset_path("sift10k")), [32, 64]),
    Family("bigann10k", lambda n: load_annb(dataset_path("bigann10k")), [32, 64]),
    Family("digits", lambda n: _digits(), [32, 64, 128]),
    Family("emb50", lambda n: make_embeddings(n, 50, nq=500), [80, 200]),
    Family("emb96", lambda n: make_embeddings(n, 96, nq=500), [64, 96, 192]),
    Family("emb256", lambda n: make_embeddings(n, 256, nq=500), [64, 128, 256]),
    Family("correlated", lambda n: make_correlated(n, 64, nq=500), [32, 64]),
]

COLS = ["family", "bits", "codec", "lib", "dsub", "mse", "R@1", "R@10", "R@100", "train_s", "encode_vps"]


def run_family(fam: Family, codecs: list[Codec], n: int, additive_max_bits: int) -> list[dict[str, Any]]:
    ds = fam.load(n)
    x, xq, gt = ds.train, ds.test, ds.neighbors
    d = x.shape[1]
    rows = []
    peers: dict[tuple[str, int], dict[str, Any]] = {}  # a faiss peer shared by two codecs runs once
    for codec in codecs:
        for bits in codec.budgets(d, fam.bits, additive_max_bits):
            dsub = d // (bits // 8) if codec.layout == "product" else d
            meta = {"family": fam.name, "bits": bits, "codec": codec.name, "dsub": dsub}
            pair = [annvq_row({**meta, "lib": "annvq"}, codec.make_annvq(d, bits), x, xq, gt)]
            if faiss is not None and codec.faiss is not None:
                key = (codec.peer, bits)
                if key not in peers:
                    peers[key] = faiss_row({**meta, "lib": f"faiss {codec.peer}"}, codec.make_faiss(d, bits), x, xq, gt)
                pair.append({**peers[key], "codec": codec.name})
            for row in pair:
                print(markdown_table([row], COLS).splitlines()[-1], flush=True)
            rows += pair
    return rows


def ratio_table(rows: list[dict[str, Any]], codecs: list[Codec]) -> list[dict[str, Any]]:
    """One row per (family, bits): annvq MSE / faiss peer MSE per codec; CQ / annvq AQ and RQ."""
    mse = {(r["family"], r["bits"], r["codec"], r["lib"] == "annvq"): r["mse"] for r in rows}
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for (fam, bits, name, ours), v in mse.items():
        if not ours:
            continue
        row = out.setdefault((fam, bits), {"family": fam, "bits": bits})
        peer = mse.get((fam, bits, name, False))
        if peer:
            row[name] = v / peer
        if name == "CQ":
            for other in ("AQ", "RQ"):
                if (fam, bits, other, True) in mse:
                    row[f"CQ/{other}"] = v / mse[(fam, bits, other, True)]
    return list(out.values())


# CQ's authors' code with its defaults (mu 0.0004, 30 rounds, train = base, 1 thread, about 440 s), one run each
CQ_AUTHORS = {"sift10k": {"mse": 12_800.0}, "bigann10k": {"mse": 13_834.0, "R@1": 0.585}}
CQ_REF_COLS = ["family", "variant", "seed", "mse", "R@1", "R@10", "train_s"]


def authors_schedule_cq(x: np.ndarray, seed: int) -> annvq.CompositeQuantizer:
    """annvq's CQ8x8 on the schedule of its authors' code: their penalty (mu/4)(cross - eps)^2 with
    mu = 0.0004 is annvq's absolute weight 1e-4, fixed from the first round; 30 rounds of L-BFGS on the
    codebooks (theirs runs it to convergence, here 200 steps) and one ICM sweep from the previous codes,
    with no unconstrained rounds and no local search. The start stays annvq's product start (theirs is
    PQ on the raw coordinates)."""
    penalty = 1e-4 * annvq.CompositeQuantizer.penalty_scale(x)
    return annvq.CompositeQuantizer(x.shape[1], 8, 8, penalty=penalty, niter=30, niter_free=0, ramp=0,
                                    niter_encoder=0, lbfgs_iters=200, icm_sweeps=1, train_ils_rounds=0,
                                    random_state=seed)


def cq_reference_rows(seeds: int, names: list[str]) -> list[dict[str, Any]]:
    """CQ8x8 with annvq's defaults and on the authors' schedule, ``seeds`` seeds each, on the SIFT sets
    among ``names``."""
    rows = []
    for name in (n for n in CQ_AUTHORS if n in names):
        ds = load_annb(dataset_path(name))
        x, xq, gt = ds.train, ds.test, ds.neighbors
        for seed in range(seeds):
            variants = {"annvq defaults": annvq.CompositeQuantizer(x.shape[1], 8, 8, random_state=seed),
                        "authors' schedule": authors_schedule_cq(x, seed)}
            for variant, codec in variants.items():
                row = annvq_row({"family": name, "variant": variant, "seed": seed}, annvq.FlatIndex(codec), x, xq, gt)
                print(markdown_table([row], CQ_REF_COLS).splitlines()[-1], flush=True)
                rows.append(row)
    return rows


def cq_reference_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (family, variant), then the single run of the authors' code."""
    out = []
    for name, theirs in CQ_AUTHORS.items():
        if not any(r["family"] == name for r in rows):
            continue
        for variant in dict.fromkeys(r["variant"] for r in rows if r["family"] == name):
            mine = [r for r in rows if r["family"] == name and r["variant"] == variant]
            row: dict[str, Any] = {"family": name, "variant": variant, "seeds": len(mine)}
            for col in ("mse", "R@1", "train_s"):
                vals = np.array([r[col] for r in mine])
                row[col], row[f"{col}_sd"] = float(vals.mean()), float(vals.std())
            row["R@1_range"] = f"{min(r['R@1'] for r in mine):.3f}-{max(r['R@1'] for r in mine):.3f}"
            out.append(row)
        out.append({"family": name, "variant": "authors' code, one run", "seeds": 1, **theirs})
    return out


COARSE_COLS = ["lib", "seed", "R@1", "R@10", "coarse_recall", "list_cv", "build_s"]


def _coarse_stats(centroids: np.ndarray, x: np.ndarray, xq: np.ndarray, nn: np.ndarray) -> dict[str, float]:
    """How often a query's nearest neighbour lies in the query's list, and the spread of list sizes."""
    from annvq.kernels import assign_l2

    lists = assign_l2(x, centroids)[0]
    sizes = np.bincount(lists, minlength=centroids.shape[0])
    return {"coarse_recall": float(np.mean(lists[nn] == assign_l2(xq, centroids)[0])),
            "list_cv": float(sizes.std() / sizes.mean())}


def coarse_rows(seeds: int, train_on: str, nlist: int = 256, M: int = 16) -> list[dict[str, Any]]:
    """IVF{nlist},PQ{M}x8 at nprobe 1 on the built-in SIFT set, annvq against faiss, over ``seeds`` seeds.

    Also the coarse k-means alone with k-means++ seeding (annvq's coarse start before it became random).
    """
    from annvq.datasets import load_default
    from annvq.kmeans import KMeans

    ds = load_default()
    x, xq, gt = ds.train, ds.test, ds.neighbors
    xt = ds.learn if train_on == "learn" else x
    nn = gt[:, 0]
    rows = []
    for seed in range(seeds):
        idx = annvq.index_factory(x.shape[1], f"IVF{nlist},PQ{M}x8")
        idx.coarse.random_state = idx.codec.random_state = seed
        _, t = timed(lambda idx=idx: (idx.train(xt), idx.add(x)))
        I = idx.search(xq, 10, nprobe=1)[1]
        rows.append({"lib": f"annvq IVF{nlist},PQ{M}x8", "seed": seed, "R@1": recall_at(I, gt, 1),
                     "R@10": recall_at(I, gt, 10), **_coarse_stats(idx.coarse.centroids, x, xq, nn), "build_s": t})
        kpp = KMeans(nlist, niter=idx.coarse.niter, init="k-means++", random_state=seed).fit(xt).centroids
        rows.append({"lib": "annvq coarse k-means, k-means++ start", "seed": seed, **_coarse_stats(kpp, x, xq, nn)})
        if faiss is not None:
            index = faiss.index_factory(x.shape[1], f"IVF{nlist},PQ{M}")
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = 1234 + seed  # faiss's default seed for seed 0
            faiss.downcast_index(ivf).pq.cp.seed = 1234 + seed
            _, t = timed(lambda index=index: (index.train(xt), index.add(x)))
            ivf.nprobe = 1
            I = index.search(xq, 10)[1]
            rows.append({"lib": f"faiss IVF{nlist},PQ{M}", "seed": seed, "R@1": recall_at(I, gt, 1),
                         "R@10": recall_at(I, gt, 10),
                         **_coarse_stats(ivf.quantizer.reconstruct_n(0, nlist), x, xq, nn), "build_s": t})
        for r in rows[-3:]:
            print(markdown_table([r], COARSE_COLS).splitlines()[-1], flush=True)
    return rows


def coarse_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per library."""
    out = []
    for lib in dict.fromkeys(r["lib"] for r in rows):
        mine = [r for r in rows if r["lib"] == lib]
        row: dict[str, Any] = {"lib": lib, "seeds": len(mine)}
        for col in ("R@10", "coarse_recall", "list_cv"):
            vals = [r[col] for r in mine if col in r]
            if vals:
                row[col] = f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"
        out.append(row)
    return out


def coarse_family_rows(seeds: int, n: int, nlists: tuple[int, ...] = (64, 256)) -> list[dict[str, Any]]:
    """annvq's coarse k-means (``FlatCoarse`` as IVF trains it) against faiss's IVF training on every
    family, ``seeds`` seeds per (family, nlist): coarse recall, list-size spread, train seconds."""
    from annvq.index.coarse import FlatCoarse

    rows = []
    for fam in FAMILIES:
        ds = fam.load(n)
        x, xq = np.ascontiguousarray(ds.train, np.float32), np.ascontiguousarray(ds.test, np.float32)
        nn = knn_groundtruth(x, xq, 1)[1][:, 0]
        for nlist in nlists:
            for seed in range(seeds):
                cq, t = timed(lambda nlist=nlist, seed=seed, x=x: FlatCoarse(nlist, random_state=seed).fit(x))
                rows.append({"family": fam.name, "nlist": nlist, "lib": "annvq", "seed": seed,
                             **_coarse_stats(cq.centroids, x, xq, nn), "train_s": t})
                if faiss is not None:
                    index = faiss.index_factory(x.shape[1], f"IVF{nlist},Flat")
                    ivf = faiss.extract_index_ivf(index)
                    ivf.cp.seed = 1234 + seed
                    ivf.verbose = False
                    _, t = timed(lambda index=index, x=x: index.train(x))
                    cents = faiss.downcast_index(ivf.quantizer).reconstruct_n(0, nlist)
                    rows.append({"family": fam.name, "nlist": nlist, "lib": "faiss", "seed": seed,
                                 **_coarse_stats(cents, x, xq, nn), "train_s": t})
    return rows


def coarse_family_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean coarse recall and list spread per (family, nlist) and library, and over all of them."""
    out = []
    keys = list(dict.fromkeys((r["family"], r["nlist"]) for r in rows)) + [("all", 0)]
    for fam, nlist in keys:
        row: dict[str, Any] = {"family": fam, "nlist": nlist or "all"}
        for lib in ("annvq", "faiss"):
            mine = [r for r in rows if r["lib"] == lib and (fam == "all" or (r["family"], r["nlist"]) == (fam, nlist))]
            if mine:
                row[f"{lib} coarse_recall"] = round(float(np.mean([r["coarse_recall"] for r in mine])), 4)
                row[f"{lib} list_cv"] = round(float(np.mean([r["list_cv"] for r in mine])), 3)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="*", default=[f.name for f in FAMILIES], choices=[f.name for f in FAMILIES])
    ap.add_argument("--codecs", nargs="*", default=[c.name for c in CODECS], choices=[c.name for c in CODECS])
    ap.add_argument("--n", type=int, default=10_000, help="base vectors of the synthetic families")
    ap.add_argument("--additive-max-bits", type=int, default=96, help="largest budget for RQ/AQ/CQ")
    ap.add_argument("--data-dir", help="directory holding sift10k/ and bigann10k/ (default ../shared/data)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="families", help="results file stem under benchmarks/results/")
    ap.add_argument("--coarse", action="store_true",
                    help="only the IVF coarse-quantizer comparison on the built-in SIFT set")
    ap.add_argument("--coarse-families", action="store_true",
                    help="only the coarse k-means against faiss's on every family, nlist 64 and 256")
    ap.add_argument("--coarse-seeds", type=int, default=5)
    ap.add_argument("--coarse-train", choices=["learn", "base"], default="learn",
                    help="train on the learn split or the base")
    ap.add_argument("--cq-reference", action="store_true",
                    help="only CQ8x8 with annvq's defaults against the authors' schedule, over --seeds seeds")
    ap.add_argument("--seeds", type=int, default=4, help="seeds of --cq-reference")
    args = ap.parse_args()
    if args.data_dir:
        os.environ["ANNVQ_SHARED_DATA"] = args.data_dir
    apply_thread_limits(args.threads)
    if args.cq_reference:
        print(markdown_table([], CQ_REF_COLS), flush=True)
        rows = cq_reference_rows(args.seeds, args.families)
        summary = cq_reference_summary(rows)
        print("\nCQ8x8, mean and standard deviation over seeds\n"
              + markdown_table(summary, ["family", "variant", "seeds", "mse", "mse_sd", "R@1", "R@1_sd", "R@1_range",
                                         "train_s"]))
        path = write_results(args.out, {"threads": args.threads, "args": vars(args), "rows": rows, "summary": summary})
        print(f"results written to {path}")
        return
    if args.coarse_families:
        rows = coarse_family_rows(args.coarse_seeds, args.n)
        summary = coarse_family_summary(rows)
        print("\ncoarse k-means, annvq vs faiss, mean over seeds\n" + markdown_table(summary, list(summary[0])))
        path = write_results(args.out, {"threads": args.threads, "args": vars(args), "rows": rows, "summary": summary})
        print(f"results written to {path}")
        return
    if args.coarse:
        rows = coarse_rows(args.coarse_seeds, args.coarse_train)
        summary = coarse_summary(rows)
        print(f"\nIVF256,PQ16 at nprobe 1 on the built-in SIFT set (trained on {args.coarse_train}), over seeds\n"
              + markdown_table(summary, ["lib", "seeds", "R@10", "coarse_recall", "list_cv"]))
        path = write_results(args.out, {"threads": args.threads, "args": vars(args), "rows": rows, "summary": summary})
        print(f"results written to {path}")
        return
    codecs = [c for c in CODECS if c.name in args.codecs]
    print(markdown_table([], COLS), flush=True)
    rows = []
    for fam in FAMILIES:
        if fam.name in args.families:
            rows += run_family(fam, codecs, args.n, args.additive_max_bits)
    ratios = ratio_table(rows, codecs)
    ratio_cols = (["family", "bits"] + [c.name for c in codecs]
                  + [c for c in ("CQ/AQ", "CQ/RQ") if any(c in r for r in ratios)])
    print("\nall rows\n" + markdown_table(rows, COLS))
    print("\nMSE ratio annvq / faiss peer (" + ", ".join(f"{c.name}: {c.peer}" for c in codecs)
          + "); CQ over annvq AQ, RQ\n" + markdown_table(ratios, ratio_cols))
    path = write_results(args.out, {"threads": args.threads, "args": vars(args), "rows": rows, "mse_ratios": ratios})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
