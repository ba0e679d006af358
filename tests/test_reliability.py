"""Reliability: damage at rest never changes an answer, inconsistent files never load, and the service's
edges hold (memory per request, drops under load, malformed requests). Run alone with ``-m reliability``.

Every loop is bounded so the suite stays within CI's time.
"""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

import annvq
from annvq import FormatError
from annvq.storage import crc, dumps, write_file
from annvq.storage.h5 import StoredFile

pytestmark = pytest.mark.reliability
D = 8
SPECS = ["PQ4x4", "OPQ2,PQ2x4", "SQ8", "RQ2x4_N8", "AQ2x4_N32", "CQ2x4", "IVF4,PQ2x4", "IVF4_HKM,SQ4",
         "IVF4,PQ2x4,Refine", "untrained"]


def _build(spec: str, path: Path) -> annvq.BaseIndex:
    rng = np.random.default_rng(len(spec))
    x = rng.normal(size=(300, D)).astype(np.float32)
    index = annvq.index_factory(D, "PQ2x4" if spec == "untrained" else spec)
    index.seal_rows = 120
    if spec != "untrained":
        index.train(x)
    index.add(x[:200])
    index.remove(np.arange(0, 200, 9))
    index.add(x[200:260])  # a second segment, saved by the commit below
    index.save(path)
    return index


def _answers(index: annvq.BaseIndex) -> list[np.ndarray]:
    """Everything a client can read back: search results (re-ranked or not), and stored vectors."""
    q = np.random.default_rng(1).normal(size=(4, D)).astype(np.float32)
    ids = np.sort(index.ids)
    out = [ids, *index.fetch(ids[::5])[:1]]
    if index.is_trained:
        kw = {"nprobe": 4} if "nprobe" in index.params_type.model_fields else {}
        out += list(index.search(q, 6, rerank=False, **kw))
        if index.rerank:
            out += list(index.search(q, 6, **kw))
    return out


@pytest.mark.parametrize("spec", SPECS)
def test_bit_flips_in_stored_files_are_refused_or_harmless(spec, tmp_path):
    """Random single-bit flips in every file of a stored index (model, segments, tombstones, manifest):
    each load either raises FormatError or gives exactly the original answers."""
    src = tmp_path / "src"
    _build(spec, src)
    want = _answers(annvq.load(src))
    files = sorted(p.name for p in src.iterdir() if not p.name.startswith("."))
    kinds = {p.split("-")[0].split(".")[0] for p in files}
    assert {"manifest", "seg"} <= kinds and ("model" in kinds) == (spec != "untrained") and "tomb" in kinds
    rng = np.random.default_rng(abs(hash(spec)) % 2**32)
    tally = {"refused": 0, "harmless": 0}
    for trial in range(24):
        name = files[trial % len(files)]
        dst = tmp_path / f"t{trial}"
        shutil.copytree(src, dst)
        data = bytearray((dst / name).read_bytes())
        bit = int(rng.integers(len(data) * 8))
        data[bit // 8] ^= 1 << (bit % 8)
        (dst / name).write_bytes(bytes(data))
        try:
            got = _answers(annvq.load(dst))
        except FormatError:
            tally["refused"] += 1
            continue
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want)), \
            f"{name}: flipping bit {bit} changed an answer"
        tally["harmless"] += 1
    assert tally["refused"] > 0


def _rewrite(path: Path, kind: str, edit) -> None:
    """Rewrite a stored file with ``edit(params, arrays)`` applied, checksums made valid again, and the
    manifest pointing at it: an inconsistent file that no checksum can catch."""
    f = StoredFile(path, kind)
    params, arrays = json.loads(json.dumps(f.params)), f.arrays()
    lazy = {n: f.lazy(n).read(np.arange(f.header["lazy"][n]["shape"][0])) for n in f.header["lazy"]}
    f.close()
    edit(params, arrays)
    digest = write_file(path, kind, params, arrays, lazy or None)
    manifest = path.parent / "manifest.json"
    doc = json.loads(manifest.read_text())
    body = doc["body"]
    for entry in [body.get("model") or {}, *body["segments"], *[e["tombstones"] for e in body["segments"]
                                                                  if e.get("tombstones")]]:
        if entry.get("file") == path.name:
            entry["digest"] = digest
    doc["crc32"] = crc(dumps(body))
    manifest.write_text(json.dumps(doc))


def _edit_manifest(path: Path, edit) -> None:
    doc = json.loads((path / "manifest.json").read_text())
    edit(doc["body"])
    doc["crc32"] = crc(dumps(doc["body"]))
    (path / "manifest.json").write_text(json.dumps(doc))


def _set(key, value):
    def edit(params, arrays):
        params[key] = value
    return edit


def _codec(key, value):
    def edit(params, arrays):
        params["codec"][key] = value
    return edit


def _array(name, fn):
    def edit(params, arrays):
        arrays[name] = fn(arrays[name])
    return edit


INCONSISTENT = [
    ("seg", _array("ids", lambda a: np.where(np.arange(a.size) == 1, a[0], a)), "repeated"),
    ("seg", _array("ids", lambda a: np.where(np.arange(a.size) == 0, -5, a)), "negative"),
    ("seg", _array("ids", lambda a: a.astype(np.float64)), "ids"),
    ("seg", _array("codes", lambda a: a.astype(np.float32)), "codes"),
    ("seg", _array("codes", lambda a: np.minimum(a.astype(np.int64) + 200, 255).astype(np.uint8)), "codes"),
    ("seg", _array("offsets", lambda a: a[::-1].copy()), "offsets"),
    ("seg", _array("offsets", lambda a: a[:-1].copy()), "offsets"),
    ("seg", lambda p, a: a.pop("codes"), "codes"),
    ("seg", _set("seg_id", 999), "another index"),
    ("model", _array("codec_codebooks", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a)),
     "finite"),
    ("model", _array("centroids", lambda a: a * np.inf), "not finite"),
    ("model", _codec("M", 0), "codec"),
    ("model", _codec("kind", "xq"), "codec kind"),
    ("model", _set("index_type", "flat"), "fingerprint"),  # an IVF model relabelled as flat
    ("model", _set("metric", "hamming"), "metric"),
    ("model", _set("d", 9), "d=9"),
    ("model", lambda p, a: a.pop("centroids"), "centroids"),
    ("tomb", _array("rows", lambda a: a[::-1].copy()), "tombstones"),
    ("tomb", _array("rows", lambda a: a + 10**6), "tombstones"),
    ("manifest", lambda body: body.update(ntotal=-3), "ntotal"),
    ("manifest", lambda body: body.update(next_id=0), "next id"),
    ("manifest", lambda body: body.update(format_version="2"), "format version"),
    ("manifest", lambda body: body["segments"][0].update(file="../../etc/passwd"), "bad file name"),
    ("manifest", lambda body: body["segments"][0].update(rows=1), "rows"),
    ("manifest", lambda body: body.update(segments=body["segments"] * 2), "two segments"),
    ("manifest", lambda body: body.update(options={"seal_rows": -1}), "seal_rows"),
    ("manifest", lambda body: body["segments"].pop(), "ntotal"),
]


@pytest.mark.parametrize("part,edit,words", INCONSISTENT)
def test_inconsistent_stored_index_is_refused(tmp_path, part, edit, words):
    path = tmp_path / "i"
    _build("IVF4,PQ2x4,Refine", path)
    if part == "manifest":
        _edit_manifest(path, edit)
    else:
        target = sorted(path.glob(f"{part}-*.h5"))[0]
        _rewrite(target, {"seg": "annvq-segment", "model": "annvq-model", "tomb": "annvq-tombstones"}[part], edit)
    with pytest.raises(FormatError, match=words):
        annvq.load(path)


def test_auto_ids_after_the_largest_id_find_free_ones():
    index = annvq.index_factory(D, "PQ2x4")
    x = np.random.default_rng(0).normal(size=(300, D)).astype(np.float32)
    index.train(x)
    index.add(x[:2], ids=[3, 2**63 - 1])
    assert list(index.add(x[2:6])) == [0, 1, 2, 4]
    with pytest.raises(annvq.InvalidInputError, match="ids"):
        index.add(x[:1], ids=[-1])


# --- the service ----------------------------------------------------------------------------------
fastapi = pytest.importorskip("fastapi")


def test_oversized_bodies_without_content_length_get_413(tmp_path):
    from annvq_server.app import create_app
    from annvq_server.config import ServerConfig
    from fastapi.testclient import TestClient

    with TestClient(create_app(ServerConfig(data_dir=tmp_path, max_body_bytes=2048))) as c:
        c.put("/indexes/t", json={"dim": 4, "spec": "SQ8"})

        def chunks():
            yield b'{"ids": ['
            for _ in range(2000):
                yield b"1,"
            yield b"1]}"

        for method, path in (("PUT", "/indexes/new"), ("DELETE", "/indexes/t/vectors"),
                             ("POST", "/indexes/t/vectors/retrieve"), ("POST", "/indexes/t/vectors/delete")):
            r = c.request(method, path, content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", (path, r.text)
        assert c.get("/indexes/new").status_code == 404


@pytest.fixture
def server(tmp_path):
    from test_server_e2e import ServerProcess

    srv = ServerProcess(tmp_path / "data", "--checkpoint-ops", "50").start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


def test_malformed_http_gets_the_json_error_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /indexes/x/vectors HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "bad_request"
    r = server.client.put("/indexes/")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"  # no redirect without a body


def _rss_peak_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM, the peak resident set size


def _rss(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


@pytest.fixture
def quiet_server(tmp_path):
    """A server whose checkpoints and merges never start on their own: nothing in the background
    allocates while a request's memory is measured."""
    from test_server_e2e import ServerProcess

    srv = ServerProcess(tmp_path / "data", "--checkpoint-ops", "1000000", "--checkpoint-seconds", "3600",
                        "--compaction-seconds", "3600").start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


@pytest.mark.parametrize("trained", [False, True])
def test_memory_per_json_request_stays_within_3x_its_body(quiet_server, trained):
    """A 30 MB JSON add raises the server's peak RSS by at most three times the body's size."""
    d = 128
    server = quiet_server
    c = server.client
    name = "trained" if trained else "raw"
    c.put(f"/indexes/{name}", json={"dim": d, "spec": "PQ8x8" if trained else "SQ8"})
    rng = np.random.default_rng(0)
    if trained:
        c.post(f"/indexes/{name}/train?wait=true", content=rng.normal(size=(2000, d)).astype(np.float32).tobytes(),
               headers={"content-type": "application/octet-stream"})
    warm = rng.normal(size=(200, d)).round(6)
    c.post(f"/indexes/{name}/vectors", json={"vectors": warm.tolist()})
    x = rng.normal(size=(24_000, d)).round(6)
    body = json.dumps({"vectors": x.tolist()}).encode()
    pid = server.proc.pid
    before = _rss(pid, "VmRSS")
    _rss_peak_reset(pid)
    r = c.post(f"/indexes/{name}/vectors", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    growth = _rss(pid, "VmHWM") - before
    assert growth <= 3 * len(body), f"peak grew {growth / 2**20:.0f} MiB for a {len(body) / 2**20:.0f} MiB body"
    # a dimension mismatch is refused before anything is materialised
    bad = json.dumps({"vectors": [[0.5] * (d * 24_000)]}).encode()
    before = _rss(pid, "VmRSS")
    _rss_peak_reset(pid)
    r = c.post(f"/indexes/{name}/vectors", content=bad, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "dimension_mismatch"
    assert _rss(pid, "VmHWM") - before <= 1.25 * len(bad)


def test_searches_during_a_drop_get_200_or_404(server):
    """A Refine index loaded from disk reads exact vectors from files that a drop moves away: searches
    racing the drop are answered 200 or 404, never 500."""
    import threading

    import httpx

    c = server.client
    x = np.random.default_rng(3).normal(size=(3000, 16)).astype(np.float32)
    for round_ in range(3):
        name = f"drop{round_}"
        c.put(f"/indexes/{name}", json={"dim": 16, "spec": "IVF8,PQ4x8,Refine"})
        c.post(f"/indexes/{name}/vectors", content=x.tobytes(), headers={"content-type": "application/octet-stream"})
        assert c.post(f"/indexes/{name}/train?wait=true").status_code == 200
        statuses: list[int] = []
        stop = threading.Event()

        def searcher(name: str, stop: threading.Event, statuses: list[int]) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as cs:
                while not stop.is_set():
                    r = cs.post(f"/indexes/{name}/search", json={"vectors": x[:8].tolist(), "k": 5, "nprobe": 8})
                    statuses.append(r.status_code)

        threads = [threading.Thread(target=searcher, args=(name, stop, statuses)) for _ in range(3)]
        for t in threads:
            t.start()
        while len(statuses) < 10:
            threading.Event().wait(0.01)
        assert c.request("DELETE", f"/indexes/{name}").status_code == 200
        threading.Event().wait(0.2)
        stop.set()
        for t in threads:
            t.join(30)
        assert set(statuses) <= {200, 404} and 404 in statuses, statuses


def test_kill_9_during_checkpoints_seals_and_merges(tmp_path):
    """Adds and deletes stream into an IVF index that checkpoints (sealing segments) every few operations
    and merges segments in the background; the server is killed at random moments. After each restart
    every acknowledged add is there, no acknowledged delete has come back, and the index loads."""
    import signal
    import threading

    import httpx
    from test_server_e2e import ServerProcess

    d = 8
    flags = ("--checkpoint-ops", "3", "--checkpoint-seconds", "0.3", "--compaction-seconds", "0.2")
    srv = ServerProcess(tmp_path / "data", *flags).start()
    rng = np.random.default_rng(11)
    train = rng.normal(size=(500, d)).astype(np.float32)
    srv.client.put("/indexes/m", json={"dim": d, "spec": "IVF4,SQ8,Refine"})
    assert srv.client.post("/indexes/m/train?wait=true", content=train.tobytes(),
                           headers={"content-type": "application/octet-stream"}).status_code == 200
    added: dict[int, np.ndarray] = {}
    deleted: set[int] = set()
    in_doubt: set[int] = set()  # deletes cut off by the kill: applied or not, never half-applied
    next_id = 0
    for _ in range(4):
        stop = threading.Event()

        def writer(start: int, port: int, stop: threading.Event) -> None:
            i = start
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                while not stop.is_set():
                    x = np.random.default_rng(i).normal(size=(10, d)).astype(np.float32)
                    ids = list(range(i, i + 10))
                    try:
                        r = c.post("/indexes/m/vectors", params={"ids": ",".join(map(str, ids))}, content=x.tobytes(),
                                   headers={"content-type": "application/octet-stream"})
                        if r.status_code != 200:
                            return
                        added.update(zip(ids, x))
                        gone = ids[::3]
                        in_doubt.update(gone)
                        r = c.request("DELETE", "/indexes/m/vectors", json={"ids": gone})
                        if r.status_code != 200:
                            return
                        deleted.update(gone)
                        in_doubt.difference_update(gone)
                    except httpx.TransportError:
                        return
                    i += 10

        t = threading.Thread(target=writer, args=(next_id, srv.port, stop))
        t.start()
        threading.Event().wait(float(rng.uniform(0.8, 2.5)))
        srv.stop(signal.SIGKILL)
        stop.set()
        t.join(30)
        srv = ServerProcess(tmp_path / "data", *flags).start()
        c = srv.client
        live = sorted(set(added) - deleted - in_doubt)
        assert c.get("/indexes/m").json()["state"] == "ready"
        doubtful = sorted(in_doubt - deleted)
        if doubtful:  # an unacknowledged delete took effect for all its ids or for none
            found = [c.get(f"/indexes/m/vectors/{i}").status_code for i in doubtful]
            assert set(found) in ({200}, {404}), dict(zip(doubtful, found))
            if found[0] == 404:
                deleted.update(doubtful)
            in_doubt.clear()
        for s in range(0, len(live), 500):
            r = c.post("/indexes/m/vectors/retrieve", json={"ids": live[s : s + 500]})
            assert r.status_code == 200, r.text
            assert np.array_equal(np.float32(r.json()["vectors"]), np.stack([added[i] for i in live[s : s + 500]]))
        for gone in sorted(deleted)[:: max(1, len(deleted) // 50)]:
            assert c.get(f"/indexes/m/vectors/{gone}").status_code == 404
        next_id = max(added, default=0) + 1000  # past any batch that was in flight
    info = srv.client.get("/indexes/m").json()
    assert info["ntotal"] >= len(set(added) - deleted) and len(added) > 0
    srv.stop()
    assert annvq.load(tmp_path / "data" / "m" / "index").ntotal <= info["ntotal"]
