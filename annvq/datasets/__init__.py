"""Datasets for benchmarking: TEXMEX/ann-benchmarks file formats, exact ground truth, recall, and
an embedded SIFT dataset computed from scikit-image's sample photos (no download needed)."""
from .annb import Dataset, annb_distances, load_annb, save_annb
from .default import compute_descriptors, default_cache_dir, default_descriptors, load_dataset, load_default
from .groundtruth import knn_groundtruth, knn_recall, mse, recall_at
from .synthetic import make_correlated, make_embeddings, split_queries
from .texmex import (
    count_vecs,
    iter_vecs,
    read_bvecs,
    read_fvecs,
    read_ivecs,
    read_vectors,
    write_bvecs,
    write_fvecs,
    write_ivecs,
)

__all__ = [
    "Dataset",
    "annb_distances",
    "compute_descriptors",
    "count_vecs",
    "default_cache_dir",
    "default_descriptors",
    "iter_vecs",
    "knn_groundtruth",
    "knn_recall",
    "load_annb",
    "load_dataset",
    "load_default",
    "make_correlated",
    "make_embeddings",
    "mse",
    "read_bvecs",
    "read_fvecs",
    "read_ivecs",
    "read_vectors",
    "recall_at",
    "save_annb",
    "split_queries",
    "write_bvecs",
    "write_fvecs",
    "write_ivecs",
]
