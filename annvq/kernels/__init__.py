"""Numerical kernels: pure functions over NumPy arrays (Numba ``@njit(cache=True, nogil=True)`` or BLAS).

Nothing here knows about codecs or indexes; codecs and indexes call these. Every kernel releases the
GIL while it runs, as BLAS does, so the threads of a service (searches, adds, background merges) run
at once on several cores instead of taking turns.
"""
from .adc import admit, ip_tables, l2_tables, scan_codes, scan_topk_batch, select_k, topk_finish, topk_init
from .additive import code_gram, cross_terms, decode_sum, scatter_rows
from .assign import assign_l2, centroid_sums, nearest_subcodes, sq_norms
from .beam import beam_search
from .cq import icm_encode
from .ivf import best_k_by_id, best_k_stable, exact_distances, ivf_scan, tree_search

__all__ = [
    "assign_l2",
    "centroid_sums",
    "sq_norms",
    "nearest_subcodes",
    "l2_tables",
    "ip_tables",
    "admit",
    "scan_codes",
    "scan_topk_batch",
    "select_k",
    "topk_init",
    "topk_finish",
    "ivf_scan",
    "tree_search",
    "exact_distances",
    "best_k_stable",
    "best_k_by_id",
    "decode_sum",
    "scatter_rows",
    "code_gram",
    "cross_terms",
    "beam_search",
    "icm_encode",
]
