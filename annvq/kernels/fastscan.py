"""4-bit fast-scan: PQ codes packed in blocks of 32 vectors, uint8 lookup tables, SIMD byte shuffles.

A 4-bit code indexes a 16-entry table, which fits one 128-bit lane of a byte-shuffle instruction
(``vpshufb``, NEON ``tbl``): one instruction looks up 16 codes at once. Tables are quantised to uint8
and sums accumulate in uint16 lanes.

**Packed layout.** ``M`` sub-codes per vector, padded to an even ``Mp`` (a zero code with a zero table).
Rows are grouped in lists (flat = one list); list ``l`` holds rows ``offsets[l]:offsets[l + 1]`` and
blocks ``boffsets[l]:boffsets[l + 1]``, its last block padded to 32 slots; slot ``s`` of the list's
``b``-th block is row ``offsets[l] + 32 * b + s``. A block is ``Mp * 16`` bytes: chunk ``p`` (32 bytes)
holds sub-quantizers ``2p`` (bytes 0-15) and ``2p + 1`` (bytes 16-31); in each 16-byte half, byte ``i``
holds the code of slot ``sigma(i)`` in its low nibble and of slot ``16 + sigma(i)`` in its high nibble,
``sigma(i) = i // 2 + 8 * (i % 2)``. So one 32-byte load meets a 32-byte table register holding the
tables of ``2p`` and ``2p + 1``, and after the even/odd split below the 32 sums come out in slot order.

**Sums without overflow.** A lookup returns 32 uint8 values; read as 16 uint16 lanes, each lane holds an
even slot in its low byte and an odd slot in its high byte. Two accumulators per nibble take
``r`` and ``r >> 8``; the even sums are ``acc - (acc_odd << 8)`` (exact modulo 2**16). Quantisation keeps
every total below 2**16, so all sums are exact integers and every path gives bit-identical results.

**Tables.** The float table of (query q, probe p) is ``qtab[q] + ptab[l]`` (``ptab`` empty for flat or
inner-product search; see :func:`annvq.index.fastscan.list_tables`), plus the constant ``consts[q, p]``. Each is
quantised on its own: ``T[m, j] ~ min_m + lut[m, j] / s`` with one scale ``s`` per (query, probe), so
the quantised distance ``consts + sum_m min_m + acc / s`` is in the same units for every probe and
every segment: one top-k reservoir (:func:`~annvq.kernels.adc.topk_init`) serves them all, and an
unpacked segment scanned with float tables can share it.

**Admission.** A block's 32 sums are compared with the reservoir threshold converted to uint16 for
that probe; the comparison mask is and-ed with the block's live-slot bitmap (``alive``: bit ``s`` of
``alive[b]`` is set when slot ``s`` of block ``b`` holds a live row; padding and deleted rows are clear,
so tombstones cost nothing in the scan). A block without candidates costs one test; the candidates of
a block enter the reservoir together, after it is shrunk (:func:`~annvq.kernels.adc.shrink`) when they
would not fit. A list whose lower bound ``consts + sum_m min_m`` reaches the threshold is skipped whole.

Paths (``path``): ``1`` 32-byte vectors (AVX2 vpshufb, NEON tbl) with the candidates of a block
admitted bit by bit from the mask; ``2`` the same sums with AVX-512 compress stores admitting them;
``0`` portable scalar code. All give identical results; :data:`DEFAULT_PATH` follows
:data:`annvq.kernels.simd.SIMD_PATH`. (64-byte ``vpshufb`` over pairs of chunks measured slower than
two 32-byte ones on AMD Zen 4, 22 against 17 ns per block of 32 codes with M=32, so there is no
64-byte sum kernel.)
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .adc import scan_codes, select_k, shrink, topk_finish
from .simd import (
    SIMD_PATH,
    compress_admit,
    ctz,
    fadd,
    fmax,
    fmax_all,
    fmin_all,
    fmul,
    fold16,
    fsplat16,
    fsub,
    fsum_all,
    le16_mask,
    load32,
    loadf16,
    lut16,
    minmax_rows16,
    popcount,
    splat32,
    store_u8,
    vadd16,
    vand,
    vshl16,
    vsrl16,
    vstore,
    vsub16,
    zeros32,
)

BLOCK = 32  # vectors per block
PATHS = {"portable": 0, "avx2": 1, "neon": 1, "avx512": 2}
DEFAULT_PATH = PATHS[SIMD_PATH]
_QGROUP = 32  # queries sharing one pass over the codes in a flat scan
_CHUNK_BYTES = 256 << 10  # codes scanned by a query group before moving on: stays in L2


def block_offsets(offsets: np.ndarray) -> np.ndarray:
    """First block of every list (and the total at the end) for list row ``offsets``."""
    sizes = np.diff(np.asarray(offsets, dtype=np.int64))
    return np.concatenate([[0], np.cumsum((sizes + BLOCK - 1) // BLOCK)]).astype(np.int64)


@njit(cache=True, inline="always")
def _byte_of_slot(s):
    """Byte (within a 16-byte half) and nibble (0 low, 4 high) holding slot ``s`` of a block."""
    t = s & 15
    return (2 * t if t < 8 else 2 * (t - 8) + 1), (4 if s >= 16 else 0)


@njit(cache=True, nogil=True)
def pack_codes(codes, offsets, boffsets):
    """Pack 4-bit codes (n, M), rows grouped by list, into the block layout: (nblocks, Mp * 16) uint8."""
    M = codes.shape[1]
    Mp = M + (M & 1)
    out = np.zeros((boffsets[-1], Mp * 16), dtype=np.uint8)
    for l in range(offsets.shape[0] - 1):
        for r in range(offsets[l], offsets[l + 1]):
            s = r - offsets[l]
            b = boffsets[l] + s // BLOCK
            i, shift = _byte_of_slot(s % BLOCK)
            for m in range(M):
                out[b, (m >> 1) * 32 + (m & 1) * 16 + i] |= np.uint8(codes[r, m] & 15) << shift
    return out


@njit(cache=True, nogil=True)
def unpack_rows(packed, offsets, boffsets, rows, M):
    """Codes (len(rows), M) uint8 of the given rows of a packed array."""
    out = np.empty((rows.shape[0], M), dtype=np.uint8)
    for a in range(rows.shape[0]):
        r = rows[a]
        l = np.searchsorted(offsets, r, side="right") - 1
        s = r - offsets[l]
        b = boffsets[l] + s // BLOCK
        i, shift = _byte_of_slot(s % BLOCK)
        for m in range(M):
            out[a, m] = (packed[b, (m >> 1) * 32 + (m & 1) * 16 + i] >> shift) & 15
    return out


def unpack_codes(packed: np.ndarray, offsets: np.ndarray, boffsets: np.ndarray, M: int) -> np.ndarray:
    """All codes (n, M) back from the packed layout, in row order (inverse of :func:`pack_codes`)."""
    return unpack_rows(packed, offsets, boffsets, np.arange(offsets[-1], dtype=np.int64), M)


@njit(cache=True, nogil=True)
def alive_bits(offsets, boffsets, deleted):
    """Live-slot bitmap (nblocks,) uint32: bit ``s`` of block ``b`` is set when that slot holds a row that
    is not ``deleted`` ((n,) bool, or empty for none). Padding slots stay clear."""
    out = np.zeros(boffsets[-1], dtype=np.uint32)
    has_del = deleted.shape[0] > 0
    for l in range(offsets.shape[0] - 1):
        for r in range(offsets[l], offsets[l + 1]):
            if has_del and deleted[r]:
                continue
            s = r - offsets[l]
            out[boffsets[l] + s // BLOCK] |= np.uint32(1) << np.uint32(s % BLOCK)
    return out


@njit(cache=True, nogil=True)
def set_alive(alive, offsets, boffsets, rows, live):
    """Set (``live``) or clear the live bit of every row in ``rows``, in place."""
    for a in range(rows.shape[0]):
        r = rows[a]
        l = np.searchsorted(offsets, r, side="right") - 1
        s = r - offsets[l]
        b = boffsets[l] + s // BLOCK
        bit = np.uint32(1) << np.uint32(s % BLOCK)
        if live:
            alive[b] |= bit
        else:
            alive[b] &= ~bit


@njit(cache=True, inline="always")
def _quantize(qt, pt, has_pt, lut, tmp, lo, hi):
    """Quantise the table ``qt + pt`` (``pt`` only when ``has_pt``; M * 16 float32, sub-quantizer major)
    into ``lut`` (uint8; the padding sub-quantizer stays zero); ``tmp`` (M * 16), ``lo`` and ``hi`` (M,)
    are scratch.

    Entry ``(m, j)`` becomes ``round((T[m, j] - min_m) * s)``, ``s`` the largest scale keeping every entry
    <= 255 and every sum over m below 2**16. Returns ``(sum_m min_m, s, 1 / s)``.
    """
    M = lo.shape[0]
    src = qt
    if has_pt:
        for m in range(M):
            vstore(fadd(loadf16(qt, 16 * m), loadf16(pt, 16 * m)), tmp, 16 * m)
        src = tmp
    m16 = M - M % 16
    lbv = fsplat16(0.0)
    totv = fsplat16(0.0)
    spanv = fsplat16(0.0)
    for m in range(0, m16, 16):
        minmax_rows16(src, 16 * m, lo, hi, m)
        low = loadf16(lo, m)
        d = fsub(loadf16(hi, m), low)
        lbv = fadd(lbv, low)
        totv = fadd(totv, d)
        spanv = fmax(spanv, d)
    lb = np.float64(fsum_all(lbv))
    total = np.float64(fsum_all(totv))
    span = np.float64(fmax_all(spanv))
    for m in range(m16, M):
        v = loadf16(src, 16 * m)
        lo[m] = fmin_all(v)
        hi[m] = fmax_all(v)
        d = np.float64(hi[m]) - lo[m]
        lb += lo[m]
        span = max(span, d)
        total += d
    s = 1.0
    if span > 0:
        s = min(255.0 / span, (65535.0 - M) / total)
    sv = fsplat16(s)
    half = fsplat16(0.5)
    for m in range(M):
        store_u8(fadd(fmul(fsub(loadf16(src, 16 * m), fsplat16(lo[m])), sv), half), lut, 16 * m)
    return lb, s, 1.0 / s


@njit(cache=True, inline="always")
def _u16_threshold(thresh, c0, s):
    """The largest accumulator value whose distance ``c0 + acc / s`` reaches at most ``thresh``; -1 if none.

    A candidate it lets through at exactly the threshold can only tie the k-th distance; the reservoir
    sorts that out when it next selects.
    """
    if thresh == np.inf:
        return 65535
    t = (np.float64(thresh) - c0) * s
    if t < 0:
        return -1
    return int(min(np.floor(t), 65535.0))


@njit(cache=True, inline="always")
def _mask_le(buf, thr, path):
    """Bit ``j`` set where the block sum ``buf[j]`` is <= ``thr``."""
    if path > 0:
        return le16_mask(load32(buf, 0), thr) | (le16_mask(load32(buf, 16), thr) << 16)
    mask = 0
    for j in range(BLOCK):
        if buf[j] <= thr:
            mask |= 1 << j
    return mask


@njit(cache=True, inline="always")
def _block_portable(flat, off, nchunk, lut, thr, buf):
    for j in range(BLOCK):
        buf[j] = 0
    for p in range(nchunk):
        for h in range(2):
            cb = off + 32 * p + 16 * h
            tb = 32 * p + 16 * h
            for i in range(16):
                c = flat[cb + i]
                slot = (i >> 1) + 8 * (i & 1)
                buf[slot] += lut[tb + (c & 15)]
                buf[16 + slot] += lut[tb + (c >> 4)]
    return _mask_le(buf, thr, 0)


@njit(cache=True, inline="always")
def _block_v32(flat, off, nchunk, lut, thr, buf):
    m15 = splat32(15)
    a_all = zeros32()
    a_odd = zeros32()
    b_all = zeros32()
    b_odd = zeros32()
    for p in range(nchunk):
        c = load32(flat, off + 32 * p)
        t = load32(lut, 32 * p)
        r = lut16(t, vand(c, m15))
        a_all = vadd16(a_all, r)
        a_odd = vadd16(a_odd, vsrl16(r, 8))
        r = lut16(t, vand(vsrl16(c, 4), m15))
        b_all = vadd16(b_all, r)
        b_odd = vadd16(b_odd, vsrl16(r, 8))
    lo = fold16(vsub16(a_all, vshl16(a_odd, 8)), a_odd)
    hi = fold16(vsub16(b_all, vshl16(b_odd, 8)), b_odd)
    vstore(lo, buf, 0)
    vstore(hi, buf, 16)
    return le16_mask(lo, thr) | (le16_mask(hi, thr) << 16)


@njit(cache=True, inline="always")
def _scan_blocks(flat, bbytes, alive, b0, b1, label0, lut, c0, s, inv_s, rd, ri, cnt, thresh, k, path, buf):
    """Offer the live slots of blocks ``b0:b1`` (slot ``j`` of block ``b`` labelled
    ``label0 + 32 * (b - b0) + j``) with quantised distance ``c0 + acc / s`` to the reservoir
    ``(rd, ri)``; returns its new ``(cnt, thresh)``.

    A block's candidates (sum <= the threshold in uint16 units, live) enter together: when they would
    overflow the reservoir, it is shrunk first and the mask recomputed with the new threshold. Every
    path admits the same candidates in slot order, so reservoirs stay identical. Needs room for a
    whole block after a shrink: the ``2k + 32`` slots of ``topk_init``.
    """
    nchunk = bbytes // 32
    cap = rd.shape[0]
    c0f = np.float32(c0)
    invf = np.float32(inv_s)
    thr = _u16_threshold(thresh, c0, s)
    if thr < 0:
        return cnt, thresh  # the list's lower bound does not beat the k-th distance
    for b in range(b0, b1):
        live = np.int64(alive[b])
        if live == 0:
            continue
        if path == 0:
            mask = _block_portable(flat, b * bbytes, nchunk, lut, thr, buf)
        else:
            mask = _block_v32(flat, b * bbytes, nchunk, lut, thr, buf)
        mask &= live
        if mask == 0:
            continue
        if cnt + popcount(mask) > cap:
            cnt, thresh = shrink(rd, ri, cnt, k)
            thr = _u16_threshold(thresh, c0, s)
            if thr < 0:
                return cnt, thresh  # the threshold only falls: nothing further can enter
            mask &= _mask_le(buf, thr, path)
        label = label0 + BLOCK * (b - b0)
        if path == 2:
            cnt = compress_admit(load32(buf, 0), mask & 0xFFFF, c0f, invf, label, rd, ri, cnt)
            cnt = compress_admit(load32(buf, 16), mask >> 16, c0f, invf, label + 16, rd, ri, cnt)
        else:
            while mask != 0:
                j = ctz(mask)
                mask &= mask - 1
                rd[cnt] = c0f + np.float32(buf[j]) * invf
                ri[cnt] = label + j
                cnt += 1
    return cnt, thresh


@njit(cache=True, nogil=True, parallel=True)
def scan_lists(qtab, ptab, probes, consts, packed, alive, offsets, boffsets, label_base, rd, ri, cnt, thresh, k, path):
    """Offer every live row of each query's probed lists to its reservoir, parallel over queries.

    ``qtab`` (nq, M, 16) float32 query tables; ``ptab`` (nlist, M, 16) per-list tables or (0, M, 16);
    ``probes`` (nq, P) list numbers (-1 = skip), best first; ``consts`` (nq, P). Row ``r`` enters with
    label ``label_base + r``. The reservoir ``(rd, ri, cnt, thresh)`` (see ``topk_init``) is updated in
    place, so several calls (segments) can feed one top-k.
    """
    nq, nprobe = probes.shape
    M = qtab.shape[1]
    bbytes = packed.shape[1]
    flat = packed.reshape(packed.size)
    qf = qtab.reshape(nq, M * 16)
    pf = ptab.reshape(ptab.shape[0], M * 16)
    has_pt = ptab.shape[0] > 0
    ngroups = (nq + _QGROUP - 1) // _QGROUP
    for g in prange(ngroups):
        lut = np.zeros(bbytes, dtype=np.uint8)
        tmp = np.empty(M * 16, dtype=np.float32)
        lo = np.empty(M, dtype=np.float32)
        hi = np.empty(M, dtype=np.float32)
        buf = np.empty(BLOCK, dtype=np.uint16)
        for q in range(g * _QGROUP, min(nq, (g + 1) * _QGROUP)):
            c_, t_ = cnt[q], thresh[q]
            for p in range(nprobe):
                l = probes[q, p]
                if l < 0 or offsets[l + 1] == offsets[l]:
                    continue
                lb, s, inv_s = _quantize(qf[q], pf[l] if has_pt else qf[q], has_pt, lut, tmp, lo, hi)
                c0 = np.float64(consts[q, p]) + lb
                c_, t_ = _scan_blocks(flat, bbytes, alive, boffsets[l], boffsets[l + 1], label_base + offsets[l], lut,
                                      c0, s, inv_s, rd[q], ri[q], c_, t_, k, path, buf)
            cnt[q], thresh[q] = c_, t_


@njit(cache=True, nogil=True, parallel=True)
def scan_flat(qtab, consts, packed, alive, label_base, rd, ri, cnt, thresh, k, path):
    """:func:`scan_lists` for one list of all rows, every query probing it with constant ``consts[q]``.

    Groups of queries take turns over ranges of blocks, so each range is read from memory once per
    group rather than once per query.
    """
    nq, M = qtab.shape[0], qtab.shape[1]
    nblocks, bbytes = packed.shape
    flat = packed.reshape(packed.size)
    qf = qtab.reshape(nq, M * 16)
    step = max(1, _CHUNK_BYTES // bbytes)
    ngroups = (nq + _QGROUP - 1) // _QGROUP
    for g in prange(ngroups):
        q0 = g * _QGROUP
        q1 = min(nq, q0 + _QGROUP)
        luts = np.zeros((q1 - q0, bbytes), dtype=np.uint8)
        c0s = np.empty(q1 - q0, dtype=np.float64)
        scales = np.empty((q1 - q0, 2), dtype=np.float64)
        tmp = np.empty(M * 16, dtype=np.float32)
        lo = np.empty(M, dtype=np.float32)
        hi = np.empty(M, dtype=np.float32)
        buf = np.empty(BLOCK, dtype=np.uint16)
        for q in range(q0, q1):
            lb, s, inv_s = _quantize(qf[q], qf[q], False, luts[q - q0], tmp, lo, hi)
            c0s[q - q0] = np.float64(consts[q]) + lb
            scales[q - q0, 0] = s
            scales[q - q0, 1] = inv_s
        for b0 in range(0, nblocks, step):
            b1 = min(nblocks, b0 + step)
            for q in range(q0, q1):
                i = q - q0
                cnt[q], thresh[q] = _scan_blocks(flat, bbytes, alive, b0, b1, label_base + BLOCK * b0, luts[i],
                                                 c0s[i], scales[i, 0], scales[i, 1], rd[q], ri[q], cnt[q],
                                                 thresh[q], k, path, buf)


@njit(cache=True, nogil=True, parallel=True)
def rescore(qtab, ptab, probes, consts, packed, offsets, boffsets, label_base, labels, dist):
    """Exact float ADC distances ``consts[q, p] + sum_m (qtab[q, m, c_m] + ptab[l, m, c_m])`` for the
    candidates ``labels`` (nq, kk) that belong to this packed array (``label_base <= label <
    label_base + n``), written into ``dist`` (nq, kk) in place; other labels are left alone.

    ``p`` is the probe of ``probes[q]`` whose list ``l`` holds the candidate (found among the probed
    lists, not among all lists); a candidate in no probed list gets +inf. The sum runs in the order
    of :func:`~annvq.kernels.adc.scan_codes`, so a row has the same distance packed or not.
    """
    nq, kk = labels.shape
    M = qtab.shape[1]
    nprobe = probes.shape[1]
    n = offsets[-1]
    has_pt = ptab.shape[0] > 0
    qf = qtab.reshape(nq, M * 16)
    pf = ptab.reshape(ptab.shape[0], M * 16)
    for q in prange(nq):
        for a in range(kk):
            r = labels[q, a] - label_base
            if labels[q, a] < 0 or r < 0 or r >= n:
                continue
            p = 0
            while p < nprobe and not (probes[q, p] >= 0 and offsets[probes[q, p]] <= r < offsets[probes[q, p] + 1]):
                p += 1
            if p == nprobe:
                dist[q, a] = np.inf
                continue
            l = probes[q, p]
            s = r - offsets[l]
            i, shift = _byte_of_slot(s % BLOCK)
            row = packed[boffsets[l] + s // BLOCK]
            acc = np.float32(consts[q, p])
            for m in range(M):
                c = 16 * m + ((row[16 * m + i] >> shift) & 15)
                acc += qf[q, c] + pf[l, c] if has_pt else qf[q, c]
            dist[q, a] = acc


@njit(cache=True, nogil=True, parallel=True)
def finish_all(rd, ri, cnt, k, sort):
    """The best ``k`` of every reservoir ``(rd, ri, cnt)``: ``(D, L)`` (nq, k), +inf / -1 padded; ascending
    when ``sort``, else in no particular order (candidates about to be re-scored)."""
    nq = rd.shape[0]
    D = np.empty((nq, k), dtype=np.float32)
    L = np.empty((nq, k), dtype=np.int64)
    for q in prange(nq):
        if sort:
            topk_finish(rd[q], ri[q], cnt[q], k, D[q], L[q])
            continue
        c = cnt[q]
        if c > k:
            select_k(rd[q], ri[q], c, k)
            c = k
        D[q, :c] = rd[q, :c]
        L[q, :c] = ri[q, :c]
        D[q, c:] = np.inf
        L[q, c:] = -1
    return D, L


@njit(cache=True, nogil=True, parallel=True)
def scan_unpacked(qtab, ptab, probes, consts, codes, offsets, bias, label_base, rd, ri, cnt, thresh, k):
    """:func:`scan_lists` over unpacked codes (n, M), rows sorted by list, with exact float tables: the
    same distances, unquantised, into the same reservoirs (a segment not packed yet). ``bias`` (n,) is
    added per row (+inf tombstones a row) or empty."""
    nq, nprobe = probes.shape
    M = qtab.shape[1]
    has_pt = ptab.shape[0] > 0
    has_bias = bias.shape[0] > 0
    ngroups = (nq + _QGROUP - 1) // _QGROUP
    for g in prange(ngroups):
        table = np.empty((M, 16), dtype=np.float32)
        for q in range(g * _QGROUP, min(nq, (g + 1) * _QGROUP)):
            c_, t_ = cnt[q], thresh[q]
            for p in range(nprobe):
                l = probes[q, p]
                if l < 0 or offsets[l + 1] == offsets[l]:
                    continue
                for m in range(M):
                    for j in range(16):
                        table[m, j] = qtab[q, m, j] + ptab[l, m, j] if has_pt else qtab[q, m, j]
                s0, s1 = offsets[l], offsets[l + 1]
                b = bias[s0:s1] if has_bias else bias
                c_, t_ = scan_codes(table, codes[s0:s1], b, consts[q, p], label_base + s0, rd[q], ri[q], c_, t_, k)
            cnt[q], thresh[q] = c_, t_
