"""REST service: HTTP search latency (p50/p99) and QPS next to in-process search of the same index.

Data is SYNTHETIC (Gaussian vectors, d=128): the figures measure speed only, not recall. The index is
a flat PQ8x8 index (8-byte codes; ``--spec`` picks another, e.g. an IVF spec once available).

Steps: start ``python -m annvq_server`` on 127.0.0.1; create, train and bulk-add through binary
(application/octet-stream) requests; stop it (the shutdown checkpoint writes the index directory); load that
index in this process and time ``index.search``; restart the server and time the same searches over HTTP
with keep-alive connections from ``--workers`` client threads, single-vector (JSON and binary) and
batched (binary). Results go to ``benchmarks/results/server_<spec>_<n>.json`` and a Markdown table on stdout.

    python benchmarks/bench_server.py                 # 1M codes, flat PQ8x8
    python benchmarks/bench_server.py --spec IVF1024,PQ8x8 --nprobe 16 --ntrain 20000
    python benchmarks/bench_server.py --n 100000      # quicker
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numba
import numpy as np
from common import ROOT, markdown_table, write_results

import annvq

OCTET = {"Content-Type": "application/octet-stream"}
JSON = {"Content-Type": "application/json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANNVQ_")}
    proc = subprocess.Popen([sys.executable, "-m", "annvq_server", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data_dir), "--log-level", "warning", "--no-access-log"],
                            cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            status, _ = _request(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "GET", "/ready")
            if status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def _stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(300)


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read()


def _ok(status: int, payload: bytes) -> bytes:
    if status >= 300:
        raise RuntimeError(f"HTTP {status}: {payload[:500]!r}")
    return payload


def _gaussian(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def build(port: int, args: argparse.Namespace) -> dict[str, float]:
    """Create, train and fill the index over HTTP; returns the timings of training and ingestion."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    body = json.dumps({"dim": args.d, "spec": args.spec}).encode()
    _ok(*_request(conn, "PUT", "/indexes/bench", body, JSON))
    t = time.perf_counter()
    _ok(*_request(conn, "POST", "/indexes/bench/train?wait=true", _gaussian(args.ntrain, args.d, 1).tobytes(), OCTET))
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(0, args.n, args.add_batch):
        x = _gaussian(min(args.add_batch, args.n - s), args.d, 100 + s)
        _ok(*_request(conn, "POST", "/indexes/bench/vectors", x.tobytes(), OCTET))
    t_add = time.perf_counter() - t
    conn.close()
    return {"train_s": t_train, "ingest_s": t_add, "ingest_vectors_per_s": args.n / t_add}


def _stats(lat: list[float], n_queries: int, wall: float) -> dict[str, float]:
    a = np.asarray(lat) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "qps": n_queries / wall, "requests": len(lat)}


def in_process(index, xq: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """The same searches without HTTP: one caller, then ``workers`` callers in threads.

    Each caller uses one Numba thread per search, as the server's search workers do by default.
    """
    rows = []
    numba.set_num_threads(1)
    params = {} if args.nprobe is None else {"nprobe": args.nprobe}
    index.search(xq[:1], args.k, **params)  # compile / warm caches
    lat = []
    t0 = time.perf_counter()
    for q in xq[: args.single]:
        t = time.perf_counter()
        index.search(q[None], args.k, **params)
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    rows.append({"mode": "in-process", "query": "single", "workers": 1, **_stats(lat, len(lat), wall)})

    def worker(w: int, batch: int, count: int) -> list[float]:
        numba.set_num_threads(1)
        out = []
        for i in range(count):
            q = xq[(w * count + i) * batch % len(xq):][:batch]
            t = time.perf_counter()
            index.search(q, args.k, **params)
            out.append(time.perf_counter() - t)
        return out

    for batch, count in ((1, args.single), (args.batch, args.batches)):
        with ThreadPoolExecutor(args.workers) as pool:
            t0 = time.perf_counter()
            parts = list(pool.map(partial(worker, batch=batch, count=count), range(args.workers)))
            wall = time.perf_counter() - t0
        lat = [v for p in parts for v in p]
        rows.append({"mode": "in-process", "query": "single" if batch == 1 else f"batch {batch}",
                     "workers": args.workers, **_stats(lat, len(lat) * batch, wall)})
    return rows


def over_http(port: int, xq: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """Searches over keep-alive HTTP connections, one per client thread."""
    rows = []
    nprobe = {} if args.nprobe is None else {"nprobe": args.nprobe}

    def worker(w: int, batch: int, count: int, binary: bool, barrier: threading.Barrier) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        out = []
        for i in range(count + 1):
            q = xq[(w * count + i) * batch % len(xq):][:batch]
            if binary:
                query = "&".join(f"{key}={v}" for key, v in {"k": args.k, **nprobe}.items())
                path, body, headers = f"/indexes/bench/search?{query}", q.tobytes(), OCTET
            else:
                body = json.dumps({"vectors": q.tolist(), "k": args.k, **nprobe}).encode()
                path, headers = "/indexes/bench/search", JSON
            if i == 1:
                barrier.wait()  # the first request opens the connection; time the rest together
            t = time.perf_counter()
            _ok(*_request(conn, "POST", path, body, headers))
            if i:
                out.append(time.perf_counter() - t)
        conn.close()
        return out

    plan = [(1, 1, args.single, False), (1, 1, args.single, True), (args.workers, 1, args.single, False),
            (args.workers, 1, args.single, True), (args.workers, args.batch, args.batches, True)]
    for workers, batch, count, binary in plan:
        barrier = threading.Barrier(workers + 1)
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(worker, w, batch, count, binary, barrier) for w in range(workers)]
            barrier.wait()
            t0 = time.perf_counter()
            parts = [f.result() for f in futures]
            wall = time.perf_counter() - t0
        lat = [v for p in parts for v in p]
        rows.append({"mode": "HTTP " + ("binary" if binary else "JSON"),
                     "query": "single" if batch == 1 else f"batch {batch}", "workers": workers,
                     **_stats(lat, len(lat) * batch, wall)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="vectors in the index")
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--spec", default="PQ8x8")
    p.add_argument("--ntrain", type=int, default=10_000)
    p.add_argument("--add-batch", type=int, default=50_000, help="vectors per bulk add request")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists to visit (ignored by flat indexes)")
    p.add_argument("--workers", type=int, default=2, help="client threads")
    p.add_argument("--single", type=int, default=300, help="single-vector requests per worker")
    p.add_argument("--batch", type=int, default=100, help="queries per batched request")
    p.add_argument("--batches", type=int, default=10, help="batched requests per worker")
    p.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="annvq-bench-") if args.data_dir is None else None
    data_dir = args.data_dir or Path(tmp.name)
    xq = _gaussian(max(args.single * args.workers, args.batch * args.batches * args.workers), args.d, 7)
    port = _free_port()
    proc = _start_server(data_dir, port)
    try:
        build_times = build(port, args)
    finally:
        _stop_server(proc)  # the shutdown checkpoint writes the index file loaded below
    index = annvq.load(data_dir / "bench" / "index")
    rows = in_process(index, xq, args)
    del index
    port = _free_port()
    proc = _start_server(data_dir, port)
    try:
        rows += over_http(port, xq, args)
    finally:
        _stop_server(proc)
    if tmp is not None:
        tmp.cleanup()

    base = next(r for r in rows if r["mode"] == "in-process" and r["workers"] == 1)["p50_ms"]
    http_p50 = next(r for r in rows if r["mode"] == "HTTP JSON" and r["workers"] == 1)["p50_ms"]
    data = f"SYNTHETIC Gaussian, n={args.n}, d={args.d}, spec={args.spec}, k={args.k}, nprobe={args.nprobe}"
    summary = {"data": data,
               **build_times, "single_p50_in_process_ms": base, "single_p50_http_json_ms": http_p50,
               "latency_target_ms": 2 * base + 1, "latency_target_met": http_p50 <= 2 * base + 1,
               "best_http_qps": max(r["qps"] for r in rows if r["mode"].startswith("HTTP")),
               "load_average": os.getloadavg()}
    settings = {k: str(v) for k, v in vars(args).items()}
    stem = f"server_{args.spec.replace(',', '_')}_{args.n}"
    path = write_results(stem, {"summary": summary, "rows": rows, "args": settings})
    print(f"\n{summary['data']}  (load average {summary['load_average'][0]:.1f})")
    print(f"train {build_times['train_s']:.1f}s on {args.ntrain} vectors, "
          f"ingest {build_times['ingest_vectors_per_s']:.0f} vectors/s over HTTP")
    print(markdown_table(rows, ["mode", "query", "workers", "p50_ms", "p99_ms", "qps", "requests"]))
    print(f"single-query p50: HTTP JSON {http_p50:.2f} ms vs in-process {base:.2f} ms "
          f"(target <= {2 * base + 1:.2f} ms: {'met' if summary['latency_target_met'] else 'NOT met'})")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
