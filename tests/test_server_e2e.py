"""End to end against a real ``python -m annvq_server`` process on 127.0.0.1: restart, kill -9, concurrent load."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import annvq  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OCTET = {"content-type": "application/octet-stream"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m annvq_server`` in a subprocess, bound to loopback, with its own data directory."""

    def __init__(self, data_dir: Path, *flags: str) -> None:
        self.data_dir, self.flags = data_dir, flags
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self) -> ServerProcess:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANNVQ_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "annvq_server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--log-level", "warning", *self.flags],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.client.get("/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server did not become ready:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: graceful (checkpoints, exit code 0); SIGKILL: as abrupt as a power cut is for the process."""
        self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self.client.close()
        if sig == signal.SIGTERM:
            assert code in (0, -signal.SIGTERM), self.log.read_text()  # uvicorn re-raises the signal it handled


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def _vectors(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_create_add_train_search_delete_restart(data_dir):
    d = 16
    x, xq = _vectors(1200, d, 0), _vectors(20, d, 1)
    srv = ServerProcess(data_dir).start()
    c = srv.client
    assert c.put("/indexes/docs", json={"dim": d, "spec": "PQ4x8"}).status_code == 201
    r = c.post("/indexes/docs/vectors", json={"vectors": x[:1000].tolist(), "ids": list(range(5000, 6000))})
    assert r.status_code == 200 and r.json()["pending"] is True
    job = c.post("/indexes/docs/train", params={"wait": "true"}).json()
    assert job["status"] == "succeeded" and job["n_train"] == 1000
    r = c.post("/indexes/docs/vectors", params={"ids": ",".join(map(str, range(200)))}, content=x[1000:].tobytes(),
               headers=OCTET)
    assert r.json()["ids"] == list(range(200))
    assert c.request("DELETE", "/indexes/docs/vectors", json={"ids": list(range(5000, 5050))}).json() == {"deleted": 50}
    before = c.post("/indexes/docs/search", json={"vectors": xq.tolist(), "k": 10}).json()
    binary = c.post("/indexes/docs/search", params={"k": 10}, content=xq.tobytes(), headers=OCTET).json()
    assert binary == before
    assert not set(np.ravel(before["ids"])) & set(range(5000, 5050))
    info = c.get("/indexes/docs").json()
    assert info["ntotal"] == 1150 and info["trained"]
    srv.stop()

    srv = ServerProcess(data_dir).start()
    c = srv.client
    assert c.post("/indexes/docs/search", json={"vectors": xq.tolist(), "k": 10}).json() == before
    again = c.get("/indexes/docs").json()
    assert (again["ntotal"], again["lsn"], again["spec"]) == (1150, info["lsn"], "PQ4x8")
    assert again["checkpoint_lsn"] == again["lsn"]  # the graceful stop checkpointed everything
    srv.stop()


def _stream_adds(port: int, names: list[str], d: int, start: int, acked: dict, stop: threading.Event) -> None:
    """Add batches of 10 until the connection dies; remember what was acknowledged."""
    batch = 10
    i = start
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        _stream(c, names, d, batch, i, acked, stop)


def _stream(c: httpx.Client, names: list[str], d: int, batch: int, i: int, acked: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        name = names[(i // batch) % len(names)]
        ids = list(range(i, i + batch))
        x = _vectors(batch, d, seed=i)
        try:
            r = c.post(f"/indexes/{name}/vectors", params={"ids": ",".join(map(str, ids))}, content=x.tobytes(),
                       headers=OCTET)
        except httpx.TransportError:
            return
        if r.status_code != 200:
            return
        acked[name].extend(zip(ids, x))
        i += batch


def test_kill_9_during_adds_loses_no_acknowledged_vector(data_dir):
    """Three rounds: stream adds into a trained and an untrained index, kill -9 at a random moment, restart."""
    d = 8
    rng = np.random.default_rng(7)
    flags = ("--checkpoint-ops", "7", "--checkpoint-seconds", "0.5")  # checkpoints happen mid-stream too
    srv = ServerProcess(data_dir, *flags).start()
    srv.client.put("/indexes/coded", json={"dim": d, "spec": "SQ8"})
    srv.client.put("/indexes/raw", json={"dim": d, "spec": "SQ8"})
    train = _vectors(500, d, seed=10**6) * 4  # wide range: no clipping of the streamed vectors
    assert srv.client.post("/indexes/coded/train?wait=true", content=train.tobytes(), headers=OCTET).status_code == 200
    ref = annvq.index_factory(d, "SQ8").train(train)  # the same codec, to check reconstructions exactly
    acked: dict[str, list] = {"coded": [], "raw": []}
    start = 0
    for rnd in range(1, 4):
        stop = threading.Event()
        writer = threading.Thread(target=_stream_adds, args=(srv.port, ["coded", "raw"], d, start, acked, stop))
        writer.start()
        time.sleep(rng.uniform(0.3, 1.5))
        srv.stop(signal.SIGKILL)
        stop.set()
        writer.join(30)
        srv = ServerProcess(data_dir, *flags).start()
        for name, exact in (("coded", False), ("raw", True)):
            ids = np.array([i for i, _ in acked[name]])
            want = np.array([v for _, v in acked[name]])
            info = srv.client.get(f"/indexes/{name}").json()
            assert len(ids) <= info["ntotal"] <= len(ids) + 10 * rnd  # at most one unacknowledged batch a round
            for s in range(0, len(ids), 1000):
                r = srv.client.post(f"/indexes/{name}/vectors/retrieve", json={"ids": ids[s:s + 1000].tolist()})
                assert r.status_code == 200, r.text
                got = np.array(r.json()["vectors"], dtype=np.float32)
                assert r.json()["exact"] is exact
                if exact:
                    assert np.array_equal(got, want[s:s + 1000])
                else:
                    assert np.array_equal(got, ref.codec.decode(ref.codec.encode(want[s:s + 1000])))
        start = max(i for lst in acked.values() for i, _ in lst) + 100  # skip ids a lost batch may hold
        assert srv.client.post("/indexes/coded/search", json={"vectors": train[:2].tolist(), "k": 3}).status_code == 200
    assert len(acked["coded"]) > 0 and len(acked["raw"]) > 0
    srv.stop()


def test_concurrent_adds_and_searches_match_a_serial_run(data_dir):
    d, batch, nbatches = 16, 25, 16
    x = _vectors(2 * nbatches * batch, d, 3)
    train, xq = _vectors(400, d, 4) * 3, _vectors(30, d, 5)
    srv = ServerProcess(data_dir).start()
    c = srv.client
    c.put("/indexes/load", json={"dim": d, "spec": "SQ8"})
    c.post("/indexes/load/train?wait=true", content=train.tobytes(), headers=OCTET)
    errors: list[str] = []
    done = threading.Event()

    def writer(w: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=60) as cw:
            for b in range(w, 2 * nbatches, 2):
                rows = np.arange(b * batch, (b + 1) * batch)
                r = cw.post("/indexes/load/vectors", json={"vectors": x[rows].tolist(), "ids": rows.tolist()})
                if r.status_code != 200:
                    errors.append(r.text)

    def reader() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=60) as cr:
            while not done.is_set():
                r = cr.post("/indexes/load/search", json={"vectors": xq[:4].tolist(), "k": 5})
                info = cr.get("/indexes/load").json()
                # a batch is applied whole or not at all
                if r.status_code != 200 or info["ntotal"] % batch or info["ntotal"] != info["encoded"]:
                    errors.append(f"{r.status_code} {info}")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads + readers:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    for t in readers:
        t.join(60)
    assert not errors, errors[:3]
    got = c.post("/indexes/load/search", json={"vectors": xq.tolist(), "k": 10}).json()
    srv.stop()

    ref = annvq.index_factory(d, "SQ8").train(train)
    ref.add(x, np.arange(x.shape[0]))
    D, I = ref.search(xq, 10)
    assert np.array_equal(np.array(got["ids"]), I)
    assert np.array_equal(np.array(got["distances"], dtype=np.float32), D)


def test_annvq_serve_takes_settings_from_environment(tmp_path):
    """``annvq serve`` with no flags honours ANNVQ_HOST/PORT/DATA_DIR, as ``python -m annvq_server`` does."""
    port = _free_port()
    data = tmp_path / "env-data"
    env = {**os.environ, "ANNVQ_HOST": "127.0.0.1", "ANNVQ_PORT": str(port), "ANNVQ_DATA_DIR": str(data)}
    env.pop("ANNVQ_API_KEY", None)
    exe = Path(sys.executable).with_name("annvq")
    proc = subprocess.Popen([str(exe), "serve"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "annvq serve did not come up"
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            r = client.put("/indexes/envcheck", json={"dim": 8, "spec": "PQ2x4", "metric": "l2"})
            assert r.status_code in (200, 201), r.text
        assert (data / "envcheck").is_dir()
    finally:
        proc.terminate()
        proc.wait(60)
