"""Additive codecs (RQ, AQ, CQ) against faiss ResidualQuantizer, LSQ and PQ, one thread, in one run.

At a budget of B bits per vector: PQ and CQ use M = B/8 codebooks of 8 bits (CQ needs no norm);
RQ, AQ, faiss RQ and faiss LSQ use M = B/8 - 1 codebooks plus an 8-bit norm (faiss
``ST_norm_qint8``, annvq ``norm_bits=8``). Each index is trained on the dataset's train set, gets
the train set added, and answers the test queries (k=100). Reported: MSE of the reconstructions
(norm excluded), 1-recall@1/10/100 against the file's exact neighbours, train seconds and encoding
throughput (vectors/s).

    python benchmarks/bench_additive.py                                  # sift10k + bigann10k, 32 + 64 bits
    python benchmarks/bench_additive.py --datasets sift10k --bits 64 --methods rq aq faiss-rq
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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

from annvq import FlatIndex
from annvq.datasets import load_annb
from annvq.quantizers import (
    AdditiveQuantizer,
    CompositeQuantizer,
    ProductQuantizer,
    ResidualQuantizer,
)

faiss = optional("faiss")
METHODS = ("pq", "rq", "aq", "cq", "faiss-pq", "faiss-rq", "faiss-lsq")
COLS = ["dataset", "bits", "method", "M", "mse", "R@1", "R@10", "R@100", "train_s", "encode_vps"]


def make(method: str, d: int, bits: int, args):
    """(M, codec or faiss index) for one method at a bit budget."""
    m_full, m_norm = bits // 8, bits // 8 - 1
    if method == "pq":
        return m_full, ProductQuantizer(d, M=m_full, nbits=8, init="random")
    if method == "rq":
        return m_norm, ResidualQuantizer(d, M=m_norm, nbits=8, beam_size=args.beam, refine_iters=args.rq_refine)
    if method == "aq":
        return m_norm, AdditiveQuantizer(d, M=m_norm, nbits=8, beam_size=args.aq_beam, niter=args.aq_niter)
    if method == "cq":
        return m_full, CompositeQuantizer(d, M=m_full, nbits=8, niter=args.cq_niter)
    if method == "faiss-pq":
        return m_full, faiss.IndexPQ(d, m_full, 8)
    if method == "faiss-rq":
        index = faiss.IndexResidualQuantizer(d, m_norm, 8, faiss.METRIC_L2, faiss.AdditiveQuantizer.ST_norm_qint8)
        index.rq.max_beam_size = args.beam
        return m_norm, index
    index = faiss.IndexLocalSearchQuantizer(d, m_norm, 8, faiss.METRIC_L2, faiss.AdditiveQuantizer.ST_norm_qint8)
    return m_norm, index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=["sift10k", "bigann10k"],
                    help="names in the data dir or HDF5 paths")
    ap.add_argument("--data-dir", help="directory holding sift10k/ and bigann10k/ (default ../shared/data)")
    ap.add_argument("--bits", nargs="*", type=int, default=[32, 64])
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beam", type=int, default=ResidualQuantizer(8).beam_size, help="RQ beam size (annvq and faiss)")
    ap.add_argument("--rq-refine", type=int, default=ResidualQuantizer(8).refine_iters)
    ap.add_argument("--aq-beam", type=int, default=AdditiveQuantizer(8).beam_size)
    ap.add_argument("--aq-niter", type=int, default=AdditiveQuantizer(8).niter)
    ap.add_argument("--cq-niter", type=int, default=CompositeQuantizer(8).niter)
    ap.add_argument("--out", default="additive", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    if args.data_dir:
        os.environ["ANNVQ_SHARED_DATA"] = args.data_dir
    apply_thread_limits(args.threads)
    methods = [m for m in args.methods if faiss is not None or not m.startswith("faiss")]
    rows = []
    for name in args.datasets:
        ds = load_annb(dataset_path(name))
        x, xq, gt = ds.train, ds.test, ds.neighbors
        for bits in args.bits:
            for method in methods:
                M, obj = make(method, x.shape[1], bits, args)
                if method.startswith("faiss"):
                    row = faiss_row({"dataset": name, "bits": bits, "method": method, "M": M}, obj, x, xq, gt)
                else:
                    meta = {"dataset": name, "bits": bits, "method": f"annvq {method}", "M": M}
                    row = annvq_row(meta, FlatIndex(obj, metric="l2", norm_bits=8), x, xq, gt)
                rows.append(row)
                print(markdown_table([row], COLS).splitlines()[-1], flush=True)
            print(markdown_table([r for r in rows if r["dataset"] == name and r["bits"] == bits], COLS), flush=True)
    path = write_results(args.out, {"threads": args.threads, "beam": args.beam, "args": vars(args), "rows": rows})
    print(markdown_table(rows, COLS))
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
