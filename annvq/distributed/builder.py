"""Distributed build on Dask: sample, train once, encode row ranges in parallel, merge into shards, publish.

Every step that touches data runs on the workers, which read the input files themselves from
shared storage; the client only plans and watches (nothing but row numbers and small summaries
travels through it).

1. *Sample.* One task per row range draws its share of a uniform sample of ``train_size`` rows.
2. *Train.* One task gathers the sample, trains the index and saves the trained, empty index to
   ``<out>/model``: that directory is the broadcast; every later task loads it by path (once per
   worker process) and checks its fingerprint.
3. *Encode.* One task per row range of every source (fvecs, bvecs, npy memory-mapped, HDF5 'train')
   encodes its rows (ids: the row's position over all sources, unless given) and writes a part:
   an index directory with one segment per physical shard (segment id = shard + 1). The virtual
   shard of a row is splitmix64(id) mod V (layout "ids"), or its inverted list (layout "lists", for
   split-by-list routing); virtual shards go to physical ones by contiguous blocks, or lists by
   their sizes over the training sample, largest first, to the least loaded shard.
4. *Merge.* One task per physical shard concatenates its segments of every part
   (:func:`annvq.storage.concat`, no re-encoding) into ``<out>/shard-<s>``.
5. *Publish.* ``<out>/index.json`` is written atomically; the parts are then deleted.

A rerun of the same build skips the model, parts and shards already written and verified (each
carries the build's parameters and the model fingerprint in its manifest metadata), so an
interrupted build resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from .._validate import all_unique
from ..errors import (
    AnnvqError,
    DimensionError,
    FormatError,
    InvalidInputError,
    SpecError,
)
from ..index.base import BaseIndex, positive_int
from ..index.fastscan import FastScanLists
from ..index.ivf import IVFIndex
from ..spec import as_spec, index_factory
from .hashing import virtual_shard
from .manifest import (
    MANIFEST_NAME,
    ShardedManifest,
    ShardEntry,
    directory_checksum,
    read_manifest,
    write_manifest,
)

READ_ROWS = 65536  # rows read and encoded at a time inside a task
_SAMPLE_GAP = 256  # sampled rows closer than this are read with one contiguous read
_MODELS: dict[tuple[str, str], BaseIndex] = {}  # per worker process: trained models by (path, fingerprint)


def build(client: Any, sources: str | os.PathLike | Sequence[str | os.PathLike], spec: str | None,
          out: str | os.PathLike, *, shards: int = 1, virtual_shards: int = 256, metric: str | None = None,
          ids: Sequence[Any] | None = None, learn: str | os.PathLike | None = None, train_size: int = 100_000,
          chunk_rows: int = 262_144, seed: int = 0, layout: str = "ids", model: str | os.PathLike | None = None,
          progress: bool = True, keep_parts: bool = False, force: bool = False) -> ShardedManifest:
    """Build a sharded index of ``sources`` on the Dask cluster of ``client`` into directory ``out``.

    ``sources``: vector files (.fvecs, .bvecs, .npy, ann-benchmarks .hdf5) on storage every worker
    sees. ``ids``: one entry per source, an int64 array or the path of a .npy file of ids (default:
    each row's position over all sources). ``shards`` physical shards receive ``virtual_shards``
    virtual ones each by contiguous blocks; ``layout="lists"`` places vectors by inverted list
    instead (IVF only; see :class:`~annvq.distributed.ShardedIndex`'s ``route``). The sample of
    ``train_size`` rows comes from ``learn`` when given. Tasks encode at most ``chunk_rows`` rows each, in
    equal shares whose number is a multiple of the cluster's threads.
    ``model``: a trained index directory (say, the ``model`` of an earlier build) to encode with
    instead of training one; its spec and metric apply (``spec`` and ``metric`` may be None).
    ``metric`` defaults to "l2".

    Reruns resume (see the module docstring); ``force`` first deletes a previous build at ``out``.
    Returns the published manifest.
    """
    srcs = [str(Path(p).absolute()) for p in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    if not srcs:
        raise InvalidInputError("build: no input files given")
    shards = positive_int(shards, "shards")
    virtual_shards = positive_int(virtual_shards, "virtual_shards")
    train_size, chunk_rows = positive_int(train_size, "train_size"), positive_int(chunk_rows, "chunk_rows")
    if layout not in ("ids", "lists"):
        raise InvalidInputError(f"layout must be 'ids' or 'lists', got {layout!r}")
    out = Path(out).absolute()
    given = None
    if model is not None:
        model = str(Path(model).absolute())
        given = client.submit(_describe_model, model, pure=False).result()
        if spec is not None and as_spec(spec).to_string() != given["spec"]:
            raise SpecError(f"spec {spec} differs from the spec {given['spec']} of the model at {model}")
        if metric is not None and metric != given["metric"]:
            raise InvalidInputError(f"metric {metric} differs from the metric {given['metric']} of the model at "
                                    f"{model}")
        spec, metric = given["spec"], given["metric"]
    if spec is None:
        raise SpecError("build: an index spec (or a trained model) is required")
    spec_s = as_spec(spec).to_string()
    shapes = client.gather([client.submit(_probe, p, pure=False) for p in srcs])
    dims = {d for _, d in shapes}
    if len(dims) != 1:
        raise DimensionError(f"build: input files have different dimensions {sorted(dims)}: "
                             f"{', '.join(f'{p} (d={d})' for p, (_, d) in zip(srcs, shapes))}")
    d = dims.pop()
    if given is not None and given["d"] != d:
        raise DimensionError(f"build: the input files have d={d}, the model at {model} d={given['d']}")
    model0 = index_factory(d, spec_s, metric or "l2")  # checks spec, metric and d before any work
    if layout == "lists":
        if model0.nlist == 1:
            raise InvalidInputError(f"layout 'lists' needs an IVF index; {spec_s} has no inverted lists")
        virtual_shards = model0.nlist
    if shards > virtual_shards:
        raise InvalidInputError(f"shards={shards} is more than virtual_shards={virtual_shards}")
    counts = [n for n, _ in shapes]
    id_args = _id_arguments(ids, srcs, counts)
    learn_s = None if learn is None else str(Path(learn).absolute())
    params = {"sources": srcs, "rows": counts, "d": d, "spec": spec_s, "metric": model0.metric,
              "shards": shards, "virtual_shards": virtual_shards, "layout": layout, "train_size": train_size,
              "chunk_rows": chunk_rows, "seed": seed, "learn": learn_s, "ids": _ids_digest(id_args),
              "model": None if given is None else given["fingerprint"]}
    done = client.submit(_prepare_out, str(out), params, force, pure=False).result()
    if done is not None:
        return ShardedManifest.model_validate(done)
    if given is not None:
        fingerprint, hist = client.submit(_import_model, str(out), model, _key(params), pure=False).result()
    else:
        fingerprint, hist = _train(client, out, params, srcs, counts, learn_s)
    vmap = _vshard_map(virtual_shards, shards, None if layout == "ids" else np.asarray(hist))
    vmap_f = client.scatter(vmap, broadcast=True)
    ranges = _row_ranges(counts, chunk_rows, sum(client.nthreads().values()))
    bases = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    futures = []
    for c, (s, a, b) in enumerate(ranges):
        ids_arg = _slice_ids(id_args[s], a, b) if id_args[s] is not None else int(bases[s] + a)
        futures.append(client.submit(_encode_part, str(out), fingerprint, srcs[s], a, b, ids_arg, vmap_f,
                                     layout, f"p{c:06d}", _key(params), pure=False))
    parts = [x["part"] for x in _follow(client, futures, sum(counts), progress)]
    merges = [client.submit(_merge_shard, str(out), fingerprint, parts, s, f"shard-{s:03d}", _key(params),
                            pure=False) for s in range(shards)]
    entries = client.gather(merges)
    manifest = ShardedManifest(spec=spec_s, d=d, metric=model0.metric, fingerprint=fingerprint, layout=layout,
                               virtual_shards=virtual_shards, vshard_to_shard=[int(s) for s in vmap],
                               shards=[ShardEntry(**e) for e in entries], build=params)
    if manifest.ntotal != sum(counts):
        raise FormatError(f"build: the shards hold {manifest.ntotal} vectors, the inputs {sum(counts)} rows")
    client.submit(_publish, str(out), manifest.model_dump(), keep_parts, pure=False).result()
    return manifest


# --- planning helpers (client side) -------------------------------------------------------------
def _row_ranges(counts: list[int], chunk_rows: int, threads: int) -> list[tuple[int, int, int]]:
    """``(source, start, stop)`` of every encode task: rows cut into equal ranges of at most ``chunk_rows``,
    as many as a multiple of the cluster's ``threads``, so that no thread idles while another encodes a
    last, odd range."""
    total, threads = sum(counts), max(1, threads)
    tasks = -(-total // chunk_rows // threads) * threads
    size = max(1, -(-total // tasks)) if tasks else 1
    return [(s, a, min(a + size, n)) for s, n in enumerate(counts) for a in range(0, n, size)]


def _id_arguments(ids: Sequence[Any] | None, srcs: list[str], counts: list[int]) -> list[Any]:
    """Per source: None (row positions), an int64 array, or the absolute path of a .npy file of ids."""
    if ids is None:
        return [None] * len(srcs)
    if isinstance(ids, (str, os.PathLike, np.ndarray)) and len(srcs) == 1:
        ids = [ids]
    if len(ids) != len(srcs):
        raise InvalidInputError(f"ids: {len(ids)} entries for {len(srcs)} input files (give one per file)")
    out: list[Any] = []
    for given, n, src in zip(ids, counts, srcs):
        if isinstance(given, (str, os.PathLike)):
            out.append(str(Path(given).absolute()))
            continue
        arr = np.asarray(given)
        if arr.ndim != 1 or arr.shape[0] != n or (arr.size and arr.dtype.kind not in "iu"):
            raise InvalidInputError(f"ids for {src}: expected {n} integer ids, got {arr.dtype} of shape {arr.shape}")
        arr = arr.astype(np.int64)
        if arr.size and arr.min() < 0:
            raise InvalidInputError(f"ids for {src}: must be non-negative")
        out.append(arr)
    arrays = [a for a in out if isinstance(a, np.ndarray)]
    if len(arrays) == len(out):
        every = np.concatenate(arrays)
        if not all_unique(every):
            raise InvalidInputError("ids: the same id is given to more than one vector")
    return out


def _ids_digest(id_args: list[Any]) -> list[str | None]:
    """A short fingerprint of the ids given per source (for resuming only a build with the same ids)."""
    return [None if a is None else a if isinstance(a, str)
            else hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16] for a in id_args]


def _slice_ids(arg: Any, a: int, b: int) -> Any:
    return arg[a:b] if isinstance(arg, np.ndarray) else (arg, a, b)


def _key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:24]


def _vshard_map(V: int, shards: int, sizes: np.ndarray | None) -> np.ndarray:
    """Physical shard of each virtual shard: contiguous blocks; or, given the (estimated) ``sizes`` of
    inverted lists, the largest lists first, each to the shard holding the fewest vectors so far."""
    if sizes is None:
        return (np.arange(V) * shards) // V
    counts = sizes
    out = np.zeros(V, dtype=np.int64)
    load = np.zeros(shards, dtype=np.int64)
    for v in np.argsort(-counts, kind="stable"):
        s = int(np.argmin(load))
        out[v] = s
        load[s] += counts[v]
    return out


def _train(client: Any, out: Path, params: dict[str, Any], srcs: list[str], counts: list[int],
           learn: str | None) -> tuple[str, list[int] | None]:
    """Fingerprint of the trained model at ``out/model`` and its inverted lists' sizes over the training
    sample (None for a flat index), training it first unless a verified one exists."""
    done = client.submit(_existing_model, str(out), _key(params), pure=False).result()
    if done is not None:
        return done
    if learn is not None:
        files, sizes = [learn], client.gather([client.submit(_probe, learn, pure=False)])
        sizes = [n for n, _ in sizes]
    else:
        files, sizes = srcs, counts
    total = sum(sizes)
    size = min(params["train_size"], total)
    rows = np.sort(np.random.default_rng(params["seed"]).choice(total, size, replace=False))
    bases = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    step = params["chunk_rows"]
    samples = []
    for s, (f, n) in enumerate(zip(files, sizes)):
        for a in range(0, n, step):
            sel = rows[(rows >= bases[s] + a) & (rows < bases[s] + min(a + step, n))] - bases[s]
            if sel.size:
                samples.append(client.submit(_sample, f, sel, pure=False))
    return client.submit(_train_model, str(out), params["spec"], params["d"], params["metric"], _key(params),
                         *samples, pure=False).result()


def _follow(client: Any, futures: list[Any], total: int, progress: bool) -> list[dict[str, Any]]:
    """Results of the encode tasks in submission order, with a progress bar over rows as they finish."""
    from distributed import as_completed
    from tqdm import tqdm

    results: dict[str, dict[str, Any]] = {}
    with tqdm(total=total, unit="vec", unit_scale=True, disable=not progress, file=sys.stderr,
              desc="encode") as bar:
        try:
            for fut in as_completed(futures):
                res = fut.result()
                results[fut.key] = res
                bar.update(res["rows"])
        except BaseException:
            client.cancel(futures)
            raise
    return [results[f.key] for f in futures]


# --- tasks (run on workers) ---------------------------------------------------------------------
def _vector_file(path: str) -> Any:
    from ..cli import VectorFile

    return VectorFile(Path(path))


def _probe(path: str) -> tuple[int, int]:
    """``(rows, d)`` of a vector file."""
    vf = _vector_file(path)
    try:
        return int(vf.n), int(vf.d)
    finally:
        vf.close()


def _sample(path: str, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted) of a vector file; runs of nearby rows are read with one contiguous read each."""
    vf = _vector_file(path)
    try:
        cut = np.flatnonzero(np.diff(rows) > _SAMPLE_GAP) + 1
        parts = []
        for run in np.split(rows, cut):
            a = int(run[0])
            parts.append(vf.read(a, int(run[-1]) - a + 1)[run - a])
        return np.concatenate(parts)
    finally:
        vf.close()


def _tmp_dir(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")


def _publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place (atomic rename; a stale one is replaced)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    storage.fsync_dir(final.parent)


def _verified(path: Path, key: str, fingerprint: str | None = None) -> BaseIndex | None:
    """The index at ``path`` when it loads and was written by this build (``key``) with this model."""
    try:
        index = storage.load(path)
    except (AnnvqError, OSError):
        return None
    if index.storage.metadata.get("build") != key:
        return None
    if fingerprint is not None and (not index.is_trained or index.fingerprint() != fingerprint):
        return None
    return index


def _prepare_out(out: str, params: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """Get ``out`` ready for this build; returns the manifest when the same build is already published."""
    root = Path(out)
    is_build = (root / MANIFEST_NAME).is_file() or (root / "build.json").is_file()
    if root.exists() and force:
        if not is_build and any(root.iterdir()):
            raise InvalidInputError(f"{root}: not a sharded build directory; force only replaces one")
        shutil.rmtree(root)
    elif (root / MANIFEST_NAME).is_file():
        m = read_manifest(root)
        if m.build != params:
            raise InvalidInputError(f"{root}: holds another build ({m.spec}, {m.ntotal} vectors); pass force to "
                                    "replace it")
        return m.model_dump()
    elif (root / "build.json").is_file():
        if json.loads((root / "build.json").read_text()) != params:
            raise InvalidInputError(f"{root}: an interrupted build with other parameters; pass force to replace it")
    elif root.exists() and any(root.iterdir()):
        raise InvalidInputError(f"{root}: exists and is not empty; choose another directory")
    root.mkdir(parents=True, exist_ok=True)
    with storage.atomic_path(root / "build.json") as tmp:
        tmp.write_text(json.dumps(params, sort_keys=True))
    return None


def _existing_model(out: str, key: str) -> tuple[str, list[int] | None] | None:
    index = _verified(Path(out) / "model", key)
    if index is None or not index.is_trained:
        return None
    return index.fingerprint(), index.storage.metadata.get("list_sizes")


def _train_model(out: str, spec: str, d: int, metric: str, key: str, *samples: np.ndarray
                 ) -> tuple[str, list[int] | None]:
    """Train on the gathered sample and save the trained, empty index to ``out/model``; returns its
    fingerprint and how the sample falls into its inverted lists (None for a flat index)."""
    index = index_factory(d, spec, metric)
    x = index.prepare(np.concatenate(samples))
    index.train(x)
    sizes = None
    if isinstance(index, IVFIndex) and index.nlist > 1:
        sizes = np.bincount(index.coarse.assign(x), minlength=index.nlist).tolist()
    final = Path(out) / "model"
    tmp = _tmp_dir(final)
    storage.save(index, tmp, metadata={"build": key, "list_sizes": sizes})
    _publish_dir(tmp, final)
    return index.fingerprint(), sizes


def _describe_model(path: str) -> dict[str, Any]:
    index = storage.load(path)
    if not index.is_trained:
        raise InvalidInputError(f"{path}: the model must be a trained index")
    return {"spec": as_spec(index.spec).to_string() if index.spec else None, "metric": index.metric, "d": index.d,
            "fingerprint": index.fingerprint()}


def _import_model(out: str, path: str, key: str) -> tuple[str, list[int] | None]:
    """Store the trained model at ``path`` (without its vectors) as the build's ``out/model``."""
    index = storage.load(path)
    sizes = index.list_sizes().tolist() if isinstance(index, IVFIndex) and index.nlist > 1 and index.ntotal else None
    empty = BaseIndex.from_state(*index.model_state())
    final = Path(out) / "model"
    tmp = _tmp_dir(final)
    storage.save(empty, tmp, metadata={"build": key, "list_sizes": sizes})
    _publish_dir(tmp, final)
    return empty.fingerprint(), sizes


def _model(out: str, fingerprint: str) -> BaseIndex:
    """The build's trained model, loaded once per worker process and checked against ``fingerprint``."""
    path = str(Path(out) / "model")
    model = _MODELS.get((path, fingerprint))
    if model is None:
        model = storage.load(path)
        if not model.is_trained or model.fingerprint() != fingerprint:
            raise FormatError(f"{path}: holds another model than the build trained (fingerprint differs)")
        _MODELS[(path, fingerprint)] = model
    return model


def _read_ids(arg: Any, start: int, count: int, s: int) -> np.ndarray:
    """Ids of rows ``s .. s+count`` of a task whose rows start at ``start``."""
    if isinstance(arg, int):
        return np.arange(arg + s - start, arg + s - start + count, dtype=np.int64)
    if isinstance(arg, np.ndarray):
        return arg[s - start : s - start + count]
    path, a, b = arg
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InvalidInputError(f"{path}: expected a 1-D array of integer ids, got {arr.dtype} {arr.shape}")
    if arr.shape[0] < b:
        raise InvalidInputError(f"{path}: {arr.shape[0]} ids for at least {b} vectors")
    return np.asarray(arr[a + s - start : a + s - start + count], dtype=np.int64)


def _encode_part(out: str, fingerprint: str, src: str, start: int, stop: int, ids_arg: Any, vmap: np.ndarray,
                 layout: str, name: str, key: str) -> dict[str, Any]:
    """Encode rows ``start .. stop`` of ``src`` into part ``name``: one segment per physical shard
    (segment id = shard + 1) holding the rows of the virtual shards ``vmap`` gives it."""
    final = Path(out) / "parts" / name
    meta = {"build": key, "source": src, "start": start, "stop": stop}
    done = _verified(final, key, fingerprint)
    if done is not None and all(done.storage.metadata.get(k) == v for k, v in meta.items()):
        return {"part": name, "rows": stop - start}
    model = _model(out, fingerprint)
    enc = BaseIndex.from_state(*model.model_state())
    enc.auto_compact = False
    enc.seal_rows = max(1, stop - start)
    vf = _vector_file(src)
    try:
        for s in range(start, stop, READ_ROWS):
            x = vf.read(s, min(READ_ROWS, stop - s))
            enc.add(x, _read_ids(ids_arg, start, x.shape[0], s))
    finally:
        vf.close()
    enc.seal()
    part = BaseIndex.from_state(*model.model_state())
    segments = []
    if enc.segments:
        (seg,) = enc.segments
        lists = seg.lists()
        owner = vmap[virtual_shard(seg.ids, vmap.shape[0]) if layout == "ids" else lists]
        for sh in np.unique(owner):
            rows = np.flatnonzero(owner == sh)  # still in list order
            offsets = np.concatenate([[0], np.cumsum(np.bincount(lists[rows], minlength=part.nlist))]).astype(np.int64)
            cols: dict[str, Any] = {"ids": seg.ids[rows], "offsets": offsets}
            codes = seg.codes_at(rows)
            if part.fast_scan:
                cols["packed"] = FastScanLists.from_codes(codes, offsets).packed
            else:
                cols["codes"] = codes
            if seg.norms is not None:
                cols["norms"] = seg.norms[rows]
            if seg.vectors is not None:
                cols["vectors"] = seg.vectors.read(rows)
            segments.append(part.segment_from_columns(int(sh) + 1, cols, np.empty(0, np.int64)))
    part.set_segments(segments, int(vmap.max()) + 2, enc.next_id)
    part.auto_compact = False
    tmp = _tmp_dir(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    storage.save(part, tmp, metadata=meta)
    _publish_dir(tmp, final)
    return {"part": name, "rows": stop - start}


def _merge_shard(out: str, fingerprint: str, parts: list[str], shard: int, name: str, key: str) -> dict[str, Any]:
    """Concatenate the segments of shard ``shard`` of every part into shard directory ``out/name``."""
    root = Path(out)
    final = root / name
    part_sums = {p: directory_checksum(root / "parts" / p) for p in parts}
    meta = {"build": key, "shard": shard, "parts": part_sums, "lsn": 0}
    done = _verified(final, key, fingerprint)
    if done is None or any(done.storage.metadata.get(k) != v for k, v in meta.items()):
        tmp = _tmp_dir(final)
        storage.concat([root / "parts" / p for p in parts], tmp, select=lambda _, e: e["id"] == shard + 1,
                       metadata=meta)
        _publish_dir(tmp, final)
    ntotal = storage.IndexDirectory(final).read_manifest()["ntotal"]  # concat verified every row it read
    return {"path": name, "ntotal": ntotal, "checksum": directory_checksum(final), "lsn": 0}


def _publish(out: str, manifest: dict[str, Any], keep_parts: bool) -> None:
    root = Path(out)
    write_manifest(root, ShardedManifest.model_validate(manifest))
    if not keep_parts:
        shutil.rmtree(root / "parts", ignore_errors=True)
    (root / "build.json").unlink(missing_ok=True)
    storage.fsync_dir(root)
