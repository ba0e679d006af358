"""Scale-out on Dask: the distributed build equals a single-process add, sharded search equals the
single index, writes are routed and logged per shard, and faults never give partial answers.

All on one ``LocalCluster(n_workers=2, threads_per_worker=1)`` shared by the module; the tests that
kill workers come last.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import annvq
from annvq.datasets import knn_groundtruth, write_fvecs
from annvq.errors import (
    ClusterError,
    DimensionError,
    DuplicateIdError,
    InvalidInputError,
    ShardUnavailableError,
)
from annvq.index.base import BaseIndex

pytest.importorskip("distributed")

from annvq.distributed import (
    ShardedIndex,
    build,
    connect,
    load_local,
    merge_topk,
    read_manifest,
    splitmix64,
    virtual_shard,
)

pytestmark = pytest.mark.distributed

D = 16


def _data(n: int, seed: int = 0) -> np.ndarray:
    """Clustered data (so IVF lists differ in size) with a few exact duplicates (ties)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(12, D))
    x = centers[rng.integers(0, 12, n)] + rng.normal(size=(n, D))
    if n >= 100:
        x[n // 2 : n // 2 + 5] = x[:5]
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


def _reference(out: Path, x: np.ndarray, ids: np.ndarray | None = None) -> BaseIndex:
    """The single-process index: the build's trained model, every vector added in one call."""
    model = annvq.load(out / "model")
    ref = BaseIndex.from_state(*model.model_state())
    ref.add(x, ids)
    return ref


def _built(client, tmp_path: Path, n: int, seed: int, spec: str, **kw) -> tuple[np.ndarray, Path, Any]:
    """``n`` vectors written to x.npy and built into ``out`` (train on half of them by default); the
    data, the build directory and the build's manifest."""
    x = _data(n, seed=seed)
    np.save(tmp_path / "x.npy", x)
    kw.setdefault("train_size", n // 2)
    m = build(client, tmp_path / "x.npy", spec, tmp_path / "out", progress=False, **kw)
    return x, tmp_path / "out", m


@contextmanager
def _searching(search: Callable[[], Any]) -> Iterator[tuple[list, list]]:
    """``search()`` over and over in a thread while the block runs: yields the answers and the errors."""
    answered: list = []
    errors: list = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                answered.append(search())
            except Exception as exc:  # collected for the test's assertions
                errors.append(exc)

    t = threading.Thread(target=loop)
    t.start()
    try:
        yield answered, errors
    finally:
        stop.set()
        t.join()


def _rows(index: BaseIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(ids, codes, norms) of every live stored row, sorted by id."""
    index.seal()
    segs = index.segments
    ids = np.concatenate([s.ids[s.live_rows()] for s in segs])
    codes = np.concatenate([s.codes[s.live_rows()] for s in segs])
    norms = np.concatenate([s.norms[s.live_rows()] for s in segs]) if segs[0].norms is not None else None
    o = np.argsort(ids)
    return ids[o], codes[o], None if norms is None else norms[o]


def _canonical(D: np.ndarray, I: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Results with ties ordered by id: sorted by (distance, id) per row, -1 padding last."""
    key = np.where(I >= 0, -D if metric != "l2" else D, np.inf)
    o = np.lexsort((np.where(I >= 0, I, np.iinfo(np.int64).max), key), axis=1)
    return np.take_along_axis(D, o, axis=1), np.take_along_axis(I, o, axis=1)


def _assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray], metric: str,
                 wide: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Distances array_equal; ids equal once ties are ordered by id. A tie across the k-th place can
    be cut differently by two correct searches: there, each id must be one of the tied results of
    the single index searched with a larger k (``wide``)."""
    Dg, Ig = _canonical(*got, metric)
    Dw, Iw = _canonical(*want, metric)
    # float32 terms computed by BLAS in a worker (one thread) and here (several) may differ in the last bit
    np.testing.assert_allclose(Dg, Dw, rtol=1e-6, err_msg="distances differ")
    if wide is None:
        assert np.array_equal(Ig, Iw), f"ids differ in {(Ig != Iw).any(axis=1).sum()} rows"
        return
    edge = Dw[:, -1:] == Dw
    assert np.array_equal(np.where(edge, 0, Ig), np.where(edge, 0, Iw)), "ids before the k-th place differ"
    for q in np.flatnonzero((Ig != Iw).any(axis=1)):
        tied = set(wide[1][q][wide[0][q] == Dw[q, -1]].tolist())
        assert set(Ig[q][edge[q]].tolist()) <= tied, f"row {q}: ids at the k-th distance are not tied results"


# --- no cluster needed ----------------------------------------------------------------------------
def test_core_library_does_not_import_dask():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('dask', 'distributed'): raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, annvq, annvq.cli, annvq.storage\n"
        "from annvq.distributed import load_local, read_manifest, splitmix64\n"
        "idx = annvq.index_factory(8, 'PQ2x4'); idx.train(np.random.default_rng(0).normal(size=(300, 8)))\n"
        "assert not any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules)\n"
        "try:\n"
        "    from annvq.distributed import build\n"
        "except ImportError as exc:\n"
        "    assert 'annvq[distributed]' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('build imported without dask')\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_splitmix64_is_the_reference_hash():
    # the first outputs of the reference SplitMix64 generator seeded with 0 are mix(k * gamma), k = 1, 2
    assert int(splitmix64(np.array([0]))[0]) == 0xE220A8397B1DCDAF
    assert int(splitmix64(np.array([1]))[0]) == 0x910A2DEC89025CC1
    counts = np.bincount(virtual_shard(np.arange(200_000), 16), minlength=16)
    assert counts.min() > 0.95 * counts.mean() and counts.max() < 1.05 * counts.mean()


def test_merge_orders_by_distance_then_id_and_pads():
    D1, I1 = np.array([[1.0, 3.0, np.inf]], np.float32), np.array([[7, 9, -1]])
    D2, I2 = np.array([[1.0, 2.0, 5.0]], np.float32), np.array([[4, 8, 6]])
    D, I, origin = merge_topk([D1, D2], [I1, I2], 4, descending=False)
    assert I.tolist() == [[4, 7, 8, 9]] and D.tolist() == [[1.0, 1.0, 2.0, 3.0]] and origin.tolist() == [[1, 0, 1, 0]]
    D, I, _ = merge_topk([D1[:, :2]], [I1[:, :2]], 4, descending=False)
    assert I.tolist() == [[7, 9, -1, -1]] and np.isinf(D[0, 2:]).all()
    D, I, _ = merge_topk([-D1, -D2], [I1, I2], 3, descending=True)
    assert I.tolist() == [[4, 7, 8]] and D.tolist() == [[-1.0, -1.0, -2.0]]


def test_encode_tasks_are_equal_shares_for_every_thread():
    from annvq.distributed.builder import _row_ranges

    # 1M rows in chunks of at most 65,536 on 2 threads: 16 equal tasks, 8 per thread, no odd last one
    ranges = _row_ranges([1_000_000], 65_536, 2)
    sizes = [b - a for _, a, b in ranges]
    assert len(ranges) == 16 and max(sizes) - min(sizes) <= 1 and max(sizes) <= 65_536
    assert ranges[0][1] == 0 and ranges[-1][2] == 1_000_000
    # several sources: every row of each exactly once, no range over chunk_rows or across sources
    counts = [2000, 2500, 3]
    for threads in (1, 3, 4):
        ranges = _row_ranges(counts, 1000, threads)
        for s, n in enumerate(counts):
            mine = [(a, b) for t, a, b in ranges if t == s]
            assert mine[0][0] == 0 and mine[-1][1] == n
            assert all(b0 == a1 for (_, b0), (a1, _) in zip(mine, mine[1:])) and all(0 < b - a <= 1000 for a, b in mine)
    assert _row_ranges([0], 1000, 2) == []


def test_bad_scheduler_address_is_a_clear_error_within_the_timeout(monkeypatch):
    t = time.perf_counter()
    with pytest.raises(ClusterError, match="127.0.0.1:1"):
        connect("tcp://127.0.0.1:1", timeout=2)
    assert time.perf_counter() - t < 15
    with pytest.raises(ClusterError, match="nonsense"):
        connect("nonsense://nowhere", timeout=2)
    monkeypatch.delenv("ANNVQ_SCHEDULER", raising=False)
    with pytest.raises(ClusterError, match="no scheduler address"):
        connect(None)


# --- build ------------------------------------------------------------------------------------------
_THREADS_SCRIPT = """
import asyncio
import os
import dask
import numba  # imported by the main module, as a script using annvq does: spawned workers import it too
from distributed import Client
from annvq.distributed import local_cluster

def threads():
    return (numba.get_num_threads(), os.environ.get("OPENBLAS_NUM_THREADS"), os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            dask.config.get("distributed.worker.profile.enabled"))

async def loop_kind():
    return type(asyncio.get_running_loop()).__module__.split(".")[0]

if __name__ == "__main__":
    with local_cluster(2, threads_per_worker=1) as cluster, Client(cluster) as client:
        print(sorted(set(client.run(threads).values())), os.environ.get("NUMBA_NUM_THREADS"))
        print(sorted(set(client.run(loop_kind).values())))
"""


def test_local_cluster_workers_run_as_many_kernel_threads_as_task_threads(tmp_path):
    """A spawned worker imports the caller's main module, and Numba with it, before a nanny's env
    reaches it; the limit must hold anyway (or two one-thread workers each scan with every core),
    glibc keeps its adaptive allocation, and the caller's own environment is left as it was. The
    workers run without Dask's sampling profiler, on uvloop where it is installed."""
    pytest.importorskip("distributed")
    script = tmp_path / "threads.py"
    script.write_text(_THREADS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "[(1, '1', None, False)] None"
    assert lines[1] == str(["uvloop" if importlib.util.find_spec("uvloop") else "asyncio"])


def test_build_equals_single_process_add(client, tmp_path):
    """Two input files (fvecs and npy), ids given (non-contiguous), row ranges not aligned with the
    shards: the shards hold exactly the codes a single-process add of the same model stores."""
    x = _data(4500, seed=1)
    write_fvecs(tmp_path / "a.fvecs", x[:2000])
    np.save(tmp_path / "b.npy", x[2000:])
    ids = np.concatenate([np.arange(2000) * 7 + 3, np.arange(2500) * 5 + 100_000]).astype(np.int64)
    np.save(tmp_path / "ids_b.npy", ids[2000:])
    for spec in ("IVF16,PQ4x8", "RQ2x4"):
        out = tmp_path / spec.replace(",", "_")
        m = build(client, [tmp_path / "a.fvecs", tmp_path / "b.npy"], spec, out, shards=3, virtual_shards=10,
                  ids=[ids[:2000], tmp_path / "ids_b.npy"], train_size=1500, chunk_rows=777, progress=False)
        assert m == read_manifest(out) and m.ntotal == 4500 and m.nshards == 3 and m.d == D
        assert sorted(os.listdir(out)) == ["index.json", "model", "shard-000", "shard-001", "shard-002"]
        ref = _reference(out, x, ids)
        assert m.fingerprint == ref.fingerprint()
        got_ids, got_codes, got_norms = _rows(load_local(out))
        want_ids, want_codes, want_norms = _rows(ref)
        assert np.array_equal(got_ids, want_ids) and np.array_equal(got_codes, want_codes)
        assert (got_norms is None) == (want_norms is None)
        if got_norms is not None:
            assert np.array_equal(got_norms, want_norms)
        for s, entry in enumerate(m.shards):
            shard = annvq.load(out / entry.path)
            assert shard.fingerprint() == m.fingerprint and shard.ntotal == entry.ntotal
            assert (m.shard_of(shard.ids) == s).all()
    # ids from the input position when not given; a rerun of a published build returns it unchanged
    out = tmp_path / "positions"
    m = build(client, [tmp_path / "a.fvecs", tmp_path / "b.npy"], "IVF16,SQ8", out, shards=2, virtual_shards=8,
              train_size=1500, chunk_rows=1000, progress=False)
    got_ids, got_codes, _ = _rows(load_local(out))
    want_ids, want_codes, _ = _rows(_reference(out, x))
    assert np.array_equal(got_ids, np.arange(4500)) and np.array_equal(got_codes, want_codes)
    # a trained model given instead of a spec: encoded with it, no training
    again = build(client, [tmp_path / "b.npy"], None, tmp_path / "with-model", model=out / "model", shards=3,
                  chunk_rows=900, progress=False)
    assert again.fingerprint == m.fingerprint and again.spec == "IVF16,SQ8" and again.ntotal == 2500
    assert np.array_equal(_rows(load_local(tmp_path / "with-model"))[1], want_codes[2000:])
    stamp = (out / "index.json").stat().st_mtime_ns
    assert build(client, [tmp_path / "a.fvecs", tmp_path / "b.npy"], "IVF16,SQ8", out, shards=2, virtual_shards=8,
                 train_size=1500, chunk_rows=1000, progress=False) == m
    assert (out / "index.json").stat().st_mtime_ns == stamp


def test_build_reads_bvecs_and_hdf5(client, tmp_path):
    from annvq.datasets import save_annb, write_bvecs

    x = np.clip(np.round(_data(2500, seed=23) * 8 + 128), 0, 255).astype(np.float32)
    write_bvecs(tmp_path / "x.bvecs", x[:1200])
    save_annb(tmp_path / "x.hdf5", x[1200:], x[:3], np.zeros((3, 1), np.int64), np.zeros((3, 1)))
    out = tmp_path / "out"
    m = build(client, [tmp_path / "x.bvecs", tmp_path / "x.hdf5"], "IVF8,PQ4x8", out, shards=2, train_size=1000,
              chunk_rows=500, progress=False)
    assert m.ntotal == 2500
    got_ids, got_codes, _ = _rows(load_local(out))
    want_ids, want_codes, _ = _rows(_reference(out, x))
    assert np.array_equal(got_ids, want_ids) and np.array_equal(got_codes, want_codes)


def test_build_resumes_and_refuses_mixed_models(client, tmp_path):
    x = _data(3000, seed=2)
    np.save(tmp_path / "x.npy", x)
    kw = {"shards": 2, "virtual_shards": 8, "train_size": 1000, "chunk_rows": 700, "progress": False,
          "keep_parts": True}
    out = tmp_path / "out"
    m = build(client, tmp_path / "x.npy", "IVF8,PQ4x8", out, **kw)
    parts = sorted((out / "parts").iterdir())
    kept = {p.name: (p / "manifest.json").stat().st_mtime_ns for p in parts[1:]}
    # an interrupted build: no manifest, one shard and one part missing, the build's parameters on disk
    (out / "index.json").unlink()
    shutil.rmtree(out / "shard-001")
    shutil.rmtree(parts[0])
    (out / "build.json").write_text(json.dumps(m.build, sort_keys=True))
    m2 = build(client, tmp_path / "x.npy", "IVF8,PQ4x8", out, **kw)
    assert m2.fingerprint == m.fingerprint and m2.ntotal == 3000 and (out / "index.json").is_file()
    assert {p.name: (p / "manifest.json").stat().st_mtime_ns for p in sorted((out / "parts").iterdir())[1:]} == kept
    assert np.array_equal(_rows(load_local(out))[1], _rows(_reference(out, x))[1])
    # another build into the same directory is refused; a part of another model cannot be merged
    with pytest.raises(InvalidInputError, match="another build"):
        build(client, tmp_path / "x.npy", "IVF8,PQ4x4", out, **kw)
    other = annvq.index_factory(D, "IVF8,PQ4x8")
    other.train(x[::3] + 1)
    other.add(x[:10], np.arange(10) + 10**6)
    other.save(tmp_path / "foreign")
    with pytest.raises(InvalidInputError, match="another model"):
        annvq.storage.concat([out / "shard-000", tmp_path / "foreign"], tmp_path / "mixed")


# --- sharded search ---------------------------------------------------------------------------------
SEARCH_CASES = [  # spec, metric, shards, replicas: every codec, metric, S and R value more than once
    ("PQ4x8", "l2", 2, 1),
    ("SQ8", "ip", 3, 2),
    ("IVF16,PQ4x8", "ip", 3, 2),
    ("IVF16,PQ4x8", "cosine", 1, 1),
    ("IVF16,OPQ4,PQ4x8", "l2", 2, 2),
    ("IVF16,SQ8", "cosine", 3, 1),
    ("IVF16,SQ8", "l2", 2, 1),
    ("RQ2x4", "l2", 3, 2),
    ("IVF8,RQ2x4", "ip", 2, 1),
    ("AQ2x4", "cosine", 2, 2),
    ("IVF8,CQ2x4", "l2", 3, 1),
    ("IVF16,PQ8x4fs", "l2", 2, 1),
    ("PQ8x4fs", "ip", 3, 1),
]


@pytest.mark.parametrize("spec,metric,shards,replicas", SEARCH_CASES)
def test_sharded_search_equals_single_index(client, tmp_path, spec, metric, shards, replicas):
    x, out, _ = _built(client, tmp_path, 3000, 3, spec, shards=shards, virtual_shards=12, metric=metric,
                       chunk_rows=1100)
    ref = _reference(out, x)
    ref.compact(full=True)  # sealed like the shards' rows: fast-scan sums them in the packed layout's order
    xq = _data(60, seed=4)
    params = {"nprobe": 4} if spec.startswith("IVF") else {}
    want, wide = ref.search(xq, 10, **params), ref.search(xq, ref.ntotal, **params)
    _assert_same(load_local(out).search(xq, 10, **params), want, metric, wide)
    with ShardedIndex(client, out, replicas=replicas) as index:
        _assert_same(index.search(xq, 10, **params), want, metric, wide)
        D, I = index.search(xq[:3], 4000, **params)  # k above ntotal: -1 and +-inf padding, as the single index
        Dr, Ir = ref.search(xq[:3], 4000, **params)
        # every probed row comes back; scan biases computed in other blocks may differ in the last bit
        np.testing.assert_allclose(D, Dr, rtol=1e-6)
        assert all(set(a) == set(b) for a, b in zip(I, Ir, strict=True))
        assert (I[:, 3000:] == -1).all()
        facts = index.info()
        assert facts["ntotal"] == 3000 and len(facts["shards"]) == shards
        assert all(len({r["worker"] for r in s["replicas"]}) == replicas for s in facts["shards"])
        with pytest.raises(InvalidInputError, match="unknown search parameter"):
            index.search(xq, 10, nprob=3)
        with pytest.raises(DimensionError):
            index.search(xq[:, :5], 10)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_refine_exact_is_identical_and_default_recall_is_at_least_single(client, tmp_path, metric):
    x, out, _ = _built(client, tmp_path, 4000, 5, "IVF16,PQ4x4,Refine", shards=3, virtual_shards=9, metric=metric,
                       chunk_rows=1500)
    ref = _reference(out, x)
    xq = _data(80, seed=6)
    gt = knn_groundtruth(x, xq, 10, metric=metric)[1]
    with ShardedIndex(client, out, replicas=2) as index:
        for k_factor in (None, 2):
            want, wide = ref.search(xq, 10, nprobe=4, k_factor=k_factor), ref.search(xq, 40, nprobe=4)
            # identical where the code-distance shortlist has no tie at its boundary (a tie there may be cut
            # by row in one index and by id across shards, and the exact re-ranking then sees other rows)
            kk = 10 * (k_factor or ref.k_factor)
            codes = ref.search(xq, kk + 1, nprobe=4, rerank=False)[0]
            clear = codes[:, kk - 1] != codes[:, kk]
            assert clear.mean() > 0.8
            got = index.search(xq, 10, nprobe=4, k_factor=k_factor, exact=True)
            _assert_same(tuple(a[clear] for a in got), tuple(a[clear] for a in want), metric,
                         tuple(a[clear] for a in wide))
            _, I = index.search(xq, 10, nprobe=4, k_factor=k_factor)
            hits = np.array([len(set(a) & set(g)) for a, g in zip(I, gt)])
            single = np.array([len(set(a) & set(g)) for a, g in zip(want[1], gt)])
            assert (hits >= single).all()  # each shard re-ranks a superset of its share of the candidates
        _assert_same(index.search(xq, 10, nprobe=4, rerank=False), ref.search(xq, 10, nprobe=4, rerank=False), metric,
                     ref.search(xq, 200, nprobe=4, rerank=False))


def test_split_by_list_routing_equals_single_index(client, tmp_path):
    x, out, m = _built(client, tmp_path, 3000, 7, "IVF16,PQ4x8", shards=3, layout="lists", chunk_rows=1000)
    assert m.layout == "lists" and m.virtual_shards == 16
    ref = _reference(out, x)
    lists = ref.list_of(np.arange(3000))
    for s, entry in enumerate(m.shards):  # a shard holds whole lists
        assert set(m.shard_of_vshard()[lists[annvq.load(out / entry.path).ids]]) <= {s}
    xq = _data(50, seed=8)
    want = ref.search(xq, 10, nprobe=2)
    for route in ("lists", "all"):
        with ShardedIndex(client, out, route=route) as index:
            _assert_same(index.search(xq, 10, nprobe=2), want, "l2")
            new = index.add(_data(5, seed=9))
            assert index.contains(new).all() and index.ntotal == 3005
            index.remove(new)


def test_small_requests_are_batched_and_answered(client, tmp_path):
    x, out, _ = _built(client, tmp_path, 3000, 10, "IVF16,PQ4x8", shards=2)
    ref = _reference(out, x)
    xq = _data(64, seed=11)
    want = ref.search(xq, 5, nprobe=4)
    got: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    with ShardedIndex(client, out, replicas=1, batch_queries=4, batch_wait=0.005) as index:
        def one(i: int) -> None:
            got[i] = index.search(xq[i], 5, nprobe=4)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    D = np.concatenate([got[i][0] for i in range(64)])
    I = np.concatenate([got[i][1] for i in range(64)])
    np.testing.assert_allclose(D, want[0], rtol=1e-5, atol=1e-4)
    assert (I == want[1]).mean() > 0.97


# --- writes -----------------------------------------------------------------------------------------
def test_writes_are_routed_logged_and_survive_a_restart(client, tmp_path):
    x, out, _ = _built(client, tmp_path, 3000, 12, "IVF16,SQ8", shards=3, virtual_shards=12)
    ref = _reference(out, x)
    rng = np.random.default_rng(13)
    new = _data(200, seed=14)
    xq = _data(40, seed=15)
    with ShardedIndex(client, out, replicas=2) as index:
        given = np.arange(200) * 11 + 50_000
        assert np.array_equal(index.add(new[:100], given[:100]), given[:100])
        auto = index.add(new[100:])
        assert np.array_equal(auto, np.arange(given[99] + 1, given[99] + 101))  # one past the largest id
        gone = rng.choice(3000, 150, replace=False)
        assert index.remove(np.concatenate([gone, given[:10]])) == 160
        ref.add(new[:100], given[:100])
        ref.add(new[100:], auto)
        ref.remove(np.concatenate([gone, given[:10]]))
        assert index.ntotal == ref.ntotal == 3040
        facts = index.info()
        for s in facts["shards"]:  # each shard took exactly the ids it owns
            assert s["lsn"] >= 1
        _assert_same(index.search(xq, 10, nprobe=4), ref.search(xq, 10, nprobe=4), "l2")
        # refused writes change nothing on any shard
        with pytest.raises(DuplicateIdError):
            index.add(new[:3], [1, 2, given[50]])
        with pytest.raises(annvq.UnknownIdError):
            index.remove([5, 123_456_789])
        with pytest.raises(DimensionError):
            index.add(new[:3, :4])
        assert index.ntotal == 3040 and index.contains([5]).all()
        vec, exact = index.fetch(given[10:12])
        assert not exact and np.allclose(vec, ref.reconstruct_batch(given[10:12]))
    # a new router replays every shard's log; load_local too
    with ShardedIndex(client, out, replicas=1) as index:
        assert index.ntotal == 3040
        _assert_same(index.search(xq, 10, nprobe=4), ref.search(xq, 10, nprobe=4), "l2")
        m = index.checkpoint()
        assert all(e.lsn >= 1 for e in m.shards) and read_manifest(out) == m
        index.add(new[:1], [999_999])
    local = load_local(out)
    assert local.ntotal == 3041 and local.contains([999_999]).all()
    ref.add(new[:1], [999_999])
    _assert_same(local.search(xq, 10, nprobe=4), ref.search(xq, 10, nprobe=4), "l2")


def test_cli_builds_on_a_scheduler(client, tmp_path):
    from typer.testing import CliRunner

    from annvq.cli import app

    x = _data(2000, seed=16)
    write_fvecs(tmp_path / "x.fvecs", x)
    address = client.scheduler.address
    res = CliRunner().invoke(app, ["build", str(tmp_path / "x.fvecs"), "--index", "IVF8,PQ4x8", "--out",
                                   str(tmp_path / "out"), "--scheduler", address, "--shards", "2",
                                   "--batch-size", "600", "--train-size", "1000", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "2000 vectors in 2 shard(s)" in res.output
    assert np.array_equal(_rows(load_local(tmp_path / "out"))[1], _rows(_reference(tmp_path / "out", x))[1])
    res = CliRunner().invoke(app, ["build", str(tmp_path / "x.fvecs"), "--index", "IVF8,PQ4x8", "--out",
                                   str(tmp_path / "out"), "--scheduler", address])
    assert res.exit_code == 2 and "--resume" in res.output


def test_service_registry_swaps_builds_without_downtime(client, tmp_path):
    from annvq.distributed import ShardedIndexes

    x = _data(3500, seed=21)
    np.save(tmp_path / "a.npy", x[:3000])
    np.save(tmp_path / "b.npy", x)
    build(client, tmp_path / "a.npy", "IVF8,PQ4x8", tmp_path / "blue", shards=2, train_size=1500, progress=False)
    build(client, tmp_path / "b.npy", "IVF8,PQ4x8", tmp_path / "green", shards=3, train_size=1500, progress=False)
    xq = _data(20, seed=22)
    want = _reference(tmp_path / "green", x).search(xq, 10, nprobe=2)
    served = ShardedIndexes(client, batch_queries=0)
    try:
        assert served.load("demo", tmp_path / "blue")["ntotal"] == 3000
        with pytest.raises(InvalidInputError, match="already served"):
            served.load("demo", tmp_path / "green")
        def search() -> tuple[np.ndarray, np.ndarray]:
            with served.use("demo") as index:
                return index.search(xq, 10, nprobe=2)

        with _searching(search) as (answered, errors):
            time.sleep(0.3)
            facts = served.swap("demo", tmp_path / "green")
            time.sleep(0.3)
        assert not errors and len(answered) > 2 and facts["ntotal"] == 3500 and len(facts["shards"]) == 3
        _assert_same(answered[-1], want, "l2")
        with served.writing("demo") as index:
            index.add(x[:2], [10**6, 10**6 + 1])
        with served.use("demo") as index:
            assert index.ntotal == 3502
        served.drop("demo")
        with pytest.raises(KeyError), served.use("demo"):
            pass
    finally:
        served.close()


@pytest.mark.slow
def test_example_runs_scheduler_workers_build_and_service(tmp_path):
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, str(root / "examples" / "scaleout_local.py"), "--n", "3000", "--keep",
                          str(tmp_path / "work")], check=False, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout[-2000:] + res.stderr[-4000:]
    assert "same results as the sharded index" in res.stdout


# --- faults (these kill workers; keep them last) -------------------------------------------------
def _worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def _wait(predicate, timeout: float = 90.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_worker_killed_during_searches_with_two_replicas(client, tmp_path):
    x, out, _ = _built(client, tmp_path, 3000, 17, "IVF16,PQ4x8", shards=2)
    ref = _reference(out, x)
    xq = _data(50, seed=18)
    want = ref.search(xq, 10, nprobe=4)
    with ShardedIndex(client, out, replicas=2, batch_queries=0) as index:
        victim = index.info()["shards"][0]["replicas"][0]["worker"]
        pid = _worker_pids(client)[victim]
        with _searching(lambda: index.search(xq, 10, nprobe=4)) as (answered, errors):
            time.sleep(0.5)
            before = len(answered)
            os.kill(pid, signal.SIGKILL)
            time.sleep(2.0)
        assert not errors and before > 0 and len(answered) > before
        for got in answered:
            _assert_same(got, want, "l2")
        assert _wait(lambda: index.live_replicas() == [2, 2]), index.info()
        assert index.recreated >= 1
        _assert_same(index.search(xq, 10, nprobe=4), want, "l2")
    assert _wait(lambda: len(client.scheduler_info()["workers"]) == 2)


def test_shard_without_live_replica_is_an_error_never_partial(client, tmp_path):
    _, out, _ = _built(client, tmp_path, 2000, 19, "IVF8,PQ4x8", shards=2)
    xq = _data(20, seed=20)
    with ShardedIndex(client, out, replicas=1, batch_queries=0) as index:
        index.search(xq, 5)
        victim = index.info()["shards"][1]["replicas"][0]["worker"]
        os.kill(_worker_pids(client)[victim], signal.SIGKILL)
        with pytest.raises(ShardUnavailableError, match="shard 1 has no live replica"):
            for _ in range(50):  # the loss is noticed by the first call that reaches the dead worker
                index.search(xq, 5)
        if index.live_replicas()[1] == 0:  # until the nanny has restarted the worker: refused at once, reported
            with pytest.raises(ShardUnavailableError):
                index.search(xq, 5)
            facts = index.info()
            assert not facts["available"] and not facts["shards"][1]["available"] and facts["shards"][0]["available"]
        assert _wait(lambda: index.live_replicas() == [1, 1])  # re-created once the nanny restarted the worker
        assert index.search(xq, 5)[1].shape == (20, 5)
