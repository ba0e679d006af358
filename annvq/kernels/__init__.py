"""Numerical kernels: pure functions over NumPy arrays (Numba ``@njit(cache=True)`` or BLAS).

Nothing here knows about codecs or indexes; codecs and indexes call these.
"""
from .adc import l2_tables, ip_tables, scan_topk, scan_topk_batch, heap_init, heap_scan, heap_sorted
from .assign import assign_l2, centroid_sums, sq_norms

__all__ = [
    "assign_l2",
    "centroid_sums",
    "sq_norms",
    "l2_tables",
    "ip_tables",
    "scan_topk",
    "scan_topk_batch",
    "heap_init",
    "heap_scan",
    "heap_sorted",
]
