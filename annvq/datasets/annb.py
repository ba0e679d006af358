"""ann-benchmarks HDF5 datasets and the :class:`Dataset` container every loader returns.

An ann-benchmarks file holds ``train`` (base), ``test`` (queries), ``neighbors`` and ``distances``
(exact top-k, nearest first) and an attribute ``distance`` naming the metric. ``Dataset.distances``
keeps the ann-benchmarks convention so files round-trip unchanged: Euclidean distance (not squared)
for ``l2``, ``1 - cos`` for ``cosine``, the inner product for ``ip``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .._validate import as_vectors, check_metric
from ..errors import FormatError, InvalidInputError

PathLike = str | os.PathLike

# annvq metric name -> the ann-benchmarks ``distance`` attribute
_ANNB_DISTANCE = {"l2": "euclidean", "ip": "dot", "cosine": "angular"}


@dataclass
class Dataset:
    """Base vectors, queries and their exact neighbours: what a benchmark needs.

    ``neighbors`` are int64 row indices into ``train`` (nearest first), ``distances`` float32 in
    the ann-benchmarks convention (see module docstring); either may be None when not known.
    ``learn`` is an optional separate training split for codebooks.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    neighbors: np.ndarray | None
    distances: np.ndarray | None
    metric: str
    learn: np.ndarray | None = None


def annb_distances(D: np.ndarray, metric: str) -> np.ndarray:
    """Convert ``knn_groundtruth`` output (squared L2 / similarities) to the ann-benchmarks convention."""
    metric = check_metric(metric)
    D = np.asarray(D, dtype=np.float32)
    if metric == "l2":
        return np.sqrt(np.maximum(D, 0))
    if metric == "cosine":
        return 1 - D
    return D


def _open_hdf5(path: PathLike) -> h5py.File:
    """Open an HDF5 file read-only; a file that exists but is not HDF5 raises FormatError."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FormatError(f"{path}: not a readable HDF5 file ({exc})") from None


def load_annb(path: PathLike) -> Dataset:
    """Read an ann-benchmarks HDF5 file fully into memory.

    ``train`` and ``test`` are required, ``neighbors``/``distances`` optional; the ``distance``
    attribute picks the metric. Anything missing or inconsistent raises FormatError.
    """
    with _open_hdf5(path) as f:
        missing = [k for k in ("train", "test") if k not in f]
        if "distance" not in f.attrs:
            missing.append("attribute 'distance'")
        if missing:
            raise FormatError(f"{path}: not an ann-benchmarks file, missing {', '.join(missing)}")
        try:
            metric = check_metric(f.attrs["distance"])
        except InvalidInputError:
            raise FormatError(
                f"{path}: unsupported distance {f.attrs['distance']!r} (need euclidean, dot or angular)"
            ) from None
        train = np.asarray(f["train"][()], dtype=np.float32)
        test = np.asarray(f["test"][()], dtype=np.float32)
        neighbors = np.asarray(f["neighbors"][()], dtype=np.int64) if "neighbors" in f else None
        distances = np.asarray(f["distances"][()], dtype=np.float32) if "distances" in f else None
        dim = f.attrs.get("dimension")
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise FormatError(f"{path}: train {train.shape} and test {test.shape} are not (n, d) arrays of one dimension")
    if dim is not None and int(dim) != train.shape[1]:
        raise FormatError(f"{path}: attribute dimension={int(dim)} but train has d={train.shape[1]}")
    for key, arr in (("neighbors", neighbors), ("distances", distances)):
        if arr is not None and (arr.ndim != 2 or arr.shape[0] != test.shape[0]):
            raise FormatError(f"{path}: {key} has shape {arr.shape}, expected ({test.shape[0]}, k)")
    if neighbors is not None and neighbors.size and (neighbors.min() < 0 or neighbors.max() >= train.shape[0]):
        raise FormatError(f"{path}: neighbors hold row indices outside [0, {train.shape[0]})")
    return Dataset(Path(path).stem, train, test, neighbors, distances, metric)


def save_annb(path: PathLike, train, test, neighbors, distances, distance: str = "euclidean") -> None:
    """Write an ann-benchmarks HDF5 file; ``distances`` must already be in the file convention."""
    metric = check_metric(distance)
    train = as_vectors(train, name="train")
    test = as_vectors(test, train.shape[1], name="test")
    neighbors = np.asarray(neighbors)
    distances = np.asarray(distances, dtype=np.float32)
    if neighbors.dtype.kind not in "iu":
        raise InvalidInputError(f"neighbors: expected integer row indices, got dtype {neighbors.dtype}")
    if neighbors.ndim != 2 or neighbors.shape[0] != test.shape[0] or distances.shape != neighbors.shape:
        raise InvalidInputError(
            f"neighbors {neighbors.shape} and distances {distances.shape} must both be ({test.shape[0]}, k)"
        )
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = _ANNB_DISTANCE[metric]
        f.attrs["dimension"] = train.shape[1]
        f.attrs["point_type"] = "float"
        f.create_dataset("train", data=train)
        f.create_dataset("test", data=test)
        f.create_dataset("neighbors", data=neighbors.astype(np.int32))
        f.create_dataset("distances", data=distances)
