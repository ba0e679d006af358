"""The ``annvq`` command line: build, search, inspect, benchmark and serve quantized indexes.

Errors that are the user's to fix (bad spec, unreadable file, wrong dimension...) print one line
``annvq: error: ...`` on stderr and exit with status 2, without a traceback.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

app = typer.Typer(
    name="annvq",
    help="Approximate nearest-neighbour search with vector quantization (PQ, OPQ, SQ, RQ, AQ, CQ; "
         "flat and IVF indexes).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

VECTOR_FILES = ".fvecs/.bvecs/.ivecs, .npy or ann-benchmarks .hdf5 (its 'train' set)"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"annvq: error: {message}", err=True)
    return typer.Exit(2)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn annvq and file errors into a one-line message and exit status 2."""
    from .errors import AnnvqError

    try:
        yield
    except AnnvqError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # missing file, permissions, a directory where a file was expected
        raise _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None


class VectorFile:
    """Rows of a vector file, read one slice at a time so a base larger than memory can stream."""

    def __init__(self, path: Path) -> None:
        from .datasets import count_vecs, read_bvecs, read_fvecs, read_ivecs, read_vectors
        from .errors import FormatError, InvalidInputError

        self.path = path
        self._h5 = None
        ext = path.suffix.lower()
        if not path.exists():
            raise FileNotFoundError(2, "no such file", str(path))
        if ext in (".fvecs", ".bvecs", ".ivecs"):
            self.n, self.d = count_vecs(path)
            reader = {".fvecs": read_fvecs, ".bvecs": read_bvecs, ".ivecs": read_ivecs}[ext]
            self._slice = lambda s, c: reader(path, s, c)
        elif ext == ".npy":
            arr = read_vectors(path)  # memory-mapped
            self.n, self.d = arr.shape
            self._slice = lambda s, c: arr[s : s + c]
        elif ext in (".hdf5", ".h5"):
            import h5py

            try:
                self._h5 = h5py.File(path, "r")
            except OSError as exc:
                raise FormatError(f"{path}: not a readable HDF5 file ({exc})") from None
            if "train" not in self._h5 or self._h5["train"].ndim != 2:
                raise FormatError(f"{path}: no 2-D 'train' dataset (an ann-benchmarks file is expected)")
            ds = self._h5["train"]
            self.n, self.d = ds.shape
            self._slice = lambda s, c: ds[s : s + c]
        else:
            raise InvalidInputError(f"{path}: unsupported vector file; expected {VECTOR_FILES}")

    def read(self, start: int, count: int) -> np.ndarray:
        return np.ascontiguousarray(self._slice(start, count), dtype=np.float32)

    def sample(self, size: int, seed: int, batch: int = 65536) -> np.ndarray:
        """``size`` distinct rows drawn uniformly (all rows when ``size >= n``), in one streaming pass."""
        if size >= self.n:
            return self.read(0, self.n)
        rows = np.sort(np.random.default_rng(seed).choice(self.n, size, replace=False))
        parts = []
        for s in range(0, self.n, batch):
            sel = rows[(rows >= s) & (rows < s + batch)]
            if sel.size:
                parts.append(self.read(s, batch)[sel - s])
        return np.concatenate(parts)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()


def _read_queries(path: Path) -> np.ndarray:
    """Query vectors from a vector file; from an ann-benchmarks file, its 'test' set."""
    from .datasets import read_vectors

    if not path.exists():
        raise FileNotFoundError(2, "no such file", str(path))
    if path.suffix.lower() in (".hdf5", ".h5"):
        import h5py

        from .errors import FormatError

        try:
            with h5py.File(path, "r") as f:
                if "test" in f:
                    return np.ascontiguousarray(f["test"][()], dtype=np.float32)
        except OSError as exc:
            raise FormatError(f"{path}: not a readable HDF5 file ({exc})") from None
    return np.ascontiguousarray(read_vectors(path), dtype=np.float32)


def _human(nbytes: float) -> str:
    """Byte count with a binary unit, e.g. ``7.1 MiB``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while nbytes >= 1024 and i < len(units) - 1:
        nbytes /= 1024
        i += 1
    return f"{nbytes:.0f} B" if i == 0 else f"{nbytes:.1f} {units[i]}"


# --- build ---------------------------------------------------------------------------------------
@app.command()
def build(
    data: Annotated[Path, typer.Argument(help=f"base vectors: {VECTOR_FILES}", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="index directory to write", show_default=False)],
    index: Annotated[str | None, typer.Option(
        "--index", "-i", help="index spec, e.g. IVF1024,PQ16x8 or OPQ16,PQ16x8 or IVF256,PQ8x8,Refine")] = None,
    metric: Annotated[str, typer.Option(help="l2, ip or cosine")] = "l2",
    learn: Annotated[Path | None, typer.Option(help="separate training vectors (default: a sample of DATA)")] = None,
    train_size: Annotated[int, typer.Option(min=1, help="training vectors drawn at random")] = 100_000,
    batch_size: Annotated[int, typer.Option(min=1, help="vectors encoded and appended per step")] = 65_536,
    resume: Annotated[bool, typer.Option(help="continue an interrupted build of OUT from its stored ntotal")] = False,
    compact: Annotated[bool, typer.Option(
        help="merge the batches' segments into one at the end (fastest search)")] = True,
    force: Annotated[bool, typer.Option(help="overwrite OUT if it exists")] = False,
    seed: Annotated[int, typer.Option(help="seed of the training sample")] = 0,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    workers: Annotated[int | None, typer.Option(
        min=1,
        help="build on a local Dask cluster of N worker processes (annvq[distributed]); OUT becomes a sharded build",
        rich_help_panel="Distributed build",
    )] = None,
    scheduler: Annotated[str | None, typer.Option(
        envvar="ANNVQ_SCHEDULER", help="build on the Dask cluster of this scheduler, e.g. tcp://host:8786",
        rich_help_panel="Distributed build",
    )] = None,
    shards: Annotated[int, typer.Option(
        min=1, help="physical shards of a distributed build", rich_help_panel="Distributed build")] = 1,
    virtual_shards: Annotated[int, typer.Option(
        min=1, help="virtual shards (splitmix64 of the id) grouped into the physical ones",
        rich_help_panel="Distributed build",
    )] = 256,
) -> None:
    """Train an index on a sample and add DATA in batches, appending to OUT as it goes (resumable).

    The trained, empty index is saved first; every batch is then stored as a new segment, in time
    proportional to the batch, so an interrupted build continues with --resume. At the end the
    segments are merged into one (--no-compact skips it). Vector ids are row numbers in DATA.

    With --workers or --scheduler (or $ANNVQ_SCHEDULER) the build runs on Dask: the workers read
    DATA themselves, train once, encode batches in parallel and merge them into --shards shards
    under OUT/index.json (serve it with annvq.distributed.ShardedIndex).
    """
    if workers is not None or scheduler:
        from .distributed.command import build_command

        with _user_errors():
            typer.echo(build_command(data, out, index, metric, learn, train_size, batch_size, resume, force, seed,
                                     progress, workers, scheduler, shards, virtual_shards))
        return
    from tqdm import tqdm

    import annvq

    from .errors import DimensionError, InvalidInputError, SpecError
    from .spec import as_spec
    from .storage import IndexDirectory

    with _user_errors():
        src = VectorFile(data)
        try:
            t0 = time.perf_counter()
            if resume and out.exists():
                idx = annvq.load(out)
                if index is not None and as_spec(index).to_string() != idx.spec:
                    raise SpecError(f"--index {index} differs from the spec {idx.spec} stored in {out}")
                if idx.d != src.d:
                    raise DimensionError(f"{data} has d={src.d} but {out} holds d={idx.d} vectors")
                start = idx.ntotal
                if start > src.n:
                    raise InvalidInputError(f"{out} holds {start} vectors, more than the {src.n} rows of {data}")
                typer.echo(f"resuming {out} ({idx.spec}) at {start}/{src.n}", err=True)
            else:
                if index is None:
                    raise SpecError("--index is required (e.g. --index IVF1024,PQ16x8)")
                if out.exists() and not force:
                    raise InvalidInputError(f"{out} exists: pass --resume to continue it or --force to rebuild")
                if out.exists() and force:
                    if not out.is_dir() or not IndexDirectory.holds_index(out):
                        raise InvalidInputError(f"{out} is not an annvq index directory; --force only replaces one")
                    shutil.rmtree(out)
                idx = annvq.index_factory(src.d, index, metric=metric)
                if learn is not None:
                    lf = VectorFile(learn)
                    try:
                        xt = lf.sample(train_size, seed)
                    finally:
                        lf.close()
                else:
                    xt = src.sample(train_size, seed)
                typer.echo(f"training {idx.spec} on {len(xt)} vectors (d={src.d}, metric={idx.metric})", err=True)
                idx.train(xt)
                del xt
                idx.save(out)
                start = 0
            with tqdm(total=src.n, initial=start, unit="vec", unit_scale=True, disable=not progress,
                      file=sys.stderr) as bar:
                for s in range(start, src.n, batch_size):
                    x = src.read(s, min(batch_size, src.n - s))
                    annvq.append(out, x, ids=np.arange(s, s + len(x)))
                    bar.update(len(x))
            if compact:
                typer.echo("merging segments", err=True)
                annvq.compact(out)
        finally:
            src.close()
        typer.echo(f"{out}: {src.n} vectors, {idx.spec}, {time.perf_counter() - t0:.1f} s, {_human(_dir_size(out))}")


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path.is_dir() else path.stat().st_size


# --- search --------------------------------------------------------------------------------------
def _write_results(out: Path | None, D: np.ndarray, I: np.ndarray) -> None:
    """ids and distances as JSON (stdout when ``out`` is None), .npy or .ivecs; see ``search --help``."""
    from .datasets import write_fvecs, write_ivecs
    from .errors import InvalidInputError

    if out is None or out.suffix.lower() == ".json":
        payload = {"ids": I.tolist(), "distances": [[float(v) if np.isfinite(v) else None for v in row] for row in D]}
        text = json.dumps(payload)
        if out is None:
            typer.echo(text)
        else:
            out.write_text(text + "\n")
        return
    ext = out.suffix.lower()
    if ext == ".npy":
        np.save(out, I)
        np.save(out.with_name(out.stem + "_distances.npy"), D)
    elif ext == ".ivecs":
        write_ivecs(out, I)
        big = np.finfo(np.float32).max
        write_fvecs(out.with_suffix(".fvecs"), np.nan_to_num(D, posinf=big, neginf=-big))
    else:
        raise InvalidInputError(f"--out {out}: expected a .json, .npy or .ivecs file name")


@app.command()
def search(
    index_path: Annotated[Path, typer.Argument(
        metavar="INDEX", help="index written by 'annvq build'", show_default=False)],
    queries: Annotated[Path, typer.Argument(
        help="query vectors: .fvecs/.bvecs/.ivecs, .npy or ann-benchmarks .hdf5 (its 'test' set)", show_default=False)],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="neighbours per query")] = 10,
    nprobe: Annotated[int | None, typer.Option(
        min=1, help="IVF lists visited per query (default: stored in the index)")] = None,
    rerank: Annotated[bool | None, typer.Option(
        "--rerank/--no-rerank", help="re-rank with the exact vectors (Refine indexes)")] = None,
    k_factor: Annotated[int | None, typer.Option(min=1, help="re-rank the best k_factor * k candidates")] = None,
    rescore: Annotated[bool | None, typer.Option(
        "--rescore/--no-rescore", help="re-score the best candidates with float tables (fast-scan indexes)")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o",
        help="results.json, results.npy (+ results_distances.npy) or results.ivecs (+ results.fvecs); "
             "JSON on stdout when omitted",
    )] = None,
) -> None:
    """Search INDEX for the k nearest neighbours of every query; write ids and distances.

    Distances are squared L2 (ascending) or similarities for ip/cosine (descending); id -1 pads
    rows with fewer than k results.
    """
    import annvq

    with _user_errors():
        idx = annvq.load(index_path)
        xq = _read_queries(queries)
        t = time.perf_counter()
        D, I = idx.search(xq, k, nprobe=nprobe, rerank=rerank, k_factor=k_factor, rescore=rescore)
        elapsed = time.perf_counter() - t
        _write_results(out, D, I)
        typer.echo(f"{len(xq)} queries, k={k}: {elapsed:.3f} s ({len(xq) / max(elapsed, 1e-9):.0f} QPS)", err=True)


# --- info ----------------------------------------------------------------------------------------
@app.command()
def info(
    index_path: Annotated[Path, typer.Argument(
        metavar="INDEX", help="index directory (or 0.1 file)", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """Describe an index: spec, metric, dimension, vectors, segments, code size, size on disk."""
    import annvq

    with _user_errors():
        idx = annvq.load(index_path)
        facts: dict[str, Any] = {"path": str(index_path), **idx.info(), "disk_bytes": _dir_size(index_path)}
    if as_json:
        typer.echo(json.dumps(facts))
        return
    for key, value in facts.items():
        shown = _human(value) if key.endswith("_bytes") else f"{value} bytes" if key == "code_size" else value
        typer.echo(f"{key + ':':<14}{shown}")


@app.command()
def compact(
    index_path: Annotated[Path, typer.Argument(metavar="INDEX", help="index directory", show_default=False)],
    full: Annotated[bool, typer.Option("--full/--policy", help="merge every segment into one, or only what the "
                                                                "tiered merge policy asks for")] = True,
) -> None:
    """Merge the segments of a stored index and drop its deleted rows (rewrites the merged segments)."""
    import annvq

    with _user_errors():
        t = time.perf_counter()
        stats = annvq.compact(index_path, full=full)
        typer.echo(f"{index_path}: {len(annvq.load(index_path).segments)} segment(s); wrote {stats.files} file(s), "
                   f"{_human(stats.bytes)} in {time.perf_counter() - t:.1f} s")


@app.command()
def migrate(
    src: Annotated[Path, typer.Argument(help="single-file index written by annvq 0.1", show_default=False)],
    dst: Annotated[Path, typer.Argument(help="index directory to create", show_default=False)],
) -> None:
    """Convert an annvq 0.1 single-file index into the directory format (the old file is left as it is)."""
    import annvq

    with _user_errors():
        stats = annvq.migrate(src, dst)
        typer.echo(f"{dst}: {annvq.load(dst).ntotal} vectors, {_human(stats.bytes)}")


# --- bench and demo ------------------------------------------------------------------------------
def _parse_nprobe(text: str) -> list[int]:
    from .errors import InvalidInputError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise InvalidInputError(f"--nprobe {text!r}: expected positive integers separated by commas, e.g. 1,4,16")
    return values


def _evaluate(ds: Any, specs: list[str], nprobes: list[int], train_size: int, k: int = 100) -> Iterator[dict[str, Any]]:
    """Build every spec on ``ds`` and yield one result row per search setting (IVF: per nprobe, with
    and without re-ranking for Refine specs). Recall columns: 1-recall@R (true nearest neighbour in the
    top R) and 10-recall@10 (overlap of the top 10 with the true top 10)."""
    import annvq

    from .datasets import knn_recall, recall_at

    k = min(k, ds.train.shape[0])
    xt = ds.learn if ds.learn is not None else ds.train
    if xt.shape[0] > train_size:
        xt = xt[np.sort(np.random.default_rng(0).choice(xt.shape[0], train_size, replace=False))]
    nlat = min(200, ds.test.shape[0])
    for spec in specs:
        t = time.perf_counter()
        idx = annvq.index_factory(ds.train.shape[1], spec, metric=ds.metric)
        idx.train(xt)
        idx.add(ds.train)
        build_s = time.perf_counter() - t
        probes: list[Any] = nprobes if "nprobe" in idx.params_type.model_fields else [None]
        settings = [{"nprobe": p, "rerank": r} for r in ([False, True] if idx.rerank else [False]) for p in probes]
        for params in settings:
            idx.search(ds.test[:nlat], k, **params)  # warm-up (and JIT) outside the timing
            t = time.perf_counter()
            _, I = idx.search(ds.test, k, **params)
            elapsed = time.perf_counter() - t
            lat = []
            for q in ds.test[:nlat]:
                t = time.perf_counter()
                idx.search(q, k, **params)
                lat.append(time.perf_counter() - t)
            row = {"spec": spec, "nprobe": params["nprobe"] or "-", "rerank": params["rerank"],
                   "R@1": recall_at(I, ds.neighbors, 1), "R@10": recall_at(I, ds.neighbors, min(10, k)),
                   "R@100": recall_at(I, ds.neighbors, k), "10-recall@10": knn_recall(I, ds.neighbors, min(10, k)),
                   "qps": ds.test.shape[0] / elapsed, "p50_ms": 1e3 * float(np.median(lat)),
                   "build_s": build_s, "code_size": idx.code_size}
            yield row


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["spec", "nprobe", "rerank", "R@1", "R@10", "R@100", "10-recall@10", "qps", "p50_ms", "build_s"]
    fmt = {"R@1": "{:.3f}", "R@10": "{:.3f}", "R@100": "{:.3f}", "10-recall@10": "{:.3f}", "qps": "{:.0f}",
           "p50_ms": "{:.2f}", "build_s": "{:.1f}"}
    cells = [[fmt.get(c, "{}").format(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _run_bench(ds: Any, specs: list[str], nprobes: list[int], train_size: int, threads: int | None,
               json_out: Path | None) -> None:
    import numba

    if threads is not None:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    typer.echo(f"dataset {ds.name}: {ds.train.shape[0]} base, {ds.test.shape[0]} queries, d={ds.train.shape[1]}, "
               f"metric {ds.metric}; {numba.get_num_threads()} thread(s)", err=True)
    rows = []
    for row in _evaluate(ds, specs, nprobes, train_size):
        rows.append(row)
        typer.echo(f"  {row['spec']} nprobe={row['nprobe']} rerank={row['rerank']}: "
                   f"R@1={row['R@1']:.3f} ({row['qps']:.0f} QPS)", err=True)
    typer.echo(_table(rows))
    if json_out is not None:
        json_out.write_text(json.dumps({"dataset": ds.name, "rows": rows}, indent=2) + "\n")


BENCH_SPECS = ["IVF256,PQ16x8"]


@app.command()
def bench(
    dataset: Annotated[str, typer.Argument(
        help="'default' (built-in SIFT data), an ann-benchmarks .hdf5 file or a texmex directory", show_default=False)],
    index: Annotated[list[str] | None, typer.Option(
        "--index", "-i", help="index spec; repeat for several", show_default=",".join(BENCH_SPECS))] = None,
    nprobe: Annotated[str, typer.Option(help="comma-separated nprobe values for IVF indexes")] = "1,4,16,64",
    train_size: Annotated[int, typer.Option(
        min=1, help="most training vectors (learn set if the dataset has one)")] = 100_000,
    threads: Annotated[int | None, typer.Option(min=1, help="Numba threads (default: all cores)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the rows to this JSON file")] = None,
) -> None:
    """Build each index on DATASET and report recall (1-recall@1/10/100, 10-recall@10), QPS and latency.

    QPS is for the whole query batch; p50_ms is the median single-query latency.
    """
    from .datasets import load_dataset
    from .spec import as_spec

    with _user_errors():
        nprobes = _parse_nprobe(nprobe)
        specs = index or BENCH_SPECS
        for spec in specs:
            as_spec(spec)  # reject a bad spec before loading data
        _run_bench(load_dataset(dataset), specs, nprobes, train_size, threads, json_out)


DEMO_SPECS = ["IVF256,PQ16x8,Refine"]


@app.command()
def demo(
    n_base: Annotated[int | None, typer.Option(min=1, help="base vectors (default: the whole pool, ~110k)")] = None,
    nprobe: Annotated[str, typer.Option(help="comma-separated nprobe values")] = "1,4,16,64",
    threads: Annotated[int | None, typer.Option(min=1, help="Numba threads (default: all cores)")] = None,
) -> None:
    """Build an IVF-PQ index on the built-in SIFT data and print recall and speed, with and without re-ranking.

    The data are SIFT descriptors of scikit-image's sample photos, computed on first use (about a
    minute on two cores) and cached; nothing is downloaded.
    """
    from .datasets import load_default

    with _user_errors():
        nprobes = _parse_nprobe(nprobe)
        typer.echo("loading the built-in SIFT data (computed and cached on first use)...", err=True)
        ds = load_default(n_base=n_base)
        _run_bench(ds, DEMO_SPECS, nprobes, 100_000, threads, None)


# --- serve ---------------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(
        help="interface to listen on (default: $ANNVQ_HOST, else 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="TCP port (default: $ANNVQ_PORT, else 8000)")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="directory holding the service's indexes (default: $ANNVQ_DATA_DIR, else ./annvq-data)")] = None,
    api_key: Annotated[str | None, typer.Option(help="required API key (default: $ANNVQ_API_KEY, else none)")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler (tcp://host:8786) to serve sharded builds from (default: $ANNVQ_SCHEDULER, else none)",
    )] = None,
    replicas: Annotated[int | None, typer.Option(
        min=1, help="replicas per shard of a sharded index (default: $ANNVQ_REPLICAS, else 1)")] = None,
) -> None:
    """Start the REST service (needs the 'server' extra: fastapi, uvicorn). With --scheduler it also
    serves sharded builds ('annvq build --shards S') from that Dask cluster (needs the 'distributed' extra)."""
    try:
        from annvq_server.main import run
    except ImportError as exc:
        raise _fail(f"the REST service is not available ({exc}); install annvq[server]") from None
    with _user_errors():
        run(host, port, None if data_dir is None else str(data_dir), api_key, scheduler=scheduler, replicas=replicas)


@app.command()
def repair(
    index_dir: Annotated[Path, typer.Argument(metavar="DATA_DIR/INDEX", help="a service index's directory",
                                              show_default=False)],
) -> None:
    """Salvage a service index marked damaged (stop the service first): apply every readable logged
    operation after its last checkpoint, keep a copy of the original logs, report what was lost."""
    try:
        from annvq_server.durability import repair as repair_index
    except ImportError as exc:
        raise _fail(f"repair needs the service package ({exc}); install annvq[server]") from None
    with _user_errors():
        report = repair_index(index_dir)
        typer.echo(json.dumps(report.to_dict(), indent=2))


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"annvq {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """annvq: vector-quantization indexes for approximate nearest-neighbour search."""
