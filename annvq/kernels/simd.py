"""Byte-vector SIMD for Numba kernels: a 32-byte vector type and the few operations a 4-bit fast-scan
needs, written as ``numba.extending.intrinsic`` functions that emit LLVM vector IR.

Most operations are plain LLVM vector instructions (``and``, ``lshr``, ``add``, ``icmp``, reductions,
masked stores), which LLVM lowers well on any target. The one that needs the target's own instruction
is the 16-entry table lookup per 128-bit lane (:func:`lut16`): ``llvm.x86.avx2.pshuf.b`` (vpshufb) on
x86 with AVX2, ``llvm.aarch64.neon.tbl1`` per 16 bytes on ARM. On a target without them the lookup is
emitted element by element, so every kernel compiles everywhere and :data:`SIMD_PATH` only decides
which kernels are fast. :func:`compress_admit` uses AVX-512F compress instructions where present.

:data:`SIMD_PATH` is picked once, at import, from the CPU features Numba compiles for (llvmlite's host
features, or ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` when set): ``"avx512"`` (AVX2 and AVX-512F, for
the compress stores), ``"avx2"``, ``"neon"`` (aarch64) or ``"portable"``. ``ANNVQ_SIMD=off`` forces
``"portable"``; ``ANNVQ_SIMD=avx2`` keeps an AVX-512 host on the AVX2 kernels. Numba keys its on-disk
cache on the CPU name and features, so machine code compiled for one host is never reused on another.
"""
from __future__ import annotations

import os

import llvmlite.binding as llb
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

__all__ = [
    "ARCH",
    "FEATURES",
    "SIMD_PATH",
    "compress_admit",
    "ctz",
    "f32x16",
    "fadd",
    "flt_mask",
    "fmax",
    "fmax_all",
    "fmin_all",
    "fmul",
    "fold16",
    "fsplat16",
    "fsub",
    "fsum_all",
    "le16_mask",
    "load32",
    "loadf16",
    "lut16",
    "minmax_rows16",
    "popcount",
    "prefetch",
    "splat32",
    "store_u8",
    "u8x32",
    "vadd16",
    "vand",
    "vshl16",
    "vsrl16",
    "vstore",
    "vsub16",
    "zeros32",
]


def _target() -> tuple[str, frozenset[str]]:
    """Architecture and the CPU features Numba generates code for."""
    triple = llb.get_process_triple()
    if triple.startswith(("x86_64", "amd64")):
        arch = "x86_64"
    elif triple.startswith(("aarch64", "arm64")):
        arch = "aarch64"
    else:
        arch = triple.split("-")[0]
    if config.CPU_FEATURES:
        feats = frozenset(f[1:] for f in config.CPU_FEATURES.split(",") if f.startswith("+"))
    elif config.CPU_NAME and config.CPU_NAME != "host":
        feats = frozenset()  # a named generic target: assume nothing beyond the baseline
    else:
        feats = frozenset(name for name, on in llb.get_host_cpu_features().items() if on)
    return arch, feats


ARCH, FEATURES = _target()
_X86_AVX2 = ARCH == "x86_64" and "avx2" in FEATURES
_X86_AVX512F = ARCH == "x86_64" and "avx512f" in FEATURES
_NEON = ARCH == "aarch64"


def _pick_path() -> str:
    want = os.environ.get("ANNVQ_SIMD", "").strip().lower()
    if want in ("off", "0", "portable", "none"):
        return "portable"
    if _X86_AVX2 and _X86_AVX512F and want != "avx2":
        return "avx512"
    if _X86_AVX2:
        return "avx2"
    if _NEON:
        return "neon"
    return "portable"


SIMD_PATH: str = _pick_path()


class ByteVector(types.Type):
    """A vector of ``n`` bytes held in one (or two) SIMD registers; ``u16`` operations view it as n/2
    little-endian uint16 lanes."""

    def __init__(self, n: int) -> None:
        self.n = n
        super().__init__(name=f"u8x{n}")


u8x32 = ByteVector(32)


@register_model(ByteVector)
class _ByteVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.IntType(8), fe_type.n))


_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)


def _bytes(n: int) -> ir.VectorType:
    return ir.VectorType(_I8, n)


def _words(n: int) -> ir.VectorType:
    return ir.VectorType(_I16, n // 2)


def _splat(builder: ir.IRBuilder, value: ir.Value, vty: ir.VectorType) -> ir.Value:
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


def _cast_int(builder: ir.IRBuilder, value: ir.Value, ty: ir.IntType) -> ir.Value:
    w = value.type.width
    return value if w == ty.width else builder.trunc(value, ty) if w > ty.width else builder.zext(value, ty)


def _elem_ptr(context, builder, aty, arr, i, vty):
    """Pointer to element ``i`` of the array ``arr`` (Numba type ``aty``), typed as a pointer to ``vty``."""
    a = context.make_array(aty)(context, builder, arr)
    return builder.bitcast(builder.gep(a.data, [i]), vty.as_pointer())


def _is_bytes_array(a) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype in (types.uint8, types.uint16)


@intrinsic
def load32(typingctx, arr, idx):
    """32 bytes of a C-contiguous uint8/uint16 array from its element ``idx`` (unaligned; no bounds check)."""
    if not (_is_bytes_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_elem_ptr(context, builder, sig.args[0], args[0], args[1], _bytes(32)), align=1)

    return u8x32(arr, idx), codegen


@intrinsic
def splat32(typingctx, x):
    """32 copies of a byte."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, _cast_int(builder, args[0], _I8), _bytes(32))

    return u8x32(x), codegen


@intrinsic
def zeros32(typingctx):
    """32 zero bytes."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_bytes(32), [0] * 32)

    return u8x32(), codegen


def _same_vectors(*tys) -> bool:
    return all(isinstance(t, ByteVector) for t in tys) and len({t.n for t in tys}) == 1


@intrinsic
def vand(typingctx, a, b):
    """Bitwise and."""
    if not _same_vectors(a, b):
        return None

    def codegen(context, builder, sig, args):
        return builder.and_(args[0], args[1])

    return a(a, b), codegen


def _u16_op(op: str, scalar: bool):
    """A uint16 lane-wise ``op`` of two vectors, or of a vector and one integer for every lane."""
    def typer(typingctx, a, b):
        if not (isinstance(a, ByteVector) and (isinstance(b, types.Integer) if scalar else _same_vectors(a, b))):
            return None

        def codegen(context, builder, sig, args):
            wt = _words(sig.args[0].n)
            x = builder.bitcast(args[0], wt)
            y = _splat(builder, _cast_int(builder, args[1], _I16), wt) if scalar else builder.bitcast(args[1], wt)
            return builder.bitcast(getattr(builder, op)(x, y), _bytes(sig.args[0].n))

        return a(a, b), codegen

    typer.__name__ = f"v{op}16"
    return intrinsic(typer)


vadd16 = _u16_op("add", False)
vadd16.__doc__ = "uint16 lane-wise addition, wrapping modulo 2**16."
vsub16 = _u16_op("sub", False)
vsub16.__doc__ = "uint16 lane-wise subtraction, wrapping modulo 2**16."
vshl16 = _u16_op("shl", True)
vshl16.__doc__ = "Shift every uint16 lane left by ``s`` bits (a constant after inlining: one vpsllw)."
vsrl16 = _u16_op("lshr", True)
vsrl16.__doc__ = "Shift every uint16 lane right (logical) by ``s`` bits (a constant after inlining: one vpsrlw)."


def _halves(builder: ir.IRBuilder, v: ir.Value, parts: int) -> list[ir.Value]:
    n = v.type.count // parts
    return [builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(i * n, (i + 1) * n))))
            for i in range(parts)]


def _concat(builder: ir.IRBuilder, parts: list[ir.Value]) -> ir.Value:
    while len(parts) > 1:
        merged = []
        for a, b in zip(parts[::2], parts[1::2]):
            n = a.type.count
            merged.append(builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 2 * n), list(range(2 * n)))))
        parts = merged
    return parts[0]


def _lut16_ir(builder: ir.IRBuilder, table: ir.Value, idx: ir.Value) -> ir.Value:
    """Per 16-byte lane: ``out[i] = table[lane + idx[i]]`` for indices below 16."""
    n = table.type.count
    mod = builder.module
    if _X86_AVX2 and n == 32:
        fn = cgutils.get_or_insert_function(mod, ir.FunctionType(_bytes(32), [_bytes(32), _bytes(32)]),
                                            "llvm.x86.avx2.pshuf.b")
        return builder.call(fn, [table, idx])
    if _NEON:
        fn = cgutils.get_or_insert_function(mod, ir.FunctionType(_bytes(16), [_bytes(16), _bytes(16)]),
                                            "llvm.aarch64.neon.tbl1.v16i8")
        parts = n // 16
        pairs = zip(_halves(builder, table, parts), _halves(builder, idx, parts))
        return _concat(builder, [builder.call(fn, [t, i]) for t, i in pairs])
    out = ir.Constant(_bytes(n), ir.Undefined)
    for i in range(n):
        j = builder.and_(builder.extract_element(idx, ir.Constant(_I32, i)), ir.Constant(_I8, 15))
        src = builder.add(builder.zext(j, _I32), ir.Constant(_I32, i - i % 16))
        out = builder.insert_element(out, builder.extract_element(table, src), ir.Constant(_I32, i))
    return out


@intrinsic
def lut16(typingctx, table, idx):
    """Table lookup within every 16-byte lane: ``out[i] = table[16 * (i // 16) + idx[i]]``.

    Indices must be below 16 (pshufb zeroes bytes whose index has the high bit set, tbl1 those >= 16).
    """
    if not _same_vectors(table, idx):
        return None

    def codegen(context, builder, sig, args):
        return _lut16_ir(builder, args[0], args[1])

    return table(table, idx), codegen


@intrinsic
def fold16(typingctx, a, b):
    """32-byte vectors as 16 uint16 lanes: ``(a[0:8], b[0:8]) + (a[8:16], b[8:16])`` (two 128-bit halves
    each, added), which turns two per-half partial sums into one vector of totals."""
    if not (a == u8x32 and b == u8x32):
        return None

    def codegen(context, builder, sig, args):
        x, y = (builder.bitcast(v, _words(32)) for v in args)
        idx = ir.VectorType(_I32, 16)
        lo = builder.shuffle_vector(x, y, ir.Constant(idx, list(range(8)) + list(range(16, 24))))
        hi = builder.shuffle_vector(x, y, ir.Constant(idx, list(range(8, 16)) + list(range(24, 32))))
        return builder.bitcast(builder.add(lo, hi), _bytes(32))

    return u8x32(a, b), codegen


@intrinsic
def le16_mask(typingctx, a, t):
    """Bit j (int64) set where uint16 lane j of ``a`` is <= ``t`` (``t`` taken modulo 2**16)."""
    if not (isinstance(a, ByteVector) and isinstance(t, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        n = sig.args[0].n
        wt = _words(n)
        bound = _splat(builder, _cast_int(builder, args[1], _I16), wt)
        cmp = builder.icmp_unsigned("<=", builder.bitcast(args[0], wt), bound)
        return builder.zext(builder.bitcast(cmp, ir.IntType(n // 2)), _I64)

    return types.int64(a, t), codegen


@intrinsic
def popcount(typingctx, x):
    """Number of set bits of an int64 (``llvm.ctpop``: one popcnt)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64]), "llvm.ctpop.i64")
        return builder.call(fn, [_cast_int(builder, args[0], _I64)])

    return types.int64(x), codegen


@intrinsic
def ctz(typingctx, x):
    """Count of trailing zero bits of a non-zero int64 (``llvm.cttz``: one tzcnt/bsf)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64, ir.IntType(1)]),
                                            "llvm.cttz.i64")
        return builder.call(fn, [_cast_int(builder, args[0], _I64), ir.Constant(ir.IntType(1), 1)])

    return types.int64(x), codegen


class FloatVector(types.Type):
    """16 float32 lanes (one zmm, two ymm or four NEON registers; LLVM splits as the target needs)."""

    def __init__(self) -> None:
        super().__init__(name="f32x16")


f32x16 = FloatVector()
_F16 = ir.VectorType(ir.FloatType(), 16)


@register_model(FloatVector)
class _FloatVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _F16)


def _is_f32_array(a) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == types.float32


@intrinsic
def loadf16(typingctx, arr, i):
    """16 float32 of a C-contiguous float32 array from element ``i`` (unaligned; no bounds check)."""
    if not (_is_f32_array(arr) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_elem_ptr(context, builder, sig.args[0], args[0], args[1], _F16), align=4)

    return f32x16(arr, i), codegen


@intrinsic
def vstore(typingctx, v, arr, i):
    """Store a vector's bytes into a C-contiguous array from its element ``i``: a byte vector into a
    uint8/uint16 array, 16 floats into a float32 array (unaligned; no bounds check)."""
    if not (isinstance(i, types.Integer) and ((isinstance(v, ByteVector) and _is_bytes_array(arr))
                                               or (v == f32x16 and _is_f32_array(arr)))):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[1], args[1], args[2], args[0].type)
        builder.store(args[0], ptr, align=1)
        return context.get_dummy_value()

    return types.none(v, arr, i), codegen


@intrinsic
def fsplat16(typingctx, x):
    """16 copies of a float (converted to float32)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        x = args[0] if sig.args[0] == types.float32 else builder.fptrunc(args[0], ir.FloatType())
        return _splat(builder, x, _F16)

    return f32x16(x), codegen


def _f_binop(op: str):
    def typer(typingctx, a, b):
        if not (a == f32x16 and b == f32x16):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return f32x16(a, b), codegen

    typer.__name__ = op
    return intrinsic(typer)


fadd = _f_binop("fadd")
fsub = _f_binop("fsub")
fmul = _f_binop("fmul")


def _tree(builder: ir.IRBuilder, x: ir.Value, step) -> ir.Value:
    while x.type.count > 1:
        x = step(*_halves(builder, x, 2))
    return builder.extract_element(x, ir.Constant(_I32, 0))


def _f_reduce(kind: str):
    def typer(typingctx, v):
        if v != f32x16:
            return None

        def codegen(context, builder, sig, args):
            if kind == "sum":
                return _tree(builder, args[0], builder.fadd)
            pred = "<" if kind == "min" else ">"
            return _tree(builder, args[0], lambda a, b: builder.select(builder.fcmp_ordered(pred, a, b), a, b))

        return types.float32(v), codegen

    typer.__name__ = f"f{kind}_all"
    return intrinsic(typer)


fmin_all = _f_reduce("min")
fmin_all.__doc__ = "Smallest of the 16 lanes (no NaN allowed): a reduction tree of four vector min steps."
fmax_all = _f_reduce("max")
fmax_all.__doc__ = "Largest of the 16 lanes (no NaN allowed): a reduction tree of four vector max steps."
fsum_all = _f_reduce("sum")
fsum_all.__doc__ = "Sum of the 16 lanes, added pairwise in a fixed tree (deterministic)."


@intrinsic
def fmax(typingctx, a, b):
    """Lane-wise maximum (no NaN allowed)."""
    if not (a == f32x16 and b == f32x16):
        return None

    def codegen(context, builder, sig, args):
        x, y = args
        return builder.select(builder.fcmp_ordered(">", x, y), x, y)

    return f32x16(a, b), codegen


def _rows_reduce(builder: ir.IRBuilder, rows: list[ir.Value], pred: str) -> ir.Value:
    """Reduce each of 16 vectors of 16 floats to one lane, all at once: pairs of vectors are shuffled so
    that every step halves the lanes each row occupies (a transpose-and-reduce tree, 15 min/max steps
    for 16 rows instead of 4 per row). Lane r of the result belongs to ``rows[r]``."""
    w = 16
    while len(rows) > 1:
        half = w // 2
        first = [i * w + j for i in range(16 // w) for j in range(half)]
        idx_a = ir.Constant(ir.VectorType(_I32, 16), first + [16 + i for i in first])
        idx_b = ir.Constant(ir.VectorType(_I32, 16), [i + half for i in first] + [16 + i + half for i in first])
        nxt = []
        for a, b in zip(rows[::2], rows[1::2]):
            x, y = builder.shuffle_vector(a, b, idx_a), builder.shuffle_vector(a, b, idx_b)
            nxt.append(builder.select(builder.fcmp_ordered(pred, x, y), x, y))
        rows, w = nxt, half
    return rows[0]


@intrinsic
def minmax_rows16(typingctx, src, off, lo, hi, out):
    """Least and greatest of each of 16 consecutive rows of 16 floats (``src[off:off + 256]``), stored to
    ``lo[out:out + 16]`` and ``hi[out:out + 16]`` (no NaN allowed; no bounds check)."""
    if not (_is_f32_array(src) and _is_f32_array(lo) and _is_f32_array(hi) and isinstance(off, types.Integer)
            and isinstance(out, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        base = _cast_int(builder, args[1], _I64)
        rows = []
        for r in range(16):
            ptr = builder.gep(a.data, [builder.add(base, ir.Constant(_I64, 16 * r))])
            rows.append(builder.load(builder.bitcast(ptr, _F16.as_pointer()), align=4))
        for pred, aty, arr in (("<", sig.args[2], args[2]), (">", sig.args[3], args[3])):
            builder.store(_rows_reduce(builder, rows, pred), _elem_ptr(context, builder, aty, arr, args[4], _F16),
                          align=4)
        return context.get_dummy_value()

    return types.none(src, off, lo, hi, out), codegen


@intrinsic
def flt_mask(typingctx, v, t):
    """Bit j (int64) set where lane j of ``v`` is below ``t`` (ordered compare: NaN lanes are clear)."""
    if not (v == f32x16 and isinstance(t, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        t = args[1] if sig.args[1] == types.float32 else builder.fptrunc(args[1], ir.FloatType())
        cmp = builder.fcmp_ordered("<", args[0], _splat(builder, t, _F16))
        return builder.zext(builder.bitcast(cmp, _I16), _I64)

    return types.int64(v, t), codegen


@intrinsic
def store_u8(typingctx, v, out, i):
    """Truncate 16 float32 lanes (each in [0, 256)) to uint8 and store them in a C-contiguous uint8
    array from element ``i`` (no bounds check)."""
    if not (v == f32x16 and _is_bytes_array(out) and out.dtype == types.uint8 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        b = builder.fptoui(args[0], _bytes(16))
        builder.store(b, _elem_ptr(context, builder, sig.args[1], args[1], args[2], _bytes(16)), align=1)
        return context.get_dummy_value()

    return types.none(v, out, i), codegen


@intrinsic
def compress_admit(typingctx, sums, mask, c0, inv, label0, rd, ri, cnt):
    """Append the lanes of ``sums`` (16 uint16 lanes) selected by the low 16 bits of ``mask`` to a top-k
    reservoir, in lane order: distance ``c0 + lane * inv`` (float32) to ``rd[cnt:]``, label ``label0 +
    lane index`` to ``ri[cnt:]``. Masked compress stores (``llvm.masked.compressstore``: vcompressps /
    vpcompressq on AVX-512F) write them without a branch per lane. Returns the new count.
    """
    if not (sums == u8x32 and isinstance(mask, types.Integer) and c0 == types.float32 and inv == types.float32
            and isinstance(label0, types.Integer) and _is_f32_array(rd) and isinstance(ri, types.Array)
            and ri.ndim == 1 and ri.layout == "C" and ri.dtype == types.int64 and isinstance(cnt, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v, m, c, s, base, rdv, riv, n = args
        f16 = builder.uitofp(builder.zext(builder.bitcast(v, _words(32)), ir.VectorType(_I32, 16)), _F16)
        dist = builder.fadd(_splat(builder, c, _F16), builder.fmul(f16, _splat(builder, s, _F16)))
        m16 = _cast_int(builder, m, _I16)
        bits = builder.bitcast(m16, ir.VectorType(ir.IntType(1), 16))
        n = _cast_int(builder, n, _I64)
        i64x16 = ir.VectorType(_I64, 16)
        labels = builder.add(_splat(builder, _cast_int(builder, base, _I64), i64x16),
                             ir.Constant(i64x16, list(range(16))))
        mod = builder.module
        pop = cgutils.get_or_insert_function(mod, ir.FunctionType(_I16, [_I16]), "llvm.ctpop.i16")
        for vec, aty, arr in ((dist, sig.args[5], rdv), (labels, sig.args[6], riv)):
            a = context.make_array(aty)(context, builder, arr)
            ptr = builder.gep(a.data, [n])
            if _X86_AVX512F:
                # compress in registers, then one masked store of the first popcount lanes: a compress
                # straight to memory is microcoded (slow) on some cores (AMD Zen 4)
                parts = [vec] if vec is dist else _halves(builder, vec, 2)
                pbits = [bits] if vec is dist else _halves(builder, bits, 2)
                for part, pb in zip(parts, pbits):
                    w = part.type.count
                    ety = "f32" if vec is dist else "i64"
                    comp = cgutils.get_or_insert_function(
                        mod, ir.FunctionType(part.type, [part.type, part.type, pb.type]),
                        f"llvm.x86.avx512.mask.compress.v{w}{ety}")
                    packed = builder.call(comp, [part, ir.Constant(part.type, ir.Undefined), pb])
                    cnt_p = builder.call(pop, [builder.zext(builder.bitcast(pb, ir.IntType(w)), _I16)])
                    prefix = builder.sub(builder.shl(ir.Constant(_I16, 1), cnt_p), ir.Constant(_I16, 1))
                    pmask = builder.bitcast(builder.trunc(prefix, ir.IntType(w)), pb.type)
                    store = cgutils.get_or_insert_function(
                        mod, ir.FunctionType(ir.VoidType(), [part.type, ptr.type, _I32, pb.type]),
                        f"llvm.masked.store.v{w}{ety}.p0")
                    builder.call(store, [packed, ptr, ir.Constant(_I32, 4), pmask])
                    ptr = builder.gep(ptr, [builder.zext(cnt_p, _I64)])
            else:
                suffix = "v16f32" if vec is dist else "v16i64"
                fn = cgutils.get_or_insert_function(
                    mod, ir.FunctionType(ir.VoidType(), [vec.type, ptr.type, bits.type]),
                    f"llvm.masked.compressstore.{suffix}")
                builder.call(fn, [vec, ptr, bits])
        return builder.add(n, builder.zext(builder.call(pop, [m16]), _I64))

    return types.int64(sums, mask, c0, inv, label0, rd, ri, cnt), codegen


@intrinsic
def prefetch(typingctx, arr, i):
    """Hint the cache line holding element ``i`` of a C-contiguous array into the cache (``llvm.prefetch``;
    a no-op where the target has no prefetch instruction)."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1], _I8)
        fn = cgutils.get_or_insert_function(builder.module,
                                            ir.FunctionType(ir.VoidType(), [ptr.type, _I32, _I32, _I32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.none(arr, i), codegen
