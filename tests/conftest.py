"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """Where the real benchmark data lives: ``$ANNVQ_SHARED_DATA`` or ``../shared/data`` beside the repo."""
    env = os.environ.get("ANNVQ_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real SIFT data directory; fails in CI (where it must exist), skips elsewhere when absent."""
    path = shared_data_dir()
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} not found: CI must provide the real SIFT data")
        pytest.skip("../shared/data not found: real SIFT data is only available in CI")
    return path


@pytest.fixture(scope="module")
def dask_client():
    """A Dask client of a ``LocalCluster(n_workers=2, threads_per_worker=1)``, shared by one test module."""
    distributed = pytest.importorskip("distributed")
    from annvq.distributed import local_cluster

    cluster = local_cluster(2, threads_per_worker=1)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
