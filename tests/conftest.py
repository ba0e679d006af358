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

    saved = dict(os.environ)
    cluster = local_cluster(2, threads_per_worker=1)
    client = distributed.Client(cluster)
    _restore_environment(saved)
    yield client
    client.close()
    cluster.close()
    _restore_environment(saved)


def _restore_environment(saved: dict[str, str]) -> None:
    """Dask's nannies set variables such as MALLOC_TRIM_THRESHOLD_ and OMP_NUM_THREADS in this process
    when they start workers; without this, every later server process of the run inherits them."""
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _environment_kept():
    """A worker restarted by its nanny during a test sets them again: put the environment back."""
    saved = dict(os.environ)
    yield
    _restore_environment(saved)
