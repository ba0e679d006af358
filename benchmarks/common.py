"""Helpers shared by the benchmark scripts: one-thread pinning, data location, timing, result files."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

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
