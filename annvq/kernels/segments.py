"""Growing-segment kernels: rows appended to per-list chains of fixed-size chunks, in O(batch).

A growing segment keeps its rows in an arena of chunks of ``chunk_rows`` slots. Every list owns a
chain of chunks (``head[l]`` the first, ``tail[l]`` the last, ``nxt[c]`` the next, -1 ending a chain)
and only the tail chunk of a list is partly filled (``fill[c]`` rows). A chunk is one extent in the
sense of :mod:`annvq.kernels.ivf`: rows ``c * chunk_rows .. c * chunk_rows + fill[c]``.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def chunks_needed(lists, tail, fill, chunk_rows):
    """How many new chunks :func:`append_rows` opens for rows of ``lists``."""
    room = np.full(tail.shape[0], -1, dtype=np.int64)  # free slots left in each list's tail; -1: not seen yet
    need = 0
    for i in range(lists.shape[0]):
        l = lists[i]
        if room[l] < 0:
            room[l] = chunk_rows - fill[tail[l]] if tail[l] >= 0 else 0
        if room[l] == 0:
            need += 1
            room[l] = chunk_rows
        room[l] -= 1
    return need


@njit(cache=True, nogil=True)
def append_rows(lists, head, tail, fill, nxt, nchunks, chunk_rows):
    """Slots for rows of ``lists`` appended in order to their lists' chains; returns ``(slots, nchunks)``.

    New chunks are taken from ``nchunks`` upward; the caller has made room for
    :func:`chunks_needed` of them.
    """
    slots = np.empty(lists.shape[0], dtype=np.int64)
    for i in range(lists.shape[0]):
        l = lists[i]
        t = tail[l]
        if t < 0 or fill[t] == chunk_rows:
            c = nchunks
            nchunks += 1
            fill[c] = 0
            nxt[c] = -1
            if t < 0:
                head[l] = c
            else:
                nxt[t] = c
            tail[l] = c
            t = c
        slots[i] = t * chunk_rows + fill[t]
        fill[t] += 1
    return slots, nchunks


@njit(cache=True, nogil=True)
def chain_order(head, fill, nxt, chunk_rows):
    """Slots of every row in list order and the list offsets: ``(slots, offsets)``, for sealing."""
    nlist = head.shape[0]
    total = 0
    for l in range(nlist):
        c = head[l]
        while c >= 0:
            total += fill[c]
            c = nxt[c]
    slots = np.empty(total, dtype=np.int64)
    offsets = np.zeros(nlist + 1, dtype=np.int64)
    pos = 0
    for l in range(nlist):
        c = head[l]
        while c >= 0:
            for j in range(fill[c]):
                slots[pos] = c * chunk_rows + j
                pos += 1
            c = nxt[c]
        offsets[l + 1] = pos
    return slots, offsets
