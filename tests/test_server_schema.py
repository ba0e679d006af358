"""``schemathesis run --checks all`` against a real server: every schema-valid request is accepted or
answered with a documented status, every schema-violating one refused, responses match the schema
(statuses, bodies, content types, headers), undeclared methods get 405 with a full Allow header, and
resources created are available until deleted. Two bounded passes: all modes over random names with
stateful runs along the OpenAPI links, then valid data only against a populated, trained index."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("schemathesis")
from test_server_e2e import ServerProcess

HERE = Path(__file__).parent
LIMITS = ("--max-batch", "64", "--max-queries", "16", "--max-k", "32", "--max-dim", "32",
          "--max-body-bytes", "262144", "--max-codec-bytes", "262144", "--checkpoint-ops", "5")


@pytest.mark.parametrize("config,mode", [("schemathesis.toml", "all"), ("schemathesis-populated.toml", "positive")])
def test_schemathesis_all_checks(tmp_path, config, mode):
    srv = ServerProcess(tmp_path / "data", *LIMITS).start()
    try:
        c = srv.client
        assert c.put("/indexes/demo", json={"dim": 4, "spec": "SQ8"}).status_code == 201
        c.post("/indexes/demo/vectors", json={"vectors": np.random.default_rng(0).standard_normal((40, 4)).tolist()})
        assert c.post("/indexes/demo/train?wait=true").status_code == 200
        st = Path(sys.executable).with_name("schemathesis")
        run = subprocess.run(
            [str(st), "--config-file", str(HERE / config), "--no-color", "run",
             f"http://127.0.0.1:{srv.port}/openapi.json", "--checks", "all", "--mode", mode, "--max-examples", "10",
             "--max-time", "30", "--seed", "7", "--workers", "1"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    finally:
        srv.stop()
