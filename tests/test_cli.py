"""The ``annvq`` command line end to end: build (batched, resumable), search output formats, info,
bench and demo, and the exit status and one-line message of every user error."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import annvq
import annvq.datasets
from annvq.cli import app
from annvq.datasets import knn_recall, read_fvecs, read_ivecs, write_fvecs

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, fragment):
    assert result.exit_code == 2, result.output
    assert "annvq: error:" in result.stderr and fragment in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def sift(shared_data):
    return shared_data / "sift10k"


@pytest.fixture(scope="module")
def built(sift, tmp_path_factory):
    """One Refine IVF index built from the fvecs file in batches (several appends)."""
    out = tmp_path_factory.mktemp("cli") / "sift"
    r = run("build", sift / "siftsmall_base.fvecs", "--index", "IVF16,PQ16x4,Refine", "-o", out,
            "--batch-size", 3000, "--train-size", 5000, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "10000 vectors" in r.stdout
    return out


@pytest.mark.parametrize("cmd", [[], ["build"], ["search"], ["info"], ["bench"], ["demo"], ["serve"], ["compact"],
                                 ["repair"], ["migrate"]])
def test_help_everywhere(cmd):
    r = run(*cmd, "--help")
    assert r.exit_code == 0 and "Usage" in r.stdout


def test_build_info_and_search_formats(built, sift, tmp_path):
    r = run("info", built)
    assert r.exit_code == 0
    assert "ntotal:       10000" in r.stdout and "IVF16,PQ16x4,Refine" in r.stdout
    assert "code_size:    16 bytes" in r.stdout
    facts = json.loads(run("info", built, "--json").stdout)
    assert facts["ntotal"] == 10000 and facts["nlist"] == 16 and facts["d"] == 128 and facts["rerank"] is True
    assert facts["segments"] == 1  # the build's batches were merged

    queries = sift / "siftsmall_query.fvecs"
    gt = read_ivecs(sift / "siftsmall_groundtruth.ivecs")
    r = run("search", built, queries, "-k", 10, "--nprobe", 8, "--k-factor", 10)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    I = np.array(res["ids"])
    assert I.shape == (100, 10) and np.array(res["distances"]).shape == (100, 10)
    assert knn_recall(I, gt, 10) > 0.9  # re-ranked with the exact vectors
    ref_D, ref_I = annvq.load(built).search(read_fvecs(queries), 10, nprobe=8, k_factor=10)
    np.testing.assert_array_equal(I, ref_I)

    r = run("search", built, queries, "-k", 10, "--nprobe", 8, "--no-rerank", "-o", tmp_path / "r.ivecs")
    assert r.exit_code == 0 and "QPS" in r.stderr
    ids, dist = read_ivecs(tmp_path / "r.ivecs"), read_fvecs(tmp_path / "r.fvecs")
    adc_D, adc_I = annvq.load(built).search(read_fvecs(queries), 10, nprobe=8, rerank=False)
    np.testing.assert_array_equal(ids, adc_I)
    np.testing.assert_allclose(dist, adc_D)

    r = run("search", built, queries, "-k", 3, "-o", tmp_path / "r.npy", "--k-factor", 2)
    assert r.exit_code == 0
    assert np.load(tmp_path / "r.npy").shape == (100, 3) and np.load(tmp_path / "r_distances.npy").shape == (100, 3)
    r = run("search", built, queries, "-k", 3, "-o", tmp_path / "r.json", "--k-factor", 2)
    assert json.loads((tmp_path / "r.json").read_text())["ids"] == np.load(tmp_path / "r.npy").tolist()


def test_build_resumes_an_interrupted_build(built, sift, tmp_path):
    base = sift / "siftsmall_base.fvecs"
    out = tmp_path / "resumed"
    # an interrupted build: same training (same sample seed), then only the first 4000 rows appended
    first = run("build", base, "--index", "IVF16,PQ16x4,Refine", "-o", out, "--batch-size", 4000,
                "--train-size", 5000, "--no-progress")
    assert first.exit_code == 0
    full = annvq.load(out)
    full.remove(np.arange(4000, 10000))
    full.save(out)
    assert annvq.load(out).ntotal == 4000
    r = run("build", base, "-o", out, "--resume", "--batch-size", 2500, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "resuming" in r.stderr and "at 4000/10000" in r.stderr
    back, ref = annvq.load(out), annvq.load(built)
    assert back.ntotal == 10000 and np.array_equal(np.sort(back.ids), np.arange(10000))
    xq = read_fvecs(sift / "siftsmall_query.fvecs")
    np.testing.assert_array_equal(back.search(xq, 10, nprobe=4)[0], ref.search(xq, 10, nprobe=4)[0])
    assert_user_error(run("build", base, "-o", out, "--resume", "--index", "IVF16,SQ8"), "differs from the spec")


def test_build_from_npy_with_learn_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    write_fvecs(tmp_path / "learn.fvecs", x[:500])
    out = tmp_path / "ip"
    r = run("build", tmp_path / "x.npy", "-i", "PQ4x4", "-o", out, "--metric", "ip", "--learn",
            tmp_path / "learn.fvecs", "--batch-size", 500, "--no-progress")
    assert r.exit_code == 0, r.output
    idx = annvq.load(out)
    assert idx.metric == "ip" and idx.ntotal == 1200 and type(idx).__name__ == "FlatIndex"
    assert_user_error(run("search", out, tmp_path / "x.npy", "--nprobe", 2),
                      "unknown search parameter(s) 'nprobe' for a flat index")


def test_search_rescore_on_fast_scan_indexes(tmp_path):
    """``--rescore`` re-scores a fast-scan search with float tables, as the library does; other indexes
    refuse it as a user error."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for spec in ("PQ4x4fs", "PQ4x4"):
        r = run("build", tmp_path / "x.npy", "-i", spec, "-o", tmp_path / spec, "--no-progress")
        assert r.exit_code == 0, r.output
    r = run("search", tmp_path / "PQ4x4fs", tmp_path / "x.npy", "-k", 5, "--rescore", "--k-factor", 4)
    assert r.exit_code == 0, r.output
    D, I = annvq.load(tmp_path / "PQ4x4fs").search(x, 5, rescore=True, k_factor=4)
    np.testing.assert_array_equal(json.loads(r.stdout)["ids"], I)
    np.testing.assert_allclose(json.loads(r.stdout)["distances"], D, rtol=1e-6)
    assert_user_error(run("search", tmp_path / "PQ4x4", tmp_path / "x.npy", "--rescore"), "rescore")


def test_user_errors_exit_2_with_one_line(built, sift, tmp_path):
    base = sift / "siftsmall_base.fvecs"
    assert_user_error(run("build", base, "-i", "IVF16,XQ3", "-o", tmp_path / "a.h5"), "cannot parse codec part")
    assert_user_error(run("build", base, "-o", tmp_path / "a.h5"), "--index is required")
    assert_user_error(run("build", tmp_path / "missing.fvecs", "-i", "PQ8", "-o", tmp_path / "a.h5"), "missing.fvecs")
    assert_user_error(run("build", base, "-i", "PQ8", "-o", built), "exists")
    assert_user_error(run("build", sift / "siftsmall_groundtruth.ivecs", "-i", "PQ7", "-o", tmp_path / "b.h5"),
                      "multiple of M")
    (tmp_path / "junk.h5").write_bytes(b"not an index")
    assert_user_error(run("info", tmp_path / "junk.h5"), "not an annvq index")
    assert_user_error(run("compact", tmp_path / "nowhere"), "no index here")
    assert_user_error(run("migrate", tmp_path / "junk.h5", tmp_path / "new"), "not an annvq index")
    assert_user_error(run("search", built, tmp_path / "q.txt"), "q.txt")
    write_fvecs(tmp_path / "q64.fvecs", np.zeros((2, 64), dtype=np.float32))
    assert_user_error(run("search", built, tmp_path / "q64.fvecs"), "dimension")
    assert_user_error(run("search", built, sift / "siftsmall_query.fvecs", "-o", tmp_path / "r.csv"), ".csv")
    assert_user_error(run("bench", "default", "--nprobe", "a,b"), "--nprobe")
    assert_user_error(run("bench", tmp_path / "nowhere", "-i", "PQ8"), "unknown dataset")
    r = run("search", built, sift / "siftsmall_query.fvecs", "-k", 0)  # typer's own range check
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_compact_and_migrate(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(900, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "idx"
    r = run("build", tmp_path / "x.npy", "-i", "IVF4,PQ2x4", "-o", out, "--batch-size", 300, "--no-compact",
            "--no-progress")
    assert r.exit_code == 0, r.output
    before = annvq.load(out)
    assert len(before.segments) == 3
    r = run("compact", out)
    assert r.exit_code == 0 and "1 segment(s)" in r.stdout
    after = annvq.load(out)
    np.testing.assert_array_equal(after.search(x[:5], 4, nprobe=4)[0], before.search(x[:5], 4, nprobe=4)[0])
    old = Path(__file__).parent / "data" / "v1_flat_rq.h5"
    r = run("migrate", old, tmp_path / "migrated")
    assert r.exit_code == 0 and "290 vectors" in r.stdout
    assert annvq.load(tmp_path / "migrated").ntotal == 290


def test_bench_on_annb_file(sift, tmp_path):
    out = tmp_path / "rows.json"
    r = run("bench", sift / "sift10k-128-euclidean.hdf5", "-i", "IVF16,SQ4", "-i", "PQ8x4", "--nprobe", "1,16",
            "--threads", 1, "--json", out)
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["rows"]
    assert [(row["spec"], row["nprobe"]) for row in rows] == [("IVF16,SQ4", 1), ("IVF16,SQ4", 16), ("PQ8x4", "-")]
    assert rows[1]["R@100"] >= rows[0]["R@100"] and all(row["qps"] > 0 for row in rows)
    assert "R@1" in r.stdout and "IVF16,SQ4" in r.stdout


def test_demo_on_embedded_default_data(tmp_path, monkeypatch):
    """The README's first command, on a small cached subset of the built-in SIFT pool."""
    real = annvq.datasets.load_default

    def small(n_base=None, **kw):
        return real(n_base=n_base, n_query=50, n_learn=1000, images=("page", "text"), cache_dir=tmp_path, workers=1)

    monkeypatch.setattr(annvq.datasets, "load_default", small)
    monkeypatch.setattr("annvq.cli.DEMO_SPECS", ["IVF16,PQ16x4,Refine"])
    r = run("demo", "--nprobe", "1,16")
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["spec", "nprobe", "rerank", "R@1"] and len(lines) == 5  # 2 nprobe x rerank off/on
    recall_rerank = float(lines[-1].split()[3])
    assert recall_rerank > 0.8


def test_serve_without_server_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "annvq_server.main", None)  # makes the import fail
    assert_user_error(run("serve"), "REST service is not available")
