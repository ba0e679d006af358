"""Helpers shared by the benchmark scripts: one-thread pinning, data location, timing, result files."""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def pin_threads(n: int = 1) -> None:
    """Limit BLAS, OpenMP (faiss) and Numba to ``n`` threads so peers compare on equal footing.

    Must run before NumPy is imported for the BLAS limit to take effect.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def apply_thread_limits(n: int = 1) -> None:
    """Set thread counts in libraries already imported (Numba, faiss)."""
    import numba

    numba.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository, or ``$ANNVQ_SHARED_DATA``."""
    return Path(os.environ.get("ANNVQ_SHARED_DATA", ROOT.parent / "shared" / "data"))


def dataset_path(name: str) -> Path:
    """Path of a named ann-benchmarks file in the shared data directory, or ``name`` itself."""
    known = {
        "sift10k": "sift10k/sift10k-128-euclidean.hdf5",
        "bigann10k": "bigann10k/bigann10k-128-euclidean.hdf5",
    }
    return shared_data_dir() / known[name] if name in known else Path(name)


def timed(fn: Callable[[], Any], repeat: int = 1, min_seconds: float = 0.0) -> tuple[Any, float]:
    """Run ``fn`` at least ``repeat`` times and until ``min_seconds`` have passed in all; return the last
    result and the best wall time in seconds (the best of many short runs is the least disturbed one)."""
    best, out, total, runs = float("inf"), None, 0.0, 0
    while runs < repeat or total < min_seconds:
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best, total, runs = min(best, dt), total + dt, runs + 1
    return out, best


def quality_row(meta: dict[str, Any], x, xq, gt, train: Callable[[], Any], encode: Callable, decode: Callable,
                search: Callable) -> dict[str, Any]:
    """Train, encode ``x``, decode and search ``xq`` with one codec: ``meta`` plus the MSE of the
    reconstructions, 1-recall@1/10/100 against ``gt``, train seconds and encoding throughput (vectors/s,
    after a warm-up call on a few rows, so that no kernel compilation is timed)."""
    from annvq.datasets import mse, recall_at

    _, t_train = timed(train)
    encode(x[:256])
    codes, t_enc = timed(lambda: encode(x))
    I = search(xq)
    return {**meta, "mse": mse(x, decode(codes)), "R@1": recall_at(I, gt, 1), "R@10": recall_at(I, gt, 10),
            "R@100": recall_at(I, gt, 100), "train_s": t_train, "encode_vps": x.shape[0] / t_enc}


def annvq_row(meta: dict[str, Any], index, x, xq, gt) -> dict[str, Any]:
    """:func:`quality_row` of an untrained annvq index: trained on ``x``, filled with ``x``, k=100."""
    def search(q):
        index.add(x)
        return index.search(q, 100)[1]

    codec = index.codec
    return quality_row(meta, x, xq, gt, lambda: index.train(x), codec.encode, codec.decode, search)


def faiss_row(meta: dict[str, Any], index, x, xq, gt) -> dict[str, Any]:
    """:func:`quality_row` of an untrained faiss index (``sa_encode``/``sa_decode`` for the codes)."""
    def search(q):
        index.add(x)
        return index.search(q, 100)[1]

    return quality_row(meta, x, xq, gt, lambda: index.train(x), index.sa_encode, index.sa_decode, search)


def optional(name: str):
    """Import an optional peer library, or return None when it is not installed."""
    try:
        return __import__(name)
    except ImportError:
        return None


def write_results(stem: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with machine facts to ``benchmarks/results/<stem>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                           "processor": platform.processor() or platform.machine()}, **payload}
    path = RESULTS / f"{stem}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def markdown_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """Rows of dicts as a Markdown table (floats to 4 significant digits)."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
