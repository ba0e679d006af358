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
    write_results,
)

pin_threads(1)

import numpy as np

import annvq
from annvq.datasets import (
    Dataset,
    load_annb,
    make_correlated,
    make_embeddings,
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
    for codec in codecs:
        for bits in codec.budgets(d, fam.bits, additive_max_bits):
            dsub = d // (bits // 8) if codec.layout == "product" else d
            meta = {"family": fam.name, "bits": bits, "codec": codec.name, "dsub": dsub}
            pair = [annvq_row({**meta, "lib": "annvq"}, codec.make_annvq(d, bits), x, xq, gt)]
            if faiss is not None and codec.faiss is not None:
                pair.append(faiss_row({**meta, "lib": f"faiss {codec.peer}"}, codec.make_faiss(d, bits), x, xq, gt))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="*", default=[f.name for f in FAMILIES], choices=[f.name for f in FAMILIES])
    ap.add_argument("--codecs", nargs="*", default=[c.name for c in CODECS], choices=[c.name for c in CODECS])
    ap.add_argument("--n", type=int, default=10_000, help="base vectors of the synthetic families")
    ap.add_argument("--additive-max-bits", type=int, default=96, help="largest budget for RQ/AQ/CQ")
    ap.add_argument("--data-dir", help="directory holding sift10k/ and bigann10k/ (default ../shared/data)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="families", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    if args.data_dir:
        os.environ["ANNVQ_SHARED_DATA"] = args.data_dir
    apply_thread_limits(args.threads)
    codecs = [c for c in CODECS if c.name in args.codecs]
    print(markdown_table([], COLS), flush=True)
    rows = []
    for fam in FAMILIES:
        if fam.name in args.families:
            rows += run_family(fam, codecs, args.n, args.additive_max_bits)
    ratios = ratio_table(rows, codecs)
    ratio_cols = ["family", "bits"] + [c.name for c in codecs] + [c for c in ("CQ/AQ", "CQ/RQ") if any(c in r for r in ratios)]
    print("\nall rows\n" + markdown_table(rows, COLS))
    print("\nMSE ratio annvq / faiss peer (" + ", ".join(f"{c.name}: {c.peer}" for c in codecs) + "); CQ over annvq AQ, RQ\n"
          + markdown_table(ratios, ratio_cols))
    path = write_results(args.out, {"threads": args.threads, "args": vars(args), "rows": rows, "mse_ratios": ratios})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
