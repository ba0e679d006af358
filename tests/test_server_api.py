"""REST API behaviour through the ASGI app (TestClient): the index life cycle, every kind of bad input
(4xx, error body, nothing stored changes), the API key, body limits, the binary format and training jobs."""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from annvq_server.app import create_app
from annvq_server.config import ServerConfig, build_parser
from fastapi.testclient import TestClient

import annvq
from annvq.index import BaseIndex

D = 16
OCTET = {"content-type": "application/octet-stream"}
JSON = {"content-type": "application/json"}
LIMITS = dict(max_batch=256, max_queries=20, max_k=50, max_dim=256, max_body_bytes=256 * 1024,
              max_codec_bytes=16 << 20)


def _vectors(n: int, seed: int = 0, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(ServerConfig(data_dir=tmp_path, **LIMITS))) as c:
        yield c


@pytest.fixture
def trained(client):
    """Index ``t`` (SQ8, d=16) trained and holding ids 0..79."""
    x = _vectors(80)
    assert client.put("/indexes/t", json={"dim": D, "spec": "SQ8"}).status_code == 201
    assert client.post("/indexes/t/vectors", json={"vectors": x.tolist()}).status_code == 200
    assert client.post("/indexes/t/train?wait=true").status_code == 200
    return x


def _snapshot(client, name="t"):
    """What must not change after a rejected request: the description and a search result."""
    info = client.get(f"/indexes/{name}").json()
    res = client.post(f"/indexes/{name}/search", json={"vectors": _vectors(3, seed=9).tolist(), "k": 5}).json()
    return info["ntotal"], info["lsn"], info["trained"], res


def _assert_error(r, status, code=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    if code:
        assert body["error"]["code"] == code, body


def test_life_cycle_add_before_train(client):
    x = _vectors(300)
    r = client.put("/indexes/demo", json={"dim": D, "spec": "PQ4x4", "metric": "l2"})
    assert r.status_code == 201 and r.json()["trained"] is False
    r = client.post("/indexes/demo/vectors", json={"vectors": x[:200].tolist(), "ids": list(range(1000, 1200))})
    assert r.json() == {"ids": list(range(1000, 1200)), "pending": True}
    # raw vectors are returned exactly before training
    r = client.get("/indexes/demo/vectors/1003").json()
    assert r["exact"] is True and np.array_equal(np.float32(r["vector"]), x[3])
    _assert_error(client.post("/indexes/demo/search", json={"vectors": x[:1].tolist()}), 409, "not_trained")

    r = client.post("/indexes/demo/train")
    assert r.status_code == 202 and r.headers["location"].endswith(r.json()["id"])
    job = r.json()
    job = client.get(f"/indexes/demo/jobs/{job['id']}").json()
    for _ in range(200):
        if job["status"] in ("succeeded", "failed"):
            break
        threading.Event().wait(0.05)
        job = client.get(f"/indexes/demo/jobs/{job['id']}").json()
    assert job["status"] == "succeeded" and job["n_train"] == 200
    info = client.get("/indexes/demo").json()
    assert info["trained"] and info["ntotal"] == info["encoded"] == 200 and info["pending"] == 0
    assert info["code_size"] == 4 and info["spec"] == "PQ4x4"

    r = client.post("/indexes/demo/vectors", content=x[200:].tobytes(), headers=OCTET)
    assert r.json() == {"ids": list(range(1200, 1300)), "pending": False}
    r = client.post("/indexes/demo/search", json={"vectors": x[:5].tolist(), "k": 4}).json()
    assert [row[0] for row in r["ids"]] == [1000, 1001, 1002, 1003, 1004]
    assert all(np.all(np.diff(row) >= 0) for row in r["distances"])
    # binary query, k from the query string: same answer
    rb = client.post("/indexes/demo/search?k=4", content=x[:5].tobytes(), headers=OCTET).json()
    assert rb == r

    r = client.request("DELETE", "/indexes/demo/vectors", json={"ids": [1000, 1001]})
    assert r.json() == {"deleted": 2}
    r = client.post("/indexes/demo/search", json={"vectors": x[:1].tolist(), "k": 50}).json()
    assert len(set(r["ids"][0])) == 50 and 1000 not in r["ids"][0]
    r = client.post("/indexes/demo/vectors/retrieve", json={"ids": [1002, 1250]}).json()
    assert r["exact"] is False and np.asarray(r["vectors"]).shape == (2, D)
    assert [i["name"] for i in client.get("/indexes").json()["indexes"]] == ["demo"]

    assert client.request("DELETE", "/indexes/demo").json() == {"status": "dropped"}
    _assert_error(client.get("/indexes/demo"), 404, "index_not_found")
    assert client.put("/indexes/demo", json={"dim": 8, "spec": "SQ8"}).json()["ntotal"] == 0


def test_short_results_have_no_padding(client):
    client.put("/indexes/s", json={"dim": 4, "spec": "SQ4"})
    x = _vectors(6, d=4)
    client.post("/indexes/s/train?wait=true", json={"vectors": x.tolist()})
    client.post("/indexes/s/vectors", json={"vectors": x.tolist()})
    r = client.post("/indexes/s/search", json={"vectors": x[:2].tolist(), "k": 20}).json()
    assert [sorted(row) for row in r["ids"]] == [list(range(6))] * 2 and len(r["distances"][1]) == 6


def test_state_survives_app_restart(tmp_path):
    cfg = ServerConfig(data_dir=tmp_path, checkpoint_ops=3)
    x = _vectors(120)
    with TestClient(create_app(cfg)) as c:
        c.put("/indexes/t", json={"dim": D, "spec": "SQ8", "metric": "cosine"})
        c.post("/indexes/t/vectors", json={"vectors": x[:60].tolist()})
        c.post("/indexes/t/train?wait=true")
        for s in range(60, 120, 10):
            c.post("/indexes/t/vectors", json={"vectors": x[s:s + 10].tolist()})
        c.request("DELETE", "/indexes/t/vectors", json={"ids": [5, 70]})
        before = c.post("/indexes/t/search", json={"vectors": x[:7].tolist(), "k": 10}).json()
        info = c.get("/indexes/t").json()
    with TestClient(create_app(cfg)) as c:
        assert c.post("/indexes/t/search", json={"vectors": x[:7].tolist(), "k": 10}).json() == before
        again = c.get("/indexes/t").json()
        assert again["ntotal"] == info["ntotal"] == 118 and again["lsn"] == info["lsn"] and again["metric"] == "cosine"


BAD_ADDS = [
    ({"vectors": [[1.0] * (D - 1)]}, 400, "dimension_mismatch"),
    ({"vectors": [[]]}, 400, "dimension_mismatch"),
    ({"vectors": []}, 422, None),
    ({"vectors": [[1.0] * D, [1.0] * (D - 2)]}, 400, "invalid_input"),  # ragged
    ({"vectors": [["1.0"] * D]}, 422, None),
    ({"vectors": [[True] * D]}, 422, None),
    ({"vectors": [[None] * D]}, 422, None),
    ({"vectors": [[1e39] * D]}, 400, "invalid_input"),  # finite in JSON, infinite as float32
    ({"vectors": [[1.0] * D], "ids": [1, 2]}, 400, "invalid_input"),
    ({"vectors": [[1.0] * D] * 2, "ids": [100, 100]}, 409, "duplicate_id"),
    ({"vectors": [[1.0] * D], "ids": [3]}, 409, "duplicate_id"),  # already stored
    ({"vectors": [[1.0] * D], "ids": [-1]}, 422, None),
    ({"vectors": [[1.0] * D], "ids": [2**63]}, 422, None),
    ({"vectors": [[1.0] * D], "ids": [1.5]}, 422, None),
    ({"vectors": [[1.0] * D], "colour": "red"}, 422, None),
    ({"vectors": [[1.0] * D] * 257}, 413, "too_many_vectors"),
    ({}, 422, None),
]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("body,status,code", BAD_ADDS)
def test_bad_add_is_rejected_and_changes_nothing(client, trained, body, status, code):
    before = _snapshot(client)
    _assert_error(client.post("/indexes/t/vectors", json=body), status, code)
    assert _snapshot(client) == before


@pytest.mark.parametrize("raw", [b'{"vectors": [[NaN' + b", 1.0" * (D - 1) + b"]]}",
                                 b'{"vectors": [[Infinity' + b", 1.0" * (D - 1) + b"]]}",
                                 b'{"vectors": [[-Infinity' + b", 1.0" * (D - 1) + b"]]}",
                                 b'{"vectors": [[1e400' + b", 1.0" * (D - 1) + b"]]}",
                                 b'{"vectors": [[1.0, 2.0', b"", b"not json"])
def test_non_json_numbers_are_rejected(client, trained, raw):
    before = _snapshot(client)
    for path in ("/indexes/t/vectors", "/indexes/t/search", "/indexes/t/train"):
        r = client.post(path, content=raw, headers=JSON)
        if path.endswith("train") and raw == b"":
            _assert_error(r, 409, "already_trained")  # an empty body means "train on stored vectors"
        else:
            _assert_error(r, 422, "validation_error")
    assert _snapshot(client) == before


@pytest.mark.parametrize("raw,query,status", [
    (np.ones((2, D), np.float32).tobytes()[:-4], "", 400),  # not a whole number of vectors
    (b"", "", 400),
    (np.full((1, D), np.nan, np.float32).tobytes(), "", 400),
    (np.full((1, D), np.inf, np.float32).tobytes(), "", 400),
    (np.ones((2, D), np.float32).tobytes(), "?ids=500", 400),  # 1 id for 2 vectors
    (np.ones((1, D), np.float32).tobytes(), "?ids=abc", 422),
    (np.ones((1, D), np.float32).tobytes(), "?ids=99999999999999999999", 422),
    (np.ones((257, D), np.float32).tobytes(), "", 413),
])
def test_bad_binary_add(client, trained, raw, query, status):
    before = _snapshot(client)
    _assert_error(client.post(f"/indexes/t/vectors{query}", content=raw, headers=OCTET), status)
    assert _snapshot(client) == before


BAD_SEARCHES = [
    ({"vectors": [[0.0] * D], "k": 0}, 422),
    ({"vectors": [[0.0] * D], "k": -3}, 422),
    ({"vectors": [[0.0] * D], "k": "5"}, 422),
    ({"vectors": [[0.0] * D], "k": 2.5}, 422),
    ({"vectors": [[0.0] * D], "k": 51}, 400),  # over max_k
    ({"vectors": [[0.0] * D], "nprobe": 0}, 422),
    ({"vectors": [[0.0] * (D + 1)]}, 400),
    ({"vectors": []}, 422),
    ({"vectors": [[0.0] * D] * 21}, 413),  # over max_queries
    ({"k": 3}, 422),
]


@pytest.mark.parametrize("body,status", BAD_SEARCHES)
def test_bad_search(client, trained, body, status):
    before = _snapshot(client)
    _assert_error(client.post("/indexes/t/search", json=body), status)
    assert _snapshot(client) == before


def test_bad_binary_search(client, trained):
    q = np.zeros((1, D), np.float32).tobytes()
    _assert_error(client.post("/indexes/t/search?k=0", content=q, headers=OCTET), 422)
    _assert_error(client.post("/indexes/t/search?k=5", content=q[:-1], headers=OCTET), 400, "dimension_mismatch")
    _assert_error(client.post("/indexes/t/search", content=q, headers={"content-type": "text/plain"}), 415)


def test_bad_deletes_and_reads(client, trained):
    before = _snapshot(client)
    # one unknown id: nothing is deleted
    _assert_error(client.request("DELETE", "/indexes/t/vectors", json={"ids": [1, 2, 999]}), 404, "unknown_id")
    _assert_error(client.request("DELETE", "/indexes/t/vectors", json={"ids": [4, 4]}), 400, "invalid_input")
    _assert_error(client.request("DELETE", "/indexes/t/vectors", json={"ids": []}), 422)
    _assert_error(client.request("DELETE", "/indexes/t/vectors", json={"ids": ["a"]}), 422)
    _assert_error(client.post("/indexes/t/vectors/delete", json={"ids": [999]}), 404, "unknown_id")
    _assert_error(client.get("/indexes/t/vectors/999"), 404, "unknown_id")
    _assert_error(client.get("/indexes/t/vectors/-1"), 404, "not_found")  # ids are digits: no such route
    _assert_error(client.get("/indexes/t/vectors/abc"), 404, "not_found")
    _assert_error(client.get("/indexes/t/vectors/9223372036854775808"), 422)  # one past the largest id
    r = client.get("/indexes/t/vectors/delete")  # a route that takes POST: 405 listing it, not a parse error
    _assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    _assert_error(client.post("/indexes/t/vectors/retrieve", json={"ids": [1, 999]}), 404, "unknown_id")
    _assert_error(client.get("/indexes/t/jobs/nope"), 404, "job_not_found")
    assert _snapshot(client) == before


@pytest.mark.parametrize("name,body,status,code", [
    ("x", {"dim": D, "spec": "PQ3x8"}, 400, "invalid_spec"),  # 16 is not a multiple of 3
    ("x", {"dim": D, "spec": "XYZ"}, 400, "invalid_spec"),
    ("x", {"dim": D, "spec": ""}, 400, "invalid_spec"),
    ("x", {"dim": D, "spec": {"codec": "pq", "M": 4, "nbits": 99}}, 400, "invalid_spec"),
    ("x", {"dim": D, "spec": {"codec": "pq", "M": 4, "options": {"niter": "many"}}}, 400, "invalid_spec"),
    ("x", {"dim": D, "spec": {"codec": "pq", "M": 4, "options": {"no_such_option": 1}}}, 400, "invalid_spec"),
    ("x", {"dim": 0, "spec": "SQ8"}, 422, None),
    ("x", {"dim": 257, "spec": "SQ8"}, 400, "limit_exceeded"),  # over max_dim
    ("x", {"dim": D, "spec": "AQ1024x16"}, 400, "limit_exceeded"),  # refused before anything is allocated
    ("x", {"dim": D, "spec": "PQ８"}, 400, "invalid_spec"),  # a full-width digit
    ("x", {"dim": D, "spec": {"codec": "pq", "M": 4, "options": {"random_state": "abc"}}}, 400, "invalid_spec"),
    ("x", {"dim": D, "spec": {"codec": "pq", "M": 4, "options": {"niter": -5}}}, 400, "invalid_spec"),
    ("x", {"dim": 256, "spec": "PQ1x16"}, 400, "limit_exceeded"),  # 65536 x 256 floats of codebook
    ("x", {"dim": "16", "spec": "SQ8"}, 422, None),
    ("x", {"dim": D, "spec": "SQ8", "metric": "hamming"}, 422, None),
    ("x", {"spec": "SQ8"}, 422, None),
    ("t", {"dim": D, "spec": "SQ8"}, 409, "index_exists"),
    ("bad.name", {"dim": D, "spec": "SQ8"}, 422, None),
    ("a" * 65, {"dim": D, "spec": "SQ8"}, 422, None),
])
def test_bad_create(client, trained, name, body, status, code):
    before = _snapshot(client)
    _assert_error(client.put(f"/indexes/{name}", json=body), status, code)
    assert _snapshot(client) == before
    assert [i["name"] for i in client.get("/indexes").json()["indexes"]] == ["t"]


def test_unknown_index_and_bad_names(client):
    for method, path in [("get", "/indexes/nope"), ("delete", "/indexes/nope"), ("post", "/indexes/nope/train"),
                         ("get", "/indexes/nope/vectors/1"), ("get", "/indexes/nope/jobs/1")]:
        _assert_error(client.request(method.upper(), path), 404)
    _assert_error(client.post("/indexes/nope/search", json={"vectors": [[1.0]]}), 404, "index_not_found")
    _assert_error(client.post("/indexes/nope/vectors", content=b"\0" * 16, headers=OCTET), 404, "index_not_found")
    _assert_error(client.get("/indexes/b%20d"), 422)
    _assert_error(client.get("/no/such/route"), 404, "not_found")
    _assert_error(client.patch("/indexes/x"), 405, "method_not_allowed")


def test_bad_training_requests(client):
    client.put("/indexes/u", json={"dim": D, "spec": "PQ4x8"})
    _assert_error(client.post("/indexes/u/train"), 400, "invalid_input")  # nothing stored to train on
    _assert_error(client.post("/indexes/u/train", json={"vectors": [[1.0] * 3]}), 400, "dimension_mismatch")
    _assert_error(client.post("/indexes/u/train", json={"vectors": [[1.0] * D] * 257}), 413)
    # too few vectors for 256 centroids: the job fails, and with wait=true so does the request
    _assert_error(client.post("/indexes/u/train?wait=true", json={"vectors": _vectors(10).tolist()}), 400)
    info = client.get("/indexes/u").json()
    assert info["trained"] is False and info["job"]["status"] == "failed" and "256" in info["job"]["error"]


def test_request_size_limits(tmp_path):
    with TestClient(create_app(ServerConfig(data_dir=tmp_path, max_body_bytes=2048))) as c:
        c.put("/indexes/t", json={"dim": 4, "spec": "SQ8"})
        _assert_error(c.post("/indexes/t/vectors", content=b"\0" * 4096, headers=OCTET), 413, "body_too_large")

        def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(8):
                yield b"\0" * 512

        _assert_error(c.post("/indexes/t/vectors", content=chunks(), headers=OCTET), 413, "body_too_large")
        assert c.get("/indexes/t").json()["ntotal"] == 0
        assert c.post("/indexes/t/vectors", content=b"\0" * 64, headers=OCTET).json()["ids"] == [0, 1, 2, 3]


def test_api_key(tmp_path):
    with TestClient(create_app(ServerConfig(data_dir=tmp_path, api_key="s3cret"))) as c:
        assert c.get("/health").status_code == 200
        _assert_error(c.get("/indexes"), 401, "unauthorized")
        _assert_error(c.get("/indexes", headers={"X-API-Key": "wrong"}), 401)
        _assert_error(c.get("/indexes", headers={"Authorization": "Bearer wrong"}), 401)
        _assert_error(c.put("/indexes/a", json={"dim": 4, "spec": "SQ8"}), 401)
        assert c.get("/indexes", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/ready", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/indexes").status_code == 401 and not (tmp_path / "a").exists()


def test_not_ready_without_lifespan(tmp_path):
    c = TestClient(create_app(ServerConfig(data_dir=tmp_path)))  # not entered: the store never opened
    _assert_error(c.get("/ready"), 503, "not_ready")
    _assert_error(c.put("/indexes/a", json={"dim": 4, "spec": "SQ8"}), 503, "not_ready")
    assert c.get("/health").json() == {"status": "ok"}


def test_metrics_and_params(client):
    x = _vectors(100, d=8)
    for metric in ("ip", "cosine"):
        client.put(f"/indexes/{metric}", json={"dim": 8, "spec": {"codec": "sq", "nbits": 8}, "metric": metric})
        client.post(f"/indexes/{metric}/train?wait=true", content=x.tobytes(), headers=OCTET)
        client.post(f"/indexes/{metric}/vectors", content=x.tobytes(), headers=OCTET)
        r = client.post(f"/indexes/{metric}/search", json={"vectors": x[:3].tolist(), "k": 5}).json()
        assert all(np.all(np.diff(row) <= 0) for row in r["distances"])  # similarities: descending
        # a parameter the index type does not take is named, as in Python and the CLI
        _assert_error(client.post(f"/indexes/{metric}/search", json={"vectors": x[:3].tolist(), "k": 5, "nprobe": 4}),
                      400, "invalid_input")
    _assert_error(client.post("/indexes/cosine/vectors", json={"vectors": [[0.0] * 8]}), 400, "invalid_input")


class _Gate:
    """Holds every training run until released, so a test can act while a job is in flight."""

    def __init__(self, monkeypatch):
        self.started, self.release = threading.Event(), threading.Event()
        real = BaseIndex.retrained

        def gated(index, x=None):
            self.started.set()
            assert self.release.wait(30)
            return real(index, x)

        monkeypatch.setattr(BaseIndex, "retrained", gated)


def test_writes_during_first_training_are_kept(client, monkeypatch):
    gate = _Gate(monkeypatch)
    x = _vectors(300)
    client.put("/indexes/g", json={"dim": D, "spec": "SQ8"})
    client.post("/indexes/g/vectors", json={"vectors": x[:100].tolist()})
    job = client.post("/indexes/g/train").json()
    assert gate.started.wait(10)
    client.post("/indexes/g/vectors", json={"vectors": x[100:200].tolist()})
    client.post("/indexes/g/vectors", json={"vectors": x[200:].tolist(), "ids": list(range(500, 600))})
    client.request("DELETE", "/indexes/g/vectors", json={"ids": [0, 150, 550]})
    _assert_error(client.post("/indexes/g/train"), 409, "training_in_progress")
    _assert_error(client.post("/indexes/g/search", json={"vectors": x[:1].tolist()}), 409, "not_trained")
    gate.release.set()
    for _ in range(400):
        if client.get(f"/indexes/g/jobs/{job['id']}").json()["status"] == "succeeded":
            break
        threading.Event().wait(0.025)
    info = client.get("/indexes/g").json()
    assert info["trained"] and info["encoded"] == 297 and info["pending"] == 0
    assert info["job"]["reencoded_from"] == "exact"  # the raw vectors were encoded, not approximations
    expect = [i for i in list(range(200)) + list(range(500, 600)) if i not in (0, 150, 550)]
    got = [client.post("/indexes/g/vectors/retrieve", json={"ids": expect[s:s + 200]}).json()["vectors"]
           for s in (0, 200)]
    ref = annvq.index_factory(D, "SQ8").train(x[:100])  # the job trained on the vectors stored when it started
    kept = np.concatenate([x[1:150], x[151:250], x[251:]])
    assert np.array_equal(np.float32(np.concatenate(got)), ref.codec.decode(ref.codec.encode(kept)))
    _assert_error(client.get("/indexes/g/vectors/150"), 404)


def test_retraining_keeps_serving_the_old_index(client, trained, monkeypatch):
    query = {"vectors": trained[:4].tolist(), "k": 5}
    old = client.post("/indexes/t/search", json=query).json()
    gate = _Gate(monkeypatch)
    job = client.post("/indexes/t/train", json={"vectors": (_vectors(200, seed=3) * 2).tolist()}).json()
    assert gate.started.wait(10)
    assert client.post("/indexes/t/search", json=query).json() == old  # still the old state
    client.post("/indexes/t/vectors", json={"vectors": _vectors(10, seed=4).tolist(), "ids": list(range(100, 110))})
    client.request("DELETE", "/indexes/t/vectors", json={"ids": [3, 105]})
    gate.release.set()
    for _ in range(400):
        if client.get(f"/indexes/t/jobs/{job['id']}").json()["status"] == "succeeded":
            break
        threading.Event().wait(0.025)
    info = client.get("/indexes/t").json()
    assert info["job"]["status"] == "succeeded" and info["ntotal"] == info["encoded"] == 88
    r = client.post("/indexes/t/search", json={"vectors": trained[:1].tolist(), "k": 1}).json()
    assert r["ids"] == [[0]]
    _assert_error(client.get("/indexes/t/vectors/3"), 404)
    assert client.get("/indexes/t/vectors/109").status_code == 200


def test_ivf_refine_index_across_restarts(tmp_path):
    """IVF search params reach the index; re-ranking still reads its exact vectors after checkpoints."""
    cfg = ServerConfig(data_dir=tmp_path, checkpoint_ops=2)
    x = _vectors(1200)
    query = {"vectors": x[:4].tolist(), "k": 5, "nprobe": 16, "rerank": True}
    with TestClient(create_app(cfg)) as c:
        assert c.put("/indexes/ivf", json={"dim": D, "spec": "IVF16,PQ4x4,Refine"}).status_code == 201
        c.post("/indexes/ivf/vectors", content=x[:800].tobytes(), headers=OCTET)
        assert c.post("/indexes/ivf/train?wait=true").json()["status"] == "succeeded"
        c.post("/indexes/ivf/vectors", content=x[800:].tobytes(), headers=OCTET)
        exact = c.post("/indexes/ivf/search", json=query).json()
        assert [row[0] for row in exact["ids"]] == [0, 1, 2, 3] and max(row[0] for row in exact["distances"]) < 1e-6
        approx = c.post("/indexes/ivf/search", json={**query, "rerank": False}).json()
        assert approx != exact
        c.put("/indexes/plain", json={"dim": D, "spec": "IVF4,SQ8"})
        c.post("/indexes/plain/train?wait=true", content=x.tobytes(), headers=OCTET)
        _assert_error(c.post("/indexes/plain/search", json=query), 400, "invalid_input")  # no exact vectors kept
    for round_ in range(2):
        with TestClient(create_app(cfg)) as c:
            assert c.post("/indexes/ivf/search", json=query).json() == exact
            c.request("DELETE", "/indexes/ivf/vectors", json={"ids": [1100 + round_]})  # next start checkpoints anew


def test_fast_scan_rescore_reaches_the_index(tmp_path):
    """``rescore`` (JSON field and query parameter) re-scores a fast-scan search with float tables; an
    index that is not fast-scan answers 400 naming it."""
    x = _vectors(1200)
    with TestClient(create_app(ServerConfig(data_dir=tmp_path, checkpoint_ops=1))) as c:
        c.put("/indexes/fs", json={"dim": D, "spec": "PQ4x4fs"})
        c.post("/indexes/fs/vectors", content=x.tobytes(), headers=OCTET)
        assert c.post("/indexes/fs/train?wait=true").json()["status"] == "succeeded"
        c.post("/indexes/fs/vectors", content=x[:8].tobytes(), headers=OCTET)  # a checkpoint seals and packs
        query = {"vectors": x[:4].tolist(), "k": 5}
        plain = c.post("/indexes/fs/search", json=query).json()
        rescored = c.post("/indexes/fs/search", json={**query, "rescore": True, "k_factor": 8}).json()
        raw = c.post("/indexes/fs/search?k=5&rescore=true&k_factor=8", content=x[:4].tobytes(),
                     headers=OCTET).json()
        assert raw == rescored and rescored["distances"] != plain["distances"]
        c.put("/indexes/sq", json={"dim": D, "spec": "SQ8"})
        c.post("/indexes/sq/train?wait=true", content=x.tobytes(), headers=OCTET)
        r = c.post("/indexes/sq/search", json={**query, "rescore": True})
        _assert_error(r, 400, "invalid_input")
        assert "rescore" in r.json()["error"]["message"]


@pytest.mark.parametrize("path,method,raw", [
    ("/indexes/n", "PUT", b'{"dim": 4, "spec": {"codec": "pq", "M": 2, "options": {"niter": NaN}}}'),
    ("/indexes/t/vectors", "DELETE", b'{"ids": [Infinity]}'),
    ("/indexes/t/vectors/retrieve", "POST", b'{"ids": [-Infinity]}'),
])
def test_nan_tokens_rejected_on_every_json_route(client, trained, path, method, raw):
    before = _snapshot(client)
    _assert_error(client.request(method, path, content=raw, headers=JSON), 422, "validation_error")
    assert _snapshot(client) == before and client.get("/indexes/n").status_code == 404


def test_config_precedence(tmp_path):
    env = {"ANNVQ_PORT": "9001", "ANNVQ_MAX_BATCH": "7", "ANNVQ_API_KEY": "", "ANNVQ_LOG_LEVEL": "DEBUG"}
    cfg = ServerConfig.from_env(env, max_batch=9, data_dir=str(tmp_path), api_key=None)
    assert (cfg.port, cfg.max_batch, cfg.api_key, cfg.log_level, cfg.data_dir) == (9001, 9, None, "debug", tmp_path)
    args = vars(build_parser().parse_args(["--max-k", "5", "--access-log"]))
    cfg = ServerConfig.from_env({"ANNVQ_MAX_K": "3", "ANNVQ_HOST": "0.0.0.0"}, **args)
    assert (cfg.max_k, cfg.access_log, cfg.host) == (5, True, "0.0.0.0")
    with pytest.raises(ValueError):
        ServerConfig.from_env({"ANNVQ_PORT": "eighty"})


@pytest.mark.skipif(not hasattr(__import__("os"), "getpriority"), reason="thread niceness needs os.getpriority")
def test_writers_run_below_searchers_priority_with_the_search_thread_count(tmp_path):
    """Adds encode in the write pool at a lower CPU priority than searches (Linux), with as many kernel
    threads as a search, so an ingest stream that fills the cores delays searches less."""
    import os
    import sys

    import numba

    def probe() -> tuple[int, int]:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), numba.get_num_threads()

    with TestClient(create_app(ServerConfig(data_dir=tmp_path, search_threads=1))) as c:
        ctx = c.app.state.context
        writer = ctx.write_pool.submit(probe).result()
        searcher = ctx.read_pool.submit(probe).result()
    assert writer[1] == searcher[1] == 1
    assert writer[0] > searcher[0] if sys.platform == "linux" else writer[0] == searcher[0]
