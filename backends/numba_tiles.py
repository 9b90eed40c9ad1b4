"""Register-tiled block products for a few activation rows, written in LLVM IR through numba intrinsics.

`tile(w, r0, r1, x, n0, out, n_blocks, n_out)` adds nothing up in memory: for two weight rows r0, r1 and NA
activation rows n0.. it decodes each 32-value block into two 16-lane float vectors once, multiplies them into
2 x NA vector accumulators held in registers across the whole row, and stores the 2 x NA sums in out[n, r]
(row r1 only when n_out is 2). Plain numba code cannot hold such accumulators: LLVM vectorizes only innermost
loops and reduces their accumulators on every exit, so the dequantize-once path of numba_quants.py had to write
the decoded rows to a scratch and read them back, a pass as long as a whole one-row mat-vec; here the decoding
overlaps the multiply-adds. Block layouts are ggml's (see quants.py).
"""
from __future__ import annotations

from collections.abc import Callable

import functools

import numpy as np
from llvmlite import ir
from numba import prange, types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

from pyggml.graph.dtypes import DType

from .numba_quants import _share, _specialize

LANES = 16
I8, I16, I32, F16, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.HalfType(), ir.FloatType()
VF32, VI32, VI8, VF16 = (ir.VectorType(t, LANES) for t in (F32, I32, I8, F16))
TILE_ROWS = 8  # activation rows per tile: 2 x 8 accumulators and the decoded vectors fit in 32 registers
TILED_MAX_ROWS = 16  # beyond, the dequantize-once path is as fast (SmolLM2's 211 products: 33 against 40 ms at
# 16 rows, a tie at 32, 10 % slower at 64)


def _splat(builder: ir.IRBuilder, value: ir.Value, vec: ir.VectorType) -> ir.Value:
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), ir.Constant(ir.VectorType(I32, LANES), [0] * LANES))


def _load(builder: ir.IRBuilder, p: ir.Value, offset: int, ty: ir.Type) -> ir.Value:
    """The value of type ty at byte offset of i8* p (unaligned)."""
    return builder.load(builder.bitcast(builder.gep(p, [ir.Constant(I32, offset)]), ty.as_pointer()), align=1)


def _half(builder: ir.IRBuilder, p: ir.Value, offset: int) -> ir.Value:
    """The float16 at byte offset of p, as a float32."""
    return builder.fpext(builder.bitcast(_load(builder, p, offset, I16), F16), F32)


def _fma(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(VF32, [VF32] * 3), "llvm.fma.v16f32")
    return builder.call(fn, [a, b, c])


def _nibbles(builder: ir.IRBuilder, p: ir.Value, offset: int) -> tuple[ir.Value, ir.Value]:
    """The low and high nibbles of the 16 bytes at offset of p, as float vectors."""
    q = builder.zext(_load(builder, p, offset, VI8), VI32)
    lo = builder.and_(q, ir.Constant(VI32, [15] * LANES))
    hi = builder.lshr(q, ir.Constant(VI32, [4] * LANES))
    return builder.uitofp(lo, VF32), builder.uitofp(hi, VF32)


def _affine(builder: ir.IRBuilder, d: ir.Value, offset: ir.Value, values: tuple[ir.Value, ...]) -> tuple:
    """d · v + offset for each vector v."""
    dv, ov = _splat(builder, d, VF32), _splat(builder, offset, VF32)
    return tuple(_fma(builder, dv, v, ov) for v in values)


def _q4_0(builder: ir.IRBuilder, p: ir.Value) -> tuple[ir.Value, ir.Value]:
    d = _half(builder, p, 0)
    return _affine(builder, d, builder.fmul(d, ir.Constant(F32, -8.0)), _nibbles(builder, p, 2))


def _q4_1(builder: ir.IRBuilder, p: ir.Value) -> tuple[ir.Value, ir.Value]:
    return _affine(builder, _half(builder, p, 0), _half(builder, p, 2), _nibbles(builder, p, 4))


def _fives(builder: ir.IRBuilder, p: ir.Value, offset: int) -> tuple[ir.Value, ir.Value]:
    """Q5 values of the uint32 qh at offset and the 16 bytes after it: value i's bit 4 is bit i of qh."""
    qh = _splat(builder, _load(builder, p, offset, I32), VI32)
    lo, hi = _nibbles(builder, p, offset + 4)
    out = []
    for nibble, first in ((lo, 0), (hi, LANES)):
        bit = builder.and_(builder.lshr(qh, ir.Constant(VI32, list(range(first, first + LANES)))),
                           ir.Constant(VI32, [1] * LANES))
        out.append(builder.fadd(nibble, builder.uitofp(builder.shl(bit, ir.Constant(VI32, [4] * LANES)), VF32)))
    return tuple(out)


def _q5_0(builder: ir.IRBuilder, p: ir.Value) -> tuple[ir.Value, ir.Value]:
    d = _half(builder, p, 0)
    return _affine(builder, d, builder.fmul(d, ir.Constant(F32, -16.0)), _fives(builder, p, 2))


def _q5_1(builder: ir.IRBuilder, p: ir.Value) -> tuple[ir.Value, ir.Value]:
    return _affine(builder, _half(builder, p, 0), _half(builder, p, 2), _fives(builder, p, 4))


def _q8_0(builder: ir.IRBuilder, p: ir.Value) -> tuple[ir.Value, ir.Value]:
    d = _splat(builder, _half(builder, p, 0), VF32)
    return tuple(builder.fmul(d, builder.sitofp(_load(builder, p, 2 + 16 * h, VI8), VF32)) for h in range(2))


def _f16(builder: ir.IRBuilder, p: ir.Value) -> tuple[ir.Value, ir.Value]:
    return tuple(builder.fpext(_load(builder, p, 32 * h, VF16), VF32) for h in range(2))


# block type -> (bytes per 32-value block, the IR decoding one block into its two 16-value halves)
DECODERS: dict[DType, tuple[int, Callable]] = {DType.Q4_0: (18, _q4_0), DType.Q4_1: (20, _q4_1),
                                               DType.Q5_0: (22, _q5_0), DType.Q5_1: (24, _q5_1),
                                               DType.Q8_0: (34, _q8_0), DType.F16: (64, _f16)}


def _array(context, builder, ary_type, value):
    """(i8* to the data of a 2-D array, its row stride in bytes, its number of rows, its row length)."""
    ary = context.make_array(ary_type)(context, builder, value)
    shape = cgutils.unpack_tuple(builder, ary.shape, 2)
    return (builder.bitcast(ary.data, I8.as_pointer()), builder.extract_value(ary.strides, 0), shape[0], shape[1])


def _const(value: ir.Value, n: int) -> ir.Constant:
    return ir.Constant(value.type, n)


def make_tile(dtype: DType, n_w: int, n_x: int):
    """The tile intrinsic of block type dtype for n_w weight rows and n_x activation rows:
    tile(w, g, n_groups, x, n0, out) makes out[n0 + j, g + i·n_groups] for the rows that exist."""
    type_size, decode = DECODERS[dtype]

    def codegen(context, builder, signature, args):
        w_ty, _, _, x_ty, _, out_ty = signature.args
        (w, w_stride, n_rows, _), g, n_groups = _array(context, builder, w_ty, args[0]), args[1], args[2]
        (x, x_stride, _, k), n0 = _array(context, builder, x_ty, args[3]), args[4]
        out, out_stride, _, _ = _array(context, builder, out_ty, args[5])
        rows = [builder.add(g, builder.mul(n_groups, _const(g, i))) for i in range(n_w)]
        exists = [builder.icmp_signed("<", r, n_rows) for r in rows]
        starts = [builder.gep(w, [builder.mul(builder.select(e, r, g), w_stride)]) for r, e in zip(rows, exists)]
        x0 = builder.gep(x, [builder.mul(n0, x_stride)])
        acc = [[cgutils.alloca_once_value(builder, ir.Constant(VF32, None)) for _ in range(n_x)] for _ in rows]
        with cgutils.for_range(builder, builder.sdiv(k, _const(k, 32))) as loop:
            halves = [decode(builder, builder.gep(p, [builder.mul(loop.index, _const(loop.index, type_size))]))
                      for p in starts]
            x_block = builder.gep(x0, [builder.mul(loop.index, _const(loop.index, 32 * 4))])
            for j in range(n_x):
                xp = builder.gep(x_block, [builder.mul(x_stride, _const(x_stride, j))])
                xs = [_load(builder, xp, 64 * h, VF32) for h in range(2)]
                for i, (lo, hi) in enumerate(halves):
                    a = _fma(builder, lo, xs[0], builder.load(acc[i][j]))
                    builder.store(_fma(builder, hi, xs[1], a), acc[i][j])
        for i, (row, row_exists) in enumerate(zip(rows, exists)):
            with builder.if_then(row_exists):
                _store_sums(builder, [builder.load(a) for a in acc[i]], out, out_stride, n0, row)
        return context.get_dummy_value()

    @intrinsic
    def tile(typingctx, w, g, n_groups, x, n0, out):
        return nbtypes.void(w, g, n_groups, x, n0, out), codegen
    return tile


def _store_sums(builder: ir.IRBuilder, accs: list[ir.Value], out: ir.Value, stride: ir.Value, n0: ir.Value,
                col: ir.Value) -> None:
    """out[n0 + j, col] = the sum of accs[j]'s lanes."""
    reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(F32, [F32, VF32]),
                                            "llvm.vector.reduce.fadd.v16f32")
    for j, a in enumerate(accs):
        total = builder.call(reduce, [ir.Constant(F32, -0.0), a], fastmath=("reassoc",))
        offset = builder.add(builder.mul(builder.add(n0, _const(n0, j)), stride), builder.mul(col, _const(col, 4)))
        builder.store(total, builder.bitcast(builder.gep(out, [offset]), F32.as_pointer()))


def _tiled(w, x, out, n_tasks):
    """out[n, m] = w[m] · x[n]: weight rows g and g + n_groups (two memory streams) against TILE_ROWS activation
    rows at a time, then the rest in one tile; TILE1..TILE8 are the block type's, bound by _specialize."""
    n_groups, full = (w.shape[0] + 1) // 2, x.shape[0] - x.shape[0] % TILE_ROWS
    n_tasks = min(n_tasks, n_groups)
    for task in prange(n_tasks):
        start, stop = _share(task, n_tasks, n_groups)
        for g in range(start, stop):
            for n0 in range(0, full, TILE_ROWS):
                TILE8(w, g, n_groups, x, n0, out)  # noqa: F821
            rest = x.shape[0] - full
            if rest == 1:
                TILE1(w, g, n_groups, x, full, out)  # noqa: F821
            elif rest == 2:
                TILE2(w, g, n_groups, x, full, out)  # noqa: F821
            elif rest == 3:
                TILE3(w, g, n_groups, x, full, out)  # noqa: F821
            elif rest == 4:
                TILE4(w, g, n_groups, x, full, out)  # noqa: F821
            elif rest == 5:
                TILE5(w, g, n_groups, x, full, out)  # noqa: F821
            elif rest == 6:
                TILE6(w, g, n_groups, x, full, out)  # noqa: F821
            elif rest == 7:
                TILE7(w, g, n_groups, x, full, out)  # noqa: F821


TILED = {t: _specialize(_tiled, t, True, **{f"TILE{n}": make_tile(t, 2, n) for n in range(1, TILE_ROWS + 1)})
         for t in DECODERS}


def tiled_product(dtype: DType, w: np.ndarray, x: np.ndarray, out: np.ndarray, n_tasks: int):
    """The step out (N, M) = x (N, K) @ dequantize(w).T through the register tiles, for dtype in DECODERS and up
    to TILED_MAX_ROWS activation rows."""
    return functools.partial(TILED[dtype], w, x, out, n_tasks)
