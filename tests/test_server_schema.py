"""Property-based run over the OpenAPI schema (schemathesis, in-process ASGI): no request gets a 5xx,
and every error comes in the documented ``{"error": {"code", "message"}}`` form."""
from __future__ import annotations

import atexit
import shutil
import tempfile

import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from annvq_server.app import create_app  # noqa: E402
from annvq_server.config import ServerConfig  # noqa: E402

# small limits keep generated specs and batches cheap
LIMITS = dict(max_batch=64, max_queries=16, max_k=32, max_dim=32, max_body_bytes=1 << 18, max_codec_bytes=1 << 18,
              checkpoint_ops=5)


def _app_with_demo_index():
    """The app over a fresh data directory that already holds a trained index ``demo`` (dim 4).

    Built at import because schemathesis needs the app to collect one test per operation.
    """
    data_dir = tempfile.mkdtemp(prefix="annvq-schema-")
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    cfg = ServerConfig(data_dir=data_dir, **LIMITS)
    x = np.random.default_rng(0).standard_normal((40, 4)).tolist()
    with TestClient(create_app(cfg)) as c:
        c.put("/indexes/demo", json={"dim": 4, "spec": "SQ8"})
        c.post("/indexes/demo/vectors", json={"vectors": x})
        assert c.post("/indexes/demo/train?wait=true").status_code == 200
    return create_app(cfg)


# dropping the index would leave little to explore; the drop itself is covered by tests/test_server_api.py
schema = schemathesis.openapi.from_asgi("/openapi.json", _app_with_demo_index()).exclude(
    method="DELETE", path="/indexes/{name}")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    if "{name}" in case.path and case.method != "PUT":
        case.path_parameters["name"] = "demo"  # reach the index's state, not only the 404 for unknown names
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and error["message"]
