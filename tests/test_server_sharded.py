"""The REST service serving sharded builds from a Dask cluster (``annvq serve --scheduler``): the same
routes as local indexes, the same answers as a single-process server on the same data, restarts,
blue/green swaps, 503 when a shard has no live replica, and a clear error for a bad scheduler.

All on the ``dask_client`` LocalCluster (2 workers, 1 thread each); the test that kills a worker
comes last.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from annvq_server.app import create_app
from annvq_server.config import ServerConfig
from annvq_server.durability import INDEX_DIR, wal_name, write_meta
from annvq_server.sharded import REGISTRY, read_registry
from annvq_server.state import Meta
from fastapi.testclient import TestClient

import annvq
from annvq.distributed import build, load_local, read_manifest
from annvq.errors import ClusterError
from annvq.spec import as_spec
from annvq.storage.wal import WriteAheadLog

pytestmark = pytest.mark.distributed

D = 16
SPEC = "IVF8,PQ4x8"
ROOT = Path(__file__).resolve().parents[1]


def _data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(8, D))
    return (centers[rng.integers(0, 8, n)] + rng.normal(size=(n, D))).astype(np.float32)


@pytest.fixture(scope="module")
def builds(dask_client, tmp_path_factory) -> dict[str, Path]:
    """Two builds of one data set: "blue" (1,500 vectors, 2 shards) and its rebuild "green" (1,800, 3 shards)."""
    root = tmp_path_factory.mktemp("builds")
    x = _data(1800, seed=1)
    np.save(root / "blue.npy", x[:1500])
    np.save(root / "green.npy", x)
    for name, shards in (("blue", 2), ("green", 3)):
        build(dask_client, root / f"{name}.npy", SPEC, root / name, shards=shards, train_size=900, progress=False)
    return {"blue": root / "blue", "green": root / "green"}


def _copy(build_dir: Path, tmp_path: Path) -> Path:
    """A private copy of a build (writes go to its shards' logs and checkpoints)."""
    return Path(shutil.copytree(build_dir, tmp_path / build_dir.name))


def _seed_local(build_dir: Path, data_dir: Path, name: str) -> None:
    """The build as one local index in a service data directory: the single-process reference server."""
    path = data_dir / name
    path.mkdir(parents=True)
    m = read_manifest(build_dir)
    write_meta(path, Meta(m.d, as_spec(m.spec), m.metric))
    annvq.save(load_local(build_dir), path / INDEX_DIR, metadata={"lsn": 0})
    WriteAheadLog.create(path / wal_name(1), 1).close()


def _sharded_config(dask_client, data_dir: Path, **kw) -> ServerConfig:
    return ServerConfig(data_dir=data_dir, scheduler=dask_client.scheduler.address, **kw)


def _canonical(res: dict) -> tuple[np.ndarray, np.ndarray]:
    """Search answer with ties ordered by id (both servers order by distance; ties may differ)."""
    D_, I_ = np.asarray(res["distances"], dtype=np.float32), np.asarray(res["ids"])
    o = np.lexsort((I_, D_), axis=1)
    return np.take_along_axis(D_, o, axis=1), np.take_along_axis(I_, o, axis=1)


def _search(client: TestClient, xq: np.ndarray, **params) -> dict:
    r = client.post("/indexes/demo/search", json={"vectors": xq.tolist(), "k": 10, "nprobe": 3, **params})
    assert r.status_code == 200, r.text
    return r.json()


def _assert_same_answers(a: dict, b: dict) -> None:
    Da, Ia = _canonical(a)
    Db, Ib = _canonical(b)
    assert np.array_equal(Da, Db) and np.array_equal(Ia, Ib)


def _error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]["message"]


def test_sharded_index_answers_like_the_single_process_server(dask_client, builds, tmp_path):
    build_dir = _copy(builds["blue"], tmp_path)
    _seed_local(build_dir, tmp_path / "local", "demo")
    xq = _data(30, seed=2)
    new = _data(40, seed=3)
    with TestClient(create_app(ServerConfig(data_dir=tmp_path / "local"))) as local, \
            TestClient(create_app(_sharded_config(dask_client, tmp_path / "sharded", replicas=2))) as sharded:
        r = sharded.put("/indexes/demo", json={"manifest": str(build_dir)})
        assert r.status_code == 201, r.text
        info = r.json()
        assert info["kind"] == "sharded" and info["state"] == "ready" and info["ntotal"] == 1500
        assert info["spec"] == local.get("/indexes/demo").json()["spec"] and info["dim"] == D
        assert len(info["shards"]) == 2 and info["replicas"] == 2 and info["healthy"]
        assert sum(s["ntotal"] for s in info["shards"]) == 1500
        for s in info["shards"]:  # two replicas of each shard, on distinct workers
            assert s["live_replicas"] == 2 and len({rep["worker"] for rep in s["replicas"]}) == 2
        assert info["memory_bytes_all_replicas"] == 2 * info["memory_bytes"] > 0
        _error(sharded.put("/indexes/demo", json={"dim": D, "spec": "SQ8"}), 409, "index_exists")
        assert [i["name"] for i in sharded.get("/indexes").json()["indexes"]] == ["demo"]

        _assert_same_answers(_search(sharded, xq), _search(local, xq))
        # binary bodies, other k and nprobe too
        for c in (local, sharded):
            r = c.post("/indexes/demo/search?k=4&nprobe=8", content=xq[:5].tobytes(),
                       headers={"content-type": "application/octet-stream"})
            assert r.status_code == 200
        # writes: explicit ids, then ids counted on from the largest, then deletes across shards
        for c in (local, sharded):
            assert c.post("/indexes/demo/vectors", json={"vectors": new[:20].tolist(),
                                                         "ids": list(range(10_000, 10_020))}).json()["ids"][0] == 10_000
            assert c.post("/indexes/demo/vectors", json={"vectors": new[20:].tolist()}).json() == {
                "ids": list(range(10_020, 10_040)), "pending": False}
            assert c.request("DELETE", "/indexes/demo/vectors", json={"ids": [3, 700, 1499, 10_005]}).json() == {
                "deleted": 4}
        assert sharded.get("/indexes/demo").json()["ntotal"] == local.get("/indexes/demo").json()["ntotal"] == 1536
        _assert_same_answers(_search(sharded, xq), _search(local, xq))
        _assert_same_answers(_search(sharded, new[:5], nprobe=8), _search(local, new[:5], nprobe=8))
        got, want = sharded.get("/indexes/demo/vectors/10012").json(), local.get("/indexes/demo/vectors/10012").json()
        assert got == want and got["exact"] is False

        # refused requests name the problem and change nothing
        _error(sharded.post("/indexes/demo/vectors", json={"vectors": new[:2].tolist(), "ids": [1, 10_001]}),
               409, "duplicate_id")
        _error(sharded.request("DELETE", "/indexes/demo/vectors", json={"ids": [5, 3]}), 404, "unknown_id")
        _error(sharded.post("/indexes/demo/vectors", json={"vectors": [[1.0] * (D - 1)]}), 400, "dimension_mismatch")
        _error(sharded.get("/indexes/demo/vectors/3"), 404, "unknown_id")
        assert "build again" in _error(sharded.post("/indexes/demo/train"), 409, "sharded_index")
        _error(sharded.post("/indexes/demo/repair"), 409, "sharded_index")
        _error(sharded.get("/indexes/demo/jobs/abc"), 409, "sharded_index")
        assert sharded.get("/indexes/demo").json()["ntotal"] == 1536
        # a local index has no manifest to swap; a manifest that is not a build is a 400
        _error(local.put("/indexes/demo/manifest", json={"manifest": str(build_dir)}), 409, "not_sharded")
        assert "index.json missing" in _error(
            sharded.put("/indexes/other", json={"manifest": str(tmp_path / "nowhere")}), 400, "invalid_input")
        assert sharded.get("/indexes/other").status_code == 404
        assert sharded.get("/ready").json() == {"status": "ready", "indexes": 1, "problems": None}


def test_restart_reattaches_sharded_indexes_with_their_writes(dask_client, builds, tmp_path):
    build_dir = _copy(builds["blue"], tmp_path)
    config = _sharded_config(dask_client, tmp_path / "data")
    xq = _data(20, seed=4)
    new = _data(10, seed=5)
    ref = load_local(build_dir)
    with TestClient(create_app(config)) as c:
        assert c.put("/indexes/demo", json={"manifest": str(build_dir), "replicas": 1}).status_code == 201
        assert c.post("/indexes/demo/vectors", json={"vectors": new.tolist()}).json()["ids"] == list(range(1500, 1510))
        assert c.request("DELETE", "/indexes/demo/vectors", json={"ids": [0, 1, 2]}).json() == {"deleted": 3}
    ref.add(new)
    ref.remove([0, 1, 2])
    registry = read_registry(tmp_path / "data" / REGISTRY)
    manifest = str((build_dir / "index.json").resolve())
    assert {n: (e.manifest, e.replicas) for n, e in registry.items()} == {"demo": (manifest, 1)}
    with TestClient(create_app(config)) as c:  # a new service over the same data directory and cluster
        info = c.get("/indexes/demo").json()
        assert info["kind"] == "sharded" and info["ntotal"] == 1507 and info["replicas"] == 1
        D_, I_ = ref.search(xq, 10, nprobe=3)
        _assert_same_answers(_search(c, xq), {"ids": I_.tolist(), "distances": D_.tolist()})
        assert c.delete("/indexes/demo").json() == {"status": "dropped"}
        assert c.get("/indexes/demo").status_code == 404
    assert read_registry(tmp_path / "data" / REGISTRY) == {}
    assert load_local(build_dir).ntotal == 1507  # dropping stops serving; the build and its writes stay


def test_blue_green_swap_serves_every_request(dask_client, builds, tmp_path):
    blue, green = _copy(builds["blue"], tmp_path), _copy(builds["green"], tmp_path)
    xq = _data(10, seed=6)
    D_, I_ = load_local(green).search(xq, 10, nprobe=3)
    want = {"ids": I_.tolist(), "distances": D_.tolist()}
    config = _sharded_config(dask_client, tmp_path / "data")
    with TestClient(create_app(config)) as c:
        assert c.put("/indexes/demo", json={"manifest": str(blue)}).status_code == 201
        answers: list = []
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                r = c.post("/indexes/demo/search", json={"vectors": xq.tolist(), "k": 10, "nprobe": 3})
                answers.append((r.status_code, r.json()))

        t = threading.Thread(target=loop)
        t.start()
        try:
            time.sleep(0.3)
            r = c.put("/indexes/demo/manifest", json={"manifest": str(green)})
            time.sleep(0.3)
        finally:
            stop.set()
            t.join()
        assert r.status_code == 200, r.text
        assert r.json()["ntotal"] == 1800 and len(r.json()["shards"]) == 3
        assert r.json()["manifest"] == str((green / "index.json").resolve())
        assert len(answers) > 2 and all(status == 200 for status, _ in answers), answers[:3]
        _assert_same_answers(answers[-1][1], want)
        # a bad manifest leaves the index served from the current build
        _error(c.put("/indexes/demo/manifest", json={"manifest": str(tmp_path)}), 400, "invalid_input")
        assert c.get("/indexes/demo").json()["ntotal"] == 1800
    assert read_registry(tmp_path / "data" / REGISTRY)["demo"].manifest == str((green / "index.json").resolve())


def test_without_a_scheduler_sharded_indexes_are_refused_and_dask_not_imported(tmp_path):
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from annvq_server.app import create_app\n"
        "from annvq_server.config import ServerConfig\n"
        f"with TestClient(create_app(ServerConfig(data_dir={str(tmp_path / 'data')!r}))) as c:\n"
        "    r = c.put('/indexes/other', json={'manifest': '/nowhere'})\n"
        "    assert r.status_code == 409 and r.json()['error']['code'] == 'no_scheduler', r.text\n"
        "    assert c.put('/indexes/loc', json={'dim': 8, 'spec': 'SQ8'}).status_code == 201\n"
        "    info = c.get('/indexes/demo').json()\n"
        "    assert info['kind'] == 'sharded' and info['state'] == 'unavailable', info\n"
        "    r = c.post('/indexes/demo/search', json={'vectors': [[0.0] * 8]})\n"
        "    assert r.status_code == 503 and 'without a Dask scheduler' in r.text, r.text\n"
        "    assert c.get('/ready').json()['status'] == 'degraded'\n"
        "    assert c.delete('/indexes/demo').status_code == 200\n"
        "assert not any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules)\n"
        "print('ok')\n"
    )
    from annvq_server.sharded import Entry, write_registry

    (tmp_path / "data").mkdir()
    write_registry(tmp_path / "data" / REGISTRY, {"demo": Entry("/nowhere/index.json", 1)})
    pkgs = Path(sys.modules["annvq_server"].__file__).parents[1]
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(pkgs)])})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
    assert read_registry(tmp_path / "data" / REGISTRY) == {}


def test_bad_scheduler_address_stops_the_start_with_a_clear_error(tmp_path):
    config = ServerConfig(data_dir=tmp_path, scheduler="tcp://127.0.0.1:1", scheduler_timeout=2)
    t = time.perf_counter()
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'"), \
            TestClient(create_app(config)):
        pass
    assert time.perf_counter() - t < 15
    # the command line passes --scheduler through and exits with the message
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pkgs = Path(sys.modules["annvq_server"].__file__).parents[1]
    res = subprocess.run([sys.executable, "-c", "from annvq.cli import app; app()", "serve", "--data-dir",
                          str(tmp_path), "--port", str(port), "--scheduler", "tcp://127.0.0.1:1"],
                         check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ANNVQ_SCHEDULER_TIMEOUT": "2",
                              "PYTHONPATH": os.pathsep.join([str(ROOT), str(pkgs)])})
    assert res.returncode != 0 and "cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'" in res.stderr


# --- faults (kills a worker; keep it last) --------------------------------------------------------
@contextmanager
def _killed_worker(dask_client, address: str) -> Iterator[None]:
    os.kill(dask_client.run(os.getpid)[address], signal.SIGKILL)
    try:
        yield
    finally:  # leave the module's cluster with its two workers (the nanny restarts the killed one)
        end = time.monotonic() + 60
        while len(dask_client.scheduler_info()["workers"]) < 2 and time.monotonic() < end:
            time.sleep(0.2)


def test_shard_without_live_replica_answers_503_never_a_partial_result(dask_client, builds, tmp_path):
    build_dir = _copy(builds["blue"], tmp_path)
    xq = _data(10, seed=7)
    with TestClient(create_app(_sharded_config(dask_client, tmp_path / "data", replicas=1))) as c:
        info = c.put("/indexes/demo", json={"manifest": str(build_dir)}).json()
        full = _search(c, xq)
        victim = info["shards"][1]["replicas"][0]["worker"]
        with _killed_worker(dask_client, victim):
            statuses = []
            for _ in range(50):  # the loss is noticed by the first call that reaches the dead worker
                r = c.post("/indexes/demo/search", json={"vectors": xq.tolist(), "k": 10, "nprobe": 3})
                statuses.append(r.status_code)
                if r.status_code == 503:
                    break
                assert r.status_code == 200 and r.json() == full  # answered whole, or not at all
            assert statuses[-1] == 503, statuses
            assert "shard 1 has no live replica" in _error(r, 503, "shard_unavailable")
            info = c.get("/indexes/demo").json()
            if not info["shards"][1]["available"]:  # until the restarted worker holds the shard again
                assert info["state"] == "unavailable" and info["shards"][0]["available"]

                def back() -> bool:  # the nanny may restore the shard between two calls
                    return c.get("/indexes/demo").json()["shards"][1]["available"]

                assert "demo" in (c.get("/ready").json()["problems"] or {}) or back()
                r = c.post("/indexes/demo/vectors", json={"vectors": xq[:1].tolist(), "ids": [
                    next(i for i in range(10**6, 10**6 + 64) if _owner(build_dir, i) == 1)]})
                if r.status_code != 200 or not back():
                    _error(r, 503, "shard_unavailable")


def _owner(build_dir: Path, id_: int) -> int:
    return int(read_manifest(build_dir).shard_of([id_])[0])
