"""A default SIFT dataset that needs no download, and one entry point for every dataset source.

The descriptors are real 128-D SIFT descriptors (``skimage.feature.SIFT``) of the natural photos
scikit-image ships inside its wheel, each also rescaled and rotated so the pool passes 100k
descriptors. skimage already quantises descriptors the TEXMEX SIFT1M way (unit histogram x 512,
floored, clipped at 255, uint8; norms ~509 as in SIFT1M), so they are only cast to float32.
Extraction takes about a minute on two cores, so the pool is cached as ``.npy`` after first use.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import FormatError, InvalidInputError
from .annb import Dataset, annb_distances, load_annb
from .groundtruth import knn_groundtruth
from .texmex import PathLike, read_ivecs, read_vectors

# Natural photos that load from the scikit-image wheel without pooch (checked on 0.26); ``cat`` is
# ``chelsea`` again and ``retina``/``cell``/``clock`` cost seconds for a few hundred descriptors.
DEFAULT_IMAGES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "rocket", "text", "stereo_motorcycle",
)
# (scale, rotation in degrees) applied to every image; ~131k descriptors in total
VARIANTS: tuple[tuple[float, float], ...] = ((1.0, 0.0), (0.7, 0.0), (1.4, 0.0), (1.0, 30.0), (0.85, 60.0))
_SPLIT_SEED = 20240601
_CACHE_FORMAT = 1  # bump when the extraction recipe changes so stale caches are not reused


def _gray_image(name: str) -> np.ndarray:
    """A scikit-image sample photo as a 2-D float image in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
        img = img[0]
    return img_as_float(rgb2gray(img) if img.ndim == 3 else img)


def _crop_rotated(img: np.ndarray, angle: float) -> np.ndarray:
    """Largest centred crop with the image's aspect ratio lying wholly inside the rotated image.

    Rotating in place leaves blank corners whose edges would yield artificial keypoints.
    """
    h, w = img.shape
    c, s = abs(np.cos(np.deg2rad(angle))), abs(np.sin(np.deg2rad(angle)))
    f = min(w / (w * c + h * s), h / (w * s + h * c))
    hh, ww = int(h * f) - 4, int(w * f) - 4  # margin for interpolation at the border
    r0, c0 = (h - hh) // 2, (w - ww) // 2
    return img[r0 : r0 + hh, c0 : c0 + ww]


def _sift_job(job: tuple[str, float, float]) -> np.ndarray:
    """SIFT descriptors (uint8, (m, 128)) of one image at one scale and rotation."""
    from skimage.feature import SIFT
    from skimage.transform import rescale, rotate

    name, scale, angle = job
    img = _gray_image(name)
    if scale != 1.0:
        img = rescale(img, scale, anti_aliasing=scale < 1.0)
    if angle:
        img = _crop_rotated(rotate(img, angle), angle)
    sift = SIFT()
    sift.detect_and_extract(img)
    return sift.descriptors


def compute_descriptors(images: Sequence[str] = DEFAULT_IMAGES, workers: int | None = None) -> np.ndarray:
    """Extract the descriptor pool (uint8, (n, 128)) from ``images`` x ``VARIANTS``, exact duplicates removed.

    Runs ``workers`` processes (default: up to 2); results keep job order, so the pool is deterministic.
    """
    jobs = [(name, scale, angle) for scale, angle in VARIANTS for name in images]
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            parts = list(ex.map(_sift_job, jobs))
    else:
        parts = [_sift_job(job) for job in jobs]
    pool = np.ascontiguousarray(np.concatenate(parts))
    # duplicates would let a held-out query sit at distance 0 in the base; keep first occurrences
    _, first = np.unique(pool.view(f"V{pool.shape[1]}").ravel(), return_index=True)
    return pool[np.sort(first)]


def default_cache_dir() -> Path:
    """``$ANNVQ_CACHE`` if set, else ``~/.cache/annvq``."""
    return Path(os.environ.get("ANNVQ_CACHE") or Path.home() / ".cache" / "annvq")


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as .npy so readers never see a partial file (temp file, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def default_descriptors(images: Sequence[str] | None = None, cache_dir: PathLike | None = None,
                        workers: int | None = None) -> np.ndarray:
    """The descriptor pool (uint8, (n, 128)), computed on first use and then read from the cache."""
    try:
        import skimage
    except ImportError:
        from ..errors import AnnvqError

        raise AnnvqError("the built-in SIFT data are computed from scikit-image's sample photos: "
                         "install annvq[demo] (pip install 'annvq[demo]')") from None

    images = tuple(DEFAULT_IMAGES if images is None else images)
    key = repr((_CACHE_FORMAT, images, VARIANTS, skimage.__version__))
    path = Path(cache_dir or default_cache_dir()) / f"sift_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy"
    if not path.exists():
        _save_atomic(path, compute_descriptors(images, workers))
    try:
        pool = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise FormatError(f"{path}: unreadable descriptor cache ({exc}); delete it to recompute") from None
    if pool.dtype != np.uint8 or pool.ndim != 2 or pool.shape[1] != 128:
        raise FormatError(f"{path}: descriptor cache holds {pool.dtype} {pool.shape}, "
                          "expected uint8 (n, 128); delete it")
    return pool


def load_default(n_base: int | None = None, n_query: int = 1000, n_learn: int = 20_000, k: int = 100,
                 cache_dir: PathLike | None = None, images: Sequence[str] | None = None,
                 workers: int | None = None) -> Dataset:
    """The default SIFT dataset: disjoint base/query/learn splits of the pool and exact L2 top-``k``.

    Queries and learn vectors are held out from the pool with a fixed seed (never in the base);
    ``n_base=None`` puts every remaining descriptor in the base. ``images`` picks a subset of the
    photos (tests use a small one); ``distances`` are Euclidean, as in ann-benchmarks files.
    """
    pool = default_descriptors(images, cache_dir, workers)
    n_base = pool.shape[0] - n_query - n_learn if n_base is None else n_base
    if n_query < 1 or n_learn < 0 or n_base < 1 or n_query + n_learn + n_base > pool.shape[0]:
        raise InvalidInputError(
            f"n_query={n_query}, n_learn={n_learn}, n_base={n_base} must be positive (learn may be 0) "
            f"and fit in the {pool.shape[0]} descriptors of the pool"
        )
    perm = np.random.default_rng(_SPLIT_SEED).permutation(pool.shape[0])
    cuts = np.cumsum([n_query, n_learn, n_base])
    test, learn, train = (pool[np.sort(part)].astype(np.float32) for part in np.split(perm[: cuts[-1]], cuts[:2]))
    D, I = knn_groundtruth(train, test, min(k, n_base))
    return Dataset("default", train, test, I, annb_distances(D, "l2"), "l2", learn if n_learn else None)


def _texmex_file(folder: Path, role: str, exts: tuple[str, ...]) -> Path | None:
    """The single ``*_<role>.<ext>`` file in ``folder``, None if absent; several is an error."""
    hits = sorted(p for ext in exts for p in folder.glob(f"*_{role}{ext}"))
    if len(hits) > 1:
        raise FormatError(f"{folder}: several {role} files, cannot choose: {', '.join(p.name for p in hits)}")
    return hits[0] if hits else None


def _with_groundtruth(ds: Dataset, k: int = 100) -> Dataset:
    """Fill in exact neighbours and distances when the source shipped none."""
    if ds.neighbors is None:
        D, ds.neighbors = knn_groundtruth(ds.train, ds.test, min(k, ds.train.shape[0]), ds.metric)
        ds.distances = annb_distances(D, ds.metric)
    return ds


def _load_texmex_dir(folder: Path) -> Dataset:
    """A TEXMEX directory: ``*_base`` and ``*_query`` (.fvecs/.bvecs), optional ``*_learn`` and
    ``*_groundtruth.ivecs``."""
    vec_exts = (".fvecs", ".bvecs")
    base, query = _texmex_file(folder, "base", vec_exts), _texmex_file(folder, "query", vec_exts)
    if base is None or query is None:
        missing = [name for name, p in (("*_base.fvecs/.bvecs", base), ("*_query.fvecs/.bvecs", query)) if p is None]
        raise FormatError(f"{folder}: not a texmex dataset directory, missing {' and '.join(missing)}")
    learn, gt = _texmex_file(folder, "learn", vec_exts), _texmex_file(folder, "groundtruth", (".ivecs",))
    train = np.asarray(read_vectors(base), dtype=np.float32)
    test = np.asarray(read_vectors(query), dtype=np.float32)
    if test.shape[1] != train.shape[1]:
        raise FormatError(f"{folder}: queries have d={test.shape[1]} but base vectors d={train.shape[1]}")
    neighbors = None
    if gt is not None:
        neighbors = read_ivecs(gt).astype(np.int64)
        if neighbors.shape[0] != test.shape[0] or neighbors.min() < 0 or neighbors.max() >= train.shape[0]:
            raise FormatError(f"{gt}: ground truth {neighbors.shape} does not match {test.shape[0]} queries "
                              f"over {train.shape[0]} base vectors")
    ds = Dataset(folder.name, train, test, neighbors, None, "l2",
                 None if learn is None else np.asarray(read_vectors(learn), dtype=np.float32))
    return _with_groundtruth(ds)


def load_dataset(name_or_path: PathLike) -> Dataset:
    """``"default"``, an ann-benchmarks HDF5 file or a TEXMEX directory, with ground truth computed if absent."""
    if str(name_or_path) == "default":
        return load_default()
    path = Path(name_or_path)
    if path.is_dir():
        return _load_texmex_dir(path)
    if path.suffix.lower() in (".hdf5", ".h5") and path.is_file():
        return _with_groundtruth(load_annb(path))
    raise InvalidInputError(f"unknown dataset {str(name_or_path)!r}: "
                            "expected 'default', an .hdf5 file or a texmex directory")
