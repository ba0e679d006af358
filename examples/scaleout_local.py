"""A Dask cluster, a distributed build, sharded search and the REST service, all on one machine.

What it runs, as separate processes (the same commands work across machines)::

    python -m distributed.cli.dask_scheduler --scheduler-file WORK/scheduler.json    # "dask scheduler"
    NUMBA_NUM_THREADS=1 python -m distributed.cli.dask_worker --scheduler-file WORK/scheduler.json \\
        --nthreads 1 --nworkers 2                                                      # "dask worker"
    annvq build WORK/base.npy --index IVF64,PQ8x8 --out WORK/build --scheduler tcp://... --shards 2
    annvq serve --data-dir WORK/service --port PORT --scheduler tcp://...
    curl -X PUT localhost:PORT/indexes/demo -d '{"manifest": "WORK/build"}'                # serve the build

then searches the build through ``annvq.distributed.ShardedIndex`` (2 shards on the 2 workers) and
through the REST service, which serves it from the same cluster, and checks that both answer alike.

    python examples/scaleout_local.py               # prints OK at the end; exit status 0
    python examples/scaleout_local.py --keep WORK   # keep the work directory
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def http(method: str, url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def use_checkout_service(work: Path, env: dict[str, str]) -> None:
    """From a source checkout, run the service (package ``annvq_server``, directory ``server/``) of this
    checkout in child processes, whatever an installed copy says."""
    if not (ROOT / "server" / "__init__.py").is_file():
        return
    pkgs = work / "pkgs"
    pkgs.mkdir(exist_ok=True)
    link = pkgs / "annvq_server"
    if not link.exists():
        link.symlink_to(ROOT / "server", target_is_directory=True)
    env["PYTHONPATH"] = os.pathsep.join([str(pkgs), env["PYTHONPATH"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="base vectors")
    ap.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temporary one)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="annvq-scaleout-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    use_checkout_service(work, env)
    procs: list[subprocess.Popen] = []
    client = None
    logs = open(work / "processes.log", "w")

    def start(*cmd: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, *cmd], env=env, stdout=logs, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        rng = np.random.default_rng(0)
        x = (rng.normal(size=(64, 32)) * 3)[rng.integers(0, 64, args.n)] + rng.normal(size=(args.n, 32))
        np.save(work / "base.npy", x.astype(np.float32))
        sched_file = work / "scheduler.json"
        start("-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
              "--port", "0", "--no-dashboard")
        wait_for(sched_file.exists, "the scheduler")
        address = json.loads(sched_file.read_text())["address"]
        start("-m", "distributed.cli.dask_worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
              "--nworkers", "2", "--no-dashboard", "--host", "127.0.0.1")
        print(f"scheduler at {address}; starting 2 workers", flush=True)

        from distributed import Client

        client = Client(address, timeout=30)
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, "two workers")
        subprocess.run([sys.executable, "-c", "from annvq.cli import app; app()", "build", str(work / "base.npy"),
                        "--index", "IVF64,PQ8x8", "--out", str(work / "build"), "--scheduler", address,
                        "--shards", "2", "--batch-size", str(max(1000, args.n // 8)), "--no-progress"],
                       env=env, check=True)

        from annvq.distributed import ShardedIndex

        xq = x[:20].astype(np.float32) + 0.05
        with ShardedIndex(client, work / "build", replicas=1) as index:
            facts = index.info()
            D, I = index.search(xq, 5, nprobe=8)
        print(f"sharded: {facts['ntotal']} vectors in {len(facts['shards'])} shards on "
              f"{sorted({r['worker'] for s in facts['shards'] for r in s['replicas']})}", flush=True)

        port = free_port()
        start("-c", "from annvq.cli import app; app()", "serve", "--data-dir", str(work / "service"),
              "--port", str(port), "--scheduler", address)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return http("GET", f"{base}/ready").get("status") == "ready"
            except OSError:
                return False

        wait_for(ready, "the service")
        described = http("PUT", f"{base}/indexes/demo", {"manifest": str(work / "build")})
        assert described["kind"] == "sharded" and described["ntotal"] == args.n, described
        got = http("POST", f"{base}/indexes/demo/search", {"vectors": xq.tolist(), "k": 5, "nprobe": 8})
        assert np.array_equal(np.asarray(got["ids"]), I), "the service and the sharded index disagree"
        assert np.array_equal(np.asarray(got["distances"], dtype=np.float32), D)
        added = http("POST", f"{base}/indexes/demo/vectors", {"vectors": xq[:2].tolist()})["ids"]
        assert added == [args.n, args.n + 1] and http("GET", f"{base}/indexes/demo")["ntotal"] == args.n + 2
        print(f"service at {base}: {described['ntotal']} vectors in {len(described['shards'])} shards, same "
              "results as the sharded index", flush=True)
        print("OK")
    finally:
        if client is not None:
            client.close()
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()
        if args.keep is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
